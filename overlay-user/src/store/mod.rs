//! Cluster state in etcd: one key per object under a prefix (`PREFIX/nodes/NAME`,
//! `PREFIX/networks/NAME`, `PREFIX/endpoints/NAME`, `PREFIX/services/NAME`, `PREFIX/cluster`,
//! `PREFIX/gwbridge`), each value that object's table in the state file's format.
//!
//! - `config`: `--store etcd://...` and the TLS files; connecting.
//! - `snapshot`: everything under the prefix at one revision, sorted into objects.
//! - `source`: the agent's state source: snapshot, then watch; resync; etcd-down handling.
//! - `liveness`: each agent's lease-backed `PREFIX/alive/NODE` key.
//! - `admin`: `overlay state push/get/put/del` and `overlay nodes`.

mod admin;
mod config;
mod liveness;
mod snapshot;
mod source;

pub use admin::{del, get, nodes, push, put, NodeRow, NodesView, Written};
pub use config::{StoreConfig, Tls, DEFAULT_PREFIX};
pub use liveness::{Alive, TTL_SECS};
pub use snapshot::{ALIVE_DIR, GUARD_KEY};
pub use source::{revision_name, EtcdSource, View};

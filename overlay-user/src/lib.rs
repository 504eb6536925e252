//! The overlay agent: reads the cluster state, plumbs local endpoints and fills the datapath.
//!
//! - `state`: the state file (TOML), its validation.
//! - `datapath`: loading the kernel programs, pins, attachments, map contents, counters.
//! - `netns`, `plumb`: network namespaces and the veth plumbing of local endpoints.
//! - `agent`: the reconcile loop (`overlay run`) and `overlay down`.

pub mod agent;
pub mod datapath;
pub mod fsutil;
pub mod netns;
pub mod plumb;
pub mod state;

/// Where pins and the agent's records live unless told otherwise. Must be reachable from every
/// network namespace: the bpffs under it is mounted in the host's mount namespace.
pub const DEFAULT_RUN_DIR: &str = "/run/overlay";

//! The overlay agent: reads the cluster state, plumbs local endpoints and fills the datapath.
//!
//! - `state`: the desired state (TOML), parsed and validated, every problem at once.
//! - `agent`: the pipeline and its loop: a state source, reconcile, the applied record; `down`.
//! - `datapath`: what the maps should hold (`contents`), loading, pins, attachments, counters.
//! - `plumb`, `netlink`, `netns`: the veth of each local endpoint, through one netlink owner.
//! - `gwbridge`: docker_gwbridge: the bridge, each container's interface on it, nftables masquerade.
//! - `store`: the cluster state in etcd: the agent's store source, `overlay state`, liveness.
//! - `fsutil`: files written atomically.

pub mod agent;
pub mod datapath;
pub mod fsutil;
pub mod gwbridge;
pub mod netlink;
pub mod netns;
pub mod plumb;
pub mod state;
pub mod store;

/// Where pins and the agent's records live unless told otherwise. Must be reachable from every
/// network namespace: the bpffs under it is mounted in the host's mount namespace.
pub const DEFAULT_RUN_DIR: &str = "/run/overlay";

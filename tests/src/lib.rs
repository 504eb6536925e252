//! Test bed for the overlay, shared by the end-to-end tests, the demo and the benchmarks:
//!
//! - `netns`: network namespaces (create, run inside, spawn inside), `wait_for`;
//! - `cleanup`: nothing outlives a test (drop, SIGINT/SIGTERM, leftovers of killed runs), `RunDir`;
//! - `spec`: what a cluster is made of, and its state file;
//! - `cluster`: a running cluster (underlay bridge, nodes, containers, agents);
//! - `vip`: service VIPs: identity servers, tallying clients, held connections, `overlay services`;
//! - `etcd`: a real etcd in a namespace (the store tests, the demo's `--etcd`, the bench);
//! - `kernel_vtep`: a node built like Docker's kernel overlay, for interop;
//! - `bed`, `packet`: BPF_PROG_TEST_RUN bed and byte-exact frames; `bench`: the benchmarks;
//! - `prereq`: the tools the demo and the benchmarks run, checked before anything starts.
//!
//! Everything is created inside namespaces named `ovt<pid>-…`; nothing is added to the root
//! network namespace.

pub mod bed;
pub mod bench;
mod cleanup;
mod cluster;
pub mod etcd;
mod kernel_vtep;
pub mod mesh;
mod netns;
pub mod packet;
pub mod prereq;
mod spec;
mod vip;

pub use cleanup::{cleanup_all, RunDir};
pub use cluster::{overlay_bin, tcpx_bin, Agent, Cluster, External, Proc};
pub use netns::{in_netns, run, spawn_in, wait_for, Netns};
pub use spec::{docker_mac, render_state, BackendSpec, ClusterSpec, EpSpec, NetSpec, NodeSpec, PortSpec, ServiceSpec};
pub use vip::{Held, Tally};

//! What each command needs from Debian, in one place. Every command installs its own list, so
//! the README's first command works on a fresh host with nothing but Rust.

/// Building the `overlay` binary: etcd-client compiles etcd's protobuf definitions with protoc.
pub const BUILD: &[&str] = &["protobuf-compiler"];
/// The store: a real etcd (server and etcdctl) for `cargo xtask demo --etcd`, the tests and the
/// bench, started inside their own namespaces (the package's service is not used).
pub const ETCD: &[&str] = &["etcd-server", "etcd-client"];
/// `cargo xtask test` on the store: certificates for the TLS test.
pub const TEST_TLS: &[&str] = &["openssl"];
/// `cargo xtask demo`: namespaces and links (ip), the connectivity matrix (ping), nft (the
/// agent masquerades docker_gwbridge traffic with it).
pub const DEMO: &[&str] = &["iproute2", "iputils-ping", "nftables"];
/// `cargo xtask test`: the demo's tools, ethtool (checksum offload in the XDP tests) and procps
/// (sysctl in the BPF test bed), nft (the agent's gwbridge masquerade).
pub const TEST: &[&str] = &["iproute2", "iputils-ping", "ethtool", "procps", "nftables"];
/// `cargo xtask bench`: the test tools, iperf3 (throughput and packet rate) and nftables (the
/// kernel's balancing beside our VIPs).
pub const BENCH: &[&str] = &["iproute2", "iputils-ping", "ethtool", "procps", "iperf3", "nftables"];
/// `cargo xtask bench --flame`: perf, to sample every CPU during a TCP round.
pub const FLAME: &[&str] = &["linux-perf"];

//! The underlay is hostile (issue 7, item 1): VXLAN is unauthenticated, so decapsulation accepts
//! a frame only from a cluster node, carrying an inner source that is an endpoint of that network
//! hosted on that node, addressed to the destination endpoint's own MAC. Crafted frames are sent
//! from a host on the underlay that is not a node, from the wrong node, and with foreign inner
//! sources; each must not arrive, and is counted. The same frame from the right node arrives,
//! so the test can tell a closed door from a broken injector.

use std::{path::PathBuf, time::Duration};

use overlay::{agent::Paths, datapath::Counters};
use overlay_common::stats::DropReason;
use overlay_tests::{Cluster, ClusterSpec, Netns};

fn vxinject() -> PathBuf {
    overlay_tests::tcpx_bin().with_file_name("vxinject")
}

fn counters(c: &Cluster, node: &str) -> Counters {
    Counters::from_pins(&Paths::new(&c.run_dir.path, node).pins).unwrap()
}

/// Send one crafted frame from namespace `from_ns` (address `from`) to node-a and return whether
/// web.1 received it.
fn arrives(c: &Cluster, from_ns: &str, from: &str, vni: u32, inner_src: &str, dst_mac: &str, tag: &str) -> bool {
    let log = c.logs.join(format!("listen-{tag}.log"));
    let mut l = c.container("web.1").spawn(&format!("{} listen 1.5", vxinject().display()), &log).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let send = format!("{} send {from} 192.168.50.11 {vni} {inner_src} 10.0.9.3 {dst_mac} {tag}", vxinject().display());
    assert!(Netns::ok_in(from_ns, &send), "could not send from {from_ns}");
    let _ = l.wait();
    std::fs::read_to_string(&log).unwrap_or_default().lines().any(|x| x == tag)
}

#[test]
fn only_cluster_nodes_can_send_into_a_network() {
    let spec = ClusterSpec::nodes(3)
        .network("app-net", 4097, "10.0.9.0/24")
        .network("db-net", 4098, "10.0.10.0/24")
        .endpoint("web.1", "app-net", "node-a", "10.0.9.3")
        .endpoint("web.2", "app-net", "node-b", "10.0.9.4")
        .endpoint("db.2", "db-net", "node-b", "10.0.10.4");
    let c = Cluster::up(spec).unwrap();
    // A host on the underlay that is not a node.
    let rogue = Netns::new("rogue").unwrap();
    c.underlay
        .sh(&format!(
            "ip link add r0 type veth peer name eth0 netns {} && ip link set r0 master br0 && ip link set r0 up",
            rogue.name
        ))
        .unwrap();
    rogue.sh("ip addr add 192.168.50.66/24 dev eth0 && ip link set eth0 up").unwrap();
    let (b, cn) = (c.nodes["node-b"].name.clone(), c.nodes["node-c"].name.clone());
    let web1_mac = "02:42:0a:00:09:03";
    let before = counters(&c, "node-a");

    // The right node, the right source, the right MAC: delivered.
    assert!(arrives(&c, &b, "192.168.50.12", 4097, "10.0.9.4", web1_mac, "legit"), "the injector does not work");

    assert!(
        !arrives(&c, &rogue.name, "192.168.50.66", 4097, "10.0.9.4", web1_mac, "rogue"),
        "accepted from a non-node"
    );
    assert!(!arrives(&c, &cn, "192.168.50.13", 4097, "10.0.9.4", web1_mac, "wrongnode"), "web.2 is not on node-c");
    assert!(!arrives(&c, &b, "192.168.50.12", 4097, "8.8.8.8", web1_mac, "foreign"), "inner source not an endpoint");
    assert!(!arrives(&c, &b, "192.168.50.12", 4097, "10.0.10.4", web1_mac, "othernet"), "source from another network");
    assert!(!arrives(&c, &b, "192.168.50.12", 4097, "10.0.9.4", "ff:ff:ff:ff:ff:ff", "bcast"), "broadcast inner MAC");

    let after = counters(&c, "node-a");
    let moved = |r: DropReason| after.drop(r) - before.drop(r);
    assert_eq!(moved(DropReason::UnknownVtep), 1, "rogue");
    assert_eq!(moved(DropReason::VtepMismatch), 1, "wrong node");
    assert_eq!(moved(DropReason::UnknownInnerSource), 2, "foreign and other-network sources");
    assert_eq!(moved(DropReason::InnerMacMismatch), 1, "broadcast inner MAC");
    // Nothing else from these frames reached web.1 or the host.
    assert!(c.ping("web.2", "web.1"), "ordinary overlay traffic still flows");
}

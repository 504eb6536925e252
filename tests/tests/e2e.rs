//! End-to-end: whole clusters in namespaces (an underlay bridge, a namespace per node and per
//! container, an agent per node), driven through the `overlay` binary as a user would.

use std::time::Duration;

use overlay_common::stats::{DropReason, FwdCounter};
use overlay_tests::{wait_for, Cluster, ClusterSpec, Netns};

fn fwd(c: &Cluster, node: &str, counter: FwdCounter) -> u64 {
    c.counters(node).unwrap().fwd(counter)
}

fn dropped(c: &Cluster, node: &str, reason: DropReason) -> u64 {
    c.counters(node).unwrap().drop(reason)
}

fn three_nodes(decap: Option<&str>) -> ClusterSpec {
    let mut s = ClusterSpec::three_nodes_two_networks();
    s.decap = decap.map(str::to_string);
    s
}

fn endpoints_of(c: &Cluster, net: &str) -> Vec<String> {
    c.spec.endpoints.iter().filter(|e| e.network == net).map(|e| e.name.clone()).collect()
}

fn node_of(c: &Cluster, ep: &str) -> String {
    c.spec.endpoints.iter().find(|e| e.name == ep).unwrap().node.clone()
}

/// Every ordered pair on the same network: ping, and a TCP transfer across nodes.
fn full_mesh(c: &mut Cluster) {
    c.start_servers().unwrap();
    for net in ["app-net", "db-net"] {
        let eps = endpoints_of(c, net);
        for a in &eps {
            for b in &eps {
                if a == b {
                    continue;
                }
                assert!(c.ping(a, b), "ping {a} -> {b} failed\n{}", c.agent_log(&node_of(c, a)));
                if node_of(c, a) != node_of(c, b) {
                    assert!(c.tcp(a, b, 2_000_000), "TCP {a} -> {b} failed");
                }
            }
        }
    }
    let encap: u64 = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| {
            fwd(c, n, FwdCounter::Encap) + fwd(c, n, FwdCounter::EncapNeighResolve) + fwd(c, n, FwdCounter::EncapCached)
        })
        .sum();
    let decap: u64 = ["node-a", "node-b", "node-c"].iter().map(|n| fwd(c, n, FwdCounter::Decap)).sum();
    let local: u64 = ["node-a", "node-b", "node-c"].iter().map(|n| fwd(c, n, FwdCounter::LocalDelivery)).sum();
    let arp: u64 = ["node-a", "node-b", "node-c"].iter().map(|n| fwd(c, n, FwdCounter::ArpReply)).sum();
    assert!(encap > 1000 && decap > 1000, "traffic did not go through our datapath: encap {encap} decap {decap}");
    assert!(local > 0, "web.1 <-> web.4 on node-a should be delivered veth to veth");
    assert!(arp > 0, "ARP should be answered from the maps");
}

fn isolation(c: &Cluster) {
    // The hosts' own traffic on the underlay is untouched by the decapsulation program.
    assert!(c.nodes["node-a"].ok("ping -c1 -W1 192.168.50.12"), "underlay ping between hosts broke");
    // web.1 is on app-net only. Give it a route to db-net and a neighbour entry so packets
    // really leave the container: the datapath must refuse them (and count it).
    let w = c.container("web.1");
    let before_arp = dropped(c, "node-a", DropReason::ArpUnknownTarget);
    w.sh("ip route add 10.0.10.0/24 dev eth0").unwrap();
    assert!(!c.ping("web.1", "db.2"), "cross-network ping must fail");
    assert!(dropped(c, "node-a", DropReason::ArpUnknownTarget) > before_arp, "ARP across networks was not counted");
    w.sh("ip neigh replace 10.0.10.4 lladdr 02:42:0a:00:0a:04 dev eth0 nud permanent").unwrap();
    let before = dropped(c, "node-a", DropReason::UnknownDestination);
    assert!(!c.ping("web.1", "db.2"), "cross-network ping must fail");
    assert!(dropped(c, "node-a", DropReason::UnknownDestination) > before, "cross-network IPv4 was not counted");
    // And the same IP on another network is not reachable either (db.2 is 10.0.10.4).
    w.sh("ip route del 10.0.10.0/24 dev eth0").unwrap();
}

#[test]
fn three_nodes_two_networks_tc_decap() {
    let mut c = Cluster::up(three_nodes(Some("tc"))).unwrap();
    full_mesh(&mut c);
    isolation(&c);
}

#[test]
fn three_nodes_two_networks_xdp_decap() {
    let mut c = Cluster::up(three_nodes(Some("xdp"))).unwrap();
    // XDP sees frames, not skbs: a checksum left to offload (CHECKSUM_PARTIAL) is lost on the
    // XDP redirect. On a physical underlay the sender's NIC fills it in; on this all-veth rig
    // nothing does, so the senders compute full checksums themselves, as a NIC would.
    for ns in c.containers.values() {
        ns.sh("ethtool -K eth0 tx off >/dev/null").unwrap();
    }
    full_mesh(&mut c);
    isolation(&c);
}

#[test]
fn interop_with_a_kernel_vxlan_node() {
    let spec = ClusterSpec::default()
        .node("node-a", "192.168.50.11")
        .kernel_node("node-k", "192.168.50.20")
        .network("app-net", 4097, "10.0.9.0/24")
        .endpoint("web.1", "app-net", "node-a", "10.0.9.3")
        .endpoint("kweb.1", "app-net", "node-k", "10.0.9.30");
    let mut c = Cluster::up(spec).unwrap();
    c.start_servers().unwrap();
    assert!(c.ping("web.1", "kweb.1"), "ours -> kernel vxlan\n{}", c.agent_log("node-a"));
    assert!(c.ping("kweb.1", "web.1"), "kernel vxlan -> ours");
    assert!(c.tcp("web.1", "kweb.1", 4_000_000), "TCP ours -> kernel");
    assert!(c.tcp("kweb.1", "web.1", 4_000_000), "TCP kernel -> ours");
    assert!(fwd(&c, "node-a", FwdCounter::Decap) > 100);
}

#[test]
fn state_changes_apply_live_and_bad_states_are_ignored() {
    let spec = ClusterSpec::nodes(3)
        .network("app-net", 4097, "10.0.9.0/24")
        .endpoint("web.1", "app-net", "node-a", "10.0.9.3")
        .endpoint("web.2", "app-net", "node-b", "10.0.9.4")
        .endpoint("web.3", "app-net", "node-c", "10.0.9.5");
    // web.3 exists as a sandbox but is not in the first state.
    let mut c = Cluster::up(spec.clone()).unwrap();
    let full = c.render_state();
    let without_web3 =
        full.split("[[endpoints]]").filter(|b| !b.contains("\"web.3\"")).collect::<Vec<_>>().join("[[endpoints]]");
    c.write_state(&without_web3).unwrap();
    c.wait_applied(Duration::from_secs(10)).unwrap();
    assert!(!c.ping("web.1", "web.3"), "web.3 is not in the state yet");
    c.start_servers().unwrap();

    // A long flow web.1 -> web.2 must survive every change below.
    let mut flow = c.tcp_background("web.1", "web.2", 3_000_000, 6.0).unwrap();

    // Added.
    c.write_state(&full).unwrap();
    c.wait_applied(Duration::from_secs(10)).unwrap();
    assert!(wait_for(Duration::from_secs(3), || c.ping("web.1", "web.3")), "added endpoint not reachable");

    // An invalid state is rejected and changes nothing.
    let hash_before = c.applied_hash("node-a");
    c.write_state(&full.replace("network = \"app-net\"\nnode = \"node-c\"", "network = \"nope\"\nnode = \"node-c\""))
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || c.agent_log("node-a").contains("new state rejected")),
        "rejection not logged"
    );
    assert!(
        c.agent_log("node-a").contains("unknown network \\\"nope\\\"")
            || c.agent_log("node-a").contains("unknown network \"nope\"")
    );
    assert_eq!(c.applied_hash("node-a"), hash_before);
    assert!(c.ping("web.1", "web.3"), "last good state must keep forwarding");

    // Moved: web.3 from node-c to node-b (same sandbox, new host).
    let moved = full.replace(
        "name = \"web.3\"\nnetwork = \"app-net\"\nnode = \"node-c\"",
        "name = \"web.3\"\nnetwork = \"app-net\"\nnode = \"node-b\"",
    );
    assert_ne!(moved, full);
    c.write_state(&moved).unwrap();
    c.wait_applied(Duration::from_secs(10)).unwrap();
    assert!(wait_for(Duration::from_secs(3), || c.ping("web.1", "web.3")), "moved endpoint not reachable");
    assert!(!c.nodes["node-c"].sh("ip -o link").unwrap().contains(": ov"), "node-c kept a veth for web.3");

    // Removed.
    let removed =
        moved.split("[[endpoints]]").filter(|b| !b.contains("\"web.3\"")).collect::<Vec<_>>().join("[[endpoints]]");
    c.write_state(&removed).unwrap();
    c.wait_applied(Duration::from_secs(10)).unwrap();
    assert!(!c.ping("web.1", "web.3"), "removed endpoint still reachable");
    assert!(!c.container("web.3").sh("ip -o link").unwrap().contains("eth0"), "removed endpoint kept its interface");

    assert!(
        flow.0.wait().unwrap().success(),
        "the unrelated flow broke during the changes:\n{}",
        std::fs::read_to_string(c.logs.join("flow-web.1-web.2.log")).unwrap_or_default()
    );
}

#[test]
fn agent_restart_keeps_an_open_tcp_connection() {
    let mut c = Cluster::up(ClusterSpec::two_nodes()).unwrap();
    c.start_servers().unwrap();
    let mut flow = c.tcp_background("web.1", "web.2", 4_000_000, 5.0).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    c.kill_agent("node-a");
    c.kill_agent("node-b");
    std::thread::sleep(Duration::from_millis(1000));
    // With both agents dead the datapath still forwards.
    assert!(c.ping("web.1", "web.2"), "forwarding stopped with the agents");
    c.start_agent("node-a").unwrap();
    c.start_agent("node-b").unwrap();
    // A restart applies the same state again: wait for the new generation.
    std::thread::sleep(Duration::from_millis(300));
    c.wait_applied(Duration::from_secs(10)).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || c.agent_log("node-a").contains("adopted")),
        "maps were not reused:\n{}",
        c.agent_log("node-a")
    );
    assert!(flow.0.wait().unwrap().success(), "the TCP connection did not survive the restart");
    assert!(c.ping("web.1", "web.2"));
}

#[test]
fn down_removes_everything() {
    let mut c = Cluster::up(ClusterSpec::two_nodes()).unwrap();
    assert!(c.ping("web.1", "web.2"));
    c.kill_agent("node-a");
    let bin = overlay_tests::overlay_bin();
    c.nodes["node-a"]
        .sh(&format!("{} down --node node-a --run-dir {}", bin.display(), c.run_dir.path.display()))
        .unwrap();
    let links = c.nodes["node-a"].sh("ip -o link").unwrap();
    assert!(!links.contains(": ov"), "veths left: {links}");
    assert!(!c.nodes["node-a"].sh("ip link show ul0").unwrap().contains("xdp"), "program left on the underlay");
    assert!(!c.run_dir.path.join("bpffs/node-a").exists(), "pins left");
    assert!(!c.ping("web.1", "web.2"));
    // The host's own traffic on the underlay still works.
    assert!(c.nodes["node-a"].ok("ping -c1 -W1 192.168.50.12"));
}

#[test]
fn too_big_packets_teach_the_sender_its_path_mtu() {
    // The network claims 1500 bytes; the 1500-byte underlay carries 1450 once encapsulated.
    let mut spec = ClusterSpec::two_nodes();
    spec.networks[0].mtu = Some(1500);
    let mut c = Cluster::up(spec).unwrap();
    assert!(c.container("web.1").sh("ip -o link show eth0").unwrap().contains("mtu 1500"));
    let out = c.container("web.1").sh("ping -c1 -W1 -M do -s 1472 10.0.9.4 2>&1 || true").unwrap();
    assert!(out.contains("mtu = 1450"), "no fragmentation-needed reply: {out}");
    let route = c.container("web.1").sh("ip route get 10.0.9.4").unwrap();
    assert!(route.contains("mtu 1450"), "path MTU not learned: {route}");
    // TCP segments shrink after the first ICMP: the transfer completes instead of stalling.
    c.start_servers().unwrap();
    assert!(c.tcp("web.1", "web.2", 2_000_000), "TCP stalled on the too-big path");
    assert!(fwd(&c, "node-a", FwdCounter::IcmpFragNeeded) > 0);
    assert!(dropped(&c, "node-a", DropReason::TooBig) > 0);
}

#[test]
fn a_sandbox_that_appears_later_is_plumbed_without_a_file_change() {
    let mut c = Cluster::up(ClusterSpec::two_nodes()).unwrap();
    let name = Netns::unique_name("late");
    let text = c.render_state()
        + &format!("[[endpoints]]\nname = \"late.1\"\nnetwork = \"app-net\"\nnode = \"node-a\"\nip = \"10.0.9.9\"\nnetns = \"/var/run/netns/{name}\"\n");
    c.write_state(&text).unwrap();
    // Everything else in the state is applied; the endpoint whose sandbox is missing waits.
    c.wait_applied(Duration::from_secs(10)).unwrap();
    let record = |c: &Cluster| c.record("node-a").unwrap();
    assert!(
        record(&c).failed.get("late.1").is_some_and(|why| why.contains("does not exist")),
        "{:?}",
        record(&c).failed
    );
    assert!(c.ping("web.1", "web.2"), "the rest of the state must keep forwarding");
    // The container's sandbox appears; the file does not change. The agent retries by itself.
    let late = Netns::create(&name).unwrap();
    assert!(wait_for(Duration::from_secs(10), || late.ok("ping -c1 -W1 10.0.9.4")), "late sandbox not reachable");
    assert!(record(&c).failed.is_empty());
    assert_eq!(c.agent_log("node-a").matches("will retry").count(), 1, "the same failure was logged more than once");
}

/// `overlay stats --json` (what a user reads) agrees with the counters the tests read.
#[test]
fn stats_cli_agrees_with_the_pinned_counters() {
    let c = Cluster::up(ClusterSpec::two_nodes()).unwrap();
    assert!(c.ping("web.1", "web.2"));
    let json = c.stats("node-a").unwrap();
    let typed = c.counters("node-a").unwrap();
    for (section, rows) in [("forwarded", &typed.forwarded), ("dropped", &typed.dropped)] {
        for (name, v) in rows {
            let cli = json[section]
                .as_array()
                .and_then(|a| a.iter().find(|x| x[0] == name.as_str()))
                .and_then(|x| x[1].as_u64());
            // Counters only grow: the CLI, read first, may be behind by what the ping's echo added.
            assert!(cli.is_some_and(|x| x <= *v), "{section} {name}: cli {cli:?}, pins {v}");
        }
    }
    let encap = [FwdCounter::Encap, FwdCounter::EncapNeighResolve, FwdCounter::EncapCached];
    assert!(encap.iter().map(|x| typed.fwd(*x)).sum::<u64>() > 0);
    assert!(json["not_plumbed"].as_object().is_some_and(|m| m.is_empty()), "{json}");
}

/// Node-a's cached next hop towards node-b, as the datapath reads it.
fn cached_next_hop(c: &Cluster, node: &str, vtep: [u8; 4]) -> Option<overlay_common::maps::NextHop> {
    use aya::maps::{HashMap, Map, MapData};
    let pin =
        overlay::agent::Paths::new(&c.run_dir.path, node).pins.join("maps").join(overlay_common::maps::MAP_NEXTHOPS);
    let map = Map::HashMap(MapData::from_pin(pin).ok()?);
    let m = HashMap::<_, u32, overlay_common::maps::NextHop>::try_from(&map).ok()?;
    m.get(&u32::from_ne_bytes(vtep), 0).ok()
}

#[test]
fn encapsulation_caches_the_next_hop_and_follows_neighbour_changes() {
    let c = Cluster::up(ClusterSpec::two_nodes()).unwrap();
    let b_mac = c.nodes["node-b"].sh("cat /sys/class/net/ul0/address").unwrap().trim().to_string();
    let mac = |s: &str| -> [u8; 6] {
        let v: Vec<u8> = s.split(':').map(|x| u8::from_str_radix(x, 16).unwrap()).collect();
        v.try_into().unwrap()
    };
    // The first packet lets the kernel resolve node-b; the agent caches what it learned.
    assert!(c.ping("web.1", "web.2"));
    let peer = [192, 168, 50, 12];
    assert!(
        wait_for(Duration::from_secs(5), || cached_next_hop(&c, "node-a", peer).is_some_and(|n| n.dmac == mac(&b_mac))),
        "no cached next hop: {:?}",
        cached_next_hop(&c, "node-a", peer)
    );
    let before = fwd(&c, "node-a", FwdCounter::EncapCached);
    assert!(c.ping("web.1", "web.2"));
    assert!(fwd(&c, "node-a", FwdCounter::EncapCached) > before, "encapsulation did not use the cache");
    // A neighbour change reaches the cache through netlink events, without a state change.
    let node_a = &c.nodes["node-a"];
    node_a.sh("ip neigh replace 192.168.50.12 lladdr 02:00:00:00:00:99 dev ul0 nud permanent").unwrap();
    assert!(
        wait_for(Duration::from_secs(3), || cached_next_hop(&c, "node-a", peer)
            .is_some_and(|n| n.dmac == mac("02:00:00:00:00:99"))),
        "the cache did not follow the neighbour table"
    );
    node_a.sh(&format!("ip neigh replace 192.168.50.12 lladdr {b_mac} dev ul0 nud permanent")).unwrap();
    assert!(wait_for(Duration::from_secs(3), || c.ping("web.1", "web.2")), "traffic after the neighbour came back");
}

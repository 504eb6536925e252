//! End-to-end tests of docker_gwbridge (issue 10): two nodes of ours in namespaces, app-net
//! (10.0.9.0/24) with two containers on node-a (web.1, web.2) and one on node-b (web.3), a
//! `[gwbridge]` table in the state file (Docker's defaults: docker_gwbridge, 172.18.0.0/16,
//! eth1), and a host on the underlay that is no node (192.168.50.100, "the outside").
//!
//! Every container runs a `PeerServer` (TCP and UDP, answering `NAME@PEER_IP`), so what a
//! client reads says who answered and with what source address the packet arrived.
//!
//! What the tests decide where the issue is silent: a gwbridge address is only meaningful on
//! its own node. Every node has its own bridge with the same subnet, so web.3's 172.18.0.2 on
//! node-b is, seen from node-a, the address of a container of node-a (web.1's own): web.1
//! reaching "172.18.0.2" talks to itself (the kernel routes its own address locally), web.2 is
//! blocked by the ICC rule as for any other container of its bridge, and nothing ever reaches
//! web.3 on node-b (containers of different nodes talk on the overlay only).

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use overlay::datapath::Counters;
use overlay_common::stats::{DropReason, FwdCounter};
use overlay_tests::{
    in_netns,
    mesh::{hold, Capture, PeerServer, PROTO_ICMP},
    Cluster, ClusterSpec, Netns, ServiceSpec, Tally,
};

const APP: &str = "app-net";
/// What the containers' PeerServers listen on.
const PORT: u16 = 7000;
/// The outside host (a host of the underlay, no node) and its PeerServer's port.
const OUTSIDE: &str = "outside";
const OUTSIDE_IP: &str = "192.168.50.100";
const OUTSIDE_PORT: u16 = 7100;
const NODE_A_IP: &str = "192.168.50.11";
const NODE_B_IP: &str = "192.168.50.12";
const GATEWAY: &str = "172.18.0.1";

/// The `[gwbridge]` table with `icc` as given (every other field Docker's default).
fn gw_table(icc: bool) -> String {
    format!("\n[gwbridge]\nicc = {icc}\n")
}

fn spec(icc: bool) -> ClusterSpec {
    let mut s = ClusterSpec::nodes(2)
        .network(APP, 4097, "10.0.9.0/24")
        .endpoint("web.1", APP, "node-a", "10.0.9.3")
        .endpoint("web.2", APP, "node-a", "10.0.9.4")
        .endpoint("web.3", APP, "node-b", "10.0.9.5");
    s.extra = gw_table(icc);
    s
}

fn up(icc: bool) -> Cluster {
    let mut c = Cluster::up(spec(icc)).unwrap();
    c.add_external(OUTSIDE, OUTSIDE_IP).unwrap();
    c
}

/// The IPv4 address of the container's eth1 (no prefix), if it has one.
fn gw_ip(c: &Cluster, ep: &str) -> Option<String> {
    let out = c.container(ep).sh("ip -4 -o addr show dev eth1 2>/dev/null || true").ok()?;
    let mut words = out.split_whitespace();
    words.by_ref().find(|w| *w == "inet")?;
    words.next().map(|a| a.split('/').next().unwrap_or(a).to_string())
}

/// The agent's record of gwbridge addresses on `node`, by endpoint name (sandboxes the test
/// does not know by their path).
fn recorded(c: &Cluster, node: &str) -> BTreeMap<String, Ipv4Addr> {
    let r = c.record(node).expect("the agent has a record");
    r.gw_ports
        .iter()
        .map(|(path, p)| {
            let name = c
                .containers
                .iter()
                .find(|(_, ns)| ns.path() == *path)
                .map(|(n, _)| n.clone())
                .unwrap_or_else(|| path.display().to_string());
            (name, p.ip)
        })
        .collect()
}

fn counters(c: &Cluster, node: &str) -> Counters {
    c.counters(node).unwrap()
}

fn fwd_moved(before: &Counters, after: &Counters, f: FwdCounter) -> u64 {
    after.fwd(f) - before.fwd(f)
}

fn drop_moved(before: &Counters, after: &Counters, r: DropReason) -> u64 {
    after.drop(r) - before.drop(r)
}

fn ping(ns: &Netns, ip: &str) -> bool {
    ns.ok(&format!("ping -c1 -W1 -q {ip}"))
}

/// One TCP exchange (`tcpx cps`, bounded to 5 s) from `ns` with ip:port: what the server said,
/// or Err with tcpx's complaint.
fn tcp_once(ns: &Netns, ip: &str, port: u16) -> Result<String, String> {
    exchange(ns, "cps", ip, port)
}

/// One UDP exchange (`tcpx ucps`: the reply must come from the address asked).
fn udp_once(ns: &Netns, ip: &str, port: u16) -> Result<String, String> {
    exchange(ns, "ucps", ip, port)
}

fn exchange(ns: &Netns, mode: &str, ip: &str, port: u16) -> Result<String, String> {
    let cmd = format!("timeout 5 {} {mode} {ip} {port} 1", overlay_tests::tcpx_bin().display());
    let out = in_netns(&ns.name, &cmd).output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!("{mode} {ip}:{port}: {} {stdout}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let t: Tally = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).map_err(|e| e.to_string())?;
    t.into_keys().next().ok_or_else(|| format!("{mode} {ip}:{port}: no answer: {stdout}"))
}

/// A PeerServer on PORT in each of these containers, by name.
fn servers(c: &Cluster, eps: &[&str]) -> BTreeMap<String, PeerServer> {
    eps.iter().map(|ep| (ep.to_string(), PeerServer::start(c.container(ep), ep, PORT).unwrap())).collect()
}

fn nft_tables(c: &Cluster, node: &str) -> String {
    c.nodes[node].sh("nft list tables").unwrap()
}

/// Add a container (a fresh namespace) and its endpoint to the spec; the state is not written.
fn add_container(c: &mut Cluster, name: &str, node: &str, ip: &str) {
    let tag: String = name.chars().filter(|ch| ch.is_ascii_alphanumeric()).collect();
    c.containers.insert(name.to_string(), Netns::new(&tag).unwrap());
    c.spec = std::mem::take(&mut c.spec).endpoint(name, APP, node, ip);
}

fn apply(c: &mut Cluster) {
    c.write_state(&c.render_state()).unwrap();
    c.wait_applied(Duration::from_secs(20)).unwrap();
}

/// 1. icc = false: two containers of one node cannot reach each other's gwbridge addresses
///    (ping, TCP, either way; icc-blocked counts it on their node), while their overlay
///    addresses work. A gwbridge address of another node is not reachable across nodes: from
///    node-a it is a node-a address (see the module's comment).
#[test]
fn icc_off_blocks_containers_of_a_node_on_the_bridge_but_not_on_the_overlay() {
    let c = up(false);
    let (g1, g2, g3) = (gw_ip(&c, "web.1").unwrap(), gw_ip(&c, "web.2").unwrap(), gw_ip(&c, "web.3").unwrap());
    // Lowest free addresses, per node (each node has its own bridge).
    assert_eq!((g1.as_str(), g2.as_str(), g3.as_str()), ("172.18.0.2", "172.18.0.3", "172.18.0.2"));
    let s = servers(&c, &["web.1", "web.2", "web.3"]);
    let before = counters(&c, "node-a");

    let (w1, w2) = (c.container("web.1"), c.container("web.2"));
    assert!(ping(w1, GATEWAY), "web.1 must reach its gateway with icc off");
    assert!(!ping(w1, &g2), "ping web.1 -> web.2's gwbridge address {g2} went through with icc off");
    assert!(!ping(w2, &g1), "ping web.2 -> web.1's gwbridge address {g1} went through with icc off");
    let r = tcp_once(w1, &g2, PORT);
    assert!(r.is_err(), "TCP web.1 -> {g2}:{PORT} (web.2's gwbridge address) with icc off: {r:?}");
    let r = tcp_once(w2, &g1, PORT);
    assert!(r.is_err(), "TCP web.2 -> {g1}:{PORT} (web.1's gwbridge address) with icc off: {r:?}");
    let after = counters(&c, "node-a");
    assert!(drop_moved(&before, &after, DropReason::IccBlocked) > 0, "icc-blocked did not move on node-a");

    // The overlay is not the bridge: the same containers reach each other there, and the
    // server sees the overlay address.
    assert!(c.ping("web.1", "web.2"), "overlay ping web.1 -> web.2");
    assert_eq!(tcp_once(w1, "10.0.9.4", PORT), Ok("web.2@10.0.9.3".into()), "overlay TCP web.1 -> web.2");
    assert_eq!(tcp_once(w2, "10.0.9.3", PORT), Ok("web.1@10.0.9.4".into()), "overlay TCP web.2 -> web.1");
    assert_eq!(tcp_once(w1, "10.0.9.5", PORT), Ok("web.3@10.0.9.3".into()), "overlay TCP web.1 -> web.3");

    // web.3's gwbridge address, from node-a: web.1's own (local to web.1), blocked for web.2.
    assert!(
        w1.sh(&format!("ip route get {g3}")).unwrap().starts_with("local"),
        "{g3} is web.1's own address on node-a"
    );
    assert_eq!(tcp_once(w1, &g3, PORT), Ok(format!("web.1@{g3}")), "web.1 -> {g3} is web.1 itself");
    let r = tcp_once(w2, &g3, PORT);
    assert!(r.is_err(), "TCP web.2 -> {g3} (web.1 on node-a, web.3 on node-b) with icc off: {r:?}");
    assert!(
        s["web.3"].peers().iter().all(|p| p.addr.ip().octets()[..2] != [172, 18]),
        "web.3 was reached over a gwbridge: {:?}",
        s["web.3"].peers()
    );
    // Nothing reached web.2 from a gwbridge address either.
    assert!(
        s["web.2"].peers().iter().all(|p| p.addr.ip().to_string() == "10.0.9.3"),
        "web.2 saw peers other than web.1's overlay address: {:?}",
        s["web.2"].peers()
    );
}

/// 2. Every container reaches the outside (ping, TCP, UDP) with its node's address as source;
///    the outside cannot open connections into the containers' gwbridge addresses.
#[test]
fn containers_reach_the_outside_with_their_nodes_address() {
    let c = up(false);
    let outside = PeerServer::start(&c.external(OUTSIDE).ns, OUTSIDE, OUTSIDE_PORT).unwrap();
    let before = [counters(&c, "node-a"), counters(&c, "node-b")];
    let cap = Capture::start(&c.external(OUTSIDE).ns, "eth0").unwrap();
    for (ep, node_ip) in [("web.1", NODE_A_IP), ("web.2", NODE_A_IP), ("web.3", NODE_B_IP)] {
        let w = c.container(ep);
        assert!(
            w.sh(&format!("ip route get {OUTSIDE_IP}")).unwrap().contains(&format!("via {GATEWAY} dev eth1")),
            "{ep}: the outside is not routed through the gwbridge"
        );
        assert!(ping(w, OUTSIDE_IP), "{ep}: ping to the outside");
        let want = format!("{OUTSIDE}@{node_ip}");
        assert_eq!(tcp_once(w, OUTSIDE_IP, OUTSIDE_PORT), Ok(want.clone()), "{ep}: TCP to the outside");
        assert_eq!(udp_once(w, OUTSIDE_IP, OUTSIDE_PORT), Ok(want), "{ep}: UDP to the outside");
    }
    let frames = cap.finish();
    let after = [counters(&c, "node-a"), counters(&c, "node-b")];
    // A bulk transfer, every byte echoed and checked (segments of the underlay's MTU, NATed).
    let f = std::fs::File::create(c.logs.join("outside-serve.log")).unwrap();
    let serve = format!("{} serve 5001", overlay_tests::tcpx_bin().display());
    let _echo = overlay_tests::Proc(overlay_tests::spawn_in(&c.external(OUTSIDE).ns.name, &serve, f).unwrap());
    for ep in ["web.1", "web.3"] {
        let send = format!("timeout 30 {} send {OUTSIDE_IP} 5001 4000000", overlay_tests::tcpx_bin().display());
        assert!(c.container(ep).ok(&send), "{ep}: bulk TCP to the outside");
    }
    let peers = outside.peers();
    assert_eq!(peers.len(), 6, "one TCP connection and one datagram per container: {peers:?}");
    assert!(
        peers.iter().all(|p| [NODE_A_IP, NODE_B_IP].contains(&p.addr.ip().to_string().as_str())),
        "the outside saw addresses other than the nodes': {peers:?}"
    );
    // ICMP too (the kernel's path, nftables' masquerade): echo requests from the nodes only.
    let pings: Vec<_> = frames.iter().filter(|f| !f.outgoing && f.proto == PROTO_ICMP && f.icmp.is_none()).collect();
    let srcs: std::collections::BTreeSet<String> = pings.iter().map(|f| f.src.to_string()).collect();
    assert_eq!(
        srcs,
        [NODE_A_IP, NODE_B_IP].iter().map(|s| s.to_string()).collect(),
        "ICMP seen by the outside: {pings:?}"
    );
    for (i, node) in ["node-a", "node-b"].iter().enumerate() {
        assert!(
            fwd_moved(&before[i], &after[i], FwdCounter::GwSnat) > 0,
            "{node}: gw-snat did not move (TCP/UDP masqueraded in eBPF)"
        );
    }

    // No way in: even with a route to the bridge's subnet through node-a, the outside cannot
    // connect to a container's gwbridge address.
    let s = servers(&c, &["web.1"]);
    let ext = &c.external(OUTSIDE).ns;
    ext.sh(&format!("ip route add 172.18.0.0/16 via {NODE_A_IP}")).unwrap();
    let r = tcp_once(ext, "172.18.0.2", PORT);
    assert!(r.is_err(), "the outside opened a connection to web.1's gwbridge address: {r:?}");
    assert!(s["web.1"].peers().is_empty(), "web.1 was reached from outside: {:?}", s["web.1"].peers());
    // Netfilter's drop, shown by `overlay stats` beside the datapath's.
    let st = c.stats("node-a").unwrap();
    assert!(st["gwbridge"]["inbound_dropped"].as_u64().unwrap_or(0) > 0, "the inbound drop is not shown: {st}");
    assert_eq!(st["gwbridge"]["ports"].as_object().map(|p| p.len()), Some(2), "node-a's two containers: {st}");
}

/// 3. icc in the state file takes effect live: true lets web.1 reach web.2 on the bridge
///    (web.2 sees web.1's gwbridge address), false blocks it again.
#[test]
fn switching_icc_live() {
    let mut c = up(false);
    let s = servers(&c, &["web.2"]);
    let (g1, g2) = (gw_ip(&c, "web.1").unwrap(), gw_ip(&c, "web.2").unwrap());
    assert!(!ping(c.container("web.1"), &g2), "icc off at first");

    c.spec.extra = gw_table(true);
    apply(&mut c);
    // The neighbour entry web.1 gave up on while icc was off is resolved again first: a few tries.
    assert!(
        overlay_tests::wait_for(Duration::from_secs(5), || ping(c.container("web.1"), &g2)),
        "icc on: ping web.1 -> web.2's gwbridge address {g2}"
    );
    assert_eq!(tcp_once(c.container("web.1"), &g2, PORT), Ok(format!("web.2@{g1}")), "icc on: TCP over the bridge");
    let before = counters(&c, "node-a");
    assert!(ping(c.container("web.2"), &g1), "icc on: ping web.2 -> web.1's gwbridge address {g1}");
    assert_eq!(
        drop_moved(&before, &counters(&c, "node-a"), DropReason::IccBlocked),
        0,
        "icc on, yet icc-blocked moved"
    );

    c.spec.extra = gw_table(false);
    apply(&mut c);
    let before = counters(&c, "node-a");
    assert!(!ping(c.container("web.1"), &g2), "icc off again: ping web.1 -> {g2} went through");
    let r = tcp_once(c.container("web.1"), &g2, PORT);
    assert!(r.is_err(), "icc off again: TCP web.1 -> {g2}: {r:?}");
    assert!(drop_moved(&before, &counters(&c, "node-a"), DropReason::IccBlocked) > 0, "icc-blocked did not move");
    assert_eq!(
        s["web.2"].peers().len(),
        1,
        "web.2 saw exactly the one connection made with icc on: {:?}",
        s["web.2"].peers()
    );
}

/// 4. Containers of one overlay network talk on the overlay, never over the gwbridge: the
///    routes say so, and gw-out (which does count what a container sends on eth1, shown first
///    with the gateway) stays still on both nodes while they exchange traffic.
#[test]
fn overlay_traffic_never_uses_the_gwbridge() {
    let mut c = up(false);
    for (ep, peer) in [("web.1", "10.0.9.4"), ("web.1", "10.0.9.5"), ("web.3", "10.0.9.3")] {
        let r = c.container(ep).sh(&format!("ip route get {peer}")).unwrap();
        assert!(r.contains("dev eth0") && !r.contains("eth1"), "{ep} -> {peer}: {r}");
    }
    let before = counters(&c, "node-a");
    assert!(ping(c.container("web.1"), GATEWAY));
    assert!(fwd_moved(&before, &counters(&c, "node-a"), FwdCounter::GwOut) > 0, "gw-out does not count eth1 traffic");

    c.start_servers().unwrap();
    let before = [counters(&c, "node-a"), counters(&c, "node-b")];
    for (a, b) in [("web.1", "web.2"), ("web.2", "web.1"), ("web.1", "web.3"), ("web.3", "web.2")] {
        assert!(c.ping(a, b), "overlay ping {a} -> {b}");
        assert!(c.tcp(a, b, 1_000_000), "overlay TCP {a} -> {b}");
    }
    let after = [counters(&c, "node-a"), counters(&c, "node-b")];
    for (i, node) in ["node-a", "node-b"].iter().enumerate() {
        assert_eq!(fwd_moved(&before[i], &after[i], FwdCounter::GwOut), 0, "{node}: overlay traffic went out on eth1");
        assert_eq!(fwd_moved(&before[i], &after[i], FwdCounter::GwSnat), 0, "{node}: overlay traffic was masqueraded");
        assert_eq!(
            drop_moved(&before[i], &after[i], DropReason::IccBlocked),
            0,
            "{node}: overlay traffic hit the bridge"
        );
    }
    assert!(
        fwd_moved(&before[0], &after[0], FwdCounter::LocalDelivery) > 0,
        "web.1 <-> web.2 not delivered on the overlay"
    );
}

/// 5. A host-mode published port reaches the task through eth1: the client connects to
///    node-a's address, the task's server sees the client's own address on a connection whose
///    local address is the task's gwbridge address, and the SYN arrives on eth1.
#[test]
fn host_mode_published_port_reaches_the_task_on_its_gwbridge_address() {
    const TARGET: u16 = 80;
    const HOST_PORT: u16 = 9090;
    let mut s = ClusterSpec::nodes(2)
        .ingress_network("ingress", 4096, "10.0.0.0/24")
        .endpoint("web.a", "ingress", "node-a", "10.0.0.21")
        .service(
            ServiceSpec::new("hostweb")
                .publish("tcp", TARGET, HOST_PORT, Some("host"))
                .publish("udp", TARGET, HOST_PORT, Some("host"))
                .backend("web.a", None),
        );
    s.extra = gw_table(false);
    let mut c = Cluster::up(s).unwrap();
    c.add_external(OUTSIDE, OUTSIDE_IP).unwrap();
    let ga = gw_ip(&c, "web.a").unwrap();
    assert_eq!(ga, "172.18.0.2");
    let server = PeerServer::start(c.container("web.a"), "web.a", TARGET).unwrap();
    let before = counters(&c, "node-a");
    let on_eth1 = Capture::start(c.container("web.a"), "eth1").unwrap();
    let on_eth0 = Capture::start(c.container("web.a"), "eth0").unwrap();

    let seen = format!("web.a@{OUTSIDE_IP}");
    let t = c.mesh_cps(OUTSIDE, "node-a", HOST_PORT, 5).unwrap();
    assert_eq!(t, Tally::from([(seen.clone(), 5)]), "TCP to node-a:{HOST_PORT}");
    let t = c.mesh_ucps(OUTSIDE, "node-a", HOST_PORT, 5).unwrap();
    assert_eq!(t, Tally::from([(seen.clone(), 5)]), "UDP to node-a:{HOST_PORT}");
    let mut h = c.mesh_hold(OUTSIDE, "node-a", HOST_PORT).unwrap();
    assert_eq!(h.id, seen);
    assert_eq!(h.round(), "ok");
    let ss = c.container("web.a").sh(&format!("ss -Htn state established '( sport = :{TARGET} )'")).unwrap();
    assert!(
        ss.contains(&format!("{ga}:{TARGET}")) && ss.contains(&format!("{OUTSIDE_IP}:{}", h.port)),
        "the task's connection: local {ga}:{TARGET}, peer {OUTSIDE_IP}:{}; ss says: {ss}",
        h.port
    );
    drop(h);
    let (eth1, eth0) = (on_eth1.finish(), on_eth0.finish());
    let after = counters(&c, "node-a");

    let to_task: Vec<_> =
        eth1.iter().filter(|f| !f.outgoing && f.dport == TARGET && f.src.to_string() == OUTSIDE_IP).collect();
    assert!(!to_task.is_empty(), "nothing for port {TARGET} arrived on eth1: {eth1:?}");
    assert!(to_task.iter().all(|f| f.dst.to_string() == ga), "not to the gwbridge address: {to_task:?}");
    assert!(!eth0.iter().any(|f| f.dport == TARGET || f.sport == TARGET), "the published port used eth0: {eth0:?}");
    assert!(fwd_moved(&before, &after, FwdCounter::MeshNew) > 0, "mesh-new did not move");
    assert!(fwd_moved(&before, &after, FwdCounter::GwReverse) > 0, "gw-reverse did not move");
    assert!(
        server.peers().iter().all(|p| p.addr.ip().to_string() == OUTSIDE_IP),
        "the task saw another client address: {:?}",
        server.peers()
    );
    assert_eq!(server.peers().len(), 11, "5 TCP + 5 UDP + the held connection: {:?}", server.peers());
}

/// 6a. A restarted agent keeps the addresses (and gives a container that arrived while it was
///     down the next free one); the bridge still works and still blocks.
#[test]
fn agent_restart_keeps_the_gwbridge_addresses() {
    let mut c = up(false);
    let was = recorded(&c, "node-a");
    assert_eq!(
        was,
        BTreeMap::from([
            ("web.1".to_string(), "172.18.0.2".parse().unwrap()),
            ("web.2".to_string(), "172.18.0.3".parse().unwrap())
        ])
    );
    c.kill_agent("node-a");
    // A container arrives while the agent is down: the new agent must apply a new state (so
    // waiting for it is waiting for the new agent), keeping what the old one allocated.
    add_container(&mut c, "web.4", "node-a", "10.0.9.6");
    c.write_state(&c.render_state()).unwrap();
    c.start_agent("node-a").unwrap();
    c.wait_applied(Duration::from_secs(20)).unwrap();

    let now = recorded(&c, "node-a");
    assert_eq!(now.get("web.1"), was.get("web.1"), "web.1's address changed: {now:?}");
    assert_eq!(now.get("web.2"), was.get("web.2"), "web.2's address changed: {now:?}");
    assert_eq!(now.get("web.4").map(|a| a.to_string()).as_deref(), Some("172.18.0.4"), "{now:?}");
    for (ep, ip) in [("web.1", "172.18.0.2"), ("web.2", "172.18.0.3"), ("web.4", "172.18.0.4")] {
        assert_eq!(gw_ip(&c, ep).as_deref(), Some(ip), "{ep}'s eth1");
        assert!(ping(c.container(ep), GATEWAY), "{ep} -> gateway after the restart");
    }
    assert_eq!(gw_ip(&c, "web.3").as_deref(), Some("172.18.0.2"), "web.3 on node-b");
    let outside = PeerServer::start(&c.external(OUTSIDE).ns, OUTSIDE, OUTSIDE_PORT).unwrap();
    assert_eq!(tcp_once(c.container("web.1"), OUTSIDE_IP, OUTSIDE_PORT), Ok(format!("{OUTSIDE}@{NODE_A_IP}")));
    assert_eq!(outside.peers().len(), 1);
    let before = counters(&c, "node-a");
    assert!(!ping(c.container("web.4"), "172.18.0.2"), "icc off after the restart: web.4 reached web.1");
    assert!(drop_moved(&before, &counters(&c, "node-a"), DropReason::IccBlocked) > 0);
}

/// 6b. Removing a container's endpoint removes its eth1 and frees its address: the next
///     container takes the lowest free one, the others keep theirs.
#[test]
fn removing_an_endpoint_frees_its_gwbridge_address() {
    let mut c = up(false);
    let port1 = c.record("node-a").unwrap().gw_ports[&c.container("web.1").path()].host_veth.clone();
    assert!(c.nodes["node-a"].ok(&format!("ip link show {port1}")), "web.1's port {port1} on node-a");
    c.spec.endpoints.retain(|e| e.name != "web.1");
    apply(&mut c);
    assert_eq!(gw_ip(&c, "web.1"), None, "web.1 kept its gwbridge address");
    assert!(!c.container("web.1").ok("ip link show eth1"), "web.1 kept its eth1");
    assert!(!c.nodes["node-a"].ok(&format!("ip link show {port1}")), "web.1's port {port1} is left on node-a");
    let now = recorded(&c, "node-a");
    assert_eq!(now, BTreeMap::from([("web.2".to_string(), "172.18.0.3".parse().unwrap())]));

    add_container(&mut c, "web.5", "node-a", "10.0.9.7");
    apply(&mut c);
    assert_eq!(gw_ip(&c, "web.5").as_deref(), Some("172.18.0.2"), "web.5 did not get the freed lowest address");
    assert_eq!(gw_ip(&c, "web.2").as_deref(), Some("172.18.0.3"), "web.2 was renumbered");
    assert!(ping(c.container("web.5"), GATEWAY), "web.5 -> gateway");
    assert!(ping(c.container("web.5"), OUTSIDE_IP), "web.5 -> outside");
    assert!(!ping(c.container("web.5"), "172.18.0.3"), "icc off: web.5 reached web.2");
}

/// 6c. An agent that lost its record renumbers nothing: each container keeps the address its
///     eth1 has, even where a lower one is free (web.1 left, freeing 172.18.0.2; web.2 keeps .3).
#[test]
fn a_lost_record_renumbers_nothing() {
    let mut c = up(false);
    c.spec.endpoints.retain(|e| e.name != "web.1");
    apply(&mut c);
    assert_eq!(gw_ip(&c, "web.2").as_deref(), Some("172.18.0.3"));
    c.kill_agent("node-a");
    let record = overlay::agent::Paths::new(&c.run_dir.path, "node-a").record_file();
    std::fs::remove_file(&record).unwrap();
    c.start_agent("node-a").unwrap();
    c.wait_applied(Duration::from_secs(20)).unwrap();
    assert_eq!(gw_ip(&c, "web.2").as_deref(), Some("172.18.0.3"), "web.2 was renumbered");
    assert_eq!(recorded(&c, "node-a"), BTreeMap::from([("web.2".to_string(), "172.18.0.3".parse().unwrap())]));
    assert!(ping(c.container("web.2"), GATEWAY) && ping(c.container("web.2"), OUTSIDE_IP), "web.2 after the restart");
    // A newcomer takes the free lowest address, not web.2's.
    add_container(&mut c, "web.5", "node-a", "10.0.9.7");
    apply(&mut c);
    assert_eq!(gw_ip(&c, "web.5").as_deref(), Some("172.18.0.2"));
    assert_eq!(gw_ip(&c, "web.2").as_deref(), Some("172.18.0.3"));
}

/// 7. `overlay down` removes the bridge the agent created, the ovg* ports and the nft table.
#[test]
fn down_removes_the_gwbridge() {
    let mut c = up(false);
    let node = &c.nodes["node-a"];
    let links = node.sh("ip -o link").unwrap();
    assert!(links.contains("docker_gwbridge"), "no bridge: {links}");
    assert_eq!(links.matches(": ovg").count(), 2, "one port per container: {links}");
    assert!(nft_tables(&c, "node-a").contains("table ip overlay_gwbridge"));
    c.kill_agent("node-a");
    let bin = overlay_tests::overlay_bin();
    c.nodes["node-a"]
        .sh(&format!("{} down --node node-a --run-dir {}", bin.display(), c.run_dir.path.display()))
        .unwrap();
    let links = c.nodes["node-a"].sh("ip -o link").unwrap();
    assert!(!links.contains("docker_gwbridge"), "bridge left: {links}");
    assert!(!links.contains(": ovg"), "gwbridge ports left: {links}");
    let tables = nft_tables(&c, "node-a");
    assert!(!tables.contains("overlay_gwbridge"), "nft table left: {tables}");
    assert!(!c.container("web.1").ok("ip link show eth1"), "web.1 kept its eth1");
    assert!(!ping(c.container("web.1"), OUTSIDE_IP), "web.1 still reaches the outside");
    // node-b is untouched.
    assert!(nft_tables(&c, "node-b").contains("overlay_gwbridge"));
    assert!(ping(c.container("web.3"), OUTSIDE_IP), "node-b's container lost the outside");
}

/// 8. A container must use its own address and MAC on eth1: sending with another source
///    address (its overlay one) or another container's MAC is dropped at the port.
#[test]
fn spoofed_sources_on_eth1_are_dropped() {
    let c = up(true);
    let w1 = c.container("web.1");
    assert!(ping(w1, GATEWAY), "plain ping to the gateway");
    let before = counters(&c, "node-a");
    // The route to the gateway is eth1; -I binds the overlay address as the source.
    assert!(!w1.ok(&format!("ping -c1 -W1 -q -I 10.0.9.3 {GATEWAY}")), "a spoofed source reached the gateway");
    let after = counters(&c, "node-a");
    assert!(drop_moved(&before, &after, DropReason::SpoofedSource) > 0, "spoofed-source did not move");
    // web.2's MAC on web.1's eth1 (icc on, so only the MAC check stands in the way).
    w1.sh("ip link set dev eth1 address 02:42:ac:12:00:03").unwrap();
    assert!(!ping(w1, GATEWAY), "a spoofed MAC reached the gateway");
    assert!(drop_moved(&after, &counters(&c, "node-a"), DropReason::SpoofedMac) > 0, "spoofed-mac did not move");
}

/// 2b. Errors of the outside reach the container as they reach the node's own sockets: a TCP
///     reset and an ICMP port unreachable for a masqueraded flow are translated back (the
///     node's own connected UDP socket, as a baseline, is refused; so must the container's be).
#[test]
fn the_outsides_refusals_reach_the_container() {
    const CLOSED: u16 = 7777;
    let c = up(false);
    let r = tcp_once(c.container("web.1"), OUTSIDE_IP, CLOSED);
    assert!(r.as_ref().is_err_and(|e| e.contains("ConnectionRefused")), "TCP to a closed port outside: {r:?}");
    let log = c.logs.join("uhold.log");
    let mut own = hold(&c.nodes["node-a"], OUTSIDE_IP, CLOSED, true, &log).unwrap();
    assert_eq!(own.round(), "refused", "baseline: node-a's own UDP to a closed port outside");
    let cap = Capture::start(c.container("web.1"), "eth1").unwrap();
    let mut h = hold(c.container("web.1"), OUTSIDE_IP, CLOSED, true, &log).unwrap();
    let got = h.round();
    let frames = cap.finish();
    assert_eq!(got, "refused", "web.1's UDP to a closed port outside; frames on its eth1: {frames:?}");
}

/// 9. Taking `[gwbridge]` out of the state turns the feature off live: the ports, the
///    containers' eth1 and default route, the nft table and the bridge go; the overlay stays.
#[test]
fn removing_the_gwbridge_table_turns_it_off() {
    let mut c = up(false);
    assert!(ping(c.container("web.1"), OUTSIDE_IP), "web.1 -> outside with the gwbridge");
    c.spec.extra = String::new();
    apply(&mut c);
    for node in ["node-a", "node-b"] {
        let links = c.nodes[node].sh("ip -o link").unwrap();
        assert!(!links.contains("docker_gwbridge") && !links.contains(": ovg"), "{node}: left: {links}");
        assert!(!nft_tables(&c, node).contains("overlay_gwbridge"), "{node}: nft table left");
        let r = c.record(node).unwrap();
        assert!(r.gw_bridge.is_none() && r.gw_ports.is_empty(), "{node}: record keeps the gwbridge");
    }
    for ep in ["web.1", "web.2", "web.3"] {
        assert!(!c.container(ep).ok("ip link show eth1"), "{ep} kept its eth1");
        assert!(!c.container(ep).sh("ip route").unwrap().contains("default"), "{ep} kept a default route");
    }
    assert!(!ping(c.container("web.1"), OUTSIDE_IP), "web.1 still reaches the outside");
    assert!(c.ping("web.1", "web.2") && c.ping("web.1", "web.3"), "the overlay went with the gwbridge");
    // And back on: the same addresses again (lowest free, nothing else holds them).
    c.spec.extra = gw_table(false);
    apply(&mut c);
    assert_eq!(
        (gw_ip(&c, "web.1"), gw_ip(&c, "web.2"), gw_ip(&c, "web.3")),
        (Some("172.18.0.2".into()), Some("172.18.0.3".into()), Some("172.18.0.2".into()))
    );
    assert!(ping(c.container("web.1"), OUTSIDE_IP), "web.1 -> outside with the gwbridge back");
}

/// 10. The same masquerade with XDP on the underlay (replies and ICMP errors translated by the
///     XDP program): TCP, UDP, 4 MB echoed, and a refusal, from both nodes. As in the other XDP
///     tests, senders fill in their checksums (a veth hands XDP a checksum left to offload).
#[test]
fn the_masquerade_works_with_xdp_on_the_underlay() {
    let mut s = spec(false);
    s.decap = Some("xdp".into());
    let mut c = Cluster::up(s).unwrap();
    c.add_external(OUTSIDE, OUTSIDE_IP).unwrap();
    c.underlay_accepts_xdp_tx().unwrap();
    assert_eq!(c.record("node-a").and_then(|r| r.decap), Some(overlay::datapath::DecapMode::Xdp));
    for ns in c.containers.values() {
        ns.sh("ethtool -K eth1 tx off >/dev/null").unwrap();
    }
    let outside = PeerServer::start(&c.external(OUTSIDE).ns, OUTSIDE, OUTSIDE_PORT).unwrap();
    let f = std::fs::File::create(c.logs.join("outside-serve.log")).unwrap();
    let serve = format!("{} serve 5001", overlay_tests::tcpx_bin().display());
    let _echo = overlay_tests::Proc(overlay_tests::spawn_in(&c.external(OUTSIDE).ns.name, &serve, f).unwrap());
    let before = [counters(&c, "node-a"), counters(&c, "node-b")];
    for (ep, node_ip) in [("web.1", NODE_A_IP), ("web.3", NODE_B_IP)] {
        let w = c.container(ep);
        let want = format!("{OUTSIDE}@{node_ip}");
        assert_eq!(tcp_once(w, OUTSIDE_IP, OUTSIDE_PORT), Ok(want.clone()), "{ep}: TCP to the outside");
        assert_eq!(udp_once(w, OUTSIDE_IP, OUTSIDE_PORT), Ok(want), "{ep}: UDP to the outside");
        let send = format!("timeout 30 {} send {OUTSIDE_IP} 5001 4000000", overlay_tests::tcpx_bin().display());
        assert!(w.ok(&send), "{ep}: bulk TCP to the outside");
        let log = c.logs.join(format!("uhold-{ep}.log"));
        let mut h = hold(w, OUTSIDE_IP, 7777, true, &log).unwrap();
        assert_eq!(h.round(), "refused", "{ep}: UDP to a closed port outside, refusal back through XDP");
    }
    assert_eq!(outside.peers().len(), 4);
    let after = [counters(&c, "node-a"), counters(&c, "node-b")];
    for i in 0..2 {
        assert!(fwd_moved(&before[i], &after[i], FwdCounter::GwUnsnat) > 0, "node {i}: gw-unsnat did not move");
    }
}

/// 11. A gwbridge subnet the node already routes elsewhere is refused on that node (reported,
///     nothing created, the overlay untouched), applied on the others, and applied there too
///     once the conflicting route is gone (the agent retries).
#[test]
fn a_subnet_the_node_already_routes_is_refused_there() {
    let mut s = spec(false);
    s.extra = String::new();
    let mut c = Cluster::up(s).unwrap();
    c.nodes["node-a"].sh("ip route add 172.18.5.0/24 dev ul0").unwrap();
    c.spec.extra = gw_table(false);
    apply(&mut c);
    let st = c.stats("node-a").unwrap();
    let why = st["not_plumbed"]["gwbridge"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("172.18.5.0/24"), "node-a reports the conflict: {st}");
    assert!(!c.nodes["node-a"].ok("ip link show docker_gwbridge"), "no bridge on node-a");
    assert!(c.nodes["node-b"].ok("ip link show docker_gwbridge"), "node-b has its bridge");
    assert!(c.nodes["node-a"].sh("ip route").unwrap().contains("172.18.5.0/24 dev ul0"), "the node's route untouched");
    assert!(c.ping("web.1", "web.3"), "the overlay keeps working");
    c.nodes["node-a"].sh("ip route del 172.18.5.0/24 dev ul0").unwrap();
    assert!(
        overlay_tests::wait_for(Duration::from_secs(10), || c.nodes["node-a"].ok("ip link show docker_gwbridge")
            && gw_ip(&c, "web.1").is_some()),
        "node-a applies the gwbridge once the route is gone"
    );
}

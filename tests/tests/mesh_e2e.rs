//! End-to-end tests of the ingress routing mesh (issue 9): three nodes of ours in namespaces,
//! an ingress network (Docker's `ingress`: VNI 4096, 10.0.0.0/24), tasks on some nodes only, and
//! an external client: a host on the underlay (192.168.50.100) that is no node. The client
//! connects to nodes' addresses on published ports; the tasks run `PeerServer`s, which answer
//! `NAME@CLIENT_IP` and record every peer, so a client's tally says which backend answered and
//! what client address it saw, and the test can check the client's port was kept too.

use std::{collections::BTreeSet, net::SocketAddrV4, path::PathBuf, time::Duration};

use overlay::datapath::Counters;
use overlay_common::stats::{DropReason, FwdCounter};
use overlay_tests::{
    mesh::{udp_path_mtu, Capture, Frame, Hold, PeerServer, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    wait_for, Cluster, ClusterSpec, ServiceSpec, Tally,
};
use serde_json::Value;

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// The external client's name and underlay address (no node has it).
const CLIENT: &str = "client";
const CLIENT_IP: &str = "192.168.50.100";
const INGRESS: &str = "ingress";
const INGRESS_VNI: u32 = 4096;
/// What the tasks listen on, and where the service publishes it (TCP and UDP).
const TARGET: u16 = 80;
const PUBLISHED: u16 = 8080;
/// `tcpx serve` (echo) in the tasks, published for bulk transfers.
const ECHO: u16 = 5001;
const ECHO_PUBLISHED: u16 = 15001;

/// Three nodes, the ingress network, a task on node-a and one on node-b (none on node-c).
fn base(decap: Option<&str>) -> ClusterSpec {
    let mut s = ClusterSpec::nodes(3)
        .ingress_network(INGRESS, INGRESS_VNI, "10.0.0.0/24")
        .endpoint("web.a", INGRESS, "node-a", "10.0.0.21")
        .endpoint("web.b", INGRESS, "node-b", "10.0.0.22");
    s.decap = decap.map(str::to_string);
    s
}

/// Service "web" publishing TARGET on PUBLISHED (TCP and UDP) and the echo port, ingress mode.
fn web(backends: &[&str]) -> ServiceSpec {
    let s = ServiceSpec::new("web")
        .publish("tcp", TARGET, PUBLISHED, None)
        .publish("udp", TARGET, PUBLISHED, Some("ingress"))
        .publish("tcp", ECHO, ECHO_PUBLISHED, None);
    backends.iter().fold(s, |s, b| s.backend(b, None))
}

/// The cluster up, with the external client. Under XDP, the rig plays a physical NIC's part:
/// senders compute their checksums (as in e2e.rs: XDP on a veth loses a checksum left to
/// offload), and the underlay ports take frames sent back out with `XDP_TX`.
fn up(spec: ClusterSpec) -> Cluster {
    let xdp = spec.decap.as_deref() == Some("xdp");
    let mut c = Cluster::up(spec).unwrap();
    c.add_external(CLIENT, CLIENT_IP).unwrap();
    if xdp {
        c.underlay_accepts_xdp_tx().unwrap();
        for ns in c.containers.values() {
            ns.sh("ethtool -K eth0 tx off >/dev/null").unwrap();
        }
    }
    c
}

/// A `PeerServer` on TARGET in each of these tasks.
fn peer_servers(c: &Cluster, eps: &[&str]) -> Vec<PeerServer> {
    eps.iter().map(|ep| peer_server(c, ep, TARGET)).collect()
}

/// A `PeerServer` on `port` in task `ep`.
fn peer_server(c: &Cluster, ep: &str, port: u16) -> PeerServer {
    PeerServer::start(c.container(ep), ep, port).unwrap()
}

/// What a PeerServer in `ep` answers the external client.
fn seen(ep: &str) -> String {
    format!("{ep}@{CLIENT_IP}")
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

fn all_counters(c: &Cluster) -> Vec<Counters> {
    NODES.iter().filter(|n| c.nodes.contains_key(**n)).map(|n| counters(c, n)).collect()
}

fn sum_moved(before: &[Counters], after: &[Counters], f: FwdCounter) -> u64 {
    before.iter().zip(after).map(|(b, a)| fwd_moved(b, a, f)).sum()
}

/// `n` exchanges answered only by these backends, every one of them, each seeing the client's
/// own address. With p >= 1/3 a backend, missing one in 30 draws by chance is about 5e-6.
fn assert_spread(what: &str, t: &Tally, n: u64, backends: &[&str]) {
    assert_eq!(t.values().sum::<u64>(), n, "{what}: {t:?}");
    let want: BTreeSet<String> = backends.iter().map(|b| seen(b)).collect();
    let got: BTreeSet<String> = t.keys().cloned().collect();
    assert_eq!(got, want, "{what}: answered by (backend@client address seen) {t:?}");
}

/// One `tcpx cps` connection from the client: its error, or "connected" (a dropped SYN would
/// take tcpx's 10 s bound; a refusal comes at once).
fn connect_outcome(c: &Cluster, node: &str, port: u16) -> String {
    match c.mesh_cps(CLIENT, node, port, 1) {
        Ok(t) => format!("connected: {t:?}"),
        Err(e) => e.to_string(),
    }
}

/// The `overlay conntrack --json` entry of a held connection on its entry node.
fn tracked(c: &Cluster, entry: &str, h: &Hold, published: u16) -> Option<Value> {
    let node_ip = c.address_of(entry);
    c.conntrack(entry).unwrap().into_iter().find(|f| {
        f["client"] == CLIENT_IP && f["client_port"] == h.port && f["vip"] == node_ip.as_str() && f["port"] == published
    })
}

/// Incoming TCP/UDP frames to the client: each must come from a node's address and the
/// published port (the reverse NAT), never from a task's ingress address.
fn assert_replies_from_nodes(c: &Cluster, frames: &[Frame], port: u16, proto: u8) -> BTreeSet<String> {
    let nodes: Vec<String> = NODES.iter().map(|n| c.address_of(n)).collect();
    let mut from = BTreeSet::new();
    for f in frames.iter().filter(|f| !f.outgoing && f.dst.to_string() == CLIENT_IP) {
        if f.proto != PROTO_TCP && f.proto != PROTO_UDP {
            continue;
        }
        assert!(
            nodes.contains(&f.src.to_string()) && f.sport == port,
            "the client received {f:?}: a reply must come from a node's address and port {port}"
        );
        if f.proto == proto {
            from.insert(f.src.to_string());
        }
    }
    from
}

/// Published TCP and UDP through every node (node-c runs no task): both backends answer, each
/// sees the client's own address (and port: held connections), replies come from the node's
/// address and the published port, the entry node tracks the flow; bulk TCP goes through.
fn published_tcp_and_udp_through_every_node(decap: Option<&str>) {
    let mut c = up(base(decap).service(web(&["web.a", "web.b"])));
    let servers = peer_servers(&c, &["web.a", "web.b"]);
    const N: u64 = 30;

    let cap = Capture::start(&c.external(CLIENT).ns, "eth0").unwrap();
    for node in NODES {
        let before = all_counters(&c);
        let t = c.mesh_cps(CLIENT, node, PUBLISHED, N).unwrap_or_else(|e| panic!("TCP via {node}: {e}"));
        assert_spread(&format!("TCP via {node}"), &t, N, &["web.a", "web.b"]);
        let after = all_counters(&c);
        let i = NODES.iter().position(|n| *n == node).unwrap();
        // Each connection is one new flow, balanced where it entered, nowhere else.
        for (j, other) in NODES.iter().enumerate() {
            let want = if i == j { N } else { 0 };
            assert_eq!(
                fwd_moved(&before[j], &after[j], FwdCounter::MeshNew),
                want,
                "TCP via {node}: new mesh flows counted on {other}"
            );
        }
        assert!(fwd_moved(&before[i], &after[i], FwdCounter::MeshReverse) >= N, "TCP via {node}: replies reversed");
        if node == "node-c" {
            // No task here: every connection crossed the ingress network both ways.
            assert!(fwd_moved(&before[2], &after[2], FwdCounter::MeshEncap) >= 3 * N, "via node-c: encapsulated");
            for (ep, j) in [("web.a", 0), ("web.b", 1)] {
                let k = t[&seen(ep)];
                let (mesh_in, ret) = (
                    fwd_moved(&before[j], &after[j], FwdCounter::MeshIn),
                    fwd_moved(&before[j], &after[j], FwdCounter::MeshReturn),
                );
                assert!(mesh_in >= k && ret >= k, "{ep}'s node: {k} connections, mesh-in {mesh_in}, return {ret}");
            }
        }
    }
    let frames = cap.finish();
    let all: BTreeSet<String> = NODES.iter().map(|n| c.address_of(n)).collect();
    let from = assert_replies_from_nodes(&c, &frames, PUBLISHED, PROTO_TCP);
    assert_eq!(from, all, "TCP replies reached the client from these node addresses");
    // The tasks saw the client's own address, never a node's or the ingress gateway's.
    let peers: Vec<_> = servers.iter().flat_map(|s| s.peers()).collect();
    assert!(peers.iter().all(|p| p.addr.ip().to_string() == CLIENT_IP), "peers seen by the tasks: {peers:?}");
    assert_eq!(peers.len() as u64, 3 * N, "TCP connections the tasks accepted: {peers:?}");

    // A held connection through each node: the task saw the client's port too, the entry node
    // tracks it (client, node address and published port -> task address and target port).
    for node in NODES {
        let mut h = c.mesh_hold(CLIENT, node, PUBLISHED).unwrap();
        assert_eq!(h.round(), "ok", "held connection via {node}");
        let ep = h.id.split('@').next().unwrap().to_string();
        assert_eq!(h.id, seen(&ep), "via {node}");
        let s = servers.iter().find(|s| s.name == ep).unwrap();
        let want: SocketAddrV4 = format!("{CLIENT_IP}:{}", h.port).parse().unwrap();
        assert!(
            s.peers().iter().any(|p| !p.udp && p.addr == want),
            "{ep} did not see the client's address and port {want}: {:?}",
            s.peers()
        );
        let f = tracked(&c, node, &h, PUBLISHED).unwrap_or_else(|| {
            panic!("{node} does not track {want} -> {}:{PUBLISHED}: {:#?}", c.address_of(node), c.conntrack(node))
        });
        assert_eq!(f["backend"], c.ip_of(&ep).as_str(), "{node}: {f:#}");
        assert_eq!(f["backend_port"], TARGET, "{node}: {f:#}");
        assert_eq!(f["mesh"], true, "{node}: {f:#}");
        assert_eq!(f["proto"], "tcp", "{node}: {f:#}");
    }

    // Bulk TCP both ways through every node (local and remote tasks, every reverse-NAT place).
    c.start_servers().unwrap();
    let tcpx = overlay_tests::tcpx_bin();
    for ep in ["web.a", "web.b"] {
        let probe = format!("{} send 127.0.0.1 {ECHO} 1", tcpx.display());
        assert!(wait_for(Duration::from_secs(10), || c.container(ep).ok(&probe)), "echo server in {ep}");
    }
    for node in NODES {
        for _ in 0..2 {
            let cmd = format!("{} send {} {ECHO_PUBLISHED} 3000000", tcpx.display(), c.address_of(node));
            if let Err(e) = c.external(CLIENT).sh(&cmd) {
                panic!("bulk TCP from the client via {node}: {e}");
            }
        }
    }

    // UDP last (its failures say less about the rest): the same through every node.
    let cap = Capture::start(&c.external(CLIENT).ns, "eth0").unwrap();
    for node in NODES {
        let before = counters(&c, node);
        // ucps: every reply must come from node:PUBLISHED, each request from a new port.
        let t = c.mesh_ucps(CLIENT, node, PUBLISHED, N).unwrap_or_else(|e| panic!("UDP via {node}: {e}"));
        assert_spread(&format!("UDP via {node}"), &t, N, &["web.a", "web.b"]);
        let after = counters(&c, node);
        assert_eq!(fwd_moved(&before, &after, FwdCounter::MeshNew), N, "UDP via {node}: one new flow a request");
    }
    let frames = cap.finish();
    let from = assert_replies_from_nodes(&c, &frames, PUBLISHED, PROTO_UDP);
    assert_eq!(from, all, "UDP replies reached the client from these node addresses");
    let peers: Vec<_> = servers.iter().flat_map(|s| s.peers()).filter(|p| p.udp).collect();
    assert!(peers.iter().all(|p| p.addr.ip().to_string() == CLIENT_IP), "peers seen by the tasks: {peers:?}");
    assert_eq!(peers.len() as u64, 3 * N, "UDP requests the tasks answered");
}

/// 1. TC decapsulation (what `--decap auto` picks on a veth underlay).
#[test]
fn published_tcp_and_udp_reach_the_tasks_through_every_node_tc() {
    published_tcp_and_udp_through_every_node(Some("tc"));
}

/// 1. The same with the entry, the delivery and the reverse NAT in XDP.
#[test]
fn published_tcp_and_udp_reach_the_tasks_through_every_node_xdp() {
    published_tcp_and_udp_through_every_node(Some("xdp"));
}

/// 2. Host mode: only the nodes that run a task answer, each with its own task (no mesh, no
///    encapsulation); elsewhere the node's kernel refuses (TCP reset, UDP port unreachable).
#[test]
fn host_mode_answers_only_where_a_task_runs() {
    const HOST_PORT: u16 = 9090;
    let svc = ServiceSpec::new("hostweb")
        .publish("tcp", TARGET, HOST_PORT, Some("host"))
        .publish("udp", TARGET, HOST_PORT, Some("host"))
        .backend("web.a", None)
        .backend("web.b", None);
    let c = up(base(None).service(svc));
    let servers = peer_servers(&c, &["web.a", "web.b"]);
    let before = all_counters(&c);
    for (node, ep) in [("node-a", "web.a"), ("node-b", "web.b")] {
        let t = c.mesh_cps(CLIENT, node, HOST_PORT, 20).unwrap_or_else(|e| panic!("TCP via {node}: {e}"));
        assert_eq!(t, Tally::from([(seen(ep), 20)]), "TCP to {node}:{HOST_PORT} must reach its own task only");
    }
    let out = connect_outcome(&c, "node-c", HOST_PORT);
    assert!(out.contains("ConnectionRefused"), "TCP to node-c (no task) in host mode: {out}");
    let mut u = c.mesh_uhold(CLIENT, "node-c", HOST_PORT).unwrap();
    assert_eq!(u.round(), "refused", "UDP to node-c (no task) in host mode");
    let after = all_counters(&c);
    assert_eq!(sum_moved(&before, &after, FwdCounter::MeshEncap), 0, "host mode crossed the ingress network");
    assert_eq!(fwd_moved(&before[2], &after[2], FwdCounter::MeshNew), 0, "node-c balanced a host-mode flow");
    let peers: Vec<_> = servers.iter().flat_map(|s| s.peers()).collect();
    assert!(peers.iter().all(|p| p.addr.ip().to_string() == CLIENT_IP), "peers seen by the tasks: {peers:?}");
    assert_eq!(peers.len(), 40, "every connection reached a task once: {peers:?}");

    // UDP last: the same, each node to its own task.
    for (node, ep) in [("node-a", "web.a"), ("node-b", "web.b")] {
        let t = c.mesh_ucps(CLIENT, node, HOST_PORT, 20).unwrap_or_else(|e| panic!("UDP via {node}: {e}"));
        assert_eq!(t, Tally::from([(seen(ep), 20)]), "UDP to {node}:{HOST_PORT} must reach its own task only");
    }
    let after = all_counters(&c);
    assert_eq!(sum_moved(&before, &after, FwdCounter::MeshEncap), 0, "host mode crossed the ingress network");
    let peers: Vec<_> = servers.iter().flat_map(|s| s.peers()).filter(|p| p.udp).collect();
    assert!(peers.iter().all(|p| p.addr.ip().to_string() == CLIENT_IP), "peers seen by the tasks: {peers:?}");
}

/// 3. A task's node goes away (its agent killed, its underlay link down, the state updated
///    without it): new connections go to the surviving tasks, through every surviving node;
///    connections held open to surviving tasks go on, including ones that cross nodes.
#[test]
fn a_node_going_away_moves_new_connections_and_keeps_surviving_ones() {
    let spec = base(None).endpoint("web.c", INGRESS, "node-c", "10.0.0.23").service(web(&["web.a", "web.b", "web.c"]));
    let mut c = up(spec);
    let _servers = peer_servers(&c, &["web.a", "web.b", "web.c"]);
    const N: u64 = 30;
    for node in ["node-a", "node-b"] {
        let t = c.mesh_cps(CLIENT, node, PUBLISHED, N).unwrap();
        assert_spread(&format!("before, via {node}"), &t, N, &["web.a", "web.b", "web.c"]);
    }

    // Held connections through node-a and node-b until both surviving tasks hold one and one of
    // them crosses nodes (entry node != task's node).
    let node_of_task = |id: &str| format!("node-{}", id.split('@').next().unwrap().trim_start_matches("web."));
    let mut holds: Vec<(String, Hold)> = Vec::new();
    for i in 0..40 {
        let entry = ["node-a", "node-b"][i % 2];
        let h = c.mesh_hold(CLIENT, entry, PUBLISHED).unwrap();
        if h.id == seen("web.c") {
            continue;
        }
        holds.push((entry.to_string(), h));
        let tasks: BTreeSet<&str> = holds.iter().map(|(_, h)| h.id.as_str()).collect();
        let crossing = holds.iter().any(|(e, h)| *e != node_of_task(&h.id));
        if tasks.len() == 2 && crossing {
            break;
        }
    }
    let tasks: BTreeSet<&str> = holds.iter().map(|(_, h)| h.id.as_str()).collect();
    // Each try reaches web.a or web.b with p = 1/3: missing one in 40 is about 1e-7.
    assert_eq!(tasks.len(), 2, "held connections reached {tasks:?}");
    assert!(holds.iter().any(|(e, h)| *e != node_of_task(&h.id)), "no held connection crosses nodes");
    for (e, h) in &mut holds {
        assert_eq!(h.round(), "ok", "held via {e} to {} before the change", h.id);
    }

    // node-c goes away.
    c.kill_agent("node-c");
    c.nodes["node-c"].sh("ip link set ul0 down").unwrap();
    c.spec.nodes.retain(|n| n.name != "node-c");
    c.spec.endpoints.retain(|e| e.name != "web.c");
    assert!(c.spec.service_mut("web").remove_backend("web.c"));
    c.apply().unwrap();

    for (e, h) in &mut holds {
        assert_eq!(h.round(), "ok", "held via {e} to {} after node-c went away", h.id);
    }
    for node in ["node-a", "node-b"] {
        let t = c.mesh_cps(CLIENT, node, PUBLISHED, N).unwrap_or_else(|e| panic!("TCP via {node} after: {e}"));
        assert_spread(&format!("after, via {node}"), &t, N, &["web.a", "web.b"]);
    }
    for (e, h) in &mut holds {
        assert_eq!(h.round(), "ok", "held via {e} to {} at the end", h.id);
    }
    for node in ["node-a", "node-b"] {
        let t = c.mesh_ucps(CLIENT, node, PUBLISHED, N).unwrap_or_else(|e| panic!("UDP via {node} after: {e}"));
        assert_spread(&format!("UDP after, via {node}"), &t, N, &["web.a", "web.b"]);
    }
}

/// The incoming ICMP "fragmentation needed" frames in a capture.
fn frag_needed(frames: &[Frame]) -> Vec<Frame> {
    frames
        .iter()
        .filter(|f| !f.outgoing && f.proto == PROTO_ICMP && f.icmp.is_some_and(|i| i.kind == 3 && i.code == 4))
        .copied()
        .collect()
}

/// 4. A DF datagram bigger than the ingress network's MTU (1450 = 1500 - 50) through node-c
///    (no task) is answered with "fragmentation needed", MTU 1450, from node-c's address and
///    quoting the client's own packet (the client's kernel takes it: the socket's path MTU drops
///    to 1450); one that fits is answered. Bulk TCP from the client goes through.
fn frag_needed_through_the_mesh(decap: Option<&str>) {
    let mut c = up(base(decap).service(web(&["web.a", "web.b"])));
    let _servers = peer_servers(&c, &["web.a", "web.b"]);
    let node_c: SocketAddrV4 = format!("{}:{PUBLISHED}", c.address_of("node-c")).parse().unwrap();
    let ext = &c.external(CLIENT).ns;

    let before = counters(&c, "node-c");
    let cap = Capture::start(ext, "eth0").unwrap();
    let r = udp_path_mtu(ext, node_c, 1472, 5).unwrap();
    let frames = cap.finish();
    let after = counters(&c, "node-c");
    assert!(!r.answered, "a 1500-byte datagram went through a 1450-byte network");
    assert_eq!(r.mtu, 1450, "the client's path MTU to {node_c} after a 1500-byte DF datagram");
    assert!(fwd_moved(&before, &after, FwdCounter::IcmpFragNeeded) >= 1, "node-c sent no frag-needed");
    assert!(drop_moved(&before, &after, DropReason::TooBig) >= 1, "node-c counted no too-big drop");
    let icmp = frag_needed(&frames);
    assert!(!icmp.is_empty(), "no frag-needed reached the client: {frames:?}");
    for f in &icmp {
        let i = f.icmp.unwrap();
        assert_eq!(f.src.to_string(), c.address_of("node-c"), "frag-needed source: {f:?}");
        assert_eq!(i.mtu, 1450, "{f:?}");
        assert_eq!(
            (i.quoted_src.to_string(), i.quoted_dst.to_string(), i.quoted_proto, i.quoted_dport),
            (CLIENT_IP.to_string(), c.address_of("node-c"), PROTO_UDP, PUBLISHED),
            "the quote must be the client's packet as it sent it: {f:?}"
        );
    }

    c.start_servers().unwrap();
    let tcpx = overlay_tests::tcpx_bin();
    for ep in ["web.a", "web.b"] {
        let probe = format!("{} send 127.0.0.1 {ECHO} 1", tcpx.display());
        assert!(wait_for(Duration::from_secs(10), || c.container(ep).ok(&probe)), "echo server in {ep}");
    }
    for node in NODES {
        let cmd = format!("{} send {} {ECHO_PUBLISHED} 4000000", tcpx.display(), c.address_of(node));
        if let Err(e) = c.external(CLIENT).sh(&cmd) {
            panic!("bulk TCP via {node}: {e}");
        }
    }
    // UDP last: a datagram that fits (1428 bytes) goes through and is answered.
    let r = udp_path_mtu(&c.external(CLIENT).ns, node_c, 1400, 5).unwrap();
    assert!(r.answered, "a datagram that fits was not answered: {r:?}");
}

#[test]
fn oversize_df_gets_frag_needed_and_bulk_tcp_completes_tc() {
    frag_needed_through_the_mesh(Some("tc"));
}

#[test]
fn oversize_df_gets_frag_needed_and_bulk_tcp_completes_xdp() {
    frag_needed_through_the_mesh(Some("xdp"));
}

/// 4b. An ingress network configured with an MTU the underlay cannot carry once encapsulated
///    (1500 on a 1500 underlay): the tasks announce 1460-byte segments, so the client sends
///    1500-byte packets; a remote task's are too big for the underlay, and the entry node must
///    say so ("fragmentation needed", 1450, from its address, quoting the client's packet), as
///    the overlay does for containers, so bulk TCP still completes through path-MTU discovery.
fn too_large_ingress_mtu_degrades_to_pmtud(decap: Option<&str>) {
    let mut spec = base(decap).service(web(&["web.a", "web.b"]));
    spec.networks[0].mtu = Some(1500);
    let mut c = up(spec);
    c.start_servers().unwrap();
    let tcpx = overlay_tests::tcpx_bin();
    for ep in ["web.a", "web.b"] {
        let probe = format!("{} send 127.0.0.1 {ECHO} 1", tcpx.display());
        assert!(wait_for(Duration::from_secs(10), || c.container(ep).ok(&probe)), "echo server in {ep}");
    }
    let before = counters(&c, "node-c");
    let cap = Capture::start(&c.external(CLIENT).ns, "eth0").unwrap();
    // node-c runs no task: every segment is encapsulated there.
    let cmd = format!("timeout 60 {} send {} {ECHO_PUBLISHED} 2000000", tcpx.display(), c.address_of("node-c"));
    let res = c.external(CLIENT).sh(&cmd);
    let frames = cap.finish();
    let after = counters(&c, "node-c");
    let icmp = frag_needed(&frames);
    res.unwrap_or_else(|e| {
        panic!(
            "bulk TCP via node-c with ingress MTU 1500: {e}\nfrag-needed received: {icmp:?}\nnode-c too-big drops: {}, \
             frag-needed sent: {}",
            drop_moved(&before, &after, DropReason::TooBig),
            fwd_moved(&before, &after, FwdCounter::IcmpFragNeeded)
        )
    });
    assert!(fwd_moved(&before, &after, FwdCounter::IcmpFragNeeded) >= 1, "node-c sent no frag-needed");
    assert!(!icmp.is_empty(), "no frag-needed reached the client");
    for f in &icmp {
        let i = f.icmp.unwrap();
        assert_eq!(f.src.to_string(), c.address_of("node-c"), "frag-needed source: {f:?}");
        assert_eq!(i.mtu, 1450, "{f:?}");
        assert_eq!((i.quoted_dst.to_string(), i.quoted_dport), (c.address_of("node-c"), ECHO_PUBLISHED), "{f:?}");
    }
}

#[test]
fn too_large_ingress_mtu_degrades_to_path_mtu_discovery_tc() {
    too_large_ingress_mtu_degrades_to_pmtud(Some("tc"));
}

#[test]
fn too_large_ingress_mtu_degrades_to_path_mtu_discovery_xdp() {
    too_large_ingress_mtu_degrades_to_pmtud(Some("xdp"));
}

/// 5. Only published ports go through the mesh: a task's target port, a port the task listens
///    on but nobody published, and a port published for the other protocol are the node's own
///    (refused by its kernel, nothing balanced); the node's own services and connections on
///    other ports are untouched.
#[test]
fn unpublished_ports_are_the_nodes_own() {
    const DNS: u16 = 53;
    const DNS_PUBLISHED: u16 = 5353;
    const UNPUBLISHED: u16 = 81;
    const HOST_SERVICE: u16 = 7070;
    let svc = ServiceSpec::new("web")
        .publish("tcp", TARGET, PUBLISHED, None)
        .publish("udp", DNS, DNS_PUBLISHED, None)
        .backend("web.a", None)
        .backend("web.b", None);
    let mut c = up(base(None).service(svc));
    let web = peer_servers(&c, &["web.a", "web.b"]);
    let dns: Vec<_> = ["web.a", "web.b"].iter().map(|ep| peer_server(&c, ep, DNS)).collect();
    let other: Vec<_> = ["web.a", "web.b"].iter().map(|ep| peer_server(&c, ep, UNPUBLISHED)).collect();
    c.start_host_id_server("node-a", HOST_SERVICE, "host-a").unwrap();
    // A server on the client, for node-a's own outgoing connection.
    let ext_log = std::fs::File::create(c.logs.join("ext-id.log")).unwrap();
    let child = overlay_tests::spawn_in(
        &c.external(CLIENT).ns.name,
        &format!("{} id {PUBLISHED} outside", overlay_tests::tcpx_bin().display()),
        ext_log,
    )
    .unwrap();
    c.servers.push(overlay_tests::Proc(child));

    // The door is open where it should be (UDP's is checked last).
    let t = c.mesh_cps(CLIENT, "node-a", PUBLISHED, 10).unwrap();
    assert_eq!(t.values().sum::<u64>(), 10, "{t:?}");
    let web_seen: usize = web.iter().map(|s| s.peers().len()).sum();

    let before = all_counters(&c);
    for node in NODES {
        for port in [TARGET, UNPUBLISHED, DNS_PUBLISHED] {
            let out = connect_outcome(&c, node, port);
            assert!(out.contains("ConnectionRefused"), "TCP to {node}:{port}: {out}");
        }
        let mut u = c.mesh_uhold(CLIENT, node, PUBLISHED).unwrap();
        assert_eq!(u.round(), "refused", "UDP to {node}:{PUBLISHED} (published for TCP only)");
        let mut u = c.mesh_uhold(CLIENT, node, TARGET).unwrap();
        assert_eq!(u.round(), "refused", "UDP to {node}:{TARGET} (a target port)");
    }
    // The node's own service, on a port nobody published, answers the outside client.
    let t = c.mesh_cps(CLIENT, "node-a", HOST_SERVICE, 5).unwrap();
    assert_eq!(t, Tally::from([("host-a".to_string(), 5)]), "node-a's own service");
    // node-a's own connection out to the client's port 8080: its replies come from port 8080
    // to node-a's ephemeral port, and must not be taken for the mesh.
    let out = c.nodes["node-a"]
        .sh(&format!("{} cps {CLIENT_IP} {PUBLISHED} 5", overlay_tests::tcpx_bin().display()))
        .unwrap();
    assert!(out.contains("\"outside\": 5"), "node-a's own connections to the client: {out}");
    assert!(c.nodes["node-a"].ok(&format!("ping -c1 -W2 {CLIENT_IP}")), "node-a's ping to the client");
    assert!(c.nodes["node-a"].ok("ping -c1 -W2 192.168.50.12"), "node-a's ping to node-b");
    let after = all_counters(&c);

    for (name, f) in [("mesh-new", FwdCounter::MeshNew), ("mesh-forward", FwdCounter::MeshForward)] {
        assert_eq!(sum_moved(&before, &after, f), 0, "{name}: something not published went through the mesh");
    }
    let web_after: usize = web.iter().map(|s| s.peers().len()).sum();
    assert_eq!(web_after, web_seen, "a task's target port was reached through a node's address");
    assert!(other.iter().all(|s| s.peers().is_empty()), "an unpublished port of a task was reached");
    assert!(dns.iter().all(|s| s.peers().is_empty()), "a port published for UDP only was reached by TCP");
    // UDP last: the port published for UDP is open (the door the TCP checks above found shut).
    let t = c.mesh_ucps(CLIENT, "node-a", DNS_PUBLISHED, 10).unwrap();
    assert_eq!(t.values().sum::<u64>(), 10, "{t:?}");
    assert!(dns.iter().all(|s| s.peers().iter().all(|p| p.udp)), "TCP reached a port published for UDP only");
}

fn vxinject() -> PathBuf {
    overlay_tests::tcpx_bin().with_file_name("vxinject")
}

/// Send one crafted VXLAN frame from namespace `from_ns` (outer source `from`) to node-a on the
/// ingress VNI, inner `inner_src` -> web.a; whether web.a received it.
fn arrives(c: &Cluster, from_ns: &str, from: &str, inner_src: &str, tag: &str) -> bool {
    let log = c.logs.join(format!("listen-{tag}.log"));
    let mut l = c.container("web.a").spawn(&format!("{} listen 1.5", vxinject().display()), &log).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mac = overlay_tests::docker_mac("10.0.0.21");
    let send = format!(
        "{} send {from} {} {INGRESS_VNI} {inner_src} 10.0.0.21 {mac} {tag}",
        vxinject().display(),
        c.address_of("node-a")
    );
    assert!(overlay_tests::Netns::ok_in(from_ns, &send), "could not send from {from_ns}");
    let _ = l.wait();
    std::fs::read_to_string(&log).unwrap_or_default().lines().any(|x| x == tag)
}

/// 6. The ingress network carries outside addresses inside, but only cluster nodes may send
///    into it: VXLAN on the ingress VNI from the external client (a host on the underlay that
///    is no node) is dropped as from an unknown VTEP, whatever the inner source; the same frame
///    from node-b arrives (the injector works).
#[test]
fn ingress_vxlan_from_a_non_node_is_dropped() {
    let c = up(base(None).service(web(&["web.a", "web.b"])));
    let b = c.nodes["node-b"].name.clone();
    let ext = c.external(CLIENT).ns.name.clone();
    assert!(arrives(&c, &b, "192.168.50.12", "10.0.0.22", "legit"), "the injector does not work");
    let before = counters(&c, "node-a");
    assert!(!arrives(&c, &ext, CLIENT_IP, "10.0.0.22", "rogue"), "accepted from a non-node (task source)");
    assert!(!arrives(&c, &ext, CLIENT_IP, CLIENT_IP, "rogue2"), "accepted from a non-node (outside source)");
    let after = counters(&c, "node-a");
    assert_eq!(drop_moved(&before, &after, DropReason::UnknownVtep), 2, "VXLAN from the client");
    assert_eq!(fwd_moved(&before, &after, FwdCounter::MeshIn), 0, "a rogue frame was tracked as a mesh flow");
}

//! End-to-end tests of service VIPs (IPVS-like balancing, Maglev): three nodes of ours in
//! namespaces, a client container on every node and backends on every node, driven through the
//! `overlay` binary and the state file as a user would. Backends run `tcpx id`, which tells
//! every connection (and every UDP request) its name, so a client knows which backend the VIP
//! picked; `tcpx hold` keeps one connection open across changes, one round trip at a time.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use overlay_common::stats::{DropReason, FwdCounter};
use overlay_tests::{wait_for, Cluster, ClusterSpec, Held, ServiceSpec, Tally};
use serde_json::Value;

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const CLIENTS: [&str; 3] = ["cli.a", "cli.b", "cli.c"];
const WEBS: [&str; 3] = ["web.a", "web.b", "web.c"];
const VIP: &str = "10.0.9.100";
/// Served on TCP and UDP by every backend; the VIP balances the same port (no translation).
const PORT: u16 = 8080;

/// One network, a client and a backend on each of three nodes.
fn base() -> ClusterSpec {
    ClusterSpec::nodes(3)
        .network("app-net", 4097, "10.0.9.0/24")
        .endpoint("cli.a", "app-net", "node-a", "10.0.9.11")
        .endpoint("cli.b", "app-net", "node-b", "10.0.9.12")
        .endpoint("cli.c", "app-net", "node-c", "10.0.9.13")
        .endpoint("web.a", "app-net", "node-a", "10.0.9.21")
        .endpoint("web.b", "app-net", "node-b", "10.0.9.22")
        .endpoint("web.c", "app-net", "node-c", "10.0.9.23")
}

/// Service "web": maglev on VIP:PORT (TCP and UDP) over these backends and weights.
fn web(backends: &[(&str, Option<u32>)]) -> ServiceSpec {
    let s =
        ServiceSpec::new("web").mode("vip").scheduler("maglev").vip("app-net", VIP).port("tcp", PORT).port("udp", PORT);
    backends.iter().fold(s, |s, (b, w)| s.backend(b, *w))
}

/// The cluster with service "web" over every backend at weight 1, identity servers running.
fn web_cluster() -> Cluster {
    let mut c = Cluster::up(base().service(web(&[("web.a", None), ("web.b", None), ("web.c", None)]))).unwrap();
    c.start_id_servers(&WEBS, PORT).unwrap();
    c
}

fn fwd(c: &Cluster, node: &str, counter: FwdCounter) -> u64 {
    c.counters(node).unwrap().fwd(counter)
}

fn dropped(c: &Cluster, node: &str, reason: DropReason) -> u64 {
    c.counters(node).unwrap().drop(reason)
}

/// The row of `overlay services --json` for this VIP.
fn vip_row(services: &Value, vip: &str) -> Value {
    services
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["vip"] == vip))
        .cloned()
        .unwrap_or_else(|| panic!("no row for VIP {vip} in {services:#}"))
}

/// A backend's entry in a VIP's row, if listed.
fn backend_row(row: &Value, ep: &str) -> Option<Value> {
    row["backends"].as_array()?.iter().find(|b| b["endpoint"] == ep).cloned()
}

/// Backend counts over several tallies.
fn sum(tallies: &BTreeMap<String, Tally>) -> Tally {
    let mut total = Tally::new();
    for t in tallies.values() {
        for (k, v) in t {
            *total.entry(k.clone()).or_default() += v;
        }
    }
    total
}

/// `got` hits in `n` independent draws of probability `p`: within 4 standard deviations of n·p.
/// The flow hash
/// (murmur3's finalizer over addresses and ports) makes each new connection an independent
/// draw over the table, so a backend's count is binomial; by chance a count leaves the band
/// with probability about 6e-5, while the mistakes we look for (weights ignored, a backend
/// left out) move a count by 5 sigma or more at the sizes used here.
fn assert_binomial(what: &str, got: u64, n: u64, p: f64) {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (got as f64 - mean).abs() <= 4.0 * sigma,
        "{what}: {got} of {n}, expected {mean:.0} +- {:.0} (4 sigma, p = {p:.3})",
        4.0 * sigma
    );
}

/// A one-connection `tcpx cps` that gives up after 3 s: for connections that must not be
/// answered. Any answer (SYN-ACK, reset) comes within milliseconds on this rig; the bound only
/// spares waiting out tcpx's 10 s connect timeout for a SYN that is dropped.
fn unanswered_connect(ip: &str, port: u16) -> String {
    format!("timeout 3 {} cps {ip} {port} 1", overlay_tests::tcpx_bin().display())
}

/// Held connections from the clients in turn until `want` distinct backends hold one (at most
/// `max` tries); the first one's backend is the one the caller acts on.
fn holds_over_backends(c: &Cluster, want: usize, max: usize) -> Vec<Held> {
    let mut holds: Vec<Held> = Vec::new();
    for i in 0..max {
        holds.push(c.hold(CLIENTS[i % CLIENTS.len()], VIP, PORT).unwrap());
        let distinct: BTreeSet<&str> = holds.iter().map(|h| h.id.as_str()).collect();
        if distinct.len() >= want && i + 1 >= CLIENTS.len() {
            return holds;
        }
    }
    // Each connection picks a backend with probability 1/3: max tries all on fewer backends
    // is vanishingly unlikely unless the balancing is broken.
    let ids: Vec<&str> = holds.iter().map(|h| h.id.as_str()).collect();
    panic!("{max} connections reached fewer than {want} backends: {ids:?}");
}

fn all_ok(holds: &mut [Held], when: &str) {
    for h in holds {
        let r = h.round();
        assert_eq!(r, "ok", "{when}: held connection {} -> {} (backend {}) gave {r:?}", h.from, VIP, h.id);
    }
}

/// The conntrack entry of a held connection on its client's node, if any: (backend IP, state).
fn tracked(c: &Cluster, h: &Held) -> Option<(String, String)> {
    let client = c.ip_of(&h.from);
    c.conntrack(&c.node_of(&h.from))
        .unwrap()
        .into_iter()
        .find(|f| f["client"] == client.as_str() && f["client_port"] == h.port && f["vip"] == VIP && f["port"] == PORT)
        .map(|f| (f["backend"].as_str().unwrap_or("").to_string(), f["state"].as_str().unwrap_or("").to_string()))
}

/// 1. New connections spread by weight, from every node to every backend, and `overlay
///    services` counts them where they were balanced.
#[test]
fn maglev_spreads_connections_by_weight_from_every_node() {
    let weights = [("web.a", 1u32), ("web.b", 1), ("web.c", 2)];
    let spec = base().service(web(&weights.map(|(e, w)| (e, Some(w)))));
    let mut c = Cluster::up(spec).unwrap();
    c.start_id_servers(&WEBS, PORT).unwrap();
    let total_weight: u32 = weights.iter().map(|w| w.1).sum();

    // Every node built the same table, each backend's share its weight's.
    for node in NODES {
        let row = vip_row(&c.services(node).unwrap(), VIP);
        assert_eq!(row["service"], "web");
        assert_eq!(row["scheduler"], "maglev");
        let m = row["table_size"].as_f64().unwrap();
        assert!(m > 0.0, "{node}: empty table: {row:#}");
        for (ep, w) in weights {
            let b = backend_row(&row, ep).unwrap_or_else(|| panic!("{node}: {ep} not listed: {row:#}"));
            assert_eq!(b["weight"], w);
            let share = b["share_percent"].as_f64().unwrap();
            let exact = 100.0 * w as f64 / total_weight as f64;
            // maglev::build gives each backend its exact share within one slot (of m); 1.5
            // slots leaves room for the float rounding of share_percent.
            assert!(
                (share - exact).abs() <= 150.0 / m,
                "{node}: {ep} holds {share}% of the table, weight says {exact}%"
            );
        }
    }

    const N: u64 = 300;
    let tallies = c.tally_from(&CLIENTS, VIP, PORT, N, false).unwrap();
    for (client, t) in &tallies {
        assert_eq!(t.values().sum::<u64>(), N, "{client}: {t:?}");
        assert!(t.keys().all(|k| WEBS.contains(&k.as_str())), "{client} was answered by a stranger: {t:?}");
        for ep in WEBS {
            // p >= 1/4 a connection: missing one in 300 draws by chance is about 1e-37.
            assert!(t.get(ep).is_some_and(|n| *n > 0), "{client} never reached {ep}: {t:?}");
        }
    }
    let total = sum(&tallies);
    let n = N * CLIENTS.len() as u64;
    for (ep, w) in weights {
        let p = w as f64 / total_weight as f64;
        assert_binomial(&format!("{ep} (weight {w}) over {total:?}"), total.get(ep).copied().unwrap_or(0), n, p);
    }

    // Each node counts the connections its own client opened: one per SYN, where the flow is
    // tracked (the client's node), nowhere else. One client a node: the numbers match exactly.
    for (client, t) in &tallies {
        let node = c.node_of(client);
        let row = vip_row(&c.services(&node).unwrap(), VIP);
        for ep in WEBS {
            let b = backend_row(&row, ep).unwrap();
            assert_eq!(b["conns"], t[ep], "{node}: conns of {ep} vs what {client} counted: {row:#}");
            assert!(b["in_pkts"].as_u64().unwrap() > 0 && b["out_pkts"].as_u64().unwrap() > 0, "{node}: {b:#}");
        }
    }
}

/// 2. Draining (weight 0) keeps held connections and sends new ones elsewhere; removing the
///    backend then resets its held connections at once (TCP reset, UDP port unreachable).
#[test]
fn draining_keeps_held_connections_and_removal_resets_them() {
    let mut c = web_cluster();
    let mut holds = holds_over_backends(&c, 2, 12);
    let x = holds[0].id.clone();
    // A UDP flow to x too: connected sockets, new source ports, until one is answered by x.
    let mut udp = None;
    for i in 0..40 {
        let mut u = c.uhold(CLIENTS[i % CLIENTS.len()], VIP, PORT).unwrap();
        let r = u.round();
        assert!(r.starts_with("ok "), "UDP through the VIP from {}: {r:?}", u.from);
        if r == format!("ok {x}") {
            udp = Some(u);
            break;
        }
    }
    // p = 1/3 a try: 40 misses by chance is about 1e-7.
    let mut udp = udp.unwrap_or_else(|| panic!("no UDP flow reached {x} in 40 tries"));
    all_ok(&mut holds, "before the drain");

    // Drain x.
    assert!(c.spec.service_mut("web").set_weight(&x, 0));
    c.apply().unwrap();
    for node in NODES {
        let row = vip_row(&c.services(node).unwrap(), VIP);
        let b = backend_row(&row, &x).unwrap_or_else(|| panic!("{node}: drained {x} must stay listed: {row:#}"));
        assert_eq!(b["weight"], 0, "{node}: {b:#}");
        assert_eq!(b["share_percent"].as_f64(), Some(0.0), "{node}: a drained backend holds no slot: {b:#}");
    }
    all_ok(&mut holds, "after draining");
    assert_eq!(udp.round(), format!("ok {x}"), "the UDP flow to the drained backend moved or broke");
    let tallies = c.tally_from(&CLIENTS, VIP, PORT, 100, false).unwrap();
    for (client, t) in &tallies {
        assert!(!t.contains_key(&x), "{client}: a new connection reached drained {x}: {t:?}");
        for ep in WEBS.iter().filter(|e| **e != x) {
            assert!(t.get(*ep).is_some_and(|n| *n > 0), "{client} never reached {ep}: {t:?}");
        }
    }
    all_ok(&mut holds, "after new connections around the drained backend");

    // Remove x: its held connections are reset by the VIP on their next segment.
    let client_nodes: BTreeSet<String> = holds.iter().filter(|h| h.id == x).map(|h| c.node_of(&h.from)).collect();
    let resets_before: u64 = client_nodes.iter().map(|n| fwd(&c, n, FwdCounter::LbReset)).sum();
    let udp_node = c.node_of(&udp.from);
    let unreach_before = fwd(&c, &udp_node, FwdCounter::IcmpPortUnreachable);
    assert!(c.spec.service_mut("web").remove_backend(&x));
    c.apply().unwrap();
    for node in NODES {
        let row = vip_row(&c.services(node).unwrap(), VIP);
        assert!(backend_row(&row, &x).is_none(), "{node}: removed {x} still listed: {row:#}");
    }
    for h in &mut holds {
        let r = h.round();
        // tcpx waits up to 10 s for the echo: "timeout" is a hang, "reset" the VIP's answer.
        let want = if h.id == x { "reset" } else { "ok" };
        assert_eq!(r, want, "held connection {} -> {VIP} (backend {}) after removing {x}", h.from, h.id);
    }
    let resets: u64 = client_nodes.iter().map(|n| fwd(&c, n, FwdCounter::LbReset)).sum();
    assert!(resets > resets_before, "the reset was not the VIP's (lb-reset did not move)");
    assert_eq!(udp.round(), "refused", "UDP flow to the removed backend: expected port unreachable from the VIP");
    assert!(fwd(&c, &udp_node, FwdCounter::IcmpPortUnreachable) > unreach_before);
    let tallies = c.tally_from(&CLIENTS, VIP, PORT, 60, false).unwrap();
    for (client, t) in &tallies {
        assert!(!t.contains_key(&x), "{client}: a new connection reached removed {x}: {t:?}");
    }
}

/// Held connections from the clients in turn until some have their backend on their own node
/// and some on another (the reply is reverse-NATed in the backend's program in the first case,
/// on decapsulation in the second), at least two per client.
fn holds_local_and_remote(c: &Cluster) -> Vec<Held> {
    let local = |h: &Held| c.node_of(&h.from) == c.node_of(&h.id);
    let mut holds: Vec<Held> = Vec::new();
    // A connection is local with p = 1/3: 30 all of one kind by chance is about 5e-6.
    for i in 0..30 {
        holds.push(c.hold(CLIENTS[i % CLIENTS.len()], VIP, PORT).unwrap());
        if holds.len() >= 2 * CLIENTS.len() && holds.iter().any(local) && !holds.iter().all(local) {
            return holds;
        }
    }
    let ids: Vec<(&str, &str)> = holds.iter().map(|h| (h.from.as_str(), h.id.as_str())).collect();
    panic!("30 connections were all local or all remote: {ids:?}");
}

/// Flush every node's conntrack table once the held connections are idle.
fn flush_idle(c: &Cluster, holds: &[Held]) {
    // Idle: the last round's delayed ACK goes out within TCP_DELACK_MAX (200 ms) of the echo;
    // after a second nothing is in flight, so what the flush removes no packet re-creates
    // before the client speaks again (checked below: the tables stay empty).
    std::thread::sleep(Duration::from_secs(1));
    for node in NODES {
        let flushed = c.flush_conntrack(node).unwrap();
        let mine = holds.iter().filter(|h| c.node_of(&h.from) == node).count();
        // A forward and a reply entry a flow, at its client's node.
        assert!(flushed >= 2 * mine, "{node}: flushed {flushed} entries, {mine} flows were tracked there");
        assert!(c.conntrack(node).unwrap().is_empty(), "{node}: conntrack not empty after the flush");
    }
}

/// 3. An idle connection loses its conntrack entries (flushed on every node) and still works
///    on its next segment, with the same backend: the hash finds it again.
#[test]
fn idle_connections_survive_a_conntrack_flush() {
    let c = web_cluster();
    let mut holds = holds_local_and_remote(&c);
    all_ok(&mut holds, "before the flush");
    for h in &holds {
        let (backend, state) = tracked(&c, h).unwrap_or_else(|| panic!("{} port {} is not tracked", h.from, h.port));
        assert_eq!(backend, c.ip_of(&h.id), "{}: tracked to another backend than the one that answered", h.from);
        assert_eq!(state, "active");
    }
    let repicks_before: BTreeMap<&str, u64> = NODES.iter().map(|n| (*n, fwd(&c, n, FwdCounter::LbRepick))).collect();
    flush_idle(&c, &holds);
    // The client speaks first, as an idle connection does.
    all_ok(&mut holds, "after the conntrack flush");
    for h in &holds {
        let (backend, _) = tracked(&c, h).unwrap_or_else(|| panic!("{} port {} not tracked again", h.from, h.port));
        assert_eq!(backend, c.ip_of(&h.id), "{}: re-picked another backend than the one that answered", h.from);
    }
    for node in NODES {
        let mine = holds.iter().filter(|h| c.node_of(&h.from) == node).count() as u64;
        let repicks = fwd(&c, node, FwdCounter::LbRepick) - repicks_before[node];
        assert!(repicks >= mine, "{node}: {repicks} re-picks for {mine} flushed flows");
    }
}

/// 3b. Round robin cannot replay its cursor: a flow that lost its entry is reset by the VIP,
///     never moved (README, Service VIPs). And rr's spread is even, as a cursor's must be.
#[test]
fn round_robin_flows_that_lose_their_entry_are_reset() {
    let spec = base().service(web(&[("web.a", None), ("web.b", None), ("web.c", None)]).scheduler("rr"));
    let mut c = Cluster::up(spec).unwrap();
    c.start_id_servers(&WEBS, PORT).unwrap();
    let row = vip_row(&c.services("node-a").unwrap(), VIP);
    assert_eq!(row["scheduler"], "rr", "{row:#}");

    // One cursor a CPU, each cycling over the three backends: a window of picks on one CPU
    // differs by at most one between backends, so over all CPUs by at most their number.
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
    let t = c.cps("cli.b", VIP, PORT, 60).unwrap();
    let (min, max) =
        WEBS.iter().map(|e| t.get(*e).copied().unwrap_or(0)).fold((u64::MAX, 0), |(lo, hi), n| (lo.min(n), hi.max(n)));
    assert!(max - min <= cpus, "round robin over {cpus} CPU(s) spread unevenly: {t:?}");

    let mut holds: Vec<Held> = CLIENTS.iter().map(|cl| c.hold(cl, VIP, PORT).unwrap()).collect();
    all_ok(&mut holds, "before the flush");
    let resets_before: BTreeMap<&str, u64> = NODES.iter().map(|n| (*n, fwd(&c, n, FwdCounter::LbReset))).collect();
    flush_idle(&c, &holds);
    for h in &mut holds {
        let r = h.round();
        assert_eq!(r, "reset", "rr flow {} -> {VIP} (backend {}) after losing its entry", h.from, h.id);
    }
    for node in NODES {
        let resets = fwd(&c, node, FwdCounter::LbReset) - resets_before[node];
        // One client a node, one held flow each: the reset is the VIP's, not a backend's.
        assert!(resets >= 1, "{node}: the reset did not come from the VIP (lb-reset did not move)");
    }
    // New connections are balanced as before.
    let t = c.cps("cli.a", VIP, PORT, 30).unwrap();
    assert!(WEBS.iter().all(|e| t.get(*e).is_some_and(|n| *n > 0)), "{t:?}");
}

/// 4. Killing and restarting the client node's agent breaks no connection through the VIP, and
///    new connections balance as before.
#[test]
fn connections_through_the_vip_survive_an_agent_restart() {
    let mut c = web_cluster();
    let froms = ["cli.a", "cli.a", "cli.a", "cli.b", "cli.c"];
    let mut holds: Vec<Held> = froms.iter().map(|f| c.hold(f, VIP, PORT).unwrap()).collect();
    all_ok(&mut holds, "before the restart");

    c.kill_agent("node-a");
    all_ok(&mut holds, "with node-a's agent killed");
    let t = c.cps("cli.a", VIP, PORT, 60).unwrap();
    // p = 1/3 a connection: a backend missing from 60 by chance is about 3e-11.
    assert!(WEBS.iter().all(|e| t.get(*e).is_some_and(|n| *n > 0)), "balancing without the agent: {t:?}");

    let adopted = |c: &Cluster| c.agent_log("node-a").matches("adopted the running one").count();
    let before = adopted(&c);
    c.start_agent("node-a").unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || adopted(&c) > before),
        "the restarted agent did not adopt the datapath:\n{}",
        c.agent_log("node-a")
    );
    c.wait_applied(Duration::from_secs(20)).unwrap();
    all_ok(&mut holds, "after node-a's agent restarted");

    const N: u64 = 90;
    let tallies = c.tally_from(&CLIENTS, VIP, PORT, N, false).unwrap();
    for (client, t) in &tallies {
        assert!(WEBS.iter().all(|e| t.get(*e).is_some_and(|n| *n > 0)), "{client} after the restart: {t:?}");
    }
    let total = sum(&tallies);
    for ep in WEBS {
        let got = total.get(ep).copied().unwrap_or(0);
        assert_binomial(&format!("{ep} after the restart, {total:?}"), got, N * 3, 1.0 / 3.0);
    }
    all_ok(&mut holds, "at the end");
}

/// 5. A dnsrr service has no VIP: an address that was a VIP stops being answered when its
///    service turns dnsrr, `overlay services` lists neither, and the tasks stay reachable at
///    their own addresses (what a dnsrr name resolves to).
#[test]
fn a_dnsrr_service_has_no_vip() {
    let api = ServiceSpec::new("api").mode("vip").vip("app-net", VIP).port("tcp", PORT);
    let spec = base()
        .service(api.backend("web.a", None).backend("web.b", None))
        .service(ServiceSpec::new("dns").mode("dnsrr").port("tcp", PORT).backend("web.c", None));
    let mut c = Cluster::up(spec).unwrap();
    c.start_id_servers(&WEBS, PORT).unwrap();
    let listed = |c: &Cluster, node: &str| -> Vec<String> {
        let v = c.services(node).unwrap();
        v.as_array().unwrap().iter().map(|r| r["service"].as_str().unwrap().to_string()).collect()
    };

    // The control: as a vip-mode service, api answers on its VIP; dns is never listed.
    for node in NODES {
        assert_eq!(listed(&c, node), ["api"], "{node}");
    }
    assert!(c.container("cli.b").ok(&format!("ping -c1 -W2 -q {VIP}")), "the VIP did not answer while vip-mode");
    let t = c.cps("cli.b", VIP, PORT, 20).unwrap();
    assert!(t.keys().all(|k| k == "web.a" || k == "web.b"), "{t:?}");

    let api = c.spec.service_mut("api");
    api.endpoint_mode = Some("dnsrr".into());
    api.vips.clear();
    c.apply().unwrap();
    for node in NODES {
        assert!(listed(&c, node).is_empty(), "{node} still lists a dnsrr service");
    }
    let refused = |c: &Cluster, node: &str| {
        dropped(c, node, DropReason::ArpUnknownTarget) + dropped(c, node, DropReason::UnknownDestination)
    };
    for client in CLIENTS {
        let node = c.node_of(client);
        let before = refused(&c, &node);
        assert!(!c.container(client).ok(&format!("ping -c1 -W1 -q {VIP}")), "{client}: the old VIP still answers");
        // The ping reached the datapath and was refused there (ARP or IPv4 to no endpoint).
        assert!(refused(&c, &node) > before, "{client}: the ping was not refused by the datapath");
    }
    assert!(!c.container("cli.b").ok(&unanswered_connect(VIP, PORT)), "a TCP connection to the old VIP succeeded");
    for ep in WEBS {
        let t = c.cps("cli.a", &c.ip_of(ep), PORT, 1).unwrap();
        assert_eq!(t, Tally::from([(ep.to_string(), 1)]), "task {ep} at its own address");
    }
}

/// 6. A VIP is reachable from its own network only: a client of another network, given a route
///    and the VIP's MAC, is refused by the datapath and nothing gets balanced.
#[test]
fn a_vip_is_unreachable_from_another_network() {
    const DB_VIP: &str = "10.0.10.100";
    const DB_PORT: u16 = 5432;
    let db = ServiceSpec::new("db").vip("db-net", DB_VIP).port("tcp", DB_PORT);
    let spec = base()
        .network("db-net", 4098, "10.0.10.0/24")
        .endpoint("db.a", "db-net", "node-a", "10.0.10.21")
        .endpoint("db.b", "db-net", "node-b", "10.0.10.22")
        .endpoint("dbcli.c", "db-net", "node-c", "10.0.10.13")
        .service(db.backend("db.a", None).backend("db.b", None))
        .service(web(&[("web.a", None), ("web.b", None), ("web.c", None)]));
    let mut c = Cluster::up(spec).unwrap();
    c.start_id_servers(&["db.a", "db.b"], DB_PORT).unwrap();

    // The control: db-net's own client gets balanced over both backends (p = 1/2: missing
    // one in 40 by chance is about 2e-12).
    assert!(c.container("dbcli.c").ok(&format!("ping -c1 -W2 -q {DB_VIP}")));
    let t = c.cps("dbcli.c", DB_VIP, DB_PORT, 40).unwrap();
    assert!(t.get("db.a").is_some_and(|n| *n > 0) && t.get("db.b").is_some_and(|n| *n > 0), "{t:?}");

    // app-net clients, one on a node with a db backend (node-a), one without (node-c).
    for client in ["cli.a", "cli.c"] {
        let node = c.node_of(client);
        let w = c.container(client);
        w.sh("ip route add 10.0.10.0/24 dev eth0").unwrap();
        let arp_before = dropped(&c, &node, DropReason::ArpUnknownTarget);
        assert!(!w.ok(&format!("ping -c1 -W1 -q {DB_VIP}")), "{client}: another network's VIP answered a ping");
        assert!(dropped(&c, &node, DropReason::ArpUnknownTarget) > arp_before, "{client}: ARP for the VIP not refused");
        // With the VIP's MAC known, packets do leave the container: the datapath refuses them.
        w.sh(&format!("ip neigh replace {DB_VIP} lladdr {} dev eth0 nud permanent", overlay_tests::docker_mac(DB_VIP)))
            .unwrap();
        let before = dropped(&c, &node, DropReason::UnknownDestination);
        assert!(!w.ok(&format!("ping -c1 -W1 -q {DB_VIP}")), "{client}: another network's VIP answered a ping");
        assert!(!w.ok(&unanswered_connect(DB_VIP, DB_PORT)), "{client}: connected to another network's VIP");
        assert!(dropped(&c, &node, DropReason::UnknownDestination) > before, "{client}: not refused by the datapath");
        let ip = c.ip_of(client);
        let flows = c.conntrack(&node).unwrap();
        assert!(flows.iter().all(|f| f["client"] != ip.as_str()), "{node}: a flow of {client} was tracked: {flows:?}");
    }
    // Nothing was balanced to the db backends from the app-net clients' nodes.
    for node in ["node-a", "node-c"] {
        let row = vip_row(&c.services(node).unwrap(), DB_VIP);
        let conns = |ep| backend_row(&row, ep).unwrap()["conns"].as_u64().unwrap();
        let want = if node == "node-c" { 40 } else { 0 };
        assert_eq!(conns("db.a") + conns("db.b"), want, "{node}: {row:#}");
    }
}

/// Echo port (`tcpx serve`) for bulk transfers, and a port listed but served by no backend.
const ECHO_PORT: u16 = 5001;
const CLOSED_PORT: u16 = 9000;

/// "web" over every backend, also balancing the echo port and a port nothing listens on.
fn web_cluster_with_more_ports(decap: Option<&str>) -> Cluster {
    let mut spec = base().service(
        web(&[("web.a", None), ("web.b", None), ("web.c", None)])
            .port("tcp", ECHO_PORT)
            .port("tcp", CLOSED_PORT)
            .port("udp", CLOSED_PORT),
    );
    spec.decap = decap.map(str::to_string);
    let mut c = Cluster::up(spec).unwrap();
    if decap == Some("xdp") {
        // As in e2e.rs: XDP on a veth loses checksums left to offload, so senders compute
        // them in full, as a physical NIC would.
        for ns in c.containers.values() {
            ns.sh("ethtool -K eth0 tx off >/dev/null").unwrap();
        }
    }
    c.start_id_servers(&WEBS, PORT).unwrap();
    c.start_servers().unwrap();
    c
}

/// Bulk TCP through the VIP from every client, a few connections each (so both reverse-NAT
/// places, the backend's program and decapsulation, are crossed with large segments).
fn bulk_through_the_vip(c: &Cluster) {
    let tcpx = overlay_tests::tcpx_bin();
    // start_servers does not wait for the echo servers to listen: probe each on its loopback.
    for ep in WEBS {
        let probe = format!("{} send 127.0.0.1 {ECHO_PORT} 1", tcpx.display());
        assert!(wait_for(Duration::from_secs(10), || c.container(ep).ok(&probe)), "echo server in {ep}");
    }
    for client in CLIENTS {
        for _ in 0..3 {
            let cmd = format!("{} send {VIP} {ECHO_PORT} 2000000", tcpx.display());
            if let Err(e) = c.container(client).sh(&cmd) {
                panic!("bulk TCP {client} -> {VIP}:{ECHO_PORT}: {e}");
            }
        }
    }
}

/// 7. The VIP answers ping itself; a UDP service balances request/response through it,
///    replies coming back from the VIP; bulk TCP goes through; errors from a backend (TCP
///    reset, ICMP port unreachable) reach the client as the VIP's; unlisted ports are dropped.
#[test]
fn vip_answers_ping_and_balances_udp() {
    let c = web_cluster_with_more_ports(None);
    for client in CLIENTS {
        let node = c.node_of(client);
        let before = fwd(&c, &node, FwdCounter::LbEchoReply);
        let out = c.container(client).sh(&format!("ping -c3 -W2 {VIP}")).unwrap();
        assert!(out.contains("3 received"), "{client}: {out}");
        // The replies came from the VIP itself (no backend answers ping for it).
        assert!(fwd(&c, &node, FwdCounter::LbEchoReply) >= before + 3, "{client}: echo replies not the VIP's");
    }

    // ucps checks that every reply comes from VIP:PORT (reverse NAT), each request from a new
    // source port, so each is a new flow.
    const N: u64 = 60;
    let tallies = c.tally_from(&CLIENTS, VIP, PORT, N, true).unwrap();
    for (client, t) in &tallies {
        assert_eq!(t.values().sum::<u64>(), N, "{client}: {t:?}");
        // p = 1/3 a request: a backend missing from 60 by chance is about 3e-11.
        assert!(WEBS.iter().all(|e| t.get(*e).is_some_and(|n| *n > 0)), "{client}: {t:?}");
        let node = c.node_of(client);
        let row = vip_row(&c.services(&node).unwrap(), VIP);
        for ep in WEBS {
            let b = backend_row(&row, ep).unwrap();
            assert_eq!(b["conns"], t[ep], "{node}: each UDP request is one new flow: {row:#}");
        }
    }

    bulk_through_the_vip(&c);

    // A listed port nobody listens on: the backend's reset and port unreachable come back
    // translated (from the VIP, quoting the VIP), so the client's socket takes them. Untranslated,
    // the client would ignore them and wait: tcpx reports "timeout" then, not "refused".
    for client in CLIENTS {
        let node = c.node_of(client);
        let vip_made = fwd(&c, &node, FwdCounter::IcmpPortUnreachable) + fwd(&c, &node, FwdCounter::LbReset);
        let err = c.cps(client, VIP, CLOSED_PORT, 1).expect_err("connected to a port nobody listens on");
        assert!(err.to_string().contains("ConnectionRefused"), "{client}: TCP to a closed backend port: {err}");
        let mut u = c.uhold(client, VIP, CLOSED_PORT).unwrap();
        assert_eq!(u.round(), "refused", "{client}: UDP to a closed backend port");
        let now = fwd(&c, &node, FwdCounter::IcmpPortUnreachable) + fwd(&c, &node, FwdCounter::LbReset);
        assert_eq!(now, vip_made, "{client}: the VIP made up the error instead of translating the backend's");
    }

    // Only the listed ports are balanced: TCP to another port of the VIP is dropped as such.
    let node = c.node_of("cli.a");
    let before = dropped(&c, &node, DropReason::NoService);
    assert!(
        !c.container("cli.a").ok(&unanswered_connect(VIP, PORT + 1)),
        "a port the service does not list was balanced"
    );
    assert!(
        dropped(&c, &node, DropReason::NoService) > before,
        "TCP to an unlisted port was not refused as no-service"
    );
}

/// 8. The same through XDP decapsulation, where replies are reverse-NATed by hand-computed
///    checksums: connections spread over every backend from every node, UDP, bulk TCP.
#[test]
fn balancing_works_with_xdp_decapsulation() {
    let c = web_cluster_with_more_ports(Some("xdp"));
    let tallies = c.tally_from(&CLIENTS, VIP, PORT, 60, false).unwrap();
    for (client, t) in &tallies {
        // p = 1/3 a connection: a backend missing from 60 by chance is about 3e-11.
        assert!(WEBS.iter().all(|e| t.get(*e).is_some_and(|n| *n > 0)), "{client}: {t:?}");
    }
    let tallies = c.tally_from(&CLIENTS, VIP, PORT, 30, true).unwrap();
    for (client, t) in &tallies {
        assert_eq!(t.values().sum::<u64>(), 30, "{client}: {t:?}");
    }
    bulk_through_the_vip(&c);
    let reversed: u64 = NODES.iter().map(|n| fwd(&c, n, FwdCounter::LbReverse)).sum();
    assert!(reversed > 0, "no reply was reverse-NATed");
}

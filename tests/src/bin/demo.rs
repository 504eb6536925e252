//! `cargo xtask demo`: a three-node cluster in namespaces with containers on two overlay
//! networks, a connectivity matrix, a service VIP balanced in eBPF, a published port reached
//! from outside through every node with the client's address kept (the routing mesh), the
//! docker_gwbridge (containers reach the outside masqueraded, not each other over the bridge),
//! the datapath counters, then teardown.
//! `--keep` leaves it up until Ctrl-C and prints how to look around. `--etcd` keeps the state
//! in a real etcd (its own namespace on the underlay): pushed whole, then changed one object at
//! a time, with `overlay nodes` showing each agent live and what it applied.

use std::{process::Stdio, time::Instant};

use anyhow::{bail, Result};
use overlay_tests::{
    in_netns,
    mesh::{tally, PeerServer},
    overlay_bin, prereq, tcpx_bin, Cluster, ClusterSpec, ServiceSpec,
};

/// One cell of the matrix: what ping said, read from its exit status (0 reply, 1 no reply,
/// anything else: ping itself failed, so nothing was learned about the overlay).
enum Ping {
    Reached,
    NoReply,
    CouldNotTest(String),
}

fn ping(c: &Cluster, from: &str, to: &str) -> Ping {
    let cmd = format!("ping -c1 -W1 -q {}", c.ip_of(to));
    let out = in_netns(&c.container(from).name, &cmd).stdin(Stdio::null()).output();
    match out {
        Ok(o) if o.status.code() == Some(0) => Ping::Reached,
        Ok(o) if o.status.code() == Some(1) => Ping::NoReply,
        Ok(o) => {
            Ping::CouldNotTest(format!("`{cmd}` in {from}: {} {}", o.status, String::from_utf8_lossy(&o.stderr).trim()))
        }
        Err(e) => Ping::CouldNotTest(format!("`{cmd}` in {from}: {e}")),
    }
}

const VIP: &str = "10.0.9.100";
const VIP_PORT: u16 = 8080;

/// A service VIP balanced in eBPF (this kernel has no IPVS: Docker's VIPs answer nothing here).
/// Returns the number of failed checks.
fn service_vip(c: &mut Cluster) -> Result<u32> {
    println!(
        "\nService \"web\": VIP {VIP}:{VIP_PORT} (maglev) over web.2 (node-b, weight 1) and web.3 (node-c, weight 2)"
    );
    c.spec.services.push(
        ServiceSpec::new("web")
            .vip("app-net", VIP)
            .port("tcp", VIP_PORT)
            .backend("web.2", Some(1))
            .backend("web.3", Some(2)),
    );
    c.apply()?;
    c.start_id_servers(&["web.2", "web.3"], VIP_PORT)?;
    let mut failed = 0;
    let ping = c.container("web.1").ok(&format!("ping -c1 -W1 -q {VIP}"));
    failed += u32::from(!ping);
    println!("  ping {VIP} from web.1 (node-a): {}", if ping { "answered by the VIP" } else { "FAIL" });
    match c.cps("web.1", VIP, VIP_PORT, 300) {
        Ok(t) => {
            let show: Vec<String> = t.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            println!("  300 connections from web.1, answered by: {}  (weights 1:2)", show.join(", "));
            if t.len() != 2 {
                failed += 1;
            }
        }
        Err(e) => {
            failed += 1;
            println!("  connections through the VIP: FAIL ({e:#})");
        }
    }
    println!("\n  overlay services --node node-a:");
    let cmd = format!("{} services --node node-a --run-dir {}", overlay_bin().display(), c.run_dir.path.display());
    let out = in_netns(&c.nodes["node-a"].name, &cmd).stdin(Stdio::null()).output()?;
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {l}");
    }
    Ok(failed)
}

const PUBLISHED: u16 = 8080;
const CLIENT: &str = "192.168.50.100";

/// The routing mesh: "shop" publishes 8080 -> 80 over tasks on node-b and node-c; an outside
/// client connects to every node's address, node-a (no task) included. Returns failed checks.
fn routing_mesh(c: &mut Cluster) -> Result<u32> {
    println!(
        "\nService \"shop\": tcp {PUBLISHED} published (ingress mode) over shop.1 (node-b) and shop.2 (node-c), \
         tasks on the ingress network 10.0.0.0/24"
    );
    c.spec.services.push(
        ServiceSpec::new("shop").publish("tcp", 80, PUBLISHED, None).backend("shop.1", None).backend("shop.2", None),
    );
    c.apply()?;
    c.add_external("client", CLIENT)?;
    let servers = [
        PeerServer::start(c.container("shop.1"), "shop.1", 80)?,
        PeerServer::start(c.container("shop.2"), "shop.2", 80)?,
    ];
    let mut failed = 0;
    for node in ["node-a", "node-b", "node-c"] {
        let addr = c.address_of(node);
        match c.mesh_cps("client", node, PUBLISHED, 100) {
            Ok(t) => {
                let show: Vec<String> = t.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                println!(
                    "  100 connections from {CLIENT} (outside) to {addr}:{PUBLISHED} ({node}): {}",
                    show.join(", ")
                );
                if t.is_empty() {
                    failed += 1;
                }
            }
            Err(e) => {
                failed += 1;
                println!("  connections to {addr}:{PUBLISHED} ({node}): FAIL ({e:#})");
            }
        }
    }
    let seen: std::collections::BTreeSet<String> =
        servers.iter().flat_map(|s| s.peers()).map(|p| p.addr.ip().to_string()).collect();
    let kept = seen.len() == 1 && seen.contains(CLIENT);
    failed += u32::from(!kept);
    println!(
        "  client addresses the tasks saw: {} ({})",
        seen.into_iter().collect::<Vec<_>>().join(", "),
        if kept { "the client's own: Docker's mesh would show its ingress sandbox" } else { "FAIL" }
    );
    println!("\n  overlay services --node node-a (published port; node-a runs no task):");
    let cmd = format!("{} services --node node-a --run-dir {}", overlay_bin().display(), c.run_dir.path.display());
    let out = in_netns(&c.nodes["node-a"].name, &cmd).stdin(Stdio::null()).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().skip_while(|l| !l.contains(&format!(":{PUBLISHED} -> ")));
    if let Some(head) = lines.next() {
        println!("    {head}");
        for l in lines.take_while(|l| l.starts_with(' ')) {
            println!("    {l}");
        }
    }
    Ok(failed)
}

/// docker_gwbridge with icc = false: web.1 and web.4 share node-a's bridge but not each other;
/// both reach the outside host, which sees node-a's address. Returns failed checks.
fn gwbridge(c: &mut Cluster) -> Result<u32> {
    println!(
        "\ndocker_gwbridge (icc = false, masquerade): every container has eth1 on its node's bridge 172.18.0.0/16"
    );
    let gw = |ep: &str| -> Result<String> {
        let out = c.container(ep).sh("ip -4 -o addr show eth1")?;
        Ok(out.split_whitespace().nth(3).and_then(|a| a.split('/').next()).unwrap_or("?").to_string())
    };
    let (w1, w4) = (gw("web.1")?, gw("web.4")?);
    let mut failed = 0;
    let blocked = !c.container("web.1").ok(&format!("ping -c1 -W1 -q {w4}"));
    failed += u32::from(!blocked);
    println!(
        "  web.1 ({w1}) -> web.4 ({w4}), both on node-a's bridge: {}",
        if blocked { "blocked by ov_from_gwbridge (icc-blocked)" } else { "FAIL: reached" }
    );
    let overlay = c.ping("web.1", "web.4");
    failed += u32::from(!overlay);
    println!("  web.1 -> web.4 on app-net (the overlay): {}", if overlay { "ok" } else { "FAIL" });
    let server = PeerServer::start(&c.external("client").ns, "outside", 9000)?;
    for (ep, node) in [("web.1", "node-a"), ("db.2", "node-b")] {
        match tally(c.container(ep), "cps", CLIENT, 9000, 20) {
            Ok(t) => {
                let addr = c.address_of(node);
                let ok = t.keys().all(|k| k.ends_with(&format!("@{addr}"))) && !t.is_empty();
                failed += u32::from(!ok);
                let seen: Vec<&str> = t.keys().filter_map(|k| k.split('@').nth(1)).collect();
                println!(
                    "  20 connections {ep} ({node}) -> {CLIENT} (outside): the outside saw {} ({})",
                    seen.join(", "),
                    if ok { "the node's address: masqueraded in eBPF, gw-snat" } else { "FAIL" }
                );
            }
            Err(e) => {
                failed += 1;
                println!("  {ep} -> {CLIENT}: FAIL ({e:#})");
            }
        }
    }
    drop(server);
    Ok(failed)
}

/// The state in etcd: every agent live with the pushed revision; one object deleted and put
/// back reaches every node; an invalid write is refused whole. Returns failed checks. (web.4,
/// on node-a, backs no service: the state without it is valid.)
fn store(c: &mut Cluster) -> Result<u32> {
    println!("\nCluster state in etcd ({}): one key per object; agents watch the prefix", c.store_url());
    let mut failed = 0;
    let (ok, out) = c.store_cli("nodes");
    failed += u32::from(!ok);
    for l in out.lines() {
        println!("    {l}");
    }
    let t = Instant::now();
    let (ok, out) = c.store_cli("state del endpoints/web.4");
    failed += u32::from(!ok);
    c.expect_written(&out)?;
    c.wait_applied(std::time::Duration::from_secs(20))?;
    let gone = !c.ping("web.1", "web.4");
    failed += u32::from(!gone);
    println!(
        "  overlay state del endpoints/web.4: every node applied it in {:.0} ms (with the CLI's start); web.1 -> web.4: {}",
        t.elapsed().as_secs_f64() * 1000.0,
        if gone { "no reply, as it must" } else { "FAIL: still reached" }
    );
    let web3 = c.spec.endpoints.iter().find(|e| e.name == "web.4").cloned();
    let obj = c.run_dir.path.join("web.4.toml");
    if let Some(e) = web3 {
        std::fs::write(
            &obj,
            format!(
                "[[endpoints]]\nname = \"web.4\"\nnetwork = \"app-net\"\nnode = \"node-a\"\nip = \"{}\"\nnetns = \"{}\"\n",
                e.ip,
                c.container("web.4").path().display()
            ),
        )?;
    }
    let t = Instant::now();
    let (ok, out) = c.store_cli(&format!("state put {}", obj.display()));
    failed += u32::from(!ok);
    c.expect_written(&out)?;
    c.wait_applied(std::time::Duration::from_secs(20))?;
    let back = c.ping("web.1", "web.4");
    failed += u32::from(!back);
    println!(
        "  overlay state put web.4.toml: applied everywhere in {:.0} ms; web.1 -> web.4: {}",
        t.elapsed().as_secs_f64() * 1000.0,
        if back { "ok" } else { "FAIL" }
    );
    let (ok, out) = c.store_cli("state del networks/db-net");
    failed += u32::from(ok);
    let first = out.lines().take(2).collect::<Vec<_>>().join(" / ");
    println!(
        "  overlay state del networks/db-net (containers still use it): {}",
        if ok { "FAIL: accepted" } else { &first }
    );
    Ok(failed)
}

fn main() -> Result<()> {
    // Before anything is created: a missing tool is named, never mistaken for a broken overlay.
    prereq::require(&[prereq::IP, prereq::PING, prereq::NFT], "cargo xtask demo")?;
    for (what, bin) in [("overlay", overlay_bin()), ("tcpx", tcpx_bin())] {
        if !bin.exists() {
            bail!("{what} is not built ({}): run `cargo xtask demo`, which builds it", bin.display());
        }
    }
    let keep = std::env::args().any(|a| a == "--keep");
    let on_etcd = std::env::args().any(|a| a == "--etcd");
    if on_etcd {
        prereq::require(&[prereq::ETCD, prereq::ETCDCTL], "cargo xtask demo --etcd")?;
    }
    let spec = ClusterSpec::three_nodes_two_networks()
        .ingress_network("ingress", 4096, "10.0.0.0/24")
        .endpoint("shop.1", "ingress", "node-b", "10.0.0.3")
        .endpoint("shop.2", "ingress", "node-c", "10.0.0.4");
    let mut spec = spec;
    spec.extra = "\n[gwbridge]\n".into(); // Docker's defaults: docker_gwbridge, 172.18.0.0/16, icc off
    println!(
        "Bringing up {} nodes, {} overlay networks, {} containers (all in network namespaces)...",
        spec.nodes.len(),
        spec.networks.len(),
        spec.endpoints.len()
    );
    let t0 = Instant::now();
    let mut c = if on_etcd { Cluster::up_on_etcd(spec)? } else { Cluster::up(spec)? };
    println!("Agents applied the state in {:.1}s.\n", t0.elapsed().as_secs_f64());
    if on_etcd {
        println!("State pushed to {} with `overlay state push --state FILE`, from:\n", c.store_url());
    }
    println!("State file ({}):\n", c.state_file.display());
    for l in std::fs::read_to_string(&c.state_file)?.lines().take(24) {
        println!("    {l}");
    }
    println!("    ...\n");

    c.start_servers()?;
    // Give every container a route into the other network too, as a misbehaving container
    // might: cross-network packets then really reach the datapath, which refuses (and counts) them.
    // (The ingress network's tasks are the routing mesh's, shown after the VIP.)
    let overlay: Vec<_> = c.spec.endpoints.iter().filter(|e| e.network != "ingress").cloned().collect();
    for e in overlay.clone() {
        let other = if e.network == "app-net" { "10.0.10.0/24" } else { "10.0.9.0/24" };
        c.container(&e.name).sh(&format!("ip route add {other} dev eth0"))?;
    }
    let names: Vec<String> = overlay.iter().map(|e| e.name.clone()).collect();
    println!("Connectivity (ping; same network should reach, other network must not, even with a route to it):\n");
    print!("{:>8} ", "from\\to");
    for n in &names {
        print!("{n:>7}");
    }
    println!();
    let (mut failed, mut untested) = (0, Vec::new());
    let network = |n: &str| c.spec.endpoints.iter().find(|e| e.name == n).map(|e| e.network.clone());
    for a in &names {
        print!("{a:>8} ");
        for b in &names {
            if a == b {
                print!("{:>7}", "-");
                continue;
            }
            let same = network(a) == network(b);
            let cell = match (ping(&c, a, b), same) {
                (Ping::Reached, true) => "ok",
                (Ping::NoReply, false) => "x",
                (Ping::Reached, false) | (Ping::NoReply, true) => {
                    failed += 1;
                    "FAIL"
                }
                (Ping::CouldNotTest(why), _) => {
                    untested.push(why);
                    "?"
                }
            };
            print!("{cell:>7}");
        }
        println!();
    }
    println!("\n  ok: reached (same network)   x: blocked, as it must be (other network)");
    println!("  FAIL: the overlay did the wrong thing   ?: could not test (ping itself failed)");
    let tcp = c.tcp("web.1", "web.3", 10_000_000);
    if !tcp {
        failed += 1;
    }
    println!(
        "\nTCP 10 MB web.1 (node-a) -> web.3 (node-c), echoed back and checked: {}",
        if tcp { "ok" } else { "FAIL" }
    );
    failed += service_vip(&mut c)?;
    failed += routing_mesh(&mut c)?;
    failed += gwbridge(&mut c)?;
    if on_etcd {
        failed += store(&mut c)?;
    }
    println!("\nDatapath counters (overlay stats):");
    for n in ["node-a", "node-b", "node-c"] {
        let v = c.stats(n)?;
        let show = |sec: &str| -> String {
            v[sec]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|x| x[1].as_u64().unwrap_or(0) > 0)
                        .map(|x| format!("{}={}", x[0].as_str().unwrap_or(""), x[1]))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        };
        let dropped = show("dropped");
        println!(
            "  {n}: forwarded: {}\n          dropped:   {}",
            show("forwarded"),
            if dropped.is_empty() { "none" } else { &dropped }
        );
    }
    if keep {
        println!("\nThe cluster stays up until you press Ctrl-C. Look around with:");
        for (name, ns) in &c.nodes {
            let run_dir = c.run_dir.path.display();
            println!("  ip netns exec {} {} stats --node {name} --run-dir {run_dir}", ns.name, overlay_bin().display());
        }
        for (name, ns) in &c.containers {
            println!("  ip netns exec {} ip addr      # container {name}", ns.name);
        }
        println!("  agent logs: {}", c.logs.display());
        loop {
            std::thread::park();
        }
    }
    drop(c);
    println!("\nTorn down.");
    if !untested.is_empty() {
        bail!(
            "{} check(s) could not be made (a tool failed, not the overlay):\n  {}",
            untested.len(),
            untested.join("\n  ")
        );
    }
    if failed > 0 {
        bail!("{failed} connectivity check(s) did not match the expectation");
    }
    Ok(())
}

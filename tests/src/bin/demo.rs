//! `cargo xtask demo`: a three-node cluster in namespaces with containers on two overlay
//! networks, a connectivity matrix, the datapath counters, then teardown.
//! `--keep` leaves it up until Ctrl-C and prints how to look around.

use std::time::Instant;

use overlay_tests::{overlay_bin, Cluster, ClusterSpec};

fn main() -> anyhow::Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    let spec = ClusterSpec::three_nodes_two_networks();
    println!("Bringing up {} nodes, {} overlay networks, {} containers (all in network namespaces)...",
             spec.nodes.len(), spec.networks.len(), spec.endpoints.len());
    let t0 = Instant::now();
    let mut c = Cluster::up(spec)?;
    println!("Agents applied the state in {:.1}s.\n", t0.elapsed().as_secs_f64());
    println!("State file ({}):\n", c.state_file.display());
    for l in std::fs::read_to_string(&c.state_file)?.lines().take(24) {
        println!("    {l}");
    }
    println!("    ...\n");

    c.start_servers()?;
    // Give every container a route into the other network too, as a misbehaving container
    // might: cross-network packets then really reach the datapath, which refuses (and counts) them.
    for e in c.spec.endpoints.clone() {
        let other = if e.network == "app-net" { "10.0.10.0/24" } else { "10.0.9.0/24" };
        c.container(&e.name).sh(&format!("ip route add {other} dev eth0"))?;
    }
    let names: Vec<String> = c.spec.endpoints.iter().map(|e| e.name.clone()).collect();
    println!("Connectivity (ping; same network should reach, other network must not, even with a route to it):\n");
    print!("{:>8} ", "from\\to");
    for n in &names {
        print!("{n:>7}");
    }
    println!();
    let mut wrong = 0;
    for a in &names {
        print!("{a:>8} ");
        for b in &names {
            if a == b {
                print!("{:>7}", "-");
                continue;
            }
            let same = c.spec.endpoints.iter().find(|e| &e.name == a).map(|e| &e.network)
                == c.spec.endpoints.iter().find(|e| &e.name == b).map(|e| &e.network);
            let ok = c.ping(a, b);
            if ok != same {
                wrong += 1;
            }
            print!("{:>7}", if ok { "ok" } else if same { "FAIL" } else { "x" });
        }
        println!();
    }
    println!("\nTCP 10 MB web.1 (node-a) -> web.3 (node-c), echoed back and checked: {}",
             if c.tcp("web.1", "web.3", 10_000_000) { "ok" } else { wrong += 1; "FAIL" });
    println!("\nDatapath counters (overlay stats):");
    for n in ["node-a", "node-b", "node-c"] {
        let v = c.stats(n)?;
        let show = |sec: &str| -> String {
            v[sec].as_array().map(|a| a.iter().filter(|x| x[1].as_u64().unwrap_or(0) > 0)
                .map(|x| format!("{}={}", x[0].as_str().unwrap_or(""), x[1])).collect::<Vec<_>>().join(" ")).unwrap_or_default()
        };
        println!("  {n}: forwarded: {}\n          dropped:   {}", show("forwarded"), { let d = show("dropped"); if d.is_empty() { "none".into() } else { d } });
    }
    if keep {
        println!("\nThe cluster stays up until you press Ctrl-C. Look around with:");
        for (name, ns) in &c.nodes {
            println!("  ip netns exec {} {} stats --node {name} --run-dir {}", ns.name, overlay_bin().display(), c.run_dir.path.display());
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
    if wrong > 0 {
        anyhow::bail!("{wrong} connectivity check(s) did not match the expectation");
    }
    Ok(())
}

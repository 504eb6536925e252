//! Service VIPs: connections per second and request/response rate through a VIP, beside the same
//! traffic with no balancing at all (straight to a backend) and beside nftables DNAT doing the
//! same balancing in the client's sandbox (this kernel has no IPVS; a verdict map of per-service
//! chains with `numgen` is the closest kernel equivalent), with 10, 1,000 and 10,000 services.
//!
//! Two nodes of ours: the client on node-a, three backends on node-b. The other services'
//! backends are endpoints on a node that runs no agent (never contacted): they fill the maps
//! and the nftables ruleset as a real cluster would. Each service count gets fresh namespaces;
//! within one, the three paths are measured in interleaved rounds and each figure is the median.

use std::{fmt::Write as _, time::Duration};

use anyhow::{bail, Context as _, Result};

use super::report::Report;
use crate::{in_netns, spawn_in, tcpx_bin, Cluster, ClusterSpec, Proc};

pub const SECTION: &str = "Service VIPs";
const BACKENDS: [&str; 3] = ["10.64.0.4", "10.64.0.5", "10.64.0.6"];
const PORT: u16 = 80;

fn cps_bin() -> std::path::PathBuf {
    tcpx_bin().with_file_name("cps")
}

/// The i-th service's VIP (ours) and the address nftables balances for it.
fn vip(i: u32) -> String {
    format!("10.65.{}.{}", i / 250, i % 250 + 1)
}
fn nft_vip(i: u32) -> String {
    format!("10.72.{}.{}", i / 250, i % 250 + 1)
}
fn filler_ip(i: u32, b: u32) -> String {
    let n = i * 3 + b;
    format!("10.{}.{}.{}", 66 + n / 62500, (n / 250) % 250, n % 250 + 1)
}

/// Services 1..n balance filler endpoints on the ghost node; service 0 balances the real backends.
fn services_toml(n: u32) -> String {
    // Ten nodes that run no agent hold the fillers (a node holds at most 4,096 endpoints).
    let mut s = String::new();
    for g in 0..10 {
        let _ = writeln!(s, "[[nodes]]\nname = \"ghost{g}\"\naddress = \"192.168.50.{}\"\n", 100 + g);
    }
    for i in 1..n {
        for b in 0..3 {
            let _ = writeln!(
                s,
                "[[endpoints]]\nname = \"f{i}.{b}\"\nnetwork = \"big\"\nnode = \"ghost{}\"\nip = \"{}\"\n",
                i % 10,
                filler_ip(i, b)
            );
        }
    }
    for i in 0..n {
        let backends = if i == 0 {
            "{ endpoint = \"b1\" }, { endpoint = \"b2\" }, { endpoint = \"b3\" }".to_string()
        } else {
            format!("{{ endpoint = \"f{i}.0\" }}, {{ endpoint = \"f{i}.1\" }}, {{ endpoint = \"f{i}.2\" }}")
        };
        let _ = writeln!(
            s,
            "[[services]]\nname = \"s{i}\"\nvips = [ {{ network = \"big\", ip = \"{}\" }} ]\n\
             ports = [ {{ protocol = \"tcp\", target = {PORT} }} ]\nbackends = [ {backends} ]\n",
            vip(i)
        );
    }
    s
}

/// The same balancing in nftables, in the client's sandbox (where Docker puts IPVS).
fn nft_ruleset(n: u32) -> String {
    let mut s = String::from("table ip lb {\n  map svc {\n    type ipv4_addr . inet_service : verdict\n");
    if n > 0 {
        s += "    elements = {\n";
        for i in 0..n {
            let _ = writeln!(s, "      {} . {PORT} : jump s{i},", nft_vip(i));
        }
        s += "    }\n";
    }
    s += "  }\n  chain out {\n    type nat hook output priority -100;\n    ip daddr . tcp dport vmap @svc\n  }\n";
    for i in 0..n {
        let b: Vec<String> = if i == 0 {
            BACKENDS.iter().map(|s| s.to_string()).collect()
        } else {
            (0..3).map(|b| filler_ip(i, b)).collect()
        };
        let _ = writeln!(
            s,
            "  chain s{i} {{\n    dnat to numgen inc mod 3 map {{ 0 : {}, 1 : {}, 2 : {} }}\n  }}",
            b[0], b[1], b[2]
        );
    }
    s += "}\n";
    s
}

fn spec() -> ClusterSpec {
    // 10,000 services of 3 backends must fit the lookup-table map (2,000 would need 80M slots);
    // the per-packet path does not depend on the table size.
    ClusterSpec { maglev_slots_per_backend: Some(100), ..Default::default() }
        .node("node-a", "192.168.50.11")
        .node("node-b", "192.168.50.12")
        .network("big", 4100, "10.64.0.0/12")
        .endpoint("client", "big", "node-a", "10.64.0.3")
        .endpoint("b1", "big", "node-b", BACKENDS[0])
        .endpoint("b2", "big", "node-b", BACKENDS[1])
        .endpoint("b3", "big", "node-b", BACKENDS[2])
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn cps(ns: &str, ip: &str, secs: f64) -> Result<f64> {
    let out = crate::run(&mut in_netns(ns, &format!("{} {ip} {PORT} {secs}", cps_bin().display())))?;
    let v: Vec<&str> = out.split_whitespace().collect();
    if v.first() != Some(&"cps") || v.get(3) != Some(&"0") {
        bail!("cps to {ip}: {out}");
    }
    v[1].parse().context("cps output")
}

fn rr(ns: &str, ip: &str, secs: u32) -> Result<f64> {
    let out = crate::run(&mut in_netns(ns, &format!("{} rr {ip} {PORT} {secs}", tcpx_bin().display())))?;
    out.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()).map(|n| n / secs as f64).context("rr output")
}

struct Paths {
    direct: (Vec<f64>, Vec<f64>),
    vip: (Vec<f64>, Vec<f64>),
    nft: (Vec<f64>, Vec<f64>),
    apply_ms: f64,
}

fn measure(n: u32, rounds: u32, secs: f64) -> Result<Paths> {
    let mut c = Cluster::up(spec())?;
    let text = format!("{}\n{}", c.render_state(), services_toml(n));
    let t0 = std::time::Instant::now();
    c.write_state(&text)?;
    c.wait_applied(Duration::from_secs(120))?;
    let apply_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let mut servers = Vec::new();
    for b in ["b1", "b2", "b3"] {
        let ns = c.container(b).name.clone();
        let log = std::fs::File::create("/dev/null")?;
        servers.push(Proc(spawn_in(&ns, &format!("{} serve {PORT}", tcpx_bin().display()), log)?));
    }
    let client = c.container("client").name.clone();
    // Thousands of short connections a second from one sandbox: without reuse, TIME_WAIT would
    // exhaust its ephemeral ports within a round and connect() would be what is measured.
    crate::run(&mut in_netns(&client, "sysctl -qw net.ipv4.ip_local_port_range='1024 65535' net.ipv4.tcp_tw_reuse=1"))?;
    let rules = c.run_dir.path.join("lb.nft");
    std::fs::write(&rules, nft_ruleset(n))?;
    crate::run(&mut in_netns(&client, &format!("nft -f {}", rules.display()))).context("loading the nftables rules")?;
    std::thread::sleep(Duration::from_millis(300));
    let mut p = Paths { direct: (vec![], vec![]), vip: (vec![], vec![]), nft: (vec![], vec![]), apply_ms };
    for _ in 0..rounds {
        for (ip, slot) in [(BACKENDS[0].to_string(), 0), (vip(0), 1), (nft_vip(0), 2)] {
            let v = (cps(&client, &ip, secs)?, rr(&client, &ip, secs.ceil() as u32)?);
            let t = match slot {
                0 => &mut p.direct,
                1 => &mut p.vip,
                _ => &mut p.nft,
            };
            t.0.push(v.0);
            t.1.push(v.1);
        }
    }
    drop(servers);
    Ok(p)
}

pub fn run(report: &mut Report, opts: &super::Opts) -> Result<()> {
    let (counts, rounds, secs): (&[u32], u32, f64) =
        if opts.quick { (&[10], 1, 1.0) } else { (&[10, 1000, 10000], 3, 3.0) };
    for &n in counts {
        let mut p = measure(n, rounds, secs)?;
        let direct = format!("{n} services: connections/s, no balancing (straight to a backend)");
        let ours = format!("{n} services: connections/s through our VIP");
        let nft = format!("{n} services: connections/s through nftables DNAT");
        let how = format!("median of {rounds} interleaved rounds of {secs} s; 1-byte echo per connection");
        let (d, o, f) = (median(&mut p.direct.0), median(&mut p.vip.0), median(&mut p.nft.0));
        report.add(SECTION, &direct, d, "conn/s", None, &how);
        report.add(SECTION, &ours, o, "conn/s", Some(&direct), &format!("{how}; {:.2}x nftables", o / f.max(1e-9)));
        report.add(SECTION, &nft, f, "conn/s", Some(&direct), &how);
        let (rd, ro, rf) = (median(&mut p.direct.1), median(&mut p.vip.1), median(&mut p.nft.1));
        let rdn = format!("{n} services: req/resp per s, no balancing");
        report.add(SECTION, &rdn, rd, "req/s", None, "one connection, 1-byte request/response");
        report.add(SECTION, &format!("{n} services: req/resp per s through our VIP"), ro, "req/s", Some(&rdn), "");
        report.add(
            SECTION,
            &format!("{n} services: req/resp per s through nftables DNAT"),
            rf,
            "req/s",
            Some(&rdn),
            "",
        );
        report.add(
            SECTION,
            &format!("{n} services x 3 backends: state change applied"),
            p.apply_ms,
            "ms",
            None,
            "file written to applied.json updated, all services at once",
        );
        let x = o / d.max(1e-9);
        report.target(
            &format!("{n} services: VIP connection rate vs no balancing"),
            ">= 0.97x",
            format!("{x:.2}x"),
            x >= 0.97,
        );
        let y = o / f.max(1e-9);
        report.target(
            &format!("{n} services: VIP connection rate vs nftables DNAT"),
            ">= 2x (the rig's ceiling: no NAT at all is ~1.2x nftables)",
            format!("{y:.2}x"),
            y >= 2.0,
        );
    }
    Ok(())
}

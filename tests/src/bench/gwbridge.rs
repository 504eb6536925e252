//! docker_gwbridge: a container reaching a host outside the cluster through its `eth1` (the
//! bridge, the ICC block, the masquerade), ours beside Docker's layout on the same topology.
//!
//! One node (node-a, 192.168.50.11) running the agent, one container (web.1, on an overlay
//! network, as every Docker container with a gwbridge interface is), and one host on the
//! underlay bridge that is no node (192.168.50.100, "the outside", which has no route to the
//! bridge's subnet: a reply reaches the container only if the masquerade happened). The outside
//! runs the echo server (`tcpx serve`) and iperf3; the container is the client.
//!
//! - ours: `[gwbridge]` in the state file (Docker's defaults: 172.18.0.0/16, `icc = false`,
//!   masquerade): the agent's bridge and `eth1`, the ICC block in our TC program on the bridge
//!   port, TCP masqueraded in eBPF and sent straight out of the underlay (README, docker_gwbridge).
//! - Docker's layout: the same cluster without `[gwbridge]` (the agent still runs, so the underlay
//!   has our program on it as in ours) and docker_gwbridge built by hand in the node: a plain
//!   Linux bridge with 172.18.0.1/16, a veth into the container as `eth1` (172.18.0.2/16, Docker's
//!   MAC, the default route via 172.18.0.1), forwarding on, and Docker's rules in nftables:
//!   FORWARD (replies in, the bridge out, nothing new in, no bridge-to-bridge routing: the
//!   `enable_icc=false` rule), the masquerade in POSTROUTING, and the L2 half of the ICC block
//!   (Docker gets it from br_netfilter sending bridged frames through iptables; here a bridge-
//!   family forward chain dropping every frame bridged port to port: frames to the bridge itself
//!   are delivered, not forwarded, so the gateway stays reachable; docker_gwbridge is the node's
//!   only bridge, and this kernel has no `ibrname` match in the bridge family).
//! - Docker's layout without the ICC block: the bridge and the masquerade only (no forward
//!   rules, no bridge-family chain): what the block itself costs the kernel path.
//!
//! Every (round, path) gets fresh namespaces: TIME_WAIT sockets and conntrack entries left by an
//! earlier measurement cut later ones (../shared/TESTING.md). Paths are interleaved round by
//! round (the order rotates), and each figure is the median of the rounds.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use overlay_common::stats::FwdCounter;

use super::report::{fmt_value, Report};
use crate::{in_netns, spawn_in, tcpx_bin, Cluster, ClusterSpec, Proc};

pub const SECTION: &str = "docker_gwbridge (container to the outside)";
const OUTSIDE: &str = "outside";
const OUTSIDE_IP: &str = "192.168.50.100";
const NODE_IP: &str = "192.168.50.11";
const ECHO: u16 = 5001;
const IPERF: u16 = 5201;
const BRIDGE: &str = "docker_gwbridge";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Docker,
    DockerNoIcc,
    Ours,
}

const PATHS: [Path; 3] = [Path::Docker, Path::DockerNoIcc, Path::Ours];

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Docker => "Docker's layout (Linux bridge, ICC block and masquerade in nftables)",
            Path::DockerNoIcc => "Docker's layout without the ICC block (bridge + masquerade)",
            Path::Ours => "ours (ICC block in TC, masquerade in eBPF)",
        }
    }
}

/// A container that reaches the outside through one path.
struct Rig {
    container: String,
    node: String,
    /// The cluster (its processes, then its namespaces); dropped with the rig.
    cluster: Cluster,
}

fn null() -> Result<std::fs::File> {
    Ok(std::fs::File::create("/dev/null")?)
}

fn exec(ns: &str, cmd: &str) -> Result<String> {
    crate::run(&mut in_netns(ns, cmd))
}

/// Docker's nftables rules for docker_gwbridge (`enable_icc=false`, `enable_ip_masquerade=true`),
/// with the ICC block or without it.
fn docker_ruleset(icc_block: bool) -> String {
    let masq = format!(
        "table ip dock {{\n\
         \x20 chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ip saddr 172.18.0.0/16 oifname != \"{BRIDGE}\" masquerade\n  }}\n"
    );
    if !icc_block {
        return masq + "}\n";
    }
    format!(
        "{masq}\
         \x20 chain forward {{\n    type filter hook forward priority filter; policy accept;\n\
         \x20   oifname \"{BRIDGE}\" ct state established,related accept\n\
         \x20   iifname \"{BRIDGE}\" oifname != \"{BRIDGE}\" accept\n\
         \x20   iifname \"{BRIDGE}\" oifname \"{BRIDGE}\" drop\n\
         \x20   oifname \"{BRIDGE}\" drop\n  }}\n}}\n\
         table bridge dockicc {{\n\
         \x20 chain icc {{\n    type filter hook forward priority 0; policy accept;\n\
         \x20   drop\n  }}\n}}\n"
    )
}

/// docker_gwbridge by hand in `node`, `eth1` in `container`: see the module's documentation.
fn docker_layout(node: &str, container: &str, icc_block: bool) -> Result<()> {
    exec(
        node,
        &format!(
            "sysctl -qw net.ipv4.ip_forward=1 && \
             ip link add {BRIDGE} type bridge && ip link set {BRIDGE} address 02:42:ac:12:00:01 && \
             sysctl -qw net.ipv6.conf.{BRIDGE}.disable_ipv6=1 && \
             ip addr add 172.18.0.1/16 dev {BRIDGE} && ip link set {BRIDGE} up && \
             ip link add vgw0 type veth peer name eth1 netns {container} && \
             sysctl -qw net.ipv6.conf.vgw0.disable_ipv6=1 && \
             ip link set vgw0 master {BRIDGE} && ip link set vgw0 up"
        ),
    )
    .context("docker_gwbridge in the node")?;
    exec(
        container,
        "sysctl -qw net.ipv6.conf.eth1.disable_ipv6=1 && ip link set eth1 address 02:42:ac:12:00:02 && \
         ip addr add 172.18.0.2/16 dev eth1 && ip link set eth1 up && \
         ip route replace default via 172.18.0.1 dev eth1",
    )
    .context("eth1 in the container")?;
    exec(node, &format!("nft -f - <<'EOF'\n{}EOF", docker_ruleset(icc_block)))
        .context("loading Docker's nftables rules")?;
    Ok(())
}

fn build(path: Path) -> Result<Rig> {
    let mut spec = ClusterSpec::nodes(1)
        .network("app-net", 4097, "10.0.9.0/24")
        .endpoint("web.1", "app-net", "node-a", "10.0.9.3");
    if path == Path::Ours {
        spec.extra = "\n[gwbridge]\n".into();
    }
    let mut c = Cluster::up(spec)?;
    c.add_external(OUTSIDE, OUTSIDE_IP)?;
    let outside = c.external(OUTSIDE).ns.name.clone();
    // Thousands of short connections a second: without reuse, TIME_WAIT would exhaust the
    // container's ephemeral ports within a round and connect() would be what is measured.
    let container = c.container("web.1").name.clone();
    exec(&container, "sysctl -qw net.ipv4.ip_local_port_range='1024 65535' net.ipv4.tcp_tw_reuse=1")?;
    let node = c.nodes["node-a"].name.clone();
    match path {
        Path::Docker => docker_layout(&node, &container, true)?,
        Path::DockerNoIcc => docker_layout(&node, &container, false)?,
        Path::Ours => {}
    }
    let route = exec(&container, &format!("ip route get {OUTSIDE_IP}"))?;
    if !route.contains("via 172.18.0.1 dev eth1") {
        bail!("the outside is not routed through the gwbridge in the container: {route}");
    }
    c.servers.push(Proc(spawn_in(&outside, &format!("{} serve {ECHO}", tcpx_bin().display()), null()?)?));
    c.servers.push(Proc(spawn_in(&outside, &format!("iperf3 -s -p {IPERF}"), null()?)?));
    // Ready when one exchange goes through (tcpx retries the connect for 5 s).
    exec(&container, &format!("{} send {OUTSIDE_IP} {ECHO} 1000", tcpx_bin().display()))
        .context("a first exchange with the outside")?;
    Ok(Rig { container, node, cluster: c })
}

#[derive(Clone, Copy, Default)]
struct Sample {
    rr: f64,
    p50_us: f64,
    p99_us: f64,
    gbps: f64,
    cps: f64,
    cps_failed: f64,
}

/// Rate, p50 and p99 (us) of 1-byte request/response on one connection.
fn rr(rig: &Rig, secs: u32) -> Result<(f64, f64, f64)> {
    let out = exec(&rig.container, &format!("{} rr {OUTSIDE_IP} {ECHO} {secs}", tcpx_bin().display()))?;
    let f: Vec<&str> = out.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
    match (f.first(), num(1), num(3), num(5)) {
        (Some(&"rr"), Some(n), Some(p50), Some(p99)) => Ok((n / secs as f64, p50, p99)),
        _ => bail!("rr output: {out}"),
    }
}

fn iperf(rig: &Rig, secs: u32) -> Result<f64> {
    let out = exec(&rig.container, &format!("iperf3 -c {OUTSIDE_IP} -p {IPERF} -t {secs} -J"))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 output")?;
    v["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e9).context("iperf3: no received rate")
}

/// Connections per second and failed connections: every connection is a new masqueraded flow.
fn cps(rig: &Rig, secs: u32) -> Result<(f64, f64)> {
    let bin = tcpx_bin().with_file_name("cps");
    // Failed connections are a result here (a port range running out), not an error: cps exits
    // non-zero only when nothing got through.
    let out = exec(&rig.container, &format!("{} {OUTSIDE_IP} {ECHO} {secs}", bin.display()))?;
    let v: Vec<&str> = out.split_whitespace().collect();
    match (v.first(), v.get(1).and_then(|x| x.parse().ok()), v.get(3).and_then(|x| x.parse().ok())) {
        (Some(&"cps"), Some(rate), Some(failed)) => Ok((rate, failed)),
        _ => bail!("cps output: {out}"),
    }
}

#[derive(Clone, Copy)]
struct Secs {
    rr: u32,
    iperf: u32,
    cps: u32,
}

fn measure(rig: &Rig, secs: Secs) -> Result<Sample> {
    let (rr, p50_us, p99_us) = rr(rig, secs.rr)?;
    let gbps = iperf(rig, secs.iperf)?;
    // Last: the flows it leaves (closing, in conntrack or our NAT table) would weigh on the others.
    let (cps, cps_failed) = cps(rig, secs.cps)?;
    Ok(Sample { rr, p50_us, p99_us, gbps, cps, cps_failed })
}

/// Who masqueraded the round's flows, from the node: the kernel's conntrack entries and our
/// gw-snat counter (a sanity note; the outside has no route back to the bridge's subnet, so every
/// exchange that completed was masqueraded by one of them).
fn masqueraded_by(rig: &Rig) -> String {
    let ct = exec(&rig.node, "cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null").unwrap_or_default();
    let ct = if ct.trim().is_empty() { "0" } else { ct.trim() };
    let c = rig.cluster.counters("node-a").ok();
    let snat = c.as_ref().map(|c| c.fwd(FwdCounter::GwSnat)).unwrap_or(0);
    let full = c.as_ref().map(|c| c.fwd(FwdCounter::GwSnatFull)).unwrap_or(0);
    format!(
        "after round 1, on the node: {ct} kernel conntrack entries, {snat} packets masqueraded in eBPF (gw-snat), \
         {full} new flows that found no free masquerade port and took the kernel path (gw-snat-full)"
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(report: &mut Report, opts: &super::Opts) -> Result<()> {
    let (rounds, secs) =
        if opts.quick { (1, Secs { rr: 1, iperf: 1, cps: 1 }) } else { (3, Secs { rr: 3, iperf: 3, cps: 2 }) };
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); PATHS.len()];
    let mut how_nat: Vec<String> = vec![String::new(); PATHS.len()];
    for round in 0..rounds {
        for j in 0..PATHS.len() {
            let pi = (j + round) % PATHS.len();
            let path = PATHS[pi];
            let what = format!("{}, round {}", path.label(), round + 1);
            eprintln!("bench: gwbridge: {what}");
            let rig = build(path).with_context(|| format!("building {what}"))?;
            let s = measure(&rig, secs).with_context(|| format!("measuring {what}"))?;
            if round == 0 {
                how_nat[pi] = masqueraded_by(&rig);
            }
            samples[pi].push(s);
            drop(rig);
            // The kernel tears namespaces down in the background: let it finish first.
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let how = format!(
        "median of {rounds} interleaved rounds, fresh namespaces for each; one node, container to {OUTSIDE_IP} \
         on the underlay (seen as {NODE_IP})"
    );
    let m: Vec<Sample> = (0..PATHS.len())
        .map(|pi| {
            let pick = |f: fn(&Sample) -> f64| median(&mut samples[pi].iter().map(f).collect::<Vec<_>>());
            Sample {
                rr: pick(|s| s.rr),
                p50_us: pick(|s| s.p50_us),
                p99_us: pick(|s| s.p99_us),
                gbps: pick(|s| s.gbps),
                cps: pick(|s| s.cps),
                cps_failed: pick(|s| s.cps_failed),
            }
        })
        .collect();
    let each = |pi: usize, f: fn(&Sample) -> f64| {
        let v: Vec<String> = samples[pi].iter().map(|s| fmt_value(f(s))).collect();
        format!("; rounds: {}", v.join(" / "))
    };
    let name = |metric: &str, path: Path| format!("{metric}, {}", path.label());
    let docker = Path::Docker as usize;
    // The reference of every metric is Docker's layout; the no-ICC row also says what the block costs.
    let mut rows = |metric: &str, unit: &str, what: String, f: fn(&Sample) -> f64, nat_note: bool| {
        let reference = name(metric, Path::Docker);
        for (pi, &path) in PATHS.iter().enumerate() {
            let r = (path != Path::Docker).then_some(reference.as_str());
            let extra = if path == Path::Ours {
                format!("; {:.2}x Docker's without the ICC block", f(&m[pi]) / f(&m[1]).max(1e-9))
            } else {
                String::new()
            };
            let nat = if nat_note {
                format!(
                    "; failed connections: {}; {}",
                    each(pi, |s| s.cps_failed).trim_start_matches("; rounds: "),
                    how_nat[pi]
                )
            } else {
                String::new()
            };
            let note = format!("{how}; {what}{extra}{nat}{}", each(pi, f));
            report.add(SECTION, &name(metric, path), f(&m[pi]), unit, r, &note);
        }
    };
    rows(
        "TCP throughput",
        "Gbit/s",
        format!("iperf3, one stream, container to the outside, {} s", secs.iperf),
        |s| s.gbps,
        false,
    );
    rows(
        "req/resp per s",
        "req/s",
        format!("{} s on one connection, 1-byte request/response (tcpx rr)", secs.rr),
        |s| s.rr,
        false,
    );
    rows(
        "req/resp p99",
        "us",
        "p99 of the same rounds' per-request latencies (lower is better)".into(),
        |s| s.p99_us,
        false,
    );
    rows(
        "connections/s",
        "conn/s",
        format!(
            "{} s of sequential connections to one outside address and port, 1-byte echo each (cps); \
             each a new masqueraded flow",
            secs.cps
        ),
        |s| s.cps,
        true,
    );
    let ours = Path::Ours as usize;
    for (pi, &path) in PATHS.iter().enumerate() {
        if m[pi].cps_failed > 0.0 {
            eprintln!("bench: gwbridge: {}: {} failed connections (median)", path.label(), m[pi].cps_failed);
        }
    }
    let x = m[ours].gbps / m[docker].gbps.max(1e-9);
    report.target("gwbridge TCP throughput to the outside vs Docker's layout", ">= 1x", format!("{x:.2}x"), x >= 1.0);
    let y = m[ours].rr / m[docker].rr.max(1e-9);
    report.target(
        "gwbridge request/response rate to the outside vs Docker's layout",
        ">= 1x",
        format!("{y:.2}x (p50 {:.0} us vs {:.0} us)", m[ours].p50_us, m[docker].p50_us),
        y >= 1.0,
    );
    let z = m[ours].cps / m[docker].cps.max(1e-9);
    report.target(
        "gwbridge connection rate to the outside vs Docker's layout",
        ">= 1x, no failed connections",
        format!(
            "{z:.2}x; failed connections per round (median): ours {}, Docker's {}",
            m[ours].cps_failed, m[docker].cps_failed
        ),
        z >= 1.0 && m[ours].cps_failed == 0.0,
    );
    Ok(())
}

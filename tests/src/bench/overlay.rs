//! Two nodes in namespaces, four datapaths on the same topology, measured in the same run:
//! routed veth (no encapsulation, the limit of this rig), a kernel vxlan device + bridge per
//! network (Docker's overlay driver), and ours with TC and with XDP decapsulation.
//!
//! All four are built first and then measured in interleaved rounds, and each figure is the
//! median of its rounds: the load of a shared machine drifts over minutes, and measuring one
//! datapath after the other would hand that drift to whichever ran at a bad moment.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use super::{
    cpu::{self, Cpu},
    report::Report,
};
use crate::{in_netns, spawn_in, tcpx_bin, Cluster, ClusterSpec, Netns, Proc};

pub const SECTION: &str = "Two-node overlay";
pub const DATAPATHS: [&str; 4] =
    ["routed veth (no encap)", "kernel vxlan + bridge", "ours, TC decap", "ours, XDP decap"];
/// Charted metrics (higher is better; p99 latency stays in the table).
pub const METRICS: [(&str, &str); 4] = [
    ("TCP 1 stream", "TCP 1 stream"),
    ("TCP 4 streams", "TCP 4 streams"),
    ("UDP 64 B", "UDP 64 B pps"),
    ("TCP RR", "TCP req/resp"),
];

/// A client and a server container on two different nodes, whatever carries them.
struct Rig {
    client: String,
    server: String,
    server_ip: String,
    _keep: Box<dyn std::any::Any>,
}

fn spec() -> ClusterSpec {
    ClusterSpec::default()
        .network("app-net", 4097, "10.0.9.0/24")
        .endpoint("client", "app-net", "node-a", "10.0.9.3")
        .endpoint("server", "app-net", "node-b", "10.0.9.4")
}

fn cluster_rig(c: Cluster) -> Rig {
    Rig {
        client: c.containers["client"].name.clone(),
        server: c.containers["server"].name.clone(),
        server_ip: "10.0.9.4".into(),
        _keep: Box::new(c),
    }
}

/// Plain routing: each container behind a veth to its node, nodes route the /32s over the
/// underlay bridge. No encapsulation at all.
fn routed_rig() -> Result<Rig> {
    let ul = Netns::new("bul")?;
    ul.sh("ip link add br0 type bridge && ip link set br0 up")?;
    let a = Netns::new("bna")?;
    let b = Netns::new("bnb")?;
    let ca = Netns::new("bca")?;
    let cb = Netns::new("bcb")?;
    for (i, (n, addr, c, cip, peer_addr, peer_cip)) in [
        (&a, "192.168.50.11", &ca, "10.0.9.3", "192.168.50.12", "10.0.9.4"),
        (&b, "192.168.50.12", &cb, "10.0.9.4", "192.168.50.11", "10.0.9.3"),
    ]
    .into_iter()
    .enumerate()
    {
        ul.sh(&format!("ip link add n{i} type veth peer name ul0 && ip link set ul0 netns {} && ip link set n{i} master br0 && ip link set n{i} up", n.name))?;
        n.sh(&format!(
            "ip addr add {addr}/24 dev ul0 && ip link set ul0 up && sysctl -qw net.ipv4.ip_forward=1 && \
             ip link add h0 type veth peer name eth0 netns {} && ip addr add 169.254.1.1/32 dev h0 && ip link set h0 up && \
             ip route add {cip}/32 dev h0 && ip route add {peer_cip}/32 via {peer_addr}",
            c.name
        ))?;
        c.sh(&format!(
            "ip addr add {cip}/24 dev eth0 && ip link set eth0 up && ip route replace 10.0.9.0/24 via 169.254.1.1 dev eth0 onlink"
        ))?;
    }
    Ok(Rig {
        client: ca.name.clone(),
        server: cb.name.clone(),
        server_ip: "10.0.9.4".into(),
        _keep: Box::new((cb, ca, b, a, ul)),
    })
}

fn exec(ns: &str, cmd: &str) -> Result<String> {
    crate::run(&mut in_netns(ns, cmd))
}

fn spawn(ns: &str, cmd: &str) -> Result<Proc> {
    Ok(Proc(spawn_in(ns, cmd, std::fs::File::create("/dev/null")?)?))
}

/// One iperf3 run, with the CPU the machine spent during it.
fn iperf(rig: &Rig, args: &str) -> Result<(serde_json::Value, Cpu)> {
    let _server = spawn(&rig.server, "iperf3 -s -1 -p 5201")?;
    std::thread::sleep(Duration::from_millis(300));
    let (out, cpu) = cpu::measure(|| exec(&rig.client, &format!("iperf3 -c {} -p 5201 -J {args}", rig.server_ip)))?;
    Ok((serde_json::from_str(&out).context("iperf3 output")?, cpu))
}

/// Offered load of the fixed-rate rounds: below what every datapath here can carry, so each
/// carries the same traffic and only the CPU it takes differs.
const FIXED_TCP: &str = "1G";
const FIXED_UDP_PPS: u64 = 50_000;

#[derive(Clone, Copy, Default)]
struct Measured {
    tcp1_gbps: f64,
    tcp4_gbps: f64,
    udp_pps: f64,
    rr_per_s: f64,
    rr_p50_us: f64,
    rr_p99_us: f64,
    /// CPU seconds per GB received, TCP 1 stream at full speed.
    cpu_per_gb: Cpu,
    /// CPU seconds per million packets received, UDP 64 B at full speed.
    cpu_per_mpkt: Cpu,
    /// Busy CPUs (CPU seconds per second) at the fixed TCP and UDP rates.
    fixed_tcp: Cpu,
    fixed_udp: Cpu,
}

fn measure(rig: &Rig, secs: u32) -> Result<Measured> {
    if !crate::Netns::ok_in(&rig.client, &format!("ping -c1 -W2 {}", rig.server_ip)) {
        bail!("the rig does not forward");
    }
    let gbps = |v: &serde_json::Value| v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9;
    let gb = |v: &serde_json::Value| v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0) / 1e9;
    let (t1, t1_cpu) = iperf(rig, &format!("-t {secs}"))?;
    let tcp1 = gbps(&t1);
    let tcp4 = gbps(&iperf(rig, &format!("-t {secs} -P 4"))?.0);
    let received = |u: &serde_json::Value| {
        let sum = &u["end"]["sum"];
        sum["packets"].as_f64().unwrap_or(0.0) - sum["lost_packets"].as_f64().unwrap_or(0.0)
    };
    let (u, u_cpu) = iperf(rig, &format!("-t {secs} -u -l 64 -b 0"))?;
    let udp_pps = received(&u) / u["end"]["sum"]["seconds"].as_f64().unwrap_or(1.0).max(0.001);
    let (_, fixed_tcp) = iperf(rig, &format!("-t {secs} -b {FIXED_TCP}"))?;
    let (_, fixed_udp) = iperf(rig, &format!("-t {secs} -u -l 64 -b {}", FIXED_UDP_PPS * 64 * 8))?;
    let _echo = spawn(&rig.server, &format!("{} serve 5001", tcpx_bin().display()))?;
    std::thread::sleep(Duration::from_millis(200));
    let rr = exec(&rig.client, &format!("{} rr {} 5001 {secs}", tcpx_bin().display(), rig.server_ip))?;
    let f: Vec<&str> = rr.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    Ok(Measured {
        tcp1_gbps: tcp1,
        tcp4_gbps: tcp4,
        udp_pps,
        rr_per_s: num(1) / secs as f64,
        rr_p50_us: num(3),
        rr_p99_us: num(5),
        cpu_per_gb: t1_cpu.per(gb(&t1)),
        cpu_per_mpkt: u_cpu.per(received(&u) / 1e6),
        fixed_tcp: fixed_tcp.per(secs as f64),
        fixed_udp: fixed_udp.per(secs as f64),
    })
}

fn build(dp: &str) -> Result<Rig> {
    let ours = |decap: &str| {
        let mut s = spec().node("node-a", "192.168.50.11").node("node-b", "192.168.50.12");
        s.decap = Some(decap.into());
        Cluster::up(s)
    };
    Ok(match dp {
        "routed veth (no encap)" => routed_rig()?,
        "kernel vxlan + bridge" => cluster_rig(Cluster::up(
            spec().kernel_node("node-a", "192.168.50.11").kernel_node("node-b", "192.168.50.12"),
        )?),
        "ours, TC decap" => cluster_rig(ours("tc")?),
        _ => {
            let c = ours("xdp")?;
            // See README, Limits: XDP on a veth underlay needs senders that fill in checksums.
            for ns in c.containers.values() {
                ns.sh("ethtool -K eth0 tx off >/dev/null")?;
            }
            cluster_rig(c)
        }
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(report: &mut Report, opts: &super::Opts) -> Result<()> {
    let (secs, rounds) = if opts.quick { (1, 1) } else { (3, 3) };
    let refname = DATAPATHS[0];
    let mut rigs = Vec::new();
    for dp in DATAPATHS {
        rigs.push(build(dp).with_context(|| format!("building {dp}"))?);
    }
    let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); rigs.len()];
    for _ in 0..rounds {
        for (i, rig) in rigs.iter().enumerate() {
            runs[i].push(measure(rig, secs).with_context(|| format!("measuring {}", DATAPATHS[i]))?);
        }
    }
    let mut medians = Vec::new();
    for (i, dp) in DATAPATHS.iter().enumerate() {
        let pick = |f: fn(&Measured) -> f64| median(&mut runs[i].iter().map(f).collect::<Vec<_>>());
        // A CPU figure is the round whose total is the median, so its split adds up.
        let pick_cpu = |f: fn(&Measured) -> Cpu| {
            let mut v: Vec<Cpu> = runs[i].iter().map(f).collect();
            v.sort_by(|a, b| a.total().total_cmp(&b.total()));
            v.get(v.len() / 2).copied().unwrap_or_default()
        };
        let m = Measured {
            tcp1_gbps: pick(|m| m.tcp1_gbps),
            tcp4_gbps: pick(|m| m.tcp4_gbps),
            udp_pps: pick(|m| m.udp_pps),
            rr_per_s: pick(|m| m.rr_per_s),
            rr_p50_us: pick(|m| m.rr_p50_us),
            rr_p99_us: pick(|m| m.rr_p99_us),
            cpu_per_gb: pick_cpu(|m| m.cpu_per_gb),
            cpu_per_mpkt: pick_cpu(|m| m.cpu_per_mpkt),
            fixed_tcp: pick_cpu(|m| m.fixed_tcp),
            fixed_udp: pick_cpu(|m| m.fixed_udp),
        };
        medians.push(m);
        let dp = *dp;
        let r = |m: &str| if dp == refname { None } else { Some(format!("{refname}: {m}")) };
        let rounds_note = format!("median of {rounds} x {secs} s");
        let note = if dp.contains("XDP") {
            format!("{rounds_note}; senders with checksum offload off (veth underlay)")
        } else {
            rounds_note.clone()
        };
        report.add(SECTION, &format!("{dp}: TCP 1 stream"), m.tcp1_gbps, "Gbit/s", r("TCP 1 stream").as_deref(), &note);
        report.add(
            SECTION,
            &format!("{dp}: TCP 4 streams"),
            m.tcp4_gbps,
            "Gbit/s",
            r("TCP 4 streams").as_deref(),
            &note,
        );
        report.add(SECTION, &format!("{dp}: UDP 64 B"), m.udp_pps, "pkt/s received", r("UDP 64 B").as_deref(), &note);
        report.add(
            SECTION,
            &format!("{dp}: TCP RR"),
            m.rr_per_s,
            "transactions/s",
            r("TCP RR").as_deref(),
            &format!("p50 {:.0} us; {rounds_note}", m.rr_p50_us),
        );
        report.add(
            SECTION,
            &format!("{dp}: TCP RR p99 latency"),
            m.rr_p99_us,
            "us",
            r("TCP RR p99 latency").as_deref(),
            "lower is better",
        );
    }
    cpu_rows(report, &medians, rounds, secs);
    let kernel = DATAPATHS[1];
    let ours = DATAPATHS[2];
    let g = |r: &Report, d: &str, m: &str| r.get(SECTION, &format!("{d}: {m}")).unwrap_or(0.0);
    let t = g(report, ours, "TCP 1 stream") / g(report, kernel, "TCP 1 stream").max(1e-9);
    report.target("ours (default, TC) vs kernel vxlan+bridge: TCP throughput", ">= 1.3x", format!("{t:.2}x"), t >= 1.3);
    let u = g(report, ours, "UDP 64 B") / g(report, kernel, "UDP 64 B").max(1e-9);
    report.target(
        "ours (default, TC) vs kernel vxlan+bridge: small-packet rate",
        ">= 1.5x",
        format!("{u:.2}x"),
        u >= 1.5,
    );
    let l = g(report, ours, "TCP 1 stream") / g(report, refname, "TCP 1 stream").max(1e-9);
    report.target(
        "ours (default, TC) vs no-encapsulation limit: TCP throughput",
        ">= 0.9x",
        format!("{l:.2}x"),
        l >= 0.9,
    );
    if opts.flame {
        // After the measured rounds, so sampling never perturbs them.
        let mut files = Vec::new();
        for (rig, dp) in rigs.iter().zip(DATAPATHS) {
            files.push(flame(rig, dp, secs.max(3)).with_context(|| format!("flame graph of {dp}"))?);
        }
        report.meta.insert("flame graphs (TCP 1 stream, every CPU)".into(), files.join(", "));
    }
    Ok(())
}

/// A flame graph of the whole machine while one TCP stream runs through `rig`: perf samples of
/// every CPU (all of a rig runs here), folded and drawn by inferno. Returns the file's name.
fn flame(rig: &Rig, dp: &str, secs: u32) -> Result<String> {
    use inferno::{
        collapse::{perf::Folder, Collapse as _},
        flamegraph,
    };
    // "ours, TC decap" -> "ours-tc-decap"
    let slug = dp
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("-")
        .to_lowercase();
    let dir = super::out_dir();
    std::fs::create_dir_all(&dir)?;
    let data = dir.join(format!("perf-{slug}.data"));
    let mut perf = std::process::Command::new("perf")
        .args(["record", "-a", "-g", "-F", "499", "-o"])
        .arg(&data)
        .args(["--", "sleep", &(secs + 1).to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting perf record")?;
    let run = iperf(rig, &format!("-t {secs}"));
    let status = perf.wait()?;
    run?;
    anyhow::ensure!(status.success(), "perf record failed ({status})");
    let script = std::process::Command::new("perf").arg("script").arg("-i").arg(&data).output()?;
    anyhow::ensure!(script.status.success(), "perf script failed: {}", String::from_utf8_lossy(&script.stderr));
    let _ = std::fs::remove_file(&data);
    let mut folded = Vec::new();
    Folder::default().collapse(&script.stdout[..], &mut folded)?;
    let mut opts = flamegraph::Options::default();
    opts.title = format!("{dp}: TCP 1 stream, every CPU");
    let name = format!("flame-{slug}.svg");
    let out = std::fs::File::create(dir.join(&name))?;
    flamegraph::from_lines(&mut opts, std::str::from_utf8(&folded)?.lines(), out)?;
    Ok(name)
}

/// The report's charts: file name and SVG, for the sections the report has.
pub fn charts(r: &Report) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if r.rows.iter().any(|row| row.section == SECTION) {
        let title = format!("{SECTION}: relative to {} (1.0); higher is better", DATAPATHS[0]);
        out.push(("overlay.svg", r.svg(SECTION, &title, &METRICS, &DATAPATHS)));
    }
    if r.rows.iter().any(|row| row.section == CPU_SECTION) {
        // The kernel path first: it is what every other bar is relative to.
        let dps = [DATAPATHS[1], DATAPATHS[0], DATAPATHS[2], DATAPATHS[3]];
        let metrics: Vec<(&str, &str)> = CPU_METRICS.iter().zip(CPU_LABELS).map(|(m, l)| (*m, l)).collect();
        let title = format!("{CPU_SECTION}: relative to {} (1.0); lower is better", DATAPATHS[1]);
        out.push(("cpu.svg", r.svg(CPU_SECTION, &title, &metrics, &dps)));
    }
    out
}

pub const CPU_SECTION: &str = "Two-node overlay: CPU cost";
/// CPU rows, each compared with the kernel path it replaces (vxlan + bridge).
pub const CPU_METRICS: [&str; 4] = [
    "CPU per GB, TCP 1 stream",
    "CPU per million packets, UDP 64 B",
    "busy CPUs at 1 Gbit/s TCP",
    "busy CPUs at 50k pkt/s UDP 64 B",
];
const CPU_LABELS: [&str; 4] =
    ["CPU per GB (TCP)", "CPU per Mpkt (UDP 64 B)", "busy at 1 Gbit/s TCP", "busy at 50k pkt/s"];

fn cpu_rows(report: &mut Report, medians: &[Measured], rounds: u32, secs: u32) {
    let kernel = DATAPATHS[1];
    // The reference goes first so every other row can name it.
    let order = [1, 0, 2, 3];
    for i in order {
        let (dp, m) = (DATAPATHS[i], &medians[i]);
        let rows = [
            (CPU_METRICS[0], m.cpu_per_gb, "CPU s/GB"),
            (CPU_METRICS[1], m.cpu_per_mpkt, "CPU s/Mpkt"),
            (CPU_METRICS[2], m.fixed_tcp, "CPUs"),
            (CPU_METRICS[3], m.fixed_udp, "CPUs"),
        ];
        for (metric, cpu, unit) in rows {
            let reference = (dp != kernel).then(|| format!("{kernel}: {metric}"));
            let note = format!("{}; median of {rounds} x {secs} s; lower is better", cpu.split());
            report.add(CPU_SECTION, &format!("{dp}: {metric}"), cpu.total(), unit, reference.as_deref(), &note);
        }
    }
    let ours = DATAPATHS[2];
    for metric in &CPU_METRICS[..2] {
        let r = report.get(CPU_SECTION, &format!("{ours}: {metric}")).unwrap_or(0.0)
            / report.get(CPU_SECTION, &format!("{kernel}: {metric}")).unwrap_or(0.0).max(1e-12);
        report.target(
            &format!("ours (default, TC) vs kernel vxlan+bridge: {metric}"),
            "<= 0.7x",
            format!("{r:.2}x"),
            r <= 0.7,
        );
    }
}

//! Routing mesh: a published TCP port reached by a client outside the cluster, through ours (TC
//! and XDP entry), beside the same balancing done with nftables DNAT + masquerade on the entry
//! node (Docker's mesh is iptables DNAT + IPVS + SNAT; this kernel has no IPVS) and beside the
//! same client reaching the same task with no NAT at all (routed straight to its address: the
//! limit of this rig, the reference of every ratio).
//!
//! One task (web.1, 10.0.0.3, on node-b), one external client (192.168.50.100) on the underlay
//! bridge. Two cases: the client enters at node-a (no task there: DNAT, then a hop to node-b)
//! and at node-b (the task's node: local delivery).
//!
//! - ours: two nodes running the agent (`--decap tc` or `--decap xdp`), `web` publishes
//!   8080 -> 80 (the echo server) and 5201 -> 5201 (iperf3) in ingress mode; the client dials
//!   the entry node's address. For XDP the client's and the task's veths send with checksum
//!   offload off (`ethtool -K eth0 tx off`): XDP on a veth loses CHECKSUM_PARTIAL checksums (see
//!   README, Limits), and both cross an XDP entry (the request at the entry node, the reply at
//!   the entry node when it is not the task's node); that is what a physical NIC sender is like.
//! - no agent at all, plain routing: node-b routes 10.0.0.3/32 to the task's veth (the task's
//!   default route is node-b), node-a routes 10.0.0.0/24 via node-b, and node-b routes the
//!   client's /32 back via the entry node, so both directions cross the entry node as they do
//!   through the mesh (ICMP redirects off).
//!   - "no balancing": the client routes 10.0.0.0/24 via the entry node and dials 10.0.0.3:80.
//!   - "nftables": the entry node DNATs its address:8080 to 10.0.0.3:80 (and 5201 to 5201) in
//!     prerouting and masquerades DNATed flows in postrouting; the client dials the entry
//!     node's address. One task, so no backend pick on either side (ours still looks up its
//!     Maglev table; nftables does a plain DNAT: if anything, that favours nftables).
//!
//! Every (round, case, path) gets fresh namespaces: TIME_WAIT sockets and conntrack entries left
//! by an earlier measurement cut later ones several-fold (../shared/TESTING.md). Paths are
//! interleaved round by round (the order rotates), and each figure is the median of the rounds.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use super::report::{fmt_value, Report};
use crate::{in_netns, spawn_in, tcpx_bin, wait_for, Cluster, ClusterSpec, Netns, Proc};

pub const SECTION: &str = "Routing mesh (published ports)";
const CLIENT: &str = "192.168.50.100";
const NODE_A: &str = "192.168.50.11";
const NODE_B: &str = "192.168.50.12";
const TASK: &str = "10.0.0.3";
const TARGET: u16 = 80;
const PUBLISHED: u16 = 8080;
const IPERF: u16 = 5201;

/// The service, in the state file's words (appended to the cluster's own state).
fn service_toml() -> String {
    format!(
        "[[services]]\nname = \"web\"\nvips = []\nports = [ {{ protocol = \"tcp\", target = {TARGET}, published = {PUBLISHED}, \
         publish_mode = \"ingress\" }}, {{ protocol = \"tcp\", target = {IPERF}, published = {IPERF}, publish_mode = \"ingress\" }} ]\n\
         backends = [ {{ endpoint = \"web.1\" }} ]\n"
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// node-a: no task there.
    Elsewhere,
    /// node-b: the task's node.
    Local,
}

impl Entry {
    fn node(self) -> &'static str {
        match self {
            Entry::Elsewhere => NODE_A,
            Entry::Local => NODE_B,
        }
    }
    fn label(self) -> &'static str {
        match self {
            Entry::Elsewhere => "entry without the task",
            Entry::Local => "entry on the task's node",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Nft,
    OursTc,
    OursXdp,
}

const PATHS: [Path; 4] = [Path::Direct, Path::Nft, Path::OursTc, Path::OursXdp];

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Direct => "no balancing (routed to the task)",
            Path::Nft => "nftables DNAT + masquerade",
            Path::OursTc => "ours, TC entry",
            Path::OursXdp => "ours, XDP entry",
        }
    }
}

/// A client that can reach the task through one path.
struct Rig {
    client: String,
    backend: String,
    /// What the client dials, and the ports of the echo and iperf3 servers there.
    ip: String,
    echo_port: u16,
    iperf_port: u16,
    /// The namespaces and processes; dropped (processes first) with the rig.
    _keep: Box<dyn std::any::Any>,
}

fn null() -> Result<std::fs::File> {
    Ok(std::fs::File::create("/dev/null")?)
}

fn exec(ns: &str, cmd: &str) -> Result<String> {
    crate::run(&mut in_netns(ns, cmd))
}

/// The external client: a namespace with one veth into the underlay bridge.
fn add_client(underlay: &Netns) -> Result<Netns> {
    let client = Netns::new("mcl")?;
    underlay.sh(&format!(
        "ip link add cl0 type veth peer name eth0 netns {} && ip link set cl0 master br0 && ip link set cl0 up",
        client.name
    ))?;
    // Thousands of short connections a second: without reuse, TIME_WAIT would exhaust the
    // ephemeral ports within a round and connect() would be what is measured.
    client.sh(&format!(
        "ip addr add {CLIENT}/24 dev eth0 && ip link set eth0 up && \
         sysctl -qw net.ipv4.ip_local_port_range='1024 65535' net.ipv4.tcp_tw_reuse=1 \
         net.ipv4.conf.all.accept_redirects=0 net.ipv4.conf.eth0.accept_redirects=0"
    ))?;
    Ok(client)
}

/// The echo server and iperf3 in the task's namespace.
fn servers(ns: &str) -> Result<Vec<Proc>> {
    Ok(vec![
        Proc(spawn_in(ns, &format!("{} serve {TARGET}", tcpx_bin().display()), null()?)?),
        Proc(spawn_in(ns, &format!("iperf3 -s -p {IPERF}"), null()?)?),
    ])
}

fn ours(entry: Entry, decap: &str) -> Result<Rig> {
    let mut spec = ClusterSpec::default()
        .node("node-a", NODE_A)
        .node("node-b", NODE_B)
        .ingress_network("ingress", 4096, "10.0.0.0/24")
        .endpoint("web.1", "ingress", "node-b", TASK);
    spec.decap = Some(decap.into());
    let mut c = Cluster::up(spec)?;
    let text = format!("{}\n{}", c.render_state(), service_toml());
    c.write_state(&text)?;
    c.wait_applied(Duration::from_secs(30))?;
    let client = add_client(&c.underlay)?;
    let backend = c.container("web.1").name.clone();
    if decap == "xdp" {
        // XDP on a veth loses CHECKSUM_PARTIAL checksums: senders fill them in, as a NIC would.
        client.sh("ethtool -K eth0 tx off >/dev/null")?;
        exec(&backend, "ethtool -K eth0 tx off >/dev/null")?;
    }
    if decap == "xdp" {
        // The entry node sends encapsulated requests and reverse-NATed replies back out of its
        // underlay veth with XDP_TX, which a veth delivers only if its peer runs XDP (the
        // kernel flushes the peer's queue only then; GRO alone is not enough): a NIC sends
        // them without that. node-a's peer is `n0` (the cluster names them n<i> in order).
        let pin = c.run_dir.path.join("bpffs/mesh-bench-xdp-pass");
        pin_xdp_pass(&pin)?;
        c.underlay.sh(&format!("ip link set dev n0 xdpdrv pinned {}", pin.display()))?;
    }
    c.servers.extend(servers(&backend)?);
    Ok(Rig {
        client: client.name.clone(),
        backend,
        ip: entry.node().into(),
        echo_port: PUBLISHED,
        iperf_port: IPERF,
        // The client's namespace goes first, then the cluster (its processes, then its namespaces).
        _keep: Box::new((client, c)),
    })
}

/// Load an XDP program that passes every packet (`r0 = XDP_PASS; exit`) and pin it at `pin`
/// (on a bpffs), for `ip link set ... xdpdrv pinned`.
fn pin_xdp_pass(pin: &std::path::Path) -> Result<()> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    // struct bpf_insn: code, dst/src registers, offset, immediate.
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]), // mov64 r0, 2 (XDP_PASS)
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]), // exit
    ];
    let license = c"GPL";
    // union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, then zeros.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..58].copy_from_slice(b"bench_pass");
    // SAFETY: attr is a valid bpf_attr for BPF_PROG_LOAD; the pointers outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        bail!("loading an XDP_PASS program: {}", std::io::Error::last_os_error());
    }
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: attr is a valid bpf_attr for BPF_OBJ_PIN; path outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), attr.len()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours; the pin keeps the program.
    unsafe { libc::close(fd as i32) };
    if r < 0 {
        bail!("pinning the XDP_PASS program at {}: {err}", pin.display());
    }
    Ok(())
}

/// Plain routing, no agent: see the module's documentation.
fn routed(entry: Entry, nft: bool) -> Result<Rig> {
    let ul = Netns::new("mul")?;
    ul.sh("ip link add br0 type bridge && ip link set br0 up")?;
    let a = Netns::new("mna")?;
    let b = Netns::new("mnb")?;
    let task = Netns::new("mweb")?;
    for (i, (n, addr)) in [(&a, NODE_A), (&b, NODE_B)].into_iter().enumerate() {
        ul.sh(&format!(
            "ip link add n{i} type veth peer name ul0 && ip link set ul0 netns {} && ip link set n{i} master br0 && ip link set n{i} up",
            n.name
        ))?;
        n.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0 && \
             ip addr add {addr}/24 dev ul0 && ip link set ul0 up && sysctl -qw net.ipv4.conf.ul0.send_redirects=0"
        ))?;
    }
    b.sh(&format!(
        "ip link add h0 type veth peer name eth0 netns {} && ip addr add 169.254.1.1/32 dev h0 && ip link set h0 up && \
         ip route add {TASK}/32 dev h0",
        task.name
    ))?;
    task.sh(&format!(
        "ip addr add {TASK}/24 dev eth0 && ip link set eth0 up && ip route add default via 169.254.1.1 dev eth0 onlink"
    ))?;
    if entry == Entry::Elsewhere {
        a.sh(&format!("ip route add 10.0.0.0/24 via {NODE_B}"))?;
        // Replies cross the entry node too, as through the mesh (and as nftables' need to).
        b.sh(&format!("ip route add {CLIENT}/32 via {NODE_A}"))?;
    }
    let client = add_client(&ul)?;
    client.sh(&format!("ip route add 10.0.0.0/24 via {}", entry.node()))?;
    let entry_ns = if entry == Entry::Elsewhere { &a } else { &b };
    let (ip, echo_port) = if nft {
        let ruleset = format!(
            "table ip mesh {{\n\
             \x20 chain pre {{\n    type nat hook prerouting priority -100;\n\
             \x20   ip daddr {addr} tcp dport {PUBLISHED} dnat to {TASK}:{TARGET}\n\
             \x20   ip daddr {addr} tcp dport {IPERF} dnat to {TASK}:{IPERF}\n  }}\n\
             \x20 chain post {{\n    type nat hook postrouting priority 100;\n    ct status dnat masquerade\n  }}\n}}\n",
            addr = entry.node()
        );
        entry_ns.sh(&format!("nft -f - <<'EOF'\n{ruleset}EOF")).context("loading the nftables rules")?;
        (entry.node().to_string(), PUBLISHED)
    } else {
        (TASK.to_string(), TARGET)
    };
    let procs = servers(&task.name)?;
    Ok(Rig {
        client: client.name.clone(),
        backend: task.name.clone(),
        ip,
        echo_port,
        iperf_port: IPERF,
        _keep: Box::new((procs, client, task, b, a, ul)),
    })
}

fn build(entry: Entry, path: Path) -> Result<Rig> {
    let rig = match path {
        Path::Direct => routed(entry, false)?,
        Path::Nft => routed(entry, true)?,
        Path::OursTc => ours(entry, "tc")?,
        Path::OursXdp => ours(entry, "xdp")?,
    };
    // Ready when one exchange goes through (tcpx retries the connect for 5 s).
    exec(&rig.client, &format!("{} send {} {} 1000", tcpx_bin().display(), rig.ip, rig.echo_port))
        .context("a first exchange through the rig")?;
    Ok(rig)
}

#[derive(Clone, Copy, Default)]
struct Sample {
    cps: f64,
    rr: f64,
    p50_us: f64,
    p99_us: f64,
    gbps: f64,
    /// "no balancing" only: TCP throughput again with both senders' checksum offload off, the
    /// reference of the XDP rows.
    gbps_csum_off: f64,
}

fn cps(rig: &Rig, secs: f64) -> Result<f64> {
    let bin = tcpx_bin().with_file_name("cps");
    let out = exec(&rig.client, &format!("{} {} {} {secs}", bin.display(), rig.ip, rig.echo_port))?;
    let v: Vec<&str> = out.split_whitespace().collect();
    if v.first() != Some(&"cps") || v.get(3) != Some(&"0") {
        bail!("cps to {}:{}: {out}", rig.ip, rig.echo_port);
    }
    v[1].parse().context("cps output")
}

/// Rate, p50 and p99 (us) of 1-byte request/response on one connection.
fn rr(rig: &Rig, secs: u32) -> Result<(f64, f64, f64)> {
    let out = exec(&rig.client, &format!("{} rr {} {} {secs}", tcpx_bin().display(), rig.ip, rig.echo_port))?;
    let f: Vec<&str> = out.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
    match (f.first(), num(1), num(3), num(5)) {
        (Some(&"rr"), Some(n), Some(p50), Some(p99)) => Ok((n / secs as f64, p50, p99)),
        _ => bail!("rr output: {out}"),
    }
}

fn iperf(rig: &Rig, secs: u32) -> Result<f64> {
    let out = exec(&rig.client, &format!("iperf3 -c {} -p {} -t {secs} -J", rig.ip, rig.iperf_port))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 output")?;
    v["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e9).context("iperf3: no received rate")
}

/// How long each measurement runs, in seconds.
#[derive(Clone, Copy)]
struct Secs {
    cps: u32,
    rr: u32,
    iperf: u32,
}

fn measure(rig: &Rig, path: Path, secs: Secs) -> Result<Sample> {
    // The connection rate first: the one figure the others' leftovers could disturb.
    let cps = cps(rig, secs.cps as f64)?;
    let (rr, p50_us, p99_us) = rr(rig, secs.rr)?;
    let gbps = iperf(rig, secs.iperf)?;
    let mut s = Sample { cps, rr, p50_us, p99_us, gbps, gbps_csum_off: 0.0 };
    if path == Path::Direct {
        exec(&rig.client, "ethtool -K eth0 tx off >/dev/null")?;
        exec(&rig.backend, "ethtool -K eth0 tx off >/dev/null")?;
        s.gbps_csum_off = iperf(rig, secs.iperf)?;
    }
    Ok(s)
}

/// The peer address of the task's established echo connection while the client holds one open
/// through the rig: who the task thinks called.
fn peer_seen(rig: &Rig) -> Result<String> {
    let _hold = Proc(spawn_in(
        &rig.client,
        &format!("{} send {} {} 1000 3", tcpx_bin().display(), rig.ip, rig.echo_port),
        null()?,
    )?);
    let mut peer = String::new();
    wait_for(Duration::from_secs(3), || {
        let out = exec(&rig.backend, &format!("ss -Htn state established '( sport = :{TARGET} )'")).unwrap_or_default();
        // "Recv-Q Send-Q Local:Port Peer:Port" (no state column with a state filter).
        match out.lines().next().and_then(|l| l.split_whitespace().last()).and_then(|p| p.rsplit_once(':')) {
            Some((ip, _)) => {
                peer = ip.to_string();
                true
            }
            None => false,
        }
    });
    if peer.is_empty() {
        bail!("no established connection seen on the task");
    }
    Ok(peer)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(report: &mut Report, opts: &super::Opts) -> Result<()> {
    let (rounds, secs) =
        if opts.quick { (1, Secs { cps: 1, rr: 1, iperf: 1 }) } else { (3, Secs { cps: 3, rr: 3, iperf: 2 }) };
    let entries = [Entry::Elsewhere, Entry::Local];
    // samples[entry][path]
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); PATHS.len()]; entries.len()];
    let mut peers: Vec<Vec<String>> = vec![vec![String::new(); PATHS.len()]; entries.len()];
    for round in 0..rounds {
        for k in 0..entries.len() {
            let ei = (k + round) % entries.len();
            let entry = entries[ei];
            for j in 0..PATHS.len() {
                let pi = (j + round) % PATHS.len();
                let path = PATHS[pi];
                let what = format!("{}, {}, round {}", entry.label(), path.label(), round + 1);
                eprintln!("bench: mesh: {what}");
                let rig = build(entry, path).with_context(|| format!("building {what}"))?;
                let s = measure(&rig, path, secs).with_context(|| format!("measuring {what}"))?;
                if round == 0 {
                    peers[ei][pi] = peer_seen(&rig).with_context(|| format!("peer address, {what}"))?;
                }
                samples[ei][pi].push(s);
                drop(rig);
                // The kernel tears namespaces down in the background: let it finish before the
                // next rig is measured, whichever path that is.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    let how = format!("median of {rounds} interleaved rounds, fresh namespaces for each");
    for (ei, entry) in entries.iter().enumerate() {
        let e = entry.label();
        let m: Vec<Sample> = (0..PATHS.len())
            .map(|pi| {
                let pick = |f: fn(&Sample) -> f64| median(&mut samples[ei][pi].iter().map(f).collect::<Vec<_>>());
                Sample {
                    cps: pick(|s| s.cps),
                    rr: pick(|s| s.rr),
                    p50_us: pick(|s| s.p50_us),
                    p99_us: pick(|s| s.p99_us),
                    gbps: pick(|s| s.gbps),
                    gbps_csum_off: pick(|s| s.gbps_csum_off),
                }
            })
            .collect();
        let nft = m[1];
        // Each round's figure, in the order measured: the spread tells how far to trust a median.
        let each = |pi: usize, f: fn(&Sample) -> f64| {
            let v: Vec<String> = samples[ei][pi].iter().map(|s| fmt_value(f(s))).collect();
            format!("; rounds: {}", v.join(" / "))
        };
        let note = |path: Path, extra: String| {
            let mut n = how.clone();
            if path == Path::OursXdp {
                n += "; client's and task's veths with tx checksum offload off (as a NIC sender)";
            }
            if !peers[ei][path as usize].is_empty() {
                n += &format!("; the task saw the client as {}", peers[ei][path as usize]);
            }
            n + &extra
        };
        let name = |metric: &str, path: Path| format!("{e}: {metric}, {}", path.label());
        let vs_nft = |x: f64, y: f64| format!("; {:.2}x nftables", x / y.max(1e-9));
        // Connections per second.
        let direct = name("connections/s", Path::Direct);
        for (pi, &path) in PATHS.iter().enumerate() {
            let reference = (path != Path::Direct).then_some(direct.as_str());
            let extra =
                if matches!(path, Path::OursTc | Path::OursXdp) { vs_nft(m[pi].cps, nft.cps) } else { String::new() };
            report.add(
                SECTION,
                &name("connections/s", path),
                m[pi].cps,
                "conn/s",
                reference,
                &note(
                    path,
                    format!(
                        "; {} s of sequential connections, 1-byte echo each (cps){extra}{}",
                        secs.cps,
                        each(pi, |s| s.cps)
                    ),
                ),
            );
        }
        // Request/response rate and latency on one connection.
        let direct_rr = name("req/resp per s", Path::Direct);
        let direct_p99 = name("req/resp p99", Path::Direct);
        for (pi, &path) in PATHS.iter().enumerate() {
            let reference = (path != Path::Direct).then_some(direct_rr.as_str());
            let extra =
                if matches!(path, Path::OursTc | Path::OursXdp) { vs_nft(m[pi].rr, nft.rr) } else { String::new() };
            report.add(
                SECTION,
                &name("req/resp per s", path),
                m[pi].rr,
                "req/s",
                reference,
                &format!(
                    "{} s on one connection, 1-byte request/response (tcpx rr); p50 {:.0} us{extra}{}",
                    secs.rr,
                    m[pi].p50_us,
                    each(pi, |s| s.rr)
                ),
            );
        }
        for (pi, &path) in PATHS.iter().enumerate() {
            let reference = (path != Path::Direct).then_some(direct_p99.as_str());
            report.add(
                SECTION,
                &name("req/resp p99", path),
                m[pi].p99_us,
                "us",
                reference,
                &format!(
                    "p99 of the per-request latencies of the same rounds (lower is better){}",
                    each(pi, |s| s.p99_us)
                ),
            );
        }
        // TCP throughput.
        let direct_tp = name("TCP throughput", Path::Direct);
        let direct_tp_off = format!("{e}: TCP throughput, no balancing, senders' checksum offload off");
        for (pi, &path) in PATHS.iter().enumerate() {
            let reference = match path {
                Path::Direct => None,
                Path::OursXdp => Some(direct_tp_off.as_str()),
                _ => Some(direct_tp.as_str()),
            };
            if path == Path::OursXdp {
                report.add(
                    SECTION,
                    &direct_tp_off,
                    m[0].gbps_csum_off,
                    "Gbit/s",
                    None,
                    &format!(
                        "the no-balancing rig again with `ethtool -K eth0 tx off` on the client and the task \
                         (the XDP rows' senders){}",
                        each(0, |s| s.gbps_csum_off)
                    ),
                );
            }
            let extra = if path == Path::OursTc { vs_nft(m[pi].gbps, nft.gbps) } else { String::new() };
            report.add(
                SECTION,
                &name("TCP throughput", path),
                m[pi].gbps,
                "Gbit/s",
                reference,
                &note(
                    path,
                    format!("; iperf3, one stream, client to task, {} s{extra}{}", secs.iperf, each(pi, |s| s.gbps)),
                ),
            );
        }
        // Targets (ours: TC entry, what `--decap auto` picks on veth; XDP in the rows).
        let (tc, xdp, direct) = (m[2], m[3], m[0]);
        let x = tc.cps / nft.cps.max(1e-9);
        report.target(
            &format!("{e}: mesh connection rate (TC entry) vs nftables DNAT + masquerade"),
            ">= 2x (the rig's ceiling: no NAT at all is ~1.2x nftables)",
            format!("{x:.2}x (XDP entry: {:.2}x)", xdp.cps / nft.cps.max(1e-9)),
            x >= 2.0,
        );
        let y = tc.cps / direct.cps.max(1e-9);
        report.target(
            &format!("{e}: mesh connection rate (TC entry) vs no balancing"),
            ">= 0.97x",
            format!("{y:.2}x (XDP entry: {:.2}x)", xdp.cps / direct.cps.max(1e-9)),
            y >= 0.97,
        );
        let z = tc.gbps / nft.gbps.max(1e-9);
        report.target(
            &format!("{e}: mesh TCP throughput (TC entry) vs nftables"),
            ">= 1x",
            format!(
                "{z:.2}x (XDP entry vs no balancing with the same senders: {:.2}x)",
                xdp.gbps / direct.gbps_csum_off.max(1e-9)
            ),
            z >= 1.0,
        );
        let (ours_tc, ours_xdp, nft_peer) =
            (&peers[ei][Path::OursTc as usize], &peers[ei][Path::OursXdp as usize], &peers[ei][Path::Nft as usize]);
        report.target(
            &format!("{e}: the task sees the client's address"),
            &format!(
                "ours: {CLIENT}; nftables masquerade: the entry node's address (Docker's mesh: the ingress sandbox's)"
            ),
            format!("ours TC {ours_tc}, ours XDP {ours_xdp}; nftables {nft_peer}"),
            ours_tc == CLIENT && ours_xdp == CLIENT,
        );
    }
    Ok(())
}

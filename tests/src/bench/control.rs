//! Control plane: how long the agent takes to apply a large state (1,000 nodes, 10,000 remote
//! endpoints), how long a state-file change takes to reach the datapath (a new endpoint's
//! entry visible in the map the programs read), and what it costs in memory.

use std::{
    fmt::Write as _,
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use overlay_common::maps::{
    EndpointInfo, EndpointKey, ALL_MAPS, MAP_BACKENDS, MAP_CT, MAP_ENDPOINTS, MAP_LB_STATS, MAP_MAGLEV, MAP_RR,
    MAP_SERVICES,
};

use super::report::Report;
use crate::{overlay_bin, wait_for, Netns, Proc, RunDir};

const SECTION: &str = "Control plane and memory";
const VNI: u32 = 6000;

fn ep_ip(i: u32) -> [u8; 4] {
    [10, 64 + (i / 62500) as u8, ((i / 250) % 250) as u8, (i % 250 + 2) as u8]
}

fn state(nodes: u32, endpoints: u32, extra: u32) -> String {
    let mut s =
        String::from("[cluster]\nvxlan_port = 4789\n\n[[nodes]]\nname = \"n0\"\naddress = \"192.168.70.1\"\n\n");
    for n in 1..nodes {
        let _ = writeln!(s, "[[nodes]]\nname = \"n{n}\"\naddress = \"10.200.{}.{}\"\n", n / 250, n % 250 + 1);
    }
    s += "[[networks]]\nname = \"big\"\nvni = 6000\nsubnet = \"10.64.0.0/12\"\n\n";
    for i in 0..endpoints + extra {
        let ip = ep_ip(i);
        let _ = writeln!(
            s,
            "[[endpoints]]\nname = \"e{i}\"\nnetwork = \"big\"\nnode = \"n{}\"\nip = \"{}.{}.{}.{}\"\n",
            1 + i % (nodes - 1),
            ip[0],
            ip[1],
            ip[2],
            ip[3]
        );
    }
    s
}

fn write_atomic(path: &std::path::Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

fn memlock_bytes(maps_dir: &std::path::Path, names: &[&str]) -> Result<f64> {
    let mut total = 0.0;
    for name in names {
        let m = MapData::from_pin(maps_dir.join(name))?;
        let fd = m.fd().as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
        let v: f64 = info
            .lines()
            .find(|l| l.starts_with("memlock:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0);
        total += v;
    }
    Ok(total)
}

fn log_ms(log: &str, msg: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(msg))?;
    let at = line.find("ms=")?;
    line[at + 3..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

use std::os::fd::AsFd as _;

struct Measured {
    apply_ms: f64,
    startup_ms: f64,
    change_ms: Vec<f64>,
    rss_mib: f64,
    map_mib: f64,
}

/// An agent started on a state file in a namespace of its own, once it has applied it.
struct Running {
    run_dir: RunDir,
    _node: Netns,
    agent: Proc,
    pid: u32,
    file: std::path::PathBuf,
    startup_ms: f64,
    apply_ms: f64,
}

fn start(text: &str) -> Result<Running> {
    let run_dir = RunDir::new()?;
    let node = Netns::new("cp")?;
    node.sh("ip link add ul0 type veth peer name ul1 && ip link set ul1 up && ip addr add 192.168.70.1/24 dev ul0 && ip link set ul0 up")?;
    let file = run_dir.path.join("state.toml");
    write_atomic(&file, text)?;
    let log = run_dir.path.join("agent.log");
    let f = std::fs::File::create(&log)?;

    let t0 = Instant::now();
    let child: Child = Command::new("ip")
        .args(["netns", "exec", &node.name, overlay_bin().to_str().unwrap_or("overlay")])
        .args(["run", "--state"])
        .arg(&file)
        .args(["--node", "n0", "--run-dir"])
        .arg(&run_dir.path)
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()?;
    let pid = child.id();
    let agent = Proc(child);
    let want = overlay::agent::state_hash(text);
    let applied = |rd: &RunDir| -> Option<String> {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(rd.path.join("nodes/n0/applied.json")).ok()?).ok()?;
        v["state_hash"].as_str().map(str::to_string)
    };
    if !wait_for(Duration::from_secs(120), || applied(&run_dir).as_deref() == Some(want.as_str())) {
        bail!("the agent did not apply the state:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    let startup_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let apply_ms = log_ms(&std::fs::read_to_string(&log)?, "state applied").unwrap_or(f64::NAN);
    Ok(Running { run_dir, _node: node, agent, pid, file, startup_ms, apply_ms })
}

/// Start an agent on a state of `nodes` nodes and `endpoints` remote endpoints, then make
/// `samples` changes (one endpoint more each) and time each until the map holds it.
fn measure(nodes: u32, endpoints: u32, samples: u32) -> Result<Measured> {
    let r = start(&state(nodes, endpoints, 0))?;
    let (run_dir, file, pid) = (&r.run_dir, &r.file, r.pid);

    // A change: one more endpoint, then poll the map the datapath reads.
    let maps_dir = run_dir.path.join("bpffs/n0/maps");
    let map = Map::HashMap(MapData::from_pin(maps_dir.join(MAP_ENDPOINTS)).context("pinned endpoints map")?);
    let endpoints_map = BpfHashMap::<_, EndpointKey, EndpointInfo>::try_from(&map)?;
    let mut change_ms = Vec::new();
    for k in 1..=samples {
        let key = EndpointKey { vni: VNI, ip: u32::from_ne_bytes(ep_ip(endpoints + k - 1)) };
        let text = state(nodes, endpoints, k);
        let t = Instant::now();
        write_atomic(file, &text)?;
        let seen = super::until_in_map(&endpoints_map, &key, t);
        let Some(d) = seen else { bail!("change {k} never reached the datapath") };
        change_ms.push(d.as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(300));
    }
    change_ms.sort_by(|a, b| a.total_cmp(b));
    let m = Measured {
        apply_ms: r.apply_ms,
        startup_ms: r.startup_ms,
        change_ms,
        rss_mib: rss_kib(pid) / 1024.0,
        map_mib: memlock_bytes(&maps_dir, &ALL_MAPS)? / (1024.0 * 1024.0),
    };
    drop(r.agent);
    Ok(m)
}

/// `services` services of `backends` backends each (backends on other nodes): the state the
/// issue sizes the datapath for, written with inline tables as a generator would.
fn services_state(services: u32, backends: u32) -> String {
    let mut s = String::from("endpoints = [\n");
    for i in 0..services * backends {
        let ip = ep_ip(i);
        let _ = writeln!(
            s,
            "{{name=\"e{i}\",network=\"big\",node=\"n{}\",ip=\"{}.{}.{}.{}\"}},",
            1 + i % 100,
            ip[0],
            ip[1],
            ip[2],
            ip[3]
        );
    }
    s += "]\nservices = [\n";
    for v in 0..services {
        let b: Vec<String> = (0..backends).map(|j| format!("{{endpoint=\"e{}\"}}", v * backends + j)).collect();
        let _ = writeln!(
            s,
            "{{name=\"s{v}\",vips=[{{network=\"big\",ip=\"10.78.{}.{}\"}}],ports=[{{protocol=\"tcp\",target=80}}],backends=[{}]}},",
            v / 250,
            v % 250 + 1,
            b.join(",")
        );
    }
    s += "]\n[cluster]\nmaglev_slots_per_backend = 100\n\n";
    s += "[[nodes]]\nname = \"n0\"\naddress = \"192.168.70.1\"\n\n";
    // Backends spread over 100 other nodes, as tasks are (a node holds at most 4,096).
    for n in 1..=100 {
        let _ = writeln!(s, "[[nodes]]\nname = \"n{n}\"\naddress = \"10.200.0.{n}\"\n");
    }
    s += "[[networks]]\nname = \"big\"\nvni = 6000\nsubnet = \"10.64.0.0/12\"\n";
    s
}

/// Apply time and memory of a large service state.
fn measure_services(report: &mut Report, services: u32, backends: u32) -> Result<()> {
    let text = services_state(services, backends);
    let r = start(&text)?;
    let maps_dir = r.run_dir.path.join("bpffs/n0/maps");
    let lb = [MAP_SERVICES, MAP_BACKENDS, MAP_MAGLEV, MAP_CT, MAP_RR, MAP_LB_STATS];
    let what = format!("{services} services x {backends} backends");
    report.add(
        SECTION,
        &format!("apply {what} (reconcile)"),
        r.apply_ms,
        "ms",
        None,
        &format!("from the agent's log; a {:.1} MB state file, 100 slots a backend", text.len() as f64 / 1e6),
    );
    report.add(SECTION, &format!("agent start to state applied, {what}"), r.startup_ms, "ms", None, "wall clock");
    report.add(
        SECTION,
        &format!("agent resident memory, {what}"),
        rss_kib(r.pid) / 1024.0,
        "MiB",
        None,
        "VmRSS after applying",
    );
    let mut each = Vec::new();
    for name in lb {
        each.push(format!("{name} {:.1}", memlock_bytes(&maps_dir, &[name])? / (1024.0 * 1024.0)));
    }
    report.add(
        SECTION,
        "BPF map memory of the balancer",
        memlock_bytes(&maps_dir, &lb)? / (1024.0 * 1024.0),
        "MiB",
        None,
        &format!("memlock with this state, MiB: {}", each.join(", ")),
    );
    report.target(&format!("applying {what}"), "measured (no target set)", format!("{:.0} ms", r.apply_ms), true);
    drop(r.agent);
    Ok(())
}

pub fn run(report: &mut Report, opts: &super::Opts) -> Result<()> {
    let quick = opts.quick;
    let samples = if quick { 3 } else { 10 };
    let big = measure(1000, 10_000, samples)?;
    let small = measure(10, 100, samples)?;
    let median = |v: &Vec<f64>| v[v.len() / 2];
    report.add(
        SECTION,
        "apply 1,000 nodes + 10,000 endpoints (reconcile)",
        big.apply_ms,
        "ms",
        None,
        "from the agent's log",
    );
    report.add(
        SECTION,
        "agent start to state applied, 10,000 endpoints",
        big.startup_ms,
        "ms",
        None,
        "load, verify, attach, apply; wall clock",
    );
    report.add(
        SECTION,
        "state-file change to datapath, 10,000-endpoint file (median)",
        median(&big.change_ms),
        "ms",
        None,
        &format!(
            "{samples} changes; max {:.1} ms; file read, parse of changed tables, validation of all",
            big.change_ms[big.change_ms.len() - 1]
        ),
    );
    report.add(
        SECTION,
        "state-file change to datapath, 100-endpoint file (median)",
        median(&small.change_ms),
        "ms",
        None,
        &format!("{samples} changes; max {:.1} ms", small.change_ms[small.change_ms.len() - 1]),
    );
    report.add(SECTION, "agent resident memory, 10,000 endpoints", big.rss_mib, "MiB", None, "VmRSS after applying");
    report.add(SECTION, "agent resident memory, 100 endpoints", small.rss_mib, "MiB", None, "VmRSS after applying");
    report.add(
        SECTION,
        "BPF map memory",
        big.map_mib,
        "MiB",
        None,
        "memlock of all maps, fixed sizes: 131,072 endpoints, and the balancer's (below)",
    );
    if quick {
        measure_services(report, 1_000, 10)?;
    } else {
        measure_services(report, 10_000, 10)?;
    }
    report.target("applying 10,000 endpoints", "< 1000 ms", format!("{:.0} ms", big.apply_ms), big.apply_ms < 1000.0);
    let m = median(&big.change_ms);
    report.target(
        "state change reaching the datapath (10,000-endpoint file)",
        "< 10 ms",
        format!("{m:.1} ms"),
        m < 10.0,
    );
    let m = median(&small.change_ms);
    report.target("state change reaching the datapath (100-endpoint file)", "< 10 ms", format!("{m:.1} ms"), m < 10.0);
    Ok(())
}

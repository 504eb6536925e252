//! The cluster state in etcd: how long `overlay state push` of a large state takes, how long a
//! one-endpoint change written to the store takes to be applied by every watching agent (3 real
//! agents, then the same 3 with 50 dry-run agents more), the same change through a state file
//! for comparison, and what the agents and etcd hold in memory.
//!
//! Every case builds its own namespaces: etcd's (a bridge, 192.168.71.250/24), one per real
//! agent (a veth `ul0` into that bridge holding the node's address); the dry-run agents and the
//! writer run in etcd's namespace. Times of a store change run from the writer's clock just
//! before its put is sent to the latest `state change applied` timestamp in the agents' logs
//! (all processes read the same clock).

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use overlay_common::maps::{EndpointInfo, EndpointKey, MAP_ENDPOINTS};

use super::report::Report;
use crate::{cleanup::track, etcd::Etcd, overlay_bin, spawn_in, wait_for, Netns, Proc, RunDir};

const SECTION: &str = "store";
const PREFIX: &str = "/bench";
const VNI: u32 = 6000;
const NODES: u32 = 1000;
const ENDPOINTS: u32 = 10_000;
/// Agents run on nodes without endpoints (node-0..node-99); endpoints are on node-100 and up,
/// so every agent holds all 10,000 as remote endpoints.
const FIRST_EP_NODE: u32 = 100;
const REAL_AGENTS: u32 = 3;
const DRY_AGENTS: u32 = 50;
const ETCD_ADDRESS: &str = "192.168.71.250";
/// Changes start this far apart (or later, once every agent applied the previous one).
const SPACING: Duration = Duration::from_millis(250);

fn storewrite_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/storewrite")
}

/// node-0..node-2 are on the bench's bridge; the others are only names and addresses.
fn node_address(n: u32) -> String {
    if n < REAL_AGENTS {
        format!("192.168.71.{}", n + 1)
    } else {
        format!("10.200.{}.{}", n / 250, n % 250 + 1)
    }
}

fn ep_ip(i: u32) -> [u8; 4] {
    [10, 64 + (i / 62500) as u8, ((i / 250) % 250) as u8, (i % 250 + 2) as u8]
}

/// Endpoint `i`'s table, as in the state file and as the value of its key in the store.
fn endpoint(i: u32) -> String {
    let ip = ep_ip(i);
    format!(
        "[[endpoints]]\nname = \"e{i}\"\nnetwork = \"big\"\nnode = \"node-{}\"\nip = \"{}.{}.{}.{}\"\n",
        FIRST_EP_NODE + i % (NODES - FIRST_EP_NODE),
        ip[0],
        ip[1],
        ip[2],
        ip[3]
    )
}

/// 1,000 nodes, one network, `endpoints` endpoints.
fn state(endpoints: u32) -> String {
    let mut s = String::from("[cluster]\nvxlan_port = 4789\n\n");
    for n in 0..NODES {
        let _ = writeln!(s, "[[nodes]]\nname = \"node-{n}\"\naddress = \"{}\"\n", node_address(n));
    }
    s += "[[networks]]\nname = \"big\"\nvni = 6000\nsubnet = \"10.64.0.0/12\"\n\n";
    for i in 0..endpoints {
        s += &endpoint(i);
        s += "\n";
    }
    s
}

fn now_us() -> Result<i64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as i64)
}

/// Microseconds since the epoch of a log line's leading RFC 3339 UTC timestamp
/// (`2026-12-03T08:37:19.506332Z  INFO ...`).
fn line_time_us(line: &str) -> Option<i64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
    let us: i64 = frac.parse().ok()?;
    // Days from 1970-01-01 (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60 * 1_000_000 + ss * 1_000_000 + us)
}

/// The `state change applied` line for `revision` in the log at `log`: its timestamp, and the
/// `us=` field the dry-run agents log (the map diff's own time).
fn applied_at(log: &Path, revision: &str) -> Option<(i64, Option<f64>)> {
    let text = std::fs::read_to_string(log).ok()?;
    let needle = format!("revision=\"{revision}\"");
    let line = text.lines().find(|l| l.contains("state change applied") && l.contains(&needle))?;
    let us = line.split_whitespace().find_map(|w| w.strip_prefix("us=")?.parse().ok());
    Some((line_time_us(line)?, us))
}

/// CPU time (user + system) a process has used so far, ms.
fn cpu_ms(pid: u32) -> f64 {
    // SAFETY: sysconf reads a constant of the system; no memory is involved.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let field = |i: usize| rest.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (field(14) + field(15)) * 1000.0 / hz
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// A process of the bench: its pid (the command's own: `spawn_in` execs it) and its log.
struct Agent {
    _proc: Proc,
    pid: u32,
    log: PathBuf,
}

/// `storewrite` in etcd's namespace, connected.
struct Writer {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _proc: Proc,
}

impl Writer {
    fn start(ns: &str, url: &str, log: &Path) -> Result<Self> {
        let bin = storewrite_bin();
        if !bin.exists() {
            bail!("{} is missing: cargo build --release -p overlay-tests", bin.display());
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&bin)
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()?;
        track(&child);
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("storewrite without pipes");
        };
        let mut w = Self { stdin, stdout: BufReader::new(stdout), _proc: Proc(child) };
        let line = w.line()?;
        if line != "ready" {
            bail!("storewrite: {line:?}; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        Ok(w)
    }

    fn line(&mut self) -> Result<String> {
        let mut s = String::new();
        if self.stdout.read_line(&mut s)? == 0 {
            bail!("storewrite exited");
        }
        Ok(s.trim().to_string())
    }

    /// Puts `file`'s content under `key`: (unix µs just before sending, revision, the put's
    /// round trip in µs).
    fn put(&mut self, key: &str, file: &Path) -> Result<(i64, i64, f64)> {
        writeln!(self.stdin, "{key} {}", file.display())?;
        self.stdin.flush()?;
        let line = self.line()?;
        let mut w = line.split_whitespace();
        let parsed = (|| Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?, w.next()?.parse().ok()?)))();
        parsed.with_context(|| format!("storewrite answered {line:?}"))
    }
}

/// etcd in a namespace of its own, the real agents' namespaces bridged to it, the state pushed,
/// the agents started on it and done applying it. Fields drop in order: processes first.
struct Bed {
    writer: Writer,
    real: Vec<Agent>,
    dry: Vec<Agent>,
    etcd: Etcd,
    _nodes: Vec<Netns>,
    _etcd_ns: Netns,
    run_dir: RunDir,
    push_ms: f64,
    push_out: String,
}

fn bed(dry_agents: u32) -> Result<Bed> {
    let run_dir = RunDir::new()?;
    let logs = run_dir.path.join("logs");
    std::fs::create_dir_all(&logs)?;
    let etcd_ns = Netns::new("etcd")?;
    etcd_ns
        .sh(&format!("ip link add br0 type bridge && ip addr add {ETCD_ADDRESS}/24 dev br0 && ip link set br0 up"))?;
    let mut nodes = Vec::new();
    for i in 0..REAL_AGENTS {
        let ns = Netns::new(&format!("st{i}"))?;
        etcd_ns.sh(&format!(
            "ip link add p{i} type veth peer name ul0 netns {} && ip link set p{i} master br0 && ip link set p{i} up",
            ns.name
        ))?;
        ns.sh(&format!("ip addr add {}/24 dev ul0 && ip link set ul0 up", node_address(i)))?;
        nodes.push(ns);
    }
    let etcd = Etcd::start(&etcd_ns.name, ETCD_ADDRESS, &run_dir.path.join("etcd"))?;

    // The push: validation and one transaction, timed around the command (its start included).
    let file = run_dir.path.join("state.toml");
    std::fs::write(&file, state(ENDPOINTS))?;
    let t = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &etcd_ns.name])
        .arg(overlay_bin())
        .args(["state", "push", "--state"])
        .arg(&file)
        .args(["--store", &etcd.local_url(PREFIX)])
        .output()?;
    let push_ms = t.elapsed().as_secs_f64() * 1000.0;
    let push_out = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !push_out.starts_with("pushed: ") {
        bail!("push failed: {push_out}{}", String::from_utf8_lossy(&out.stderr));
    }
    let rev: i64 = push_out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("etcd:")?.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .with_context(|| format!("no revision in {push_out:?}"))?;

    let mut real = Vec::new();
    for (i, ns) in nodes.iter().enumerate() {
        let log = logs.join(format!("node-{i}.log"));
        let cmd = format!(
            "{} run --store {} --node node-{i} --run-dir {}",
            overlay_bin().display(),
            etcd.url(PREFIX),
            run_dir.path.display()
        );
        let child = spawn_in(&ns.name, &cmd, std::fs::File::create(&log)?)?;
        real.push(Agent { pid: child.id(), _proc: Proc(child), log });
    }
    let mut dry = Vec::new();
    for j in 0..dry_agents {
        let node = REAL_AGENTS + j;
        let log = logs.join(format!("dry-{node}.log"));
        let cmd =
            format!("{} run --dry-run --store {} --node node-{node}", overlay_bin().display(), etcd.local_url(PREFIX));
        let child = spawn_in(&etcd_ns.name, &cmd, std::fs::File::create(&log)?)?;
        dry.push(Agent { pid: child.id(), _proc: Proc(child), log });
    }
    // The real agents record the revision they applied; the dry-run ones log it.
    let applied = |node: usize| -> Option<i64> {
        let p = run_dir.path.join(format!("nodes/node-{node}/applied.json"));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        v["state_hash"].as_str()?.strip_prefix("etcd:")?.parse().ok()
    };
    let up = wait_for(Duration::from_secs(300), || {
        (0..real.len()).all(|i| applied(i).is_some_and(|r| r >= rev))
            && dry.iter().all(|a| std::fs::read_to_string(&a.log).is_ok_and(|l| l.contains("state applied (dry run)")))
    });
    if !up {
        let mut msg = String::new();
        for a in real.iter().chain(&dry) {
            let log = std::fs::read_to_string(&a.log).unwrap_or_default();
            if !log.contains("state applied") {
                let _ = writeln!(msg, "{}:\n{log}", a.log.display());
            }
        }
        bail!("the agents did not apply the pushed state (etcd:{rev}):\n{msg}");
    }
    let writer = Writer::start(&etcd_ns.name, &etcd.local_url(PREFIX), &logs.join("storewrite.log"))?;
    Ok(Bed { writer, real, dry, etcd, _nodes: nodes, _etcd_ns: etcd_ns, run_dir, push_ms, push_out })
}

/// One change seen by every agent: ms until the last of all, until the first, and until the
/// last real agent; the dry-run agents' own diff times (µs).
struct Change {
    all_ms: f64,
    first_ms: f64,
    real_ms: f64,
    dry_diff_us: Vec<f64>,
    /// The put's round trip as the writer saw it (commit included).
    put_ms: f64,
}

/// `samples` changes, each one new endpoint written with one put; each timed until every
/// agent logged it applied.
fn changes(b: &mut Bed, samples: u32) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    for k in 0..samples {
        let i = ENDPOINTS + k;
        let file = b.run_dir.path.join(format!("change-{k}.toml"));
        std::fs::write(&file, endpoint(i))?;
        let started = Instant::now();
        let (t_us, rev, put_us) = b.writer.put(&format!("{PREFIX}/endpoints/e{i}"), &file)?;
        let revision = format!("etcd:{rev}");
        let agents: Vec<&Agent> = b.real.iter().chain(&b.dry).collect();
        let mut at: Vec<Option<(i64, Option<f64>)>> = vec![None; agents.len()];
        loop {
            for (a, seen) in agents.iter().zip(at.iter_mut()) {
                if seen.is_none() {
                    *seen = applied_at(&a.log, &revision);
                }
            }
            if at.iter().all(Option::is_some) {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let missing: Vec<String> = agents
                    .iter()
                    .zip(&at)
                    .filter(|(_, s)| s.is_none())
                    .map(|(a, _)| a.log.display().to_string())
                    .collect();
                bail!("change {k} ({revision}) not applied within 60 s by: {}", missing.join(", "));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let at: Vec<(i64, Option<f64>)> = at.into_iter().flatten().collect();
        let ms = |t: Option<i64>| (t.unwrap_or(t_us) - t_us) as f64 / 1000.0;
        out.push(Change {
            all_ms: ms(at.iter().map(|a| a.0).max()),
            first_ms: ms(at.iter().map(|a| a.0).min()),
            real_ms: ms(at[..b.real.len()].iter().map(|a| a.0).max()),
            dry_diff_us: at[b.real.len()..].iter().filter_map(|a| a.1).collect(),
            put_ms: put_us / 1000.0,
        });
        let next = (started + SPACING).max(Instant::now() + Duration::from_millis(50));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(out)
}

/// etcd's pid: the `etcd` process among those in its namespace.
fn etcd_pid(ns: &str) -> Result<u32> {
    let out = crate::run(Command::new("ip").args(["netns", "pids", ns]))?;
    out.split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "etcd"))
        .context("no etcd process in its namespace")
}

struct StoreMeasured {
    /// CPU time per change per agent over the changes (with the spacing's idle time).
    real_cpu_ms: f64,
    dry_cpu_ms: f64,
    push_ms: f64,
    push_out: String,
    changes: Vec<Change>,
    real_rss_mib: Vec<f64>,
    dry_rss_mib: Vec<f64>,
    etcd_rss_mib: f64,
}

fn measure_store(dry_agents: u32, samples: u32) -> Result<StoreMeasured> {
    let mut b = bed(dry_agents)?;
    let cpu = |v: &[Agent]| v.iter().map(|a| cpu_ms(a.pid)).sum::<f64>();
    let (real0, dry0) = (cpu(&b.real), cpu(&b.dry));
    let changes = changes(&mut b, samples)?;
    let per_change = |total: f64, n: usize| total / (samples as f64 * n.max(1) as f64);
    let m = StoreMeasured {
        real_cpu_ms: per_change(cpu(&b.real) - real0, b.real.len()),
        dry_cpu_ms: per_change(cpu(&b.dry) - dry0, b.dry.len()),
        push_ms: b.push_ms,
        push_out: b.push_out.clone(),
        changes,
        real_rss_mib: b.real.iter().map(|a| rss_kib(a.pid) / 1024.0).collect(),
        dry_rss_mib: b.dry.iter().map(|a| rss_kib(a.pid) / 1024.0).collect(),
        etcd_rss_mib: rss_kib(etcd_pid(&b.etcd.ns)?) / 1024.0,
    };
    drop(b);
    Ok(m)
}

struct FileMeasured {
    /// Until the agent's `state change applied` log line, as the store rows.
    log_ms: Vec<f64>,
    /// Until the endpoint's entry shows in the pinned map (the control-plane section's way).
    map_ms: Vec<f64>,
}

/// The same change through a state file: one agent on the 10,000-endpoint file, one endpoint
/// more each time, the file renamed into place.
fn measure_file(samples: u32) -> Result<FileMeasured> {
    let run_dir = RunDir::new()?;
    let node = Netns::new("stfile")?;
    node.sh(&format!(
        "ip link add ul0 type veth peer name ul1 && ip link set ul1 up && ip addr add {}/24 dev ul0 && ip link set ul0 up",
        node_address(0)
    ))?;
    let file = run_dir.path.join("state.toml");
    let text = state(ENDPOINTS);
    overlay::fsutil::write_atomic(&file, text.as_bytes())?;
    let log = run_dir.path.join("agent.log");
    let cmd = format!(
        "{} run --state {} --node node-0 --run-dir {}",
        overlay_bin().display(),
        file.display(),
        run_dir.path.display()
    );
    let agent = Proc(spawn_in(&node.name, &cmd, std::fs::File::create(&log)?)?);
    let want = overlay::agent::state_hash(&text);
    let applied = || -> Option<String> {
        let p = run_dir.path.join("nodes/node-0/applied.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        v["state_hash"].as_str().map(str::to_string)
    };
    if !wait_for(Duration::from_secs(120), || applied().as_deref() == Some(want.as_str())) {
        bail!("the agent did not apply the state file:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    let map = Map::HashMap(
        MapData::from_pin(run_dir.path.join("bpffs/node-0/maps").join(MAP_ENDPOINTS))
            .context("pinned endpoints map")?,
    );
    let endpoints_map = BpfHashMap::<_, EndpointKey, EndpointInfo>::try_from(&map)?;
    let mut m = FileMeasured { log_ms: Vec::new(), map_ms: Vec::new() };
    for k in 1..=samples {
        let key = EndpointKey { vni: VNI, ip: u32::from_ne_bytes(ep_ip(ENDPOINTS + k - 1)) };
        let text = state(ENDPOINTS + k);
        let hash = overlay::agent::state_hash(&text);
        let t_us = now_us()?;
        let t = Instant::now();
        overlay::fsutil::write_atomic(&file, text.as_bytes())?;
        let seen = super::until_in_map(&endpoints_map, &key, t);
        let Some(d) = seen else { bail!("file change {k} never reached the map") };
        m.map_ms.push(d.as_secs_f64() * 1000.0);
        let mut logged = None;
        if !wait_for(Duration::from_secs(10), || {
            logged = applied_at(&log, &hash).map(|(t, _)| t);
            logged.is_some()
        }) {
            bail!("file change {k} not logged as applied:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        m.log_ms.push((logged.unwrap_or(t_us) - t_us) as f64 / 1000.0);
        std::thread::sleep(SPACING);
    }
    drop(agent);
    Ok(m)
}

pub fn run(report: &mut Report, opts: &super::Opts) -> Result<()> {
    let quick = opts.quick;
    let file_samples = if quick { 3 } else { 20 };
    let samples = if quick { 3 } else { 30 };
    let file = measure_file(file_samples)?;
    let three = measure_store(0, samples)?;
    let many = measure_store(DRY_AGENTS, samples)?;
    let all_agents = REAL_AGENTS + DRY_AGENTS;

    let keys = three.push_out.split_whitespace().nth(1).unwrap_or("?").to_string();
    report.add(
        SECTION,
        "push 1,000 nodes + 10,000 endpoints (overlay state push)",
        three.push_ms,
        "ms",
        None,
        &format!(
            "wall time of the command in etcd's namespace, process start included: validation, {keys} keys in one \
             transaction (`{}`); the second bed's push: {:.0} ms",
            three.push_out, many.push_ms
        ),
    );

    let file_row = "state-file change to the agent's map, 10,000-endpoint file (median)";
    report.add(
        SECTION,
        file_row,
        median(&file.log_ms),
        "ms",
        None,
        &format!(
            "1 agent, {file_samples} changes of one endpoint more, the file renamed into place; from just before the \
             write to the agent's `state change applied` log timestamp (logged after the maps were written), as the \
             store rows; max {:.1} ms. Polling the pinned map (the control-plane section's way) saw the entry after \
             median {:.1} ms, max {:.1} ms",
            max(&file.log_ms),
            median(&file.map_ms),
            max(&file.map_ms)
        ),
    );

    let all3: Vec<f64> = three.changes.iter().map(|c| c.all_ms).collect();
    let row3 = format!("store change to every agent's map, {REAL_AGENTS} agents, 10,000 endpoints");
    report.add(
        SECTION,
        &format!("{row3} (median)"),
        median(&all3),
        "ms",
        Some(file_row),
        &format!(
            "{samples} changes, each one new endpoint key with one put (a connected writer in etcd's namespace), \
             {} ms apart or more; from the writer's clock just before the put to the latest of the {REAL_AGENTS} real \
             agents' `state change applied` log timestamps (maps written); agents in their own namespaces, over a \
             bridge to etcd (its data on the VM's ext4 disk); the put's own round trip (etcd commit): median {:.1} ms; \
             CPU used by an agent while the changes ran: {:.1} ms a change",
            SPACING.as_millis(),
            median(&three.changes.iter().map(|c| c.put_ms).collect::<Vec<_>>()),
            three.real_cpu_ms
        ),
    );
    report.add(SECTION, &format!("{row3} (max)"), max(&all3), "ms", None, &format!("of the same {samples} changes"));

    let all_many: Vec<f64> = many.changes.iter().map(|c| c.all_ms).collect();
    let real_many: Vec<f64> = many.changes.iter().map(|c| c.real_ms).collect();
    let first_many: Vec<f64> = many.changes.iter().map(|c| c.first_ms).collect();
    let dry_diff_us: Vec<f64> = many.changes.iter().flat_map(|c| c.dry_diff_us.iter().copied()).collect();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let row_many =
        format!("store change to every agent's map, {all_agents} agents ({REAL_AGENTS} + {DRY_AGENTS} dry-run), 10,000 endpoints");
    report.add(
        SECTION,
        &format!("{row_many} (median)"),
        median(&all_many),
        "ms",
        Some(file_row),
        &format!(
            "{samples} changes as above, until the last of all {all_agents} agents logged it applied; the \
             {DRY_AGENTS} fan-out agents run without a datapath (`overlay run --dry-run`: the same etcd watch, \
             per-key parse, whole-state validation and map diff, no map writes), all in etcd's namespace over \
             127.0.0.1, all {all_agents} on the same {cpus} cores. The first agent had it after median {:.1} ms; \
             the {REAL_AGENTS} real agents: median {:.1} ms, max {:.1} ms. CPU used while the changes ran, a change: \
             {:.1} ms per real agent, {:.1} ms per dry-run agent (of which computing and diffing the desired map \
             contents, their logged `us=`: median {:.1} ms)",
            median(&first_many),
            median(&real_many),
            max(&real_many),
            many.real_cpu_ms,
            many.dry_cpu_ms,
            median(&dry_diff_us) / 1000.0
        ),
    );
    report.add(
        SECTION,
        &format!("{row_many} (max)"),
        max(&all_many),
        "ms",
        None,
        &format!("of the same {samples} changes"),
    );

    report.add(
        SECTION,
        "agent resident memory on the store, 10,000 endpoints",
        median(&three.real_rss_mib),
        "MiB",
        None,
        &format!(
            "VmRSS of a real agent (`overlay run --store`) after the changes, median of {REAL_AGENTS}: {}",
            three.real_rss_mib.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(", ")
        ),
    );
    report.add(
        SECTION,
        "dry-run agent resident memory, 10,000 endpoints",
        median(&many.dry_rss_mib),
        "MiB",
        None,
        &format!(
            "VmRSS per `overlay run --dry-run` agent, median of {DRY_AGENTS}; min {:.1}, max {:.1}",
            many.dry_rss_mib.iter().copied().fold(f64::NAN, f64::min),
            max(&many.dry_rss_mib)
        ),
    );
    report.add(
        SECTION,
        "etcd resident memory, 1,000 nodes + 10,000 endpoints",
        three.etcd_rss_mib,
        "MiB",
        None,
        &format!(
            "VmRSS of etcd 3.4 ({keys} keys, {samples} changes, {REAL_AGENTS} watchers); with {all_agents} watchers: \
             {:.1} MiB",
            many.etcd_rss_mib
        ),
    );

    let m = median(&all3);
    report.target(
        &format!("store change reaching every agent's map (10,000 endpoints, {REAL_AGENTS} agents)"),
        "< 10 ms",
        format!("{m:.1} ms"),
        m < 10.0,
    );
    let m = median(&all_many);
    report.target(
        &format!(
            "store change reaching every agent's map (10,000 endpoints, {all_agents} agents, {DRY_AGENTS} of them dry-run)"
        ),
        "< 10 ms",
        format!("{m:.1} ms"),
        m < 10.0,
    );
    Ok(())
}

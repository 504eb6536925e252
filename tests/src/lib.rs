//! Test bed for the overlay: network namespaces that clean up after themselves, a private
//! bpffs per run, packet builders, and a cluster builder (underlay bridge, nodes, containers,
//! agents) shared by the end-to-end tests, the demo and the benchmarks.
//!
//! Everything is created inside namespaces named `ovt<pid>-…`; nothing is added to the root
//! network namespace. Namespaces are removed on drop, on SIGINT/SIGTERM, and (for runs that
//! were killed) by the next run, which removes those whose process is gone.

pub mod bed;
pub mod bench;
pub mod packet;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex, Once,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LIVE_MOUNTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static LIVE_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn track(child: &Child) {
    LIVE_PIDS.lock().unwrap().push(child.id());
}

fn untrack(child: &Child) {
    LIVE_PIDS.lock().unwrap().retain(|p| *p != child.id());
}
static INIT: Once = Once::new();

const PREFIX: &str = "ovt";

fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{PREFIX}{}-{n}-{tag}", std::process::id())
}

/// Remove what earlier, killed runs left behind, and clean up on SIGINT/SIGTERM.
fn init() {
    INIT.call_once(|| {
        if let Ok(rd) = std::fs::read_dir("/var/run/netns") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let Some(rest) = name.strip_prefix(PREFIX) else { continue };
                let pid: i32 = rest.split('-').next().and_then(|p| p.parse().ok()).unwrap_or(0);
                if pid > 0 && !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = Command::new("ip").args(["netns", "del", &name]).status();
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir("/run") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let Some(rest) = name.strip_prefix("overlay-test-") else { continue };
                let pid: i32 = rest.split('-').next().and_then(|p| p.parse().ok()).unwrap_or(0);
                if pid > 0 && !Path::new(&format!("/proc/{pid}")).exists() {
                    let p = e.path();
                    let _ = nix::mount::umount2(&p.join("bpffs"), nix::mount::MntFlags::MNT_DETACH);
                    let _ = std::fs::remove_dir_all(&p);
                }
            }
        }
        // SAFETY: the handler only calls async-signal-tolerant cleanup and exits; a test run
        // being interrupted is the only case it serves.
        unsafe {
            let h = nix::sys::signal::SigHandler::Handler(on_signal);
            let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGINT, h);
            let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGTERM, h);
        }
    });
}

extern "C" fn on_signal(_: i32) {
    cleanup_all();
    std::process::exit(130);
}

/// Remove every namespace and mount this process created (also used by the demo on exit).
pub fn cleanup_all() {
    if let Ok(mut pids) = LIVE_PIDS.try_lock() {
        for p in pids.drain(..) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
    if let Ok(mut live) = LIVE.try_lock() {
        for n in live.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &n]).status();
        }
    }
    if let Ok(mut m) = LIVE_MOUNTS.try_lock() {
        for p in m.drain(..) {
            let _ = nix::mount::umount2(&p.join("bpffs"), nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

/// `sh -c CMD` inside the namespace called `name`.
pub fn in_netns(name: &str, cmd: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", name, "sh", "-c", cmd]);
    c
}

/// Start `cmd` inside the namespace called `name` (exec'd, so the pid is the command's),
/// output to `log`; the process is killed by `cleanup_all` if the run is interrupted.
pub fn spawn_in(name: &str, cmd: &str, log: std::fs::File) -> Result<Child> {
    let child = in_netns(name, &format!("exec {cmd}")).stdout(log.try_clone()?).stderr(log).spawn()?;
    track(&child);
    Ok(child)
}

/// A network namespace, removed when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Self> {
        Self::create(&Self::unique_name(tag))
    }

    /// A name no namespace of this or any other run has, for one to be created later.
    pub fn unique_name(tag: &str) -> String {
        init();
        unique(tag)
    }

    pub fn create(name: &str) -> Result<Self> {
        init();
        let name = name.to_string();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        LIVE.lock().unwrap().push(name.clone());
        let ns = Self { name };
        ns.sh("ip link set lo up")?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Run a shell command inside; fail with its output if it fails.
    pub fn sh(&self, cmd: &str) -> Result<String> {
        run(&mut in_netns(&self.name, cmd))
    }

    /// Run a shell command inside; return whether it succeeded.
    pub fn ok(&self, cmd: &str) -> bool {
        Self::ok_in(&self.name, cmd)
    }

    /// Like `ok`, for a namespace known only by name.
    pub fn ok_in(name: &str, cmd: &str) -> bool {
        in_netns(name, cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let out = self.sh(&format!("cat /sys/class/net/{ifname}/ifindex"))?;
        out.trim().parse().with_context(|| format!("ifindex of {ifname}: {out}"))
    }

    pub fn spawn(&self, cmd: &str, log: &Path) -> Result<Child> {
        spawn_in(&self.name, cmd, std::fs::File::create(log)?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        LIVE.lock().unwrap().retain(|n| n != &self.name);
    }
}

pub fn run(c: &mut Command) -> Result<String> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// A run directory with its own bpffs (mounted in the host mount namespace so agents started
/// with `ip netns exec` share it and pins survive their restarts). Unmounted on drop.
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new() -> Result<Self> {
        init();
        let path = PathBuf::from(format!("/run/overlay-test-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst)));
        std::fs::create_dir_all(path.join("bpffs"))?;
        nix::mount::mount(Some("bpf"), &path.join("bpffs"), Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .context("mounting a bpffs")?;
        LIVE_MOUNTS.lock().unwrap().push(path.clone());
        Ok(Self { path })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path.join("bpffs"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.path);
        LIVE_MOUNTS.lock().unwrap().retain(|p| p != &self.path);
    }
}

/// The `overlay` binary built by `cargo xtask build`.
pub fn overlay_bin() -> PathBuf {
    if let Ok(p) = std::env::var("OVERLAY_BIN") {
        return p.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/overlay")
}

/// Poll `f` until it returns true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

// ---------------------------------------------------------------------------------------
// Cluster builder

#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub address: String,
    /// Runs our agent (false: a plain Linux vxlan + bridge node, as Docker builds it).
    pub ours: bool,
}

#[derive(Clone, Debug)]
pub struct NetSpec {
    pub name: String,
    pub vni: u32,
    pub subnet: String,
    pub prefix: u8,
    /// `mtu =` in the state file; `None`: the agent's default (underlay - 50).
    pub mtu: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct EpSpec {
    pub name: String,
    pub network: String,
    pub node: String,
    pub ip: String,
}

#[derive(Clone, Debug, Default)]
pub struct ClusterSpec {
    pub nodes: Vec<NodeSpec>,
    pub networks: Vec<NetSpec>,
    pub endpoints: Vec<EpSpec>,
    pub decap: Option<String>,
}

impl ClusterSpec {
    /// The reference cluster of the demo and the end-to-end tests: three nodes, two networks,
    /// containers of both networks on every node (web.1 and web.4 share node-a).
    pub fn three_nodes_two_networks() -> Self {
        Self::default()
            .node("node-a", "192.168.50.11")
            .node("node-b", "192.168.50.12")
            .node("node-c", "192.168.50.13")
            .network("app-net", 4097, "10.0.9.0/24")
            .network("db-net", 4098, "10.0.10.0/24")
            .endpoint("web.1", "app-net", "node-a", "10.0.9.3")
            .endpoint("web.2", "app-net", "node-b", "10.0.9.4")
            .endpoint("web.3", "app-net", "node-c", "10.0.9.5")
            .endpoint("web.4", "app-net", "node-a", "10.0.9.6")
            .endpoint("db.1", "db-net", "node-a", "10.0.10.3")
            .endpoint("db.2", "db-net", "node-b", "10.0.10.4")
            .endpoint("db.3", "db-net", "node-c", "10.0.10.5")
    }

    pub fn node(mut self, name: &str, address: &str) -> Self {
        self.nodes.push(NodeSpec { name: name.into(), address: address.into(), ours: true });
        self
    }
    pub fn kernel_node(mut self, name: &str, address: &str) -> Self {
        self.nodes.push(NodeSpec { name: name.into(), address: address.into(), ours: false });
        self
    }
    pub fn network(mut self, name: &str, vni: u32, subnet: &str) -> Self {
        let prefix = subnet.split('/').nth(1).and_then(|p| p.parse().ok()).unwrap_or(24);
        self.networks.push(NetSpec { name: name.into(), vni, subnet: subnet.into(), prefix, mtu: None });
        self
    }
    pub fn endpoint(mut self, name: &str, network: &str, node: &str, ip: &str) -> Self {
        self.endpoints.push(EpSpec { name: name.into(), network: network.into(), node: node.into(), ip: ip.into() });
        self
    }
}

/// Docker's MAC rule, as the agent applies it.
pub fn docker_mac(ip: &str) -> String {
    let o: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap_or(0)).collect();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// `tcpx`, the TCP echo pair built alongside the tests.
pub fn tcpx_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/tcpx")
}

/// A background process, killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        untrack(&self.0);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        untrack(&self.child);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running cluster: an underlay bridge in its own namespace, a namespace per node, one per
/// container, and an agent per node of ours.
pub struct Cluster {
    pub spec: ClusterSpec,
    pub run_dir: RunDir,
    pub state_file: PathBuf,
    pub underlay: Netns,
    pub nodes: BTreeMap<String, Netns>,
    pub containers: BTreeMap<String, Netns>,
    pub agents: BTreeMap<String, Agent>,
    pub servers: Vec<Proc>,
    pub logs: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Processes first: a namespace is not removed while something still runs in it.
        self.servers.clear();
        self.agents.clear();
    }
}

impl Cluster {
    /// Build the topology and start the agents; returns once every agent applied the state.
    pub fn up(spec: ClusterSpec) -> Result<Self> {
        let run_dir = RunDir::new()?;
        let logs = run_dir.path.join("logs");
        std::fs::create_dir_all(&logs)?;
        let underlay = Netns::new("ul")?;
        underlay.sh("ip link add br0 type bridge && ip link set br0 up")?;
        let mut nodes = BTreeMap::new();
        for (i, n) in spec.nodes.iter().enumerate() {
            let ns = Netns::new(&n.name)?;
            // One veth per node into the underlay bridge; "ul0" is the node's underlay NIC.
            let p = format!("n{i}");
            underlay.sh(&format!(
                "ip link add {p} type veth peer name ul0 && ip link set ul0 netns {} && ip link set {p} master br0 && ip link set {p} up",
                ns.name
            ))?;
            ns.sh(&format!("ip addr add {}/24 dev ul0 && ip link set ul0 up", n.address))?;
            nodes.insert(n.name.clone(), ns);
        }
        let mut containers = BTreeMap::new();
        for e in &spec.endpoints {
            containers.insert(e.name.clone(), Netns::new(&short(&e.name))?);
        }
        let state_file = run_dir.path.join("state.toml");
        let mut c = Self { spec, run_dir, state_file, underlay, nodes, containers, agents: BTreeMap::new(), servers: Vec::new(), logs };
        c.write_state(&c.render_state())?;
        for n in c.spec.nodes.clone() {
            if !n.ours {
                c.setup_kernel_node(&n)?;
            }
        }
        for n in c.spec.nodes.clone() {
            if n.ours {
                c.start_agent(&n.name)?;
            }
        }
        c.wait_applied(Duration::from_secs(20))?;
        Ok(c)
    }

    pub fn render_state(&self) -> String {
        render_state(&self.spec, &self.containers)
    }

    pub fn write_state(&self, text: &str) -> Result<()> {
        // Write-then-rename, as editors and config tools do.
        let tmp = self.state_file.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.state_file)?;
        Ok(())
    }

    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        let ns = &self.nodes[node];
        let log = self.logs.join(format!("{node}.log"));
        let decap = self.spec.decap.clone().map(|d| format!(" --decap {d}")).unwrap_or_default();
        let cmd = format!(
            "{} run --state {} --node {node} --run-dir {}{decap}",
            overlay_bin().display(),
            self.state_file.display(),
            self.run_dir.path.display()
        );
        // Append so restarts keep the earlier log.
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = spawn_in(&ns.name, &cmd, f)?;
        self.agents.insert(node.to_string(), Agent { child, log });
        Ok(())
    }

    /// SIGKILL an agent (the datapath must keep forwarding).
    pub fn kill_agent(&mut self, node: &str) {
        // Dropping the handle sends SIGKILL and reaps it.
        self.agents.remove(node);
    }

    pub fn applied_hash(&self, node: &str) -> Option<String> {
        let p = self.run_dir.path.join("nodes").join(node).join("applied.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        v.get("state_hash")?.as_str().map(str::to_string)
    }

    /// Wait until every running agent has applied the current state file.
    pub fn wait_applied(&mut self, timeout: Duration) -> Result<()> {
        let want = overlay::agent::state_hash(&std::fs::read_to_string(&self.state_file)?);
        let names: Vec<String> = self.agents.keys().cloned().collect();
        for n in names {
            let ok = wait_for(timeout, || {
                if let Some(a) = self.agents.get_mut(&n) {
                    if let Ok(Some(_)) = a.child.try_wait() {
                        return false;
                    }
                }
                self.applied_hash(&n).as_deref() == Some(want.as_str())
            });
            if !ok {
                bail!("agent on {n} did not apply the state in {timeout:?}; log:\n{}", self.agent_log(&n));
            }
        }
        Ok(())
    }

    pub fn agent_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{node}.log"))).unwrap_or_default()
    }

    pub fn container(&self, ep: &str) -> &Netns {
        &self.containers[ep]
    }

    pub fn ip_of(&self, ep: &str) -> String {
        self.spec.endpoints.iter().find(|e| e.name == ep).map(|e| e.ip.clone()).unwrap_or_default()
    }

    /// Start the TCP echo server (port 5001) in every container.
    pub fn start_servers(&mut self) -> Result<()> {
        for (name, c) in &self.containers {
            let log = self.logs.join(format!("tcpx-{name}.log"));
            self.servers.push(Proc(c.spawn(&format!("{} serve 5001", tcpx_bin().display()), &log)?));
        }
        Ok(())
    }

    /// Send `bytes` from one container to another's echo server and check every byte back.
    pub fn tcp(&self, from: &str, to: &str, bytes: u64) -> bool {
        self.container(from).ok(&format!("{} send {} 5001 {bytes}", tcpx_bin().display(), self.ip_of(to)))
    }

    /// Start a paced transfer in the background; `Proc.0.wait()` tells whether it survived.
    pub fn tcp_background(&self, from: &str, to: &str, bytes: u64, seconds: f64) -> Result<Proc> {
        let log = self.logs.join(format!("flow-{from}-{to}.log"));
        Ok(Proc(self.container(from).spawn(
            &format!("{} send {} 5001 {bytes} {seconds}", tcpx_bin().display(), self.ip_of(to)),
            &log,
        )?))
    }

    pub fn ping(&self, from: &str, to: &str) -> bool {
        self.container(from).ok(&format!("ping -c1 -W1 -q {}", self.ip_of(to)))
    }

    /// `overlay stats --json` for a node.
    pub fn stats(&self, node: &str) -> Result<serde_json::Value> {
        let out = self.nodes[node].sh(&format!(
            "{} stats --node {node} --run-dir {} --json",
            overlay_bin().display(),
            self.run_dir.path.display()
        ))?;
        Ok(serde_json::from_str(&out)?)
    }

    pub fn counter(&self, node: &str, section: &str, name: &str) -> u64 {
        let Ok(v) = self.stats(node) else { return 0 };
        v[section]
            .as_array()
            .and_then(|a| a.iter().find(|x| x[0] == name))
            .and_then(|x| x[1].as_u64())
            .unwrap_or(0)
    }

    /// A node built the way Docker's overlay driver builds it: a kernel vxlan device and a
    /// bridge per network, static FDB and neighbour entries for every remote endpoint.
    fn setup_kernel_node(&mut self, n: &NodeSpec) -> Result<()> {
        let ns = &self.nodes[&n.name];
        let port = 4789;
        for net in &self.spec.networks {
            let br = format!("br{}", net.vni);
            let vx = format!("vx{}", net.vni);
            ns.sh(&format!(
                "ip link add {br} type bridge && ip link set {br} up && \
                 ip link add {vx} type vxlan id {} dstport {port} local {} dev ul0 nolearning proxy && \
                 ip link set {vx} master {br} && ip link set {vx} up",
                net.vni, n.address
            ))?;
        }
        let mut i = 0;
        for e in self.spec.endpoints.clone() {
            let net = self.spec.networks.iter().find(|x| x.name == e.network).unwrap().clone();
            let mac = docker_mac(&e.ip);
            if e.node == n.name {
                let c = &self.containers[&e.name];
                let h = format!("kv{i}");
                i += 1;
                ns.sh(&format!(
                    "ip link add {h} type veth peer name eth0 netns {} && ip link set {h} master br{} && ip link set {h} up",
                    c.name, net.vni
                ))?;
                c.sh(&format!(
                    "ip link set eth0 address {mac} && ip link set eth0 mtu 1450 && ip addr add {}/{} dev eth0 && ip link set eth0 up",
                    e.ip, net.prefix
                ))?;
            } else {
                let vtep = &self.spec.nodes.iter().find(|x| x.name == e.node).unwrap().address;
                ns.sh(&format!(
                    "bridge fdb add {mac} dev vx{0} dst {vtep} self permanent && ip neigh add {1} lladdr {mac} dev vx{0} nud permanent",
                    net.vni, e.ip
                ))?;
            }
        }
        // Containers on the kernel node resolve remote peers through the proxy-ARP vxlan device.
        Ok(())
    }
}

fn short(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_alphanumeric()).take(10).collect()
}

pub fn render_state(spec: &ClusterSpec, containers: &BTreeMap<String, Netns>) -> String {
    let mut s = String::from("[cluster]\nvxlan_port = 4789\n\n");
    for n in &spec.nodes {
        let _ = writeln!(s, "[[nodes]]\nname = \"{}\"\naddress = \"{}\"\n", n.name, n.address);
    }
    for n in &spec.networks {
        let mtu = n.mtu.map(|m| format!("mtu = {m}\n")).unwrap_or_default();
        let _ = writeln!(s, "[[networks]]\nname = \"{}\"\nvni = {}\nsubnet = \"{}\"\n{mtu}", n.name, n.vni, n.subnet);
    }
    for e in &spec.endpoints {
        let netns = containers.get(&e.name).map(|c| c.path().display().to_string()).unwrap_or_default();
        let _ = writeln!(
            s,
            "[[endpoints]]\nname = \"{}\"\nnetwork = \"{}\"\nnode = \"{}\"\nip = \"{}\"\nnetns = \"{}\"\n",
            e.name, e.network, e.node, e.ip, netns
        );
    }
    s
}

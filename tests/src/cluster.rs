//! A running cluster: an underlay bridge in its own namespace, a namespace per node, one per
//! container, and an agent per node of ours. Tests drive it through the `overlay` binary, as a
//! user would, and read what the agent did through the project's own types.

use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd as _, FromRawFd as _},
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

use anyhow::{bail, Result};
use overlay::{
    agent::{state_hash, Paths, Record},
    datapath::Counters,
};

use crate::{
    cleanup::{untrack, RunDir},
    netns::{spawn_in, wait_for, Netns},
    spec::{render_state, short, ClusterSpec},
};

/// The `overlay` binary built by `cargo xtask build`.
pub fn overlay_bin() -> PathBuf {
    if let Ok(p) = std::env::var("OVERLAY_BIN") {
        return p.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/overlay")
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

/// A host on the underlay that is no node (an outside client of published ports): its own
/// namespace, `eth0` bridged into the underlay, an address of the underlay subnet.
pub struct External {
    pub ns: Netns,
    /// Its underlay address (no prefix).
    pub address: String,
}

impl External {
    /// Run a shell command inside; fail with its output if it fails.
    pub fn sh(&self, cmd: &str) -> Result<String> {
        self.ns.sh(cmd)
    }

    /// Run a shell command inside; whether it succeeded.
    pub fn ok(&self, cmd: &str) -> bool {
        self.ns.ok(cmd)
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
    /// Hosts on the underlay that are no node (`add_external`), by name.
    pub externals: BTreeMap<String, External>,
    /// With `up_on_etcd`: the store the agents follow (etcd runs on the external host "etcd").
    pub etcd: Option<crate::etcd::Etcd>,
    /// The revision the agents must have applied (`etcd:N`, set by `push_state`); `None`: the
    /// state file's hash.
    pub expected: Option<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Processes first: a namespace is not removed while something still runs in it.
        self.servers.clear();
        self.agents.clear();
        self.etcd = None;
    }
}

impl Cluster {
    /// Build the topology and start the agents; returns once every agent applied the state.
    pub fn up(spec: ClusterSpec) -> Result<Self> {
        let mut c = Self::build(spec)?;
        for n in c.spec.nodes.clone() {
            if n.ours {
                c.start_agent(&n.name)?;
            }
        }
        c.wait_applied(Duration::from_secs(20))?;
        Ok(c)
    }

    /// Like `up`, with the state in a real etcd (on the underlay at 192.168.50.250, prefix
    /// /overlay): the state file is pushed, then the agents start with `--store`.
    pub fn up_on_etcd(spec: ClusterSpec) -> Result<Self> {
        let mut c = Self::build(spec)?;
        let ext = c.add_external("etcd", "192.168.50.250")?;
        let (ns, address) = (ext.ns.name.clone(), ext.address.clone());
        c.etcd = Some(crate::etcd::Etcd::start(&ns, &address, &c.run_dir.path.join("etcd"))?);
        c.push_state()?;
        for n in c.spec.nodes.clone() {
            if n.ours {
                c.start_agent(&n.name)?;
            }
        }
        c.wait_applied(Duration::from_secs(20))?;
        Ok(c)
    }

    /// The store URL the agents use.
    pub fn store_url(&self) -> String {
        self.etcd.as_ref().map(|e| e.url("/overlay")).unwrap_or_default()
    }

    /// `overlay ARGS --store URL` in etcd's namespace (through 127.0.0.1, so it works while
    /// the agents are cut off): whether it succeeded, and its stdout and stderr.
    pub fn store_cli(&self, args: &str) -> (bool, String) {
        let e = self.etcd.as_ref().expect("a cluster on etcd");
        let out = crate::netns::in_netns(
            &e.ns,
            &format!("{} {args} --store {} 2>&1", overlay_bin().display(), e.local_url("/overlay")),
        )
        .output();
        match out {
            Ok(o) => (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned()),
            Err(e) => (false, e.to_string()),
        }
    }

    /// Pushes the state file to the store; the agents must then apply the revision it printed.
    pub fn push_state(&mut self) -> Result<String> {
        let (ok, out) = self.store_cli(&format!("state push --state {}", self.state_file.display()));
        if !ok {
            bail!("push failed: {out}");
        }
        self.expect_written(&out)
    }

    /// Takes the revision a successful `overlay state` write printed as the one to wait for.
    pub fn expect_written(&mut self, out: &str) -> Result<String> {
        if !out.starts_with("pushed: ") && !out.starts_with("put: ") && !out.starts_with("deleted: ") {
            bail!("not a successful write: {out:?}");
        }
        let rev = out.split_whitespace().find_map(|w| {
            let n = w.strip_prefix("etcd:")?.trim_end_matches(|c: char| !c.is_ascii_digit());
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| format!("etcd:{n}"))
        });
        match rev {
            Some(r) => {
                self.expected = Some(r.clone());
                Ok(r)
            }
            None if out.contains("no change") => Ok(self.expected.clone().unwrap_or_default()),
            None => bail!("no revision in {out:?}"),
        }
    }

    /// The topology and the state file, no agent yet.
    fn build(spec: ClusterSpec) -> Result<Self> {
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
        let mut c = Self {
            spec,
            run_dir,
            state_file,
            underlay,
            nodes,
            containers,
            agents: BTreeMap::new(),
            servers: Vec::new(),
            logs,
            externals: BTreeMap::new(),
            etcd: None,
            expected: None,
        };
        c.write_state(&c.render_state())?;
        for n in c.spec.nodes.clone() {
            if !n.ours {
                c.setup_kernel_node(&n)?;
            }
        }
        Ok(c)
    }

    /// Add a host on the underlay that is no node: namespace `name` (made unique), `eth0` with
    /// `address`/24 bridged into the underlay. Removed with the cluster like every namespace.
    /// With `--decap xdp` its transmit checksum offload is off, as the containers' in the tests
    /// (a veth hands XDP a checksum left to offload that no NIC will fill in).
    pub fn add_external(&mut self, name: &str, address: &str) -> Result<&External> {
        if self.externals.contains_key(name) {
            bail!("external host {name} exists");
        }
        let ns = Netns::new(&short(name))?;
        let port = format!("x{}", self.externals.len());
        self.underlay.sh(&format!(
            "ip link add {port} type veth peer name eth0 netns {} && ip link set {port} master br0 && ip link set {port} up",
            ns.name
        ))?;
        ns.sh(&format!("ip addr add {address}/24 dev eth0 && ip link set eth0 up"))?;
        if self.spec.decap.as_deref() == Some("xdp") {
            ns.sh("ethtool -K eth0 tx off >/dev/null")?;
        }
        self.externals.insert(name.to_string(), External { ns, address: address.to_string() });
        Ok(&self.externals[name])
    }

    /// Attach an XDP program that passes everything to the underlay bridge's ports (the ends of
    /// the nodes' `ul0`), so that frames a node's XDP program sends back out with `XDP_TX` are
    /// delivered. A physical NIC transmits them; a veth delivers an `XDP_TX` frame to its peer
    /// only when the peer runs an XDP program (the kernel's veth flushes the peer's queue only
    /// then), else the frame waits in the peer's queue. `XDP_REDIRECT` into a veth needs NAPI on
    /// the peer (GRO, or an XDP program) too. The program is pinned in the run's bpffs.
    pub fn underlay_accepts_xdp_tx(&self) -> Result<()> {
        let pin = self.run_dir.path.join("bpffs").join("rig-xdp-pass");
        if !pin.exists() {
            load_xdp_pass(&pin)?;
        }
        for i in 0..self.spec.nodes.len() {
            self.underlay.sh(&format!("ip link set dev n{i} xdpdrv pinned {}", pin.display()))?;
        }
        Ok(())
    }

    /// The external host called `name` (panics if there is none: a test's own).
    pub fn external(&self, name: &str) -> &External {
        self.externals.get(name).unwrap_or_else(|| panic!("no external host {name:?}"))
    }

    /// A node's underlay address.
    pub fn address_of(&self, node: &str) -> String {
        self.spec.nodes.iter().find(|n| n.name == node).map(|n| n.address.clone()).unwrap_or_default()
    }

    pub fn render_state(&self) -> String {
        render_state(&self.spec, &self.containers)
    }

    /// Write the state file as writers should: complete, renamed into place.
    pub fn write_state(&self, text: &str) -> Result<()> {
        Ok(overlay::fsutil::write_atomic(&self.state_file, text.as_bytes())?)
    }

    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        let ns = &self.nodes[node];
        let log = self.logs.join(format!("{node}.log"));
        let decap = self.spec.decap.clone().map(|d| format!(" --decap {d}")).unwrap_or_default();
        let source = match &self.etcd {
            Some(_) => format!("--store {}", self.store_url()),
            None => format!("--state {}", self.state_file.display()),
        };
        let cmd = format!(
            "{} run {source} --node {node} --run-dir {}{decap}",
            overlay_bin().display(),
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

    /// What the node's agent last applied (its `applied.json`), if it has applied anything.
    pub fn record(&self, node: &str) -> Option<Record> {
        Record::load(&Paths::new(&self.run_dir.path, node).record_file()).ok().flatten()
    }

    pub fn applied_hash(&self, node: &str) -> Option<String> {
        self.record(node).map(|r| r.state_hash)
    }

    /// Wait until every running agent has applied the current state file.
    pub fn wait_applied(&mut self, timeout: Duration) -> Result<()> {
        let want = match &self.expected {
            Some(rev) => rev.clone(),
            None => state_hash(&std::fs::read_to_string(&self.state_file)?),
        };
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
        Ok(Proc(
            self.container(from)
                .spawn(&format!("{} send {} 5001 {bytes} {seconds}", tcpx_bin().display(), self.ip_of(to)), &log)?,
        ))
    }

    pub fn ping(&self, from: &str, to: &str) -> bool {
        self.container(from).ok(&format!("ping -c1 -W1 -q {}", self.ip_of(to)))
    }

    /// `overlay stats --json` for a node: what a user sees (the demo prints it).
    pub fn stats(&self, node: &str) -> Result<serde_json::Value> {
        let out = self.nodes[node].sh(&format!(
            "{} stats --node {node} --run-dir {} --json",
            overlay_bin().display(),
            self.run_dir.path.display()
        ))?;
        Ok(serde_json::from_str(&out)?)
    }

    /// The node's datapath counters, read from its pins (the agent need not run).
    pub fn counters(&self, node: &str) -> Result<Counters> {
        Counters::from_pins(&Paths::new(&self.run_dir.path, node).pins)
    }
}

/// Load `r0 = XDP_PASS; exit` and pin it at `pin` (bpf(2) directly: no object file needed).
fn load_xdp_pass(pin: &Path) -> Result<()> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    // mov64 r0, 2 (XDP_PASS); exit
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = c"GPL";
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license; the rest zero.
    let mut attr = [0u64; 16];
    attr[0] = BPF_PROG_TYPE_XDP as u64 | (2u64 << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // SAFETY: bpf(2) with a zeroed, sized attribute block pointing at live buffers.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    if fd < 0 {
        bail!("loading an XDP_PASS program: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor bpf(2) just returned, ours to close.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())?;
    // union bpf_attr for BPF_OBJ_PIN: pathname, bpf_fd.
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    attr[1] = fd.as_raw_fd() as u64;
    // SAFETY: as above.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    if r < 0 {
        bail!("pinning the XDP_PASS program at {}: {}", pin.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

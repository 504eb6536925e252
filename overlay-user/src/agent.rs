//! `overlay run`: apply the state to this node and keep it applied as the file changes.
//! `overlay down`: remove everything the agent created on this node.
//!
//! Stopping the agent (SIGINT/SIGTERM, or a crash) leaves the datapath forwarding on pinned
//! maps and links; the next start adopts them and applies only the difference.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use overlay_common::{
    maps::{Config, EndpointInfo, EndpointKey, LocalIface, NetworkInfo, EP_LOCAL, MAX_ENDPOINTS, MAX_LOCAL_IFACES, MAX_NETWORKS},
    vxlan::ENCAP_OVERHEAD,
};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::{
    datapath::{Contents, DecapMode, Datapath},
    plumb::{self, Netlink, Plumbed, Underlay},
    state::{self, ClusterState, Endpoint},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DecapChoice {
    /// TC on veth underlays (measured faster there, see README), XDP elsewhere.
    Auto,
    Xdp,
    Tc,
}

impl DecapChoice {
    pub fn resolve(self, underlay: &Underlay) -> DecapMode {
        match self {
            DecapChoice::Xdp => DecapMode::Xdp,
            DecapChoice::Tc => DecapMode::Tc,
            DecapChoice::Auto if underlay.is_veth => DecapMode::Tc,
            DecapChoice::Auto => DecapMode::Xdp,
        }
    }
}

pub struct Paths {
    /// bpffs directory of this node: maps/ and links/.
    pub pins: PathBuf,
    /// Plain directory of this node: the applied-state record.
    pub records: PathBuf,
}

impl Paths {
    pub fn new(run_dir: &Path, node: &str) -> Self {
        Self { pins: run_dir.join("bpffs").join(node), records: run_dir.join("nodes").join(node) }
    }
    pub fn record_file(&self) -> PathBuf {
        self.records.join("applied.json")
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The pins must live on a bpffs mounted in the host's mount namespace (not inside an
/// `ip netns exec`, whose mounts die with it), or a restart would not find them.
pub fn check_bpffs(run_dir: &Path) -> Result<()> {
    let dir = run_dir.join("bpffs");
    let st = nix::sys::statfs::statfs(&dir).map_err(|e| {
        anyhow!("{}: {e}; mount a bpffs there first: mkdir -p {0} && mount -t bpf bpf {0}", dir.display())
    })?;
    if st.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        bail!("{} is not a bpffs; mount one there first: mount -t bpf bpf {0}", dir.display());
    }
    Ok(())
}

/// What this node has applied: enough to diff against after a restart and to undo everything.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub node: String,
    pub underlay: Option<Underlay>,
    pub decap: Option<DecapMode>,
    /// Local endpoints by name.
    pub endpoints: BTreeMap<String, RecordedEndpoint>,
    /// Hash of the state file text last applied (tests and tools wait on it).
    pub state_hash: String,
    pub generation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEndpoint {
    pub netns: PathBuf,
    pub ifname: String,
    pub ip: std::net::Ipv4Addr,
    pub mac: [u8; 6],
    pub prefix: u8,
    pub mtu: u32,
    pub plumbed: Plumbed,
}

impl Record {
    pub fn load(path: &Path) -> Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Stable hash of a state file's text, as recorded in `applied.json`.
pub fn state_hash(text: &str) -> String {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{h:016x}")
}

fn ip_key(ip: std::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// MTU of a network on this node: configured, or the underlay's minus the VXLAN overhead.
pub fn network_mtu(net: &state::Network, underlay_mtu: u32) -> u32 {
    net.mtu.unwrap_or(underlay_mtu.saturating_sub(ENCAP_OVERHEAD))
}

/// The map contents this node needs for `state`, given where its local endpoints are plumbed.
pub fn desired_contents(
    state: &ClusterState,
    node: &str,
    underlay: &Underlay,
    plumbed: &BTreeMap<String, Plumbed>,
) -> Result<Contents> {
    let me = state.node(node).ok_or_else(|| anyhow!("node {node} is not in the state"))?;
    let mut c = Contents {
        config: Config {
            node_ip: ip_key(me.address),
            underlay_ifindex: underlay.ifindex,
            underlay_mtu: underlay.mtu,
            vxlan_port: state.vxlan_port,
            _pad: 0,
        },
        ..Default::default()
    };
    for net in state.networks.values() {
        c.networks.insert(net.vni, NetworkInfo { mtu: network_mtu(net, underlay.mtu), _reserved: 0 });
    }
    for ep in state.endpoints.values() {
        let net = state.network_of(ep);
        let key = EndpointKey { vni: net.vni, ip: ip_key(ep.ip) };
        let info = if ep.node == node {
            let p = plumbed.get(&ep.name).ok_or_else(|| anyhow!("local endpoint {} is not plumbed", ep.name))?;
            c.local_ifaces.insert(
                p.host_ifindex,
                LocalIface { vni: net.vni, ip: ip_key(ep.ip), mac: ep.mac, _pad: [0; 2] },
            );
            EndpointInfo { mac: ep.mac, flags: EP_LOCAL, ifindex: p.host_ifindex, vtep: 0 }
        } else {
            let vtep = state.nodes[&ep.node].address;
            EndpointInfo { mac: ep.mac, flags: 0, ifindex: 0, vtep: ip_key(vtep) }
        };
        c.endpoints.insert(key, info);
    }
    Ok(c)
}

pub struct Agent {
    node: String,
    paths: Paths,
    nl: Netlink,
    dp: Datapath,
    underlay: Underlay,
    record: Record,
    /// What the maps hold (read once at start, then tracked).
    current: Contents,
    /// Networks already warned about for an MTU that does not fit the underlay.
    mtu_warned: HashSet<(String, u32)>,
}

fn recorded(ep: &Endpoint, state: &ClusterState, underlay_mtu: u32, plumbed: Plumbed) -> RecordedEndpoint {
    let net = state.network_of(ep);
    RecordedEndpoint {
        netns: ep.netns.clone().unwrap_or_default(),
        ifname: ep.ifname.clone(),
        ip: ep.ip,
        mac: ep.mac,
        prefix: net.subnet.prefix,
        mtu: network_mtu(net, underlay_mtu),
        plumbed,
    }
}

impl Agent {
    /// Load (or adopt) the datapath for `node` and attach it to the underlay.
    pub async fn start(state: &ClusterState, node: &str, run_dir: &Path, decap: DecapChoice) -> Result<Self> {
        check_bpffs(run_dir)?;
        let paths = Paths::new(run_dir, node);
        std::fs::create_dir_all(&paths.records).with_context(|| format!("creating {}", paths.records.display()))?;
        let me = state.node(node).ok_or_else(|| anyhow!("node {node} is not in the state file"))?;
        let nl = Netlink::connect()?;
        let underlay = plumb::find_underlay(&nl, me.address).await?;
        let mode = decap.resolve(&underlay);
        if mode == DecapMode::Xdp && underlay.is_veth {
            warn!(
                "XDP decapsulation on a veth underlay: checksums the sender left to offload are lost \
                 on the XDP redirect, so TCP from such senders fails; `--decap tc` (the default here) has no such limit"
            );
        }
        let mut dp = Datapath::open(Some(&paths.pins))?;
        let current = dp.read_contents()?;
        let adopted = !current.endpoints.is_empty() || current.config.node_ip != 0;
        dp.attach_underlay(&underlay.name, mode)?;
        let mut record = Record::load(&paths.record_file())?.unwrap_or_default();
        record.node = node.to_string();
        record.underlay = Some(underlay.clone());
        record.decap = Some(mode);
        info!(
            underlay = %underlay.name, mtu = underlay.mtu, decap = %mode, adopted,
            "datapath loaded{}", if adopted { " (adopted the running one)" } else { "" }
        );
        Ok(Self { node: node.to_string(), paths, nl, dp, underlay, record, current, mtu_warned: HashSet::new() })
    }

    /// Make this node match `state`. Validation happens before anything is touched; a state
    /// that fails it changes nothing.
    pub async fn reconcile(&mut self, state: &ClusterState, text_hash: &str) -> Result<ReconcileReport> {
        let t0 = Instant::now();
        state::check_for_node(state, &self.node).map_err(|problems| {
            anyhow!(
                "state not applicable on this node:\n{}",
                problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
            )
        })?;
        // The datapath's maps have fixed sizes: refuse a state that cannot fit before touching anything.
        let local = state.local_endpoints(&self.node).count();
        for (what, n, max) in [
            ("endpoints", state.endpoints.len(), MAX_ENDPOINTS),
            ("networks", state.networks.len(), MAX_NETWORKS),
            ("endpoints on this node", local, MAX_LOCAL_IFACES),
        ] {
            if n > max as usize {
                bail!("the state has {n} {what}; the datapath holds at most {max}");
            }
        }
        for net in state.networks.values() {
            let mtu = network_mtu(net, self.underlay.mtu);
            if mtu + ENCAP_OVERHEAD > self.underlay.mtu && self.mtu_warned.insert((net.name.clone(), mtu)) {
                warn!(network = %net.name,
                      "mtu {mtu} does not fit the underlay ({}) once encapsulated: DF senders are told the MTU \
                       that fits (ICMP fragmentation needed), other too-big packets are dropped", self.underlay.mtu);
            }
        }

        // 1. Plumb new and changed local endpoints.
        let mut report = ReconcileReport::default();
        let mut plumbed = BTreeMap::new();
        for ep in state.local_endpoints(&self.node) {
            let net = state.network_of(ep);
            let mtu = network_mtu(net, self.underlay.mtu);
            let want = recorded(ep, state, self.underlay.mtu, Plumbed { host_veth: String::new(), host_ifindex: 0 });
            let unchanged = match self.record.endpoints.get(&ep.name) {
                Some(r) => {
                    RecordedEndpoint { plumbed: want.plumbed.clone(), ..r.clone() } == want
                        && self.nl.link_by_name(&r.plumbed.host_veth).await?.map(|l| l.header.index) == Some(r.plumbed.host_ifindex)
                }
                None => false,
            };
            let p = if unchanged {
                self.record.endpoints[&ep.name].plumbed.clone()
            } else {
                // Moved to another sandbox or renamed inside it: start from a fresh pair.
                if let Some(r) = self.record.endpoints.get(&ep.name) {
                    if r.netns != want.netns || r.ifname != want.ifname {
                        plumb::remove_endpoint(&self.nl, &r.plumbed.host_veth).await?;
                    }
                }
                let p = plumb::ensure_endpoint(&self.nl, ep, net.subnet.prefix, mtu)
                    .await
                    .with_context(|| format!("plumbing endpoint {}", ep.name))?;
                self.dp.attach_container(&p.host_veth, p.host_ifindex)?;
                report.plumbed += 1;
                p
            };
            self.record.endpoints.insert(ep.name.clone(), recorded(ep, state, self.underlay.mtu, p.clone()));
            plumbed.insert(ep.name.clone(), p);
        }

        // 2. Maps: the whole cluster as this node sees it.
        let desired = desired_contents(state, &self.node, &self.underlay, &plumbed)?;
        report.map_writes = self.dp.apply(&self.current, &desired)?;
        self.current = desired;

        // 3. Endpoints that left this node (removed, or moved elsewhere): unplumb.
        let gone: Vec<String> = self.record.endpoints.keys().filter(|n| !plumbed.contains_key(*n)).cloned().collect();
        for name in gone {
            if let Some(r) = self.record.endpoints.remove(&name) {
                plumb::remove_endpoint(&self.nl, &r.plumbed.host_veth).await?;
                report.unplumbed += 1;
            }
        }
        let keep: HashSet<u32> = plumbed.values().map(|p| p.host_ifindex).collect();
        self.dp.prune_container_links(&keep)?;

        self.record.state_hash = text_hash.to_string();
        self.record.generation += 1;
        self.record.save(&self.paths.record_file())?;
        report.elapsed = t0.elapsed();
        Ok(report)
    }

    pub fn datapath(&mut self) -> &mut Datapath {
        &mut self.dp
    }
}

#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub plumbed: usize,
    pub unplumbed: usize,
    pub map_writes: usize,
    pub elapsed: Duration,
}

/// `overlay run`: start, apply, then follow the file until SIGINT/SIGTERM.
///
/// The file must parse at start (the node's address locates the underlay). After that, a state
/// that fails validation is reported once and ignored until the file changes; one that is valid
/// but cannot be applied here yet (a sandbox not created yet) is retried on every poll tick. In
/// both cases the last good state, or at start the adopted datapath, keeps forwarding.
pub async fn run(state_path: &Path, node: &str, run_dir: &Path, decap: DecapChoice) -> Result<()> {
    let text = std::fs::read_to_string(state_path).with_context(|| format!("reading {}", state_path.display()))?;
    let mut parser = state::IncrementalParser::default();
    let state = parser.parse(&text, state_path)?;
    let mut agent = Agent::start(&state, node, run_dir, decap).await?;
    let mut follow = Follow { applied: None, failed: None };
    follow.attempt(&mut agent, &mut parser, state_path, text).await;

    let mut watcher = FileWatch::new(state_path)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            changed = watcher.next() => {
                changed?;
                match std::fs::read_to_string(state_path) {
                    Ok(text) => follow.attempt(&mut agent, &mut parser, state_path, text).await,
                    Err(e) => warn!("cannot read {}: {e}; keeping the last good state", state_path.display()),
                }
            }
        }
    }
    info!("stopping; the datapath keeps forwarding (use `overlay down` to remove it)");
    Ok(())
}

/// What the agent did with the versions of the file it has seen.
struct Follow {
    /// Text of the state last applied.
    applied: Option<String>,
    /// Text last refused, why, and whether trying again can help.
    failed: Option<(String, String, bool)>,
}

impl Follow {
    async fn attempt(&mut self, agent: &mut Agent, parser: &mut state::IncrementalParser, path: &Path, text: String) {
        if self.applied.as_deref() == Some(text.as_str()) {
            return;
        }
        if let Some((t, _, false)) = &self.failed {
            if *t == text {
                return;
            }
        }
        let first = self.applied.is_none();
        let t0 = Instant::now();
        let state = match parser.parse(&text, path) {
            Ok(s) => s,
            Err(e) => {
                error!("new state rejected, keeping the last good state:\n{e}");
                self.failed = Some((text, e.to_string(), false));
                return;
            }
        };
        match agent.reconcile(&state, &state_hash(&text)).await {
            Ok(r) => {
                let ms = t0.elapsed().as_millis() as u64;
                if first {
                    info!(endpoints = state.endpoints.len(), local = state.local_endpoints(&agent.node).count(),
                          plumbed = r.plumbed, map_writes = r.map_writes, ms = r.elapsed.as_millis() as u64, "state applied");
                } else {
                    info!(plumbed = r.plumbed, unplumbed = r.unplumbed, map_writes = r.map_writes, ms,
                          reconcile_ms = r.elapsed.as_millis() as u64, "state change applied");
                }
                self.applied = Some(text);
                self.failed = None;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let repeated = matches!(&self.failed, Some((t, m, _)) if *t == text && *m == msg);
                if !repeated {
                    error!("state not applied (will retry), keeping the last good state: {msg}");
                }
                self.failed = Some((text, msg, true));
            }
        }
    }
}

/// Wakes on changes to the state file: inotify on its directory (editors replace files by
/// rename), with a slow poll as a safety net.
struct FileWatch {
    stream: inotify::EventStream<Vec<u8>>,
    name: std::ffi::OsString,
    tick: tokio::time::Interval,
}

impl FileWatch {
    fn new(path: &Path) -> Result<Self> {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let ino = inotify::Inotify::init().context("inotify")?;
        use inotify::WatchMask as M;
        ino.watches()
            .add(dir, M::CLOSE_WRITE | M::MOVED_TO | M::CREATE | M::MODIFY)
            .with_context(|| format!("watching {}", dir.display()))?;
        let stream = ino.into_event_stream(vec![0u8; 4096])?;
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self { stream, name: path.file_name().unwrap_or_default().to_os_string(), tick })
    }

    async fn next(&mut self) -> Result<()> {
        use futures::StreamExt as _;
        loop {
            tokio::select! {
                ev = self.stream.next() => {
                    let ev = ev.ok_or_else(|| anyhow!("inotify stream ended"))??;
                    if ev.name.as_deref() == Some(self.name.as_os_str()) {
                        return Ok(());
                    }
                }
                _ = self.tick.tick() => return Ok(()),
            }
        }
    }
}

/// `overlay down`: remove the veths, links and maps this agent created for `node`.
pub async fn down(node: &str, run_dir: &Path) -> Result<()> {
    let paths = Paths::new(run_dir, node);
    let nl = Netlink::connect()?;
    let mut removed = 0;
    // Every veth with our naming in this namespace, recorded or not (a crash may leave some).
    for l in nl.links().await? {
        if let Some(name) = plumb::link_name(&l) {
            if plumb::is_host_veth_name(name) && plumb::is_veth(&l) {
                nl.delete_link(l.header.index).await?;
                removed += 1;
            }
        }
    }
    // Removing the link pins detaches the programs; removing the map pins frees the maps.
    if paths.pins.exists() {
        std::fs::remove_dir_all(&paths.pins).with_context(|| format!("removing {}", paths.pins.display()))?;
    }
    if paths.records.exists() {
        std::fs::remove_dir_all(&paths.records)?;
    }
    info!(node, veths = removed, "overlay removed from this node");
    Ok(())
}

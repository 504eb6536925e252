//! The agent: `run` follows a state source and keeps this node matching it; `down` removes
//! everything it created. The pipeline of one change is source -> parse -> validate (`state`) ->
//! plumb local endpoints (`plumb`) -> desired map contents (`datapath::contents`) -> map diff.
//!
//! Stopping the agent (SIGINT/SIGTERM, or a crash) leaves the datapath forwarding on pinned
//! maps and links; the next start adopts them and applies only the difference.

mod down;
mod dry;
mod gw;
mod lock;
mod record;
mod run;
mod source;
mod watch;

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _, Result};
use overlay_common::vxlan::ENCAP_OVERHEAD;
use tracing::{info, warn};

pub use down::down;
pub use dry::dry_run;
pub use lock::NodeLock;
pub use record::{state_hash, Paths, Record, RecordedEndpoint};
pub use run::run;
pub use source::{FileSource, StateSource, Version};

use crate::{
    datapath::{check_bpffs, desired_contents, network_mtu, resolve_nexthops, Contents, Datapath, DecapMode},
    netlink::{find_underlay, Netlink, Underlay},
    plumb::{self, host_veth_name, Plumbed, VethSpec},
    state::{ClusterState, Endpoint, PublishMode},
};

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
    decap: Option<DecapMode>,
    _lock: NodeLock,
}

#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub plumbed: usize,
    pub unplumbed: usize,
    pub map_writes: usize,
    /// Local endpoints that could not be plumbed or unplumbed, with the reason; retried.
    pub failed: BTreeMap<String, String>,
    pub elapsed: Duration,
}

impl Agent {
    /// Load (or adopt) the datapath for `node` and attach it to the underlay. `decap`: `None`
    /// picks TC on veth underlays (measured faster there, see README) and XDP elsewhere.
    pub async fn start(state: &ClusterState, node: &str, run_dir: &Path, decap: Option<DecapMode>) -> Result<Self> {
        check_bpffs(run_dir)?;
        let paths = Paths::new(run_dir, node);
        std::fs::create_dir_all(&paths.records).with_context(|| format!("creating {}", paths.records.display()))?;
        let lock = NodeLock::acquire(&paths.records, node)?;
        let me = state.node(node).ok_or_else(|| anyhow!("node {node} is not in the state"))?;
        let nl = Netlink::connect()?;
        let underlay = find_underlay(&nl, me.address).await?;
        let mode = decap_mode(decap, &underlay);
        let mut dp = Datapath::open(Some(&paths.pins))?;
        let current = dp.read_contents()?;
        let adopted = !current.endpoints.is_empty() || current.config.node_ip != 0;
        let mut record = match Record::load(&paths.record_file()) {
            Ok(r) => r.unwrap_or_default(),
            Err(e) => {
                // Plumbing adopts what exists, so starting from an empty record is safe.
                warn!("{e:#}; starting from an empty record");
                Record::default()
            }
        };
        // The underlay moved or was recreated while no agent ran: the old links point elsewhere.
        if record.underlay.as_ref().is_some_and(|u| u.ifindex != underlay.ifindex) {
            dp.detach_underlay()?;
        }
        dp.attach_underlay(&underlay.name, mode)?;
        record.node = node.to_string();
        record.underlay = Some(underlay.clone());
        record.decap = Some(mode);
        info!(
            underlay = %underlay.name, mtu = underlay.mtu, decap = %mode, adopted,
            "datapath loaded{}", if adopted { " (adopted the running one)" } else { "" }
        );
        let mtu_warned = HashSet::new();
        Ok(Self { node: node.to_string(), paths, nl, dp, underlay, record, current, mtu_warned, decap, _lock: lock })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Remove idle conntrack entries (see `Datapath::sweep_conntrack`).
    pub fn sweep_conntrack(&mut self) -> Result<usize> {
        self.dp.sweep_conntrack()
    }

    /// Make this node match `state` as far as it can: endpoints that cannot be plumbed are
    /// reported in the result and left out of the maps; everything else is applied.
    /// An error means nothing was applied (the state does not fit this node at all).
    pub async fn reconcile(&mut self, state: &ClusterState, revision: &str) -> Result<ReconcileReport> {
        let t0 = Instant::now();
        let me = state.node(&self.node).ok_or_else(|| anyhow!("node {} is not in the state", self.node))?;
        self.follow_underlay(me.address).await?;
        self.warn_mtus(state);

        // 1. Plumb new and changed local endpoints; a failure stays with its endpoint.
        let mut report = ReconcileReport::default();
        let mut plumbed = BTreeMap::new();
        let node = self.node.clone();
        for ep in state.local_endpoints(&node) {
            match self.ensure_plumbed(ep, state).await {
                Ok((p, fresh)) => {
                    report.plumbed += fresh as usize;
                    plumbed.insert(ep.name.clone(), p);
                }
                Err(e) => {
                    report.failed.insert(ep.name.clone(), format!("{e:#}"));
                }
            }
        }

        // 1b. docker_gwbridge: a port for each sandbox plumbed above.
        let sandboxes: std::collections::BTreeSet<std::path::PathBuf> =
            plumbed.keys().filter_map(|n| state.endpoints.get(n)?.netns.clone()).collect();
        self.reconcile_gw(state, &sandboxes, &mut report).await?;

        // 2. Maps: the whole cluster as this node sees it, and the next hop to each other node.
        let gw =
            self.record.gw_bridge.as_ref().filter(|_| state.gwbridge.is_some()).map(|b| (b, &self.record.gw_ports));
        let mut desired = desired_contents(state, &self.node, &self.underlay, &plumbed, gw, &self.current)?;
        desired.nexthops = self.nexthops(&desired).await?;
        report.map_writes = self.dp.apply(&self.current, &desired)?;
        self.current = desired;

        // 3. Endpoints that left this node (removed, or moved elsewhere): unplumb.
        let gone: Vec<String> = self
            .record
            .endpoints
            .keys()
            .filter(|n| !plumbed.contains_key(*n) && !report.failed.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            let host = self.record.endpoints[&name].plumbed.host_veth.clone();
            match plumb::unplumb(&self.nl, &host).await {
                Ok(()) => {
                    self.record.endpoints.remove(&name);
                    report.unplumbed += 1;
                }
                Err(e) => {
                    report.failed.insert(name, format!("{e:#}"));
                }
            }
        }
        let mut keep: HashSet<u32> = self.record.endpoints.values().map(|r| r.plumbed.host_ifindex).collect();
        keep.extend(self.record.gw_ports.values().map(|p| p.host_ifindex));
        self.dp.prune_container_links(&keep)?;

        // Retries and repair passes that change nothing leave the record (and its readers) alone.
        let changed = report.plumbed + report.unplumbed + report.map_writes > 0;
        if changed
            || self.record.state_hash != revision
            || self.record.failed != report.failed
            || self.record.services != self.current.views
        {
            self.record.state_hash = revision.to_string();
            self.record.failed = report.failed.clone();
            self.record.services = self.current.views.clone();
            self.record.generation += 1;
            self.record.save(&self.paths.record_file())?;
        }
        report.elapsed = t0.elapsed();
        Ok(report)
    }

    /// The endpoint's veth as `ep` wants it, with the program attached before the host end
    /// comes up. Returns where it is and whether anything had to be (re)done.
    async fn ensure_plumbed(&mut self, ep: &Endpoint, state: &ClusterState) -> Result<(Plumbed, bool)> {
        let want = self.spec(ep, state)?;
        if let Some(r) = self.record.endpoints.get(&ep.name) {
            if r.spec == want
                && self.nl.link(&r.plumbed.host_veth).await?.map(|l| l.index) == Some(r.plumbed.host_ifindex)
            {
                return Ok((r.plumbed.clone(), false));
            }
            // Moved to another sandbox or renamed inside it: start from a fresh pair.
            if r.spec.netns != want.netns || r.spec.ifname != want.ifname {
                plumb::unplumb(&self.nl, &r.plumbed.host_veth).await?;
            }
        }
        let p = plumb::plumb(&self.nl, &want).await.with_context(|| format!("plumbing endpoint {}", ep.name))?;
        self.dp.attach_container(&p.host_veth, p.host_ifindex)?;
        plumb::activate(&self.nl, &p).await?;
        self.record.endpoints.insert(ep.name.clone(), RecordedEndpoint { spec: want, plumbed: p.clone() });
        Ok((p, true))
    }

    fn spec(&self, ep: &Endpoint, state: &ClusterState) -> Result<VethSpec> {
        let net = state.network_of(ep);
        let netns = ep.netns.clone().ok_or_else(|| anyhow!("no netns: required for an endpoint on this node"))?;
        if !netns.exists() {
            return Err(anyhow!("netns {} does not exist on this node", netns.display()));
        }
        if !crate::netns::is_netns(&netns)? {
            return Err(anyhow!("{} is not a network namespace", netns.display()));
        }
        Ok(VethSpec {
            netns,
            ifname: ep.ifname.clone(),
            mac: ep.mac,
            ip: ep.ip,
            prefix: net.subnet.prefix,
            mtu: network_mtu(net, self.underlay.mtu),
            host: host_veth_name(&ep.name),
            mesh_gateway: if net.ingress { net.gateway } else { None },
            mesh_ports: if net.ingress { mesh_ports(state, &ep.name) } else { Vec::new() },
        })
    }

    /// The outer Ethernet header towards every other node, as the kernel would route it now.
    async fn nexthops(&self, c: &Contents) -> Result<rustc_hash::FxHashMap<u32, overlay_common::maps::NextHop>> {
        let (routes, neighbours) = (self.nl.routes_v4().await?, self.nl.neighbours_v4().await?);
        let vteps = || c.nodes.keys().map(|k| std::net::Ipv4Addr::from(k.to_ne_bytes()));
        for ip in crate::datapath::unresolved_nexthops(vteps(), self.underlay.ifindex, &routes, &neighbours) {
            // Resolution is asynchronous: its neighbour event brings us back here.
            if let Err(e) = self.nl.resolve_neighbour(self.underlay.ifindex, ip).await {
                tracing::debug!(%ip, error = %e, "could not ask the kernel to resolve a next hop");
            }
        }
        Ok(resolve_nexthops(vteps(), self.underlay.ifindex, self.underlay.mac, &routes, &neighbours))
    }

    /// Follow a route or neighbour change: only the next-hop cache is recomputed and written.
    pub async fn refresh_nexthops(&mut self) -> Result<usize> {
        let nexthops = self.nexthops(&self.current).await?;
        let writes = self.dp.apply_nexthops(&self.current.nexthops, &nexthops)?;
        self.current.nexthops = nexthops;
        Ok(writes)
    }

    /// The underlay is the interface holding the node's address. An address this host does not
    /// hold refuses the state (nothing would reach us); an interface that was recreated (new
    /// ifindex) gets decapsulation attached again.
    async fn follow_underlay(&mut self, address: std::net::Ipv4Addr) -> Result<()> {
        let now = find_underlay(&self.nl, address).await?;
        if now != self.underlay {
            if now.ifindex != self.underlay.ifindex {
                self.dp.detach_underlay()?;
            }
            let mode = decap_mode(self.decap, &now);
            self.dp.attach_underlay(&now.name, mode)?;
            info!(underlay = %now.name, ifindex = now.ifindex, mtu = now.mtu, decap = %mode, "underlay changed; decapsulation attached");
            self.record.underlay = Some(now.clone());
            self.record.decap = Some(mode);
            self.underlay = now;
        }
        Ok(())
    }

    fn warn_mtus(&mut self, state: &ClusterState) {
        for net in state.networks.values() {
            let mtu = network_mtu(net, self.underlay.mtu);
            if mtu + ENCAP_OVERHEAD > self.underlay.mtu && self.mtu_warned.insert((net.name.clone(), mtu)) {
                warn!(network = %net.name,
                      "mtu {mtu} does not fit the underlay ({}) once encapsulated: DF senders are told the MTU \
                       that fits (ICMP fragmentation needed), other too-big packets are dropped", self.underlay.mtu);
            }
        }
    }

    pub fn datapath(&mut self) -> &mut Datapath {
        &mut self.dp
    }
}

/// `None` picks TC on veth underlays (measured faster there, see README) and XDP elsewhere.
fn decap_mode(choice: Option<DecapMode>, underlay: &Underlay) -> DecapMode {
    let mode = choice.unwrap_or(if underlay.is_veth { DecapMode::Tc } else { DecapMode::Xdp });
    if mode == DecapMode::Xdp && underlay.is_veth {
        warn!(
            "XDP decapsulation on a veth underlay: checksums the sender left to offload are lost \
             on the XDP redirect, so TCP from such senders fails; `--decap tc` (the default here) has no such limit"
        );
    }
    mode
}

/// (IP protocol, target port) of every published port an endpoint serves, sorted.
fn mesh_ports(state: &ClusterState, endpoint: &str) -> Vec<(u8, u16)> {
    let via_gw = state.gwbridge.is_some();
    let mut out: Vec<(u8, u16)> = state
        .services
        .values()
        .filter(|s| s.backends.iter().any(|b| b.endpoint == endpoint))
        // Host-mode ports through docker_gwbridge reply from the gwbridge address, by the main table.
        .flat_map(|s| {
            s.ports.iter().filter(|p| p.published.is_some() && !(via_gw && p.publish_mode == PublishMode::Host))
        })
        .map(|p| (p.protocol.number(), p.target))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

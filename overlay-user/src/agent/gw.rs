//! The agent's docker_gwbridge step: after the endpoints are plumbed, the bridge and a port for
//! each local sandbox; or, with no `[gwbridge]`, everything it created removed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
};

use anyhow::Result;
use tracing::info;

use super::{Agent, ReconcileReport};
use crate::{
    gwbridge::{self, Bridge},
    state::ClusterState,
};

/// `ReconcileReport::failed` key of the bridge itself; a sandbox's port fails under
/// "gwbridge <path>".
pub const FAILED_KEY: &str = "gwbridge";

impl Agent {
    /// Bring the gwbridge to `state` for `sandboxes` (those of the local endpoints plumbed).
    /// Failures are reported and retried; what works stays applied.
    pub(super) async fn reconcile_gw(
        &mut self,
        state: &ClusterState,
        sandboxes: &BTreeSet<PathBuf>,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let Some(g) = &state.gwbridge else { return self.remove_gw(report).await };
        let before = self.record.gw_bridge.clone();
        if let Some(old) = before.as_ref().filter(|b| b.name != g.name && b.created) {
            self.nl.delete_link_named(&old.name).await?;
        }
        let bridge = match gwbridge::ensure_bridge(&self.nl, g, self.underlay.mtu).await {
            Ok(b) => b,
            Err(e) => {
                report.failed.insert(FAILED_KEY.into(), format!("{e:#}"));
                return Ok(());
            }
        };
        // A bridge we created stays ours when a restart finds it again.
        let bridge = Bridge {
            created: bridge.created || before.as_ref().is_some_and(|b| b.name == g.name && b.created),
            ..bridge
        };
        let bridge_same = before.as_ref().is_some_and(|b| b.ifindex == bridge.ifindex);
        self.record.gw_bridge = Some(bridge.clone());
        let rules = gwbridge::nft_rules(g);
        if self.record.gw_rules != rules {
            match gwbridge::nft_apply(&rules) {
                Ok(()) => self.record.gw_rules = rules,
                Err(e) => {
                    report.failed.insert(FAILED_KEY.into(), format!("{e:#}"));
                }
            }
        }

        let mut have: BTreeMap<PathBuf, Ipv4Addr> =
            self.record.gw_ports.iter().map(|(k, p)| (k.clone(), p.ip)).collect();
        // A sandbox the record does not know (a new one, or the record was lost) keeps the
        // address its interface already has, so a lost record does not renumber containers.
        let unknown: Vec<&PathBuf> = sandboxes.iter().filter(|ns| !have.contains_key(*ns)).collect();
        for ns in unknown {
            // Never at the expense of a sandbox the record gave that address.
            if let Some(ip) = gwbridge::existing_address(ns, g).await.filter(|ip| !have.values().any(|v| v == ip)) {
                have.insert(ns.clone(), ip);
            }
        }
        let mtu = self.underlay.mtu;
        for (ns, ip) in gwbridge::allocate(g, sandboxes, &have) {
            let key = format!("{FAILED_KEY} {}", ns.display());
            let Some(ip) = ip else {
                report.failed.insert(key, format!("no free address left in {}", g.subnet));
                continue;
            };
            if let Some(p) = self.record.gw_ports.get(&ns) {
                let up = self.nl.link(&p.host_veth).await?.is_some_and(|l| l.index == p.host_ifindex && l.up);
                if up && bridge_same && p.ip == ip && p.ifname == g.ifname && p.mtu == mtu {
                    continue;
                }
            }
            match self.plumb_gw_port(&bridge, g, &ns, ip, mtu).await {
                Ok(port) => {
                    self.record.gw_ports.insert(ns, port);
                    report.plumbed += 1;
                }
                Err(e) => {
                    report.failed.insert(key, format!("{e:#}"));
                }
            }
        }
        let gone: Vec<PathBuf> = self.record.gw_ports.keys().filter(|ns| !sandboxes.contains(*ns)).cloned().collect();
        for ns in gone {
            let host = self.record.gw_ports[&ns].host_veth.clone();
            self.nl.delete_link_named(&host).await?;
            self.record.gw_ports.remove(&ns);
            report.unplumbed += 1;
        }
        Ok(())
    }

    async fn plumb_gw_port(
        &mut self,
        bridge: &Bridge,
        g: &crate::state::Gwbridge,
        ns: &std::path::Path,
        ip: Ipv4Addr,
        mtu: u32,
    ) -> Result<gwbridge::Port> {
        if let Some(old) = self.record.gw_ports.get(ns).filter(|p| p.ifname != g.ifname) {
            // Renamed inside the sandbox: a fresh pair under the new name.
            self.nl.delete_link_named(&old.host_veth.clone()).await?;
        }
        let port = gwbridge::plumb_port(&self.nl, bridge, g, ns, ip, mtu).await?;
        // The ICC block is in place before the port carries anything.
        self.dp.attach_gwport(&port.host_veth, port.host_ifindex)?;
        self.nl.set_up(port.host_ifindex).await?;
        Ok(port)
    }

    /// No `[gwbridge]` (any more): remove the ports, the rules, and the bridge if we created it.
    async fn remove_gw(&mut self, report: &mut ReconcileReport) -> Result<()> {
        if self.record.gw_bridge.is_none() && self.record.gw_ports.is_empty() && self.record.gw_rules.is_empty() {
            return Ok(());
        }
        for p in std::mem::take(&mut self.record.gw_ports).into_values() {
            self.nl.delete_link_named(&p.host_veth).await?;
            report.unplumbed += 1;
        }
        if !self.record.gw_rules.is_empty() {
            gwbridge::nft_remove()?;
            self.record.gw_rules.clear();
        }
        if let Some(b) = self.record.gw_bridge.take() {
            if b.created {
                self.nl.delete_link_named(&b.name).await?;
            }
        }
        info!("gwbridge removed");
        Ok(())
    }
}

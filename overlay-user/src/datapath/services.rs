//! Services as the datapath holds them: each VIP of a service, on its network, becomes keys in
//! OV_SERVICES (one per port) sharing one lookup table of backend ids. Pure code: from the
//! state and what the maps hold now, compute what they should hold.
//!
//! Ids and table places are chosen so that nothing in flight breaks:
//! - a backend keeps its id while its address stays (ids are found again from the maps after a
//!   restart), so conntrack entries keep pointing at it;
//! - a changed table is written to free space and the service switched to it in one map update;
//!   the old table is freed only at the next reconcile.

use std::net::Ipv4Addr;

use anyhow::{bail, Result};
use overlay_common::{
    maps::{
        BackendInfo, EndpointInfo, EndpointKey, ServiceInfo, ServiceKey, EP_BACKEND, EP_LOCAL, EP_VIP, GW_HOST_PORTS,
        MAX_BACKENDS, MAX_MAGLEV_SLOTS, MAX_SERVICES, SCHED_MAGLEV, SCHED_RR, SCHED_SH, SCHED_WRR, SVC_PUBLISHED,
        SVC_VIA_GW,
    },
    vxlan::default_mac,
};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use super::{maglev, Contents};
use crate::state::{ClusterState, EndpointMode, PublishMode, Scheduler};

fn ip_key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// A service's table in OV_MAGLEV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub offset: u32,
    pub entries: Vec<u32>,
}

/// One VIP of a service as the CLI shows it (kept in the agent's record: names are not in the
/// maps).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub service: String,
    pub network: String,
    pub vip: Ipv4Addr,
    pub scheduler: String,
    /// "tcp/80", ...
    pub ports: Vec<String>,
    pub id: u32,
    pub table_size: u32,
    pub backends: Vec<BackendView>,
    /// A published port's entry (then `vip` is this node's address and `network` the ingress
    /// network); `None` for a VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<PublishedView>,
}

/// A published port: reached on `published`, delivered to the backends' `target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedView {
    pub protocol: String,
    pub published: u16,
    pub target: u16,
    /// "ingress" (every node, the routing mesh) or "host" (this node's task only).
    pub mode: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub endpoint: String,
    pub ip: Ipv4Addr,
    pub node: String,
    pub weight: u32,
    pub id: u32,
    /// Slots of the table it holds (its share of new connections).
    pub slots: u32,
}

fn sched(s: Scheduler) -> u8 {
    match s {
        Scheduler::Maglev => SCHED_MAGLEV,
        Scheduler::Sh => SCHED_SH,
        Scheduler::Rr => SCHED_RR,
        Scheduler::Wrr => SCHED_WRR,
    }
}

/// Lowest ids not in `used`, handed out in order.
struct Ids {
    used: FxHashSet<u32>,
    next: u32,
    max: u32,
}

impl Ids {
    fn take(&mut self, what: &str) -> Result<u32> {
        while self.used.contains(&self.next) {
            self.next += 1;
        }
        if self.next >= self.max {
            bail!("out of {what} ids ({} at most)", self.max);
        }
        self.used.insert(self.next);
        Ok(self.next)
    }
}

/// Free space of OV_MAGLEV: everything not held by a table the datapath may be reading.
struct Space {
    /// (offset, size), sorted, non-overlapping.
    held: Vec<(u32, u32)>,
}

impl Space {
    /// An even offset with room for `size` slots (tables start at even slots: two slots share
    /// an element of OV_MAGLEV).
    fn place(&mut self, size: u32) -> Result<u32> {
        let size = even(size);
        let mut at = 0u32;
        for (i, &(o, s)) in self.held.iter().enumerate() {
            if o - at >= size {
                self.held.insert(i, (at, size));
                return Ok(at);
            }
            at = at.max(o + s);
        }
        if MAX_MAGLEV_SLOTS - at < size {
            bail!(
                "the lookup tables do not fit the datapath's {MAX_MAGLEV_SLOTS} slots; lower \
                 [cluster] maglev_slots_per_backend"
            );
        }
        self.held.push((at, size));
        Ok(at)
    }
}

fn even(n: u32) -> u32 {
    n + (n & 1)
}

/// Fill the service part of `c` for `node`. `c.endpoints` must already hold the endpoints
/// (backends not plumbed on this node are missing there and are left out of the tables);
/// `current` is what the maps hold now.
pub fn add_services(state: &ClusterState, c: &mut Contents, current: &Contents) -> Result<()> {
    // What the maps say now: ids by address, service ids and tables by VIP.
    let backend_ids: FxHashMap<u32, u32> = current.backends.iter().map(|(id, b)| (b.ip, *id)).collect();
    let mut service_ids: FxHashMap<(u32, u32), ServiceInfo> = FxHashMap::default();
    let mut port_ids: FxHashMap<ServiceKey, ServiceInfo> = FxHashMap::default();
    let mut held: Vec<(u32, u32)> = Vec::new();
    for (k, s) in &current.services {
        if s.flags & SVC_PUBLISHED != 0 {
            port_ids.insert(*k, *s);
        } else {
            service_ids.insert((k.vni, k.ip), *s);
        }
        if s.size > 0 {
            held.push((s.offset, even(s.size)));
        }
    }
    held.sort_unstable();
    held.dedup();
    let mut space = Space { held };
    let mut bids = Ids { used: backend_ids.values().copied().collect(), next: 0, max: MAX_BACKENDS };
    let used = service_ids.values().chain(port_ids.values()).map(|s| s.id).collect();
    let mut sids = Ids { used, next: 0, max: MAX_SERVICES };

    for svc in state.services.values().filter(|s| s.endpoint_mode == EndpointMode::Vip) {
        for vip in &svc.vips {
            let net = &state.networks[&vip.network];
            let vkey = ip_key(vip.ip);
            c.endpoints.insert(
                EndpointKey { vni: net.vni, ip: vkey },
                EndpointInfo { mac: default_mac(vip.ip.octets()), flags: EP_VIP, ifindex: 0, vtep: 0 },
            );
            // This VIP's backends: the service's endpoints on its network that this node can reach.
            let mut members = Vec::new();
            for b in &svc.backends {
                let Some(ep) = state.endpoints.get(&b.endpoint) else { continue };
                if ep.network != vip.network {
                    continue;
                }
                let key = EndpointKey { vni: net.vni, ip: ip_key(ep.ip) };
                let Some(info) = c.endpoints.get_mut(&key) else { continue };
                info.flags |= EP_BACKEND;
                if let Some(i) = c.local_ifaces.get_mut(&info.ifindex).filter(|_| info.ifindex != 0) {
                    i.flags |= EP_BACKEND;
                }
                let id = match backend_ids.get(&key.ip) {
                    Some(id) => *id,
                    None => bids.take("backend")?,
                };
                c.backends.insert(id, BackendInfo { ip: key.ip, weight: b.weight });
                members.push((ep, b.weight, id));
            }
            // Same input order on every node: the table is built from names, never from ids.
            let named: Vec<(&str, u32)> = members.iter().map(|(ep, w, _)| (ep.name.as_str(), *w)).collect();
            // Sized from the backends listed, drained ones included: draining keeps the size.
            let listed = svc
                .backends
                .iter()
                .filter(|b| state.endpoints.get(&b.endpoint).is_some_and(|e| e.network == vip.network))
                .count();
            let ids: Vec<u32> = members.iter().map(|m| m.2).collect();
            let entries = table(svc.scheduler, &named, &ids, listed, state.maglev_slots_per_backend);
            let prev = service_ids.get(&(net.vni, vkey));
            let id = match prev {
                Some(s) => s.id,
                None => sids.take("service")?,
            };
            let size = entries.len() as u32;
            let same =
                prev.and_then(|s| current.tables.get(&s.id).filter(|t| t.offset == s.offset && t.entries == entries));
            let offset = match (same, size) {
                (Some(t), _) => t.offset,
                (None, 0) => 0,
                (None, n) => space.place(n)?,
            };
            let info = ServiceInfo { id, offset, size, scheduler: sched(svc.scheduler), flags: 0, target: 0 };
            for p in &svc.ports {
                let key =
                    ServiceKey { vni: net.vni, ip: vkey, port: p.target.to_be(), proto: p.protocol.number(), _pad: 0 };
                c.services.insert(key, info);
            }
            let slots = |id: u32| entries.iter().filter(|e| **e == id).count() as u32;
            c.views.push(ServiceView {
                service: svc.name.clone(),
                network: vip.network.clone(),
                vip: vip.ip,
                scheduler: svc.scheduler.to_string(),
                ports: svc.ports.iter().map(|p| format!("{}/{}", p.protocol.as_str(), p.target)).collect(),
                id,
                table_size: size,
                backends: members
                    .iter()
                    .map(|(ep, w, bid)| BackendView {
                        endpoint: ep.name.clone(),
                        ip: ep.ip,
                        node: ep.node.clone(),
                        weight: *w,
                        id: *bid,
                        slots: slots(*bid),
                    })
                    .collect(),
                published: None,
            });
            if size > 0 {
                c.tables.insert(id, Table { offset, entries });
            }
        }
    }
    let mut alloc = Alloc { backend_ids: &backend_ids, bids: &mut bids, sids: &mut sids, space: &mut space };
    add_published(state, c, current, &port_ids, &mut alloc)?;
    c.views.sort_by(|a, b| {
        (&a.service, &a.network, &a.published.as_ref().map(|p| p.published)).cmp(&(
            &b.service,
            &b.network,
            &b.published.as_ref().map(|p| p.published),
        ))
    });
    Ok(())
}

/// A service's lookup table from its members (names and weights, same order on every node) and
/// their backend ids; `listed` backends size a hash table (drained ones too: draining keeps it).
fn table(scheduler: Scheduler, named: &[(&str, u32)], ids: &[u32], listed: usize, slots: u32) -> Vec<u32> {
    match scheduler {
        Scheduler::Maglev | Scheduler::Sh => {
            let m = maglev::table_size(listed, slots);
            maglev::build(named, m).into_iter().map(|i| ids[i as usize]).collect()
        }
        Scheduler::Rr | Scheduler::Wrr => {
            let w: Vec<u32> =
                named.iter().map(|(_, w)| if scheduler == Scheduler::Rr { (*w > 0) as u32 } else { *w }).collect();
            maglev::wrr_sequence(&w).into_iter().map(|i| ids[i as usize]).collect()
        }
    }
}

/// Ids and table space, shared by VIPs and published ports.
struct Alloc<'a> {
    backend_ids: &'a FxHashMap<u32, u32>,
    bids: &'a mut Ids,
    sids: &'a mut Ids,
    space: &'a mut Space,
}

/// Published ports: one OV_SERVICES key each (VNI 0, address 0, the published port), with its
/// own table over the service's backends on the ingress network (ingress mode), or over the
/// task on this node (host mode: nodes without one do not answer).
fn add_published(
    state: &ClusterState,
    c: &mut Contents,
    current: &Contents,
    port_ids: &FxHashMap<ServiceKey, ServiceInfo>,
    a: &mut Alloc<'_>,
) -> Result<()> {
    let Some(net) = state.ingress_network() else { return Ok(()) };
    let me = Ipv4Addr::from(c.config.node_ip.to_ne_bytes());
    // Backends already given ids this reconcile (a VIP's on the ingress network).
    let mut given: FxHashMap<u32, u32> = c.backends.iter().map(|(id, b)| (b.ip, *id)).collect();
    for svc in state.services.values() {
        for p in svc.ports.iter().filter(|p| p.published.is_some()) {
            let published = p.published.unwrap_or_default();
            let host = p.publish_mode == PublishMode::Host;
            // Docker reaches a host-mode port's task on its docker_gwbridge address when there is one.
            let via_gw = host && state.gwbridge.is_some();
            let mut members = Vec::new();
            let mut listed = 0;
            for b in &svc.backends {
                let Some(ep) = state.endpoints.get(&b.endpoint).filter(|e| e.network == net.name) else { continue };
                let key = EndpointKey { vni: net.vni, ip: ip_key(ep.ip) };
                let Some(info) = c.endpoints.get_mut(&key) else { continue };
                if host && info.flags & EP_LOCAL == 0 {
                    continue;
                }
                let ip = if via_gw {
                    // The task's sandbox has no gwbridge port yet: it cannot be reached yet.
                    let Some(port) = ep.netns.as_ref().and_then(|ns| c.gw_ports.get(ns)) else { continue };
                    ip_key(port.ip)
                } else {
                    info.flags |= EP_BACKEND;
                    if let Some(i) = c.local_ifaces.get_mut(&info.ifindex).filter(|_| info.ifindex != 0) {
                        i.flags |= EP_BACKEND;
                    }
                    key.ip
                };
                listed += 1;
                let id = match a.backend_ids.get(&ip).or(given.get(&ip)) {
                    Some(id) => *id,
                    None => a.bids.take("backend")?,
                };
                given.insert(ip, id);
                c.backends.insert(id, BackendInfo { ip, weight: b.weight });
                members.push((ep, b.weight, id));
            }
            let named: Vec<(&str, u32)> = members.iter().map(|(ep, w, _)| (ep.name.as_str(), *w)).collect();
            let ids: Vec<u32> = members.iter().map(|m| m.2).collect();
            if host && members.is_empty() {
                continue; // no task here: this node does not answer
            }
            let entries = table(svc.scheduler, &named, &ids, listed, state.maglev_slots_per_backend);
            let key = ServiceKey { vni: 0, ip: 0, port: published.to_be(), proto: p.protocol.number(), _pad: 0 };
            let prev = port_ids.get(&key);
            let id = match prev {
                Some(s) => s.id,
                None => a.sids.take("service")?,
            };
            let size = entries.len() as u32;
            let same =
                prev.and_then(|s| current.tables.get(&s.id).filter(|t| t.offset == s.offset && t.entries == entries));
            let offset = match (same, size) {
                (Some(t), _) => t.offset,
                (None, 0) => 0,
                (None, n) => a.space.place(n)?,
            };
            let info = ServiceInfo {
                id,
                offset,
                size,
                scheduler: sched(svc.scheduler),
                flags: SVC_PUBLISHED | if via_gw { SVC_VIA_GW } else { 0 },
                target: p.target.to_be(),
            };
            if via_gw {
                c.gw.flags |= GW_HOST_PORTS;
            }
            c.services.insert(key, info);
            let slots = |id: u32| entries.iter().filter(|e| **e == id).count() as u32;
            c.views.push(ServiceView {
                service: svc.name.clone(),
                network: net.name.clone(),
                vip: me,
                scheduler: svc.scheduler.to_string(),
                ports: vec![format!("{}/{}", p.protocol.as_str(), published)],
                id,
                table_size: size,
                backends: members
                    .iter()
                    .map(|(ep, w, bid)| BackendView {
                        endpoint: ep.name.clone(),
                        ip: ep.ip,
                        node: ep.node.clone(),
                        weight: *w,
                        id: *bid,
                        slots: slots(*bid),
                    })
                    .collect(),
                published: Some(PublishedView {
                    protocol: p.protocol.as_str().to_string(),
                    published,
                    target: p.target,
                    mode: p.publish_mode.as_str().to_string(),
                }),
            });
            if size > 0 {
                c.tables.insert(id, Table { offset, entries });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_go_to_even_slots_in_free_space_only() {
        // A live table of 7 slots at 0 holds 0..8 (its last element's second half is unused).
        let mut s = Space { held: vec![(0, even(7))] };
        assert_eq!(s.place(3).unwrap(), 8, "beside the live table, at an even slot");
        assert_eq!(s.place(5).unwrap(), 12, "after the 3-slot table rounded to 4");
        // A gap between live tables is used when it fits.
        let mut s = Space { held: vec![(0, 4), (10, 4)] };
        assert_eq!(s.place(5).unwrap(), 4);
        assert_eq!(s.place(1).unwrap(), 14, "the gap is full now");
        // Past the map: refused with advice, nothing placed.
        let mut s = Space { held: vec![(0, MAX_MAGLEV_SLOTS - 2)] };
        assert!(s.place(3).unwrap_err().to_string().contains("maglev_slots_per_backend"));
    }
}

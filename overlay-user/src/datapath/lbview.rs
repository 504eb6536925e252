//! Looking inside the balancer: per-backend counters and the conntrack table, read from the
//! pins (the agent need not run), and the agent's sweep of idle conntrack entries.

use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use overlay_common::maps::{
    ct_timeout_ns, CtEntry, CtKey, LbStats, PortStats, CT_CLOSING, CT_MESH, CT_REPLY, CT_SNAT, MAP_CT, MAP_LB_STATS,
    MAP_PORT_STATS,
};
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::Datapath;

/// One tracked connection (its forward entry: client -> VIP).
#[derive(Clone, Debug, Serialize)]
pub struct TrackedFlow {
    pub proto: &'static str,
    pub client: Ipv4Addr,
    pub client_port: u16,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub backend: Ipv4Addr,
    /// The port the backend listens on (a published port's target; a VIP's port).
    pub backend_port: u16,
    pub backend_id: u32,
    /// Through a published port (the routing mesh): `vip` is this node's address.
    pub mesh: bool,
    /// "active" (TCP established or UDP) or "closing".
    pub state: &'static str,
    pub idle_seconds: u64,
}

/// Monotonic coarse clock: what bpf_ktime_get_coarse_ns reads.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn ip(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

fn flows_of(map: &Map) -> Result<Vec<TrackedFlow>> {
    let m = BpfHashMap::<_, CtKey, CtEntry>::try_from(map)?;
    let now = now_ns();
    let mut out = Vec::new();
    for kv in m.iter() {
        // An entry evicted while we walk the table ends the walk early: show what we have.
        let Ok((k, e)) = kv else { break };
        // Masqueraded gwbridge flows are not balanced: not shown here.
        if e.flags & (CT_REPLY | CT_SNAT) != 0 {
            continue;
        }
        out.push(TrackedFlow {
            proto: match k.proto {
                6 => "tcp",
                17 => "udp",
                _ => "other",
            },
            client: ip(k.src),
            client_port: u16::from_be(k.sport),
            vip: ip(k.dst),
            port: u16::from_be(k.dport),
            backend: ip(e.nat_ip),
            backend_port: if e.flags & CT_MESH != 0 { u16::from_be(e.nat_port) } else { u16::from_be(k.dport) },
            backend_id: e.backend,
            mesh: e.flags & CT_MESH != 0,
            state: if e.flags & CT_CLOSING != 0 { "closing" } else { "active" },
            idle_seconds: now.saturating_sub(e.last_seen) / 1_000_000_000,
        });
    }
    out.sort_by_key(|f| (f.vip, f.port, f.client, f.client_port));
    Ok(out)
}

fn stats_of(map: &Map, ids: &[u32]) -> Result<FxHashMap<u32, LbStats>> {
    let arr = Array::<_, LbStats>::try_from(map)?;
    let mut out = FxHashMap::default();
    for id in ids {
        out.insert(*id, arr.get(id, 0)?);
    }
    Ok(out)
}

fn open_pin(pin_dir: &Path, name: &str) -> Result<MapData> {
    let p = pin_dir.join("maps").join(name);
    MapData::from_pin(&p).with_context(|| format!("opening {} (is the agent set up on this node?)", p.display()))
}

/// Tracked connections, from the pins.
pub fn flows_from_pins(pin_dir: &Path) -> Result<Vec<TrackedFlow>> {
    flows_of(&Map::LruHashMap(open_pin(pin_dir, MAP_CT)?))
}

/// Empty a node's conntrack table through its pin; returns how many entries were removed.
/// For tests and operators: every flow must survive it (the hash finds its backend again).
pub fn flush_conntrack_pins(pin_dir: &Path) -> Result<usize> {
    remove_where(&mut Map::LruHashMap(open_pin(pin_dir, MAP_CT)?), |_, _| true)
}

/// Remove the conntrack entries `remove` picks; returns how many. Entries the datapath evicts
/// meanwhile are simply gone already.
fn remove_where(map: &mut Map, remove: impl Fn(&CtKey, &CtEntry) -> bool) -> Result<usize> {
    let mut m = BpfHashMap::<_, CtKey, CtEntry>::try_from(map)?;
    let doomed: Vec<CtKey> = m.iter().filter_map(|kv| kv.ok()).filter(|(k, e)| remove(k, e)).map(|(k, _)| k).collect();
    for k in &doomed {
        let _ = m.remove(k);
    }
    Ok(doomed.len())
}

/// Counters of these backend ids, from the pins.
pub fn lb_stats_from_pins(pin_dir: &Path, ids: &[u32]) -> Result<FxHashMap<u32, LbStats>> {
    stats_of(&Map::Array(open_pin(pin_dir, MAP_LB_STATS)?), ids)
}

/// Counters of these published ports (service ids), from the pins; a port without an entry
/// (not published on this node) is left out.
pub fn port_stats_from_pins(pin_dir: &Path, ids: &[u32]) -> Result<FxHashMap<u32, PortStats>> {
    let map = Map::HashMap(open_pin(pin_dir, MAP_PORT_STATS)?);
    let m = BpfHashMap::<_, u32, PortStats>::try_from(&map)?;
    Ok(ids.iter().filter_map(|id| m.get(id, 0).ok().map(|s| (*id, s))).collect())
}

impl Datapath {
    pub fn flows(&self) -> Result<Vec<TrackedFlow>> {
        flows_of(self.ebpf.map(MAP_CT).context("no conntrack map")?)
    }

    pub fn lb_stats(&self, ids: &[u32]) -> Result<FxHashMap<u32, LbStats>> {
        stats_of(self.ebpf.map(MAP_LB_STATS).context("no backend counters")?, ids)
    }

    /// Remove conntrack entries idle past their timeout; returns how many. Hygiene only (the
    /// LRU map evicts on its own when full): a removed flow that sends again finds its backend
    /// again from the hash.
    pub fn sweep_conntrack(&mut self) -> Result<usize> {
        let now = now_ns();
        remove_where(self.ebpf.map_mut(MAP_CT).context("no conntrack map")?, |k, e| {
            now.saturating_sub(e.last_seen) > ct_timeout_ns(k.proto, e.flags)
        })
    }

    /// Empty the conntrack table (tests: a flow must survive losing its entry).
    pub fn flush_conntrack(&mut self) -> Result<usize> {
        remove_where(self.ebpf.map_mut(MAP_CT).context("no conntrack map")?, |_, _| true)
    }
}

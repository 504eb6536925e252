//! Map contents: read what the maps hold, and bring them to what the agent wants as a diff.

use std::{
    hash::Hash,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, Map},
    Pod,
};
use overlay_common::maps::*;
use rustc_hash::{FxHashMap, FxHashSet};

use super::{
    services::{ServiceView, Table},
    Datapath,
};

/// Everything the datapath maps hold, as the agent computes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contents {
    pub config: Config,
    pub networks: FxHashMap<u32, NetworkInfo>,
    pub endpoints: FxHashMap<EndpointKey, EndpointInfo>,
    pub local_ifaces: FxHashMap<u32, LocalIface>,
    pub nodes: FxHashMap<u32, NodeInfo>,
    pub nexthops: FxHashMap<u32, NextHop>,
    pub services: FxHashMap<ServiceKey, ServiceInfo>,
    pub backends: FxHashMap<u32, BackendInfo>,
    /// Lookup tables by service id. Not read back after a restart: each is then rewritten to
    /// free space (tables are deterministic, so flows keep their backends).
    pub tables: FxHashMap<u32, Table>,
    /// The services with names, for the CLI (not in the maps).
    pub views: Vec<ServiceView>,
    /// docker_gwbridge (OV_GWBRIDGE); zero without one.
    pub gw: GwConfig,
    /// The gwbridge interfaces of local sandboxes, by sandbox (in the maps as OV_LOCAL_IFACES
    /// and OV_ENDPOINTS entries under `GW_VNI`; here for host-mode ports to find their task's).
    pub gw_ports: std::collections::BTreeMap<std::path::PathBuf, crate::gwbridge::Port>,
}

impl Datapath {
    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    /// Read what the maps hold now (the starting point of the first diff after a restart).
    pub fn read_contents(&mut self) -> Result<Contents> {
        let config = Array::<_, Config>::try_from(self.map_mut(MAP_CONFIG)?)?.get(&0, 0)?;
        let networks = read_hash::<u32, NetworkInfo>(self.map_mut(MAP_NETWORKS)?)?;
        let endpoints = read_hash::<EndpointKey, EndpointInfo>(self.map_mut(MAP_ENDPOINTS)?)?;
        let local_ifaces = read_hash::<u32, LocalIface>(self.map_mut(MAP_LOCAL_IFACES)?)?;
        let nodes = read_hash::<u32, NodeInfo>(self.map_mut(MAP_NODES)?)?;
        let nexthops = read_hash::<u32, NextHop>(self.map_mut(MAP_NEXTHOPS)?)?;
        let services = read_hash::<ServiceKey, ServiceInfo>(self.map_mut(MAP_SERVICES)?)?;
        let backends = read_hash::<u32, BackendInfo>(self.map_mut(MAP_BACKENDS)?)?;
        let gw = Array::<_, GwConfig>::try_from(self.map_mut(MAP_GWBRIDGE)?)?.get(&0, 0)?;
        Ok(Contents {
            gw,
            gw_ports: Default::default(),
            config,
            networks,
            endpoints,
            local_ifaces,
            nodes,
            nexthops,
            services,
            backends,
            tables: FxHashMap::default(),
            views: Vec::new(),
        })
    }

    /// Bring the maps from `current` to `desired`. Removals first: the entries are going
    /// anyway, and a map at its capacity then has room for the additions; a moved endpoint is
    /// one in-place update. Returns the number of writes.
    pub fn apply(&mut self, current: &Contents, desired: &Contents) -> Result<usize> {
        let mut writes = 0;
        if current.config != desired.config {
            Array::<_, Config>::try_from(self.map_mut(MAP_CONFIG)?)?.set(0, desired.config, 0)?;
            writes += 1;
        }
        if current.gw != desired.gw {
            Array::<_, GwConfig>::try_from(self.map_mut(MAP_GWBRIDGE)?)?.set(0, desired.gw, 0)?;
            writes += 1;
        }
        // Nodes before endpoints: an endpoint of a new node is never seen before its node is.
        writes += diff_hash(self.map_mut(MAP_NODES)?, &current.nodes, &desired.nodes, MAP_NODES)?;
        writes += diff_hash(self.map_mut(MAP_NEXTHOPS)?, &current.nexthops, &desired.nexthops, MAP_NEXTHOPS)?;
        writes += diff_hash(self.map_mut(MAP_NETWORKS)?, &current.networks, &desired.networks, MAP_NETWORKS)?;
        writes +=
            diff_hash(self.map_mut(MAP_LOCAL_IFACES)?, &current.local_ifaces, &desired.local_ifaces, MAP_LOCAL_IFACES)?;
        // Services: backends, then tables, then the keys that point at them, then the VIPs
        // that lead there; removals in the reverse order. A packet never finds a VIP without
        // its service, a service without its table, or a table entry without its backend.
        let new_backends: Vec<u32> =
            desired.backends.keys().filter(|id| !current.backends.contains_key(id)).copied().collect();
        self.zero_lb_stats(&new_backends)?;
        writes += upsert_hash(self.map_mut(MAP_BACKENDS)?, &current.backends, &desired.backends, MAP_BACKENDS)?;
        for (id, t) in &desired.tables {
            if current.tables.get(id) != Some(t) {
                write_table(self.map_mut(MAP_MAGLEV)?, t)?;
                writes += 1;
            }
        }
        let (old_ports, new_ports) = (published_ids(current), published_ids(desired));
        self.port_stats(&new_ports, &old_ports, true)?;
        writes += upsert_hash(self.map_mut(MAP_SERVICES)?, &current.services, &desired.services, MAP_SERVICES)?;
        writes += diff_hash(self.map_mut(MAP_ENDPOINTS)?, &current.endpoints, &desired.endpoints, MAP_ENDPOINTS)?;
        writes += remove_hash(self.map_mut(MAP_SERVICES)?, &current.services, &desired.services, MAP_SERVICES)?;
        writes += remove_hash(self.map_mut(MAP_BACKENDS)?, &current.backends, &desired.backends, MAP_BACKENDS)?;
        self.port_stats(&old_ports, &new_ports, false)?;
        Ok(writes)
    }

    /// Published ports' counters: an entry (from zero) for each port in `a` and not in `b`
    /// (`add`), or removed.
    fn port_stats(&mut self, a: &FxHashSet<u32>, b: &FxHashSet<u32>, add: bool) -> Result<()> {
        let mut m = BpfHashMap::<_, u32, PortStats>::try_from(self.map_mut(MAP_PORT_STATS)?)?;
        for id in a.difference(b) {
            let r = if add { m.insert(id, PortStats::default(), 0) } else { m.remove(id) };
            match r {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("counters of published port {id} ({MAP_PORT_STATS})")),
            }
        }
        Ok(())
    }

    /// A backend id handed to a new backend starts its counters from zero.
    fn zero_lb_stats(&mut self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut m = Array::<_, LbStats>::try_from(self.map_mut(MAP_LB_STATS)?)?;
        for id in ids {
            m.set(*id, LbStats::default(), 0).with_context(|| format!("zeroing the counters of backend {id}"))?;
        }
        Ok(())
    }
}

impl Datapath {
    /// Only the next-hop cache, for route and neighbour changes between reconciles.
    pub fn apply_nexthops(
        &mut self,
        current: &FxHashMap<u32, NextHop>,
        desired: &FxHashMap<u32, NextHop>,
    ) -> Result<usize> {
        diff_hash(self.map_mut(MAP_NEXTHOPS)?, current, desired, MAP_NEXTHOPS)
    }
}

/// The service ids of published ports (each has its counters in OV_PORT_STATS).
fn published_ids(c: &Contents) -> FxHashSet<u32> {
    c.services.values().filter(|s| s.flags & SVC_PUBLISHED != 0).map(|s| s.id).collect()
}

fn read_hash<K: Pod + Eq + Hash, V: Pod>(map: &mut Map) -> Result<FxHashMap<K, V>> {
    let m = BpfHashMap::<_, K, V>::try_from(map)?;
    let mut out = FxHashMap::default();
    for kv in m.iter() {
        let (k, v) = kv?;
        out.insert(k, v);
    }
    Ok(out)
}

fn upsert_hash<K: Pod + Eq + Hash, V: Pod + PartialEq>(
    map: &mut Map,
    current: &FxHashMap<K, V>,
    desired: &FxHashMap<K, V>,
    name: &str,
) -> Result<usize> {
    let mut m = BpfHashMap::<_, K, V>::try_from(map)?;
    let mut writes = 0;
    for (k, v) in desired {
        if current.get(k) != Some(v) {
            m.insert(k, v, 0).with_context(|| format!("writing {name}"))?;
            writes += 1;
        }
    }
    Ok(writes)
}

fn remove_hash<K: Pod + Eq + Hash, V: Pod>(
    map: &mut Map,
    current: &FxHashMap<K, V>,
    desired: &FxHashMap<K, V>,
    name: &str,
) -> Result<usize> {
    let mut m = BpfHashMap::<_, K, V>::try_from(map)?;
    let mut writes = 0;
    for k in current.keys() {
        if !desired.contains_key(k) {
            match m.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("removing from {name}")),
            }
            writes += 1;
        }
    }
    Ok(writes)
}

/// Write a table with BPF_MAP_UPDATE_BATCH: one system call for a table of thousands of slots
/// (one update each would take seconds for 10,000 services).
fn write_table(map: &mut Map, t: &Table) -> Result<()> {
    let fd = match map {
        Map::Array(d) => d.fd().as_fd().as_raw_fd(),
        _ => bail!("{MAP_MAGLEV} is not an array"),
    };
    if !t.offset.is_multiple_of(2) {
        bail!("table at odd slot {}: tables start at even slots", t.offset);
    }
    // Two slots an element; an odd-sized table's last element has an unused half.
    let values: Vec<MaglevPair> = t.entries.chunks(2).map(|c| [c[0], c.get(1).copied().unwrap_or(0)]).collect();
    let first = t.offset / 2;
    let keys: Vec<u32> = (first..first + values.len() as u32).collect();
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    for (k, v) in keys.chunks(1 << 16).zip(values.chunks(1 << 16)) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: `attr` points at `keys` and `values`, alive for the call; the kernel reads
        // `count` of each.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("writing {} elements of {MAP_MAGLEV} from element {}", k.len(), k[0]));
        }
    }
    Ok(())
}

/// Removals first (a map at its capacity then has room for the additions), then writes.
fn diff_hash<K: Pod + Eq + Hash, V: Pod + PartialEq>(
    map: &mut Map,
    current: &FxHashMap<K, V>,
    desired: &FxHashMap<K, V>,
    name: &str,
) -> Result<usize> {
    Ok(remove_hash(map, current, desired, name)? + upsert_hash(map, current, desired, name)?)
}

impl Contents {
    /// How many map writes `Datapath::apply` would make to turn `self` into `desired`, without
    /// touching a map (`overlay run --dry-run`).
    pub fn count_changes(&self, desired: &Contents) -> usize {
        fn hash<K: Eq + Hash, V: PartialEq>(a: &FxHashMap<K, V>, b: &FxHashMap<K, V>) -> usize {
            a.keys().filter(|k| !b.contains_key(*k)).count() + b.iter().filter(|(k, v)| a.get(*k) != Some(*v)).count()
        }
        (self.config != desired.config) as usize
            + (self.gw != desired.gw) as usize
            + hash(&self.nodes, &desired.nodes)
            + hash(&self.nexthops, &desired.nexthops)
            + hash(&self.networks, &desired.networks)
            + hash(&self.local_ifaces, &desired.local_ifaces)
            + hash(&self.backends, &desired.backends)
            + desired.tables.iter().filter(|(id, t)| self.tables.get(*id) != Some(*t)).count()
            + hash(&self.services, &desired.services)
            + hash(&self.endpoints, &desired.endpoints)
    }
}

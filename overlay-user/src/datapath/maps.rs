//! Map contents: read what the maps hold, and bring them to what the agent wants as a diff.

use std::hash::Hash;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, Map},
    Pod,
};
use overlay_common::maps::*;
use rustc_hash::FxHashMap;

use super::Datapath;

/// Everything the datapath maps hold, as the agent computes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contents {
    pub config: Config,
    pub networks: FxHashMap<u32, NetworkInfo>,
    pub endpoints: FxHashMap<EndpointKey, EndpointInfo>,
    pub local_ifaces: FxHashMap<u32, LocalIface>,
    pub nodes: FxHashMap<u32, NodeInfo>,
    pub nexthops: FxHashMap<u32, NextHop>,
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
        Ok(Contents { config, networks, endpoints, local_ifaces, nodes, nexthops })
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
        // Nodes before endpoints: an endpoint of a new node is never seen before its node is.
        writes += diff_hash(self.map_mut(MAP_NODES)?, &current.nodes, &desired.nodes, MAP_NODES)?;
        writes += diff_hash(self.map_mut(MAP_NEXTHOPS)?, &current.nexthops, &desired.nexthops, MAP_NEXTHOPS)?;
        writes += diff_hash(self.map_mut(MAP_NETWORKS)?, &current.networks, &desired.networks, MAP_NETWORKS)?;
        writes +=
            diff_hash(self.map_mut(MAP_LOCAL_IFACES)?, &current.local_ifaces, &desired.local_ifaces, MAP_LOCAL_IFACES)?;
        writes += diff_hash(self.map_mut(MAP_ENDPOINTS)?, &current.endpoints, &desired.endpoints, MAP_ENDPOINTS)?;
        Ok(writes)
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

fn read_hash<K: Pod + Eq + Hash, V: Pod>(map: &mut Map) -> Result<FxHashMap<K, V>> {
    let m = BpfHashMap::<_, K, V>::try_from(map)?;
    let mut out = FxHashMap::default();
    for kv in m.iter() {
        let (k, v) = kv?;
        out.insert(k, v);
    }
    Ok(out)
}

fn diff_hash<K: Pod + Eq + Hash, V: Pod + PartialEq>(
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
    for (k, v) in desired {
        if current.get(k) != Some(v) {
            m.insert(k, v, 0).with_context(|| format!("writing {name}"))?;
            writes += 1;
        }
    }
    Ok(writes)
}

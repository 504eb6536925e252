//! `[gwbridge]`: Docker's docker_gwbridge. Each node has a local bridge (the same subnet on every
//! node, as in Docker) and every local container an interface on it for traffic leaving the
//! cluster. Its addresses never travel between nodes, so they need no cluster-wide allocation.

use std::net::Ipv4Addr;

use super::{
    error::Problems,
    raw::RawGwbridge,
    values::{parse_ipv4, parse_subnet, valid_ifname},
    Endpoint, Gwbridge, Network, Node,
};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeMap;

pub const DEFAULT_NAME: &str = "docker_gwbridge";
pub const DEFAULT_SUBNET: &str = "172.18.0.0/16";
pub const DEFAULT_IFNAME: &str = "eth1";

const ENTRY: &str = "gwbridge";

pub(super) fn gwbridge(
    raw: Option<&RawGwbridge>,
    nodes: &BTreeMap<String, Node>,
    networks: &BTreeMap<String, Network>,
    p: &mut Problems,
) -> Option<Gwbridge> {
    let raw = raw?;
    let before = p.len();
    let name = raw.name.clone().unwrap_or_else(|| DEFAULT_NAME.to_string());
    if let Err(e) = valid_ifname(&name) {
        p.add(ENTRY, "name", e);
    }
    let ifname = raw.ifname.clone().unwrap_or_else(|| DEFAULT_IFNAME.to_string());
    if let Err(e) = valid_ifname(&ifname) {
        p.add(ENTRY, "ifname", e);
    }
    // parse_subnet allows /8../30: room for the gateway and a container at least.
    let subnet = match parse_subnet(raw.subnet.as_deref().unwrap_or(DEFAULT_SUBNET)) {
        Ok(s) => Some(s),
        Err(e) => {
            p.add(ENTRY, "subnet", e);
            None
        }
    };
    if let Some(s) = subnet {
        // A container's route to an overlay network, or the node's to another node, would be
        // ambiguous.
        for n in networks.values().filter(|n| n.subnet.overlaps(s)) {
            p.add(ENTRY, "subnet", format!("{s} overlaps subnet {} of network \"{}\"", n.subnet, n.name));
        }
        for n in nodes.values().filter(|n| s.contains(n.address)) {
            p.add(ENTRY, "subnet", format!("{s} contains {}, the address of node \"{}\"", n.address, n.name));
        }
    }
    let gateway = match (raw.gateway.as_deref().map(parse_ipv4), subnet) {
        (Some(Err(e)), _) => {
            p.add(ENTRY, "gateway", e);
            None
        }
        (Some(Ok(g)), Some(s)) if !s.contains(g) || g == s.addr || g == s.broadcast() => {
            p.add(ENTRY, "gateway", format!("{g} is not a host address of subnet {s}"));
            None
        }
        (Some(Ok(g)), _) => Some(g),
        (None, Some(s)) => s.first_host(),
        (None, None) => None,
    };
    let (Some(subnet), Some(gateway), true) = (subnet, gateway, p.len() == before) else { return None };
    Some(Gwbridge {
        name,
        subnet,
        gateway,
        ifname,
        icc: raw.icc.unwrap_or(false),
        masquerade: raw.masquerade.unwrap_or(true),
    })
}

/// The gwbridge interface takes `ifname` in every sandbox of a local endpoint: no endpoint may
/// use that name there. Every sandbox of a node needs an address of the subnet.
pub(super) fn check_endpoints(g: &Gwbridge, endpoints: &FxHashMap<String, Endpoint>, p: &mut Problems) {
    let mut sandboxes: FxHashMap<&str, FxHashSet<&std::path::Path>> = FxHashMap::default();
    let mut names: Vec<&Endpoint> = endpoints.values().filter(|e| e.ifname == g.ifname).collect();
    names.sort_by(|a, b| a.name.cmp(&b.name));
    for e in names {
        p.add(
            format!("endpoints \"{}\"", e.name),
            "ifname",
            format!("`{}` is the gwbridge interface's name ([gwbridge] ifname) in every container", g.ifname),
        );
    }
    for e in endpoints.values() {
        if let Some(ns) = &e.netns {
            sandboxes.entry(e.node.as_str()).or_default().insert(ns.as_path());
        }
    }
    let room = g.host_addresses();
    let mut full: Vec<(&str, usize)> =
        sandboxes.iter().map(|(n, s)| (*n, s.len())).filter(|(_, n)| *n as u64 > room).collect();
    full.sort();
    for (node, n) in full {
        p.add(ENTRY, "subnet", format!("{} has {room} addresses for containers; node \"{node}\" has {n}", g.subnet));
    }
}

impl Gwbridge {
    /// Addresses a container can get: the subnet's hosts but the gateway.
    pub fn host_addresses(&self) -> u64 {
        (1u64 << (32 - self.subnet.prefix)).saturating_sub(3)
    }
    /// Is `ip` one a container may be given?
    pub fn assignable(&self, ip: Ipv4Addr) -> bool {
        self.subnet.contains(ip) && ip != self.subnet.addr && ip != self.subnet.broadcast() && ip != self.gateway
    }
}

//! Validation: raw tables in, a `ClusterState` out, or every problem at once. One function per
//! section; each checks its own fields and the references to the sections before it.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use overlay_common::{
    maps::{MAX_ENDPOINTS, MAX_LOCAL_IFACES, MAX_NETWORKS},
    vxlan::{default_mac, DEFAULT_PORT, MAX_VNI},
};
use rustc_hash::FxHashMap;

use super::{
    error::{entry_name, Problem, Problems},
    raw::{RawCluster, RawEndpoint, RawNetwork, RawNode, RawRefs},
    services,
    values::*,
    ClusterState, Endpoint, Network, Node, Service,
};

pub(super) fn validate(raw: RawRefs<'_>) -> Result<ClusterState, Vec<Problem>> {
    let mut p = Problems::default();
    let vxlan_port = cluster(raw.cluster, &mut p);
    let maglev_slots_per_backend = services::slots_per_backend(raw.cluster, &mut p);
    let nodes = nodes(&raw.nodes, &mut p);
    let networks = networks(&raw.networks, &mut p);
    let endpoints = endpoints(&raw, &nodes, &networks, &mut p);
    let gwbridge = super::gwbridge::gwbridge(raw.gwbridge, &nodes, &networks, &mut p);
    let state = ClusterState {
        vxlan_port,
        nodes,
        networks,
        endpoints,
        services: BTreeMap::new(),
        maglev_slots_per_backend,
        gwbridge,
    };
    finish(&raw, state, p)
}

/// What depends on the endpoints as a whole: services (their backends and VIPs), the
/// gwbridge's interface name, capacities.
fn finish(raw: &RawRefs<'_>, mut state: ClusterState, mut p: Problems) -> Result<ClusterState, Vec<Problem>> {
    state.services = services::services(raw, state.vxlan_port, &state.nodes, &state.networks, &state.endpoints, &mut p);
    if let Some(g) = &state.gwbridge {
        super::gwbridge::check_endpoints(g, &state.endpoints, &mut p);
    }
    capacity(&state, &mut p);
    let ingress = state.ingress_network().map(|n| n.name.as_str());
    let published_backends = |s: &Service| services::on_ingress(&s.backends, &state.endpoints, ingress).count();
    services::capacity(&state.services, state.maglev_slots_per_backend, published_backends, &mut p);
    p.into_result(state)
}

/// Validation after a change that touched endpoints only, from the state validated before it:
/// only the changed endpoints are checked, against indexes of the others (whose checks depend
/// on nothing that changed); then everything that depends on the endpoints as a whole is
/// checked as `validate` does. `None` when a problem is found: the caller validates in full, so
/// problems are reported exactly as for a file. The result equals `validate`'s (tested).
pub(super) fn validate_endpoint_change(
    prev: &ClusterState,
    changed: &[&str],
    raw: &RawRefs<'_>,
    put: &[&RawEndpoint],
) -> Option<ClusterState> {
    let mut state = prev.clone();
    for name in changed {
        state.endpoints.remove(*name);
    }
    let mut p = Problems::default();
    let fresh: Vec<Endpoint> = {
        let cap = state.endpoints.len() + put.len();
        let mut idx = Index::with_capacity(cap);
        for e in state.endpoints.values() {
            idx.ips.insert((e.network.as_str(), e.ip), e.name.as_str());
            idx.macs.insert((e.network.as_str(), e.mac), e.name.as_str());
            if let Some(ns) = e.netns.as_deref().and_then(|n| n.to_str()) {
                idx.sandboxes.insert((e.node.as_str(), ns, e.ifname.as_str()), e.name.as_str());
            }
        }
        let node_of_addr: FxHashMap<Ipv4Addr, &str> =
            state.nodes.values().map(|n| (n.address, n.name.as_str())).collect();
        let ctx = Ctx { raw, nodes: &state.nodes, networks: &state.networks, node_of_addr: &node_of_addr };
        put.iter().enumerate().filter_map(|(i, e)| check_endpoint(&ctx, i, e, false, &mut idx, &mut p)).collect()
    };
    if p.len() > 0 {
        return None;
    }
    for e in fresh {
        state.endpoints.insert(e.name.clone(), e);
    }
    finish(raw, state, p).ok()
}

/// Uniqueness indexes of the endpoints checked so far. Keys borrow (the state or the raw
/// objects): this runs for every endpoint of large clusters.
struct Index<'a> {
    ips: FxHashMap<(&'a str, Ipv4Addr), &'a str>,
    macs: FxHashMap<(&'a str, [u8; 6]), &'a str>,
    sandboxes: FxHashMap<(&'a str, &'a str, &'a str), &'a str>,
}

impl Index<'_> {
    fn with_capacity(cap: usize) -> Self {
        Self {
            ips: FxHashMap::with_capacity_and_hasher(cap, Default::default()),
            macs: FxHashMap::with_capacity_and_hasher(cap, Default::default()),
            sandboxes: FxHashMap::default(),
        }
    }
}

/// What an endpoint is checked against.
struct Ctx<'r, 'a> {
    raw: &'r RawRefs<'a>,
    nodes: &'r BTreeMap<String, Node>,
    networks: &'r BTreeMap<String, Network>,
    node_of_addr: &'r FxHashMap<Ipv4Addr, &'r str>,
}

fn cluster(c: Option<&RawCluster>, p: &mut Problems) -> u16 {
    match c.and_then(|c| c.vxlan_port) {
        None => DEFAULT_PORT,
        Some(v) if (1..=65535).contains(&v) => v as u16,
        Some(v) => {
            p.add("cluster", "vxlan_port", format!("{v} is not a UDP port (1..=65535)"));
            DEFAULT_PORT
        }
    }
}

fn nodes(raw: &[&RawNode], p: &mut Problems) -> BTreeMap<String, Node> {
    if raw.is_empty() {
        p.add("nodes", "name", "the state names no nodes (is the file empty or cut short?)");
    }
    let mut nodes = BTreeMap::new();
    let mut addrs: FxHashMap<Ipv4Addr, &str> = FxHashMap::default();
    for (i, n) in raw.iter().enumerate() {
        let entry = entry_name("nodes", i, &n.name);
        let before = p.len();
        if let Err(e) = valid_node_name(&n.name) {
            p.add(&entry, "name", e);
        } else if nodes.contains_key(&n.name) {
            p.add(&entry, "name", "duplicate node name");
        }
        let address = match parse_unicast(&n.address) {
            Ok(a) => Some(a),
            Err(e) => {
                p.add(&entry, "address", e);
                None
            }
        };
        if let Some(a) = address {
            if let Some(other) = addrs.insert(a, &n.name) {
                p.add(&entry, "address", format!("{a} is already the address of node \"{other}\""));
            }
        }
        if let (Some(address), true) = (address, p.len() == before) {
            nodes.insert(n.name.clone(), Node { name: n.name.clone(), address });
        }
    }
    nodes
}

fn networks(raw: &[&RawNetwork], p: &mut Problems) -> BTreeMap<String, Network> {
    let mut networks = BTreeMap::new();
    let mut vnis: FxHashMap<u32, &str> = FxHashMap::default();
    let mut ingress_first: Option<&str> = None;
    for (i, n) in raw.iter().enumerate() {
        let entry = entry_name("networks", i, &n.name);
        let before = p.len();
        if n.name.is_empty() {
            p.add(&entry, "name", "must not be empty");
        } else if networks.contains_key(&n.name) {
            p.add(&entry, "name", "duplicate network name");
        }
        let ingress = n.ingress == Some(true);
        if ingress {
            // Published ports are looked up by port alone: two meshes could not tell their
            // traffic apart.
            match ingress_first {
                Some(first) => p.add(
                    &entry,
                    "ingress",
                    format!("network \"{first}\" is already the ingress network; a cluster has one"),
                ),
                None => ingress_first = Some(&n.name),
            }
        }
        let vni = if (1..=MAX_VNI as i64).contains(&n.vni) {
            let vni = n.vni as u32;
            if let Some(other) = vnis.insert(vni, &n.name) {
                p.add(&entry, "vni", format!("{vni} is already used by network \"{other}\""));
            }
            Some(vni)
        } else {
            p.add(&entry, "vni", format!("{} is out of range (1..={MAX_VNI})", n.vni));
            None
        };
        let subnet = parse_subnet(&n.subnet).map_err(|e| p.add(&entry, "subnet", e)).ok();
        let gateway = match (n.gateway.as_deref().map(parse_ipv4), subnet) {
            (Some(Err(e)), _) => {
                p.add(&entry, "gateway", e);
                None
            }
            (Some(Ok(g)), Some(s)) if !s.contains(g) || g == s.addr || g == s.broadcast() => {
                p.add(&entry, "gateway", format!("{g} is not a host address of subnet {s}"));
                None
            }
            (Some(Ok(g)), _) => Some(g),
            // The ingress network's gateway is answered on every node (the mesh's next hop), so
            // it needs one; Docker's default is the subnet's first host address.
            (None, Some(s)) if ingress => match s.first_host() {
                Some(g) => Some(g),
                None => {
                    p.add(&entry, "subnet", format!("{s} has no host address for the ingress network's gateway"));
                    None
                }
            },
            (None, _) => None,
        };
        let mtu = match n.mtu {
            None => None,
            Some(m) if (68..=65485).contains(&m) => Some(m as u32),
            Some(m) => {
                p.add(&entry, "mtu", format!("{m} is out of range (68..=65485)"));
                None
            }
        };
        if let (Some(vni), Some(subnet), true) = (vni, subnet, p.len() == before) {
            networks.insert(n.name.clone(), Network { name: n.name.clone(), vni, subnet, gateway, mtu, ingress });
        }
    }
    overlapping_subnets(&networks, p);
    networks
}

/// Docker refuses a network whose pool overlaps another's ("Pool overlaps with other one on this
/// address space"): an address would be ambiguous in every container on both.
fn overlapping_subnets(networks: &BTreeMap<String, Network>, p: &mut Problems) {
    let mut by_start: Vec<&Network> = networks.values().collect();
    by_start.sort_by_key(|n| (u32::from(n.subnet.addr), n.subnet.prefix));
    // CIDR blocks either nest or are disjoint: comparing each with the widest block still open suffices.
    let mut open: Option<&Network> = None;
    for n in by_start {
        match open {
            Some(o) if o.subnet.overlaps(n.subnet) => p.add(
                format!("networks \"{}\"", n.name),
                "subnet",
                format!("{} overlaps subnet {} of network \"{}\"", n.subnet, o.subnet, o.name),
            ),
            _ => open = Some(n),
        }
    }
}

fn endpoints(
    raw: &RawRefs<'_>,
    nodes: &BTreeMap<String, Node>,
    networks: &BTreeMap<String, Network>,
    p: &mut Problems,
) -> FxHashMap<String, Endpoint> {
    let node_of_addr: FxHashMap<Ipv4Addr, &str> = nodes.values().map(|n| (n.address, n.name.as_str())).collect();
    let mut endpoints: FxHashMap<String, Endpoint> =
        FxHashMap::with_capacity_and_hasher(raw.endpoints.len(), Default::default());
    let mut idx = Index::with_capacity(raw.endpoints.len());
    let ctx = Ctx { raw, nodes, networks, node_of_addr: &node_of_addr };
    for (i, e) in raw.endpoints.iter().enumerate() {
        let dup = endpoints.contains_key(&e.name);
        if let Some(ep) = check_endpoint(&ctx, i, e, dup, &mut idx, p) {
            endpoints.insert(e.name.clone(), ep);
        }
    }
    endpoints
}

/// One endpoint's own checks and its uniqueness against those in `idx` (to which it is added).
/// `dup`: its name is taken already. `None` when it has a problem.
fn check_endpoint<'a>(
    ctx: &Ctx<'_, 'a>,
    i: usize,
    e: &'a RawEndpoint,
    dup: bool,
    idx: &mut Index<'a>,
    p: &mut Problems,
) -> Option<Endpoint> {
    // Built only when there is something to report.
    let entry = || entry_name("endpoints", i, &e.name);
    let before = p.len();
    if e.name.is_empty() {
        p.add(entry(), "name", "must not be empty");
    } else if dup {
        p.add(entry(), "name", "duplicate endpoint name");
    }
    let network = ctx.networks.get(&e.network);
    if network.is_none() {
        let known =
            if ctx.raw.networks.iter().any(|n| n.name == e.network) { " (that network is invalid)" } else { "" };
        p.add(entry(), "network", format!("unknown network \"{}\"{known}", e.network));
    }
    if !ctx.nodes.contains_key(&e.node) {
        let known = if ctx.raw.nodes.iter().any(|n| n.name == e.node) { " (that node is invalid)" } else { "" };
        p.add(entry(), "node", format!("unknown node \"{}\"{known}", e.node));
    }
    let ip = parse_ipv4(&e.ip).map_err(|err| p.add(entry(), "ip", err)).ok();
    if let (Some(ip), Some(net)) = (ip, network) {
        if let Err(why) = endpoint_ip(ip, net, ctx.node_of_addr) {
            p.add(entry(), "ip", why);
        } else if let Some(other) = idx.ips.insert((e.network.as_str(), ip), e.name.as_str()) {
            p.add(entry(), "ip", format!("{ip} is already used by endpoint \"{other}\" on network \"{}\"", net.name));
        }
    }
    let mac = match (&e.mac, ip) {
        (Some(m), _) => parse_mac(m).map_err(|err| p.add(entry(), "mac", err)).ok(),
        (None, Some(ip)) => Some(default_mac(ip.octets())),
        (None, None) => None,
    };
    if let (Some(mac), Some(net)) = (mac, network) {
        if let Some(other) = idx.macs.insert((e.network.as_str(), mac), e.name.as_str()) {
            let m = format_mac(&mac);
            p.add(entry(), "mac", format!("{m} is already used by endpoint \"{other}\" on network \"{}\"", net.name));
        }
    }
    let netns = match e.netns.as_deref() {
        Some(s) if !s.starts_with('/') => {
            p.add(entry(), "netns", format!("`{s}` must be an absolute path"));
            None
        }
        other => other.map(PathBuf::from),
    };
    let ifname = e.ifname.as_deref().unwrap_or("eth0");
    if let Err(err) = valid_ifname(ifname) {
        p.add(entry(), "ifname", err);
    }
    if let Some(ns) = e.netns.as_deref() {
        if let Some(other) = idx.sandboxes.insert((e.node.as_str(), ns, ifname), e.name.as_str()) {
            p.add(entry(), "ifname", format!("`{ifname}` in {ns} is already endpoint \"{other}\"'s interface"));
        }
    }
    match (ip, mac, p.len() == before) {
        (Some(ip), Some(mac), true) => Some(endpoint(e, ip, mac, netns, ifname)),
        _ => None,
    }
}

fn endpoint(e: &RawEndpoint, ip: Ipv4Addr, mac: [u8; 6], netns: Option<PathBuf>, ifname: &str) -> Endpoint {
    Endpoint {
        name: e.name.clone(),
        network: e.network.clone(),
        node: e.node.clone(),
        ip,
        mac,
        netns,
        ifname: ifname.to_string(),
    }
}

/// Where an endpoint's address may not be: outside its subnet, on a reserved address of it, or on
/// a node's underlay address (the node would route the container's traffic to itself). A
/// service's VIP obeys the same rules.
pub(super) fn endpoint_ip(ip: Ipv4Addr, net: &Network, node_of_addr: &FxHashMap<Ipv4Addr, &str>) -> Result<(), String> {
    if !net.subnet.contains(ip) {
        return Err(format!("{ip} is outside subnet {} of network \"{}\"", net.subnet, net.name));
    }
    if ip == net.subnet.addr || ip == net.subnet.broadcast() {
        return Err(format!("{ip} is the network or broadcast address of {}", net.subnet));
    }
    if Some(ip) == net.gateway {
        return Err(format!("{ip} is the gateway of network \"{}\"", net.name));
    }
    if let Some(node) = node_of_addr.get(&ip) {
        return Err(format!("{ip} is the underlay address of node \"{node}\""));
    }
    Ok(())
}

/// The datapath's maps have fixed sizes: a state that cannot fit is refused here, so `check`
/// says so before `run` would.
fn capacity(s: &ClusterState, p: &mut Problems) {
    if s.endpoints.len() > MAX_ENDPOINTS as usize {
        p.add(
            "endpoints",
            "name",
            format!("{} endpoints; the datapath holds at most {MAX_ENDPOINTS}", s.endpoints.len()),
        );
    }
    if s.networks.len() > MAX_NETWORKS as usize {
        p.add("networks", "name", format!("{} networks; the datapath holds at most {MAX_NETWORKS}", s.networks.len()));
    }
    let mut per_node: FxHashMap<&str, usize> = FxHashMap::default();
    let mut sandboxes = rustc_hash::FxHashSet::default();
    for e in s.endpoints.values() {
        *per_node.entry(e.node.as_str()).or_default() += 1;
        // Each sandbox's gwbridge interface takes a local-interface entry too.
        if let (Some(ns), true) = (&e.netns, s.gwbridge.is_some()) {
            if sandboxes.insert((e.node.as_str(), ns)) {
                *per_node.entry(e.node.as_str()).or_default() += 1;
            }
        }
    }
    for (node, n) in per_node {
        if n > MAX_LOCAL_IFACES as usize {
            p.add(
                format!("nodes \"{node}\""),
                "name",
                format!(
                    "{n} endpoints (and gwbridge interfaces) on this node; a node's datapath holds at most \
                     {MAX_LOCAL_IFACES}"
                ),
            );
        }
    }
}

//! The cluster state file: the same TOML file on every node. Parsing rejects unknown keys;
//! validation checks the whole file and reports every problem with its entry and field, so a
//! bad file is never half-applied.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use overlay_common::vxlan::{default_mac, DEFAULT_PORT, MAX_VNI};
use rustc_hash::{FxHashMap as HashMap, FxHashMap};
use serde::Deserialize;

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawState {
    cluster: Option<RawCluster>,
    #[serde(default)]
    nodes: Vec<RawNode>,
    #[serde(default)]
    networks: Vec<RawNetwork>,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    vxlan_port: Option<i64>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    address: String,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: String,
    vni: i64,
    subnet: String,
    gateway: Option<String>,
    mtu: Option<i64>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: String,
    network: String,
    node: String,
    ip: String,
    mac: Option<String>,
    netns: Option<String>,
    ifname: Option<String>,
}

/// Borrowed view of one or more parsed tables, in file order: validation reads this, so
/// cached tables are never copied.
#[derive(Default)]
struct RawRefs<'a> {
    cluster: Option<&'a RawCluster>,
    nodes: Vec<&'a RawNode>,
    networks: Vec<&'a RawNetwork>,
    endpoints: Vec<&'a RawEndpoint>,
}

impl<'a> RawRefs<'a> {
    fn add(&mut self, r: &'a RawState) {
        if let Some(c) = &r.cluster {
            self.cluster = Some(c);
        }
        self.nodes.extend(r.nodes.iter());
        self.networks.extend(r.networks.iter());
        self.endpoints.extend(r.endpoints.iter());
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub address: Ipv4Addr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    fn mask(self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) }
    }
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub vni: u32,
    pub subnet: Subnet,
    pub gateway: Option<Ipv4Addr>,
    /// `None`: underlay MTU minus the VXLAN overhead, known only on the node.
    pub mtu: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub network: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub netns: Option<PathBuf>,
    pub ifname: String,
}

/// A validated state. Cross-references (network, node) are known to resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterState {
    pub vxlan_port: u16,
    pub nodes: BTreeMap<String, Node>,
    pub networks: BTreeMap<String, Network>,
    /// Large (10,000s): hashed, not ordered.
    pub endpoints: FxHashMap<String, Endpoint>,
}

impl ClusterState {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }
    pub fn network_of(&self, ep: &Endpoint) -> &Network {
        &self.networks[&ep.network]
    }
    pub fn local_endpoints<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints.values().filter(move |e| e.node == node)
    }
}

/// One problem in a state file: which entry, which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub entry: String,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: field `{}`: {}", self.entry, self.field, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n{}", .problems.len(), .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

impl StateError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            StateError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

pub fn load(path: &Path) -> Result<ClusterState, StateError> {
    let text = std::fs::read_to_string(path).map_err(|source| StateError::Read { path: path.into(), source })?;
    parse(&text, path)
}

pub fn parse(text: &str, path: &Path) -> Result<ClusterState, StateError> {
    let raw: RawState =
        toml::from_str(text).map_err(|e| StateError::Syntax { path: path.into(), message: e.to_string() })?;
    let mut refs = RawRefs::default();
    refs.add(&raw);
    validate(refs).map_err(|problems| StateError::Invalid { path: path.into(), problems })
}

/// Parses successive versions of a state file, re-parsing only the top-level tables whose text
/// changed since the previous version. TOML parsing dominates the cost of a large file (tens of
/// milliseconds for 10,000 endpoints); an edit usually touches a few tables.
///
/// The fast path is taken only when its result must equal a full parse: the file is split at
/// lines that are exactly one of the four table headers, there are no top-level keys before
/// the first header and no multi-line strings, and `[cluster]` appears at most once. Anything
/// else, including any error, goes through the full parser (whose errors carry line numbers).
#[derive(Default)]
pub struct IncrementalParser {
    cache: HashMap<String, RawState>,
}

const HEADERS: [&str; 4] = ["[cluster]", "[[nodes]]", "[[networks]]", "[[endpoints]]"];

fn is_header(line: &str) -> bool {
    if !line.trim_start().starts_with('[') {
        return false;
    }
    let l = line.split('#').next().unwrap_or("").trim();
    HEADERS.contains(&l)
}

impl IncrementalParser {
    pub fn parse(&mut self, text: &str, path: &Path) -> Result<ClusterState, StateError> {
        match self.parse_blocks(text) {
            Some(blocks) => {
                let mut refs = RawRefs::default();
                for (_, r) in &blocks {
                    refs.add(r);
                }
                let result = validate(refs);
                self.cache = blocks.into_iter().collect();
                result.map_err(|problems| StateError::Invalid { path: path.into(), problems })
            }
            None => {
                self.cache.clear();
                parse(text, path)
            }
        }
    }

    /// The file's tables in order, each parsed or taken from the cache; `None` when the fast
    /// path cannot vouch for the result.
    fn parse_blocks(&mut self, text: &str) -> Option<Vec<(String, RawState)>> {
        if text.contains("\"\"\"") || text.contains("'''") {
            return None;
        }
        let mut blocks: Vec<&str> = Vec::new();
        let mut start = 0;
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            if is_header(line) {
                if offset > start {
                    blocks.push(&text[start..offset]);
                }
                start = offset;
            }
            offset += line.len();
        }
        if offset > start {
            blocks.push(&text[start..offset]);
        }
        let mut out = Vec::with_capacity(blocks.len());
        let mut clusters = 0;
        for (i, b) in blocks.iter().enumerate() {
            if i == 0 && !is_header(b.lines().next().unwrap_or("")) {
                // Only blank lines and comments may precede the first table.
                if b.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')) {
                    return None;
                }
                continue;
            }
            let entry = match self.cache.remove_entry(*b) {
                Some(e) => e,
                None => (b.to_string(), toml::from_str::<RawState>(b).ok()?),
            };
            clusters += entry.1.cluster.is_some() as usize;
            out.push(entry);
        }
        // TOML forbids a second [cluster] table: let the full parser say so.
        if clusters > 1 {
            return None;
        }
        Some(out)
    }
}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, entry: impl Into<String>, field: &str, reason: impl Into<String>) {
        self.0.push(Problem { entry: entry.into(), field: field.into(), reason: reason.into() });
    }
}

fn entry_name(kind: &str, index: usize, name: &str) -> String {
    if name.is_empty() { format!("{kind}[{index}]") } else { format!("{kind} \"{name}\"") }
}

fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.parse::<Ipv4Addr>().map_err(|_| format!("`{s}` is not an IPv4 address"))
}

fn parse_subnet(s: &str) -> Result<Subnet, String> {
    let (a, p) = s.split_once('/').ok_or_else(|| format!("`{s}` is not in address/prefix form"))?;
    let addr = parse_ipv4(a)?;
    let prefix: u8 = p.parse().map_err(|_| format!("`{p}` is not a prefix length"))?;
    if !(8..=30).contains(&prefix) {
        return Err(format!("prefix /{prefix} is out of range (8..=30)"));
    }
    let net = Subnet { addr, prefix };
    let base = Ipv4Addr::from(u32::from(addr) & net.mask());
    if base != addr {
        return Err(format!("`{s}` has host bits set (did you mean {base}/{prefix}?)"));
    }
    Ok(net)
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("`{s}` is not a MAC address (six hex bytes separated by colons)"));
    }
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(format!("`{s}` is not a MAC address (six hex bytes separated by colons)"));
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| format!("`{s}` is not a MAC address"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("`{s}` is a multicast MAC address"));
    }
    if mac == [0; 6] {
        return Err("the all-zero MAC address is not usable".into());
    }
    Ok(mac)
}

pub fn format_mac(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

fn valid_ifname(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 {
        return Err(format!("`{s}` must be 1 to 15 characters long"));
    }
    if s.contains(['/', ':']) || s.chars().any(|c| c.is_whitespace() || c.is_control()) || s == "." || s == ".." {
        return Err(format!("`{s}` is not a valid interface name"));
    }
    Ok(())
}

fn validate(raw: RawRefs<'_>) -> Result<ClusterState, Vec<Problem>> {
    let mut p = Problems(Vec::new());

    let vxlan_port = match raw.cluster.and_then(|c| c.vxlan_port) {
        None => DEFAULT_PORT,
        Some(v) if (1..=65535).contains(&v) => v as u16,
        Some(v) => {
            p.add("cluster", "vxlan_port", format!("{v} is not a UDP port (1..=65535)"));
            DEFAULT_PORT
        }
    };

    let mut nodes = BTreeMap::new();
    let mut node_addrs: HashMap<Ipv4Addr, String> = HashMap::default();
    for (i, n) in raw.nodes.iter().enumerate() {
        let entry = entry_name("nodes", i, &n.name);
        if n.name.is_empty() {
            p.add(&entry, "name", "must not be empty");
            continue;
        }
        if nodes.contains_key(&n.name) {
            p.add(&entry, "name", "duplicate node name");
            continue;
        }
        let address = match parse_ipv4(&n.address) {
            Ok(a) if a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback() => {
                p.add(&entry, "address", format!("{a} cannot be a VTEP address"));
                continue;
            }
            Ok(a) => a,
            Err(e) => {
                p.add(&entry, "address", e);
                continue;
            }
        };
        if let Some(other) = node_addrs.insert(address, n.name.clone()) {
            p.add(&entry, "address", format!("{address} is already the address of node \"{other}\""));
        }
        nodes.insert(n.name.clone(), Node { name: n.name.clone(), address });
    }

    let mut networks = BTreeMap::new();
    let mut vnis: HashMap<u32, String> = HashMap::default();
    for (i, n) in raw.networks.iter().enumerate() {
        let entry = entry_name("networks", i, &n.name);
        if n.name.is_empty() {
            p.add(&entry, "name", "must not be empty");
            continue;
        }
        if networks.contains_key(&n.name) {
            p.add(&entry, "name", "duplicate network name");
            continue;
        }
        let vni = if (1..=MAX_VNI as i64).contains(&n.vni) {
            n.vni as u32
        } else {
            p.add(&entry, "vni", format!("{} is out of range (1..={MAX_VNI})", n.vni));
            continue;
        };
        if let Some(other) = vnis.insert(vni, n.name.clone()) {
            p.add(&entry, "vni", format!("{vni} is already used by network \"{other}\""));
        }
        let subnet = match parse_subnet(&n.subnet) {
            Ok(s) => s,
            Err(e) => {
                p.add(&entry, "subnet", e);
                continue;
            }
        };
        let gateway = match n.gateway.as_deref().map(parse_ipv4) {
            None => None,
            Some(Err(e)) => {
                p.add(&entry, "gateway", e);
                None
            }
            Some(Ok(g)) if !subnet.contains(g) || g == subnet.addr || g == subnet.broadcast() => {
                p.add(&entry, "gateway", format!("{g} is not a host address of subnet {subnet}"));
                None
            }
            Some(Ok(g)) => Some(g),
        };
        let mtu = match n.mtu {
            None => None,
            Some(m) if (68..=65485).contains(&m) => Some(m as u32),
            Some(m) => {
                p.add(&entry, "mtu", format!("{m} is out of range (68..=65485)"));
                None
            }
        };
        networks.insert(n.name.clone(), Network { name: n.name.clone(), vni, subnet, gateway, mtu });
    }

    let mut endpoints = FxHashMap::with_capacity_and_hasher(raw.endpoints.len(), Default::default());
    // Keys borrow from the raw file: this loop runs for every endpoint of large clusters.
    let mut ips: HashMap<(&str, Ipv4Addr), &str> = HashMap::with_capacity_and_hasher(raw.endpoints.len(), Default::default());
    let mut macs: HashMap<(&str, [u8; 6]), &str> = HashMap::with_capacity_and_hasher(raw.endpoints.len(), Default::default());
    let mut sandboxes: HashMap<(&str, &str, &str), &str> = HashMap::default();
    for (i, e) in raw.endpoints.iter().enumerate() {
        // Built only when there is something to report.
        let entry = || entry_name("endpoints", i, &e.name);
        let before = p.0.len();
        if e.name.is_empty() {
            p.add(entry(), "name", "must not be empty");
        } else if endpoints.contains_key(&e.name) {
            p.add(entry(), "name", "duplicate endpoint name");
        }
        let network = networks.get(&e.network);
        if network.is_none() {
            let known = if raw.networks.iter().any(|n| n.name == e.network) { " (that network is invalid)" } else { "" };
            p.add(entry(), "network", format!("unknown network \"{}\"{known}", e.network));
        }
        if !nodes.contains_key(&e.node) {
            let known = if raw.nodes.iter().any(|n| n.name == e.node) { " (that node is invalid)" } else { "" };
            p.add(entry(), "node", format!("unknown node \"{}\"{known}", e.node));
        }
        let ip = match parse_ipv4(&e.ip) {
            Ok(ip) => Some(ip),
            Err(err) => {
                p.add(entry(), "ip", err);
                None
            }
        };
        if let (Some(ip), Some(net)) = (ip, network) {
            if !net.subnet.contains(ip) {
                p.add(entry(), "ip", format!("{ip} is outside subnet {} of network \"{}\"", net.subnet, net.name));
            } else if ip == net.subnet.addr || ip == net.subnet.broadcast() {
                p.add(entry(), "ip", format!("{ip} is the network or broadcast address of {}", net.subnet));
            } else if Some(ip) == net.gateway {
                p.add(entry(), "ip", format!("{ip} is the gateway of network \"{}\"", net.name));
            } else if let Some(other) = ips.insert((e.network.as_str(), ip), e.name.as_str()) {
                p.add(entry(), "ip", format!("{ip} is already used by endpoint \"{other}\" on network \"{}\"", net.name));
            }
        }
        let mac = match (&e.mac, ip) {
            (Some(m), _) => match parse_mac(m) {
                Ok(m) => Some(m),
                Err(err) => {
                    p.add(entry(), "mac", err);
                    None
                }
            },
            (None, Some(ip)) => Some(default_mac(ip.octets())),
            (None, None) => None,
        };
        if let (Some(mac), Some(net)) = (mac, network) {
            if let Some(other) = macs.insert((e.network.as_str(), mac), e.name.as_str()) {
                p.add(entry(), "mac", format!("{} is already used by endpoint \"{other}\" on network \"{}\"", format_mac(&mac), net.name));
            }
        }
        let netns = match e.netns.as_deref() {
            None => None,
            Some(s) if !s.starts_with('/') => {
                p.add(entry(), "netns", format!("`{s}` must be an absolute path"));
                None
            }
            Some(s) => Some(PathBuf::from(s)),
        };
        let ifname = e.ifname.as_deref().unwrap_or("eth0");
        if let Err(err) = valid_ifname(ifname) {
            p.add(entry(), "ifname", err);
        }
        if let Some(ns) = e.netns.as_deref() {
            if let Some(other) = sandboxes.insert((e.node.as_str(), ns, ifname), e.name.as_str()) {
                p.add(entry(), "ifname", format!("`{ifname}` in {ns} is already endpoint \"{other}\"'s interface"));
            }
        }
        if p.0.len() == before {
            if let (Some(ip), Some(mac)) = (ip, mac) {
                endpoints.insert(
                    e.name.clone(),
                    Endpoint { name: e.name.clone(), network: e.network.clone(), node: e.node.clone(), ip, mac, netns, ifname: ifname.to_string() },
                );
            }
        }
    }

    if p.0.is_empty() {
        Ok(ClusterState { vxlan_port, nodes, networks, endpoints })
    } else {
        Err(p.0)
    }
}

/// Checks that only make sense on the node itself: it exists in the state, and every local
/// endpoint's sandbox is there to plumb. Run before anything is applied.
pub fn check_for_node(state: &ClusterState, node: &str) -> Result<(), Vec<Problem>> {
    let mut p = Problems(Vec::new());
    if state.node(node).is_none() {
        p.add(format!("nodes \"{node}\""), "name", "this node is not in the state file");
    }
    let mut seen = HashSet::new();
    for ep in state.local_endpoints(node) {
        let entry = format!("endpoints \"{}\"", ep.name);
        match &ep.netns {
            None => p.add(&entry, "netns", "required for an endpoint on this node (the sandbox to plumb)"),
            Some(ns) if !ns.exists() => p.add(&entry, "netns", format!("{} does not exist on this node", ns.display())),
            Some(ns) => {
                seen.insert(ns.clone());
            }
        }
    }
    if p.0.is_empty() { Ok(()) } else { Err(p.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[cluster]
vxlan_port = 4789

[[nodes]]
name = "node-a"
address = "192.168.50.11"

[[nodes]]
name = "node-b"
address = "192.168.50.12"

[[networks]]
name = "app-net"
vni = 4097
subnet = "10.0.9.0/24"
gateway = "10.0.9.1"
mtu = 1450

[[endpoints]]
name = "web.1"
network = "app-net"
node = "node-a"
ip = "10.0.9.3"
mac = "02:42:0a:00:09:03"
netns = "/var/run/netns/web1"
ifname = "eth0"

[[endpoints]]
name = "web.2"
network = "app-net"
node = "node-b"
ip = "10.0.9.4"
netns = "/var/run/netns/web2"
"#;

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text, Path::new("t.toml")) {
            Err(e) => e.problems().to_vec(),
            Ok(_) => panic!("expected an invalid state"),
        }
    }

    fn has(problems: &[Problem], entry: &str, field: &str, reason_part: &str) -> bool {
        problems.iter().any(|p| p.entry == entry && p.field == field && p.reason.contains(reason_part))
    }

    #[test]
    fn good_state_parses_with_defaults() {
        let s = parse(GOOD, Path::new("t.toml")).unwrap();
        assert_eq!(s.vxlan_port, 4789);
        let w2 = &s.endpoints["web.2"];
        assert_eq!(w2.mac, [0x02, 0x42, 10, 0, 9, 4], "Docker's MAC rule");
        assert_eq!(w2.ifname, "eth0");
        assert_eq!(s.networks["app-net"].mtu, Some(1450));
        assert_eq!(s.local_endpoints("node-a").count(), 1);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = parse(&GOOD.replace("mtu = 1450", "mtu = 1450\ncolour = \"red\""), Path::new("t.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("colour"), "{msg}");
    }

    #[test]
    fn every_problem_is_named() {
        let bad = GOOD
            .replace("vni = 4097", "vni = 16777216")
            .replace("ip = \"10.0.9.4\"", "ip = \"10.0.8.4\"")
            .replace("address = \"192.168.50.12\"", "address = \"192.168.50.11\"");
        let p = problems(&bad);
        assert!(has(&p, "networks \"app-net\"", "vni", "out of range"), "{p:?}");
        assert!(has(&p, "nodes \"node-b\"", "address", "already the address of node \"node-a\""), "{p:?}");
        // The endpoints name the network as invalid rather than unknown.
        assert!(has(&p, "endpoints \"web.1\"", "network", "that network is invalid"), "{p:?}");
    }

    #[test]
    fn endpoint_checks() {
        let p = problems(&GOOD.replace("ip = \"10.0.9.4\"", "ip = \"10.0.8.4\""));
        assert!(has(&p, "endpoints \"web.2\"", "ip", "outside subnet 10.0.9.0/24"), "{p:?}");
        let p = problems(&GOOD.replace("ip = \"10.0.9.4\"", "ip = \"10.0.9.3\""));
        assert!(has(&p, "endpoints \"web.2\"", "ip", "already used by endpoint \"web.1\""), "{p:?}");
        let p = problems(&GOOD.replace("node = \"node-b\"", "node = \"node-z\""));
        assert!(has(&p, "endpoints \"web.2\"", "node", "unknown node \"node-z\""), "{p:?}");
        let p = problems(&GOOD.replace("mac = \"02:42:0a:00:09:03\"", "mac = \"03:42:0a:00:09:03\""));
        assert!(has(&p, "endpoints \"web.1\"", "mac", "multicast"), "{p:?}");
        let p = problems(&GOOD.replace("ip = \"10.0.9.4\"", "ip = \"10.0.9.1\""));
        assert!(has(&p, "endpoints \"web.2\"", "ip", "gateway"), "{p:?}");
        let p = problems(&GOOD.replace("ip = \"10.0.9.4\"", "ip = \"10.0.9.300\""));
        assert!(has(&p, "endpoints \"web.2\"", "ip", "not an IPv4 address"), "{p:?}");
        let p = problems(&GOOD.replace("name = \"web.2\"", "name = \"web.1\""));
        assert!(has(&p, "endpoints \"web.1\"", "name", "duplicate"), "{p:?}");
        let p = problems(&GOOD.replace("netns = \"/var/run/netns/web2\"", "netns = \"web2\""));
        assert!(has(&p, "endpoints \"web.2\"", "netns", "absolute"), "{p:?}");
    }

    #[test]
    fn network_checks() {
        let p = problems(&GOOD.replace("10.0.9.0/24", "10.0.9.5/24"));
        assert!(has(&p, "networks \"app-net\"", "subnet", "host bits"), "{p:?}");
        let p = problems(&GOOD.replace("gateway = \"10.0.9.1\"", "gateway = \"10.0.10.1\""));
        assert!(has(&p, "networks \"app-net\"", "gateway", "not a host address"), "{p:?}");
        let p = problems(&GOOD.replace("vni = 4097", "vni = 0"));
        assert!(has(&p, "networks \"app-net\"", "vni", "out of range"), "{p:?}");
        let p = problems(&GOOD.replace("vxlan_port = 4789", "vxlan_port = 70000"));
        assert!(has(&p, "cluster", "vxlan_port", "not a UDP port"), "{p:?}");
        let dup = format!("{GOOD}\n[[networks]]\nname = \"db-net\"\nvni = 4097\nsubnet = \"10.0.10.0/24\"\n");
        let p = problems(&dup);
        assert!(has(&p, "networks \"db-net\"", "vni", "already used by network \"app-net\""), "{p:?}");
    }

    #[test]
    fn incremental_parse_equals_full_parse() {
        let mut inc = IncrementalParser::default();
        let path = Path::new("t.toml");
        let a = inc.parse(GOOD, path).unwrap();
        assert_eq!(a, parse(GOOD, path).unwrap());
        // An edit, an addition, a comment and odd spacing: same result as a full parse.
        let edited = GOOD.replace("10.0.9.4", "10.0.9.40") + "\n# more\n[[endpoints]] # a comment\nname = \"web.3\"\nnetwork = \"app-net\"\nnode = \"node-b\"\nip = \"10.0.9.5\"\n";
        assert_eq!(inc.parse(&edited, path).unwrap(), parse(&edited, path).unwrap());
        // Errors are the full parser's, with the same problems.
        let bad = edited.replace("ip = \"10.0.9.5\"", "ip = \"10.0.7.5\"");
        assert_eq!(inc.parse(&bad, path).unwrap_err().problems(), parse(&bad, path).unwrap_err().problems());
        // Cases the fast path must not accept on its own.
        let twice = format!("{GOOD}\n[cluster]\nvxlan_port = 4790\n");
        assert!(inc.parse(&twice, path).is_err(), "a second [cluster] table is a TOML error");
        let top = format!("nodes = []\n{GOOD}");
        assert!(inc.parse(&top, path).is_err(), "top-level keys conflict with [[nodes]]");
        let syntax = GOOD.replace("vni = 4097", "vni = ");
        assert!(matches!(inc.parse(&syntax, path), Err(StateError::Syntax { .. })));
    }

    #[test]
    fn node_checks_need_the_sandbox() {
        let s = parse(GOOD, Path::new("t.toml")).unwrap();
        let p = check_for_node(&s, "node-a").unwrap_err();
        assert!(has(&p, "endpoints \"web.1\"", "netns", "does not exist"), "{p:?}");
        let p = check_for_node(&s, "node-q").unwrap_err();
        assert!(has(&p, "nodes \"node-q\"", "name", "not in the state file"), "{p:?}");
    }
}

//! The cluster state: what the agent is told to build. The pipeline is
//! text -> `raw` (TOML tables, unknown keys refused) -> `validate` (every problem at once, each
//! naming its entry and field) -> `ClusterState`. `incremental` re-parses only the tables that
//! changed; `objects` is the state as a store holds it, one key per object; `local` holds the
//! checks that only make sense on the node itself.

mod error;
mod gwbridge;
mod incremental;
mod local;
mod objects;
mod raw;
mod services;
mod validate;
mod values;

use std::{collections::BTreeMap, fmt, io::Read as _, net::Ipv4Addr, path::Path, path::PathBuf};

use rustc_hash::FxHashMap;

pub use error::{list as list_problems, Problem, StateError};
pub use gwbridge::{DEFAULT_IFNAME as DEFAULT_GW_IFNAME, DEFAULT_NAME as DEFAULT_GW_NAME};
pub use incremental::IncrementalParser;
pub use local::check_for_node;
pub use objects::{Change, Kind, Object, ObjectKey, Objects};
pub use values::{format_mac, parse_mac, valid_node_name};

/// A state file larger than this is refused before it is parsed: parsing costs tens of times the
/// file's size in memory, and a bad config must never take a node down. 16 MiB holds 100,000
/// endpoints with 10,000 services of 10 backends (8.6 MB) and room to spare.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// `[cluster] maglev_slots_per_backend` when absent: at 2,000 slots a backend, adding or
/// removing one moves under 1% more flows than it must (`maglev::MIN_SLOTS_FOR_1PCT_DISRUPTION`).
pub const DEFAULT_MAGLEV_SLOTS_PER_BACKEND: u32 = 2000;
/// Fewer slots a backend balance unevenly and move more flows on a change; more cost memory
/// for little gain.
pub const MIN_MAGLEV_SLOTS_PER_BACKEND: u32 = 100;
pub const MAX_MAGLEV_SLOTS_PER_BACKEND: u32 = 5000;

// The datapath's map sizes for services, which validation checks a state against.
pub use overlay_common::maps::{MAX_BACKENDS, MAX_MAGLEV_SLOTS, MAX_SERVICES};

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
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
    /// The lowest address that is neither the network's nor its broadcast address: Docker's
    /// default gateway. `None` for /31 and /32.
    pub fn first_host(self) -> Option<Ipv4Addr> {
        let first = u32::from(self.addr).checked_add(1)?;
        (first < u32::from(self.broadcast())).then(|| Ipv4Addr::from(first))
    }
    /// CIDR blocks overlap exactly when one contains the other's base address.
    pub fn overlaps(self, other: Subnet) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
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
    /// Docker's `ingress` network: routing-mesh traffic between nodes travels on it. At most one;
    /// its gateway is always set (Docker's default when the file gives none).
    pub ingress: bool,
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

/// How a service is reached: one virtual IP balanced over its tasks, or its name resolving to
/// the tasks' own addresses (Docker's `--endpoint-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointMode {
    Vip,
    Dnsrr,
}

impl EndpointMode {
    pub const ALL: [EndpointMode; 2] = [EndpointMode::Vip, EndpointMode::Dnsrr];
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        }
    }
}

/// How a vip-mode service picks a backend for a new flow: Maglev hash of the flow, hash of the
/// source address, round robin, weighted round robin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheduler {
    Maglev,
    Sh,
    Rr,
    Wrr,
}

impl Scheduler {
    pub const ALL: [Scheduler; 4] = [Scheduler::Maglev, Scheduler::Sh, Scheduler::Rr, Scheduler::Wrr];
    pub fn as_str(self) -> &'static str {
        match self {
            Scheduler::Maglev => "maglev",
            Scheduler::Sh => "sh",
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
    /// The IP protocol number, as in the IPv4 header.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// How a published port is reached (Docker's `--publish mode=`): on every node, the routing
/// mesh balancing over all the service's tasks (`ingress`), or on the nodes that run a task, to
/// that task (`host`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PublishMode {
    Ingress,
    Host,
}

impl PublishMode {
    pub const ALL: [PublishMode; 2] = [PublishMode::Ingress, PublishMode::Host];
    pub fn as_str(self) -> &'static str {
        match self {
            PublishMode::Ingress => "ingress",
            PublishMode::Host => "host",
        }
    }
}

impl fmt::Display for PublishMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for EndpointMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port balanced on every VIP of its service; backends receive it unchanged. A published port
/// is also reached on the nodes' addresses, on `published`, and arrives at `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub protocol: Protocol,
    pub target: u16,
    /// Published on the nodes' addresses (the routing mesh), or None.
    pub published: Option<u16>,
    /// Meaningful when `published` is set; `Ingress` otherwise.
    pub publish_mode: PublishMode,
}

/// A service's address on one network (at most one a network).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceVip {
    pub network: String,
    pub ip: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// An endpoint's name; an endpoint backs at most one service.
    pub endpoint: String,
    /// Relative share of new flows; 0 drains the backend (its tracked flows go on).
    pub weight: u32,
}

/// A validated service: its VIPs, ports and backends resolve, and in vip mode every backend is on
/// a network the service has a VIP on, or on the ingress network if the service publishes a port
/// (its backends there are the ones published traffic goes to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub endpoint_mode: EndpointMode,
    /// Meaningful in vip mode only.
    pub scheduler: Scheduler,
    /// Empty in dnsrr mode.
    pub vips: Vec<ServiceVip>,
    pub ports: Vec<ServicePort>,
    pub backends: Vec<Backend>,
}

/// Docker's docker_gwbridge on every node (`[gwbridge]`): each local container gets an interface
/// on a local bridge, its default route, for traffic leaving the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gwbridge {
    /// The bridge device (created on each node, or adopted if it exists).
    pub name: String,
    /// The same on every node, as in Docker; addresses are allocated by each node's agent.
    pub subnet: Subnet,
    /// The bridge's own address: the containers' default gateway.
    pub gateway: Ipv4Addr,
    /// The interface's name inside each container.
    pub ifname: String,
    /// Inter-container communication over the bridge (Docker's `enable_icc`).
    pub icc: bool,
    /// Containers' traffic to the outside leaves with the node's address.
    pub masquerade: bool,
}

/// A validated state. Cross-references (network, node, endpoint) are known to resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterState {
    pub vxlan_port: u16,
    pub nodes: BTreeMap<String, Node>,
    pub networks: BTreeMap<String, Network>,
    /// Large (10,000s): hashed, not ordered.
    pub endpoints: FxHashMap<String, Endpoint>,
    pub services: BTreeMap<String, Service>,
    /// Maglev table slots per backend of each vip-mode service (before rounding up to a prime).
    pub maglev_slots_per_backend: u32,
    pub gwbridge: Option<Gwbridge>,
}

impl ClusterState {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }
    pub fn network_of(&self, ep: &Endpoint) -> &Network {
        &self.networks[&ep.network]
    }
    /// The network with `ingress = true`, if any (validation allows one).
    pub fn ingress_network(&self) -> Option<&Network> {
        self.networks.values().find(|n| n.ingress)
    }
    pub fn local_endpoints<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints.values().filter(move |e| e.node == node)
    }
}

/// Read a state file's text, refusing files over `MAX_FILE_BYTES` without reading them whole.
pub fn read(path: &Path) -> Result<String, StateError> {
    let io = |source| StateError::Read { path: path.into(), source };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(io)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(text.len() as u64);
        return Err(StateError::TooLarge { path: path.into(), size, limit: MAX_FILE_BYTES });
    }
    Ok(text)
}

pub fn load(path: &Path) -> Result<ClusterState, StateError> {
    parse(&read(path)?, path)
}

pub fn parse(text: &str, path: &Path) -> Result<ClusterState, StateError> {
    let raw: raw::RawState =
        toml::from_str(text).map_err(|e| StateError::Syntax { path: path.into(), message: e.to_string() })?;
    let mut refs = raw::RawRefs::default();
    refs.add(&raw);
    validate::validate(refs).map_err(|problems| StateError::Invalid { path: path.into(), problems })
}

#[cfg(test)]
mod tests;

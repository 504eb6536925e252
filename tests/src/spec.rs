//! What a test cluster is made of (nodes, networks, endpoints), and the state file it becomes.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::Netns;

#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub address: String,
    /// Runs our agent (false: a plain Linux vxlan + bridge node, as Docker builds it).
    pub ours: bool,
}

#[derive(Clone, Debug)]
pub struct NetSpec {
    pub name: String,
    pub vni: u32,
    pub subnet: String,
    pub prefix: u8,
    /// `mtu =` in the state file; `None`: the agent's default (underlay - 50).
    pub mtu: Option<u32>,
    /// `ingress = true`: Docker's `ingress` network, carrying the routing mesh (gateway: the
    /// subnet's first host, the agent's default).
    pub ingress: bool,
}

#[derive(Clone, Debug)]
pub struct EpSpec {
    pub name: String,
    pub network: String,
    pub node: String,
    pub ip: String,
}

/// A service port: `{ protocol, target }`, published on the nodes' addresses when `published`
/// is set (`publish_mode`: `ingress`, the default, or `host`; `None` leaves it out of the file).
#[derive(Clone, Debug)]
pub struct PortSpec {
    pub protocol: String,
    pub target: u16,
    pub published: Option<u16>,
    pub publish_mode: Option<String>,
}

/// One backend of a service: an endpoint and its weight (`None`: the default, 1; 0 drains).
#[derive(Clone, Debug)]
pub struct BackendSpec {
    pub endpoint: String,
    pub weight: Option<u32>,
}

/// A `[[services]]` entry. `None` fields are left out of the file (the agent's defaults).
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    /// `vip` or `dnsrr`.
    pub endpoint_mode: Option<String>,
    /// `maglev`, `sh`, `rr` or `wrr`.
    pub scheduler: Option<String>,
    /// (network, ip)
    pub vips: Vec<(String, String)>,
    pub ports: Vec<PortSpec>,
    pub backends: Vec<BackendSpec>,
}

impl ServiceSpec {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            endpoint_mode: None,
            scheduler: None,
            vips: Vec::new(),
            ports: Vec::new(),
            backends: Vec::new(),
        }
    }
    pub fn mode(mut self, mode: &str) -> Self {
        self.endpoint_mode = Some(mode.into());
        self
    }
    pub fn scheduler(mut self, scheduler: &str) -> Self {
        self.scheduler = Some(scheduler.into());
        self
    }
    pub fn vip(mut self, network: &str, ip: &str) -> Self {
        self.vips.push((network.into(), ip.into()));
        self
    }
    pub fn port(mut self, protocol: &str, target: u16) -> Self {
        self.ports.push(PortSpec { protocol: protocol.into(), target, published: None, publish_mode: None });
        self
    }
    /// A port published on every node's address (`mode`: `Some("ingress")`, `Some("host")`, or
    /// `None` to leave `publish_mode` out: ingress, the default).
    pub fn publish(mut self, protocol: &str, target: u16, published: u16, mode: Option<&str>) -> Self {
        self.ports.push(PortSpec {
            protocol: protocol.into(),
            target,
            published: Some(published),
            publish_mode: mode.map(str::to_string),
        });
        self
    }
    pub fn backend(mut self, endpoint: &str, weight: Option<u32>) -> Self {
        self.backends.push(BackendSpec { endpoint: endpoint.into(), weight });
        self
    }
    /// Change a backend's weight in place (0 drains); false if it is not a backend.
    pub fn set_weight(&mut self, endpoint: &str, weight: u32) -> bool {
        self.backends.iter_mut().find(|b| b.endpoint == endpoint).map(|b| b.weight = Some(weight)).is_some()
    }
    /// Take a backend out of the service; false if it was not one.
    pub fn remove_backend(&mut self, endpoint: &str) -> bool {
        let before = self.backends.len();
        self.backends.retain(|b| b.endpoint != endpoint);
        self.backends.len() != before
    }
}

#[derive(Clone, Debug, Default)]
pub struct ClusterSpec {
    pub nodes: Vec<NodeSpec>,
    pub networks: Vec<NetSpec>,
    pub endpoints: Vec<EpSpec>,
    pub decap: Option<String>,
    pub services: Vec<ServiceSpec>,
    /// `[cluster] maglev_slots_per_backend`; `None`: the agent's default.
    pub maglev_slots_per_backend: Option<u32>,
    /// Raw TOML appended to the state file as is (tables the typed specs do not cover).
    pub extra: String,
}

impl ClusterSpec {
    /// `n` nodes of ours on the underlay: node-a at 192.168.50.11, node-b at .12, and so on.
    pub fn nodes(n: usize) -> Self {
        (0..n).fold(Self::default(), |s, i| {
            s.node(&format!("node-{}", (b'a' + i as u8) as char), &format!("192.168.50.{}", 11 + i))
        })
    }

    /// The smallest overlay: web.1 on node-a, web.2 on node-b, one network (app-net, 10.0.9.0/24).
    pub fn two_nodes() -> Self {
        Self::nodes(2)
            .network("app-net", 4097, "10.0.9.0/24")
            .endpoint("web.1", "app-net", "node-a", "10.0.9.3")
            .endpoint("web.2", "app-net", "node-b", "10.0.9.4")
    }

    /// The reference cluster of the demo and the end-to-end tests: three nodes, two networks,
    /// containers of both networks on every node (web.1 and web.4 share node-a).
    pub fn three_nodes_two_networks() -> Self {
        Self::nodes(3)
            .network("app-net", 4097, "10.0.9.0/24")
            .network("db-net", 4098, "10.0.10.0/24")
            .endpoint("web.1", "app-net", "node-a", "10.0.9.3")
            .endpoint("web.2", "app-net", "node-b", "10.0.9.4")
            .endpoint("web.3", "app-net", "node-c", "10.0.9.5")
            .endpoint("web.4", "app-net", "node-a", "10.0.9.6")
            .endpoint("db.1", "db-net", "node-a", "10.0.10.3")
            .endpoint("db.2", "db-net", "node-b", "10.0.10.4")
            .endpoint("db.3", "db-net", "node-c", "10.0.10.5")
    }

    pub fn node(mut self, name: &str, address: &str) -> Self {
        self.nodes.push(NodeSpec { name: name.into(), address: address.into(), ours: true });
        self
    }
    pub fn kernel_node(mut self, name: &str, address: &str) -> Self {
        self.nodes.push(NodeSpec { name: name.into(), address: address.into(), ours: false });
        self
    }
    pub fn network(mut self, name: &str, vni: u32, subnet: &str) -> Self {
        let prefix = subnet.split('/').nth(1).and_then(|p| p.parse().ok()).unwrap_or(24);
        self.networks.push(NetSpec {
            name: name.into(),
            vni,
            subnet: subnet.into(),
            prefix,
            mtu: None,
            ingress: false,
        });
        self
    }
    /// The ingress network (`ingress = true`), e.g. Docker's: `("ingress", 4096, "10.0.0.0/24")`.
    pub fn ingress_network(mut self, name: &str, vni: u32, subnet: &str) -> Self {
        self = self.network(name, vni, subnet);
        if let Some(n) = self.networks.last_mut() {
            n.ingress = true;
        }
        self
    }
    pub fn endpoint(mut self, name: &str, network: &str, node: &str, ip: &str) -> Self {
        self.endpoints.push(EpSpec { name: name.into(), network: network.into(), node: node.into(), ip: ip.into() });
        self
    }
    pub fn service(mut self, service: ServiceSpec) -> Self {
        self.services.push(service);
        self
    }
    /// The service called `name` (panics if there is none: a test's own spec).
    pub fn service_mut(&mut self, name: &str) -> &mut ServiceSpec {
        self.services.iter_mut().find(|s| s.name == name).unwrap_or_else(|| panic!("no service {name:?} in the spec"))
    }
}

/// Docker's MAC rule, as the agent applies it.
pub fn docker_mac(ip: &str) -> String {
    let o: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap_or(0)).collect();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

pub(crate) fn short(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_alphanumeric()).take(10).collect()
}

pub fn render_state(spec: &ClusterSpec, containers: &BTreeMap<String, Netns>) -> String {
    let mut s = String::from("[cluster]\nvxlan_port = 4789\n");
    if let Some(n) = spec.maglev_slots_per_backend {
        let _ = writeln!(s, "maglev_slots_per_backend = {n}");
    }
    s.push('\n');
    for n in &spec.nodes {
        let _ = writeln!(s, "[[nodes]]\nname = \"{}\"\naddress = \"{}\"\n", n.name, n.address);
    }
    for n in &spec.networks {
        let mtu = n.mtu.map(|m| format!("mtu = {m}\n")).unwrap_or_default();
        let ingress = if n.ingress { "ingress = true\n" } else { "" };
        let _ = writeln!(
            s,
            "[[networks]]\nname = \"{}\"\nvni = {}\nsubnet = \"{}\"\n{mtu}{ingress}",
            n.name, n.vni, n.subnet
        );
    }
    for e in &spec.endpoints {
        let netns = containers.get(&e.name).map(|c| c.path().display().to_string()).unwrap_or_default();
        let _ = writeln!(
            s,
            "[[endpoints]]\nname = \"{}\"\nnetwork = \"{}\"\nnode = \"{}\"\nip = \"{}\"\nnetns = \"{}\"\n",
            e.name, e.network, e.node, e.ip, netns
        );
    }
    for v in &spec.services {
        render_service(&mut s, v);
    }
    s.push_str(&spec.extra);
    s
}

fn render_service(s: &mut String, v: &ServiceSpec) {
    let _ = writeln!(s, "[[services]]\nname = \"{}\"", v.name);
    if let Some(m) = &v.endpoint_mode {
        let _ = writeln!(s, "endpoint_mode = \"{m}\"");
    }
    if let Some(x) = &v.scheduler {
        let _ = writeln!(s, "scheduler = \"{x}\"");
    }
    let list = |items: Vec<String>| format!("[{}]", items.join(", "));
    let vips = v.vips.iter().map(|(n, ip)| format!("{{ network = \"{n}\", ip = \"{ip}\" }}")).collect();
    let ports = v
        .ports
        .iter()
        .map(|p| {
            let mut x = format!("{{ protocol = \"{}\", target = {}", p.protocol, p.target);
            if let Some(pp) = p.published {
                let _ = write!(x, ", published = {pp}");
            }
            if let Some(m) = &p.publish_mode {
                let _ = write!(x, ", publish_mode = \"{m}\"");
            }
            x + " }"
        })
        .collect();
    let backends = v
        .backends
        .iter()
        .map(|b| match b.weight {
            Some(w) => format!("{{ endpoint = \"{}\", weight = {w} }}", b.endpoint),
            None => format!("{{ endpoint = \"{}\" }}", b.endpoint),
        })
        .collect();
    let _ = writeln!(s, "vips = {}\nports = {}\nbackends = {}\n", list(vips), list(ports), list(backends));
}

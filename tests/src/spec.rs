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
}

#[derive(Clone, Debug)]
pub struct EpSpec {
    pub name: String,
    pub network: String,
    pub node: String,
    pub ip: String,
}

#[derive(Clone, Debug, Default)]
pub struct ClusterSpec {
    pub nodes: Vec<NodeSpec>,
    pub networks: Vec<NetSpec>,
    pub endpoints: Vec<EpSpec>,
    pub decap: Option<String>,
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
        self.networks.push(NetSpec { name: name.into(), vni, subnet: subnet.into(), prefix, mtu: None });
        self
    }
    pub fn endpoint(mut self, name: &str, network: &str, node: &str, ip: &str) -> Self {
        self.endpoints.push(EpSpec { name: name.into(), network: network.into(), node: node.into(), ip: ip.into() });
        self
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
    let mut s = String::from("[cluster]\nvxlan_port = 4789\n\n");
    for n in &spec.nodes {
        let _ = writeln!(s, "[[nodes]]\nname = \"{}\"\naddress = \"{}\"\n", n.name, n.address);
    }
    for n in &spec.networks {
        let mtu = n.mtu.map(|m| format!("mtu = {m}\n")).unwrap_or_default();
        let _ = writeln!(s, "[[networks]]\nname = \"{}\"\nvni = {}\nsubnet = \"{}\"\n{mtu}", n.name, n.vni, n.subnet);
    }
    for e in &spec.endpoints {
        let netns = containers.get(&e.name).map(|c| c.path().display().to_string()).unwrap_or_default();
        let _ = writeln!(
            s,
            "[[endpoints]]\nname = \"{}\"\nnetwork = \"{}\"\nnode = \"{}\"\nip = \"{}\"\nnetns = \"{}\"\n",
            e.name, e.network, e.node, e.ip, netns
        );
    }
    s
}

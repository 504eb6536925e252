//! A node built the way Docker's overlay driver builds it, for interoperability tests: a kernel
//! vxlan device and a bridge per network, static FDB and neighbour entries for every remote
//! endpoint.

use anyhow::Result;

use crate::{
    spec::{docker_mac, NodeSpec},
    Cluster,
};

impl Cluster {
    /// A node built the way Docker's overlay driver builds it: a kernel vxlan device and a
    /// bridge per network, static FDB and neighbour entries for every remote endpoint.
    pub(crate) fn setup_kernel_node(&mut self, n: &NodeSpec) -> Result<()> {
        let ns = &self.nodes[&n.name];
        let port = 4789;
        for net in &self.spec.networks {
            let br = format!("br{}", net.vni);
            let vx = format!("vx{}", net.vni);
            ns.sh(&format!(
                "ip link add {br} type bridge && ip link set {br} up && \
                 ip link add {vx} type vxlan id {} dstport {port} local {} dev ul0 nolearning proxy && \
                 ip link set {vx} master {br} && ip link set {vx} up",
                net.vni, n.address
            ))?;
        }
        let mut i = 0;
        for e in self.spec.endpoints.clone() {
            let net = self.spec.networks.iter().find(|x| x.name == e.network).unwrap().clone();
            let mac = docker_mac(&e.ip);
            if e.node == n.name {
                let c = &self.containers[&e.name];
                let h = format!("kv{i}");
                i += 1;
                ns.sh(&format!(
                    "ip link add {h} type veth peer name eth0 netns {} && ip link set {h} master br{} && ip link set {h} up",
                    c.name, net.vni
                ))?;
                c.sh(&format!(
                    "ip link set eth0 address {mac} && ip link set eth0 mtu 1450 && ip addr add {}/{} dev eth0 && ip link set eth0 up",
                    e.ip, net.prefix
                ))?;
            } else {
                let vtep = &self.spec.nodes.iter().find(|x| x.name == e.node).unwrap().address;
                ns.sh(&format!(
                    "bridge fdb add {mac} dev vx{0} dst {vtep} self permanent && ip neigh add {1} lladdr {mac} dev vx{0} nud permanent",
                    net.vni, e.ip
                ))?;
            }
        }
        // Containers on the kernel node resolve remote peers through the proxy-ARP vxlan device.
        Ok(())
    }
}

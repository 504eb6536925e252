//! The pure step of the pipeline: a validated state, seen from one node, becomes the contents
//! of the datapath's maps. No I/O here, so it is tested without a kernel.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{anyhow, Result};
use overlay_common::{
    maps::{
        Config, EndpointInfo, EndpointKey, GwConfig, LocalIface, NetworkInfo, NodeInfo, EP_GATEWAY, EP_LOCAL, GW_ICC,
        GW_MASQUERADE, GW_VNI, NET_INGRESS,
    },
    vxlan::{default_mac, ENCAP_OVERHEAD},
};

use super::Contents;
use crate::{gwbridge, netlink::Underlay, plumb::Plumbed, state};

/// The node's docker_gwbridge as plumbed: the bridge and each local sandbox's port on it.
pub type GwPlumbed<'a> = (&'a gwbridge::Bridge, &'a std::collections::BTreeMap<std::path::PathBuf, gwbridge::Port>);

/// Addresses in the maps are in network order, as the datapath reads them from packets.
fn ip_key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// MTU of a network on this node: configured, or the underlay's minus the VXLAN overhead.
pub fn network_mtu(net: &state::Network, underlay_mtu: u32) -> u32 {
    net.mtu.unwrap_or(underlay_mtu.saturating_sub(ENCAP_OVERHEAD))
}

/// The map contents `node` needs for `state`, given where its local endpoints are plumbed.
/// Local endpoints missing from `plumbed` (not plumbed yet, or failed) are left out of the maps.
pub fn desired_contents(
    state: &state::ClusterState,
    node: &str,
    underlay: &Underlay,
    plumbed: &BTreeMap<String, Plumbed>,
    gw: Option<GwPlumbed<'_>>,
    current: &Contents,
) -> Result<Contents> {
    let me = state.node(node).ok_or_else(|| anyhow!("node {node} is not in the state"))?;
    let mut c = Contents {
        config: Config {
            node_ip: ip_key(me.address),
            underlay_ifindex: underlay.ifindex,
            underlay_mtu: underlay.mtu,
            vxlan_port: state.vxlan_port,
            _pad: 0,
            ingress_vni: state.ingress_network().map_or(0, |n| n.vni),
        },
        ..Default::default()
    };
    // Every node may send us VXLAN, ourselves excluded: our own address never sends to us.
    for n in state.nodes.values().filter(|n| n.name != node) {
        c.nodes.insert(ip_key(n.address), NodeInfo { _reserved: 0 });
    }
    for net in state.networks.values() {
        let flags = if net.ingress { NET_INGRESS } else { 0 };
        let gateway = net.gateway.map_or(0, ip_key);
        c.networks.insert(net.vni, NetworkInfo { mtu: network_mtu(net, underlay.mtu), flags, gateway });
        if let (true, Some(gw)) = (net.ingress, net.gateway) {
            // Backends send their replies to outside (routing-mesh) clients through it.
            let info = EndpointInfo { mac: default_mac(gw.octets()), flags: EP_GATEWAY, ifindex: 0, vtep: 0 };
            c.endpoints.insert(EndpointKey { vni: net.vni, ip: gateway }, info);
        }
    }
    for ep in state.endpoints.values() {
        let net = state.network_of(ep);
        let key = EndpointKey { vni: net.vni, ip: ip_key(ep.ip) };
        let info = if ep.node == node {
            let Some(p) = plumbed.get(&ep.name) else { continue };
            let iface = LocalIface { vni: net.vni, ip: ip_key(ep.ip), mac: ep.mac, flags: 0 };
            c.local_ifaces.insert(p.host_ifindex, iface);
            EndpointInfo { mac: ep.mac, flags: EP_LOCAL, ifindex: p.host_ifindex, vtep: 0 }
        } else {
            let vtep = state.nodes[&ep.node].address;
            EndpointInfo { mac: ep.mac, flags: 0, ifindex: 0, vtep: ip_key(vtep) }
        };
        c.endpoints.insert(key, info);
    }
    if let (Some(g), Some((bridge, ports))) = (&state.gwbridge, gw) {
        let mask = if g.subnet.prefix == 0 { 0 } else { u32::MAX << (32 - g.subnet.prefix) };
        c.gw = GwConfig {
            subnet: ip_key(g.subnet.addr),
            mask: u32::from_ne_bytes(mask.to_be_bytes()),
            gateway: ip_key(g.gateway),
            bridge_mac: bridge.mac,
            flags: if g.icc { GW_ICC } else { 0 } | if g.masquerade { GW_MASQUERADE } else { 0 },
        };
        // Kept apart from every overlay network by the pseudo-VNI.
        for p in ports.values() {
            c.local_ifaces.insert(p.host_ifindex, LocalIface { vni: GW_VNI, ip: ip_key(p.ip), mac: p.mac, flags: 0 });
            let info = EndpointInfo { mac: p.mac, flags: EP_LOCAL, ifindex: p.host_ifindex, vtep: 0 };
            c.endpoints.insert(EndpointKey { vni: GW_VNI, ip: ip_key(p.ip) }, info);
        }
        c.gw_ports = ports.clone();
    }
    super::services::add_services(state, &mut c, current)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const STATE: &str = r#"
[cluster]
vxlan_port = 4790
[[nodes]]
name = "a"
address = "192.168.50.11"
[[nodes]]
name = "b"
address = "192.168.50.12"
[[networks]]
name = "app"
vni = 4097
subnet = "10.0.9.0/24"
[[networks]]
name = "db"
vni = 4098
subnet = "10.0.10.0/24"
mtu = 1400
[[endpoints]]
name = "web.1"
network = "app"
node = "a"
ip = "10.0.9.3"
netns = "/run/netns/w1"
[[endpoints]]
name = "web.2"
network = "app"
node = "b"
ip = "10.0.9.4"
[[endpoints]]
name = "db.1"
network = "db"
node = "a"
ip = "10.0.10.3"
netns = "/run/netns/d1"
"#;

    fn underlay() -> Underlay {
        Underlay { ifindex: 7, name: "ul0".into(), mtu: 1500, is_veth: true, mac: [2, 0, 0, 0, 0, 0x11] }
    }

    fn plumbed(names: &[(&str, u32)]) -> BTreeMap<String, Plumbed> {
        names.iter().map(|(n, i)| (n.to_string(), Plumbed { host_veth: format!("ov{i}"), host_ifindex: *i })).collect()
    }

    fn key(vni: u32, ip: [u8; 4]) -> EndpointKey {
        EndpointKey { vni, ip: u32::from_ne_bytes(ip) }
    }

    #[test]
    fn one_node_sees_local_veths_and_remote_vteps() {
        let s = state::parse(STATE, Path::new("t")).unwrap();
        let c = desired_contents(
            &s,
            "a",
            &underlay(),
            &plumbed(&[("web.1", 21), ("db.1", 22)]),
            None,
            &Contents::default(),
        )
        .unwrap();
        assert_eq!(c.config.node_ip, u32::from_ne_bytes([192, 168, 50, 11]));
        assert_eq!((c.config.underlay_ifindex, c.config.underlay_mtu, c.config.vxlan_port), (7, 1500, 4790));
        // Default MTU is the underlay's minus 50; a configured one is kept.
        assert_eq!(c.networks[&4097].mtu, 1450);
        assert_eq!(c.networks[&4098].mtu, 1400);
        let w1 = c.endpoints[&key(4097, [10, 0, 9, 3])];
        assert_eq!((w1.flags, w1.ifindex, w1.vtep, w1.mac), (EP_LOCAL, 21, 0, [2, 0x42, 10, 0, 9, 3]));
        let w2 = c.endpoints[&key(4097, [10, 0, 9, 4])];
        assert_eq!((w2.flags, w2.ifindex, w2.vtep), (0, 0, u32::from_ne_bytes([192, 168, 50, 12])));
        assert_eq!(c.local_ifaces[&22].vni, 4098);
        assert_eq!(c.local_ifaces.len(), 2);
        assert_eq!(c.endpoints.len(), 3);
        // Decapsulation accepts VXLAN from the other node only.
        assert_eq!(c.nodes.keys().copied().collect::<Vec<_>>(), vec![u32::from_ne_bytes([192, 168, 50, 12])]);
    }

    #[test]
    fn the_other_node_sees_the_mirror_image() {
        let s = state::parse(STATE, Path::new("t")).unwrap();
        let c = desired_contents(&s, "b", &underlay(), &plumbed(&[("web.2", 5)]), None, &Contents::default()).unwrap();
        assert_eq!(c.endpoints[&key(4097, [10, 0, 9, 3])].vtep, u32::from_ne_bytes([192, 168, 50, 11]));
        assert_eq!(c.endpoints[&key(4097, [10, 0, 9, 4])].flags, EP_LOCAL);
        assert_eq!(c.local_ifaces.len(), 1);
    }

    #[test]
    fn unplumbed_local_endpoints_stay_out_of_the_maps() {
        let s = state::parse(STATE, Path::new("t")).unwrap();
        let c = desired_contents(&s, "a", &underlay(), &plumbed(&[("web.1", 21)]), None, &Contents::default()).unwrap();
        assert!(!c.endpoints.contains_key(&key(4098, [10, 0, 10, 3])));
        assert_eq!(c.local_ifaces.len(), 1);
        assert!(desired_contents(&s, "nope", &underlay(), &plumbed(&[]), None, &Contents::default()).is_err());
    }
}

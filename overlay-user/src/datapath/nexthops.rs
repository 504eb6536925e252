//! The next hop towards each remote VTEP, resolved the way the kernel would route the outer
//! packet: the longest matching route of the main table, its gateway (or the VTEP itself when
//! on-link), and that address's entry in the neighbour table. Pure: the agent passes in what
//! netlink reported. A VTEP whose route leaves another interface, or whose neighbour is not
//! resolved, gets no entry: encapsulation then asks the FIB (and the kernel resolves it).

use std::net::Ipv4Addr;

use overlay_common::maps::NextHop;
use rustc_hash::FxHashMap;

/// An IPv4 route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// A neighbour entry usable for sending (reachable, stale, delay, probe or permanent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

fn covers(r: &Route, ip: Ipv4Addr) -> bool {
    let mask = if r.prefix == 0 { 0 } else { u32::MAX << (32 - r.prefix as u32) };
    u32::from(ip) & mask == u32::from(r.dst) & mask
}

/// Entries keyed by VTEP address in network order, as the datapath looks them up.
pub fn resolve(
    vteps: impl IntoIterator<Item = Ipv4Addr>,
    underlay_ifindex: u32,
    underlay_mac: [u8; 6],
    routes: &[Route],
    neighbours: &[Neighbour],
) -> FxHashMap<u32, NextHop> {
    let mut out = FxHashMap::default();
    for vtep in vteps {
        let Some(route) = routes.iter().filter(|r| covers(r, vtep)).max_by_key(|r| r.prefix) else { continue };
        if route.oif != Some(underlay_ifindex) {
            continue;
        }
        let via = route.gateway.unwrap_or(vtep);
        if let Some(n) = neighbours.iter().find(|n| n.ip == via && n.ifindex == underlay_ifindex) {
            let key = u32::from_ne_bytes(vtep.octets());
            out.insert(key, NextHop { ifindex: underlay_ifindex, dmac: n.mac, smac: underlay_mac });
        }
    }
    out
}

/// The next-hop addresses (VTEPs on link, or their gateways) on the underlay whose neighbour
/// is not resolved: the agent asks the kernel to resolve them, so that XDP (which cannot) finds
/// every node's next hop cached before the routing mesh needs it.
pub fn unresolved(
    vteps: impl IntoIterator<Item = Ipv4Addr>,
    underlay_ifindex: u32,
    routes: &[Route],
    neighbours: &[Neighbour],
) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for vtep in vteps {
        let Some(route) = routes.iter().filter(|r| covers(r, vtep)).max_by_key(|r| r.prefix) else { continue };
        if route.oif != Some(underlay_ifindex) {
            continue;
        }
        let via = route.gateway.unwrap_or(vtep);
        if !neighbours.iter().any(|n| n.ip == via && n.ifindex == underlay_ifindex) && !out.contains(&via) {
            out.push(via);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UL: u32 = 7;
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn key(s: &str) -> u32 {
        u32::from_ne_bytes(ip(s).octets())
    }

    fn routes() -> Vec<Route> {
        vec![
            Route { dst: ip("192.168.50.0"), prefix: 24, gateway: None, oif: Some(UL) },
            Route { dst: ip("10.20.0.0"), prefix: 16, gateway: Some(ip("192.168.50.1")), oif: Some(UL) },
            Route { dst: ip("10.20.30.0"), prefix: 24, gateway: None, oif: Some(99) },
            Route { dst: ip("0.0.0.0"), prefix: 0, gateway: Some(ip("192.168.50.254")), oif: Some(UL) },
        ]
    }

    #[test]
    fn on_link_vteps_use_their_own_neighbour_entry() {
        let n = vec![Neighbour { ip: ip("192.168.50.12"), ifindex: UL, mac: [2, 0, 0, 0, 0, 0x12] }];
        let got = resolve([ip("192.168.50.12"), ip("192.168.50.13")], UL, MAC, &routes(), &n);
        assert_eq!(got[&key("192.168.50.12")], NextHop { ifindex: UL, dmac: [2, 0, 0, 0, 0, 0x12], smac: MAC });
        assert!(!got.contains_key(&key("192.168.50.13")), "no neighbour entry yet: the FIB decides");
    }

    #[test]
    fn routed_vteps_use_their_gateway_and_the_longest_prefix_wins() {
        let n = vec![
            Neighbour { ip: ip("192.168.50.1"), ifindex: UL, mac: [2, 0, 0, 0, 0, 1] },
            Neighbour { ip: ip("10.20.30.5"), ifindex: 99, mac: [2, 0, 0, 0, 0, 5] },
        ];
        let got = resolve([ip("10.20.1.1"), ip("10.20.30.5"), ip("8.8.8.8")], UL, MAC, &routes(), &n);
        assert_eq!(got[&key("10.20.1.1")].dmac, [2, 0, 0, 0, 0, 1]);
        assert!(!got.contains_key(&key("10.20.30.5")), "its route leaves another interface");
        assert!(!got.contains_key(&key("8.8.8.8")), "the default gateway's neighbour is unknown");
    }
}

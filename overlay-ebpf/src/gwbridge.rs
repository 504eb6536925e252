//! docker_gwbridge: what a container sends on its gwbridge interface, at TC ingress on the host
//! end (before the bridge sees the frame). The container must use its own MAC and address. With
//! ICC off (Docker's `enable_icc=false`, enforced here instead of by iptables) it reaches only the
//! bridge itself: ARP for the gateway, unicast to the bridge's MAC, and no address of the
//! bridge's subnet but the gateway's. Replies of host-mode published ports are reverse-NATed
//! straight to the client; TCP and UDP to the outside are masqueraded here (nat.rs) and sent
//! out of the underlay; everything else goes to the node, which routes it (and masquerades it
//! with nftables).

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use overlay_common::{
    maps::{GwConfig, GW_HOST_PORTS, GW_ICC, GW_MASQUERADE, GW_VNI},
    stats::{DropReason, FwdCounter},
};

use crate::{
    arp::{ArpBody, ARP_REPLY, ARP_REQUEST},
    maps::{OV_GWBRIDGE, OV_LOCAL_IFACES},
    mesh, nat,
    parse::*,
    stats,
};

/// Ethernet + ARP covers Ethernet + IPv4 too; the host-mode reply path pulls what it needs.
const NEED_LINEAR: usize = ETH_LEN + ARP_LEN;

#[inline(always)]
pub fn from_gwbridge(ctx: &TcContext) -> Result<i32, DropReason> {
    // SAFETY: reading a field of the context the kernel gave us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: copied out before any map update can race with it.
    let iface = *unsafe { OV_LOCAL_IFACES.get(&ifindex) }.ok_or(DropReason::UnknownInterface)?;
    if iface.vni != GW_VNI {
        return Err(DropReason::UnknownInterface);
    }
    let gw = *OV_GWBRIDGE.get(0).ok_or(DropReason::NoConfig)?;
    ensure_linear(ctx, NEED_LINEAR)?;
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let eth: *const EthHdr = pkt.at(0).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    let eth = unsafe { &*eth };
    // Another container's MAC would steal its frames from the bridge's forwarding table.
    if eth.src_addr != iface.mac {
        return Err(DropReason::SpoofedMac);
    }
    let icc = gw.flags & GW_ICC != 0;
    let to_bridge = eth.dst_addr == gw.bridge_mac;
    match u16::from_be(eth.ether_type) {
        ETH_P_ARP => arp(&pkt, &gw, iface.ip, iface.mac, icc, eth.dst_addr),
        ETH_P_IP => ipv4(ctx, &pkt, &gw, iface.ip, ifindex, icc, to_bridge),
        // The gwbridge carries IPv4 only (IPv6 is off on the container's interface).
        _ => Err(DropReason::NotIpv4),
    }
}

#[inline(always)]
fn arp(pkt: &Packet, gw: &GwConfig, own: u32, mac: [u8; 6], icc: bool, dst: [u8; 6]) -> Result<i32, DropReason> {
    let (to_bridge, broadcast) = (dst == gw.bridge_mac, dst == [0xff; 6]);
    let a: *const ArpBody = pkt.at(ETH_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    let a = unsafe { &*a };
    // The node's neighbour entry for the container would point at another container's MAC.
    if a.sha != mac {
        return Err(DropReason::SpoofedMac);
    }
    if u32::from_ne_bytes(a.spa) != own {
        return Err(DropReason::SpoofedSource);
    }
    if icc {
        return Ok(TC_ACT_OK);
    }
    match be16(a.op) {
        // Broadcast, or unicast to the bridge (a neighbour probe), never to another container.
        ARP_REQUEST if u32::from_ne_bytes(a.tpa) == gw.gateway && (to_bridge || broadcast) => Ok(TC_ACT_OK),
        // Answers to the node (which asks before sending a container outside replies).
        ARP_REPLY if to_bridge => Ok(TC_ACT_OK),
        ARP_REQUEST | ARP_REPLY => Err(DropReason::IccBlocked),
        _ => Err(DropReason::ArpUnsupported),
    }
}

#[inline(always)]
fn ipv4(
    ctx: &TcContext,
    pkt: &Packet,
    gw: &GwConfig,
    own: u32,
    ifindex: u32,
    icc: bool,
    to_bridge: bool,
) -> Result<i32, DropReason> {
    let ip: *const Ipv4Hdr = pkt.at(ETH_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(DropReason::NotIpv4);
    }
    if ip.vihl & 0x0f < 5 {
        return Err(DropReason::BadIpHeaderLen);
    }
    let (src, dst) = (u32::from_ne_bytes(ip.src_addr), u32::from_ne_bytes(ip.dst_addr));
    if src != own {
        return Err(DropReason::SpoofedSource);
    }
    let on_bridge = dst & gw.mask == gw.subnet;
    // Broadcast and multicast frames (not to the bridge's MAC) reach every other container.
    if !icc && (!to_bridge || (on_bridge && dst != gw.gateway)) {
        return Err(DropReason::IccBlocked);
    }
    let frags = be16(ip.frags);
    let plain = ip.vihl & 0x0f == 5 && frags & (IP_MF | IP_OFFSET) == 0;
    // Copied: the calls below may move the packet, and `ip` with it.
    let l4 = plain && (ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP);
    let proto = ip.proto as u32;
    if gw.flags & GW_HOST_PORTS != 0 && !on_bridge && l4 {
        let r = mesh::gw_reply_frame(ctx, src, dst, proto);
        if r >= 0 {
            return Ok(r as i32);
        }
        if r != mesh::NOT_OURS {
            return Err(mesh::reason_of(r));
        }
    }
    if gw.flags & GW_MASQUERADE != 0 && !on_bridge && l4 {
        let r = nat::snat_frame(ctx, src, dst, proto, ifindex);
        if r >= 0 {
            return Ok(r as i32);
        }
        if r != mesh::NOT_OURS {
            return Err(mesh::reason_of(r));
        }
    }
    stats::fwd(FwdCounter::GwOut);
    Ok(TC_ACT_OK)
}

//! Container side: what a container sends, classified. The sender must use its own MAC and
//! IPv4 address; ARP is answered from the maps; IPv4 to a service VIP is balanced (lb.rs);
//! IPv4 to an endpoint of its network is delivered to the local veth or handed to
//! encapsulation; everything else is a counted drop.

use core::ptr;

use aya_ebpf::{helpers::generated::bpf_redirect_peer, programs::TcContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use overlay_common::{
    maps::{EndpointInfo, EndpointKey, LocalIface, EP_BACKEND, EP_GATEWAY, EP_LOCAL, EP_VIP},
    stats::{DropReason, FwdCounter},
};

use crate::{
    arp,
    encap::{self, Flow},
    lb::{self, ToVip},
    maps::{OV_ENDPOINTS, OV_LOCAL_IFACES},
    mesh::{self, FromBackend},
    parse::*,
    stats,
};

/// Linear bytes needed: Ethernet + ARP, which also covers Ethernet + IPv4 + L4 ports.
const NEED_LINEAR: usize = ETH_LEN + ARP_LEN;

#[inline(always)]
pub fn from_container(ctx: &TcContext) -> Result<i32, DropReason> {
    // SAFETY: reading a field of the context the kernel gave us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out before any map update can race with it.
    let iface = *unsafe { OV_LOCAL_IFACES.get(&ifindex) }.ok_or(DropReason::UnknownInterface)?;
    ensure_linear(ctx, NEED_LINEAR)?;
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let eth: *const EthHdr = pkt.at(0).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    let eth = unsafe { &*eth };
    // Another endpoint's MAC would poison the MAC tables of bridges behind kernel VTEPs.
    if eth.src_addr != iface.mac {
        return Err(DropReason::SpoofedMac);
    }
    match u16::from_be(eth.ether_type) {
        ETH_P_ARP => arp::answer(ctx, &iface, ifindex),
        ETH_P_IP => ipv4(ctx, &pkt, &iface, ifindex),
        _ => Err(DropReason::NotIpv4),
    }
}

#[inline(always)]
fn ipv4(ctx: &TcContext, pkt: &Packet, iface: &LocalIface, ifindex: u32) -> Result<i32, DropReason> {
    let ip: *const Ipv4Hdr = pkt.at(ETH_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(DropReason::NotIpv4);
    }
    if ip.vihl & 0x0f < 5 {
        return Err(DropReason::BadIpHeaderLen);
    }
    let src = u32::from_ne_bytes(ip.src_addr);
    let dst = u32::from_ne_bytes(ip.dst_addr);
    if src != iface.ip {
        return Err(DropReason::SpoofedSource);
    }
    if dst == u32::MAX || ip.dst_addr[0] & 0xf0 == 0xe0 {
        return Err(DropReason::Broadcast);
    }
    // Networks are isolated by construction: only endpoints of the sender's VNI are found.
    // A pointer, not a copy: an `Option` of the struct would be read whole before it is known
    // to be `Some` (uninitialised to the verifier).
    let found: *const EndpointInfo =
        unsafe { OV_ENDPOINTS.get(&EndpointKey { vni: iface.vni, ip: dst }) }.map_or(ptr::null(), |e| e as *const _);
    if !found.is_null() {
        // SAFETY: a map value.
        let ep = unsafe { &*found };
        if ep.flags & EP_LOCAL != 0 && (iface.flags | ep.flags) & EP_BACKEND == 0 {
            stats::fwd(FwdCounter::LocalDelivery);
            // Straight into the peer container's ingress, skipping the backlog queue.
            return Ok(unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32);
        }
    }

    let frags = be16(ip.frags);
    let first_fragment = frags & (IP_MF | IP_OFFSET) == 0;
    let options = ip.vihl & 0x0f != 5;
    let l4 = (ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP) && first_fragment && !options;
    // The 4 bytes of ports (TCP, UDP) feed the flow hash; TCP's data offset sizes GSO segments.
    let ports = if l4 { pkt.at::<u32>(ETH_LEN + IPV4_LEN).map(|p| unsafe { ptr::read_unaligned(p) }) } else { None };
    let l4_hdr = match ip.proto {
        IPPROTO_TCP if l4 => pkt.at::<u8>(ETH_LEN + IPV4_LEN + 12).map_or(20, |p| (unsafe { *p } >> 4) as u32 * 4),
        IPPROTO_UDP => UDP_LEN as u32,
        _ => 0,
    };
    let mut flow = Flow {
        src,
        dst,
        proto: ip.proto,
        ports: ports.unwrap_or(0),
        tos: ip.tos,
        df: frags & IP_DF != 0,
        l3_l4_hdr: ((ip.vihl & 0x0f) as u32) * 4 + l4_hdr,
    };
    let lip = lb::Ip {
        src,
        dst,
        proto: ip.proto,
        plain: l4 || (ip.proto == IPPROTO_ICMP && first_fragment && !options),
        tot_len: be16(ip.tot_len),
    };

    let mut ep = if found.is_null() {
        // Outside the network (through its gateway): a backend's reply to a routing-mesh client.
        if iface.flags & EP_BACKEND == 0 {
            return Err(DropReason::UnknownDestination);
        }
        match mesh::from_backend(ctx, iface, &flow, lip.plain)? {
            FromBackend::Done(action) => return Ok(action),
            // Back to the flow's entry node, on the ingress network (this interface's).
            FromBackend::Return(peer) => EndpointInfo { vtep: peer, ..EndpointInfo::default() },
        }
    } else {
        // SAFETY: a map value, copied before it can change under us.
        let ep = unsafe { *found };
        if ep.flags & EP_GATEWAY != 0 {
            return Err(DropReason::UnknownDestination);
        }
        ep
    };
    if ep.flags & EP_VIP != 0 {
        // Too big for the path: the client is told now, from the VIP, before a backend is picked.
        if let Some(action) = encap::unless_fits(ctx, &flow)? {
            return Ok(action);
        }
        match lb::to_vip(ctx, iface, ifindex, &lip)? {
            ToVip::Done(action) => return Ok(action),
            ToVip::Dnat(backend) => {
                flow.dst = backend;
                ep = *unsafe { OV_ENDPOINTS.get(&EndpointKey { vni: iface.vni, ip: backend }) }
                    .ok_or(DropReason::BackendGone)?;
                set_dst_mac(ctx, &ep.mac)?;
            }
        }
    } else {
        if ep.flags & EP_BACKEND != 0 && lip.plain {
            // Straight to a backend's own address: a VIP flow of the same ports is over.
            lb::direct_to_backend(ctx, &lip)?;
        }
        if iface.flags & EP_BACKEND != 0 && ep.flags & EP_LOCAL != 0 {
            // A backend's reply to a client on this node is reverse-NATed here (a remote
            // client's node does it on decapsulation: the flow is tracked where the client is).
            ensure_linear(ctx, lb::NEED_LINEAR)?;
            let pkt = Packet::new(ctx.data(), ctx.data_end());
            if let Some(rev) = lb::reply_of(&pkt, 0)? {
                lb::reverse_tc(ctx, &rev)?;
            }
        }
    }
    if ep.flags & EP_LOCAL != 0 {
        stats::fwd(FwdCounter::LocalDelivery);
        return Ok(unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32);
    }
    encap::encap(ctx, iface.vni, &ep, &flow)
}

#[inline(always)]
fn set_dst_mac(ctx: &TcContext, mac: &[u8; 6]) -> Result<(), DropReason> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let m: *mut [u8; 6] = pkt.at(0).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    unsafe { *m = *mac };
    Ok(())
}

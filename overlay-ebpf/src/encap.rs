//! Container side: classify what a container sends, deliver locally or VXLAN-encapsulate
//! towards the peer node's VTEP.

use core::{ffi::c_void, mem, ptr};

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, BPF_F_ADJ_ROOM_ENCAP_L2_ETH,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_SHOT,
    },
    helpers::generated::{bpf_check_mtu, bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use overlay_common::{
    maps::{EndpointInfo, EndpointKey, LocalIface, EP_LOCAL},
    stats::{DropReason, FwdCounter},
    vxlan::{flow_hash, src_port, ENCAP_OVERHEAD, FLAG_I},
};

use crate::{
    arp, icmp,
    maps::{config, OV_ENDPOINTS, OV_LOCAL_IFACES},
    parse::*,
    stats,
};

const AF_INET: u8 = 2;
/// Linear bytes needed: Ethernet + ARP, which also covers Ethernet + IPv4 + L4 ports.
const NEED_LINEAR: usize = ETH_LEN + ARP_LEN;
const OUTER_LEN: usize = ETH_LEN + IPV4_LEN + UDP_LEN + VXLAN_LEN;

/// Make the first `n` bytes readable through direct packet access.
#[inline(always)]
pub fn ensure_linear(ctx: &TcContext, n: usize) -> Result<(), DropReason> {
    if ctx.data_end() - ctx.data() < n {
        let len = ctx.len() as usize;
        let want = if len < n { len } else { n };
        ctx.pull_data(want as u32).map_err(|_| DropReason::HelperFailed)?;
    }
    Ok(())
}

#[inline(always)]
pub fn from_container(ctx: &TcContext) -> Result<i32, DropReason> {
    // SAFETY: reading a field of the context the kernel gave us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out before any map update can race with it.
    let iface = *unsafe { OV_LOCAL_IFACES.get(&ifindex) }.ok_or(DropReason::UnknownInterface)?;
    ensure_linear(ctx, NEED_LINEAR)?;
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let eth: *const EthHdr = pkt.at(0).ok_or(DropReason::Truncated)?;
    match u16::from_be(unsafe { (*eth).ether_type }) {
        ETH_P_ARP => arp::answer(ctx, &iface, ifindex),
        ETH_P_IP => ipv4(ctx, &pkt, &iface),
        _ => Err(DropReason::NotIpv4),
    }
}

#[inline(always)]
fn ipv4(ctx: &TcContext, pkt: &Packet, iface: &LocalIface) -> Result<i32, DropReason> {
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
    let ep = *unsafe { OV_ENDPOINTS.get(&EndpointKey { vni: iface.vni, ip: dst }) }
        .ok_or(DropReason::UnknownDestination)?;
    if ep.flags & EP_LOCAL != 0 {
        stats::fwd(FwdCounter::LocalDelivery);
        // Straight into the peer container's ingress, skipping the backlog queue.
        return Ok(unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32);
    }

    let ports = if (ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP)
        && ip.vihl & 0x0f == 5
        && be16(ip.frags) & (IP_MF | IP_OFFSET) == 0
    {
        match pkt.at::<u32>(ETH_LEN + IPV4_LEN) {
            Some(p) => unsafe { ptr::read_unaligned(p) },
            None => 0,
        }
    } else {
        0
    };
    let flow = Flow { src, dst, proto: ip.proto, ports, tos: ip.tos, df: be16(ip.frags) & IP_DF != 0 };
    encap(ctx, iface.vni, &ep, &flow)
}

struct Flow {
    src: u32,
    dst: u32,
    proto: u8,
    ports: u32,
    tos: u8,
    df: bool,
}

#[inline(always)]
fn encap(ctx: &TcContext, vni: u32, ep: &EndpointInfo, flow: &Flow) -> Result<i32, DropReason> {
    let cfg = *config().ok_or(DropReason::NoConfig)?;
    if cfg.node_ip == 0 {
        return Err(DropReason::NoConfig);
    }
    let skb = ctx.skb.skb as *mut c_void;

    // VTEPs do not fragment: refuse what will not fit the underlay once encapsulated
    // (GSO packets are checked per segment by the helper).
    let mut mtu_len: u32 = 0;
    if unsafe { bpf_check_mtu(skb, cfg.underlay_ifindex, &mut mtu_len, ENCAP_OVERHEAD as i32, 0) } != 0 {
        // The packet is dropped either way; a DF sender is told the MTU that fits.
        stats::drop(DropReason::TooBig);
        if flow.df {
            let mtu = cfg.underlay_mtu.saturating_sub(ENCAP_OVERHEAD) as u16;
            // SAFETY: reading a field of the context the kernel gave us.
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            if let Some(action) = icmp::frag_needed(ctx, ifindex, mtu) {
                return Ok(action);
            }
        }
        return Ok(TC_ACT_SHOT as i32);
    }

    // Next hop for the outer packet from the kernel's FIB and neighbour table.
    let mut fib: bpf_fib_lookup = unsafe { mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = IPPROTO_UDP;
    fib.ifindex = cfg.underlay_ifindex;
    fib.__bindgen_anon_3.ipv4_src = cfg.node_ip;
    fib.__bindgen_anon_4.ipv4_dst = ep.vtep;
    let rc = unsafe {
        fib_lookup(skb, &mut fib, mem::size_of::<bpf_fib_lookup>() as i32, BPF_FIB_LOOKUP_OUTPUT)
    } as u32;
    // SUCCESS gives both MACs and the egress device: the fast path. Without a cached
    // neighbour, or with forwarding off on the underlay (a plain host), the kernel resolves
    // the route and the next hop itself in bpf_redirect_neigh.
    let resolve_neigh = match rc {
        BPF_FIB_LKUP_RET_SUCCESS => false,
        BPF_FIB_LKUP_RET_NO_NEIGH | BPF_FIB_LKUP_RET_FWD_DISABLED => true,
        _ => return Err(DropReason::FibLookupFailed),
    };
    let egress = if rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH { fib.ifindex } else { cfg.underlay_ifindex };

    let inner_eth: [u8; ETH_LEN] = unsafe { *(Packet::new(ctx.data(), ctx.data_end()).at::<[u8; ETH_LEN]>(0).ok_or(DropReason::Truncated)?) };
    let inner_len = ctx.len();

    let flags = (BPF_F_ADJ_ROOM_FIXED_GSO
        | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
        | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
        | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
        | ((ETH_LEN as u64 & 0xff) << 56);
    ctx.adjust_room((OUTER_LEN) as i32, BPF_ADJ_ROOM_MAC, flags)
        .map_err(|_| DropReason::HelperFailed)?;

    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let hdr: *mut [u8; OUTER_LEN + ETH_LEN] = pkt.at(0).ok_or(DropReason::HelperFailed)?;

    // Outer IPv4: DF set (we never fragment), TOS copied from the inner packet.
    let tot_len = (inner_len as usize + OUTER_LEN - ETH_LEN) as u16;
    let mut ip = [0u8; IPV4_LEN];
    ip[0] = 0x45;
    ip[1] = flow.tos;
    ip[2..4].copy_from_slice(&tot_len.to_be_bytes());
    ip[6..8].copy_from_slice(&IP_DF.to_be_bytes());
    ip[8] = 64;
    ip[9] = IPPROTO_UDP;
    ip[12..16].copy_from_slice(&cfg.node_ip.to_ne_bytes());
    ip[16..20].copy_from_slice(&ep.vtep.to_ne_bytes());
    let csum = ipv4_csum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());

    let sport = src_port(flow_hash(flow.src, flow.dst, flow.proto, flow.ports));
    let udp_len = tot_len.wrapping_sub(IPV4_LEN as u16);

    let mut h = [0u8; OUTER_LEN + ETH_LEN];
    if !resolve_neigh {
        h[0..6].copy_from_slice(&fib.dmac);
        h[6..12].copy_from_slice(&fib.smac);
    }
    h[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    h[14..34].copy_from_slice(&ip);
    h[34..36].copy_from_slice(&sport.to_be_bytes());
    h[36..38].copy_from_slice(&cfg.vxlan_port.to_be_bytes());
    h[38..40].copy_from_slice(&udp_len.to_be_bytes());
    // h[40..42]: UDP checksum zero, valid for IPv4 (RFC 7348 section 5).
    h[42] = FLAG_I;
    h[46] = (vni >> 16) as u8;
    h[47] = (vni >> 8) as u8;
    h[48] = vni as u8;
    h[50..64].copy_from_slice(&inner_eth);
    unsafe { *hdr = h };

    if resolve_neigh {
        stats::fwd(FwdCounter::EncapNeighResolve);
        // The kernel routes the outer packet and fills the outer Ethernet header.
        Ok(unsafe { bpf_redirect_neigh(egress, ptr::null_mut(), 0, 0) } as i32)
    } else {
        stats::fwd(FwdCounter::Encap);
        Ok(unsafe { bpf_redirect(fib.ifindex, 0) } as i32)
    }
}

//! Encapsulation towards a remote endpoint's node: check the packet will fit the underlay, find
//! the next hop (the agent's cache, else the kernel FIB), then push and write the outer headers
//! (Ethernet, IPv4, UDP, VXLAN).

use core::{ffi::c_void, mem, ptr};

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_SHOT,
    },
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use overlay_common::{
    maps::{Config, EndpointInfo},
    stats::{DropReason, FwdCounter},
    vxlan::{flow_hash, src_port, ENCAP_OVERHEAD},
};

use crate::{
    hdr, icmp,
    maps::{config, OV_NEXTHOPS},
    parse::*,
    stats,
};

const AF_INET: u8 = 2;

/// What encapsulation needs to know of the inner packet.
#[derive(Clone, Copy)]
pub struct Flow {
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    /// The 4 bytes after the IPv4 header for TCP/UDP first fragments, else 0.
    pub ports: u32,
    pub tos: u8,
    pub df: bool,
    /// IPv4 header + TCP/UDP header bytes: with the GSO size, one segment's IP length.
    pub l3_l4_hdr: u32,
}

/// Where the outer packet goes.
struct Hop {
    ifindex: u32,
    /// Both MACs (from the cache or the FIB); `None`: the kernel resolves the neighbour
    /// (`bpf_redirect_neigh`).
    macs: Option<([u8; 6], [u8; 6])>,
    counter: FwdCounter,
}

#[inline(always)]
pub fn encap(ctx: &TcContext, vni: u32, ep: &EndpointInfo, flow: &Flow) -> Result<i32, DropReason> {
    let cfg = *config().ok_or(DropReason::NoConfig)?;
    if cfg.node_ip == 0 {
        return Err(DropReason::NoConfig);
    }
    if !fits_underlay(ctx, &cfg, flow) {
        return Ok(too_big(ctx, &cfg, flow));
    }
    let hop = match cached_next_hop(&cfg, ep.vtep) {
        Some(hop) => hop,
        None => next_hop(ctx, &cfg, ep.vtep)?,
    };
    write_headers(ctx, &cfg, vni, ep.vtep, flow, &hop)?;
    stats::fwd(hop.counter);
    match hop.macs {
        Some(_) => Ok(unsafe { bpf_redirect(hop.ifindex, 0) } as i32),
        // The kernel routes the outer packet and fills the outer Ethernet header.
        None => Ok(unsafe { bpf_redirect_neigh(hop.ifindex, ptr::null_mut(), 0, 0) } as i32),
    }
}

/// `encap` out of line, for callers whose own frame is large (the routing mesh's entry): BPF
/// allows 512 bytes of stack for a whole call chain. Negative: `-(reason)`.
#[inline(never)]
pub fn encap_frame(ctx: &TcContext, vni: u32, vtep: u32, flow: &Flow) -> i64 {
    let ep = EndpointInfo { vtep, ..EndpointInfo::default() };
    match encap(ctx, vni, &ep, flow) {
        Ok(a) => a as i64,
        Err(r) => -(r as i64),
    }
}

/// The MTU check alone, for VIP traffic before its DNAT: a frag-needed reply then comes from
/// the VIP, the address the client knows. `Some(action)`: the packet was too big.
#[inline(always)]
pub fn unless_fits(ctx: &TcContext, flow: &Flow) -> Result<Option<i32>, DropReason> {
    let cfg = *config().ok_or(DropReason::NoConfig)?;
    if fits_underlay(ctx, &cfg, flow) {
        return Ok(None);
    }
    Ok(Some(too_big(ctx, &cfg, flow)))
}

/// VTEPs do not fragment: the packet, or each segment of a GSO packet, must fit the underlay
/// MTU (from the agent's config, no device lookup) once encapsulated.
#[inline(always)]
fn fits_underlay(ctx: &TcContext, cfg: &Config, flow: &Flow) -> bool {
    // SAFETY: reading a field of the context the kernel gave us.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    let l3_len = if gso_size != 0 { flow.l3_l4_hdr + gso_size } else { ctx.len().saturating_sub(ETH_LEN as u32) };
    l3_len + ENCAP_OVERHEAD <= cfg.underlay_mtu
}

/// The packet is dropped either way; a DF sender is told the MTU that fits, so its path MTU
/// shrinks instead of the flow stalling.
#[inline(always)]
fn too_big(ctx: &TcContext, cfg: &Config, flow: &Flow) -> i32 {
    stats::drop(DropReason::TooBig);
    if flow.df {
        let mtu = cfg.underlay_mtu.saturating_sub(ENCAP_OVERHEAD) as u16;
        // SAFETY: reading a field of the context the kernel gave us.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        if let Some(action) = icmp::unreachable(ctx, ifindex, icmp::CODE_FRAG_NEEDED, mtu, FwdCounter::IcmpFragNeeded) {
            return action;
        }
    }
    TC_ACT_SHOT as i32
}

/// The next hop the agent cached from the kernel's route and neighbour tables: one hash lookup
/// instead of a FIB lookup. An entry resolved on another interface than today's underlay is
/// stale: the FIB decides.
#[inline(always)]
fn cached_next_hop(cfg: &Config, vtep: u32) -> Option<Hop> {
    let nh = unsafe { OV_NEXTHOPS.get(&vtep) }?;
    if nh.ifindex != cfg.underlay_ifindex {
        return None;
    }
    Some(Hop { ifindex: nh.ifindex, macs: Some((nh.dmac, nh.smac)), counter: FwdCounter::EncapCached })
}

/// Next hop for the outer packet from the kernel's FIB and neighbour table. SUCCESS gives both
/// MACs and the egress device: the fast path. Without a cached neighbour, or with forwarding off
/// on the underlay (a plain host), the kernel resolves the route and next hop in
/// `bpf_redirect_neigh`.
#[inline(always)]
fn next_hop(ctx: &TcContext, cfg: &Config, vtep: u32) -> Result<Hop, DropReason> {
    let mut fib = mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    // SAFETY: every byte of the struct is written before it is read.
    unsafe { hdr::zero(fib.as_mut_ptr().cast::<u8>(), mem::size_of::<bpf_fib_lookup>()) };
    let mut fib = unsafe { fib.assume_init() };
    fib.family = AF_INET;
    fib.l4_protocol = IPPROTO_UDP;
    fib.ifindex = cfg.underlay_ifindex;
    fib.__bindgen_anon_3.ipv4_src = cfg.node_ip;
    fib.__bindgen_anon_4.ipv4_dst = vtep;
    let skb = ctx.skb.skb as *mut c_void;
    let rc =
        unsafe { fib_lookup(skb, &mut fib, mem::size_of::<bpf_fib_lookup>() as i32, BPF_FIB_LOOKUP_OUTPUT) } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            Ok(Hop { ifindex: fib.ifindex, macs: Some((fib.dmac, fib.smac)), counter: FwdCounter::Encap })
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            Ok(Hop { ifindex: fib.ifindex, macs: None, counter: FwdCounter::EncapNeighResolve })
        }
        BPF_FIB_LKUP_RET_FWD_DISABLED => {
            Ok(Hop { ifindex: cfg.underlay_ifindex, macs: None, counter: FwdCounter::EncapNeighResolve })
        }
        _ => Err(DropReason::FibLookupFailed),
    }
}

/// Push the outer headers in front of the inner frame and write them. The outer IPv4 has DF set
/// (we never fragment) and the inner TOS; the UDP source port comes from the inner flow's hash.
#[inline(always)]
fn write_headers(ctx: &TcContext, cfg: &Config, vni: u32, vtep: u32, flow: &Flow, hop: &Hop) -> Result<(), DropReason> {
    let inner_eth: [u8; ETH_LEN] =
        unsafe { *(Packet::new(ctx.data(), ctx.data_end()).at::<[u8; ETH_LEN]>(0).ok_or(DropReason::Truncated)?) };
    let inner_len = ctx.len();
    let flags = (BPF_F_ADJ_ROOM_FIXED_GSO
        | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
        | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
        | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
        | ((ETH_LEN as u64 & 0xff) << 56);
    ctx.adjust_room(OUTER_LEN as i32, BPF_ADJ_ROOM_MAC, flags).map_err(|_| DropReason::HelperFailed)?;

    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let out: *mut u8 = pkt.at::<[u8; OUTER_LEN + ETH_LEN]>(0).ok_or(DropReason::HelperFailed)?.cast();
    let tot_len = (inner_len as usize + OUTER_LEN - ETH_LEN) as u16;
    let sport = src_port(flow_hash(flow.src, flow.dst, flow.proto, flow.ports));
    // Each header is written in place: assembling all 64 bytes in one stack buffer first makes
    // the compiler zero it with a byte-at-a-time memset call, a third of encapsulation's cost.
    // SAFETY: the 64 bytes from `out` were bounds-checked above.
    unsafe {
        match hop.macs {
            Some((dmac, smac)) => *out.cast::<[u8; ETH_LEN]>() = hdr::eth(&dmac, &smac, ETH_P_IP),
            // bpf_redirect_neigh fills in both MACs.
            None => {
                hdr::zero(out, 12);
                *out.add(12).cast::<[u8; 2]>() = ETH_P_IP.to_be_bytes();
            }
        }
        *out.add(14).cast::<[u8; IPV4_LEN]>() = hdr::ipv4(flow.tos, tot_len, IP_DF, IPPROTO_UDP, cfg.node_ip, vtep);
        *out.add(34).cast::<[u8; UDP_LEN]>() = hdr::udp(sport, cfg.vxlan_port, tot_len - IPV4_LEN as u16);
        *out.add(42).cast::<[u8; VXLAN_LEN]>() = hdr::vxlan(vni);
        *out.add(50).cast::<[u8; ETH_LEN]>() = inner_eth;
    }
    Ok(())
}

//! Service VIPs: IPVS-style balancing in the container-side program. A packet to VIP:port
//! finds its flow in conntrack, or has a backend picked by the service's scheduler; it is
//! DNATed to the backend and forwarded like any overlay packet. Replies are reverse-NATed where
//! the flow was tracked: in the backend's own program when client and backend share a node,
//! else on decapsulation at the client's node. A flow whose entry is gone (evicted, flushed,
//! agent restarted) gets the same backend again from the hash: an idle connection never dies
//! of a timeout.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use overlay_common::{
    maps::{CtEntry, CtKey, LocalIface, ServiceKey, CT_CLOSING, CT_MESH, CT_REPLY, SCHED_MAGLEV, SCHED_SH},
    stats::{DropReason, FwdCounter},
    vxlan::{default_mac, flow_hash},
};

use crate::{
    hdr, icmp,
    maps::{OV_BACKENDS, OV_CT, OV_LB_STATS, OV_MAGLEV, OV_RR, OV_SERVICES},
    parse::*,
    stats,
};

pub const TCP_LEN: usize = 20;
pub const L4: usize = ETH_LEN + IPV4_LEN;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
const ICMP_ECHO: u8 = 8;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// Bytes a VIP packet needs linear: up to the TCP flags, or an ICMP error's quoted ports.
pub const NEED_LINEAR: usize = L4 + 8 + IPV4_LEN + 4;
/// Slots tried past the picked one when it is the client itself (see `to_vip`).
const HAIRPIN_TRIES: u32 = 8;
/// `last_seen` is rewritten at most this often: a write per packet would bounce the entry's
/// cache line between CPUs.
pub const REFRESH_NS: u64 = 1_000_000_000;

/// What became of a packet to a VIP.
pub enum ToVip {
    /// Forward it to this backend address (already written into the packet).
    Dnat(u32),
    /// Answered or refused here (echo reply, reset, port unreachable): this action.
    Done(i32),
}

/// The IPv4 header fields balancing needs, read once by the caller.
pub struct Ip {
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    /// IHL 5 and not a fragment: the L4 header is at a fixed offset.
    pub plain: bool,
    pub tot_len: u16,
}

#[inline(always)]
pub fn read<T: Copy>(pkt: &Packet, off: usize) -> Result<T, DropReason> {
    let p: *const T = pkt.at(off).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked by `Packet::at`; unaligned because packet offsets are arbitrary.
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn count(backend: u32, conns: u64, outward: bool, bytes: u32) {
    if let Some(s) = OV_LB_STATS.get_ptr_mut(backend) {
        // Shared by every CPU: atomic adds (BPF_ATOMIC), relaxed, as counters need nothing more.
        // The intrinsic, because the BPF target has no compare-and-swap and so no AtomicU64.
        let add = |p: *mut u64, v: u64| {
            // SAFETY: `p` points into a map value, 8-byte aligned (LbStats is all u64).
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
        };
        // SAFETY: field addresses inside the map value; no reference is formed.
        unsafe {
            if conns != 0 {
                add(&raw mut (*s).conns, conns);
            }
            if outward {
                add(&raw mut (*s).out_pkts, 1);
                add(&raw mut (*s).out_bytes, bytes as u64);
            } else {
                add(&raw mut (*s).in_pkts, 1);
                add(&raw mut (*s).in_bytes, bytes as u64);
            }
        }
    }
}

/// A packet a container sent to a VIP (`vip` is its destination, an EP_VIP entry).
#[inline(always)]
pub fn to_vip(ctx: &TcContext, iface: &LocalIface, ifindex: u32, ip: &Ip) -> Result<ToVip, DropReason> {
    if !ip.plain {
        return Err(DropReason::VipUnsupported);
    }
    // Reads are bounded by the IPv4 length, never by the frame (whose tail the sender controls).
    let l4_min = match ip.proto {
        IPPROTO_TCP => TCP_LEN,
        _ => 8,
    };
    if (ip.tot_len as usize) < IPV4_LEN + l4_min || ctx.len() < (ETH_LEN + ip.tot_len as usize) as u32 {
        return Err(DropReason::BadLength);
    }
    ensure_linear(ctx, NEED_LINEAR)?;
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    if ip.proto == IPPROTO_ICMP {
        let ty: u8 = read(&pkt, L4)?;
        if ty != ICMP_ECHO {
            return Err(DropReason::VipUnsupported);
        }
        let r = echo_reply(ctx, iface, ifindex, ip);
        return if r < 0 { Err(DropReason::Truncated) } else { Ok(ToVip::Done(r as i32)) };
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Err(DropReason::VipUnsupported);
    }
    let ports: [u16; 2] = read(&pkt, L4)?;
    let flags: u8 = if ip.proto == IPPROTO_TCP { read(&pkt, L4 + 13)? } else { 0 };
    let svc = unsafe {
        OV_SERVICES.get(&ServiceKey { vni: iface.vni, ip: ip.dst, port: ports[1], proto: ip.proto, _pad: 0 })
    }
    .ok_or(DropReason::NoService)?;
    let (offset, size, scheduler, id) = (svc.offset, svc.size, svc.scheduler, svc.id);
    let key = CtKey { src: ip.src, dst: ip.dst, sport: ports[0], dport: ports[1], proto: ip.proto, _pad: [0; 3] };
    let t = now();

    if let Some(ct) = OV_CT.get_ptr_mut(&key) {
        // SAFETY: a map value; concurrent updates of these fields are benign (last writer wins).
        let ct = unsafe { &mut *ct };
        let backend = ct.backend;
        let alive = matches!(unsafe { OV_BACKENDS.get(&backend) }, Some(b) if b.ip == ct.nat_ip);
        if !alive {
            // The backend was removed: end the flow now rather than let it hang.
            let _ = OV_CT.remove(&key);
            return gone(ctx, iface, ifindex, ip).map(ToVip::Done);
        }
        if flags & (TCP_FIN | TCP_RST) != 0 {
            ct.flags |= CT_CLOSING;
        } else if flags & TCP_SYN != 0 {
            ct.flags &= !CT_CLOSING;
        }
        if t.wrapping_sub(ct.last_seen) > REFRESH_NS {
            ct.last_seen = t;
        }
        let nat = ct.nat_ip;
        count(backend, 0, false, ctx.len());
        stats::fwd(FwdCounter::LbForward);
        return dnat(ctx, ip, nat).map(|_| ToVip::Dnat(nat));
    }

    // No entry. A TCP packet without SYN is the middle of a flow whose entry was lost: a hash
    // scheduler picks the backend the flow had (the table is the same on every node); a cursor
    // cannot be replayed, so rr and wrr end the flow with a reset, as IPVS does.
    let mid_flow = ip.proto == IPPROTO_TCP && flags & TCP_SYN == 0;
    if size == 0 {
        return Err(DropReason::NoBackend);
    }
    let ports_word = (ports[0] as u32) | (ports[1] as u32) << 16;
    let slot = match scheduler {
        SCHED_MAGLEV => flow_hash(ip.src, ip.dst, ip.proto, ports_word) % size,
        SCHED_SH => flow_hash(ip.src, 0, 0, 0) % size,
        _ if mid_flow => return gone(ctx, iface, ifindex, ip).map(ToVip::Done),
        _ => match OV_RR.get_ptr_mut(id) {
            // SAFETY: per-CPU slot. A cursor past the end (the table shrank) starts over.
            Some(c) => unsafe {
                let v = if *c >= size { 0 } else { *c };
                *c = if v + 1 >= size { 0 } else { v + 1 };
                v
            },
            None => 0,
        },
    };
    // A backend calling its own service must not be handed to itself: a packet from its own
    // address would reach it as a martian. The next slots decide, the same way on every node and
    // every re-pick, so the choice stays consistent.
    let (mut backend, mut nat, mut i) = (0u32, ip.src, 0u32);
    while nat == ip.src && i < HAIRPIN_TRIES {
        let at = offset.wrapping_add((slot + i) % size);
        let pair = OV_MAGLEV.get(at >> 1).ok_or(DropReason::NoBackend)?;
        backend = pair[(at & 1) as usize];
        nat = unsafe { OV_BACKENDS.get(&backend) }.ok_or(DropReason::NoBackend)?.ip;
        i += 1;
    }
    if nat == ip.src {
        return Err(DropReason::NoBackend);
    }
    let closing = if flags & (TCP_FIN | TCP_RST) != 0 { CT_CLOSING } else { 0 };
    if insert_pair(&key, nat, backend, closing, t) != 0 {
        return Err(DropReason::ConntrackFull);
    }
    count(backend, if mid_flow { 0 } else { 1 }, false, ctx.len());
    stats::fwd(if mid_flow { FwdCounter::LbRepick } else { FwdCounter::LbNew });
    dnat(ctx, ip, nat).map(|_| ToVip::Dnat(nat))
}

/// Both conntrack entries of a new VIP flow (`key`: client -> VIP). Out of line: two 40-byte
/// entries would otherwise sit in the container program's frame. Non-zero: the map refused.
#[inline(never)]
fn insert_pair(key: &CtKey, nat: u32, backend: u32, closing: u32, t: u64) -> i64 {
    let fwd = CtEntry { nat_ip: nat, backend, flags: closing, last_seen: t, ..CtEntry::default() };
    let rkey = CtKey { src: nat, dst: key.src, sport: key.dport, dport: key.sport, proto: key.proto, _pad: [0; 3] };
    if OV_CT.insert(key, &fwd, 0).is_err() {
        return -1;
    }
    let rev = CtEntry { nat_ip: key.dst, backend, flags: closing | CT_REPLY, last_seen: t, ..CtEntry::default() };
    if OV_CT.insert(&rkey, &rev, 0).is_err() {
        return -1;
    }
    0
}

/// A client opening a connection straight to a backend's address (a TCP SYN, or UDP) from
/// ports a VIP flow to that backend used: that flow is over (the backend could not tell the
/// two apart), and its entries must not reverse-NAT the new connection's replies to the VIP.
#[inline(always)]
pub fn direct_to_backend(ctx: &TcContext, ip: &Ip) -> Result<(), DropReason> {
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Ok(());
    }
    ensure_linear(ctx, NEED_LINEAR)?;
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let ports: [u16; 2] = read(&pkt, L4)?;
    if ip.proto == IPPROTO_TCP {
        let flags: u8 = read(&pkt, L4 + 13)?;
        if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
            return Ok(());
        }
    }
    let rkey = CtKey { src: ip.dst, dst: ip.src, sport: ports[1], dport: ports[0], proto: ip.proto, _pad: [0; 3] };
    if let Some(e) = unsafe { OV_CT.get(&rkey) } {
        if e.flags & CT_REPLY != 0 {
            let vip = e.nat_ip;
            let _ = OV_CT.remove(&rkey);
            let fkey = CtKey { src: ip.src, dst: vip, sport: ports[0], dport: ports[1], proto: ip.proto, _pad: [0; 3] };
            let _ = OV_CT.remove(&fkey);
        }
    }
    Ok(())
}

/// Rewrite the destination address, with incremental checksum updates the kernel's helpers
/// apply correctly to offloaded (CHECKSUM_PARTIAL) packets too; a UDP checksum of 0 stays 0.
#[inline(always)]
fn dnat(ctx: &TcContext, ip: &Ip, to: u32) -> Result<(), DropReason> {
    rewrite_addr_tc(ctx, ETH_LEN + 16, ip.dst, to, ip.proto)
}

#[inline(always)]
pub fn rewrite_addr_tc(ctx: &TcContext, at: usize, old: u32, new: u32, proto: u8) -> Result<(), DropReason> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let p: *mut u32 = pkt.at(at).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    unsafe { core::ptr::write_unaligned(p, new) };
    ctx.l3_csum_replace(ETH_LEN + 10, old as u64, new as u64, 4).map_err(|_| DropReason::HelperFailed)?;
    let l4 = match proto {
        IPPROTO_TCP => Some((L4 + 16, 0)),
        IPPROTO_UDP => Some((L4 + 6, BPF_F_MARK_MANGLED_0 as u64)),
        _ => None,
    };
    if let Some((off, extra)) = l4 {
        ctx.l4_csum_replace(off, old as u64, new as u64, BPF_F_PSEUDO_HDR as u64 | extra | 4)
            .map_err(|_| DropReason::HelperFailed)?;
    }
    Ok(())
}

/// Ping to a VIP is answered by the VIP itself, in place.
/// Out of line (cold, and keeps the caller's stack small); negative: truncated.
#[inline(never)]
fn echo_reply(ctx: &TcContext, iface: &LocalIface, ifindex: u32, ip: &Ip) -> i64 {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let (Some(h), Some(eth)) = (pkt.at::<[u8; IPV4_LEN + 4]>(ETH_LEN), pkt.at::<[u8; 12]>(0)) else { return -1 };
    // SAFETY: bounds-checked above. Swapping the addresses leaves the IPv4 checksum as it was;
    // type 8 -> 0 adds 0x0800 to the ICMP checksum (RFC 1624).
    unsafe {
        let h = &mut *h;
        h[12..16].copy_from_slice(&ip.dst.to_ne_bytes());
        h[16..20].copy_from_slice(&ip.src.to_ne_bytes());
        h[20] = 0;
        let c = u16::from_be_bytes([h[22], h[23]]);
        h[22..24].copy_from_slice(&csum_replace2(c, 0x0800, 0).to_be_bytes());
        let e = &mut *eth;
        e[0..6].copy_from_slice(&iface.mac);
        e[6..12].copy_from_slice(&vip_mac(ip.dst));
    }
    stats::fwd(FwdCounter::LbEchoReply);
    unsafe { bpf_redirect(ifindex, 0) }
}

/// The VIP's MAC: Docker's rule, as the agent writes it in the VIP's endpoint entry.
#[inline(always)]
pub fn vip_mac(vip: u32) -> [u8; 6] {
    default_mac(vip.to_ne_bytes())
}

/// A tracked flow whose backend was removed: TCP gets a reset from the VIP, UDP a port
/// unreachable, so the client learns at once instead of retrying into a black hole.
#[inline(always)]
fn gone(ctx: &TcContext, iface: &LocalIface, ifindex: u32, ip: &Ip) -> Result<i32, DropReason> {
    if ip.proto == IPPROTO_UDP {
        return icmp::unreachable(ctx, ifindex, icmp::CODE_PORT_UNREACHABLE, 0, FwdCounter::IcmpPortUnreachable)
            .ok_or(DropReason::BackendGone);
    }
    let r = reset_frame(ctx, iface, ifindex, ip);
    if r < 0 {
        Err(DropReason::BackendGone)
    } else {
        Ok(r as i32)
    }
}

/// Out of line, like icmp::unreachable: a cold path with its own stack frame; negative: none.
#[inline(never)]
fn reset_frame(ctx: &TcContext, iface: &LocalIface, ifindex: u32, ip: &Ip) -> i64 {
    match reset(ctx, iface, ifindex, ip) {
        Some(a) => a as i64,
        None => -1,
    }
}

#[inline(always)]
fn reset(ctx: &TcContext, iface: &LocalIface, ifindex: u32, ip: &Ip) -> Option<i32> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let tcp: [u8; 16] = unsafe { *pkt.at::<[u8; 16]>(L4)? };
    let flags = tcp[13];
    if flags & TCP_RST != 0 {
        return None;
    }
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let doff = ((tcp[12] >> 4) as u16) * 4;
    let payload = ip.tot_len.saturating_sub(IPV4_LEN as u16 + doff) as u32;
    let syn_fin = (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
    // RFC 793: answer an ACK with its ack number as our sequence; else acknowledge the segment.
    let (rseq, rflags) = if flags & TCP_ACK != 0 { (ack, TCP_RST) } else { (0, TCP_RST | TCP_ACK) };
    let rack = seq.wrapping_add(payload + syn_fin);
    let ports = [tcp[2], tcp[3], tcp[0], tcp[1]];

    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (L4 + TCP_LEN) as u32, 0) } != 0 {
        return None;
    }
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let out: *mut [u8; L4 + TCP_LEN] = pkt.at(0)?;
    // SAFETY: the 54 bytes were bounds-checked above; written in place, as in icmp.rs.
    unsafe {
        let o = &mut *out;
        o[0..6].copy_from_slice(&iface.mac);
        o[6..12].copy_from_slice(&vip_mac(ip.dst));
        o[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        o[14..34].copy_from_slice(&hdr::ipv4(0, (IPV4_LEN + TCP_LEN) as u16, IP_DF, IPPROTO_TCP, ip.dst, ip.src));
        o[34..38].copy_from_slice(&ports);
        o[38..42].copy_from_slice(&rseq.to_be_bytes());
        o[42..46].copy_from_slice(&rack.to_be_bytes());
        o[46] = 5 << 4;
        o[47] = rflags;
        o[48..54].copy_from_slice(&[0; 6]);
        // The TCP checksum covers the pseudo header (addresses, protocol, length) too.
        let c = hdr::csum(&*o.as_ptr().add(L4).cast::<[u8; TCP_LEN]>(), 16);
        let pseudo = (ip.dst & 0xffff) + (ip.dst >> 16) + (ip.src & 0xffff) + (ip.src >> 16);
        let pseudo = pseudo + (IPPROTO_TCP as u16).to_be() as u32 + (TCP_LEN as u16).to_be() as u32;
        let c = csum_add(c, pseudo);
        o[50..52].copy_from_slice(&c.to_ne_bytes());
    }
    stats::fwd(FwdCounter::LbReset);
    Some(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// Add `more` (a sum of 16-bit words as they lie in memory) to a finished checksum `c` (as
/// written big-endian by hdr::csum), giving a finished checksum in memory order.
#[inline(always)]
fn csum_add(c: u16, more: u32) -> u16 {
    let mut s = (!c.to_be()) as u32 + more;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// What a reply needs rewritten: its source becomes `vip`.
pub struct Reverse {
    pub vip: u32,
    pub backend: u32,
}

/// Is this packet from a backend a reply of a flow tracked here? Reads the packet at `base`
/// (its IPv4 header offset is `base + ETH_LEN`). ICMP errors about a tracked flow count too.
#[inline(always)]
pub fn reply_of(pkt: &Packet, base: usize) -> Result<Option<Reverse>, DropReason> {
    let h: [u8; IPV4_LEN] = read(pkt, base + ETH_LEN)?;
    if h[0] != 0x45 || u16::from_be_bytes([h[6], h[7]]) & (IP_MF | IP_OFFSET) != 0 {
        return Ok(None);
    }
    let src = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
    let dst = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
    // Only what the IPv4 length covers is read: bytes past it are trailer, not headers.
    let tot_len = u16::from_be_bytes([h[2], h[3]]) as usize;
    let need = match h[9] {
        IPPROTO_TCP => IPV4_LEN + TCP_LEN,
        IPPROTO_UDP => IPV4_LEN + 8,
        _ => IPV4_LEN + 8 + IPV4_LEN + 4,
    };
    if tot_len < need {
        return Ok(None);
    }
    let key = match h[9] {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports: [u16; 2] = read(pkt, base + L4)?;
            CtKey { src, dst, sport: ports[0], dport: ports[1], proto: h[9], _pad: [0; 3] }
        }
        IPPROTO_ICMP => {
            // An error quotes the client's packet to the backend: client -> backend.
            let ty: u8 = read(pkt, base + L4)?;
            if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED {
                return Ok(None);
            }
            let q: [u8; IPV4_LEN + 4] = read(pkt, base + L4 + 8)?;
            if q[0] != 0x45 || (q[9] != IPPROTO_TCP && q[9] != IPPROTO_UDP) {
                return Ok(None);
            }
            let qsrc = u32::from_ne_bytes([q[12], q[13], q[14], q[15]]);
            let qdst = u32::from_ne_bytes([q[16], q[17], q[18], q[19]]);
            if qdst != src || qsrc != dst {
                return Ok(None);
            }
            let sport = u16::from_ne_bytes([q[22], q[23]]);
            let dport = u16::from_ne_bytes([q[20], q[21]]);
            CtKey { src, dst, sport, dport, proto: q[9], _pad: [0; 3] }
        }
        _ => return Ok(None),
    };
    let Some(ct) = OV_CT.get_ptr_mut(&key) else { return Ok(None) };
    // SAFETY: a map value; see to_vip.
    let ct = unsafe { &mut *ct };
    // A routing-mesh entry is reverse-NATed by mesh.rs, towards an outside client.
    if ct.flags & CT_REPLY == 0 || ct.flags & CT_MESH != 0 {
        return Ok(None);
    }
    let t = now();
    if t.wrapping_sub(ct.last_seen) > REFRESH_NS {
        ct.last_seen = t;
    }
    if h[9] == IPPROTO_TCP {
        let flags: u8 = read(pkt, base + L4 + 13)?;
        if flags & (TCP_FIN | TCP_RST) != 0 {
            ct.flags |= CT_CLOSING;
        }
    }
    Ok(Some(Reverse { vip: ct.nat_ip, backend: ct.backend }))
}

/// Reverse NAT in a TC program, the packet's IPv4 header at ETH_LEN: source becomes the VIP (and
/// for an ICMP error, the quoted destination too), source MAC the VIP's.
#[inline(always)]
pub fn reverse_tc(ctx: &TcContext, rev: &Reverse) -> Result<(), DropReason> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let h: [u8; IPV4_LEN] = read(&pkt, ETH_LEN)?;
    let src = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
    let proto = h[9];
    if proto == IPPROTO_ICMP {
        reverse_icmp_quote(&pkt, src, rev.vip)?;
    }
    rewrite_addr_tc(ctx, ETH_LEN + 12, src, rev.vip, proto)?;
    set_src_mac(ctx.data(), ctx.data_end(), rev.vip)?;
    count(rev.backend, 0, true, ctx.len());
    stats::fwd(FwdCounter::LbReverse);
    Ok(())
}

/// Reverse NAT in XDP: the same rewrite with checksums updated by hand (XDP frames carry full
/// checksums, never offloaded ones).
#[inline(always)]
pub fn reverse_xdp(start: usize, end: usize, rev: &Reverse) -> Result<(), DropReason> {
    let pkt = Packet::new(start, end);
    let h: *mut [u8; IPV4_LEN] = pkt.at(ETH_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    let h = unsafe { &mut *h };
    let src = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
    let proto = h[9];
    match proto {
        IPPROTO_TCP => fix_l4(&pkt, L4 + 16, src, rev.vip, false)?,
        IPPROTO_UDP => fix_l4(&pkt, L4 + 6, src, rev.vip, true)?,
        _ => reverse_icmp_quote(&pkt, src, rev.vip)?,
    }
    h[12..16].copy_from_slice(&rev.vip.to_ne_bytes());
    let c = u16::from_ne_bytes([h[10], h[11]]);
    h[10..12].copy_from_slice(&csum_replace4(c, src, rev.vip).to_ne_bytes());
    set_src_mac(start, end, rev.vip)?;
    count(rev.backend, 0, true, (end - start) as u32);
    stats::fwd(FwdCounter::LbReverse);
    Ok(())
}

#[inline(always)]
pub fn fix_l4(pkt: &Packet, at: usize, old: u32, new: u32, udp: bool) -> Result<(), DropReason> {
    let p: *mut [u8; 2] = pkt.at(at).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    let p = unsafe { &mut *p };
    let c = u16::from_ne_bytes(*p);
    if udp && c == 0 {
        return Ok(()); // no checksum: none to fix
    }
    let mut n = csum_replace4(c, old, new);
    if udp && n == 0 {
        n = 0xffff;
    }
    *p = n.to_ne_bytes();
    Ok(())
}

/// An ICMP error quotes the client's packet to the backend: its destination becomes the VIP,
/// fixing the quoted IPv4 checksum and the ICMP checksum (which covers both changes).
#[inline(always)]
fn reverse_icmp_quote(pkt: &Packet, backend: u32, vip: u32) -> Result<(), DropReason> {
    let icmp: *mut [u8; 8 + IPV4_LEN] = pkt.at(L4).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    let m = unsafe { &mut *icmp };
    let qc = u16::from_ne_bytes([m[18], m[19]]);
    let nqc = csum_replace4(qc, backend, vip);
    m[24..28].copy_from_slice(&vip.to_ne_bytes());
    m[18..20].copy_from_slice(&nqc.to_ne_bytes());
    let c = u16::from_ne_bytes([m[2], m[3]]);
    let c = csum_replace2(csum_replace4(c, backend, vip), u16::from_ne_bytes(qc.to_ne_bytes()), nqc);
    m[2..4].copy_from_slice(&c.to_ne_bytes());
    Ok(())
}

#[inline(always)]
fn set_src_mac(start: usize, end: usize, vip: u32) -> Result<(), DropReason> {
    let pkt = Packet::new(start, end);
    let m: *mut [u8; 6] = pkt.at(6).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    unsafe { *m = vip_mac(vip) };
    Ok(())
}

/// RFC 1624 incremental update of a checksum for a 32-bit field changing from `old` to `new`.
/// Values as they lie in memory: one's-complement sums do not care about byte order, as long as
/// the checksum is read and written the same way.
#[inline(always)]
pub fn csum_replace4(check: u16, old: u32, new: u32) -> u16 {
    let mut s = (!check) as u32;
    s += (!old & 0xffff) + ((!old) >> 16);
    s += (new & 0xffff) + (new >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[inline(always)]
pub fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    let mut s = (!check) as u32 + (!old) as u32 + new as u32;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

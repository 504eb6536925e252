//! "Destination unreachable" back to the sender of a packet (a container, or for the routing
//! mesh an outside client), quoting its IPv4 header and 8 bytes (TCP: its 20-byte header). "Fragmentation
//! needed": the overlay never fragments, so a DF packet that will not fit the underlay once
//! encapsulated is answered with the MTU that fits; its path MTU shrinks and it resends smaller
//! (RFC 1191), instead of the flow silently stalling. "Port unreachable": a UDP flow to a VIP
//! whose backend was removed.

use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action},
    helpers::generated::{bpf_redirect, bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::{TcContext, XdpContext},
};
use overlay_common::stats::FwdCounter;

use crate::{hdr, parse::*, stats};

pub const CODE_PORT_UNREACHABLE: u8 = 3;
pub const CODE_FRAG_NEEDED: u8 = 4;

const ICMP_LEN: usize = 8;
/// What the reply quotes of the packet: its IPv4 header and the first 8 bytes after it
/// (RFC 792)...
const QUOTE_LEN: usize = IPV4_LEN + 8;
const REPLY_LEN: usize = ETH_LEN + IPV4_LEN + ICMP_LEN + QUOTE_LEN;
/// ...or, for TCP, its whole 20-byte header: the kernel refuses to cut a packet whose checksum
/// is left to offload (CHECKSUM_PARTIAL) short of the checksum field, 16 bytes into TCP.
const QUOTE_TCP: usize = IPV4_LEN + 20;
const REPLY_TCP: usize = ETH_LEN + IPV4_LEN + ICMP_LEN + QUOTE_TCP;

/// Write the reply's headers in place over `o` (the quote already sits at its end).
#[inline(always)]
fn write_reply<const N: usize, const M: usize>(
    o: &mut [u8; N],
    macs: &[u8; 12],
    from: u32,
    to: u32,
    code: u8,
    mtu: u16,
) {
    o[0..6].copy_from_slice(&macs[6..12]);
    o[6..12].copy_from_slice(&macs[0..6]);
    o[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    let tot_len = (N - ETH_LEN) as u16;
    o[14..34].copy_from_slice(&hdr::ipv4(0xc0, tot_len, 0, IPPROTO_ICMP, from, to));
    o[34] = 3; // destination unreachable
    o[35] = code;
    o[36..40].copy_from_slice(&[0; 4]);
    o[40..42].copy_from_slice(&mtu.to_be_bytes());
    // SAFETY: M = N - 34 bytes from offset 34 lie inside `o`.
    let c = hdr::csum(unsafe { &*o.as_ptr().add(34).cast::<[u8; M]>() }, 2);
    o[36..38].copy_from_slice(&c.to_be_bytes());
}

/// Rewrite the packet into an ICMP destination unreachable (`code`; `mtu` for frag-needed)
/// from the address it was sent to, and send it back out the veth it came in on. `None` when
/// the packet cannot be turned into one (the caller then just drops it).
#[inline(always)]
pub fn unreachable(ctx: &TcContext, ifindex: u32, code: u8, mtu: u16, counter: FwdCounter) -> Option<i32> {
    let r = unreachable_frame(ctx, ifindex, (code as u32) << 16 | mtu as u32, counter as u32);
    if r < 0 {
        None
    } else {
        Some(r as i32)
    }
}

/// Out of line: a cold path whose buffers would otherwise share the caller's 512-byte stack.
/// BPF calls take five register arguments and return one: no `Option`, a negative result
/// means "no reply".
#[inline(never)]
fn unreachable_frame(ctx: &TcContext, ifindex: u32, code_mtu: u32, counter: u32) -> i64 {
    match build(ctx, ifindex, (code_mtu >> 16) as u8, code_mtu as u16, counter) {
        Some(a) => a as i64,
        None => -1,
    }
}

#[inline(always)]
fn build(ctx: &TcContext, ifindex: u32, code: u8, mtu: u16, counter: u32) -> Option<i32> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let macs: [u8; 12] = unsafe { *pkt.at::<[u8; 12]>(0)? };
    let head: [u8; IPV4_LEN] = unsafe { *pkt.at::<[u8; IPV4_LEN]>(ETH_LEN)? };
    if head[0] != 0x45 {
        return None;
    }
    // From the address the packet was for: the container's stack matches the quote anyway.
    let to = u32::from_ne_bytes([head[12], head[13], head[14], head[15]]);
    let from = u32::from_ne_bytes([head[16], head[17], head[18], head[19]]);
    let tcp = head[9] == IPPROTO_TCP;
    let quote = if tcp { QUOTE_TCP } else { QUOTE_LEN };
    // Keep Ethernet + the quoted bytes (this also ends any GSO), then open room for the new
    // IPv4 and ICMP headers right after the Ethernet header: the quote is then in place.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_LEN + quote) as u32, 0) } != 0 {
        return None;
    }
    ctx.adjust_room((IPV4_LEN + ICMP_LEN) as i32, BPF_ADJ_ROOM_MAC, 0).ok()?;

    let pkt = Packet::new(ctx.data(), ctx.data_end());
    // SAFETY: the reply's bytes are bounds-checked by `at`. Headers are written in place (a
    // stack copy of the reply would not fit beside the caller's frame).
    if tcp {
        let out: *mut [u8; REPLY_TCP] = pkt.at(0)?;
        write_reply::<REPLY_TCP, { REPLY_TCP - 34 }>(unsafe { &mut *out }, &macs, from, to, code, mtu);
    } else {
        let out: *mut [u8; REPLY_LEN] = pkt.at(0)?;
        write_reply::<REPLY_LEN, { REPLY_LEN - 34 }>(unsafe { &mut *out }, &macs, from, to, code, mtu);
    }
    stats::fwd_index(counter);
    Some(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// The same reply in XDP (the routing mesh's entry): built in place from the packet and
/// transmitted back out of the interface it came in on. Negative: no reply could be built.
#[inline(never)]
pub fn unreachable_xdp(ctx: &XdpContext, code: u8, mtu: u16) -> i64 {
    match build_xdp(ctx, code, mtu) {
        Some(a) => a as i64,
        None => -1,
    }
}

#[inline(always)]
fn build_xdp(ctx: &XdpContext, code: u8, mtu: u16) -> Option<u32> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let macs: [u8; 12] = unsafe { *pkt.at::<[u8; 12]>(0)? };
    let head: [u8; IPV4_LEN] = unsafe { *pkt.at::<[u8; IPV4_LEN]>(ETH_LEN)? };
    if head[0] != 0x45 {
        return None;
    }
    let to = u32::from_ne_bytes([head[12], head[13], head[14], head[15]]);
    let from = u32::from_ne_bytes([head[16], head[17], head[18], head[19]]);
    let tcp = head[9] == IPPROTO_TCP;
    let reply = if tcp { REPLY_TCP } else { REPLY_LEN };
    // Open room for the new IPv4 and ICMP headers in front: the packet's own IPv4 header and
    // the bytes after it then sit where the reply quotes them. Then cut the rest (the same
    // quote as in TC, so both send the same reply).
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -((IPV4_LEN + ICMP_LEN) as i32)) } != 0 {
        return None;
    }
    let len = (ctx.data_end() - ctx.data()) as i32;
    if len < reply as i32 || unsafe { bpf_xdp_adjust_tail(ctx.ctx, reply as i32 - len) } != 0 {
        return None;
    }
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    // SAFETY: as in `build`.
    if tcp {
        let out: *mut [u8; REPLY_TCP] = pkt.at(0)?;
        write_reply::<REPLY_TCP, { REPLY_TCP - 34 }>(unsafe { &mut *out }, &macs, from, to, code, mtu);
    } else {
        let out: *mut [u8; REPLY_LEN] = pkt.at(0)?;
        write_reply::<REPLY_LEN, { REPLY_LEN - 34 }>(unsafe { &mut *out }, &macs, from, to, code, mtu);
    }
    stats::fwd(FwdCounter::IcmpFragNeeded);
    Some(xdp_action::XDP_TX)
}

//! "Fragmentation needed": the overlay never fragments, so a DF packet that will not fit the
//! underlay once encapsulated is turned into an ICMP type 3 code 4 reply carrying the MTU
//! that fits, sent back into the container. Its path MTU shrinks and it resends smaller
//! (RFC 1191), instead of the flow silently stalling.

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    helpers::generated::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use overlay_common::stats::FwdCounter;

use crate::{hdr, parse::*, stats};

const IPPROTO_ICMP: u8 = 1;

const ICMP_LEN: usize = 8;
/// What the reply quotes of the packet: its IPv4 header and the first 8 bytes after it.
const QUOTE_LEN: usize = IPV4_LEN + 8;
const REPLY_LEN: usize = ETH_LEN + IPV4_LEN + ICMP_LEN + QUOTE_LEN;

/// Rewrite the packet into the ICMP reply and send it back out the veth it came in on.
/// `None` when the packet cannot be turned into one (the caller then just drops it).
#[inline(always)]
pub fn frag_needed(ctx: &TcContext, ifindex: u32, mtu: u16) -> Option<i32> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let eth: [u8; ETH_LEN] = unsafe { *pkt.at::<[u8; ETH_LEN]>(0)? };
    let quote: [u8; QUOTE_LEN] = unsafe { *pkt.at::<[u8; QUOTE_LEN]>(ETH_LEN)? };
    if quote[0] != 0x45 {
        return None;
    }
    // Keep Ethernet + the quoted bytes (this also ends any GSO), then open room for the new
    // IPv4 and ICMP headers right after the Ethernet header.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_LEN + QUOTE_LEN) as u32, 0) } != 0 {
        return None;
    }
    ctx.adjust_room((IPV4_LEN + ICMP_LEN) as i32, BPF_ADJ_ROOM_MAC, 0).ok()?;

    let mut icmp = [0u8; ICMP_LEN + QUOTE_LEN];
    icmp[0] = 3; // destination unreachable
    icmp[1] = 4; // fragmentation needed and DF set
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[8..].copy_from_slice(&quote);
    let c = hdr::csum(&icmp, 2);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());

    // From the address the packet was for: the container's stack matches the quote anyway.
    let (to, from) = (
        u32::from_ne_bytes([quote[12], quote[13], quote[14], quote[15]]),
        u32::from_ne_bytes([quote[16], quote[17], quote[18], quote[19]]),
    );
    let tot_len = (IPV4_LEN + ICMP_LEN + QUOTE_LEN) as u16;
    let mut out = [0u8; REPLY_LEN];
    out[0..14].copy_from_slice(&hdr::eth(
        &[eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]],
        &[eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]],
        ETH_P_IP,
    ));
    out[14..34].copy_from_slice(&hdr::ipv4(0xc0, tot_len, 0, IPPROTO_ICMP, from, to));
    out[34..].copy_from_slice(&icmp);
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let dst: *mut [u8; REPLY_LEN] = pkt.at(0)?;
    unsafe { *dst = out };
    stats::fwd(FwdCounter::IcmpFragNeeded);
    Some(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

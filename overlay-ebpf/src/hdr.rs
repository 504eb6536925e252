//! Header builders: every header the datapath writes (encapsulation, ICMP replies) is built here,
//! once, as bytes in network order. Checksums are computed over fixed-size headers.

use crate::parse::{ETH_LEN, IPV4_LEN, UDP_LEN, VXLAN_LEN};
use overlay_common::vxlan::FLAG_I;

const TTL: u8 = 64;

/// Internet checksum of a fixed-size header; the checksum field at `skip` is taken as zero.
#[inline(always)]
pub fn csum<const N: usize>(h: &[u8; N], skip: usize) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i + 1 < N {
        if i != skip {
            sum += u16::from_be_bytes([h[i], h[i + 1]]) as u32;
        }
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Zero `len` bytes at `p`. Volatile stores, because the compiler turns a zeroed buffer or a
/// zeroing loop into a call to a byte-at-a-time `memset` (a BPF-to-BPF call with a loop).
///
/// # Safety
/// `p..p + len` must be writable.
#[inline(always)]
pub unsafe fn zero(p: *mut u8, len: usize) {
    let mut i = 0;
    while i + 8 <= len {
        unsafe { core::ptr::write_volatile(p.add(i).cast::<[u8; 8]>(), [0; 8]) };
        i += 8;
    }
    while i < len {
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
}

#[inline(always)]
pub fn eth(dst: &[u8; 6], src: &[u8; 6], ether_type: u16) -> [u8; ETH_LEN] {
    let mut h = [0u8; ETH_LEN];
    h[0..6].copy_from_slice(dst);
    h[6..12].copy_from_slice(src);
    h[12..14].copy_from_slice(&ether_type.to_be_bytes());
    h
}

/// IPv4 header without options, checksum filled in. Addresses in network order (as read from
/// packets and maps); `frags` is the flags/fragment-offset field (host order).
#[inline(always)]
pub fn ipv4(tos: u8, tot_len: u16, frags: u16, proto: u8, src: u32, dst: u32) -> [u8; IPV4_LEN] {
    let mut h = [0u8; IPV4_LEN];
    h[0] = 0x45;
    h[1] = tos;
    h[2..4].copy_from_slice(&tot_len.to_be_bytes());
    h[6..8].copy_from_slice(&frags.to_be_bytes());
    h[8] = TTL;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.to_ne_bytes());
    h[16..20].copy_from_slice(&dst.to_ne_bytes());
    let c = csum(&h, 10);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// UDP header with checksum 0: no checksum, valid for IPv4 (and what RFC 7348 section 5 asks of
/// VXLAN senders that do not compute one).
#[inline(always)]
pub fn udp(sport: u16, dport: u16, len: u16) -> [u8; UDP_LEN] {
    let mut h = [0u8; UDP_LEN];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&len.to_be_bytes());
    h
}

/// VXLAN header: the I flag and the VNI; reserved fields zero.
#[inline(always)]
pub fn vxlan(vni: u32) -> [u8; VXLAN_LEN] {
    [FLAG_I, 0, 0, 0, (vni >> 16) as u8, (vni >> 8) as u8, vni as u8, 0]
}

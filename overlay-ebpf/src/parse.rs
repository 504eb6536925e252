//! Parsing: header sizes and constants, and bounds-checked access shared by the XDP and TC
//! programs. Every header read goes through `Packet::at`, which proves to the verifier that the
//! header fits; a TC program first makes the bytes it reads linear with `ensure_linear`.

use core::mem;

use aya_ebpf::programs::TcContext;
use overlay_common::{stats::DropReason, vxlan::ENCAP_OVERHEAD};

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const VXLAN_LEN: usize = 8;
pub const ARP_LEN: usize = 28;
/// Outer Ethernet + IPv4 + UDP + VXLAN: the bytes encapsulation adds and decapsulation strips.
pub const OUTER_LEN: usize = ENCAP_OVERHEAD as usize;
const _: () = assert!(OUTER_LEN == ETH_LEN + IPV4_LEN + UDP_LEN + VXLAN_LEN);

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// IPv4 flags/fragment-offset field: more-fragments bit and offset mask.
pub const IP_MF: u16 = 0x2000;
pub const IP_DF: u16 = 0x4000;
pub const IP_OFFSET: u16 = 0x1fff;

#[derive(Clone, Copy)]
pub struct Packet {
    pub start: usize,
    pub end: usize,
}

impl Packet {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Pointer to a `T` at `offset`, or `None` when it does not fit in the packet.
    #[inline(always)]
    pub fn at<T>(&self, offset: usize) -> Option<*mut T> {
        let p = self.start + offset;
        if p + mem::size_of::<T>() > self.end {
            return None;
        }
        Some(p as *mut T)
    }
}

/// Big-endian u16 as found in a header.
#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Make the first `n` bytes of an skb readable through direct packet access (shorter packets:
/// all of them).
#[inline(always)]
pub fn ensure_linear(ctx: &TcContext, n: usize) -> Result<(), DropReason> {
    if ctx.data_end() - ctx.data() < n {
        let len = ctx.len() as usize;
        let want = if len < n { len } else { n };
        ctx.pull_data(want as u32).map_err(|_| DropReason::HelperFailed)?;
    }
    Ok(())
}

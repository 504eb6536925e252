//! Bounds-checked header access shared by the XDP and TC programs. Every header read goes
//! through `Packet::at`, which proves to the verifier that the header fits.

use core::mem;

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const VXLAN_LEN: usize = 8;
pub const ARP_LEN: usize = 28;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
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

/// Checksum of a 20-byte IPv4 header (no options).
#[inline(always)]
pub fn ipv4_csum(h: &[u8; IPV4_LEN]) -> u16 {
    csum(h, 10)
}

//! ARP on the container side: requests for endpoints of the sender's network are answered
//! from the maps, so nothing is ever flooded (there is no bridge to flood to).

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use network_types::eth::EthHdr;
use overlay_common::{
    maps::{EndpointKey, LocalIface},
    stats::{DropReason, FwdCounter},
};

use crate::{
    maps::OV_ENDPOINTS,
    parse::{be16, Packet, ARP_LEN, ETH_LEN, ETH_P_IP},
    stats,
};

/// Ethernet/IPv4 ARP body (RFC 826), after the Ethernet header.
#[repr(C)]
pub struct ArpBody {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub op: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<ArpBody>() == ARP_LEN);

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

/// Turn the request into the reply in place and send it back out the veth it came in on.
#[inline(always)]
pub fn answer(ctx: &TcContext, iface: &LocalIface, ifindex: u32) -> Result<i32, DropReason> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let eth: *mut EthHdr = pkt.at(0).ok_or(DropReason::Truncated)?;
    let arp: *mut ArpBody = pkt.at(ETH_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: both pointers were bounds-checked by `Packet::at`.
    unsafe {
        let a = &mut *arp;
        if be16(a.htype) != 1 || be16(a.ptype) != ETH_P_IP || a.hlen != 6 || a.plen != 4 || be16(a.op) != ARP_REQUEST {
            return Err(DropReason::ArpUnsupported);
        }
        // The reply goes to the sender hardware address: it must be the container's own.
        if a.sha != iface.mac {
            return Err(DropReason::SpoofedMac);
        }
        let target = u32::from_ne_bytes(a.tpa);
        // A probe for its own address (DAD, gratuitous ARP) gets no answer: the address is its own.
        if target == iface.ip {
            return Err(DropReason::ArpUnknownTarget);
        }
        let ep = OV_ENDPOINTS.get(&EndpointKey { vni: iface.vni, ip: target }).ok_or(DropReason::ArpUnknownTarget)?;
        let mac = ep.mac;

        // The sender's MAC is written from `iface` (equal, checked above): copying it within the
        // packet would compile to a byte-at-a-time memmove call.
        let e = &mut *eth;
        e.dst_addr = iface.mac;
        e.src_addr = mac;
        a.op = ARP_REPLY.to_be_bytes();
        a.tha = iface.mac;
        a.tpa = a.spa;
        a.sha = mac;
        a.spa = target.to_ne_bytes();

        stats::fwd(FwdCounter::ArpReply);
        Ok(bpf_redirect(ifindex, 0) as i32)
    }
}

//! Underlay side: recognise VXLAN addressed to this VTEP, check it, and hand the inner frame to
//! the local container. Anything that is not ours passes to the host untouched.
//!
//! The underlay is hostile: any host on it can send us VXLAN, which has no authentication. A
//! frame is delivered only if it comes from a cluster node, its inner source is an endpoint of the
//! frame's network hosted on that node, and it is addressed to the destination endpoint's own
//! MAC. Every read is bounded by the outer IPv4 and UDP lengths, never by the frame (whose
//! trailer an attacker controls).

use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect, bpf_redirect_peer, bpf_xdp_adjust_head},
    programs::{TcContext, XdpContext},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};
use overlay_common::{
    maps::{Config, EndpointKey, EP_BACKEND, EP_LOCAL, NET_INGRESS},
    stats::{DropReason, FwdCounter},
    vxlan::FLAG_I,
};

use crate::{
    encap, lb,
    maps::{config, OV_ENDPOINTS, OV_NETWORKS, OV_NODES},
    mesh, nat,
    parse::*,
    stats,
};

const INNER_ETH: usize = OUTER_LEN;
const INNER_IP: usize = OUTER_LEN + ETH_LEN;
/// Bytes a TC program needs linear to classify: both header stacks.
const NEED_LINEAR: usize = INNER_IP + IPV4_LEN;
/// The smallest outer IPv4 packet that can carry an inner frame, and one carrying inner IPv4.
const MIN_TOT_LEN: usize = IPV4_LEN + UDP_LEN + VXLAN_LEN + ETH_LEN;
const MIN_TOT_LEN_IPV4: usize = MIN_TOT_LEN + IPV4_LEN;

pub enum Verdict {
    /// Not ours: hand to the host stack untouched.
    Pass,
    /// Ours and valid: strip the outer headers and deliver to this host-side veth. `reply`:
    /// from a service backend, so possibly a reply to reverse-NAT. `mesh_peer`: a routing-mesh
    /// packet (outside client) that entered the cluster at this node, else 0.
    Decap { ifindex: u32, reply: bool, mesh_peer: u32 },
    /// On the ingress network, from a backend to an outside client: a routing-mesh reply that
    /// entered at this node, returned by the backend's node (mesh.rs checks its conntrack).
    MeshReply,
}

/// Decide what an underlay frame is. Frames too short or too odd to be identified as VXLAN to
/// our address and port pass (the host stack owns them); once they are identified as ours,
/// every defect is a counted drop. `frame_len` is the whole frame: for an skb it is larger
/// than the directly readable (linear) part that `pkt` covers.
#[inline(always)]
pub fn classify(pkt: &Packet, frame_len: usize, cfg: &Config) -> Result<Verdict, DropReason> {
    let Some(eth) = pkt.at::<EthHdr>(0) else { return Ok(Verdict::Pass) };
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IP {
        return Ok(Verdict::Pass);
    }
    let Some(ip) = pkt.at::<Ipv4Hdr>(ETH_LEN) else { return Ok(Verdict::Pass) };
    // SAFETY: bounds-checked above.
    let ip = unsafe { &*ip };
    if ip.proto != IPPROTO_UDP || u32::from_ne_bytes(ip.dst_addr) != cfg.node_ip || ip.vihl >> 4 != 4 {
        return Ok(Verdict::Pass);
    }
    let ihl = (ip.vihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(DropReason::BadIpHeaderLen);
    }
    let frags = be16(ip.frags);
    if frags & IP_OFFSET != 0 {
        // A non-first fragment carries no UDP header: it cannot be told apart from the host's own.
        return Ok(Verdict::Pass);
    }
    if ihl > 5 {
        let off = ETH_LEN + ((ihl * 4) & 0x3c);
        if let Some(udp) = pkt.at::<UdpHdr>(off) {
            if be16(unsafe { (*udp).dst }) == cfg.vxlan_port {
                return Err(DropReason::OuterIpOptions);
            }
        }
        return Ok(Verdict::Pass);
    }
    let Some(udp) = pkt.at::<UdpHdr>(ETH_LEN + IPV4_LEN) else { return Ok(Verdict::Pass) };
    let udp = unsafe { &*udp };
    if be16(udp.dst) != cfg.vxlan_port {
        return Ok(Verdict::Pass);
    }
    // From here on the frame is VXLAN to us. A sender that is no node is named first, whatever
    // else is wrong with its frame.
    let outer_src = u32::from_ne_bytes(ip.src_addr);
    let from_node = || unsafe { OV_NODES.get(&outer_src) }.is_some();
    let check = |r: Result<Verdict, DropReason>| match r {
        Err(_) if !from_node() => Err(DropReason::UnknownVtep),
        r => r,
    };
    check(vxlan(pkt, frame_len, ip, udp, frags, outer_src))
}

/// The checks of a frame known to be VXLAN to us.
#[inline(always)]
fn vxlan(
    pkt: &Packet,
    frame_len: usize,
    ip: &Ipv4Hdr,
    udp: &UdpHdr,
    frags: u16,
    outer_src: u32,
) -> Result<Verdict, DropReason> {
    if frags & IP_MF != 0 {
        return Err(DropReason::OuterFragment);
    }
    let tot_len = be16(ip.tot_len) as usize;
    if tot_len < MIN_TOT_LEN || ETH_LEN + tot_len > frame_len || be16(udp.len) as usize != tot_len - IPV4_LEN {
        return Err(DropReason::BadLength);
    }
    let vx: *const [u8; VXLAN_LEN] = pkt.at(ETH_LEN + IPV4_LEN + UDP_LEN).ok_or(DropReason::Truncated)?;
    let vx = unsafe { *vx };
    if vx[0] & FLAG_I == 0 {
        return Err(DropReason::VxlanNoIFlag);
    }
    let vni = (vx[4] as u32) << 16 | (vx[5] as u32) << 8 | vx[6] as u32;
    // The fast path needs one lookup per endpoint (keyed by VNI and IP); whether the VNI is
    // known at all is asked only to name the reason of a drop, and takes precedence.
    let unknown_vni = || unsafe { OV_NETWORKS.get(&vni) }.is_none();
    let inner: *const EthHdr = pkt.at(INNER_ETH).ok_or(DropReason::Truncated)?;
    let inner = unsafe { &*inner };
    match u16::from_be(inner.ether_type) {
        ETH_P_IP => {}
        _ if unknown_vni() => return Err(DropReason::UnknownVni),
        ETH_P_8021Q | ETH_P_8021AD => return Err(DropReason::InnerVlan),
        _ => return Err(DropReason::InnerNotIpv4),
    }
    if tot_len < MIN_TOT_LEN_IPV4 {
        return Err(DropReason::BadLength);
    }
    let iip: *const Ipv4Hdr = pkt.at(INNER_IP).ok_or(DropReason::Truncated)?;
    let iip = unsafe { &*iip };
    if iip.vihl & 0x0f < 5 {
        return Err(DropReason::BadIpHeaderLen);
    }
    // The inner packet must lie within the outer one: bytes past it are trailer, not payload.
    // Outer IPv4 length = outer IPv4 + UDP + VXLAN + inner Ethernet + inner IPv4 length.
    if be16(iip.tot_len) as usize > tot_len - MIN_TOT_LEN {
        return Err(DropReason::BadLength);
    }
    // The ingress network carries outside clients' addresses (the routing mesh): its own rule.
    let ingress = || matches!(unsafe { OV_NETWORKS.get(&vni) }, Some(n) if n.flags & NET_INGRESS != 0);
    let dst = match unsafe { OV_ENDPOINTS.get(&EndpointKey { vni, ip: u32::from_ne_bytes(iip.dst_addr) }) } {
        Some(ep) if ep.flags & EP_LOCAL != 0 => Some(*ep),
        // To an outside client: a mesh reply, if the source is a backend of the sending node
        // (checked next) and conntrack knows the flow (mesh.rs).
        None if ingress() => None,
        _ if unknown_vni() => return Err(DropReason::UnknownVni),
        _ => return Err(DropReason::DecapNotLocal),
    };
    // The inner source: an endpoint of this network, hosted on the node that sent the frame.
    // On the ingress network, also an outside client sent by another node's mesh entry to a
    // local backend: accepted from cluster nodes only, and tracked so replies go back there.
    let (reply, mesh_peer) =
        match unsafe { OV_ENDPOINTS.get(&EndpointKey { vni, ip: u32::from_ne_bytes(iip.src_addr) }) } {
            Some(src) if src.flags & EP_LOCAL == 0 && src.vtep == outer_src => (src.flags & EP_BACKEND != 0, 0),
            Some(_) => return Err(DropReason::VtepMismatch),
            None => match dst {
                Some(d) if d.flags & EP_BACKEND != 0 && ingress() && unsafe { OV_NODES.get(&outer_src) }.is_some() => {
                    (false, outer_src)
                }
                _ => return Err(DropReason::UnknownInnerSource),
            },
        };
    let Some(dst) = dst else {
        return if reply { Ok(Verdict::MeshReply) } else { Err(DropReason::MeshNoFlow) };
    };
    if inner.dst_addr != dst.mac {
        return Err(DropReason::InnerMacMismatch);
    }
    Ok(Verdict::Decap { ifindex: dst.ifindex, reply, mesh_peer })
}

#[inline(always)]
pub fn underlay_xdp(ctx: &XdpContext) -> Result<u32, DropReason> {
    // Without configuration nothing is ours: never get in the host's way.
    let Some(cfg) = config() else {
        stats::fwd(FwdCounter::PassHost);
        return Ok(xdp_action::XDP_PASS);
    };
    let cfg = *cfg;
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    match classify(&pkt, pkt.len(), &cfg)? {
        Verdict::Pass => {
            // A reply to a container's masqueraded flow (docker_gwbridge)?
            let r = nat::unsnat_xdp(ctx);
            if r >= 0 {
                return Ok(r as u32);
            }
            if r != mesh::NOT_OURS {
                return Err(mesh::reason_of(r));
            }
            if cfg.ingress_vni != 0 {
                // The routing mesh's stages, one after the other (see mesh.rs).
                let mut r = mesh::begin_xdp(ctx);
                if r == mesh::NEXT {
                    r = mesh::pick_stage();
                }
                if r == mesh::NEXT {
                    r = mesh::forward_xdp(ctx);
                }
                if r >= 0 {
                    return Ok(r as u32);
                }
                if r != mesh::NOT_OURS {
                    return Ok(xdp_action::XDP_DROP);
                }
            }
            stats::fwd(FwdCounter::PassHost);
            Ok(xdp_action::XDP_PASS)
        }
        Verdict::MeshReply => {
            if unsafe { bpf_xdp_adjust_head(ctx.ctx, OUTER_LEN as i32) } != 0 {
                return Err(DropReason::HelperFailed);
            }
            let r = mesh::reply_xdp_frame(ctx);
            if r < 0 {
                return Err(mesh::reason_of(r));
            }
            Ok(r as u32)
        }
        Verdict::Decap { ifindex, reply, mesh_peer } => {
            if unsafe { bpf_xdp_adjust_head(ctx.ctx, OUTER_LEN as i32) } != 0 {
                return Err(DropReason::HelperFailed);
            }
            if mesh_peer != 0 {
                let r = mesh::track_in_frame(ctx.data(), ctx.data_end(), mesh_peer);
                if r < 0 {
                    return Err(mesh::reason_of(r));
                }
            }
            if reply {
                let pkt = Packet::new(ctx.data(), ctx.data_end());
                if let Some(rev) = lb::reply_of(&pkt, 0)? {
                    lb::reverse_xdp(ctx.data(), ctx.data_end(), &rev)?;
                }
            }
            stats::fwd(FwdCounter::Decap);
            Ok(unsafe { bpf_redirect(ifindex, 0) } as u32)
        }
    }
}

#[inline(always)]
pub fn underlay_tc(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(cfg) = config() else {
        stats::fwd(FwdCounter::PassHost);
        return Ok(TC_ACT_OK as i32);
    };
    let cfg = *cfg;
    ensure_linear(ctx, NEED_LINEAR)?;
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    match classify(&pkt, ctx.len() as usize, &cfg)? {
        Verdict::Pass => {
            // A reply to a container's masqueraded flow (docker_gwbridge)?
            let r = nat::unsnat_tc(ctx);
            if r >= 0 {
                return Ok(r as i32);
            }
            if r != mesh::NOT_OURS {
                return Err(mesh::reason_of(r));
            }
            if cfg.ingress_vni != 0 {
                // The routing mesh's stages, one after the other (see mesh.rs).
                let mut r = mesh::begin_tc(ctx);
                if r == mesh::NEXT {
                    r = mesh::pick_stage();
                }
                if r == mesh::NEXT {
                    r = mesh::forward_tc(ctx);
                }
                if r == mesh::ENCAP {
                    r = mesh_encap(ctx, cfg.ingress_vni);
                }
                if r >= 0 {
                    return Ok(r as i32);
                }
                if r != mesh::NOT_OURS {
                    return Ok(TC_ACT_SHOT);
                }
            }
            stats::fwd(FwdCounter::PassHost);
            Ok(TC_ACT_OK as i32)
        }
        Verdict::MeshReply => {
            strip_tc(ctx, &pkt)?;
            let r = mesh::reply_tc_frame(ctx);
            if r < 0 {
                return Err(mesh::reason_of(r));
            }
            Ok(r as i32)
        }
        Verdict::Decap { ifindex, reply, mesh_peer } => {
            strip_tc(ctx, &pkt)?;
            if mesh_peer != 0 {
                ensure_linear(ctx, mesh::NEED_LINEAR)?;
                let r = mesh::track_in_frame(ctx.data(), ctx.data_end(), mesh_peer);
                if r < 0 {
                    return Err(mesh::reason_of(r));
                }
            }
            if reply {
                ensure_linear(ctx, lb::NEED_LINEAR)?;
                let pkt = Packet::new(ctx.data(), ctx.data_end());
                if let Some(rev) = lb::reply_of(&pkt, 0)? {
                    lb::reverse_tc(ctx, &rev)?;
                }
            }
            stats::fwd(FwdCounter::Decap);
            Ok(unsafe { bpf_redirect_peer(ifindex, 0) } as i32)
        }
    }
}

/// Strip the outer headers of an skb: removes outer IPv4/UDP/VXLAN and the inner Ethernet
/// header that follow the outer Ethernet header; the inner Ethernet header is then written over
/// the outer one.
#[inline(always)]
fn strip_tc(ctx: &TcContext, pkt: &Packet) -> Result<(), DropReason> {
    let inner: [u8; ETH_LEN] = unsafe { *pkt.at::<[u8; ETH_LEN]>(INNER_ETH).ok_or(DropReason::Truncated)? };
    ctx.adjust_room(-(OUTER_LEN as i32), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO as u64)
        .map_err(|_| DropReason::HelperFailed)?;
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let eth: *mut [u8; ETH_LEN] = pkt.at(0).ok_or(DropReason::HelperFailed)?;
    unsafe { *eth = inner };
    Ok(())
}

/// Encapsulate a routing-mesh packet prepared by `mesh::forward_tc` (DNATed, flow in the scratch)
/// towards its backend's node; drops counted.
#[inline(always)]
fn mesh_encap(ctx: &TcContext, vni: u32) -> i64 {
    let Some(sc) = mesh::scratch() else { return mesh::DROPPED };
    let r = encap::encap_frame(ctx, vni, sc.pick.ep.vtep, &sc.flow);
    if r < 0 {
        stats::drop(mesh::reason_of(r));
        return mesh::DROPPED;
    }
    stats::fwd(FwdCounter::MeshEncap);
    r
}

//! Ingress routing mesh: a service's published port answers on every node's address. On the
//! underlay (XDP or TC), a TCP/UDP packet to this node's address on a published port is
//! balanced like a VIP packet (conntrack, the service's Maglev table), DNATed to the backend's
//! ingress-network address and target port, and delivered to the local task or encapsulated on
//! the ingress network to the task's node. The client's address is kept: the backend sees it.
//!
//! Replies go back through the entry node, which holds the flow's entry (reverse NAT to its own
//! address and the published port, Ethernet header towards the client as its first packet came):
//! - the backend sends to the client via the ingress network's gateway; its node finds the
//!   flow's reply entry (`CT_MESH`, `peer` = entry node), written when the flow's packets came in
//!   from the entry node (`track_in`), and sends the reply back there on the ingress network;
//! - the entry node decapsulates it (`Verdict::MeshReply`), reverse-NATs it and transmits it.
//!
//! A backend's packet to an outside address that no mesh flow explains is dropped and counted
//! (`mesh-no-flow`): it is never sent with the wrong source.

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_MARK_MANGLED_0},
    helpers::generated::{bpf_redirect, bpf_redirect_peer, bpf_xdp_adjust_head},
    programs::{TcContext, XdpContext},
};
use core::intrinsics::{atomic_xadd, AtomicOrdering};
use overlay_common::{
    maps::{
        Config, CtEntry, CtKey, EndpointInfo, EndpointKey, LocalIface, ServiceInfo, ServiceKey, CT_CLOSING, CT_MESH,
        CT_REPLY, EP_LOCAL, GW_VNI, SCHED_MAGLEV, SCHED_SH, SVC_VIA_GW,
    },
    stats::{DropReason, FwdCounter},
    vxlan::{default_mac, flow_hash, src_port, ENCAP_OVERHEAD},
};

use crate::{
    encap::Flow,
    hdr, icmp,
    lb::{self, csum_replace2, csum_replace4, L4, REFRESH_NS, TCP_FIN, TCP_LEN, TCP_RST, TCP_SYN},
    maps::{
        config, OV_BACKENDS, OV_CT, OV_ENDPOINTS, OV_GWBRIDGE, OV_MAGLEV, OV_MESH_SCRATCH, OV_NETWORKS, OV_NEXTHOPS,
        OV_PORT_STATS, OV_RR,
    },
    parse::*,
    stats,
};

/// Bytes a TC program needs linear: Ethernet, IPv4 and the TCP header up to its flags.
pub const NEED_LINEAR: usize = L4 + 14;

/// The IPv4 and port fields of a packet to a published port, read once.
#[derive(Clone, Copy)]
pub struct Hdr {
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    pub tcp_flags: u8,
    /// Copied to the outer header when encapsulated, as the container side does.
    pub tos: u8,
    pub df: bool,
    pub tot_len: u16,
    /// Source and destination ports as in the packet.
    pub ports: [u16; 2],
}

/// Where a flow goes: the backend and the port it listens on (network order), and its
/// endpoint entry on the ingress network.
#[derive(Clone, Copy)]
pub struct Pick {
    pub ip: u32,
    pub port: u16,
    pub ep: EndpointInfo,
    pub new: bool,
}

/// Count a published port's traffic (atomic adds, shared by every CPU).
#[inline(always)]
fn port_count(id: u32, conns: u64, outward: bool, bytes: u32) {
    if let Some(s) = OV_PORT_STATS.get_ptr_mut(&id) {
        let add = |p: *mut u64, v: u64| unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
        // SAFETY: field addresses inside the map value (all u64, aligned); no reference formed.
        unsafe {
            if conns != 0 {
                add(&raw mut (*s).traffic.conns, conns);
            }
            if outward {
                add(&raw mut (*s).traffic.out_pkts, 1);
                add(&raw mut (*s).traffic.out_bytes, bytes as u64);
            } else {
                add(&raw mut (*s).traffic.in_pkts, 1);
                add(&raw mut (*s).traffic.in_bytes, bytes as u64);
            }
        }
    }
}

/// A drop of a published port's packet: counted in the shared table and on the port.
#[inline(always)]
fn port_drop(id: u32, reason: DropReason) {
    stats::drop(reason);
    if let Some(s) = OV_PORT_STATS.get_ptr_mut(&id) {
        // Read back through a volatile load so the compiler keeps the bounds check the
        // verifier needs (it would prove it from the enum and drop it).
        let i = unsafe { core::ptr::read_volatile(&(reason as u32)) } as usize;
        if i < DropReason::COUNT as usize {
            // SAFETY: an element of the map value's array, bounds-checked above.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*s).drops[i], 1) };
        }
    }
}

/// Is this (Ethernet + IPv4 at 0) packet for a published port of this node? `Ok(None)`: no,
/// it is the host's own. Reads are bounded by the IPv4 length (`frame_len` is the whole frame).
/// `port` is set to the port's service id as soon as the packet is known to be for it.
#[inline(always)]
pub fn published(
    pkt: &Packet,
    frame_len: usize,
    cfg: &Config,
    port: &mut u32,
) -> Result<Option<(Hdr, ServiceInfo)>, DropReason> {
    let Some(et) = pkt.at::<[u8; 2]>(12) else { return Ok(None) };
    // SAFETY: bounds-checked above.
    if u16::from_be_bytes(unsafe { *et }) != ETH_P_IP {
        return Ok(None);
    }
    let Some(h) = pkt.at::<[u8; IPV4_LEN]>(ETH_LEN) else { return Ok(None) };
    // SAFETY: bounds-checked above.
    let h = unsafe { *h };
    let dst = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
    let proto = h[9];
    if h[0] >> 4 != 4 || dst != cfg.node_ip || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return Ok(None);
    }
    let frags = u16::from_be_bytes([h[6], h[7]]);
    if frags & IP_OFFSET != 0 {
        // No ports in a later fragment: it cannot be told from the host's own traffic.
        return Ok(None);
    }
    // With IP options the ports are at a variable offset the verifier cannot follow into the
    // reads below: such packets are left to the host (as rare as they are suspect).
    if h[0] & 0x0f != 5 {
        return Ok(None);
    }
    let Some(dport) = pkt.at::<[u8; 2]>(L4 + 2) else { return Ok(None) };
    // SAFETY: bounds-checked above.
    let dport = u16::from_ne_bytes(unsafe { *dport });
    let key = ServiceKey { vni: 0, ip: 0, port: dport, proto, _pad: 0 };
    let Some(svc) = (unsafe { crate::maps::OV_SERVICES.get(&key) }) else { return Ok(None) };
    let svc = *svc;
    // Ours from here: every defect is a counted drop, on the port too.
    *port = svc.id;
    if frags & IP_MF != 0 {
        return Err(DropReason::VipUnsupported);
    }
    let tot_len = u16::from_be_bytes([h[2], h[3]]);
    let l4 = if proto == IPPROTO_TCP { TCP_LEN } else { UDP_LEN };
    if (tot_len as usize) < IPV4_LEN + l4 || ETH_LEN + tot_len as usize > frame_len {
        return Err(DropReason::BadLength);
    }
    let ports: [u16; 2] = lb::read(pkt, L4)?;
    let tcp_flags: u8 = if proto == IPPROTO_TCP { lb::read(pkt, L4 + 13)? } else { 0 };
    let src = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
    Ok(Some((Hdr { src, dst, proto, tcp_flags, tos: h[1], df: frags & IP_DF != 0, tot_len, ports }, svc)))
}

/// The flow's backend: its conntrack entry, or the scheduler's pick (then both entries are
/// written). `macs` is the Ethernet header a reply to the client needs.
#[inline(always)]
fn pick_inner(h: &Hdr, svc: &ServiceInfo, macs: &[u8; 12]) -> Result<Pick, DropReason> {
    // Host-mode ports through docker_gwbridge: the tasks' gwbridge interfaces, not the ingress network.
    let vni = if svc.flags & SVC_VIA_GW != 0 { GW_VNI } else { config().ok_or(DropReason::NoConfig)?.ingress_vni };
    let key = CtKey { src: h.src, dst: h.dst, sport: h.ports[0], dport: h.ports[1], proto: h.proto, _pad: [0; 3] };
    let t = lb::now();
    if let Some(ct) = OV_CT.get_ptr_mut(&key) {
        // SAFETY: a map value; concurrent updates of these fields are benign.
        let ct = unsafe { &mut *ct };
        let backend = ct.backend;
        let alive = matches!(unsafe { OV_BACKENDS.get(&backend) }, Some(b) if b.ip == ct.nat_ip);
        let ep = unsafe { OV_ENDPOINTS.get(&EndpointKey { vni, ip: ct.nat_ip }) };
        if let (true, true, Some(ep)) = (ct.flags & CT_MESH != 0, alive, ep) {
            if h.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                ct.flags |= CT_CLOSING;
            } else if h.tcp_flags & TCP_SYN != 0 {
                ct.flags &= !CT_CLOSING;
            }
            if t.wrapping_sub(ct.last_seen) > REFRESH_NS {
                ct.last_seen = t;
                // Once a second: the reply entry may have been evicted alone (LRU).
                ensure_reply(h, ct, macs);
            }
            lb::count(backend, 0, false, (ETH_LEN + h.tot_len as usize) as u32);
            stats::fwd(FwdCounter::MeshForward);
            return Ok(Pick { ip: ct.nat_ip, port: ct.nat_port, ep: *ep, new: false });
        }
        // Its backend is gone: pick again (a TCP backend that does not know the flow resets it,
        // so the client learns at once).
        let _ = OV_CT.remove(&key);
    }
    if svc.size == 0 {
        return Err(DropReason::NoBackend);
    }
    // The hash leaves out the node's address: every node picks the same backend for a flow,
    // so a client whose packets an upstream router spreads over nodes still reaches one backend.
    let ports_word = (h.ports[0] as u32) | (h.ports[1] as u32) << 16;
    let slot = match svc.scheduler {
        SCHED_MAGLEV => flow_hash(h.src, 0, h.proto, ports_word) % svc.size,
        SCHED_SH => flow_hash(h.src, 0, 0, 0) % svc.size,
        _ => match OV_RR.get_ptr_mut(svc.id) {
            // SAFETY: per-CPU slot. A cursor past the end (the table shrank) starts over.
            Some(c) => unsafe {
                let v = if *c >= svc.size { 0 } else { *c };
                *c = if v + 1 >= svc.size { 0 } else { v + 1 };
                v
            },
            None => 0,
        },
    };
    let at = svc.offset.wrapping_add(slot);
    let backend = OV_MAGLEV.get(at >> 1).ok_or(DropReason::NoBackend)?[(at & 1) as usize];
    let ip = unsafe { OV_BACKENDS.get(&backend) }.ok_or(DropReason::NoBackend)?.ip;
    let ep = unsafe { OV_ENDPOINTS.get(&EndpointKey { vni, ip }) }.ok_or(DropReason::BackendGone)?;
    let closing = if h.tcp_flags & (TCP_FIN | TCP_RST) != 0 { CT_CLOSING } else { 0 };
    // One key and one entry, rewritten for the reply direction: the stack is short.
    let mut k = key;
    let mut e = CtEntry {
        nat_ip: ip,
        backend,
        flags: CT_MESH | closing,
        nat_port: svc.target,
        service: svc.id as u16,
        last_seen: t,
        peer: 0,
        macs: [0; 12],
    };
    OV_CT.insert(&k, &e, 0).map_err(|_| DropReason::ConntrackFull)?;
    k = CtKey { src: ip, dst: h.src, sport: svc.target, dport: h.ports[0], proto: h.proto, _pad: [0; 3] };
    e.nat_ip = h.dst;
    e.flags |= CT_REPLY;
    e.nat_port = h.ports[1];
    e.peer = h.dst;
    e.macs = *macs;
    OV_CT.insert(&k, &e, 0).map_err(|_| DropReason::ConntrackFull)?;
    let new = !(h.proto == IPPROTO_TCP && h.tcp_flags & TCP_SYN == 0);
    lb::count(backend, new as u64, false, (ETH_LEN + h.tot_len as usize) as u32);
    stats::fwd(if new { FwdCounter::MeshNew } else { FwdCounter::LbRepick });
    Ok(Pick { ip, port: svc.target, ep: *ep, new })
}

/// The reply entry of a tracked flow (`fwd` its forward entry), written again if it is missing.
/// Out of line: cold, and its entry would weigh on the stage's frame.
#[inline(never)]
fn ensure_reply(h: &Hdr, fwd: &CtEntry, macs: &[u8; 12]) -> i64 {
    let k = CtKey { src: fwd.nat_ip, dst: h.src, sport: fwd.nat_port, dport: h.ports[0], proto: h.proto, _pad: [0; 3] };
    if unsafe { OV_CT.get(&k) }.is_some() {
        return 0;
    }
    let e = CtEntry {
        nat_ip: h.dst,
        backend: fwd.backend,
        flags: CT_MESH | CT_REPLY | (fwd.flags & CT_CLOSING),
        nat_port: h.ports[1],
        service: fwd.service,
        last_seen: fwd.last_seen,
        peer: h.dst,
        macs: *macs,
    };
    if OV_CT.insert(&k, &e, 0).is_err() {
        return -1;
    }
    0
}

/// The reply's Ethernet header: towards where the packet came from, from where it went.
#[inline(always)]
fn reply_macs(pkt: &Packet) -> Result<[u8; 12], DropReason> {
    let e: [u8; 12] = lb::read(pkt, 0)?;
    let mut m = [0u8; 12];
    m[0..6].copy_from_slice(&e[6..12]);
    m[6..12].copy_from_slice(&e[0..6]);
    Ok(m)
}

#[inline(always)]
fn eth_pair(dst: &[u8; 6], src: &[u8; 6]) -> [u8; 12] {
    let mut m = [0u8; 12];
    m[0..6].copy_from_slice(dst);
    m[6..12].copy_from_slice(src);
    m
}

/// The source MAC of frames delivered to a task: the gateway's of the network they arrive on
/// (the ingress network's, or docker_gwbridge's for host-mode ports through it).
#[inline(always)]
fn delivery_mac(cfg: &Config, svc: &ServiceInfo) -> Result<[u8; 6], DropReason> {
    if svc.flags & SVC_VIA_GW != 0 {
        return Ok(OV_GWBRIDGE.get(0).ok_or(DropReason::NoConfig)?.bridge_mac);
    }
    Ok(ingress_net(cfg)?.1)
}

/// The largest packet the mesh carries (the ingress network's MTU, and what fits the underlay
/// once encapsulated: checked before the backend is known, so the client hears it from the
/// node's address) and the gateway MAC (the source of frames the mesh delivers).
#[inline(always)]
fn ingress_net(cfg: &Config) -> Result<(u32, [u8; 6]), DropReason> {
    let net = unsafe { OV_NETWORKS.get(&cfg.ingress_vni) }.ok_or(DropReason::NoConfig)?;
    let fits = cfg.underlay_mtu.saturating_sub(ENCAP_OVERHEAD);
    Ok((if net.mtu < fits { net.mtu } else { fits }, default_mac(net.gateway.to_ne_bytes())))
}

// ---- Entry: staged, each stage called by the underlay program ----------------------------
//
// BPF gives a whole call chain 512 bytes of stack. The entry is split into stages the underlay
// program calls one after the other (never nested), sharing what they know through a per-CPU
// scratch map instead of the stack: `begin_*` (is it a published port, does it fit), `pick`
// (conntrack or scheduler), `forward_*` (DNAT, deliver or encapsulate).

/// A stage's result: the packet is not for a published port (the caller goes on as before).
pub const NOT_OURS: i64 = -1;
/// A stage's result: go on with the next stage.
pub const NEXT: i64 = -2;
/// `forward_tc`'s result: the caller encapsulates `scratch().flow` towards `scratch().pick.ep.vtep`
/// on the ingress network (encapsulation's frame does not fit under the stages').
pub const ENCAP: i64 = -3;
/// A stage's result: dropped, already counted (on the port too).
pub const DROPPED: i64 = -4;

/// What the stages of one packet share (per CPU: a packet is processed start to end on one).
#[derive(Clone, Copy)]
pub struct Scratch {
    pub h: Hdr,
    pub svc: ServiceInfo,
    pub pick: Pick,
    pub macs: [u8; 12],
    pub flow: Flow,
}

#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU; nothing else runs on this CPU while a packet is processed.
    OV_MESH_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// A counted drop of the scratch's port.
#[inline(always)]
fn dropped(sc: &Scratch, r: DropReason) -> i64 {
    port_drop(sc.svc.id, r);
    DROPPED
}

/// Stage 1 in XDP: NOT_OURS, NEXT, or an action (frag-needed sent back).
#[inline(never)]
pub fn begin_xdp(ctx: &XdpContext) -> i64 {
    let Some(cfg) = config() else { return NOT_OURS };
    let Some(sc) = scratch() else { return NOT_OURS };
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let mut port = NO_PORT;
    let (h, svc) = match published(&pkt, pkt.len(), cfg, &mut port) {
        Ok(Some(x)) => x,
        Ok(None) => return NOT_OURS,
        Err(r) => {
            count_drop(port, r);
            return DROPPED;
        }
    };
    sc.h = h;
    sc.svc = svc;
    let (mtu, _) = match ingress_net(cfg) {
        Ok(x) => x,
        Err(r) => return dropped(sc, r),
    };
    if h.tot_len as u32 > mtu {
        // The ingress network (and the backend's interface) carries at most `mtu`.
        port_drop(svc.id, DropReason::TooBig);
        if h.df {
            let r = icmp::unreachable_xdp(ctx, icmp::CODE_FRAG_NEEDED, mtu as u16);
            if r >= 0 {
                return r;
            }
        }
        return DROPPED;
    }
    match reply_macs(&pkt) {
        Ok(m) => sc.macs = m,
        Err(r) => return dropped(sc, r),
    }
    NEXT
}

/// Stage 1 in TC: as `begin_xdp`; GRO may have merged segments: each must fit, not the sum.
#[inline(never)]
pub fn begin_tc(ctx: &TcContext) -> i64 {
    let Some(cfg) = config() else { return NOT_OURS };
    let Some(sc) = scratch() else { return NOT_OURS };
    if ensure_linear(ctx, NEED_LINEAR).is_err() {
        return NOT_OURS;
    }
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let mut port = NO_PORT;
    let (h, svc) = match published(&pkt, ctx.len() as usize, cfg, &mut port) {
        Ok(Some(x)) => x,
        Ok(None) => return NOT_OURS,
        Err(r) => {
            count_drop(port, r);
            return DROPPED;
        }
    };
    sc.h = h;
    sc.svc = svc;
    let (mtu, _) = match ingress_net(cfg) {
        Ok(x) => x,
        Err(r) => return dropped(sc, r),
    };
    let l4_hdr = if h.proto == IPPROTO_TCP {
        match lb::read::<u8>(&pkt, L4 + 12) {
            Ok(off) => (off >> 4) as u32 * 4,
            Err(r) => return dropped(sc, r),
        }
    } else {
        UDP_LEN as u32
    };
    // SAFETY: reading a field of the context the kernel gave us.
    let gso = unsafe { (*ctx.skb.skb).gso_size };
    let seg = if gso != 0 { IPV4_LEN as u32 + l4_hdr + gso } else { h.tot_len as u32 };
    if seg > mtu {
        port_drop(svc.id, DropReason::TooBig);
        if h.df {
            let code = icmp::CODE_FRAG_NEEDED;
            let ifindex = cfg.underlay_ifindex;
            if let Some(a) = icmp::unreachable(ctx, ifindex, code, mtu as u16, FwdCounter::IcmpFragNeeded) {
                return a as i64;
            }
        }
        return DROPPED;
    }
    match reply_macs(&pkt) {
        Ok(m) => sc.macs = m,
        Err(r) => return dropped(sc, r),
    }
    sc.flow = Flow {
        src: h.src,
        dst: 0,
        proto: h.proto,
        ports: 0,
        tos: h.tos,
        df: h.df,
        l3_l4_hdr: IPV4_LEN as u32 + l4_hdr,
    };
    NEXT
}

/// Stage 2: the flow's backend into the scratch. NEXT or DROPPED.
#[inline(never)]
pub fn pick_stage() -> i64 {
    let Some(sc) = scratch() else { return DROPPED };
    match pick_inner(&sc.h, &sc.svc, &sc.macs) {
        Ok(p) => {
            sc.pick = p;
            port_count(sc.svc.id, p.new as u64, false, (ETH_LEN + sc.h.tot_len as usize) as u32);
            NEXT
        }
        Err(r) => dropped(sc, r),
    }
}

/// Stage 3 in XDP: DNAT, then to the local backend or encapsulated to its node. An action or
/// DROPPED.
#[inline(never)]
pub fn forward_xdp(ctx: &XdpContext) -> i64 {
    let (Some(cfg), Some(sc)) = (config(), scratch()) else { return DROPPED };
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let gw_mac = match delivery_mac(cfg, &sc.svc) {
        Ok(x) => x,
        Err(r) => return dropped(sc, r),
    };
    let p = sc.pick;
    if let Err(r) = dnat_xdp(&pkt, &sc.h, &p) {
        return dropped(sc, r);
    }
    let Some(e) = pkt.at::<[u8; 12]>(0) else { return dropped(sc, DropReason::Truncated) };
    // SAFETY: bounds-checked above.
    unsafe { *e = eth_pair(&p.ep.mac, &gw_mac) };
    if p.ep.flags & EP_LOCAL != 0 {
        return unsafe { bpf_redirect(p.ep.ifindex, 0) };
    }
    let r = encap_xdp(ctx, cfg, &sc.h, &p);
    if r < 0 {
        return dropped(sc, reason_of(r));
    }
    stats::fwd(FwdCounter::MeshEncap);
    r
}

/// Stage 3 in TC: DNAT, then to the local backend (an action), or ENCAP (the caller
/// encapsulates), or DROPPED.
#[inline(never)]
pub fn forward_tc(ctx: &TcContext) -> i64 {
    let (Some(cfg), Some(sc)) = (config(), scratch()) else { return DROPPED };
    let gw_mac = match delivery_mac(cfg, &sc.svc) {
        Ok(x) => x,
        Err(r) => return dropped(sc, r),
    };
    let (h, p) = (sc.h, sc.pick);
    let r = lb::rewrite_addr_tc(ctx, ETH_LEN + 16, h.dst, p.ip, h.proto)
        .and_then(|_| rewrite_port_tc(ctx, L4 + 2, h.proto, h.ports[1], p.port))
        .and_then(|_| set_macs(ctx, &p.ep.mac, &gw_mac));
    if let Err(r) = r {
        return dropped(sc, r);
    }
    if p.ep.flags & EP_LOCAL != 0 {
        return unsafe { bpf_redirect_peer(p.ep.ifindex, 0) };
    }
    sc.flow.dst = p.ip;
    sc.flow.ports = (h.ports[0] as u32) | (p.port as u32) << 16;
    ENCAP
}

/// No published port identified yet.
const NO_PORT: u32 = u32::MAX;

#[inline(always)]
fn count_drop(port: u32, r: DropReason) {
    if port == NO_PORT {
        stats::drop(r);
    } else {
        port_drop(port, r);
    }
}

/// The drop reason of a negative stage result made by `-(reason as i64)`.
#[inline(always)]
pub fn reason_of(r: i64) -> DropReason {
    let i = (-r) as u32;
    let mut k = 0;
    while k < DropReason::ALL.len() {
        if DropReason::ALL[k] as u32 == i {
            return DropReason::ALL[k];
        }
        k += 1;
    }
    DropReason::HelperFailed
}

/// DNAT in XDP: destination address and port, checksums by hand (XDP frames carry full ones).
#[inline(always)]
fn dnat_xdp(pkt: &Packet, h: &Hdr, p: &Pick) -> Result<(), DropReason> {
    let ip: *mut [u8; IPV4_LEN] = pkt.at(ETH_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    let ip = unsafe { &mut *ip };
    ip[16..20].copy_from_slice(&p.ip.to_ne_bytes());
    let c = u16::from_ne_bytes([ip[10], ip[11]]);
    ip[10..12].copy_from_slice(&csum_replace4(c, h.dst, p.ip).to_ne_bytes());
    fix_l4_xdp(pkt, h.proto, h.dst, p.ip, h.ports[1], p.port)?;
    let port: *mut u16 = pkt.at(L4 + 2).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    unsafe { core::ptr::write_unaligned(port, p.port) };
    Ok(())
}

/// The L4 checksum after an address and a port change (UDP without checksum stays without).
#[inline(always)]
pub fn fix_l4_xdp(pkt: &Packet, proto: u8, old: u32, new: u32, old_port: u16, new_port: u16) -> Result<(), DropReason> {
    let at = if proto == IPPROTO_TCP { L4 + 16 } else { L4 + 6 };
    let p: *mut [u8; 2] = pkt.at(at).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    let p = unsafe { &mut *p };
    let c = u16::from_ne_bytes(*p);
    if proto == IPPROTO_UDP && c == 0 {
        return Ok(());
    }
    let mut n = csum_replace2(csum_replace4(c, old, new), old_port, new_port);
    if proto == IPPROTO_UDP && n == 0 {
        n = 0xffff;
    }
    *p = n.to_ne_bytes();
    Ok(())
}

/// Push the outer headers towards the backend's node (ingress VNI) and send: the next hop is
/// the agent's cache (XDP has no neighbour resolution; the agent has the kernel resolve every
/// node's). Negative: `-(reason)`. Out of line (its own stack frame).
#[inline(never)]
fn encap_xdp(ctx: &XdpContext, cfg: &Config, h: &Hdr, p: &Pick) -> i64 {
    let Some(nh) = (unsafe { OV_NEXTHOPS.get(&p.ep.vtep) }) else { return -(DropReason::NoNextHop as i64) };
    if nh.ifindex != cfg.underlay_ifindex {
        return -(DropReason::NoNextHop as i64);
    }
    let (dmac, smac, ifindex) = (nh.dmac, nh.smac, nh.ifindex);
    let inner_len = h.tot_len as usize + ETH_LEN;
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OUTER_LEN as i32)) } != 0 {
        return -(DropReason::HelperFailed as i64);
    }
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let Some(out) = pkt.at::<[u8; OUTER_LEN]>(0) else { return -(DropReason::HelperFailed as i64) };
    let out: *mut u8 = out.cast();
    let tot_len = (inner_len + OUTER_LEN - ETH_LEN) as u16;
    let ports = (h.ports[0] as u32) | (p.port as u32) << 16;
    let sport = src_port(flow_hash(h.src, p.ip, h.proto, ports));
    // SAFETY: the 50 bytes from `out` were bounds-checked above; headers written in place.
    unsafe {
        *out.cast::<[u8; ETH_LEN]>() = hdr::eth(&dmac, &smac, ETH_P_IP);
        *out.add(14).cast::<[u8; IPV4_LEN]>() = hdr::ipv4(h.tos, tot_len, IP_DF, IPPROTO_UDP, cfg.node_ip, p.ep.vtep);
        *out.add(34).cast::<[u8; UDP_LEN]>() = hdr::udp(sport, cfg.vxlan_port, tot_len - IPV4_LEN as u16);
        *out.add(42).cast::<[u8; VXLAN_LEN]>() = hdr::vxlan(cfg.ingress_vni);
    }
    // The frame came in on the underlay: send it back out there.
    if ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
        xdp_action::XDP_TX as i64
    } else {
        unsafe { bpf_redirect(ifindex, 0) }
    }
}

#[inline(always)]
pub fn rewrite_port_tc(ctx: &TcContext, at: usize, proto: u8, old: u16, new: u16) -> Result<(), DropReason> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let p: *mut u16 = pkt.at(at).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    unsafe { core::ptr::write_unaligned(p, new) };
    let (off, extra) = if proto == IPPROTO_TCP { (L4 + 16, 0) } else { (L4 + 6, BPF_F_MARK_MANGLED_0 as u64) };
    ctx.l4_csum_replace(off, old as u64, new as u64, extra | 2).map_err(|_| DropReason::HelperFailed)
}

#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), DropReason> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let e: *mut [u8; 12] = pkt.at(0).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    unsafe { *e = eth_pair(dst, src) };
    Ok(())
}

// ---- The backend's node -------------------------------------------------------------------

/// A mesh packet from the entry node `peer`, decapsulated for a local backend (Ethernet at 0):
/// remember where the flow entered, so the backend's replies go back there.
/// Out of line (the underlay programs' frames are full); negative: `-(reason)`.
#[inline(never)]
pub fn track_in_frame(start: usize, end: usize, peer: u32) -> i64 {
    match track_in(&Packet::new(start, end), peer) {
        Ok(()) => 0,
        Err(r) => -(r as i64),
    }
}

#[inline(always)]
fn track_in(pkt: &Packet, peer: u32) -> Result<(), DropReason> {
    let h: [u8; IPV4_LEN] = lb::read(pkt, ETH_LEN)?;
    let proto = h[9];
    if h[0] != 0x45 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return Ok(());
    }
    let ports: [u16; 2] = lb::read(pkt, L4)?;
    let client = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
    let backend = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
    let rkey = CtKey { src: backend, dst: client, sport: ports[1], dport: ports[0], proto, _pad: [0; 3] };
    let t = lb::now();
    if let Some(ct) = OV_CT.get_ptr_mut(&rkey) {
        // SAFETY: a map value; see lb::to_vip.
        let ct = unsafe { &mut *ct };
        if ct.flags & CT_MESH != 0 && ct.peer == peer {
            if t.wrapping_sub(ct.last_seen) > REFRESH_NS {
                ct.last_seen = t;
            }
            stats::fwd(FwdCounter::MeshIn);
            return Ok(());
        }
    }
    // New, or the client's packets now enter through another node: replies follow them.
    let e = CtEntry { flags: CT_MESH | CT_REPLY, peer, last_seen: t, ..CtEntry::default() };
    OV_CT.insert(&rkey, &e, 0).map_err(|_| DropReason::ConntrackFull)?;
    stats::fwd(FwdCounter::MeshIn);
    Ok(())
}

/// A backend sent to an address outside its network (`ep` lookup failed): a reply to a mesh
/// client. On the entry node it is reverse-NATed and sent to the client (`Done`); elsewhere it
/// goes back to the entry node on the ingress network (`Return`, encapsulated by the caller).
/// Anything else is dropped (`mesh-no-flow`).
pub enum FromBackend {
    Done(i32),
    Return(u32),
}

#[inline(always)]
pub fn from_backend(ctx: &TcContext, iface: &LocalIface, flow: &Flow, plain: bool) -> Result<FromBackend, DropReason> {
    let r = from_backend_frame(ctx, iface.vni, flow.src, flow.dst, (flow.proto as u32) << 1 | plain as u32);
    if r < 0 {
        Err(reason_of(r))
    } else if r > u32::MAX as i64 {
        Ok(FromBackend::Return(r as u32))
    } else {
        Ok(FromBackend::Done(r as i32))
    }
}

/// Out of line: the container program's frame is already large (BPF allows 512 bytes for the
/// whole call chain). Negative: `-(reason)`; above u32::MAX: return to the entry node in the
/// low 32 bits; else the action.
#[inline(never)]
fn from_backend_frame(ctx: &TcContext, vni: u32, src: u32, dst: u32, proto_plain: u32) -> i64 {
    match from_backend_inner(ctx, vni, src, dst, proto_plain) {
        Ok(FromBackend::Done(a)) => a as i64,
        Ok(FromBackend::Return(peer)) => 1 << 32 | peer as i64,
        Err(r) => -(r as i64),
    }
}

#[inline(always)]
fn from_backend_inner(
    ctx: &TcContext,
    vni: u32,
    src: u32,
    dst: u32,
    proto_plain: u32,
) -> Result<FromBackend, DropReason> {
    let proto = (proto_plain >> 1) as u8;
    if proto_plain & 1 == 0 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return Err(DropReason::MeshNoFlow);
    }
    let cfg = *config().ok_or(DropReason::NoConfig)?;
    if cfg.ingress_vni != vni {
        return Err(DropReason::UnknownDestination);
    }
    ensure_linear(ctx, NEED_LINEAR)?;
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let ports: [u16; 2] = lb::read(&pkt, L4)?;
    let key = CtKey { src, dst, sport: ports[0], dport: ports[1], proto, _pad: [0; 3] };
    let ct = reply_entry(&pkt, &key)?;
    if ct.peer != cfg.node_ip {
        stats::fwd(FwdCounter::MeshReturn);
        return Ok(FromBackend::Return(ct.peer));
    }
    reverse_tc(ctx, &ct, src, ports[0])?;
    Ok(FromBackend::Done(unsafe { bpf_redirect(cfg.underlay_ifindex, 0) } as i32))
}

/// The mesh reply entry of a packet (`key` is its flow as sent), refreshed; TCP FIN/RST mark it
/// closing.
#[inline(always)]
fn reply_entry(pkt: &Packet, key: &CtKey) -> Result<CtEntry, DropReason> {
    let ct = OV_CT.get_ptr_mut(key).ok_or(DropReason::MeshNoFlow)?;
    // SAFETY: a map value; see lb::to_vip.
    let ct = unsafe { &mut *ct };
    if ct.flags & (CT_MESH | CT_REPLY) != CT_MESH | CT_REPLY {
        return Err(DropReason::MeshNoFlow);
    }
    let t = lb::now();
    if t.wrapping_sub(ct.last_seen) > REFRESH_NS {
        ct.last_seen = t;
    }
    if key.proto == IPPROTO_TCP {
        let flags: u8 = lb::read(pkt, L4 + 13)?;
        if flags & (TCP_FIN | TCP_RST) != 0 {
            ct.flags |= CT_CLOSING;
        }
    }
    Ok(*ct)
}

/// A packet from a container's gwbridge address to an outside address (TCP or UDP, no options,
/// not a fragment): the reply of a host-mode published port's flow is reverse-NATed and sent to
/// the client (an action); anything else is not ours (`NOT_OURS`: the node routes and
/// masquerades it). Negative otherwise: `-(reason)`. Out of line, as `from_backend_frame`.
#[inline(never)]
pub fn gw_reply_frame(ctx: &TcContext, src: u32, dst: u32, proto: u32) -> i64 {
    match gw_reply(ctx, src, dst, proto as u8) {
        Ok(Some(a)) => a as i64,
        Ok(None) => NOT_OURS,
        Err(r) => -(r as i64),
    }
}

#[inline(always)]
fn gw_reply(ctx: &TcContext, src: u32, dst: u32, proto: u8) -> Result<Option<i32>, DropReason> {
    let cfg = *config().ok_or(DropReason::NoConfig)?;
    ensure_linear(ctx, NEED_LINEAR)?;
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let ports: [u16; 2] = lb::read(&pkt, L4)?;
    let key = CtKey { src, dst, sport: ports[0], dport: ports[1], proto, _pad: [0; 3] };
    // Only a mesh reply entry makes it ours: the same 5-tuple may be the container's own
    // masqueraded flow (CT_SNAT), which goes on to nat.rs.
    match unsafe { OV_CT.get(&key) } {
        Some(e) if e.flags & (CT_MESH | CT_REPLY) == CT_MESH | CT_REPLY => {}
        _ => return Ok(None),
    }
    let ct = reply_entry(&pkt, &key)?;
    if ct.peer != cfg.node_ip {
        return Err(DropReason::MeshNoFlow);
    }
    reverse_tc(ctx, &ct, src, ports[0])?;
    stats::fwd(FwdCounter::GwReverse);
    Ok(Some(unsafe { bpf_redirect(cfg.underlay_ifindex, 0) } as i32))
}

// ---- Back at the entry node ---------------------------------------------------------------

/// Reverse NAT in TC (Ethernet + IPv4 at 0): source becomes this node's address and the
/// published port, Ethernet header towards the client.
#[inline(always)]
fn reverse_tc(ctx: &TcContext, ct: &CtEntry, src: u32, sport: u16) -> Result<(), DropReason> {
    let proto = {
        let pkt = Packet::new(ctx.data(), ctx.data_end());
        lb::read::<u8>(&pkt, ETH_LEN + 9)?
    };
    lb::rewrite_addr_tc(ctx, ETH_LEN + 12, src, ct.nat_ip, proto)?;
    rewrite_port_tc(ctx, L4, proto, sport, ct.nat_port)?;
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let e: *mut [u8; 12] = pkt.at(0).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    unsafe { *e = ct.macs };
    lb::count(ct.backend, 0, true, ctx.len());
    port_count(ct.service as u32, 0, true, ctx.len());
    stats::fwd(FwdCounter::MeshReverse);
    Ok(())
}

/// A backend's reply returned by its node, decapsulated (inner Ethernet at 0) in TC: reverse
/// NAT and out of the underlay to the client.
/// Out of line, as `track_in_frame`; negative: `-(reason)`.
#[inline(never)]
pub fn reply_tc_frame(ctx: &TcContext) -> i64 {
    match reply_tc(ctx) {
        Ok(a) => a as i64,
        Err(r) => -(r as i64),
    }
}

#[inline(always)]
fn reply_tc(ctx: &TcContext) -> Result<i32, DropReason> {
    let cfg = *config().ok_or(DropReason::NoConfig)?;
    ensure_linear(ctx, NEED_LINEAR)?;
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let key = reply_key(&pkt)?;
    let ct = reply_entry(&pkt, &key)?;
    if ct.peer != cfg.node_ip {
        return Err(DropReason::MeshNoFlow);
    }
    reverse_tc(ctx, &ct, key.src, key.sport)?;
    Ok(unsafe { bpf_redirect(cfg.underlay_ifindex, 0) } as i32)
}

/// The same in XDP: checksums by hand, and back out of the underlay it came in on.
/// Out of line, as `track_in_frame`; negative: `-(reason)`.
#[inline(never)]
pub fn reply_xdp_frame(ctx: &XdpContext) -> i64 {
    match reply_xdp(ctx) {
        Ok(a) => a as i64,
        Err(r) => -(r as i64),
    }
}

#[inline(always)]
fn reply_xdp(ctx: &XdpContext) -> Result<u32, DropReason> {
    let cfg = *config().ok_or(DropReason::NoConfig)?;
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let key = reply_key(&pkt)?;
    let ct = reply_entry(&pkt, &key)?;
    if ct.peer != cfg.node_ip {
        return Err(DropReason::MeshNoFlow);
    }
    let ip: *mut [u8; IPV4_LEN] = pkt.at(ETH_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    let ip = unsafe { &mut *ip };
    ip[12..16].copy_from_slice(&ct.nat_ip.to_ne_bytes());
    let c = u16::from_ne_bytes([ip[10], ip[11]]);
    ip[10..12].copy_from_slice(&csum_replace4(c, key.src, ct.nat_ip).to_ne_bytes());
    fix_l4_xdp(&pkt, key.proto, key.src, ct.nat_ip, key.sport, ct.nat_port)?;
    let port: *mut u16 = pkt.at(L4).ok_or(DropReason::Truncated)?;
    let e: *mut [u8; 12] = pkt.at(0).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    unsafe {
        core::ptr::write_unaligned(port, ct.nat_port);
        *e = ct.macs;
    }
    let len = (ctx.data_end() - ctx.data()) as u32;
    lb::count(ct.backend, 0, true, len);
    port_count(ct.service as u32, 0, true, len);
    stats::fwd(FwdCounter::MeshReverse);
    if cfg.underlay_ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
        Ok(xdp_action::XDP_TX)
    } else {
        Ok(unsafe { bpf_redirect(cfg.underlay_ifindex, 0) } as u32)
    }
}

/// The flow key of a returned reply (inner Ethernet + IPv4 at 0), bounded by its IPv4 length.
#[inline(always)]
fn reply_key(pkt: &Packet) -> Result<CtKey, DropReason> {
    let h: [u8; IPV4_LEN] = lb::read(pkt, ETH_LEN)?;
    let proto = h[9];
    if h[0] != 0x45 || u16::from_be_bytes([h[6], h[7]]) & (IP_MF | IP_OFFSET) != 0 {
        return Err(DropReason::MeshNoFlow);
    }
    let need = match proto {
        IPPROTO_TCP => IPV4_LEN + TCP_LEN,
        IPPROTO_UDP => IPV4_LEN + UDP_LEN,
        _ => return Err(DropReason::MeshNoFlow),
    };
    if (u16::from_be_bytes([h[2], h[3]]) as usize) < need {
        return Err(DropReason::BadLength);
    }
    let ports: [u16; 2] = lb::read(pkt, L4)?;
    Ok(CtKey {
        src: u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
        dst: u32::from_ne_bytes([h[16], h[17], h[18], h[19]]),
        sport: ports[0],
        dport: ports[1],
        proto,
        _pad: [0; 3],
    })
}

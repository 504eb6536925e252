//! docker_gwbridge masquerade in eBPF (Cilium's BPF masquerading, on the project's conntrack). A
//! container's TCP or UDP to an address beyond the node leaves with the node's address and a
//! port of SNAT_PORT_MIN..=SNAT_PORT_MAX, straight from its gwbridge port to the underlay: no
//! bridge, no routing, no netfilter. Replies to the node on such a port are found in conntrack
//! by the underlay program and handed straight back into the container. Both directions are
//! OV_CT entries (`CT_SNAT`). Everything else the containers send outside (ICMP, traffic the
//! node would route out of another interface) takes the kernel path: routed and masqueraded by
//! the agent's nftables table.
//!
//! Like a router, both directions decrement the TTL; a packet about to expire is left to the
//! kernel, which answers "time exceeded".

use core::{ffi::c_void, mem, ptr};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, BPF_NOEXIST,
    },
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::{TcContext, XdpContext},
};
use overlay_common::{
    maps::{CtEntry, CtKey, CT_CLOSING, CT_KERNEL, CT_REPLY, CT_SNAT, GW_MASQUERADE, SNAT_PORT_MAX, SNAT_PORT_MIN},
    stats::{DropReason, FwdCounter},
    vxlan::flow_hash,
};

use crate::{
    hdr,
    lb::{self, csum_replace2, csum_replace4, L4, REFRESH_NS, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maps::{config, OV_CT, OV_GWBRIDGE, OV_LOCAL_IFACES},
    mesh::{self, NOT_OURS},
    parse::*,
    stats,
};

const AF_INET: u8 = 2;
const SNAT_RANGE: u32 = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
/// Ports tried for a new flow before it is handed to the kernel path (`gw-snat-full`): each try
/// is one conntrack lookup or insert; with the range 4,536 ports wide per peer, sixteen
/// collisions in a row mean it is nearly full.
const TRIES: u32 = 16;
/// A closed flow's port (FIN or RST seen) is given to a new flow to the same peer once the old
/// one has been idle this long: late segments are over by then, and a flow still sending
/// (half-closed) refreshes its entry at least every REFRESH_NS, so it never looks this idle.
const REUSE_CLOSED_NS: u64 = 3 * REFRESH_NS;
/// `new_flow`'s answer when every port tried was taken.
const FULL: i64 = -0x1_0000;
/// Ethernet + IPv4 + the TCP header up to its flags.
const NEED_LINEAR: usize = L4 + 14;

// ---- Container -> outside -------------------------------------------------------------------

/// From the gwbridge program: `src` (the container's gwbridge address) sends TCP/UDP (`proto`),
/// without options or fragments, to `dst` beyond the node, on port `ifindex`. An action, or
/// NOT_OURS (the kernel path), or `-(reason)`. Out of line: its own stack frame.
#[inline(never)]
pub fn snat_frame(ctx: &TcContext, src: u32, dst: u32, proto: u32, ifindex: u32) -> i64 {
    match snat(ctx, src, dst, proto as u8, ifindex) {
        Ok(Some(a)) => a as i64,
        Ok(None) => NOT_OURS,
        Err(r) => -(r as i64),
    }
}

#[inline(always)]
fn snat(ctx: &TcContext, src: u32, dst: u32, proto: u8, ifindex: u32) -> Result<Option<i32>, DropReason> {
    let cfg = *config().ok_or(DropReason::NoConfig)?;
    ensure_linear(ctx, NEED_LINEAR)?;
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let ttl: u8 = lb::read(&pkt, ETH_LEN + 8)?;
    if ttl <= 1 {
        return Ok(None);
    }
    // Reads are bounded by the IPv4 length, not the frame: the L4 header must be inside it.
    let tot_len = u16::from_be(lb::read::<u16>(&pkt, ETH_LEN + 2)?) as usize;
    if tot_len < l4_min(proto) || ETH_LEN + tot_len > ctx.len() as usize {
        return Err(DropReason::BadLength);
    }
    let ports: [u16; 2] = lb::read(&pkt, L4)?;
    let tcp_flags: u8 = if proto == IPPROTO_TCP { lb::read(&pkt, L4 + 13)? } else { 0 };
    // Only what the node sends out of the underlay is ours (it leaves with the node's address).
    // The same lookup as encap::next_hop, written out here: a shared helper returning the
    // 64-byte struct by value overflows the gwbridge program's 512-byte stack (measured).
    let mut fib = mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    // SAFETY: every byte of the struct is written before it is read.
    unsafe { hdr::zero(fib.as_mut_ptr().cast::<u8>(), mem::size_of::<bpf_fib_lookup>()) };
    let mut fib = unsafe { fib.assume_init() };
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    fib.ifindex = cfg.underlay_ifindex;
    fib.__bindgen_anon_3.ipv4_src = cfg.node_ip;
    fib.__bindgen_anon_4.ipv4_dst = dst;
    let skb = ctx.skb.skb as *mut c_void;
    let rc =
        unsafe { fib_lookup(skb, &mut fib, mem::size_of::<bpf_fib_lookup>() as i32, BPF_FIB_LOOKUP_OUTPUT) } as u32;
    let resolved = match rc {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        BPF_FIB_LKUP_RET_NO_NEIGH => false,
        _ => return Ok(None),
    };
    if fib.ifindex != cfg.underlay_ifindex {
        return Ok(None);
    }
    let key = CtKey { src, dst, sport: ports[0], dport: ports[1], proto, _pad: [0; 3] };
    // A SYN alone opens a connection, possibly on the 5-tuple of an older, closed one.
    let syn = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let mut tracked = None;
    if let Some(ct) = OV_CT.get_ptr_mut(&key) {
        // SAFETY: a map value; concurrent updates of these fields are benign.
        let ct = unsafe { &mut *ct };
        if ct.flags & CT_SNAT != 0 {
            let t = lb::now();
            let refresh = t.wrapping_sub(ct.last_seen) > REFRESH_NS;
            if refresh {
                ct.last_seen = t;
            }
            if ct.flags & CT_KERNEL != 0 {
                return Ok(None);
            }
            if syn {
                ct.flags &= !CT_CLOSING;
            }
            if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                ct.flags |= CT_CLOSING;
                close_reply(dst, cfg.node_ip, ports[1], ct.nat_port, proto);
            }
            tracked = Some(ct.nat_port);
            if refresh || syn {
                let r = check_reply(&key, ct.nat_port, cfg.node_ip, ifindex, syn as u32);
                if r == LOST {
                    tracked = None;
                } else if r < 0 {
                    return Err(mesh::reason_of(r));
                }
            }
        }
    }
    let nat_port = match tracked {
        Some(p) => p,
        None => {
            let p = new_flow(&key, cfg.node_ip, ifindex);
            if p == FULL {
                stats::fwd(FwdCounter::GwSnatFull);
                return Ok(None);
            }
            if p < 0 {
                return Err(mesh::reason_of(p));
            }
            p as u16
        }
    };
    lb::rewrite_addr_tc(ctx, ETH_LEN + 12, src, cfg.node_ip, proto)?;
    mesh::rewrite_port_tc(ctx, L4, proto, ports[0], nat_port)?;
    dec_ttl_tc(ctx, ttl)?;
    stats::fwd(FwdCounter::GwSnat);
    if resolved {
        mesh::set_macs(ctx, &fib.dmac, &fib.smac)?;
        return Ok(Some(unsafe { bpf_redirect(fib.ifindex, 0) } as i32));
    }
    // The kernel resolves the next hop and sends.
    Ok(Some(unsafe { bpf_redirect_neigh(fib.ifindex, ptr::null_mut(), 0, 0) } as i32))
}

/// The shortest IPv4 packet that holds a whole `proto` header (TCP without options, UDP).
#[inline(always)]
fn l4_min(proto: u8) -> usize {
    IPV4_LEN + if proto == IPPROTO_TCP { 20 } else { UDP_LEN }
}

/// Mark the reply entry of a closing flow (it decides when the port may serve another flow).
#[inline(never)]
fn close_reply(peer: u32, node_ip: u32, peer_port: u16, nat_port: u16, proto: u8) -> i64 {
    let rk = CtKey { src: peer, dst: node_ip, sport: peer_port, dport: nat_port, proto, _pad: [0; 3] };
    if let Some(r) = OV_CT.get_ptr_mut(&rk) {
        // SAFETY: a map value.
        unsafe { (*r).flags |= CT_CLOSING };
    }
    0
}

/// `check_reply`'s answer when the flow's port now belongs to another flow.
const LOST: i64 = -0x2_0000;

/// Once a second for a tracked flow, and on every SYN (a new connection on an older flow's
/// 5-tuple): its reply entry must still be its own. Missing (evicted, or swept while only this
/// direction sent): written again, and refreshed from here on. Another flow's (the port was
/// reused after this flow closed and went idle): LOST, the flow needs a new port. A SYN clears
/// the closing mark. 0, LOST, or `-(reason)`.
#[inline(never)]
fn check_reply(key: &CtKey, nat_port: u16, node_ip: u32, ifindex: u32, syn: u32) -> i64 {
    let rk = CtKey { src: key.dst, dst: node_ip, sport: key.dport, dport: nat_port, proto: key.proto, _pad: [0; 3] };
    let t = lb::now();
    if let Some(r) = OV_CT.get_ptr_mut(&rk) {
        // SAFETY: a map value; concurrent updates of these fields are benign.
        let r = unsafe { &mut *r };
        if r.flags & CT_SNAT == 0 || r.nat_ip != key.src || r.nat_port != key.sport {
            return LOST;
        }
        r.last_seen = t;
        if syn != 0 {
            r.flags &= !CT_CLOSING;
        }
        return 0;
    }
    let Some(e) = reply_for(key, ifindex, t) else { return -(DropReason::NoConfig as i64) };
    if OV_CT.insert(&rk, &e, BPF_NOEXIST as u64).is_ok() {
        0
    } else {
        LOST
    }
}

/// The reply entry of a masqueraded flow from port `ifindex`: back to the container's address
/// and port, with the Ethernet header into it.
#[inline(always)]
fn reply_for(key: &CtKey, ifindex: u32, t: u64) -> Option<CtEntry> {
    let iface = unsafe { OV_LOCAL_IFACES.get(&ifindex) }?;
    let gw = OV_GWBRIDGE.get(0)?;
    let mut macs = [0u8; 12];
    macs[0..6].copy_from_slice(&iface.mac);
    macs[6..12].copy_from_slice(&gw.bridge_mac);
    Some(CtEntry {
        nat_ip: key.src,
        backend: ifindex,
        flags: CT_SNAT | CT_REPLY,
        nat_port: key.sport,
        service: 0,
        last_seen: t,
        peer: 0,
        macs,
    })
}

/// A new masqueraded flow: a free port towards this peer, both entries written (the reply's
/// first, with BPF_NOEXIST: it is what owns the port). A port whose flow closed and has been
/// idle `REUSE_CLOSED_NS` is free again. The port (network order), `FULL`, or `-(reason)`;
/// when every port tried is taken, the flow is marked for the kernel path (`CT_KERNEL`) so all
/// its packets take it.
#[inline(never)]
fn new_flow(key: &CtKey, node_ip: u32, ifindex: u32) -> i64 {
    let t = lb::now();
    let Some(mut e) = reply_for(key, ifindex, t) else { return -(DropReason::NoConfig as i64) };
    let h = flow_hash(key.src, key.dst, key.proto, (key.sport as u32) | (key.dport as u32) << 16);
    let mut i = 0;
    while i < TRIES {
        let port = (SNAT_PORT_MIN as u32 + h.wrapping_add(i.wrapping_mul(2_654_435_761)) % SNAT_RANGE) as u16;
        let port = port.to_be();
        let rk = CtKey { src: key.dst, dst: node_ip, sport: key.dport, dport: port, proto: key.proto, _pad: [0; 3] };
        let mine = match unsafe { OV_CT.get(&rk) } {
            None => OV_CT.insert(&rk, &e, BPF_NOEXIST as u64).is_ok(),
            // The flow's own reply entry, outliving its forward entry (LRU), or an older
            // connection's on the same 5-tuple: same port again, written afresh (not closing).
            Some(r) if r.flags & CT_SNAT != 0 && r.nat_ip == key.src && r.nat_port == key.sport => {
                OV_CT.insert(&rk, &e, 0).is_ok()
            }
            // A closed flow's, idle long enough: the port is free.
            Some(r) if r.flags & CT_CLOSING != 0 && t.wrapping_sub(r.last_seen) > REUSE_CLOSED_NS => {
                OV_CT.insert(&rk, &e, 0).is_ok()
            }
            Some(_) => false,
        };
        if mine {
            e.nat_ip = node_ip;
            e.flags = CT_SNAT;
            e.nat_port = port;
            e.macs = [0; 12];
            if OV_CT.insert(key, &e, 0).is_err() {
                let _ = OV_CT.remove(&rk);
                return -(DropReason::ConntrackFull as i64);
            }
            return port as i64;
        }
        i += 1;
    }
    // Every port tried is taken: the kernel path (nftables masquerade) for the whole flow.
    e.nat_ip = 0;
    e.flags = CT_SNAT | CT_KERNEL;
    e.nat_port = 0;
    e.macs = [0; 12];
    if OV_CT.insert(key, &e, 0).is_err() {
        return -(DropReason::ConntrackFull as i64);
    }
    FULL
}

/// TTL - 1 and the IPv4 checksum with it (the TTL shares a 16-bit word with the protocol).
#[inline(always)]
fn dec_ttl_tc(ctx: &TcContext, ttl: u8) -> Result<(), DropReason> {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let w: *mut [u8; 2] = pkt.at(ETH_LEN + 8).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds-checked above.
    let old = unsafe { *w };
    let new = [ttl - 1, old[1]];
    unsafe { *w = new };
    ctx.l3_csum_replace(ETH_LEN + 10, u16::from_ne_bytes(old) as u64, u16::from_ne_bytes(new) as u64, 2)
        .map_err(|_| DropReason::HelperFailed)
}

// ---- Outside -> container ---------------------------------------------------------------------

/// What a reply to a masqueraded flow says, read once.
struct Reply {
    /// Where the destination address and port sit are fixed (no options): only these change.
    dst: u32,
    dport: u16,
    proto: u8,
    ttl: u8,
    ct: CtEntry,
}

/// Is this underlay packet a reply to a masqueraded flow? Only TCP/UDP to the node's address on
/// a SNAT port, without options or fragments, with a conntrack reply entry.
#[inline(always)]
fn reply_of(pkt: &Packet, frame_len: usize, node_ip: u32) -> Option<Reply> {
    // One read, one bounds check: Ethernet type, IPv4 header, ports.
    let f: [u8; ETH_LEN + IPV4_LEN + 4] = lb::read(pkt, 0).ok()?;
    let eth_type = [f[12], f[13]];
    let mut h = [0u8; IPV4_LEN + 4];
    h.copy_from_slice(&f[ETH_LEN..]);
    let proto = h[9];
    let frags = u16::from_be_bytes([h[6], h[7]]);
    if be16(eth_type) != ETH_P_IP
        || h[0] != 0x45
        || (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
        || frags & (IP_MF | IP_OFFSET) != 0
    {
        return None;
    }
    // Bounded by the IPv4 length, not the frame (whose trailer a sender controls).
    let tot_len = u16::from_be_bytes([h[2], h[3]]) as usize;
    if tot_len < l4_min(proto) || ETH_LEN + tot_len > frame_len {
        return None;
    }
    let dst = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
    let dport = u16::from_ne_bytes([h[22], h[23]]);
    let port = u16::from_be(dport);
    if dst != node_ip || port < SNAT_PORT_MIN {
        return None;
    }
    let src = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
    let key = CtKey { src, dst, sport: u16::from_ne_bytes([h[20], h[21]]), dport, proto, _pad: [0; 3] };
    let ct = OV_CT.get_ptr_mut(&key)?;
    // SAFETY: a map value; concurrent updates of these fields are benign.
    let ct = unsafe { &mut *ct };
    if ct.flags & (CT_SNAT | CT_REPLY) != CT_SNAT | CT_REPLY || h[8] <= 1 {
        return None;
    }
    let t = lb::now();
    if t.wrapping_sub(ct.last_seen) > REFRESH_NS {
        ct.last_seen = t;
    }
    if proto == IPPROTO_TCP && lb::read::<u8>(pkt, L4 + 13).is_ok_and(|f| f & (TCP_FIN | TCP_RST) != 0) {
        ct.flags |= CT_CLOSING;
    }
    Some(Reply { dst, dport, proto, ttl: h[8], ct: *ct })
}

/// In the underlay's TC program, before the routing mesh: a reply translated back and into its
/// container (an action), or NOT_OURS, or `-(reason)`. Out of line: its own stack frame.
#[inline(never)]
pub fn unsnat_tc(ctx: &TcContext) -> i64 {
    let Some(node_ip) = masquerading() else { return NOT_OURS };
    if ensure_linear(ctx, NEED_LINEAR).is_err() {
        return NOT_OURS;
    }
    let Some(r) = reply_of(&Packet::new(ctx.data(), ctx.data_end()), ctx.len() as usize, node_ip) else {
        if ensure_linear(ctx, ICMP_ERR_LEN).is_err() {
            return NOT_OURS;
        }
        let port = icmp_error_in_place(ctx.data(), ctx.data_end(), ctx.len() as usize, node_ip);
        return if port < 0 { port } else { unsafe { bpf_redirect_peer(port as u32, 0) } };
    };
    let done = lb::rewrite_addr_tc(ctx, ETH_LEN + 16, r.dst, r.ct.nat_ip, r.proto)
        .and_then(|_| mesh::rewrite_port_tc(ctx, L4 + 2, r.proto, r.dport, r.ct.nat_port))
        .and_then(|_| dec_ttl_tc(ctx, r.ttl))
        .and_then(|_| mesh::set_macs(ctx, &mac(&r.ct.macs, 0), &mac(&r.ct.macs, 6)));
    if let Err(e) = done {
        return -(e as i64);
    }
    stats::fwd(FwdCounter::GwUnsnat);
    unsafe { bpf_redirect_peer(r.ct.backend, 0) }
}

/// The same in XDP: checksums by hand; out through the container's gwbridge port.
#[inline(never)]
pub fn unsnat_xdp(ctx: &XdpContext) -> i64 {
    // Map lookups before the packet's bounds are taken: the verifier refuses a packet end that
    // the compiler kept across a call and widened afterwards.
    let Some(node_ip) = masquerading() else { return NOT_OURS };
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let Some(r) = reply_of(&pkt, pkt.len(), node_ip) else {
        let port = icmp_error_in_place(ctx.data(), ctx.data_end(), pkt.len(), node_ip);
        return if port < 0 { port } else { unsafe { bpf_redirect(port as u32, 0) } };
    };
    let Some(ip) = pkt.at::<[u8; IPV4_LEN]>(ETH_LEN) else { return NOT_OURS };
    // SAFETY: bounds-checked above.
    let ip = unsafe { &mut *ip };
    let mut c = u16::from_ne_bytes([ip[10], ip[11]]);
    c = csum_replace4(c, r.dst, r.ct.nat_ip);
    let old = u16::from_ne_bytes([ip[8], ip[9]]);
    ip[8] = r.ttl - 1;
    c = csum_replace2(c, old, u16::from_ne_bytes([ip[8], ip[9]]));
    ip[16..20].copy_from_slice(&r.ct.nat_ip.to_ne_bytes());
    ip[10..12].copy_from_slice(&c.to_ne_bytes());
    if let Err(e) = mesh::fix_l4_xdp(&pkt, r.proto, r.dst, r.ct.nat_ip, r.dport, r.ct.nat_port) {
        return -(e as i64);
    }
    let (Some(port), Some(eth)) = (pkt.at::<u16>(L4 + 2), pkt.at::<[u8; 12]>(0)) else {
        return -(DropReason::Truncated as i64);
    };
    // SAFETY: bounds-checked above.
    unsafe {
        ptr::write_unaligned(port, r.ct.nat_port);
        *eth = r.ct.macs;
    }
    stats::fwd(FwdCounter::GwUnsnat);
    unsafe { bpf_redirect(r.ct.backend, 0) }
}

/// Ethernet, IPv4, ICMP, the quoted IPv4 header and the quoted ports and UDP checksum.
const ICMP_ERR_LEN: usize = ETH_LEN + IPV4_LEN + 8 + IPV4_LEN + 8;
const Q: usize = ETH_LEN + IPV4_LEN + 8;

/// An ICMP error (destination unreachable, time exceeded: "fragmentation needed" among them)
/// about a masqueraded flow, sent to the node: rewritten in place for the container (outer
/// destination, the quoted packet's source address and port, every checksum), so path MTU
/// discovery and port-unreachable work through the masquerade. The container's port ifindex
/// (the frame is ready to send there), or NOT_OURS. Out of line: its own stack frame.
#[inline(never)]
fn icmp_error_in_place(start: usize, end: usize, frame_len: usize, node_ip: u32) -> i64 {
    let pkt = Packet::new(start, end);
    let Some(f) = pkt.at::<[u8; ICMP_ERR_LEN]>(0) else { return NOT_OURS };
    // SAFETY: bounds-checked above.
    let f = unsafe { &mut *f };
    let word = |at: usize| u32::from_ne_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
    let frags = u16::from_be_bytes([f[20], f[21]]);
    let qproto = f[Q + 9];
    let tot_len = u16::from_be_bytes([f[16], f[17]]) as usize;
    if [f[12], f[13]] != [0x08, 0x00]
        || tot_len < ICMP_ERR_LEN - ETH_LEN
        || ETH_LEN + tot_len > frame_len
        || f[14] != 0x45
        || f[23] != IPPROTO_ICMP
        || frags & (IP_MF | IP_OFFSET) != 0
        || word(30) != node_ip
        || (f[34] != 3 && f[34] != 11)
        || f[Q] != 0x45
        || (qproto != IPPROTO_TCP && qproto != IPPROTO_UDP)
        || word(Q + 12) != node_ip
        || f[22] <= 1
    {
        return NOT_OURS;
    }
    let (qsport, qdport) = (u16::from_ne_bytes([f[Q + 20], f[Q + 21]]), u16::from_ne_bytes([f[Q + 22], f[Q + 23]]));
    let key = CtKey { src: word(Q + 16), dst: node_ip, sport: qdport, dport: qsport, proto: qproto, _pad: [0; 3] };
    let Some(ct) = (unsafe { OV_CT.get(&key) }) else { return NOT_OURS };
    if ct.flags & (CT_SNAT | CT_REPLY) != CT_SNAT | CT_REPLY {
        return NOT_OURS;
    }
    let (to, to_port, port, macs) = (ct.nat_ip, ct.nat_port, ct.backend, ct.macs);
    // Outer IPv4: destination and TTL.
    let mut c = u16::from_ne_bytes([f[24], f[25]]);
    c = csum_replace4(c, node_ip, to);
    let old = u16::from_ne_bytes([f[22], f[23]]);
    f[22] -= 1;
    c = csum_replace2(c, old, u16::from_ne_bytes([f[22], f[23]]));
    f[24..26].copy_from_slice(&c.to_ne_bytes());
    f[30..34].copy_from_slice(&to.to_ne_bytes());
    // The quoted packet: its source, its header checksum, its source port, a UDP checksum; the
    // ICMP checksum covers them all.
    let mut icmp = u16::from_ne_bytes([f[36], f[37]]);
    let qc_old = u16::from_ne_bytes([f[Q + 10], f[Q + 11]]);
    let qc = csum_replace4(qc_old, node_ip, to);
    f[Q + 10..Q + 12].copy_from_slice(&qc.to_ne_bytes());
    f[Q + 12..Q + 16].copy_from_slice(&to.to_ne_bytes());
    f[Q + 20..Q + 22].copy_from_slice(&to_port.to_ne_bytes());
    icmp = csum_replace4(icmp, node_ip, to);
    icmp = csum_replace2(icmp, qc_old, qc);
    icmp = csum_replace2(icmp, qsport, to_port);
    if qproto == IPPROTO_UDP {
        let uc_old = u16::from_ne_bytes([f[Q + 26], f[Q + 27]]);
        if uc_old != 0 {
            let mut uc = csum_replace2(csum_replace4(uc_old, node_ip, to), qsport, to_port);
            if uc == 0 {
                uc = 0xffff;
            }
            f[Q + 26..Q + 28].copy_from_slice(&uc.to_ne_bytes());
            icmp = csum_replace2(icmp, uc_old, uc);
        }
    }
    f[36..38].copy_from_slice(&icmp.to_ne_bytes());
    f[0..12].copy_from_slice(&macs);
    stats::fwd(FwdCounter::GwUnsnat);
    port as i64
}

/// The node's address when masquerade is on; `None`: no flow can be ours.
#[inline(always)]
fn masquerading() -> Option<u32> {
    let gw = OV_GWBRIDGE.get(0)?;
    if gw.flags & GW_MASQUERADE == 0 {
        return None;
    }
    Some(config()?.node_ip)
}

#[inline(always)]
fn mac(m: &[u8; 12], at: usize) -> [u8; 6] {
    let mut o = [0u8; 6];
    o.copy_from_slice(&m[at..at + 6]);
    o
}

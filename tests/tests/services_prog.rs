//! BPF_PROG_TEST_RUN tests of service VIPs (lb.rs and its callers): packet in, expected verdict,
//! expected bytes out (checksums verified independently of the datapath's arithmetic), the
//! counters that moved (exactly those), and the conntrack entries and backend counters left.
//!
//! The bed (`bed_with_service`) has a VIP 10.0.9.100 on VNI with TCP 80 and UDP 53, backends C
//! (this node) and B (the peer node) in a 7-slot table, and container A as the client.
//! Offloaded (CHECKSUM_PARTIAL) checksums cannot be produced by a test run: the end-to-end
//! tests cover them.

use overlay::datapath::maglev;
use overlay_common::{
    maps::*,
    stats::{DropReason, FwdCounter},
    vxlan::{default_mac, flow_hash, src_port},
};
use overlay_tests::{bed::*, packet::*};

// ---------------------------------------------------------------------------------------
// Running a program and checking what moved

#[derive(Clone, Copy, Debug)]
enum Prog {
    /// The container-side program, as A (the client) sends.
    FromA,
    /// The container-side program, as C (a local backend) sends.
    FromC,
    /// Decapsulation, XDP.
    Xdp,
    /// Decapsulation, TC.
    UnderlayTc,
}

struct Run {
    verdict: u32,
    out: Vec<u8>,
    /// Every counter that moved, by name (drops as "drop:<reason>"), with its increase.
    moved: Vec<(String, u64)>,
}

fn run(bed: &mut Bed, prog: Prog, frame: &[u8]) -> Run {
    let before = bed.counters();
    let (verdict, out) = match prog {
        Prog::FromA => bed.from_container(frame),
        Prog::FromC => bed.from_backend_c(frame),
        Prog::Xdp => bed.xdp(frame),
        Prog::UnderlayTc => {
            let ul = bed.underlay_ifindex;
            bed.tc(PROG_UNDERLAY_TC, frame, ul)
        }
    };
    let after = bed.counters();
    Run { verdict, out, moved: moved(&before, &after) }
}

impl Run {
    /// This verdict, and exactly these forward counters moved (once each), no drop.
    fn expect(&self, verdict: u32, fwd: &[FwdCounter], what: &str) -> &Self {
        let mut want: Vec<(String, u64)> = fwd.iter().map(|c| (c.name().to_string(), 1)).collect();
        want.sort();
        assert_eq!(self.moved, want, "{what}: counters that moved");
        assert_eq!(self.verdict, verdict, "{what}: verdict");
        self
    }

    /// Dropped (TC_ACT_SHOT), counted under `reason` and nothing else.
    fn expect_drop(&self, reason: DropReason, what: &str) {
        assert_eq!(self.moved, vec![(format!("drop:{}", reason.name()), 1)], "{what}: counters that moved");
        assert_eq!(self.verdict, TC_ACT_SHOT, "{what}: verdict");
    }
}

// ---------------------------------------------------------------------------------------
// Frames, backends, checksums

fn ports_word(sport: u16, dport: u16) -> u32 {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&sport.to_be_bytes());
    b[2..].copy_from_slice(&dport.to_be_bytes());
    u32::from_ne_bytes(b)
}

/// A -> `dst`:80, TCP.
fn client_tcp(dst: [u8; 4], dst_mac: [u8; 6], sport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    ip_frame(dst_mac, MAC_A, A, dst, 6, &tcp(A, dst, sport, TCP_PORT, seq, ack, flags, payload))
}

/// A -> `dst`:53, UDP.
fn client_udp(dst: [u8; 4], dst_mac: [u8; 6], sport: u16, payload: &[u8], checksum: bool) -> Vec<u8> {
    ip_frame(dst_mac, MAC_A, A, dst, 17, &udp_dgram(A, dst, sport, UDP_PORT, payload, checksum))
}

fn syn(sport: u16) -> Vec<u8> {
    client_tcp(VIP, VIP_MAC, sport, 1000, 0, TCP_SYN, &[])
}

fn ack(sport: u16) -> Vec<u8> {
    client_tcp(VIP, VIP_MAC, sport, 1001, 7001, TCP_ACK | TCP_PSH, b"GET / HTTP/1.0\r\n")
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Backend {
    id: u32,
    ip: [u8; 4],
    mac: [u8; 6],
    local: bool,
}

const BC: Backend = Backend { id: ID_C, ip: C, mac: MAC_C, local: true };
const BB: Backend = Backend { id: ID_B, ip: B, mac: MAC_B, local: false };

/// The slot Maglev's hash gives a flow from A to the VIP.
fn slot(table: &[u32], proto: u8, sport: u16, dport: u16) -> usize {
    (flow_hash(k(A), k(VIP), proto, ports_word(sport, dport)) % table.len() as u32) as usize
}

/// Client ports whose flow hash lands on a slot of `want`, from 40000 up.
fn ports_to(table: &[u32], proto: u8, dport: u16, want: u32) -> impl Iterator<Item = u16> + '_ {
    (40000u16..).filter(move |&p| table[slot(table, proto, p, dport)] == want)
}

fn port_to(table: &[u32], proto: u8, dport: u16, want: u32) -> u16 {
    ports_to(table, proto, dport, want).next().unwrap()
}

fn expected_encap(inner: &[u8], sport: u16) -> Vec<u8> {
    let mut e = eth(PEER_MAC, NODE_MAC, 0x0800);
    e.extend(ipv4(NODE_IP, PEER_IP, 17, 8 + 8 + inner.len(), 0x4000, 0));
    e.extend(udp(sport, 4789, 8 + inner.len()));
    e.extend(vxlan_hdr(VNI, 0x08));
    e.extend_from_slice(inner);
    e
}

/// What the container-side program sends for `inner` (already DNATed to `be`): the frame
/// itself to a local backend, encapsulated towards the peer for a remote one.
fn delivered(be: Backend, inner: &[u8]) -> (Vec<u8>, FwdCounter) {
    if be.local {
        return (inner.to_vec(), FwdCounter::LocalDelivery);
    }
    let proto = inner[23];
    let ports = u32::from_ne_bytes([inner[34], inner[35], inner[36], inner[37]]);
    let sport = src_port(flow_hash(k(A), k(be.ip), proto, ports));
    (expected_encap(inner, sport), FwdCounter::Encap)
}

/// Which backend a DNATed frame went to (its inner frame when encapsulated).
fn where_to(out: &[u8]) -> Backend {
    let inner = if out.len() >= 84 && out[30..34] == PEER_IP && out[36..38] == 4789u16.to_be_bytes() {
        &out[50..]
    } else {
        out
    };
    match [inner[30], inner[31], inner[32], inner[33]] {
        ip if ip == C => BC,
        ip if ip == B => BB,
        ip => panic!("DNATed to {ip:?}, not a backend"),
    }
}

/// Both checksums of an Ethernet + IPv4 frame verify (a UDP checksum of 0 is none).
fn assert_checksums(f: &[u8], what: &str) {
    assert_eq!(csum(&f[14..34]), 0, "{what}: IPv4 header checksum");
    let tot = u16::from_be_bytes([f[16], f[17]]) as usize;
    let (src, dst) = ([f[26], f[27], f[28], f[29]], [f[30], f[31], f[32], f[33]]);
    let l4 = &f[34..14 + tot];
    match f[23] {
        6 => assert_eq!(l4_csum(src, dst, 6, l4), 0, "{what}: TCP checksum"),
        17 if l4[6..8] != [0, 0] => assert_eq!(l4_csum(src, dst, 17, l4), 0, "{what}: UDP checksum"),
        17 => {}
        1 => assert_eq!(csum(l4), 0, "{what}: ICMP checksum"),
        p => panic!("{what}: protocol {p}"),
    }
}

fn flow_keys(sport: u16, dport: u16, proto: u8, be: Backend) -> (CtKey, CtKey) {
    let fwd = CtKey { src: k(A), dst: k(VIP), sport: sport.to_be(), dport: dport.to_be(), proto, _pad: [0; 3] };
    let rev = CtKey { src: k(be.ip), dst: k(A), sport: dport.to_be(), dport: sport.to_be(), proto, _pad: [0; 3] };
    (fwd, rev)
}

/// Conntrack holds exactly the two entries of this flow, pointing at `be`.
fn assert_tracked(bed: &mut Bed, sport: u16, dport: u16, proto: u8, be: Backend) {
    let (fk, rk) = flow_keys(sport, dport, proto, be);
    let mut ct = bed.conntrack();
    ct.sort_by_key(|(k, _)| k.src);
    assert_eq!(ct.len(), 2, "two conntrack entries: {ct:?}");
    let fwd = ct.iter().find(|(k, _)| *k == fk).unwrap_or_else(|| panic!("no forward entry {fk:?} in {ct:?}"));
    let rev = ct.iter().find(|(k, _)| *k == rk).unwrap_or_else(|| panic!("no reply entry {rk:?} in {ct:?}"));
    assert_eq!((fwd.1.nat_ip, fwd.1.backend, fwd.1.flags), (k(be.ip), be.id, 0), "forward entry");
    assert_eq!((rev.1.nat_ip, rev.1.backend, rev.1.flags), (k(VIP), be.id, CT_REPLY), "reply entry");
    let flows = bed.dp.flows().unwrap();
    assert_eq!(flows.len(), 1, "{flows:?}");
    let f = &flows[0];
    assert_eq!(
        (f.client.octets(), f.client_port, f.vip.octets(), f.port, f.backend.octets(), f.backend_id, f.state),
        (A, sport, VIP, dport, be.ip, be.id, "active"),
        "the tracked flow"
    );
}

/// A new TCP flow from A:`sport` to the VIP, which must go to `be`: its SYN's output checked.
fn new_tcp_flow(bed: &mut Bed, sport: u16, be: Backend) -> Run {
    let r = run(bed, Prog::FromA, &syn(sport));
    let (want, via) = delivered(be, &client_tcp(be.ip, be.mac, sport, 1000, 0, TCP_SYN, &[]));
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::LbNew, via], "SYN to the VIP");
    assert_eq!(where_to(&r.out), be, "backend of the new flow");
    assert_eq!(r.out, want, "DNATed SYN bytes");
    r
}

// ---------------------------------------------------------------------------------------
// 1, 2: a new flow, then its next packet

fn new_flow_is_dnated(be: Backend) {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    let p = port_to(&TABLE, 6, TCP_PORT, be.id);
    let syn = syn(p);
    let r = new_tcp_flow(&mut bed, p, be);
    // The fields, one by one (the golden comparison above covers the rest).
    let inner = if be.local { &r.out[..] } else { &r.out[50..] };
    assert_eq!(inner[0..6], be.mac, "destination MAC");
    assert_eq!(inner[6..12], MAC_A, "source MAC");
    assert_eq!(inner[30..34], be.ip, "destination IP");
    assert_eq!(inner[26..30], A, "source IP");
    assert_checksums(inner, "DNATed SYN");
    if !be.local {
        assert_eq!(r.out[0..6], PEER_MAC, "outer destination MAC");
        assert_eq!(r.out[26..34], [NODE_IP, PEER_IP].concat(), "outer addresses");
        assert_eq!(r.out[36..38], 4789u16.to_be_bytes(), "VXLAN port");
        assert_eq!(csum(&r.out[14..34]), 0, "outer IPv4 checksum");
    }
    assert_tracked(&mut bed, p, TCP_PORT, 6, be);
    let st = bed.dp.lb_stats(&[ID_C, ID_B]).unwrap();
    let other = if be.local { ID_B } else { ID_C };
    assert_eq!((st[&be.id].conns, st[&be.id].in_pkts, st[&be.id].in_bytes), (1, 1, syn.len() as u64), "LbStats");
    assert_eq!((st[&be.id].out_pkts, st[&other].conns, st[&other].in_pkts), (0, 0, 0), "LbStats of the others");
}

#[test]
fn tcp_syn_to_the_vip_is_dnated_to_the_local_backend() {
    new_flow_is_dnated(BC);
}

#[test]
fn tcp_syn_to_the_vip_is_dnated_to_the_remote_backend_and_encapsulated() {
    new_flow_is_dnated(BB);
}

fn next_packet_follows_conntrack(be: Backend) {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    let p = port_to(&TABLE, 6, TCP_PORT, be.id);
    new_tcp_flow(&mut bed, p, be);
    let a = ack(p);
    let r = run(&mut bed, Prog::FromA, &a);
    let (want, via) =
        delivered(be, &client_tcp(be.ip, be.mac, p, 1001, 7001, TCP_ACK | TCP_PSH, b"GET / HTTP/1.0\r\n"));
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::LbForward, via], "ACK of a tracked flow");
    assert_eq!(r.out, want, "DNATed ACK bytes");
    assert_checksums(if be.local { &r.out } else { &r.out[50..] }, "DNATed ACK");
    assert_tracked(&mut bed, p, TCP_PORT, 6, be);
    let st = bed.dp.lb_stats(&[be.id]).unwrap()[&be.id];
    assert_eq!((st.conns, st.in_pkts, st.in_bytes), (1, 2, (syn(p).len() + a.len()) as u64), "LbStats");
}

#[test]
fn second_packet_follows_conntrack_local() {
    next_packet_follows_conntrack(BC);
}

#[test]
fn second_packet_follows_conntrack_remote() {
    next_packet_follows_conntrack(BB);
}

#[test]
fn fin_marks_the_flow_closing_and_a_new_syn_reopens_it() {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    let p = port_to(&TABLE, 6, TCP_PORT, ID_C);
    new_tcp_flow(&mut bed, p, BC);
    let (fk, rk) = flow_keys(p, TCP_PORT, 6, BC);
    let flags = |bed: &mut Bed, key: CtKey| bed.conntrack().into_iter().find(|(k, _)| *k == key).unwrap().1.flags;
    let fin = client_tcp(VIP, VIP_MAC, p, 1001, 7001, TCP_FIN | TCP_ACK, &[]);
    run(&mut bed, Prog::FromA, &fin).expect(
        TC_ACT_REDIRECT,
        &[FwdCounter::LbForward, FwdCounter::LocalDelivery],
        "FIN",
    );
    assert_eq!(bed.dp.flows().unwrap()[0].state, "closing");
    assert_eq!(flags(&mut bed, fk), CT_CLOSING, "forward entry after the client's FIN");
    // The backend's FIN marks the reply entry.
    let fin = ip_frame(MAC_A, MAC_C, C, A, 6, &tcp(C, A, TCP_PORT, p, 7001, 1002, TCP_FIN | TCP_ACK, &[]));
    run(&mut bed, Prog::FromC, &fin).expect(
        TC_ACT_REDIRECT,
        &[FwdCounter::LbReverse, FwdCounter::LocalDelivery],
        "FIN from C",
    );
    assert_eq!(flags(&mut bed, rk), CT_REPLY | CT_CLOSING, "reply entry after the backend's FIN");
    // The same 4-tuple opened again.
    run(&mut bed, Prog::FromA, &syn(p)).expect(
        TC_ACT_REDIRECT,
        &[FwdCounter::LbForward, FwdCounter::LocalDelivery],
        "SYN again",
    );
    assert_eq!(bed.dp.flows().unwrap()[0].state, "active");
    assert_eq!(flags(&mut bed, fk), 0, "forward entry after a new SYN");
}

#[test]
fn too_big_for_the_underlay_gets_fragmentation_needed_from_the_vip() {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    // 1451 bytes of IPv4: one more than the underlay carries once encapsulated.
    let f = client_tcp(VIP, VIP_MAC, 40000, 1, 1, TCP_ACK, &[7; 1451 - 40]);
    let r = run(&mut bed, Prog::FromA, &f);
    assert_eq!(r.moved, vec![("drop:too-big".into(), 1), ("icmp-frag-needed".into(), 1)], "counters");
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let msg = icmp(3, 4, [0, 0, 0x05, 0xaa], &f[14..54]); // TCP: its IPv4 and TCP headers quoted
    let mut want = eth(MAC_A, VIP_MAC, 0x0800);
    want.extend(ipv4(VIP, A, 1, msg.len(), 0, 0xc0));
    want.extend(msg);
    assert_eq!(r.out, want, "fragmentation needed (MTU 1450) from the VIP");
    assert!(bed.conntrack().is_empty(), "no backend picked");
}

// ---------------------------------------------------------------------------------------
// 3: a flow that lost its conntrack entry keeps its backend

fn mid_flow_miss(scheduler: u8, table: &[u32]) {
    pin_to_this_cpu();
    let mut bed = bed_with_table(scheduler, table);
    // rr and wrr pick table[0] first (fresh cursor); take a flow whose hash lands elsewhere, on
    // another backend, so that a re-pick by hash shows.
    let p = (40000u16..).find(|&p| table[slot(table, 6, p, TCP_PORT)] != table[0]).unwrap();
    let first = run(&mut bed, Prog::FromA, &syn(p));
    assert_eq!(first.verdict, TC_ACT_REDIRECT);
    let be = where_to(&first.out);
    let before = run(&mut bed, Prog::FromA, &ack(p));
    assert_eq!(where_to(&before.out), be);
    assert_eq!(bed.dp.flush_conntrack().unwrap(), 2, "the flow's two entries flushed");
    let after = run(&mut bed, Prog::FromA, &ack(p));
    let via = if be.local { FwdCounter::LocalDelivery } else { FwdCounter::Encap };
    assert_eq!(
        where_to(&after.out),
        be,
        "scheduler {scheduler}: a TCP flow that lost its conntrack entry moved from backend {} to {}",
        be.id,
        where_to(&after.out).id
    );
    after.expect(TC_ACT_REDIRECT, &[FwdCounter::LbRepick, via], "mid-flow packet without an entry");
    assert_eq!(after.out, before.out, "same bytes as before the flush");
    assert_tracked(&mut bed, p, TCP_PORT, 6, be);
    assert_eq!(bed.dp.lb_stats(&[be.id]).unwrap()[&be.id].conns, 1, "a re-pick is no new connection");
}

#[test]
fn mid_flow_miss_keeps_the_backend_maglev() {
    mid_flow_miss(SCHED_MAGLEV, &TABLE);
}

#[test]
fn mid_flow_miss_keeps_the_backend_sh() {
    mid_flow_miss(SCHED_SH, &TABLE);
}

/// rr and wrr cannot replay their cursor: a flow that lost its entry is reset from the VIP (as
/// IPVS resets a non-SYN packet it has no connection for), never silently moved.
fn mid_flow_miss_resets(scheduler: u8, table: &[u32]) {
    pin_to_this_cpu();
    let mut bed = bed_with_table(scheduler, table);
    let p = 40000;
    let first = run(&mut bed, Prog::FromA, &syn(p));
    assert_eq!(first.verdict, TC_ACT_REDIRECT);
    assert_eq!(bed.dp.flush_conntrack().unwrap(), 2, "the flow's two entries flushed");
    let f = client_tcp(VIP, VIP_MAC, p, 5000, 9000, TCP_ACK, &[]);
    let r = run(&mut bed, Prog::FromA, &f);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::LbReset], "mid-flow packet without an entry, cursor scheduler");
    let o = &r.out;
    assert_eq!(o.len(), 54, "a bare reset: {o:?}");
    assert_eq!(o[14..34], ipv4(VIP, A, 6, 20, 0x4000, 0)[..], "from the VIP to the client");
    assert_eq!(o[38..42], 9000u32.to_be_bytes(), "seq = the ACK's ack number");
    assert_eq!(o[47], TCP_RST, "RST");
    assert_checksums(o, "reset");
    assert!(bed.conntrack().is_empty(), "nothing tracked for a reset flow");
}

#[test]
fn mid_flow_miss_resets_rr() {
    mid_flow_miss_resets(SCHED_RR, &TABLE);
}

#[test]
fn mid_flow_miss_resets_wrr() {
    mid_flow_miss_resets(SCHED_WRR, &wrr_table());
}

// ---------------------------------------------------------------------------------------
// 4: each scheduler's pick

/// New flows from these client ports: the backend each went to.
fn picks(bed: &mut Bed, ports: impl Iterator<Item = u16>) -> Vec<(u16, Backend)> {
    ports
        .map(|p| {
            let r = run(bed, Prog::FromA, &syn(p));
            assert_eq!(r.verdict, TC_ACT_REDIRECT, "SYN from port {p}");
            assert!(r.moved.contains(&("lb-new".into(), 1)), "port {p}: {:?}", r.moved);
            (p, where_to(&r.out))
        })
        .collect()
}

fn maglev_picks(table: &[u32]) {
    let mut bed = bed_with_table(SCHED_MAGLEV, table);
    let got = picks(&mut bed, 30000..30064);
    for (p, be) in &got {
        assert_eq!(be.id, table[slot(table, 6, *p, TCP_PORT)], "port {p}: slot {}", slot(table, 6, *p, TCP_PORT));
    }
    assert!(got.iter().any(|(_, b)| *b == BC) && got.iter().any(|(_, b)| *b == BB), "both backends used");
    // UDP flows index the same table by their own 5-tuple.
    for p in 30000..30016u16 {
        let r = run(&mut bed, Prog::FromA, &client_udp(VIP, VIP_MAC, p, b"q", false));
        assert_eq!(where_to(&r.out).id, table[slot(table, 17, p, UDP_PORT)], "UDP port {p}");
    }
}

#[test]
fn maglev_picks_the_slot_of_the_flow_hash() {
    maglev_picks(&TABLE);
}

#[test]
fn maglev_picks_the_slot_of_the_flow_hash_in_a_built_table() {
    let ids = [ID_C, ID_B];
    let table: Vec<u32> =
        maglev::build(&[("svc.1.c", 1), ("svc.2.b", 1)], 251).into_iter().map(|i| ids[i as usize]).collect();
    assert_eq!(table.len(), 251);
    maglev_picks(&table);
}

#[test]
fn sh_picks_by_the_client_address_only() {
    // Only the slot of A's source hash holds C: a pick by any other hash lands on B.
    let s = (flow_hash(k(A), 0, 0, 0) % TABLE.len() as u32) as usize;
    let mut table = [ID_B; 7];
    table[s] = ID_C;
    let mut bed = bed_with_table(SCHED_SH, &table);
    let got = picks(&mut bed, (30000..30032).step_by(7));
    for (p, be) in &got {
        assert_eq!(*be, BC, "client port {p}: sh must pick slot {s} for every port of A");
    }
    // UDP too: the same client, the same backend.
    let r = run(&mut bed, Prog::FromA, &client_udp(VIP, VIP_MAC, 5353, b"q", false));
    assert_eq!(where_to(&r.out), BC, "UDP from A");
}

#[test]
fn rr_walks_the_table_in_order() {
    pin_to_this_cpu();
    let mut bed = bed_with_service(SCHED_RR);
    let got = picks(&mut bed, 31000..31014);
    let want: Vec<u32> = (0..14).map(|i| TABLE[i % TABLE.len()]).collect();
    assert_eq!(got.iter().map(|(_, b)| b.id).collect::<Vec<_>>(), want, "rr: slots 0, 1, 2, ... in turn");
    // A tracked flow does not move the cursor.
    run(&mut bed, Prog::FromA, &ack(31000)).expect(
        TC_ACT_REDIRECT,
        &[FwdCounter::LbForward, FwdCounter::LocalDelivery],
        "tracked",
    );
    let next = picks(&mut bed, 31100..31101);
    assert_eq!(next[0].1.id, TABLE[14 % TABLE.len()], "cursor after a tracked packet");
}

#[test]
fn rr_restarts_in_order_after_the_table_shrinks() {
    pin_to_this_cpu();
    let mut bed = bed_with_service(SCHED_RR);
    picks(&mut bed, 31000..31005); // the cursor is now at slot 5
    let small = [ID_C, ID_B, ID_B, ID_B];
    let mut c = bed.contents.clone();
    set_table(&mut c, TABLE_OFFSET + 100, &small);
    bed.apply(c);
    // A cursor past the end restarts at slot 0, then walks on: 0, 1, 2, 3, 0, ...
    let got = picks(&mut bed, 31100..31108);
    let want: Vec<u32> = (0..8).map(|i| small[i % small.len()]).collect();
    assert_eq!(got.iter().map(|(_, b)| b.id).collect::<Vec<_>>(), want, "rr after the table shrank from 7 to 4");
}

fn wrr_table() -> Vec<u32> {
    // C weight 3, B weight 1: a smooth weighted sequence.
    let ids = [ID_C, ID_B];
    maglev::wrr_sequence(&[3, 1]).into_iter().map(|i| ids[i as usize]).collect()
}

#[test]
fn wrr_walks_the_weighted_sequence() {
    pin_to_this_cpu();
    let table = wrr_table();
    assert_eq!(table.len(), 4);
    assert_eq!(table.iter().filter(|&&i| i == ID_B).count(), 1, "B's share: 1 of 4");
    let mut bed = bed_with_table(SCHED_WRR, &table);
    let got = picks(&mut bed, 32000..32012);
    let want: Vec<u32> = (0..12).map(|i| table[i % table.len()]).collect();
    assert_eq!(got.iter().map(|(_, b)| b.id).collect::<Vec<_>>(), want, "wrr: the sequence in turn");
}

// ---------------------------------------------------------------------------------------
// 5: UDP checksums

#[test]
fn udp_dnat_keeps_a_zero_checksum_zero() {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    for be in [BC, BB] {
        let p = port_to(&TABLE, 17, UDP_PORT, be.id);
        let r = run(&mut bed, Prog::FromA, &client_udp(VIP, VIP_MAC, p, b"dns query", false));
        let (want, via) = delivered(be, &client_udp(be.ip, be.mac, p, b"dns query", false));
        r.expect(TC_ACT_REDIRECT, &[FwdCounter::LbNew, via], "UDP without checksum");
        assert_eq!(r.out, want, "DNATed UDP bytes");
        let inner = if be.local { &r.out[..] } else { &r.out[50..] };
        assert_eq!(inner[40..42], [0, 0], "no checksum stays no checksum");
        assert_eq!(csum(&inner[14..34]), 0, "IPv4 checksum");
    }
}

#[test]
fn udp_dnat_keeps_a_nonzero_checksum_valid() {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    for be in [BC, BB] {
        let p = port_to(&TABLE, 17, UDP_PORT, be.id);
        let f = client_udp(VIP, VIP_MAC, p, b"dns query", true);
        assert_ne!(f[40..42], [0, 0]);
        let r = run(&mut bed, Prog::FromA, &f);
        let (want, via) = delivered(be, &client_udp(be.ip, be.mac, p, b"dns query", true));
        r.expect(TC_ACT_REDIRECT, &[FwdCounter::LbNew, via], "UDP with checksum");
        let inner = if be.local { &r.out[..] } else { &r.out[50..] };
        assert_checksums(inner, "DNATed UDP");
        assert_eq!(r.out, want, "DNATed UDP bytes");
    }
}

#[test]
fn udp_dnat_whose_checksum_comes_out_zero_sends_ffff() {
    // A payload chosen so that the checksum to C computes to 0, which UDP sends as 0xffff
    // (0 would mean "no checksum").
    let mut bed = bed_with_service(SCHED_MAGLEV);
    let p = port_to(&TABLE, 17, UDP_PORT, ID_C);
    let mut payload = [0u8, 0, 1, 2, 3, 4];
    let probe = udp_dgram(A, C, p, UDP_PORT, &payload, false);
    let fill = !l4_csum(A, C, 17, &probe); // the sum without the filler word, complemented
    payload[..2].copy_from_slice(&(!fill).to_be_bytes());
    assert_eq!(l4_csum(A, C, 17, &udp_dgram(A, C, p, UDP_PORT, &payload, false)), 0, "computed 0 to C");
    let f = client_udp(VIP, VIP_MAC, p, &payload, true);
    assert_ne!(f[40..42], [0xff, 0xff], "to the VIP the checksum is something else");
    let r = run(&mut bed, Prog::FromA, &f);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::LbNew, FwdCounter::LocalDelivery], "UDP");
    assert_eq!(r.out[30..34], C);
    assert_eq!(r.out[40..42], [0xff, 0xff], "a computed 0 is sent as 0xffff");
    assert_checksums(&r.out, "DNATed UDP");
}

// ---------------------------------------------------------------------------------------
// 6: reverse NAT

#[test]
fn reply_from_the_local_backend_is_reverse_natted() {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    let p = port_to(&TABLE, 6, TCP_PORT, ID_C);
    new_tcp_flow(&mut bed, p, BC);
    let reply = ip_frame(MAC_A, MAC_C, C, A, 6, &tcp(C, A, TCP_PORT, p, 7000, 1001, TCP_SYN | TCP_ACK, &[]));
    let r = run(&mut bed, Prog::FromC, &reply);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::LbReverse, FwdCounter::LocalDelivery], "reply from C");
    assert_eq!(r.out[6..12], VIP_MAC, "source MAC");
    assert_eq!(r.out[26..30], VIP, "source IP");
    assert_checksums(&r.out, "reverse-NATed reply");
    let want = ip_frame(MAC_A, VIP_MAC, VIP, A, 6, &tcp(VIP, A, TCP_PORT, p, 7000, 1001, TCP_SYN | TCP_ACK, &[]));
    assert_eq!(r.out, want, "reverse-NATed bytes");
    let st = bed.dp.lb_stats(&[ID_C]).unwrap()[&ID_C];
    assert_eq!((st.out_pkts, st.out_bytes), (1, reply.len() as u64), "LbStats out");

    // UDP, with and without a checksum.
    for (i, checksum) in [(0, true), (1, false)] {
        let p = ports_to(&TABLE, 17, UDP_PORT, ID_C).nth(i).unwrap();
        run(&mut bed, Prog::FromA, &client_udp(VIP, VIP_MAC, p, b"q", checksum));
        let reply = ip_frame(MAC_A, MAC_C, C, A, 17, &udp_dgram(C, A, UDP_PORT, p, b"answer", checksum));
        let r = run(&mut bed, Prog::FromC, &reply);
        r.expect(TC_ACT_REDIRECT, &[FwdCounter::LbReverse, FwdCounter::LocalDelivery], "UDP reply from C");
        let want = ip_frame(MAC_A, VIP_MAC, VIP, A, 17, &udp_dgram(VIP, A, UDP_PORT, p, b"answer", checksum));
        assert_checksums(&r.out, "reverse-NATed UDP");
        assert_eq!(r.out, want, "reverse-NATed UDP bytes (checksum {checksum})");
    }

    // Not a reply of a tracked flow: delivered as it is.
    let other = ip_frame(MAC_A, MAC_C, C, A, 6, &tcp(C, A, 8080, p, 1, 1, TCP_ACK, &[]));
    let r = run(&mut bed, Prog::FromC, &other);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::LocalDelivery], "C's own traffic");
    assert_eq!(r.out, other, "untouched");
}

fn reply_on_decap(prog: Prog) {
    let redirect = match prog {
        Prog::Xdp => XDP_REDIRECT,
        _ => TC_ACT_REDIRECT,
    };
    let mut bed = bed_with_service(SCHED_MAGLEV);
    let p = port_to(&TABLE, 6, TCP_PORT, ID_B);
    new_tcp_flow(&mut bed, p, BB);
    let payload = b"HTTP/1.0 200 OK\r\n\r\nhello";
    let inner = ip_frame(MAC_A, MAC_B, B, A, 6, &tcp(B, A, TCP_PORT, p, 7001, 1017, TCP_ACK | TCP_PSH, payload));
    let frame = vxlan_frame(NODE_MAC, PEER_MAC, PEER_IP, NODE_IP, 51000, 4789, VNI, &inner);
    let r = run(&mut bed, prog, &frame);
    r.expect(redirect, &[FwdCounter::Decap, FwdCounter::LbReverse], &format!("{prog:?}: reply from B"));
    assert_eq!(r.out[6..12], VIP_MAC, "{prog:?}: source MAC");
    assert_eq!(r.out[26..30], VIP, "{prog:?}: source IP");
    assert_checksums(&r.out, &format!("{prog:?}: reverse-NATed TCP"));
    let want = ip_frame(MAC_A, VIP_MAC, VIP, A, 6, &tcp(VIP, A, TCP_PORT, p, 7001, 1017, TCP_ACK | TCP_PSH, payload));
    assert_eq!(r.out, want, "{prog:?}: reverse-NATed bytes");
    let st = bed.dp.lb_stats(&[ID_B]).unwrap()[&ID_B];
    assert_eq!(st.out_pkts, 1, "{prog:?}: LbStats out");

    // UDP with and without a checksum (XDP fixes a nonzero one by hand, leaves 0 alone).
    for (i, checksum) in [(0, true), (1, false)] {
        let q = ports_to(&TABLE, 17, UDP_PORT, ID_B).nth(i).unwrap();
        run(&mut bed, Prog::FromA, &client_udp(VIP, VIP_MAC, q, b"q", checksum));
        let inner = ip_frame(MAC_A, MAC_B, B, A, 17, &udp_dgram(B, A, UDP_PORT, q, b"answer!", checksum));
        let frame = vxlan_frame(NODE_MAC, PEER_MAC, PEER_IP, NODE_IP, 51000, 4789, VNI, &inner);
        let r = run(&mut bed, prog, &frame);
        r.expect(redirect, &[FwdCounter::Decap, FwdCounter::LbReverse], &format!("{prog:?}: UDP reply"));
        assert_checksums(&r.out, &format!("{prog:?}: reverse-NATed UDP"));
        let want = ip_frame(MAC_A, VIP_MAC, VIP, A, 17, &udp_dgram(VIP, A, UDP_PORT, q, b"answer!", checksum));
        assert_eq!(r.out, want, "{prog:?}: reverse-NATed UDP bytes (checksum {checksum})");
    }

    // B's own traffic to A (no tracked flow): decapsulated as it is.
    let inner = ip_frame(MAC_A, MAC_B, B, A, 6, &tcp(B, A, 9999, p, 1, 1, TCP_ACK, &[]));
    let frame = vxlan_frame(NODE_MAC, PEER_MAC, PEER_IP, NODE_IP, 51000, 4789, VNI, &inner);
    let r = run(&mut bed, prog, &frame);
    r.expect(redirect, &[FwdCounter::Decap], &format!("{prog:?}: B's own traffic"));
    assert_eq!(r.out, inner);
}

#[test]
fn reply_from_the_remote_backend_is_reverse_natted_on_decap_xdp() {
    reply_on_decap(Prog::Xdp);
}

#[test]
fn reply_from_the_remote_backend_is_reverse_natted_on_decap_tc() {
    reply_on_decap(Prog::UnderlayTc);
}

// ---------------------------------------------------------------------------------------
// 7: ICMP

#[test]
fn ping_to_the_vip_is_answered_by_the_vip() {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    let body: Vec<u8> = (0..56).collect();
    let ping = ip_frame(VIP_MAC, MAC_A, A, VIP, 1, &icmp(8, 0, [0x12, 0x34, 0, 7], &body));
    let r = run(&mut bed, Prog::FromA, &ping);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::LbEchoReply], "ping");
    assert_eq!((r.out[26..30].to_vec(), r.out[30..34].to_vec()), (VIP.to_vec(), A.to_vec()), "addresses");
    assert_eq!((r.out[34], r.out[35]), (0, 0), "echo reply");
    assert_checksums(&r.out, "echo reply");
    let want = ip_frame(MAC_A, VIP_MAC, VIP, A, 1, &icmp(0, 0, [0x12, 0x34, 0, 7], &body));
    assert_eq!(r.out, want, "echo reply bytes");
    assert!(bed.conntrack().is_empty(), "nothing tracked");
}

/// An ICMP port unreachable from `be` to A quoting A -> `be`:53 UDP, and what A must get.
fn icmp_error(be: Backend, sport: u16) -> (Vec<u8>, Vec<u8>) {
    let quote = |dst: [u8; 4]| {
        let mut q = ipv4(A, dst, 17, 8 + 12, 0x4000, 0);
        q.extend(udp(sport, UDP_PORT, 12));
        q
    };
    let sent = ip_frame(MAC_A, be.mac, be.ip, A, 1, &icmp(3, 3, [0; 4], &quote(be.ip)));
    let want = ip_frame(MAC_A, VIP_MAC, VIP, A, 1, &icmp(3, 3, [0; 4], &quote(VIP)));
    (sent, want)
}

fn assert_translated_error(out: &[u8], want: &[u8], what: &str) {
    assert_eq!(out[26..30], VIP, "{what}: outer source");
    assert_eq!(out[58..62], VIP, "{what}: quoted destination");
    assert_eq!(csum(&out[42..62]), 0, "{what}: quoted IPv4 checksum");
    assert_checksums(out, what);
    assert_eq!(out, want, "{what}: bytes");
}

#[test]
fn icmp_error_from_the_local_backend_is_translated() {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    let p = port_to(&TABLE, 17, UDP_PORT, ID_C);
    run(&mut bed, Prog::FromA, &client_udp(VIP, VIP_MAC, p, b"0123456789ab", false));
    let (sent, want) = icmp_error(BC, p);
    let r = run(&mut bed, Prog::FromC, &sent);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::LbReverse, FwdCounter::LocalDelivery], "ICMP error from C");
    assert_translated_error(&r.out, &want, "ICMP error from C");
}

fn icmp_error_on_decap(prog: Prog) {
    let redirect = match prog {
        Prog::Xdp => XDP_REDIRECT,
        _ => TC_ACT_REDIRECT,
    };
    let mut bed = bed_with_service(SCHED_MAGLEV);
    let p = port_to(&TABLE, 17, UDP_PORT, ID_B);
    run(&mut bed, Prog::FromA, &client_udp(VIP, VIP_MAC, p, b"0123456789ab", false));
    let (sent, want) = icmp_error(BB, p);
    let frame = vxlan_frame(NODE_MAC, PEER_MAC, PEER_IP, NODE_IP, 51000, 4789, VNI, &sent);
    let r = run(&mut bed, prog, &frame);
    r.expect(redirect, &[FwdCounter::Decap, FwdCounter::LbReverse], &format!("{prog:?}: ICMP error from B"));
    assert_translated_error(&r.out, &want, &format!("{prog:?}: ICMP error from B"));
}

#[test]
fn icmp_error_from_the_remote_backend_is_translated_on_decap_xdp() {
    icmp_error_on_decap(Prog::Xdp);
}

#[test]
fn icmp_error_from_the_remote_backend_is_translated_on_decap_tc() {
    icmp_error_on_decap(Prog::UnderlayTc);
}

// ---------------------------------------------------------------------------------------
// 8: drops

/// `f` with IHL 6: four bytes of IPv4 options (NOPs) after the header.
fn with_ip_options(f: &[u8]) -> Vec<u8> {
    let mut out = f[..14].to_vec();
    let mut ip = f[14..34].to_vec();
    ip[0] = 0x46;
    let tot = u16::from_be_bytes([ip[2], ip[3]]) + 4;
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    ip.extend([1, 1, 1, 1]);
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend(ip);
    out.extend_from_slice(&f[34..]);
    out
}

/// `f` with the IPv4 flags/fragment offset field set to `frags`.
fn with_frags(f: &[u8], frags: u16) -> Vec<u8> {
    let mut f = f.to_vec();
    f[20..22].copy_from_slice(&frags.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

#[test]
fn vip_drops_have_reasons() {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    let tcp_to = |port: u16| ip_frame(VIP_MAC, MAC_A, A, VIP, 6, &tcp(A, VIP, 40000, port, 1, 0, TCP_SYN, &[]));
    let udp_to = |port: u16| ip_frame(VIP_MAC, MAC_A, A, VIP, 17, &udp_dgram(A, VIP, 40000, port, b"x", false));
    for (what, f) in [("tcp/81", tcp_to(81)), ("tcp/53", tcp_to(53)), ("udp/80", udp_to(80)), ("udp/54", udp_to(54))] {
        run(&mut bed, Prog::FromA, &f).expect_drop(DropReason::NoService, what);
    }

    // A service with an empty table: no backend takes new connections.
    let mut c = bed.contents.clone();
    c.services.insert(
        service_key(VNI, VIP, 6, 8080),
        ServiceInfo { id: SERVICE_ID + 1, offset: 0, size: 0, scheduler: SCHED_MAGLEV, flags: 0, target: 0 },
    );
    bed.apply(c);
    run(&mut bed, Prog::FromA, &tcp_to(8080)).expect_drop(DropReason::NoBackend, "size 0, SYN");
    let mid = ip_frame(VIP_MAC, MAC_A, A, VIP, 6, &tcp(A, VIP, 40000, 8080, 2, 2, TCP_ACK, &[]));
    run(&mut bed, Prog::FromA, &mid).expect_drop(DropReason::NoBackend, "size 0, mid-flow");

    // What the balancer does not handle.
    let syn = syn(40001);
    let ping = ip_frame(VIP_MAC, MAC_A, A, VIP, 1, &icmp(8, 0, [0, 1, 0, 1], &[0; 8]));
    let cases = [
        ("IP options", with_ip_options(&syn)),
        ("ping with IP options", with_ip_options(&ping)),
        ("first fragment", with_frags(&syn, 0x2000)),
        ("non-first fragment", with_frags(&syn, 0x0003)),
        ("last fragment", with_frags(&syn, 0x0010)),
        ("udp fragment", with_frags(&udp_to(UDP_PORT), 0x2000)),
        ("icmp timestamp", ip_frame(VIP_MAC, MAC_A, A, VIP, 1, &icmp(13, 0, [0; 4], &[0; 12]))),
        ("icmp echo reply", ip_frame(VIP_MAC, MAC_A, A, VIP, 1, &icmp(0, 0, [0; 4], &[0; 8]))),
        ("gre", ip_frame(VIP_MAC, MAC_A, A, VIP, 47, &[0; 24])),
    ];
    for (what, f) in cases {
        run(&mut bed, Prog::FromA, &f).expect_drop(DropReason::VipUnsupported, what);
    }
    assert!(bed.conntrack().is_empty(), "nothing tracked");

    // The service's own table emptied: no-backend for its ports too.
    let mut c = bed.contents.clone();
    set_table(&mut c, TABLE_OFFSET, &[]);
    bed.apply(c);
    run(&mut bed, Prog::FromA, &syn).expect_drop(DropReason::NoBackend, "emptied table");
    run(&mut bed, Prog::FromA, &udp_to(UDP_PORT)).expect_drop(DropReason::NoBackend, "emptied table, UDP");
}

// ---------------------------------------------------------------------------------------
// 9: a backend removed while a flow is tracked

/// Remove `gone` from OV_BACKENDS, switching the service to a table of the others.
fn remove_backend(bed: &mut Bed, gone: u32) {
    let mut c = bed.contents.clone();
    c.backends.remove(&gone);
    let other = if gone == ID_C { ID_B } else { ID_C };
    set_table(&mut c, TABLE_OFFSET + 100, &[other; 7]);
    bed.apply(c);
}

fn removed_backend_tcp(be: Backend) {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    let ports: Vec<u16> = ports_to(&TABLE, 6, TCP_PORT, be.id).take(3).collect();
    for &p in &ports {
        new_tcp_flow(&mut bed, p, be);
    }
    remove_backend(&mut bed, be.id);

    // An ACK: the reset's sequence number is the ACK's acknowledgment number.
    let payload = b"0123456789";
    let f = client_tcp(VIP, VIP_MAC, ports[0], 5000, 9000, TCP_ACK | TCP_PSH, payload);
    let r = run(&mut bed, Prog::FromA, &f);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::LbReset], "ACK to a removed backend");
    let o = &r.out;
    assert_eq!(o.len(), 54, "Ethernet + IPv4 + TCP, no payload: {o:?}");
    assert_eq!(o[..14], eth(MAC_A, VIP_MAC, 0x0800)[..], "Ethernet: back to A from the VIP");
    assert_eq!(o[14..34], ipv4(VIP, A, 6, 20, 0x4000, 0)[..], "IPv4 header");
    assert_eq!(o[34..38], [TCP_PORT.to_be_bytes(), ports[0].to_be_bytes()].concat(), "ports");
    assert_eq!(o[38..42], 9000u32.to_be_bytes(), "seq = the ACK's ack number");
    assert_eq!((o[46], o[47]), (0x50, TCP_RST), "data offset 5, RST");
    assert_checksums(o, "reset");
    assert!(bed.dp.flows().unwrap().iter().all(|f| f.client_port != ports[0]), "the flow's entry is gone");

    // Without ACK (a retransmitted SYN): RST+ACK acknowledging it, sequence 0.
    let f = client_tcp(VIP, VIP_MAC, ports[1], 1000, 0, TCP_SYN, &[]);
    let r = run(&mut bed, Prog::FromA, &f);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::LbReset], "SYN to a removed backend");
    let o = &r.out;
    assert_eq!(o.len(), 54);
    assert_eq!(o[14..34], ipv4(VIP, A, 6, 20, 0x4000, 0)[..], "IPv4 header");
    assert_eq!(o[34..38], [TCP_PORT.to_be_bytes(), ports[1].to_be_bytes()].concat(), "ports");
    assert_eq!(o[38..46], [0u32.to_be_bytes(), 1001u32.to_be_bytes()].concat(), "seq 0, ack = seq + 1 (SYN)");
    assert_eq!((o[46], o[47]), (0x50, TCP_RST | TCP_ACK), "RST+ACK");
    assert_checksums(o, "reset+ack");

    // A reset is never answered with a reset.
    let f = client_tcp(VIP, VIP_MAC, ports[2], 1001, 0, TCP_RST, &[]);
    run(&mut bed, Prog::FromA, &f).expect_drop(DropReason::BackendGone, "RST to a removed backend");
}

#[test]
fn removed_local_backend_tcp_flow_gets_a_reset() {
    removed_backend_tcp(BC);
}

#[test]
fn removed_remote_backend_tcp_flow_gets_a_reset() {
    removed_backend_tcp(BB);
}

#[test]
fn removed_backend_udp_flow_gets_port_unreachable() {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    let p = port_to(&TABLE, 17, UDP_PORT, ID_B);
    let f = client_udp(VIP, VIP_MAC, p, b"0123456789ab", true);
    run(&mut bed, Prog::FromA, &f).expect(TC_ACT_REDIRECT, &[FwdCounter::LbNew, FwdCounter::Encap], "new UDP flow");
    remove_backend(&mut bed, ID_B);
    let r = run(&mut bed, Prog::FromA, &f);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::IcmpPortUnreachable], "UDP to a removed backend");
    // From the VIP, type 3 code 3, quoting the packet as A sent it.
    let mut want = eth(MAC_A, VIP_MAC, 0x0800);
    let msg = icmp(3, 3, [0; 4], &f[14..42]);
    want.extend(ipv4(VIP, A, 1, msg.len(), 0, 0xc0));
    want.extend(msg);
    assert_checksums(&r.out, "port unreachable");
    assert_eq!(r.out, want, "port unreachable bytes");
    assert!(bed.dp.flows().unwrap().is_empty(), "the flow's entry is gone");
}

// ---------------------------------------------------------------------------------------
// 10: draining

#[test]
fn draining_backend_keeps_its_flows_and_gets_no_new_ones() {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    let p = port_to(&TABLE, 6, TCP_PORT, ID_B);
    new_tcp_flow(&mut bed, p, BB);
    let mut c = bed.contents.clone();
    c.backends.insert(ID_B, BackendInfo { ip: k(B), weight: 0 });
    set_table(&mut c, TABLE_OFFSET + 100, &[ID_C; 7]);
    bed.apply(c);

    let r = run(&mut bed, Prog::FromA, &ack(p));
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::LbForward, FwdCounter::Encap], "tracked flow to a draining backend");
    let (want, _) = delivered(BB, &client_tcp(B, MAC_B, p, 1001, 7001, TCP_ACK | TCP_PSH, b"GET / HTTP/1.0\r\n"));
    assert_eq!(r.out, want, "still to B");
    // New flows, including some whose hash used to land on B's slots, all go to C.
    let got = picks(&mut bed, 33000..33032);
    assert!(got.iter().all(|(_, b)| *b == BC), "new flows avoid the draining backend: {got:?}");
    assert!(got.iter().any(|(q, _)| TABLE[slot(&TABLE, 6, *q, TCP_PORT)] == ID_B), "some used to go to B");
    assert_eq!(bed.dp.lb_stats(&[ID_B]).unwrap()[&ID_B].conns, 1, "B: no new connection");
}

// ---------------------------------------------------------------------------------------
// 11: networks stay isolated

#[test]
fn a_vip_of_another_network_is_unreachable() {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    // A VIP on VNI2, and on VNI2 a service on another port of an address equal to our VIP.
    let other_vip = [10, 0, 10, 100];
    let mut c = bed.contents.clone();
    let info = c.services[&service_key(VNI, VIP, 6, TCP_PORT)];
    for ip in [other_vip, VIP] {
        c.endpoints.insert(
            EndpointKey { vni: VNI2, ip: k(ip) },
            EndpointInfo { mac: default_mac(ip), flags: EP_VIP, ifindex: 0, vtep: 0 },
        );
    }
    c.services.insert(service_key(VNI2, other_vip, 6, TCP_PORT), info);
    c.services.insert(service_key(VNI2, VIP, 6, 443), info);
    bed.apply(c);

    let f = ip_frame(
        default_mac(other_vip),
        MAC_A,
        A,
        other_vip,
        6,
        &tcp(A, other_vip, 40000, TCP_PORT, 1, 0, TCP_SYN, &[]),
    );
    run(&mut bed, Prog::FromA, &f).expect_drop(DropReason::UnknownDestination, "VNI2's VIP from A");
    let f = ip_frame(VIP_MAC, MAC_A, A, VIP, 6, &tcp(A, VIP, 40000, 443, 1, 0, TCP_SYN, &[]));
    run(&mut bed, Prog::FromA, &f).expect_drop(DropReason::NoService, "VNI2's port of the same address");
    let arp = arp_request(MAC_A, A, other_vip);
    run(&mut bed, Prog::FromA, &arp).expect_drop(DropReason::ArpUnknownTarget, "ARP for VNI2's VIP");
    assert!(bed.conntrack().is_empty(), "nothing tracked");
    // Our own VIP still works, and is answered to ARP with its MAC.
    let r = run(&mut bed, Prog::FromA, &arp_request(MAC_A, A, VIP));
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::ArpReply], "ARP for the VIP");
    assert_eq!(r.out[22..32], [VIP_MAC.to_vec(), VIP.to_vec()].concat(), "VIP's MAC and address");
    let p = port_to(&TABLE, 6, TCP_PORT, ID_C);
    new_tcp_flow(&mut bed, p, BC);
}

// ---------------------------------------------------------------------------------------
// A backend calling its own service

/// C -> VIP:80, TCP SYN, as the backend C sends it.
fn syn_from_c(sport: u16) -> Vec<u8> {
    ip_frame(VIP_MAC, MAC_C, C, VIP, 6, &tcp(C, VIP, sport, TCP_PORT, 1000, 0, TCP_SYN, &[]))
}

/// The slot Maglev's hash gives a flow from C to the VIP.
fn slot_from_c(table: &[u32], sport: u16) -> usize {
    (flow_hash(k(C), k(VIP), 6, ports_word(sport, TCP_PORT)) % table.len() as u32) as usize
}

#[test]
fn a_backend_calling_its_own_service_is_never_handed_to_itself() {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    // Flows whose hash lands on C's own slots: each goes to the next slot that is not C.
    let ports: Vec<u16> = (40000u16..).filter(|&p| TABLE[slot_from_c(&TABLE, p)] == ID_C).take(4).collect();
    for p in ports {
        let r = run(&mut bed, Prog::FromC, &syn_from_c(p));
        r.expect(TC_ACT_REDIRECT, &[FwdCounter::LbNew, FwdCounter::Encap], "C to its own VIP");
        assert_eq!(where_to(&r.out), BB, "port {p}: slot {} is C itself, the next one B", slot_from_c(&TABLE, p));
    }
    // A flow whose hash lands on B is left alone.
    let p = (40000u16..).find(|&p| TABLE[slot_from_c(&TABLE, p)] == ID_B).unwrap();
    assert_eq!(where_to(&run(&mut bed, Prog::FromC, &syn_from_c(p)).out), BB);

    // C as the only backend: nothing else to hand the connection to.
    let mut bed = bed_with_table(SCHED_MAGLEV, &[ID_C]);
    run(&mut bed, Prog::FromC, &syn_from_c(40000)).expect_drop(DropReason::NoBackend, "only itself to call");
    assert!(bed.conntrack().is_empty(), "nothing tracked");
    // Anyone else still reaches C.
    assert_eq!(where_to(&run(&mut bed, Prog::FromA, &syn(40000)).out), BC);
}

// ---------------------------------------------------------------------------------------
// A client reusing a VIP flow's ports to reach the backend directly

#[test]
fn a_direct_connection_on_a_vip_flows_ports_is_not_reverse_natted() {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    let p = port_to(&TABLE, 6, TCP_PORT, ID_C);
    new_tcp_flow(&mut bed, p, BC);
    assert_eq!(bed.conntrack().len(), 2, "the VIP flow is tracked");
    // The same client port, now straight to C's own address (Linux reuses ephemeral ports
    // towards another destination at once).
    let direct = ip_frame(MAC_C, MAC_A, A, C, 6, &tcp(A, C, p, TCP_PORT, 5000, 0, TCP_SYN, &[]));
    let r = run(&mut bed, Prog::FromA, &direct);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::LocalDelivery], "direct SYN to C");
    assert_eq!(r.out, direct, "delivered unchanged");
    assert!(bed.conntrack().is_empty(), "the VIP flow's entries are gone");
    // C's answer goes to A from C's own address, not the VIP's.
    let reply = ip_frame(MAC_A, MAC_C, C, A, 6, &tcp(C, A, TCP_PORT, p, 9000, 5001, TCP_SYN | TCP_ACK, &[]));
    let r = run(&mut bed, Prog::FromC, &reply);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::LocalDelivery], "C's reply to the direct connection");
    assert_eq!(r.out, reply, "not reverse-NATed");
}

// ---------------------------------------------------------------------------------------
// Reads bounded by the IPv4 length, not the frame

/// `frame` with its IPv4 total length cut to `tot_len` (header checksum fixed): what follows
/// is trailer, whatever it looks like.
fn with_tot_len(mut frame: Vec<u8>, tot_len: u16) -> Vec<u8> {
    frame[16..18].copy_from_slice(&tot_len.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&frame[14..34]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    frame
}

#[test]
fn a_vip_packet_shorter_than_its_headers_is_dropped_as_bad_length() {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    // A SYN whose IPv4 length covers the IPv4 header only: the "TCP header" is trailer.
    run(&mut bed, Prog::FromA, &with_tot_len(syn(40000), 20)).expect_drop(DropReason::BadLength, "TCP in the trailer");
    run(&mut bed, Prog::FromA, &with_tot_len(syn(40000), 39)).expect_drop(DropReason::BadLength, "TCP cut short");
    let udp = client_udp(VIP, VIP_MAC, 40000, b"q", true);
    run(&mut bed, Prog::FromA, &with_tot_len(udp, 27)).expect_drop(DropReason::BadLength, "UDP cut short");
    // An IPv4 length past the frame's end.
    let syn = syn(40001);
    let claimed = (syn.len() - 14 + 10) as u16;
    run(&mut bed, Prog::FromA, &with_tot_len(syn, claimed)).expect_drop(DropReason::BadLength, "longer than the frame");
    assert!(bed.conntrack().is_empty(), "nothing tracked");
}

#[test]
fn a_reply_whose_ports_are_trailer_is_not_reverse_natted() {
    let mut bed = bed_with_service(SCHED_MAGLEV);
    let p = port_to(&TABLE, 6, TCP_PORT, ID_C);
    new_tcp_flow(&mut bed, p, BC);
    // From C to A, IPv4 length 20: the bytes that would be the tracked flow's ports are trailer.
    let reply = ip_frame(MAC_A, MAC_C, C, A, 6, &tcp(C, A, TCP_PORT, p, 7000, 1001, TCP_ACK, &[]));
    let cut = with_tot_len(reply, 20);
    let r = run(&mut bed, Prog::FromC, &cut);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::LocalDelivery], "cut reply from C");
    assert_eq!(r.out, cut, "delivered as it was, not reverse-NATed");
}

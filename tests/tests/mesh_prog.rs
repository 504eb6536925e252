//! BPF_PROG_TEST_RUN tests of the ingress routing mesh (mesh.rs and its callers in decap.rs,
//! container.rs and icmp.rs): packet in, expected verdict, expected bytes out (checksums
//! verified independently of the datapath's arithmetic), the counters that moved (exactly
//! those), and the conntrack entries, backend and published-port counters left.
//!
//! The bed (`bed_with_mesh`) is node 192.168.50.11 with the ingress network (VNI 4096, MTU 1450,
//! gateway 10.255.0.1), TCP 8080 -> 80 and UDP 5353 -> 53 published over a 7-slot table of L
//! (10.255.0.5, a task on this node) and R (10.255.0.4, on the peer node 192.168.50.12), and N
//! (10.255.0.6, on this node, backing nothing). The client 203.0.113.7 is outside the cluster,
//! its frames come from a router's MAC.
//!
//! The same bed plays each node of a flow: the entry node (the client's packets arrive on the
//! underlay), the backend's node (they arrive from another node's entry, in VXLAN), and the
//! entry node again when the backend's node returns the replies.

use overlay_common::{
    maps::*,
    stats::{DropReason, FwdCounter},
    vxlan::{default_mac, flow_hash, src_port},
};
use overlay_tests::{bed::*, packet::*};

// ---------------------------------------------------------------------------------------
// Running a program and checking what moved

#[derive(Clone, Copy, Debug, PartialEq)]
enum Prog {
    /// Underlay XDP, the frame received where a test run puts it by default (the namespace's
    /// loopback device): not the underlay interface.
    Xdp,
    /// Underlay XDP, the frame received on the underlay interface itself.
    XdpUl,
    /// Underlay TC.
    Tc,
    /// The container side, as L (the local backend) sends.
    FromL,
    /// The container side, as N (a local task that backs nothing) sends.
    FromN,
    /// The container side, as A (on the bed's other network) sends.
    FromA,
}

impl Prog {
    fn is_xdp(self) -> bool {
        matches!(self, Prog::Xdp | Prog::XdpUl)
    }

    fn drop_verdict(self) -> u32 {
        if self.is_xdp() {
            XDP_DROP
        } else {
            TC_ACT_SHOT
        }
    }

    fn pass_verdict(self) -> u32 {
        if self.is_xdp() {
            XDP_PASS
        } else {
            TC_ACT_OK
        }
    }

    fn redirect(self) -> u32 {
        if self.is_xdp() {
            XDP_REDIRECT
        } else {
            TC_ACT_REDIRECT
        }
    }
}

struct Run {
    prog: Prog,
    verdict: u32,
    out: Vec<u8>,
    /// Every counter that moved, by name (drops as "drop:<reason>"), with its increase.
    moved: Vec<(String, u64)>,
}

fn run(bed: &mut Bed, prog: Prog, frame: &[u8]) -> Run {
    run_gso(bed, prog, frame, 0)
}

/// `run`, the frame a GSO packet of `gso_size`-byte segments (TC programs only).
fn run_gso(bed: &mut Bed, prog: Prog, frame: &[u8], gso_size: u32) -> Run {
    assert!(gso_size == 0 || !prog.is_xdp(), "XDP has no GSO");
    let before = bed.counters();
    let ul = bed.underlay_ifindex;
    let (verdict, out) = match prog {
        Prog::Xdp => bed.xdp(frame),
        Prog::XdpUl => bed.xdp_on(frame, ul),
        Prog::Tc => bed.tc_gso(PROG_UNDERLAY_TC, frame, ul, gso_size),
        Prog::FromL => bed.tc(PROG_FROM_CONTAINER, frame, L_IFINDEX),
        Prog::FromN => bed.tc(PROG_FROM_CONTAINER, frame, N_IFINDEX),
        Prog::FromA => bed.tc(PROG_FROM_CONTAINER, frame, A_IFINDEX),
    };
    let after = bed.counters();
    Run { prog, verdict, out, moved: moved(&before, &after) }
}

impl Run {
    /// This verdict, and exactly these forward counters moved (once each), no drop.
    fn expect(&self, verdict: u32, fwd: &[FwdCounter], what: &str) -> &Self {
        let mut want: Vec<(String, u64)> = fwd.iter().map(|c| (c.name().to_string(), 1)).collect();
        want.sort();
        assert_eq!(self.moved, want, "{:?}: {what}: counters that moved", self.prog);
        assert_eq!(self.verdict, verdict, "{:?}: {what}: verdict", self.prog);
        self
    }

    /// Dropped, counted under `reason` and nothing else.
    fn expect_drop(&self, reason: DropReason, what: &str) -> &Self {
        let want = vec![(format!("drop:{}", reason.name()), 1)];
        assert_eq!(self.moved, want, "{:?}: {what}: counters that moved", self.prog);
        assert_eq!(self.verdict, self.prog.drop_verdict(), "{:?}: {what}: verdict", self.prog);
        self
    }

    /// Not ours: passed to the host as it came.
    fn expect_pass(&self, frame: &[u8], what: &str) {
        self.expect(self.prog.pass_verdict(), &[FwdCounter::PassHost], what);
        assert_eq!(self.out, frame, "{:?}: {what}: passed untouched", self.prog);
    }
}

// ---------------------------------------------------------------------------------------
// Backends, flows, frames

#[derive(Clone, Copy, Debug, PartialEq)]
struct Backend {
    id: u32,
    ip: [u8; 4],
    mac: [u8; 6],
    local: bool,
}

const BL: Backend = Backend { id: ID_L, ip: ING_L, mac: MAC_L, local: true };
const BR: Backend = Backend { id: ID_R, ip: ING_R, mac: MAC_R, local: false };

fn other(be: Backend) -> Backend {
    if be == BL {
        BR
    } else {
        BL
    }
}

/// The next hop the agent caches towards the peer: a MAC of its own, so that bytes tell the
/// cache from the FIB (whose neighbour entry says PEER_MAC).
const NH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

fn cache_peer(bed: &mut Bed) {
    let ifindex = bed.underlay_ifindex;
    bed.set_peer_nexthop(Some(NextHop { ifindex, dmac: NH_MAC, smac: NODE_MAC }));
}

/// A published port's (published, target, service id) by protocol.
fn port_of(proto: u8) -> (u16, u16, u32) {
    match proto {
        6 => (PUB_TCP, TARGET_TCP, MESH_TCP_ID),
        17 => (PUB_UDP, TARGET_UDP, MESH_UDP_ID),
        p => panic!("protocol {p}"),
    }
}

fn ports_word(sport: u16, dport: u16) -> u32 {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&sport.to_be_bytes());
    b[2..].copy_from_slice(&dport.to_be_bytes());
    u32::from_ne_bytes(b)
}

/// The slot Maglev gives a flow from the client to a published port: the node's address is
/// not hashed (0 in its place), so every node picks the same.
fn slot(table: &[u32], proto: u8, sport: u16) -> usize {
    let (published, _, _) = port_of(proto);
    (flow_hash(k(CLIENT), 0, proto, ports_word(sport, published)) % table.len() as u32) as usize
}

/// Client ports whose flow lands on a slot of `want`, from 40000 up.
fn ports_to(table: &[u32], proto: u8, want: u32) -> impl Iterator<Item = u16> + '_ {
    (40000u16..).filter(move |&p| table[slot(table, proto, p)] == want)
}

/// A client port whose flow lands on `be`, and would not were this node's address hashed: a
/// datapath that hashed it would send the flow elsewhere.
fn port_to(proto: u8, be: Backend) -> u16 {
    let (published, _, _) = port_of(proto);
    let hashed = |p: u16| MESH_TABLE[(flow_hash(k(CLIENT), k(NODE_IP), proto, ports_word(p, published)) % 7) as usize];
    ports_to(&MESH_TABLE, proto, be.id).find(|&p| hashed(p) != be.id).unwrap()
}

/// The client to this node's published TCP port, as the router delivers it.
fn client_tcp(sport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    ip_frame(NODE_MAC, ROUTER_MAC, CLIENT, NODE_IP, 6, &tcp(CLIENT, NODE_IP, sport, PUB_TCP, seq, ack, flags, payload))
}

fn client_udp(sport: u16, payload: &[u8], checksum: bool) -> Vec<u8> {
    ip_frame(NODE_MAC, ROUTER_MAC, CLIENT, NODE_IP, 17, &udp_dgram(CLIENT, NODE_IP, sport, PUB_UDP, payload, checksum))
}

fn syn(sport: u16) -> Vec<u8> {
    client_tcp(sport, 1000, 0, TCP_SYN, &[])
}

fn ack(sport: u16) -> Vec<u8> {
    client_tcp(sport, 1001, 7001, TCP_ACK | TCP_PSH, b"GET / HTTP/1.0\r\n")
}

/// What the backend gets: the client's packet to the backend's address and target port, from
/// the ingress gateway's MAC.
fn dnat_tcp(be: Backend, sport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    ip_frame(be.mac, GW_MAC, CLIENT, be.ip, 6, &tcp(CLIENT, be.ip, sport, TARGET_TCP, seq, ack, flags, payload))
}

fn dnat_udp(be: Backend, sport: u16, payload: &[u8], checksum: bool) -> Vec<u8> {
    ip_frame(be.mac, GW_MAC, CLIENT, be.ip, 17, &udp_dgram(CLIENT, be.ip, sport, TARGET_UDP, payload, checksum))
}

/// The backend's answer as it sends it: to the client, through the gateway.
fn answer_tcp(be: Backend, cport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    ip_frame(GW_MAC, be.mac, be.ip, CLIENT, 6, &tcp(be.ip, CLIENT, TARGET_TCP, cport, seq, ack, flags, payload))
}

fn answer_udp(be: Backend, cport: u16, payload: &[u8], checksum: bool) -> Vec<u8> {
    ip_frame(GW_MAC, be.mac, be.ip, CLIENT, 17, &udp_dgram(be.ip, CLIENT, TARGET_UDP, cport, payload, checksum))
}

/// What the client gets: from this node's address and the published port, the Ethernet header
/// the reverse of its first packet's.
fn reversed_tcp(cport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    ip_frame(ROUTER_MAC, NODE_MAC, NODE_IP, CLIENT, 6, &tcp(NODE_IP, CLIENT, PUB_TCP, cport, seq, ack, flags, payload))
}

fn reversed_udp(cport: u16, payload: &[u8], checksum: bool) -> Vec<u8> {
    ip_frame(ROUTER_MAC, NODE_MAC, NODE_IP, CLIENT, 17, &udp_dgram(NODE_IP, CLIENT, PUB_UDP, cport, payload, checksum))
}

/// `inner` in VXLAN on the ingress network from this node to the peer, as any VTEP of ours
/// sends it: DF, TTL 64, UDP checksum 0, source port from the inner flow's hash.
fn encap_to_peer(inner: &[u8], dmac: [u8; 6]) -> Vec<u8> {
    let ip = |at: usize| [inner[at], inner[at + 1], inner[at + 2], inner[at + 3]];
    let ports = u32::from_ne_bytes(ip(34));
    let sport = src_port(flow_hash(k(ip(26)), k(ip(30)), inner[23], ports));
    let mut e = eth(dmac, NODE_MAC, 0x0800);
    e.extend(ipv4(NODE_IP, PEER_IP, 17, 8 + 8 + inner.len(), 0x4000, 0));
    e.extend(udp(sport, 4789, 8 + inner.len()));
    e.extend(vxlan_hdr(ING_VNI, 0x08));
    e.extend_from_slice(inner);
    e
}

/// VXLAN to this node from `node` on `vni`.
fn vxlan_from(node: [u8; 4], vni: u32, inner: &[u8]) -> Vec<u8> {
    vxlan_frame(NODE_MAC, PEER_MAC, node, NODE_IP, 51000, 4789, vni, inner)
}

/// What the entry node sends for a packet DNATed to `be` (`inner`), with the verdict and the
/// counters of the way it went (besides mesh-new / mesh-forward). Expects the peer's next hop
/// cached (`cache_peer`).
fn sent(prog: Prog, be: Backend, inner: &[u8]) -> (u32, Vec<u8>, Vec<FwdCounter>) {
    if be.local {
        return (prog.redirect(), inner.to_vec(), vec![]);
    }
    let out = encap_to_peer(inner, NH_MAC);
    match prog {
        // XDP: back out of the interface it came in on, else redirected there.
        Prog::XdpUl => (XDP_TX, out, vec![FwdCounter::MeshEncap]),
        Prog::Xdp => (XDP_REDIRECT, out, vec![FwdCounter::MeshEncap]),
        // TC: the container side's encapsulation, with its own counter.
        Prog::Tc => (TC_ACT_REDIRECT, out, vec![FwdCounter::MeshEncap, FwdCounter::EncapCached]),
        p => panic!("{p:?} is no entry"),
    }
}

/// Which backend a DNATed frame went to (its inner frame when encapsulated).
fn where_to(out: &[u8]) -> Backend {
    let inner = if out.len() >= 84 && out[23] == 17 && out[36..38] == 4789u16.to_be_bytes() { &out[50..] } else { out };
    match [inner[30], inner[31], inner[32], inner[33]] {
        ip if ip == ING_L => BL,
        ip if ip == ING_R => BR,
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

/// `f` with the IPv4 flags/fragment offset field set to `frags`.
fn with_frags(f: &[u8], frags: u16) -> Vec<u8> {
    let mut f = f.to_vec();
    f[20..22].copy_from_slice(&frags.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// `f` with IHL 6: these four bytes of IPv4 options after the header.
fn with_ip_options(f: &[u8], options: [u8; 4]) -> Vec<u8> {
    let mut out = f[..14].to_vec();
    let mut ip = f[14..34].to_vec();
    ip[0] = 0x46;
    let tot = u16::from_be_bytes([ip[2], ip[3]]) + 4;
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    ip.extend(options);
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend(ip);
    out.extend_from_slice(&f[34..]);
    out
}

/// `frame` with its IPv4 total length set to `tot_len` (header checksum fixed).
fn with_tot_len(mut frame: Vec<u8>, tot_len: u16) -> Vec<u8> {
    frame[16..18].copy_from_slice(&tot_len.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&frame[14..34]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    frame
}

// ---------------------------------------------------------------------------------------
// Conntrack and counters

fn macs(dst: [u8; 6], src: [u8; 6]) -> [u8; 12] {
    let mut m = [0u8; 12];
    m[..6].copy_from_slice(&dst);
    m[6..].copy_from_slice(&src);
    m
}

/// A mesh flow's keys: forward (client -> this node, published port) and reply (backend ->
/// client, from the target port).
fn mesh_keys(proto: u8, cport: u16, be: Backend) -> (CtKey, CtKey) {
    let (published, target, _) = port_of(proto);
    let fwd =
        CtKey { src: k(CLIENT), dst: k(NODE_IP), sport: cport.to_be(), dport: published.to_be(), proto, _pad: [0; 3] };
    let rev = CtKey { src: k(be.ip), dst: k(CLIENT), sport: target.to_be(), dport: cport.to_be(), proto, _pad: [0; 3] };
    (fwd, rev)
}

/// Conntrack holds exactly the two entries the entry node writes for this flow.
fn assert_entry_tracked(bed: &mut Bed, proto: u8, cport: u16, be: Backend) {
    let (published, target, id) = port_of(proto);
    let (fk, rk) = mesh_keys(proto, cport, be);
    let ct = bed.conntrack();
    assert_eq!(ct.len(), 2, "two conntrack entries: {ct:?}");
    let fwd = ct.iter().find(|(k, _)| *k == fk).unwrap_or_else(|| panic!("no forward entry {fk:?} in {ct:?}")).1;
    let rev = ct.iter().find(|(k, _)| *k == rk).unwrap_or_else(|| panic!("no reply entry {rk:?} in {ct:?}")).1;
    assert_ne!(fwd.last_seen, 0, "forward entry: last_seen set");
    assert_ne!(rev.last_seen, 0, "reply entry: last_seen set");
    let want_fwd = CtEntry {
        nat_ip: k(be.ip),
        backend: be.id,
        flags: CT_MESH,
        nat_port: target.to_be(),
        service: id as u16,
        last_seen: fwd.last_seen,
        peer: 0,
        macs: [0; 12],
    };
    assert_eq!(fwd, want_fwd, "forward entry: to the backend's address and target port");
    let want_rev = CtEntry {
        nat_ip: k(NODE_IP),
        backend: be.id,
        flags: CT_MESH | CT_REPLY,
        nat_port: published.to_be(),
        service: id as u16,
        last_seen: rev.last_seen,
        peer: k(NODE_IP),
        macs: macs(ROUTER_MAC, NODE_MAC),
    };
    assert_eq!(rev, want_rev, "reply entry: from this node's address and published port, towards the router");
}

/// The only conntrack entry is the reply entry a backend's node keeps for a flow that entered
/// at `peer`.
fn assert_in_tracked(bed: &mut Bed, proto: u8, cport: u16, peer: [u8; 4]) {
    let (_, rk) = mesh_keys(proto, cport, BL);
    let ct = bed.conntrack();
    assert_eq!(ct.len(), 1, "one conntrack entry: {ct:?}");
    let (key, e) = ct[0];
    assert_eq!(key, rk, "the reply direction's key");
    assert_ne!(e.last_seen, 0, "last_seen set");
    let want = CtEntry { flags: CT_MESH | CT_REPLY, peer: k(peer), last_seen: e.last_seen, ..CtEntry::default() };
    assert_eq!(e, want, "replies go back to the entry node");
}

fn lb(bed: &mut Bed, be: Backend) -> LbStats {
    bed.dp.lb_stats(&[be.id]).unwrap()[&be.id]
}

fn port(bed: &mut Bed, proto: u8) -> PortStats {
    let (_, _, id) = port_of(proto);
    bed.port_stats(id).unwrap_or_else(|| panic!("no OV_PORT_STATS entry for port {id}"))
}

/// The published port's drops: exactly these reasons, with these counts.
fn assert_port_drops(bed: &mut Bed, proto: u8, want: &[(DropReason, u64)]) {
    let s = port(bed, proto);
    let got: Vec<(&str, u64)> = DropReason::ALL
        .iter()
        .filter(|r| s.drops[**r as usize] != 0)
        .map(|r| (r.name(), s.drops[*r as usize]))
        .collect();
    let want: Vec<(&str, u64)> = want.iter().map(|(r, n)| (r.name(), *n)).collect();
    assert_eq!(got, want, "drops counted on the published port ({proto})");
}

// ---------------------------------------------------------------------------------------
// The entry: a new flow is DNATed, delivered or encapsulated, and tracked

fn new_tcp_flow(prog: Prog, be: Backend) {
    let mut bed = bed_with_mesh();
    cache_peer(&mut bed);
    let p = port_to(6, be);
    let f = syn(p);
    let r = run(&mut bed, prog, &f);
    let inner = dnat_tcp(be, p, 1000, 0, TCP_SYN, &[]);
    let (verdict, want, via) = sent(prog, be, &inner);
    r.expect(verdict, &[&[FwdCounter::MeshNew][..], &via].concat(), "SYN to the published port");
    assert_eq!(where_to(&r.out), be, "{prog:?}: the backend of slot {}", slot(&MESH_TABLE, 6, p));
    // The fields, one by one (the golden comparison below covers the rest).
    let got = if be.local { &r.out[..] } else { &r.out[50..] };
    assert_eq!(got[0..6], be.mac, "{prog:?}: Ethernet destination: the backend");
    assert_eq!(got[6..12], GW_MAC, "{prog:?}: Ethernet source: the ingress gateway");
    assert_eq!(got[26..30], CLIENT, "{prog:?}: source address: the client's, kept");
    assert_eq!(got[30..34], be.ip, "{prog:?}: destination address: the backend's");
    assert_eq!(got[34..36], p.to_be_bytes(), "{prog:?}: source port kept");
    assert_eq!(got[36..38], TARGET_TCP.to_be_bytes(), "{prog:?}: destination port: the target");
    assert_checksums(got, &format!("{prog:?}: DNATed SYN"));
    if !be.local {
        let o = &r.out;
        assert_eq!((o[0..6].to_vec(), o[6..12].to_vec()), (NH_MAC.to_vec(), NODE_MAC.to_vec()), "outer MACs: cached");
        assert_eq!(o[20..22], [0x40, 0], "{prog:?}: outer DF");
        assert_eq!(o[23], 17, "{prog:?}: outer UDP");
        assert_eq!(o[26..34], [NODE_IP, PEER_IP].concat(), "{prog:?}: outer addresses: this node to R's");
        let sport = u16::from_be_bytes([o[34], o[35]]);
        assert!(sport >= 49152, "{prog:?}: outer source port {sport} in the dynamic range");
        assert_eq!(o[36..38], 4789u16.to_be_bytes(), "{prog:?}: VXLAN port");
        assert_eq!(o[42..50], vxlan_hdr(ING_VNI, 0x08)[..], "{prog:?}: the ingress VNI");
        assert_eq!(csum(&o[14..34]), 0, "{prog:?}: outer IPv4 checksum");
    }
    assert_eq!(r.out, want, "{prog:?}: bytes");
    assert_entry_tracked(&mut bed, 6, p, be);
    let s = lb(&mut bed, be);
    assert_eq!((s.conns, s.in_pkts, s.out_pkts), (1, 1, 0), "{prog:?}: LbStats of the backend");
    let o = lb(&mut bed, other(be));
    assert_eq!((o.conns, o.in_pkts), (0, 0), "{prog:?}: LbStats of the other backend");
    let ps = port(&mut bed, 6);
    assert_eq!((ps.traffic.conns, ps.traffic.in_pkts, ps.traffic.out_pkts), (1, 1, 0), "{prog:?}: PortStats");
    assert_port_drops(&mut bed, 6, &[]);
    assert_eq!(port(&mut bed, 17).traffic, LbStats::default(), "{prog:?}: the UDP port saw nothing");
}

#[test]
fn syn_to_a_published_port_goes_to_the_local_backend_xdp() {
    new_tcp_flow(Prog::Xdp, BL);
}

#[test]
fn syn_to_a_published_port_goes_to_the_local_backend_xdp_on_the_underlay() {
    new_tcp_flow(Prog::XdpUl, BL);
}

#[test]
fn syn_to_a_published_port_goes_to_the_local_backend_tc() {
    new_tcp_flow(Prog::Tc, BL);
}

#[test]
fn syn_to_a_published_port_is_encapsulated_to_the_remote_backend_xdp_redirect() {
    new_tcp_flow(Prog::Xdp, BR);
}

#[test]
fn syn_to_a_published_port_is_encapsulated_to_the_remote_backend_xdp_tx() {
    new_tcp_flow(Prog::XdpUl, BR);
}

#[test]
fn syn_to_a_published_port_is_encapsulated_to_the_remote_backend_tc() {
    new_tcp_flow(Prog::Tc, BR);
}

#[test]
fn tc_encapsulation_without_a_cached_next_hop_asks_the_fib() {
    let mut bed = bed_with_mesh();
    let p = port_to(6, BR);
    let r = run(&mut bed, Prog::Tc, &syn(p));
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::MeshNew, FwdCounter::MeshEncap, FwdCounter::Encap], "SYN");
    // The bed's permanent neighbour entry: the peer's own MAC.
    assert_eq!(r.out, encap_to_peer(&dnat_tcp(BR, p, 1000, 0, TCP_SYN, &[]), PEER_MAC), "bytes");
    assert_entry_tracked(&mut bed, 6, p, BR);
}

#[test]
fn xdp_without_a_usable_next_hop_drops_as_no_next_hop() {
    let mut bed = bed_with_mesh();
    let p = port_to(6, BR);
    // Nothing cached: XDP cannot resolve neighbours itself.
    let r = run(&mut bed, Prog::XdpUl, &syn(p));
    assert_eq!(r.moved, vec![("drop:no-next-hop".into(), 1), ("mesh-new".into(), 1)], "no next hop: counters");
    assert_eq!(r.verdict, XDP_DROP, "no next hop: verdict");
    // Cached for another interface than today's underlay: stale.
    bed.set_peer_nexthop(Some(NextHop { ifindex: A_IFINDEX, dmac: NH_MAC, smac: NODE_MAC }));
    let r = run(&mut bed, Prog::XdpUl, &syn(p));
    assert_eq!(r.moved, vec![("drop:no-next-hop".into(), 1), ("mesh-forward".into(), 1)], "stale: counters");
    assert_eq!(r.verdict, XDP_DROP, "stale next hop: verdict");
    assert_port_drops(&mut bed, 6, &[(DropReason::NoNextHop, 2)]);
    // A local backend needs none.
    let q = port_to(6, BL);
    run(&mut bed, Prog::XdpUl, &syn(q)).expect(XDP_REDIRECT, &[FwdCounter::MeshNew], "to L");
    // Once cached, the retransmitted SYN goes out.
    cache_peer(&mut bed);
    let r = run(&mut bed, Prog::XdpUl, &syn(p));
    r.expect(XDP_TX, &[FwdCounter::MeshForward, FwdCounter::MeshEncap], "SYN again");
    assert_eq!(r.out, encap_to_peer(&dnat_tcp(BR, p, 1000, 0, TCP_SYN, &[]), NH_MAC));
}

// ---------------------------------------------------------------------------------------
// The next packets follow conntrack

fn next_packet_follows_conntrack(prog: Prog, be: Backend) {
    let mut bed = bed_with_mesh();
    cache_peer(&mut bed);
    let p = port_to(6, be);
    let first = run(&mut bed, prog, &syn(p));
    assert_eq!(where_to(&first.out), be, "{prog:?}: the SYN's backend");
    // The table now sends every new flow to the other backend: only conntrack still says `be`.
    let mut c = bed.contents.clone();
    set_published_table(&mut c, MESH_TCP_ID, MESH_TCP_OFFSET + 8, &[other(be).id; 7]);
    bed.apply(c);
    let a = ack(p);
    let r = run(&mut bed, prog, &a);
    let inner = dnat_tcp(be, p, 1001, 7001, TCP_ACK | TCP_PSH, b"GET / HTTP/1.0\r\n");
    let (verdict, want, via) = sent(prog, be, &inner);
    r.expect(verdict, &[&[FwdCounter::MeshForward][..], &via].concat(), "ACK of a tracked flow");
    assert_eq!(r.out, want, "{prog:?}: DNATed ACK bytes");
    assert_checksums(if be.local { &r.out } else { &r.out[50..] }, &format!("{prog:?}: DNATed ACK"));
    assert_entry_tracked(&mut bed, 6, p, be);
    let s = lb(&mut bed, be);
    assert_eq!((s.conns, s.in_pkts), (1, 2), "{prog:?}: LbStats: one connection, two packets");
    let ps = port(&mut bed, 6);
    assert_eq!((ps.traffic.conns, ps.traffic.in_pkts), (1, 2), "{prog:?}: PortStats");
    // A new flow follows the new table.
    let q = p + 1;
    let r = run(&mut bed, prog, &syn(q));
    assert_eq!(where_to(&r.out), other(be), "{prog:?}: a new flow after the table changed");
}

#[test]
fn second_packet_follows_conntrack_local_xdp() {
    next_packet_follows_conntrack(Prog::Xdp, BL);
}

#[test]
fn second_packet_follows_conntrack_remote_xdp() {
    next_packet_follows_conntrack(Prog::XdpUl, BR);
}

#[test]
fn second_packet_follows_conntrack_local_tc() {
    next_packet_follows_conntrack(Prog::Tc, BL);
}

#[test]
fn second_packet_follows_conntrack_remote_tc() {
    next_packet_follows_conntrack(Prog::Tc, BR);
}

#[test]
fn fin_marks_the_flow_closing_and_a_new_syn_reopens_it() {
    let mut bed = bed_with_mesh();
    let p = port_to(6, BL);
    let (fk, rk) = mesh_keys(6, p, BL);
    let flags = |bed: &mut Bed, key: CtKey| bed.conntrack().into_iter().find(|(k, _)| *k == key).unwrap().1.flags;
    run(&mut bed, Prog::XdpUl, &syn(p)).expect(XDP_REDIRECT, &[FwdCounter::MeshNew], "SYN");
    let fin = client_tcp(p, 1001, 7001, TCP_FIN | TCP_ACK, &[]);
    run(&mut bed, Prog::XdpUl, &fin).expect(XDP_REDIRECT, &[FwdCounter::MeshForward], "the client's FIN");
    assert_eq!(flags(&mut bed, fk), CT_MESH | CT_CLOSING, "forward entry after the client's FIN");
    assert_eq!(flags(&mut bed, rk), CT_MESH | CT_REPLY, "reply entry");
    let fin = answer_tcp(BL, p, 7001, 1002, TCP_FIN | TCP_ACK, &[]);
    run(&mut bed, Prog::FromL, &fin).expect(TC_ACT_REDIRECT, &[FwdCounter::MeshReverse], "L's FIN");
    assert_eq!(flags(&mut bed, rk), CT_MESH | CT_REPLY | CT_CLOSING, "reply entry after L's FIN");
    // The same ports opened again.
    run(&mut bed, Prog::Tc, &syn(p)).expect(TC_ACT_REDIRECT, &[FwdCounter::MeshForward], "SYN again");
    assert_eq!(flags(&mut bed, fk), CT_MESH, "forward entry after a new SYN");
    // A first packet with RST: tracked closing from the start.
    let q = ports_to(&MESH_TABLE, 6, ID_L).nth(3).unwrap();
    let rst = client_tcp(q, 1, 0, TCP_RST, &[]);
    run(&mut bed, Prog::Tc, &rst).expect(TC_ACT_REDIRECT, &[FwdCounter::LbRepick], "RST without an entry");
    let (fk, rk) = mesh_keys(6, q, BL);
    assert_eq!(flags(&mut bed, fk), CT_MESH | CT_CLOSING, "forward entry of a RST");
    assert_eq!(flags(&mut bed, rk), CT_MESH | CT_REPLY | CT_CLOSING, "reply entry of a RST");
}

/// The LRU may evict a flow's reply entry alone: the forward direction writes it again (checked
/// at most once a second, when it refreshes `last_seen`), so the backend's replies go on.
fn reply_entry_evicted_alone(prog: Prog) {
    let mut bed = bed_with_mesh();
    let p = port_to(6, BL);
    run(&mut bed, prog, &syn(p)).expect(prog.redirect(), &[FwdCounter::MeshNew], "SYN");
    let (fk, rk) = mesh_keys(6, p, BL);
    let entry = |bed: &mut Bed, key: CtKey| bed.conntrack().into_iter().find(|(k, _)| *k == key).map(|(_, e)| e);
    let reply = entry(&mut bed, rk).unwrap();
    bed.remove_conntrack(&rk);
    let ans = answer_tcp(BL, p, 7000, 1001, TCP_SYN | TCP_ACK, &[]);
    run(&mut bed, Prog::FromL, &ans).expect_drop(DropReason::MeshNoFlow, "L's reply without its entry");
    // Within the second: not looked for.
    run(&mut bed, prog, &ack(p)).expect(prog.redirect(), &[FwdCounter::MeshForward], "ACK");
    assert_eq!(entry(&mut bed, rk), None, "{prog:?}: not checked within a second");
    // The forward entry last refreshed two seconds ago: the next packet writes the reply again.
    let mut fwd = entry(&mut bed, fk).unwrap();
    fwd.last_seen -= 2_000_000_000;
    bed.put_conntrack(fk, fwd);
    run(&mut bed, prog, &ack(p)).expect(prog.redirect(), &[FwdCounter::MeshForward], "ACK, a second later");
    let aged = fwd.last_seen;
    assert!(entry(&mut bed, fk).unwrap().last_seen > aged, "{prog:?}: forward entry refreshed");
    let back = entry(&mut bed, rk).unwrap_or_else(|| panic!("{prog:?}: the reply entry is back"));
    assert_eq!(back, CtEntry { last_seen: back.last_seen, ..reply }, "{prog:?}: the reply entry as it was written");
    let r = run(&mut bed, Prog::FromL, &ans);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::MeshReverse], "L's reply");
    assert_eq!(r.out, reversed_tcp(p, 7000, 1001, TCP_SYN | TCP_ACK, &[]), "{prog:?}: reverse-NATed");
}

#[test]
fn a_reply_entry_evicted_alone_is_written_again_xdp() {
    reply_entry_evicted_alone(Prog::XdpUl);
}

#[test]
fn a_reply_entry_evicted_alone_is_written_again_tc() {
    reply_entry_evicted_alone(Prog::Tc);
}

fn mid_flow_miss(prog: Prog) {
    let mut bed = bed_with_mesh();
    cache_peer(&mut bed);
    for be in [BL, BR] {
        let p = port_to(6, be);
        run(&mut bed, prog, &syn(p));
        let tracked = run(&mut bed, prog, &ack(p));
        assert_eq!(where_to(&tracked.out), be);
        assert_eq!(bed.dp.flush_conntrack().unwrap(), 2, "{prog:?}: the flow's two entries flushed");
        let r = run(&mut bed, prog, &ack(p));
        let inner = dnat_tcp(be, p, 1001, 7001, TCP_ACK | TCP_PSH, b"GET / HTTP/1.0\r\n");
        let (verdict, want, via) = sent(prog, be, &inner);
        r.expect(verdict, &[&[FwdCounter::LbRepick][..], &via].concat(), "mid-flow packet without an entry");
        assert_eq!(r.out, tracked.out, "{prog:?}: same bytes as while tracked");
        assert_eq!(r.out, want, "{prog:?}: bytes");
        assert_entry_tracked(&mut bed, 6, p, be);
        let s = lb(&mut bed, be);
        assert_eq!((s.conns, s.in_pkts), (1, 3), "{prog:?}: a re-pick is no new connection");
        assert_eq!(bed.dp.flush_conntrack().unwrap(), 2);
    }
    let ps = port(&mut bed, 6);
    assert_eq!((ps.traffic.conns, ps.traffic.in_pkts), (2, 6), "{prog:?}: PortStats");
}

#[test]
fn a_mid_flow_packet_without_an_entry_keeps_its_backend_xdp() {
    mid_flow_miss(Prog::XdpUl);
}

#[test]
fn a_mid_flow_packet_without_an_entry_keeps_its_backend_tc() {
    mid_flow_miss(Prog::Tc);
}

// ---------------------------------------------------------------------------------------
// Every node picks the same backend for a flow: the node's address is not hashed

#[test]
fn every_node_picks_the_same_backend_for_a_flow() {
    let mut bed = bed_with_mesh();
    cache_peer(&mut bed);
    let nodes = [NODE_IP, [192, 168, 50, 21], [10, 1, 2, 3]];
    let tcp_ports: Vec<u16> = (41000..41032).collect();
    let udp_ports: Vec<u16> = (42000..42016).collect();
    let want = |proto: u8, ports: &[u16]| -> Vec<u32> {
        ports.iter().map(|&p| MESH_TABLE[slot(&MESH_TABLE, proto, p)]).collect()
    };
    let (want_tcp, want_udp) = (want(6, &tcp_ports), want(17, &udp_ports));
    assert!(want_tcp.contains(&ID_L) && want_tcp.contains(&ID_R), "both backends among the flows");
    for node in nodes {
        // Were the node's address hashed, some of these flows would land elsewhere.
        let hashed: Vec<u32> = tcp_ports
            .iter()
            .map(|&p| MESH_TABLE[(flow_hash(k(CLIENT), k(node), 6, ports_word(p, PUB_TCP)) % 7) as usize])
            .collect();
        assert_ne!(hashed, want_tcp, "the flows tell a hash of {node:?} from one without it");
    }
    for node in nodes {
        let mut c = bed.contents.clone();
        c.config.node_ip = k(node);
        bed.apply(c);
        bed.dp.flush_conntrack().unwrap();
        for prog in [Prog::XdpUl, Prog::Tc] {
            for (proto, ports, want) in [(6, &tcp_ports, &want_tcp), (17, &udp_ports, &want_udp)] {
                let got: Vec<u32> = ports
                    .iter()
                    .map(|&p| {
                        let f = to_address(if proto == 6 { syn(p) } else { client_udp(p, b"q", true) }, node);
                        let r = run(&mut bed, prog, &f);
                        let ok = r.verdict != prog.drop_verdict() && r.verdict != prog.pass_verdict();
                        assert!(ok, "node {node:?}, {prog:?}, port {p}: {:?}", r.moved);
                        where_to(&r.out).id
                    })
                    .collect();
                assert_eq!(&got, want, "node {node:?}, {prog:?}, protocol {proto}: the backends picked");
            }
            bed.dp.flush_conntrack().unwrap();
        }
    }
}

/// `f` (Ethernet + IPv4 + TCP/UDP with a checksum) sent to `dst`, checksums recomputed.
fn to_address(mut f: Vec<u8>, dst: [u8; 4]) -> Vec<u8> {
    f[30..34].copy_from_slice(&dst);
    let tot_len = u16::from_be_bytes([f[16], f[17]]);
    let mut f = with_tot_len(f, tot_len);
    let at = if f[23] == 6 { 34 + 16 } else { 34 + 6 };
    f[at..at + 2].copy_from_slice(&[0, 0]);
    let (src, dst) = ([f[26], f[27], f[28], f[29]], [f[30], f[31], f[32], f[33]]);
    let c = l4_csum(src, dst, f[23], &f[34..]);
    let c = if f[23] == 17 && c == 0 { 0xffff } else { c };
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
    f
}

// ---------------------------------------------------------------------------------------
// UDP: DNAT keeps checksums valid, and no checksum none

fn udp_dnat(prog: Prog) {
    let mut bed = bed_with_mesh();
    cache_peer(&mut bed);
    for be in [BL, BR] {
        for (i, checksum) in [(0, false), (1, true)] {
            let p = ports_to(&MESH_TABLE, 17, be.id).nth(i).unwrap();
            let f = client_udp(p, b"dns query", checksum);
            assert_eq!(f[40..42] == [0, 0], !checksum);
            let r = run(&mut bed, prog, &f);
            let inner = dnat_udp(be, p, b"dns query", checksum);
            let (verdict, want, via) = sent(prog, be, &inner);
            r.expect(verdict, &[&[FwdCounter::MeshNew][..], &via].concat(), "UDP to the published port");
            let got = if be.local { &r.out[..] } else { &r.out[50..] };
            if checksum {
                assert_checksums(got, &format!("{prog:?}: DNATed UDP"));
            } else {
                assert_eq!(got[40..42], [0, 0], "{prog:?}: no checksum stays no checksum");
                assert_eq!(csum(&got[14..34]), 0, "{prog:?}: IPv4 checksum");
            }
            assert_eq!(got[36..38], TARGET_UDP.to_be_bytes(), "{prog:?}: to the target port");
            assert_eq!(r.out, want, "{prog:?}: DNATed UDP bytes to {be:?} (checksum {checksum})");
        }
    }
    let (fk, _) = mesh_keys(17, port_to(17, BR), BR);
    let ct = bed.conntrack();
    let e = ct.iter().find(|(k, _)| *k == fk).expect("UDP flow tracked").1;
    assert_eq!((e.nat_port, e.service), (TARGET_UDP.to_be(), MESH_UDP_ID as u16), "UDP forward entry");
    let ps = port(&mut bed, 17);
    assert_eq!((ps.traffic.conns, ps.traffic.in_pkts), (4, 4), "{prog:?}: PortStats of the UDP port");
    assert_eq!(port(&mut bed, 6).traffic, LbStats::default(), "{prog:?}: the TCP port saw nothing");

    // A payload whose checksum to L computes to 0: UDP sends 0xffff (0 would mean none).
    let p = ports_to(&MESH_TABLE, 17, ID_L).nth(2).unwrap();
    let mut payload = [0u8, 0, 1, 2, 3, 4];
    let probe = udp_dgram(CLIENT, ING_L, p, TARGET_UDP, &payload, false);
    let fill = !l4_csum(CLIENT, ING_L, 17, &probe);
    payload[..2].copy_from_slice(&(!fill).to_be_bytes());
    assert_eq!(l4_csum(CLIENT, ING_L, 17, &udp_dgram(CLIENT, ING_L, p, TARGET_UDP, &payload, false)), 0);
    let f = client_udp(p, &payload, true);
    assert_ne!(f[40..42], [0xff, 0xff], "to this node the checksum is something else");
    let r = run(&mut bed, prog, &f);
    r.expect(prog.redirect(), &[FwdCounter::MeshNew], "UDP whose checksum comes out 0");
    assert_eq!(r.out[40..42], [0xff, 0xff], "{prog:?}: a computed 0 is sent as 0xffff");
    assert_checksums(&r.out, &format!("{prog:?}: DNATed UDP"));
}

#[test]
fn udp_dnat_checksums_xdp() {
    udp_dnat(Prog::XdpUl);
}

#[test]
fn udp_dnat_checksums_tc() {
    udp_dnat(Prog::Tc);
}

// ---------------------------------------------------------------------------------------
// Too big for the ingress network: fragmentation needed, from this node's address

fn too_big(prog: Prog) {
    let mut bed = bed_with_mesh();
    cache_peer(&mut bed);
    let p = port_to(6, BL);
    // 1451 bytes of IPv4: one more than the ingress network carries.
    let f = client_tcp(p, 1, 1, TCP_ACK, &[7; 1451 - 40]);
    let r = run(&mut bed, prog, &f);
    assert_eq!(r.moved, vec![("drop:too-big".into(), 1), ("icmp-frag-needed".into(), 1)], "{prog:?}: counters");
    // XDP sends it back where it came from; TC redirects it to the underlay.
    assert_eq!(r.verdict, if prog.is_xdp() { XDP_TX } else { TC_ACT_REDIRECT }, "{prog:?}: verdict");
    let msg = icmp(3, 4, [0, 0, 0x05, 0xaa], &f[14..54]); // TCP: its IPv4 and TCP headers quoted
    let mut want = eth(ROUTER_MAC, NODE_MAC, 0x0800);
    want.extend(ipv4(NODE_IP, CLIENT, 1, msg.len(), 0, 0xc0));
    want.extend(msg);
    assert_checksums(&r.out, &format!("{prog:?}: fragmentation needed"));
    assert_eq!(r.out, want, "{prog:?}: fragmentation needed (MTU 1450) from this node to the client");
    assert!(bed.conntrack().is_empty(), "{prog:?}: no backend picked");
    // Without DF: dropped, nothing sent.
    run(&mut bed, prog, &with_frags(&f, 0)).expect_drop(DropReason::TooBig, "too big without DF");
    assert_port_drops(&mut bed, 6, &[(DropReason::TooBig, 2)]);
    assert_eq!(port(&mut bed, 6).traffic, LbStats::default(), "{prog:?}: no traffic counted");
    // Exactly the MTU: forwarded.
    let fits = client_tcp(p, 1, 0, TCP_SYN, &[7; 1450 - 40]);
    let r = run(&mut bed, prog, &fits);
    r.expect(prog.redirect(), &[FwdCounter::MeshNew], "1450 bytes");
    assert_eq!(r.out, dnat_tcp(BL, p, 1, 0, TCP_SYN, &[7; 1450 - 40]), "{prog:?}: 1450 bytes DNATed");
}

#[test]
fn too_big_for_the_ingress_network_gets_fragmentation_needed_xdp() {
    too_big(Prog::XdpUl);
}

#[test]
fn too_big_for_the_ingress_network_gets_fragmentation_needed_tc() {
    too_big(Prog::Tc);
}

/// An ingress network configured with a larger MTU than the underlay carries once
/// encapsulated (the README: such a network "degrades to path-MTU discovery instead of
/// stalling"): a packet for a remote backend that fits the network but not the underlay must
/// get "fragmentation needed" from this node's address, with the MTU that fits, before DNAT.
fn ingress_mtu_above_the_underlays(prog: Prog) {
    let mut bed = bed_with_mesh();
    cache_peer(&mut bed);
    let mut c = bed.contents.clone();
    c.networks.get_mut(&ING_VNI).unwrap().mtu = 1500;
    bed.apply(c);
    let p = port_to(6, BR);
    let f = client_tcp(p, 1, 0, TCP_SYN, &[7; 1451 - 40]);
    let r = run(&mut bed, prog, &f);
    let msg = icmp(3, 4, [0, 0, 0x05, 0xaa], &f[14..54]); // TCP: its IPv4 and TCP headers quoted
    let mut want = eth(ROUTER_MAC, NODE_MAC, 0x0800);
    want.extend(ipv4(NODE_IP, CLIENT, 1, msg.len(), 0, 0xc0));
    want.extend(msg);
    let what = format!("verdict {}, counters {:?}", r.verdict, r.moved);
    assert!(r.out.len() <= 1514, "{prog:?}: a {}-byte frame cannot leave a 1500-byte underlay ({what})", r.out.len());
    assert_eq!(r.out, want, "{prog:?}: fragmentation needed (MTU 1450) from this node to the client ({what})");
    assert_eq!(r.moved, vec![("drop:too-big".into(), 1), ("icmp-frag-needed".into(), 1)], "{prog:?}: counters");
    assert!(bed.conntrack().is_empty(), "{prog:?}: no backend picked");
}

#[test]
fn ingress_mtu_above_the_underlays_gets_fragmentation_needed_xdp() {
    ingress_mtu_above_the_underlays(Prog::XdpUl);
}

#[test]
fn ingress_mtu_above_the_underlays_gets_fragmentation_needed_tc() {
    ingress_mtu_above_the_underlays(Prog::Tc);
}

#[test]
fn tc_gso_packets_are_measured_by_their_segments() {
    let mut bed = bed_with_mesh();
    let p = port_to(6, BL);
    // 2,800 bytes of payload merged by GRO: each segment must fit, not the sum.
    let f = client_tcp(p, 1, 0, TCP_SYN, &[9; 2800]);
    let r = run_gso(&mut bed, Prog::Tc, &f, 1410);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::MeshNew], "segments of 1450 bytes");
    assert_eq!(r.out, dnat_tcp(BL, p, 1, 0, TCP_SYN, &[9; 2800]), "DNATed");
    bed.dp.flush_conntrack().unwrap();
    let r = run_gso(&mut bed, Prog::Tc, &f, 1411);
    assert_eq!(r.moved, vec![("drop:too-big".into(), 1), ("icmp-frag-needed".into(), 1)], "segments of 1451 bytes");
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let msg = icmp(3, 4, [0, 0, 0x05, 0xaa], &f[14..54]); // TCP: its IPv4 and TCP headers quoted
    let mut want = eth(ROUTER_MAC, NODE_MAC, 0x0800);
    want.extend(ipv4(NODE_IP, CLIENT, 1, msg.len(), 0, 0xc0));
    want.extend(msg);
    assert_eq!(r.out, want, "fragmentation needed");
    assert!(bed.conntrack().is_empty(), "no backend picked");
}

// ---------------------------------------------------------------------------------------
// Not ours: the host's own traffic passes untouched

fn not_ours(prog: Prog) {
    let mut bed = bed_with_mesh();
    cache_peer(&mut bed);
    let p = port_to(6, BR);
    let to = |dst: [u8; 4], proto: u8, dport: u16| {
        let l4 = match proto {
            6 => tcp(CLIENT, dst, p, dport, 1, 0, TCP_SYN, &[]),
            _ => udp_dgram(CLIENT, dst, p, dport, b"q", true),
        };
        ip_frame(NODE_MAC, ROUTER_MAC, CLIENT, dst, proto, &l4)
    };
    let cases = [
        ("another TCP port", to(NODE_IP, 6, 22)),
        ("the published TCP port over UDP", to(NODE_IP, 17, PUB_TCP)),
        ("the published UDP port over TCP", to(NODE_IP, 6, PUB_UDP)),
        ("the target port", to(NODE_IP, 6, TARGET_TCP)),
        ("another address", to([192, 168, 50, 99], 6, PUB_TCP)),
        ("a backend's address", to(ING_L, 6, PUB_TCP)),
        ("IP options", with_ip_options(&syn(p), [1, 1, 1, 1])),
        // Router alert, its value where the destination port is without options: the ports
        // must not be read at a fixed offset.
        ("IP options like a port", with_ip_options(&syn(p), [0x94, 4, (PUB_TCP >> 8) as u8, PUB_TCP as u8])),
        ("non-first fragment", with_frags(&syn(p), 0x2003)),
        ("last fragment", with_frags(&syn(p), 0x0010)),
        ("ping", ip_frame(NODE_MAC, ROUTER_MAC, CLIENT, NODE_IP, 1, &icmp(8, 0, [0, 1, 0, 1], &[0; 8]))),
        ("ARP", arp_request(ROUTER_MAC, CLIENT, NODE_IP)),
    ];
    for (what, f) in cases {
        run(&mut bed, prog, &f).expect_pass(&f, what);
    }
    // Without an ingress network, a published port is nobody's on the underlay.
    let mut c = bed.contents.clone();
    c.config.ingress_vni = 0;
    bed.apply(c);
    let f = syn(p);
    run(&mut bed, prog, &f).expect_pass(&f, "no ingress network");
    assert!(bed.conntrack().is_empty(), "{prog:?}: nothing tracked");
    for proto in [6, 17] {
        assert_eq!(port(&mut bed, proto).traffic, LbStats::default(), "{prog:?}: no traffic counted");
        assert_port_drops(&mut bed, proto, &[]);
    }
}

#[test]
fn not_ours_passes_untouched_xdp() {
    not_ours(Prog::XdpUl);
}

#[test]
fn not_ours_passes_untouched_tc() {
    not_ours(Prog::Tc);
}

/// A SYN to the published port in every byte but the EtherType (local experimental): not IPv4,
/// so the host's, whatever its bytes look like.
fn another_ethertype(prog: Prog) {
    let mut bed = bed_with_mesh();
    cache_peer(&mut bed);
    let mut f = syn(port_to(6, BR));
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    run(&mut bed, prog, &f).expect_pass(&f, "another EtherType");
    assert!(bed.conntrack().is_empty(), "{prog:?}: nothing tracked");
    assert_eq!(port(&mut bed, 6).traffic, LbStats::default(), "{prog:?}: no traffic counted");
}

#[test]
fn a_frame_of_another_ethertype_is_not_ours_xdp() {
    another_ethertype(Prog::XdpUl);
}

#[test]
fn a_frame_of_another_ethertype_is_not_ours_tc() {
    another_ethertype(Prog::Tc);
}

// ---------------------------------------------------------------------------------------
// Ours but not forwarded: counted drops, on the port too

fn published_port_drops(prog: Prog) {
    let mut bed = bed_with_mesh();
    cache_peer(&mut bed);
    let p = port_to(6, BR);
    run(&mut bed, prog, &with_frags(&syn(p), 0x2000)).expect_drop(DropReason::VipUnsupported, "first fragment");
    run(&mut bed, prog, &with_frags(&syn(p), 0x6000)).expect_drop(DropReason::VipUnsupported, "DF + MF");
    let u = client_udp(p, b"0123456789", false);
    run(&mut bed, prog, &with_frags(&u, 0x2000)).expect_drop(DropReason::VipUnsupported, "UDP first fragment");
    // Lengths: the TCP header in the trailer, UDP cut short, longer than the frame.
    run(&mut bed, prog, &with_tot_len(syn(p), 20)).expect_drop(DropReason::BadLength, "TCP in the trailer");
    run(&mut bed, prog, &with_tot_len(syn(p), 39)).expect_drop(DropReason::BadLength, "TCP cut short");
    run(&mut bed, prog, &with_tot_len(u.clone(), 27)).expect_drop(DropReason::BadLength, "UDP cut short");
    let long = (syn(p).len() - 14 + 10) as u16;
    run(&mut bed, prog, &with_tot_len(syn(p), long)).expect_drop(DropReason::BadLength, "longer than the frame");
    assert_port_drops(&mut bed, 6, &[(DropReason::BadLength, 3), (DropReason::VipUnsupported, 2)]);
    assert_port_drops(&mut bed, 17, &[(DropReason::BadLength, 1), (DropReason::VipUnsupported, 1)]);
    // An empty table: no backend takes new connections.
    let mut c = bed.contents.clone();
    set_published_table(&mut c, MESH_TCP_ID, MESH_TCP_OFFSET, &[]);
    bed.apply(c);
    run(&mut bed, prog, &syn(p)).expect_drop(DropReason::NoBackend, "empty table, SYN");
    run(&mut bed, prog, &ack(p)).expect_drop(DropReason::NoBackend, "empty table, mid-flow");
    assert_port_drops(
        &mut bed,
        6,
        &[(DropReason::BadLength, 3), (DropReason::NoBackend, 2), (DropReason::VipUnsupported, 2)],
    );
    assert!(bed.conntrack().is_empty(), "{prog:?}: nothing tracked");
    for proto in [6, 17] {
        assert_eq!(port(&mut bed, proto).traffic, LbStats::default(), "{prog:?}: no traffic counted");
    }
    // The UDP port still works.
    let r = run(&mut bed, prog, &u);
    let be = where_to(&r.out);
    let (verdict, want, via) = sent(prog, be, &dnat_udp(be, p, b"0123456789", false));
    r.expect(verdict, &[&[FwdCounter::MeshNew][..], &via].concat(), "UDP");
    assert_eq!(r.out, want);
}

#[test]
fn published_port_drops_have_reasons_xdp() {
    published_port_drops(Prog::XdpUl);
}

#[test]
fn published_port_drops_have_reasons_tc() {
    published_port_drops(Prog::Tc);
}

// ---------------------------------------------------------------------------------------
// The backend's node: a mesh packet from another node's entry

fn mesh_in(prog: Prog) {
    let mut bed = bed_with_mesh();
    let p = 40000;
    let inner = dnat_tcp(BL, p, 1000, 0, TCP_SYN, &[]);
    let r = run(&mut bed, prog, &vxlan_from(PEER_IP, ING_VNI, &inner));
    r.expect(prog.redirect(), &[FwdCounter::Decap, FwdCounter::MeshIn], "from the peer's entry to L");
    assert_eq!(r.out, inner, "{prog:?}: decapsulated as it was sent");
    assert_in_tracked(&mut bed, 6, p, PEER_IP);
    // The next packet: the same entry.
    let inner = dnat_tcp(BL, p, 1001, 7001, TCP_ACK, b"more");
    let r = run(&mut bed, prog, &vxlan_from(PEER_IP, ING_VNI, &inner));
    r.expect(prog.redirect(), &[FwdCounter::Decap, FwdCounter::MeshIn], "the next packet");
    assert_eq!(r.out, inner);
    assert_in_tracked(&mut bed, 6, p, PEER_IP);
    // The client's packets now enter through another node: its replies go there.
    let r = run(&mut bed, prog, &vxlan_from(THIRD_IP, ING_VNI, &inner));
    r.expect(prog.redirect(), &[FwdCounter::Decap, FwdCounter::MeshIn], "through the third node");
    assert_in_tracked(&mut bed, 6, p, THIRD_IP);
    // UDP, without a checksum.
    bed.dp.flush_conntrack().unwrap();
    let inner = dnat_udp(BL, p, b"q", false);
    let r = run(&mut bed, prog, &vxlan_from(PEER_IP, ING_VNI, &inner));
    r.expect(prog.redirect(), &[FwdCounter::Decap, FwdCounter::MeshIn], "UDP");
    assert_eq!(r.out, inner);
    assert_in_tracked(&mut bed, 17, p, PEER_IP);
    // The entry node counts the port's traffic, not this one.
    assert_eq!(port(&mut bed, 6).traffic, LbStats::default());
}

#[test]
fn a_mesh_packet_from_another_nodes_entry_is_delivered_and_tracked_xdp() {
    mesh_in(Prog::XdpUl);
}

#[test]
fn a_mesh_packet_from_another_nodes_entry_is_delivered_and_tracked_tc() {
    mesh_in(Prog::Tc);
}

fn crafted_on_the_ingress_network(prog: Prog) {
    let mut bed = bed_with_mesh();
    // On the other network, A backs a service too: only the ingress network takes outside sources.
    let mut c = bed.contents.clone();
    c.endpoints.get_mut(&EndpointKey { vni: VNI, ip: k(A) }).unwrap().flags |= EP_BACKEND;
    bed.apply(c);
    let to_l = dnat_tcp(BL, 40000, 1, 0, TCP_SYN, &[]);
    let to_n = ip_frame(MAC_N, GW_MAC, CLIENT, ING_N, 6, &tcp(CLIENT, ING_N, 40000, TARGET_TCP, 1, 0, TCP_SYN, &[]));
    let to_a = ip_frame(MAC_A, GW_MAC, CLIENT, A, 6, &tcp(CLIENT, A, 40000, TARGET_TCP, 1, 0, TCP_SYN, &[]));
    let wrong_mac =
        ip_frame(MAC_N, GW_MAC, CLIENT, ING_L, 6, &tcp(CLIENT, ING_L, 40000, TARGET_TCP, 1, 0, TCP_SYN, &[]));
    // R's address from a node that does not host R.
    let from_r = ip_frame(MAC_L, MAC_R, ING_R, ING_L, 6, &tcp(ING_R, ING_L, 40000, TARGET_TCP, 1, 0, TCP_SYN, &[]));
    let cases = [
        ("from a host that is no node", vxlan_from(ROGUE_IP, ING_VNI, &to_l), DropReason::UnknownVtep),
        ("to a local task that backs nothing", vxlan_from(PEER_IP, ING_VNI, &to_n), DropReason::UnknownInnerSource),
        ("to a backend on another network", vxlan_from(PEER_IP, VNI, &to_a), DropReason::UnknownInnerSource),
        ("to L's address, N's MAC", vxlan_from(PEER_IP, ING_VNI, &wrong_mac), DropReason::InnerMacMismatch),
        ("R's address from the third node", vxlan_from(THIRD_IP, ING_VNI, &from_r), DropReason::VtepMismatch),
    ];
    for (what, f, reason) in cases {
        run(&mut bed, prog, &f).expect_drop(reason, what);
    }
    assert!(bed.conntrack().is_empty(), "{prog:?}: nothing tracked");
    // The same frame from a node is ours.
    let r = run(&mut bed, prog, &vxlan_from(PEER_IP, ING_VNI, &to_l));
    r.expect(prog.redirect(), &[FwdCounter::Decap, FwdCounter::MeshIn], "from the peer");
}

#[test]
fn crafted_frames_on_the_ingress_network_are_dropped_xdp() {
    crafted_on_the_ingress_network(Prog::XdpUl);
}

#[test]
fn crafted_frames_on_the_ingress_network_are_dropped_tc() {
    crafted_on_the_ingress_network(Prog::Tc);
}

// ---------------------------------------------------------------------------------------
// The backend's replies

#[test]
fn a_backends_reply_goes_back_to_the_entry_node() {
    let mut bed = bed_with_mesh();
    // The flow entered at the peer, which sent it here.
    let p = 40000;
    run(&mut bed, Prog::XdpUl, &vxlan_from(PEER_IP, ING_VNI, &dnat_tcp(BL, p, 1000, 0, TCP_SYN, &[])));
    let ans = answer_tcp(BL, p, 7000, 1001, TCP_SYN | TCP_ACK, &[]);
    let r = run(&mut bed, Prog::FromL, &ans);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::MeshReturn, FwdCounter::Encap], "L's reply");
    // On the ingress network to the peer, not NATed: the entry node does that.
    assert_eq!(r.out[30..34], PEER_IP, "outer destination: the entry node");
    assert_eq!(r.out[42..50], vxlan_hdr(ING_VNI, 0x08)[..], "the ingress VNI");
    assert_eq!(r.out[50..], ans[..], "the reply as L sent it");
    assert_eq!(r.out, encap_to_peer(&ans, PEER_MAC), "bytes");
    // With the next hop cached, and a FIN: the entry is marked closing.
    cache_peer(&mut bed);
    let fin = answer_tcp(BL, p, 7001, 1001, TCP_FIN | TCP_ACK, &[]);
    let r = run(&mut bed, Prog::FromL, &fin);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::MeshReturn, FwdCounter::EncapCached], "L's FIN");
    assert_eq!(r.out, encap_to_peer(&fin, NH_MAC), "bytes");
    let ct = bed.conntrack();
    assert_eq!(ct.len(), 1);
    assert_eq!(ct[0].1.flags, CT_MESH | CT_REPLY | CT_CLOSING, "the reply entry after the backend's FIN");
    // UDP, with and without a checksum.
    for checksum in [true, false] {
        let q = if checksum { 40001 } else { 40002 };
        run(&mut bed, Prog::Tc, &vxlan_from(PEER_IP, ING_VNI, &dnat_udp(BL, q, b"q", checksum)));
        let ans = answer_udp(BL, q, b"answer", checksum);
        let r = run(&mut bed, Prog::FromL, &ans);
        r.expect(TC_ACT_REDIRECT, &[FwdCounter::MeshReturn, FwdCounter::EncapCached], "L's UDP reply");
        assert_eq!(r.out, encap_to_peer(&ans, NH_MAC), "UDP bytes (checksum {checksum})");
    }
    // The entry node counts these, not this one.
    let s = lb(&mut bed, BL);
    assert_eq!((s.out_pkts, s.in_pkts), (0, 0), "LbStats");
}

#[test]
fn a_local_backends_reply_is_reverse_natted_on_the_entry_node() {
    let mut bed = bed_with_mesh();
    let p = port_to(6, BL);
    run(&mut bed, Prog::XdpUl, &syn(p)).expect(XDP_REDIRECT, &[FwdCounter::MeshNew], "SYN to L");
    let ans = answer_tcp(BL, p, 7000, 1001, TCP_SYN | TCP_ACK, &[]);
    let r = run(&mut bed, Prog::FromL, &ans);
    r.expect(TC_ACT_REDIRECT, &[FwdCounter::MeshReverse], "L's reply");
    assert_eq!(r.out[0..12], macs(ROUTER_MAC, NODE_MAC), "Ethernet: to the router, from this node");
    assert_eq!(r.out[26..30], NODE_IP, "source: this node's address");
    assert_eq!(r.out[34..36], PUB_TCP.to_be_bytes(), "source port: the published one");
    assert_checksums(&r.out, "reverse-NATed reply");
    assert_eq!(r.out, reversed_tcp(p, 7000, 1001, TCP_SYN | TCP_ACK, &[]), "bytes");
    let s = lb(&mut bed, BL);
    assert_eq!((s.conns, s.in_pkts, s.out_pkts), (1, 1, 1), "LbStats");
    let ps = port(&mut bed, 6);
    assert_eq!((ps.traffic.conns, ps.traffic.in_pkts, ps.traffic.out_pkts), (1, 1, 1), "PortStats");
    // UDP, with and without a checksum.
    for (i, checksum) in [(0, true), (1, false)] {
        let q = ports_to(&MESH_TABLE, 17, ID_L).nth(i).unwrap();
        run(&mut bed, Prog::Tc, &client_udp(q, b"q", checksum)).expect(TC_ACT_REDIRECT, &[FwdCounter::MeshNew], "UDP");
        let r = run(&mut bed, Prog::FromL, &answer_udp(BL, q, b"answer", checksum));
        r.expect(TC_ACT_REDIRECT, &[FwdCounter::MeshReverse], "L's UDP reply");
        assert_checksums(&r.out, "reverse-NATed UDP");
        assert_eq!(r.out, reversed_udp(q, b"answer", checksum), "UDP bytes (checksum {checksum})");
    }
    assert_eq!(port(&mut bed, 17).traffic.out_pkts, 2, "PortStats of the UDP port");
}

fn returned_reply(prog: Prog) {
    let mut bed = bed_with_mesh();
    cache_peer(&mut bed);
    let p = port_to(6, BR);
    run(&mut bed, prog, &syn(p));
    assert_entry_tracked(&mut bed, 6, p, BR);
    // R's node returns R's reply to us, the entry node.
    let payload = b"HTTP/1.0 200 OK\r\n\r\nhello";
    let ans = answer_tcp(BR, p, 7001, 1017, TCP_ACK | TCP_PSH, payload);
    let r = run(&mut bed, prog, &vxlan_from(PEER_IP, ING_VNI, &ans));
    // XDP sends it back out of the underlay: TX when it came in there.
    let verdict = match prog {
        Prog::XdpUl => XDP_TX,
        Prog::Xdp => XDP_REDIRECT,
        _ => TC_ACT_REDIRECT,
    };
    r.expect(verdict, &[FwdCounter::MeshReverse], "R's reply returned by its node");
    assert_eq!(r.out[0..12], macs(ROUTER_MAC, NODE_MAC), "{prog:?}: Ethernet: to the router, from this node");
    assert_eq!(r.out[26..30], NODE_IP, "{prog:?}: source: this node's address");
    assert_checksums(&r.out, &format!("{prog:?}: reverse-NATed TCP"));
    assert_eq!(r.out, reversed_tcp(p, 7001, 1017, TCP_ACK | TCP_PSH, payload), "{prog:?}: bytes");
    let s = lb(&mut bed, BR);
    assert_eq!((s.in_pkts, s.out_pkts), (1, 1), "{prog:?}: LbStats");
    assert_eq!(port(&mut bed, 6).traffic.out_pkts, 1, "{prog:?}: PortStats");
    // UDP with and without a checksum.
    for (i, checksum) in [(0, true), (1, false)] {
        let q = ports_to(&MESH_TABLE, 17, ID_R).nth(i).unwrap();
        run(&mut bed, prog, &client_udp(q, b"q", checksum));
        let ans = answer_udp(BR, q, b"answer!", checksum);
        let r = run(&mut bed, prog, &vxlan_from(PEER_IP, ING_VNI, &ans));
        r.expect(verdict, &[FwdCounter::MeshReverse], "R's UDP reply");
        assert_checksums(&r.out, &format!("{prog:?}: reverse-NATed UDP"));
        assert_eq!(r.out, reversed_udp(q, b"answer!", checksum), "{prog:?}: UDP bytes (checksum {checksum})");
    }
}

#[test]
fn a_returned_reply_is_reverse_natted_on_the_entry_node_xdp_tx() {
    returned_reply(Prog::XdpUl);
}

#[test]
fn a_returned_reply_is_reverse_natted_on_the_entry_node_xdp_redirect() {
    returned_reply(Prog::Xdp);
}

#[test]
fn a_returned_reply_is_reverse_natted_on_the_entry_node_tc() {
    returned_reply(Prog::Tc);
}

// ---------------------------------------------------------------------------------------
// Replies no flow explains, and what a backend may not send

#[test]
fn a_backends_packet_to_the_outside_without_a_flow_is_dropped() {
    let mut bed = bed_with_mesh();
    let p = port_to(6, BL);
    let ans = answer_tcp(BL, p, 7000, 1001, TCP_SYN | TCP_ACK, &[]);
    run(&mut bed, Prog::FromL, &ans).expect_drop(DropReason::MeshNoFlow, "no flow at all");
    run(&mut bed, Prog::XdpUl, &syn(p)).expect(XDP_REDIRECT, &[FwdCounter::MeshNew], "SYN to L");
    // The tracked flow's reply goes; anything else from L to the outside does not.
    run(&mut bed, Prog::FromL, &ans).expect(TC_ACT_REDIRECT, &[FwdCounter::MeshReverse], "the flow's reply");
    let cases = [
        ("another client port", answer_tcp(BL, p + 1, 7000, 1001, TCP_ACK, &[])),
        (
            "from another port",
            ip_frame(GW_MAC, MAC_L, ING_L, CLIENT, 6, &tcp(ING_L, CLIENT, 81, p, 1, 1, TCP_ACK, &[])),
        ),
        (
            "UDP on the flow's ports",
            ip_frame(GW_MAC, MAC_L, ING_L, CLIENT, 17, &udp_dgram(ING_L, CLIENT, TARGET_TCP, p, b"x", true)),
        ),
        (
            "another outside address",
            ip_frame(
                GW_MAC,
                MAC_L,
                ING_L,
                [198, 51, 100, 1],
                6,
                &tcp(ING_L, [198, 51, 100, 1], TARGET_TCP, p, 1, 1, TCP_ACK, &[]),
            ),
        ),
        ("ping", ip_frame(GW_MAC, MAC_L, ING_L, CLIENT, 1, &icmp(8, 0, [0, 1, 0, 1], &[0; 8]))),
        ("a fragment of the flow", with_frags(&ans, 0x2000)),
    ];
    for (what, f) in cases {
        run(&mut bed, Prog::FromL, &f).expect_drop(DropReason::MeshNoFlow, what);
    }
    // A VIP flow's reply entry (no CT_MESH) explains nothing on the way out either.
    bed.dp.flush_conntrack().unwrap();
    let (_, rk) = mesh_keys(6, p, BL);
    bed.put_conntrack(rk, CtEntry { nat_ip: k(NODE_IP), flags: CT_REPLY, ..CtEntry::default() });
    run(&mut bed, Prog::FromL, &ans).expect_drop(DropReason::MeshNoFlow, "a reply entry that is not the mesh's");
}

fn returned_reply_without_a_flow(prog: Prog) {
    let mut bed = bed_with_mesh();
    let p = port_to(6, BR);
    let ans = answer_tcp(BR, p, 7001, 1001, TCP_ACK, &[]);
    let f = vxlan_from(PEER_IP, ING_VNI, &ans);
    run(&mut bed, prog, &f).expect_drop(DropReason::MeshNoFlow, "no entry");
    // An entry whose flow entered elsewhere: not ours to send to the client.
    let (_, rk) = mesh_keys(6, p, BR);
    let foreign = CtEntry {
        nat_ip: k(THIRD_IP),
        backend: ID_R,
        flags: CT_MESH | CT_REPLY,
        nat_port: PUB_TCP.to_be(),
        peer: k(THIRD_IP),
        macs: macs(ROUTER_MAC, NODE_MAC),
        ..CtEntry::default()
    };
    bed.put_conntrack(rk, foreign);
    run(&mut bed, prog, &f).expect_drop(DropReason::MeshNoFlow, "the flow entered at another node");
    // A VIP flow's reply entry: no CT_MESH.
    bed.put_conntrack(rk, CtEntry { flags: CT_REPLY, peer: k(NODE_IP), ..foreign });
    run(&mut bed, prog, &f).expect_drop(DropReason::MeshNoFlow, "not a mesh entry");
    // From a task that backs nothing, or to an address on the network that is nobody's.
    let mut c = bed.contents.clone();
    c.endpoints.insert(
        EndpointKey { vni: ING_VNI, ip: k([10, 255, 0, 9]) },
        EndpointInfo { mac: default_mac([10, 255, 0, 9]), flags: 0, ifindex: 0, vtep: k(PEER_IP) },
    );
    bed.apply(c);
    let plain = ip_frame(
        GW_MAC,
        default_mac([10, 255, 0, 9]),
        [10, 255, 0, 9],
        CLIENT,
        6,
        &tcp([10, 255, 0, 9], CLIENT, TARGET_TCP, p, 1, 1, TCP_ACK, &[]),
    );
    run(&mut bed, prog, &vxlan_from(PEER_IP, ING_VNI, &plain))
        .expect_drop(DropReason::MeshNoFlow, "from a task that backs nothing");
    // A crafted reply from a host that is no node.
    run(&mut bed, prog, &vxlan_from(ROGUE_IP, ING_VNI, &ans)).expect_drop(DropReason::UnknownVtep, "from no node");
    assert_eq!(port(&mut bed, 6).traffic, LbStats::default(), "{prog:?}: nothing counted on the port");
}

#[test]
fn a_returned_reply_without_a_flow_is_dropped_xdp() {
    returned_reply_without_a_flow(Prog::XdpUl);
}

#[test]
fn a_returned_reply_without_a_flow_is_dropped_tc() {
    returned_reply_without_a_flow(Prog::Tc);
}

#[test]
fn outside_addresses_and_the_gateway_are_no_destinations() {
    let mut bed = bed_with_mesh();
    let to = |src: [u8; 4], mac: [u8; 6], dst: [u8; 4]| {
        ip_frame(GW_MAC, mac, src, dst, 6, &tcp(src, dst, 40000, 80, 1, 0, TCP_SYN, &[]))
    };
    // N backs nothing: it has no business outside the network.
    run(&mut bed, Prog::FromN, &to(ING_N, MAC_N, CLIENT)).expect_drop(DropReason::UnknownDestination, "N to a client");
    // A backend on another network than the ingress one: no mesh flow can be its.
    let mut c = bed.contents.clone();
    c.local_ifaces.get_mut(&A_IFINDEX).unwrap().flags |= EP_BACKEND;
    c.endpoints.get_mut(&EndpointKey { vni: VNI, ip: k(A) }).unwrap().flags |= EP_BACKEND;
    bed.apply(c);
    let f = ip_frame(MAC_B, MAC_A, A, CLIENT, 6, &tcp(A, CLIENT, 80, 40000, 1, 1, TCP_SYN | TCP_ACK, &[]));
    let r = run(&mut bed, Prog::FromA, &f);
    r.expect_drop(DropReason::UnknownDestination, "a backend on another network to a client");
    // The gateway is answered to ARP, but nothing is delivered to it.
    run(&mut bed, Prog::FromL, &to(ING_L, MAC_L, GW)).expect_drop(DropReason::UnknownDestination, "L to the gateway");
    run(&mut bed, Prog::FromN, &to(ING_N, MAC_N, GW)).expect_drop(DropReason::UnknownDestination, "N to the gateway");
    let ping = ip_frame(GW_MAC, MAC_L, ING_L, GW, 1, &icmp(8, 0, [0, 1, 0, 1], &[0; 8]));
    run(&mut bed, Prog::FromL, &ping).expect_drop(DropReason::UnknownDestination, "ping to the gateway");
    for (prog, mac, ip) in [(Prog::FromL, MAC_L, ING_L), (Prog::FromN, MAC_N, ING_N)] {
        let r = run(&mut bed, prog, &arp_request(mac, ip, GW));
        r.expect(TC_ACT_REDIRECT, &[FwdCounter::ArpReply], "ARP for the gateway");
        let mut want = eth(mac, GW_MAC, 0x0806);
        want.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 2]);
        want.extend_from_slice(&GW_MAC);
        want.extend_from_slice(&GW);
        want.extend_from_slice(&mac);
        want.extend_from_slice(&ip);
        assert_eq!(r.out, want, "{prog:?}: ARP reply: the gateway's MAC");
    }
    // The network itself still works: N to L, and L to N.
    let f = ip_frame(MAC_L, MAC_N, ING_N, ING_L, 6, &tcp(ING_N, ING_L, 40000, 80, 1, 0, TCP_SYN, &[]));
    run(&mut bed, Prog::FromN, &f).expect(TC_ACT_REDIRECT, &[FwdCounter::LocalDelivery], "N to L");
    let f = ip_frame(MAC_N, MAC_L, ING_L, ING_N, 6, &tcp(ING_L, ING_N, 80, 40000, 1, 2, TCP_SYN | TCP_ACK, &[]));
    run(&mut bed, Prog::FromL, &f).expect(TC_ACT_REDIRECT, &[FwdCounter::LocalDelivery], "L to N");
    assert!(bed.conntrack().is_empty(), "nothing tracked");
}

// ---------------------------------------------------------------------------------------
// Counters: a published port's and its backends' count the same bytes as a VIP's

/// Bytes are Ethernet frames both ways, as the VIP path counts them into the same OV_LB_STATS
/// (a backend id may serve a VIP and a published port) and as the mesh's replies are counted.
#[test]
fn port_and_backend_counters_count_frames_both_ways() {
    let mut bed = bed_with_mesh();
    let p = port_to(6, BL);
    let (s, a) = (syn(p), ack(p));
    run(&mut bed, Prog::XdpUl, &s).expect(XDP_REDIRECT, &[FwdCounter::MeshNew], "SYN");
    run(&mut bed, Prog::Tc, &a).expect(TC_ACT_REDIRECT, &[FwdCounter::MeshForward], "ACK");
    let ans = answer_tcp(BL, p, 7001, 1017, TCP_ACK | TCP_PSH, b"hello");
    run(&mut bed, Prog::FromL, &ans).expect(TC_ACT_REDIRECT, &[FwdCounter::MeshReverse], "reply");
    let want = LbStats {
        conns: 1,
        in_pkts: 2,
        in_bytes: (s.len() + a.len()) as u64,
        out_pkts: 1,
        out_bytes: ans.len() as u64,
    };
    // Both directions as the VIP path counts them (services_prog: Ethernet frames).
    assert_eq!(port(&mut bed, 6).traffic, want, "PortStats of the published port");
    assert_eq!(lb(&mut bed, BL), want, "LbStats of L");
}

//! BPF_PROG_TEST_RUN tests of every datapath path: packet in, expected verdict, expected bytes
//! out, and the counter that moved (exactly one).
//!
//! Each test runs in its own network namespace holding a veth underlay interface
//! (192.168.50.11) with a permanent neighbour entry for the peer VTEP 192.168.50.12, so the
//! FIB lookup of the encapsulation path is deterministic.

use overlay::datapath::Counters;
use overlay_common::{
    maps::*,
    stats::{DropReason, FwdCounter},
    vxlan::{flow_hash, src_port, SRC_PORT_MAX, SRC_PORT_MIN},
};
use overlay_tests::{bed::*, packet::*};

fn total_drops(c: &Counters) -> u64 {
    c.dropped.iter().map(|x| x.1).sum()
}

/// Run `f` and check that exactly one drop was counted, under `reason`.
fn expect_drop(bed: &mut Bed, reason: DropReason, what: &str, f: impl FnOnce(&mut Bed) -> u32, verdict: u32) {
    let before = bed.counters();
    let got = f(bed);
    let after = bed.counters();
    assert_eq!(got, verdict, "{what}: verdict");
    assert_eq!(after.drop(reason), before.drop(reason) + 1, "{what}: counter {} did not move", reason.name());
    assert_eq!(total_drops(&after), total_drops(&before) + 1, "{what}: another drop counter moved too");
}

fn expect_fwd(bed: &mut Bed, counter: FwdCounter, what: &str, f: impl FnOnce(&mut Bed) -> u32, verdict: u32) {
    let before = bed.counters();
    let got = f(bed);
    let after = bed.counters();
    assert_eq!(got, verdict, "{what}: verdict; counters now {after:?}");
    assert_eq!(after.fwd(counter), before.fwd(counter) + 1, "{what}: counter {} did not move", counter.name());
    assert_eq!(total_drops(&after), total_drops(&before), "{what}: a drop was counted");
}

fn ports_word(sport: u16, dport: u16) -> u32 {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&sport.to_be_bytes());
    b[2..].copy_from_slice(&dport.to_be_bytes());
    u32::from_ne_bytes(b)
}

fn expected_encap(inner: &[u8], sport: u16) -> Vec<u8> {
    expected_encap_to(PEER_MAC, inner, sport)
}

fn expected_encap_to(next_hop_mac: [u8; 6], inner: &[u8], sport: u16) -> Vec<u8> {
    let mut e = eth(next_hop_mac, NODE_MAC, 0x0800);
    e.extend(ipv4(NODE_IP, PEER_IP, 17, 8 + 8 + inner.len(), 0x4000, 0));
    e.extend(udp(sport, 4789, 8 + inner.len()));
    e.extend(vxlan_hdr(VNI, 0x08));
    e.extend_from_slice(inner);
    e
}

// ---------------------------------------------------------------------------------------
// Container side

#[test]
fn encap_to_remote_endpoint_golden_bytes() {
    let mut bed = bed();
    let inner = inner_tcp(A, B, 40000, 80, 64);
    let sport = src_port(flow_hash(k(A), k(B), 6, ports_word(40000, 80)));
    let mut out = Vec::new();
    expect_fwd(
        &mut bed,
        FwdCounter::Encap,
        "encap",
        |b| {
            let (v, o) = b.from_container(&inner);
            out = o;
            v
        },
        TC_ACT_REDIRECT,
    );
    assert_eq!(out, expected_encap(&inner, sport), "encapsulated bytes");
    // Outer IPv4 checksum verifies.
    assert_eq!(csum(&out[14..34]), 0);
}

#[test]
fn encap_source_port_is_stable_per_flow_and_spread_in_range() {
    let mut bed = bed();
    let port = |b: &mut Bed, sp: u16| {
        let (v, o) = b.from_container(&inner_tcp(A, B, sp, 443, 20));
        assert_eq!(v, TC_ACT_REDIRECT);
        u16::from_be_bytes([o[34], o[35]])
    };
    assert_eq!(port(&mut bed, 33000), port(&mut bed, 33000), "same flow, same port");
    let mut seen = std::collections::HashSet::new();
    for sp in 0..256u16 {
        let p = port(&mut bed, 20000 + sp);
        assert!((SRC_PORT_MIN..=SRC_PORT_MAX).contains(&p), "port {p} out of range");
        seen.insert(p);
    }
    assert!(seen.len() > 200, "256 flows used only {} source ports", seen.len());
}

#[test]
fn encap_without_forwarding_lets_the_kernel_route() {
    // A plain host has forwarding off: the FIB helper declines, the kernel routes and fills
    // the outer MACs at transmit (so they are still zero here).
    let mut bed = bed();
    bed._ns.sh("sysctl -qw net.ipv4.conf.ul0.forwarding=0").unwrap();
    let inner = inner_tcp(A, B, 40000, 80, 64);
    let sport = src_port(flow_hash(k(A), k(B), 6, ports_word(40000, 80)));
    let mut out = Vec::new();
    expect_fwd(
        &mut bed,
        FwdCounter::EncapNeighResolve,
        "encap via kernel route",
        |b| {
            let (v, o) = b.from_container(&inner);
            out = o;
            v
        },
        TC_ACT_REDIRECT,
    );
    let mut want = expected_encap(&inner, sport);
    want[..12].fill(0);
    assert_eq!(out, want);
}

#[test]
fn local_delivery_is_redirected_unchanged() {
    let mut bed = bed();
    let f = inner_tcp(A, C, 40000, 80, 30);
    let mut out = Vec::new();
    expect_fwd(
        &mut bed,
        FwdCounter::LocalDelivery,
        "local",
        |b| {
            let (v, o) = b.from_container(&f);
            out = o;
            v
        },
        TC_ACT_REDIRECT,
    );
    assert_eq!(out, f);
}

#[test]
fn arp_request_is_answered_from_the_maps() {
    let mut bed = bed();
    let req = arp_request(MAC_A, A, B);
    let mut out = Vec::new();
    expect_fwd(
        &mut bed,
        FwdCounter::ArpReply,
        "arp",
        |b| {
            let (v, o) = b.from_container(&req);
            out = o;
            v
        },
        TC_ACT_REDIRECT,
    );
    let mut want = eth(MAC_A, MAC_B, 0x0806);
    want.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 2]);
    want.extend_from_slice(&MAC_B);
    want.extend_from_slice(&B);
    want.extend_from_slice(&MAC_A);
    want.extend_from_slice(&A);
    assert_eq!(out, want, "ARP reply bytes");
}

#[test]
fn container_side_drops_each_have_a_reason() {
    let mut bed = bed();
    // ARP for an address that is no endpoint of the network, or of another network.
    for (what, tpa) in [("unknown", [10, 0, 9, 99]), ("other network", OTHER_NET), ("own address", A)] {
        let req = arp_request(MAC_A, A, tpa);
        expect_drop(&mut bed, DropReason::ArpUnknownTarget, what, |b| b.from_container(&req).0, TC_ACT_SHOT);
    }
    // ARP reply from a container: not something the overlay forwards.
    let mut reply = arp_request(MAC_A, A, B);
    reply[21] = 2;
    expect_drop(&mut bed, DropReason::ArpUnsupported, "arp reply", |b| b.from_container(&reply).0, TC_ACT_SHOT);
    // Networks are isolated.
    let f = inner_tcp(A, OTHER_NET, 1, 2, 20);
    expect_drop(&mut bed, DropReason::UnknownDestination, "cross-network", |b| b.from_container(&f).0, TC_ACT_SHOT);
    let f = inner_tcp(A, [10, 0, 9, 77], 1, 2, 20);
    expect_drop(&mut bed, DropReason::UnknownDestination, "unknown ip", |b| b.from_container(&f).0, TC_ACT_SHOT);
    // Spoofed source.
    let f = inner_tcp([10, 0, 9, 8], B, 1, 2, 20);
    expect_drop(&mut bed, DropReason::SpoofedSource, "spoofed", |b| b.from_container(&f).0, TC_ACT_SHOT);
    // Broadcast and multicast.
    let f = inner_tcp(A, [255, 255, 255, 255], 1, 2, 20);
    expect_drop(&mut bed, DropReason::Broadcast, "broadcast", |b| b.from_container(&f).0, TC_ACT_SHOT);
    let f = inner_tcp(A, [224, 0, 0, 251], 1, 2, 20);
    expect_drop(&mut bed, DropReason::Broadcast, "multicast", |b| b.from_container(&f).0, TC_ACT_SHOT);
    // IPv6.
    let mut f = eth(MAC_B, MAC_A, 0x86dd);
    f.extend_from_slice(&[0x60; 40]);
    expect_drop(&mut bed, DropReason::NotIpv4, "ipv6", |b| b.from_container(&f).0, TC_ACT_SHOT);
    // IHL < 5.
    let mut f = inner_tcp(A, B, 1, 2, 20);
    f[14] = 0x44;
    expect_drop(&mut bed, DropReason::BadIpHeaderLen, "ihl<5", |b| b.from_container(&f).0, TC_ACT_SHOT);
    // Truncation at every offset. The kernel's skb test runner refuses IPv4 frames without a
    // whole IPv4 header (the XDP tests cover those offsets on the underlay side); ARP frames
    // are accepted from 14 bytes, so the container side's bounds checks are exercised there.
    let f = arp_request(MAC_A, A, B);
    for cut in 14..f.len() {
        expect_drop(
            &mut bed,
            DropReason::Truncated,
            &format!("arp cut at {cut}"),
            |b| b.from_container(&f[..cut]).0,
            TC_ACT_SHOT,
        );
    }
    // A packet on a veth the maps do not know.
    let f = inner_tcp(A, B, 1, 2, 20);
    let ul = bed.underlay_ifindex;
    expect_drop(
        &mut bed,
        DropReason::UnknownInterface,
        "unknown iface",
        |b| b.tc(PROG_FROM_CONTAINER, &f, ul).0,
        TC_ACT_SHOT,
    );
}

#[test]
fn too_big_for_the_underlay_gets_icmp_fragmentation_needed() {
    let mut bed = bed();
    // 1500-byte underlay: an inner IP packet of 1451 bytes does not fit once encapsulated.
    let f = inner_tcp(A, B, 1, 2, 1451 - 20);
    assert_eq!(f.len(), 14 + 1451);
    let before = bed.counters();
    let mut out = Vec::new();
    expect_drop(
        &mut bed,
        DropReason::TooBig,
        "too big, DF",
        |b| {
            let (v, o) = b.from_container(&f);
            out = o;
            v
        },
        TC_ACT_REDIRECT,
    );
    assert_eq!(bed.counters().fwd(FwdCounter::IcmpFragNeeded), before.fwd(FwdCounter::IcmpFragNeeded) + 1);
    // Back to the sender: from the address it wrote to, type 3 code 4, next-hop MTU 1450,
    // quoting its IPv4 header and (TCP) its 20-byte TCP header.
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&1450u16.to_be_bytes());
    icmp.extend_from_slice(&f[14..54]);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut want = eth(MAC_A, MAC_B, 0x0800);
    want.extend(ipv4(B, A, 1, icmp.len(), 0, 0xc0));
    want.extend(icmp);
    assert_eq!(out, want, "ICMP reply bytes");
    assert_eq!(csum(&out[34..]), 0, "ICMP checksum verifies");

    // Without DF there is no one to tell: just the counted drop.
    let mut f = f.clone();
    f[20..22].copy_from_slice(&[0, 0]);
    f[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    expect_drop(&mut bed, DropReason::TooBig, "too big, no DF", |b| b.from_container(&f).0, TC_ACT_SHOT);

    let f = inner_tcp(A, B, 1, 2, 1450 - 20);
    expect_fwd(&mut bed, FwdCounter::Encap, "just fits", |b| b.from_container(&f).0, TC_ACT_REDIRECT);
}

// ---------------------------------------------------------------------------------------
// Underlay side, for both attach modes

#[derive(Clone, Copy, Debug)]
enum Mode {
    Xdp,
    Tc,
}

struct V {
    pass: u32,
    drop: u32,
    redirect: u32,
}

impl Mode {
    fn v(self) -> V {
        match self {
            Mode::Xdp => V { pass: XDP_PASS, drop: XDP_DROP, redirect: XDP_REDIRECT },
            Mode::Tc => V { pass: TC_ACT_OK, drop: TC_ACT_SHOT, redirect: TC_ACT_REDIRECT },
        }
    }
    fn run(self, bed: &mut Bed, f: &[u8]) -> (u32, Vec<u8>) {
        match self {
            Mode::Xdp => bed.xdp(f),
            Mode::Tc => {
                let ul = bed.underlay_ifindex;
                bed.tc(PROG_UNDERLAY_TC, f, ul)
            }
        }
    }
}

/// B (on the peer node) to A, as the peer node's VTEP sends it.
fn frame_to_a(vni: u32) -> (Vec<u8>, Vec<u8>) {
    frame_to_a_from(PEER_IP, vni, B, MAC_A)
}

fn frame_to_a_from(outer_src: [u8; 4], vni: u32, inner_src: [u8; 4], dst_mac: [u8; 6]) -> (Vec<u8>, Vec<u8>) {
    let inner = inner_tcp_macs(dst_mac, MAC_B, inner_src, A, 80, 40000, 64);
    (vxlan_frame(NODE_MAC, PEER_MAC, outer_src, NODE_IP, 51000, 4789, vni, &inner), inner)
}

fn decap_golden(mode: Mode) {
    let mut bed = bed();
    let (frame, inner) = frame_to_a(VNI);
    let mut out = Vec::new();
    expect_fwd(
        &mut bed,
        FwdCounter::Decap,
        "decap",
        |b| {
            let (v, o) = mode.run(b, &frame);
            out = o;
            v
        },
        mode.v().redirect,
    );
    assert_eq!(out, inner, "{mode:?}: decapsulated bytes");
    // Reserved bits in the VXLAN header are ignored on receive (RFC 7348).
    let mut f = frame.clone();
    f[42] = 0xff;
    f[49] = 0xff;
    expect_fwd(&mut bed, FwdCounter::Decap, "reserved bits", |b| mode.run(b, &f).0, mode.v().redirect);
}

#[test]
fn decap_xdp_golden_bytes() {
    decap_golden(Mode::Xdp);
}

#[test]
fn decap_tc_golden_bytes() {
    decap_golden(Mode::Tc);
}

fn host_traffic_passes(mode: Mode) {
    let mut bed = bed();
    let v = mode.v();
    let mut frames = Vec::new();
    // DNS to the node, VXLAN to another port, TCP, ARP, and VXLAN for another host.
    let mut f = eth(NODE_MAC, PEER_MAC, 0x0800);
    f.extend(ipv4(PEER_IP, NODE_IP, 17, 8 + 20, 0, 0));
    f.extend(udp(5353, 53, 20));
    f.extend([7u8; 20]);
    frames.push(("udp/53", f));
    let (mut f, _) = frame_to_a(VNI);
    f[36..38].copy_from_slice(&4790u16.to_be_bytes());
    frames.push(("vxlan other port", f));
    let mut f = eth(NODE_MAC, PEER_MAC, 0x0800);
    f.extend(ipv4(PEER_IP, NODE_IP, 6, 20, 0, 0));
    f.extend(tcp_ish(22, 40000, 20));
    frames.push(("tcp", f));
    frames.push(("arp", arp_request(PEER_MAC, PEER_IP, NODE_IP)));
    let (mut f, _) = frame_to_a(VNI);
    f[30..34].copy_from_slice(&[192, 168, 50, 13]);
    frames.push(("vxlan to another address", f));
    // A non-first fragment to us cannot be told apart from the host's own.
    let (mut f, _) = frame_to_a(VNI);
    f[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
    frames.push(("non-first fragment", f));
    for (what, f) in frames {
        let mut out = Vec::new();
        expect_fwd(
            &mut bed,
            FwdCounter::PassHost,
            what,
            |b| {
                let (r, o) = mode.run(b, &f);
                out = o;
                r
            },
            v.pass,
        );
        assert_eq!(out, f, "{mode:?} {what}: passed frames are untouched");
    }
}

#[test]
fn host_traffic_passes_untouched_xdp() {
    host_traffic_passes(Mode::Xdp);
}

#[test]
fn host_traffic_passes_untouched_tc() {
    host_traffic_passes(Mode::Tc);
}

/// A change to a good frame that makes it bad.
type Edit = Box<dyn Fn(&mut Vec<u8>)>;

fn malformed(mode: Mode) {
    let mut bed = bed();
    let v = mode.v();
    let (frame, _) = frame_to_a(VNI);
    let n = frame.len();

    // Truncation at every offset, lengths left as they were: too short to be identified as
    // ours before the UDP header is complete (passes), a length mismatch after.
    // The skb test runner refuses IPv4 frames shorter than a whole IPv4 header.
    let first = match mode {
        Mode::Xdp => 14,
        Mode::Tc => 34,
    };
    for cut in first..n {
        let f = &frame[..cut];
        if cut < 42 {
            expect_fwd(&mut bed, FwdCounter::PassHost, &format!("{mode:?} cut {cut}"), |b| mode.run(b, f).0, v.pass);
        } else {
            expect_drop(&mut bed, DropReason::BadLength, &format!("{mode:?} cut {cut}"), |b| mode.run(b, f).0, v.drop);
        }
    }
    // Truncation with consistent lengths: too short for what VXLAN must carry (outer IPv4 + UDP
    // + VXLAN + inner Ethernet + inner IPv4), judged by the lengths, not by the frame.
    for cut in 42..84 {
        let mut f = frame[..cut].to_vec();
        fix_lengths(&mut f, cut);
        expect_drop(
            &mut bed,
            DropReason::BadLength,
            &format!("{mode:?} consistent cut {cut}"),
            |b| mode.run(b, &f).0,
            v.drop,
        );
    }
    let cases: Vec<(&str, DropReason, Edit)> = vec![
        ("ihl<5", DropReason::BadIpHeaderLen, Box::new(|f| f[14] = 0x44)),
        (
            "total length beyond the frame",
            DropReason::BadLength,
            Box::new(|f| {
                let t = u16::from_be_bytes([f[16], f[17]]) + 10;
                f[16..18].copy_from_slice(&t.to_be_bytes());
            }),
        ),
        ("udp length wrong", DropReason::BadLength, Box::new(|f| f[39] ^= 1)),
        (
            "first fragment",
            DropReason::OuterFragment,
            Box::new(|f| f[20..22].copy_from_slice(&0x2000u16.to_be_bytes())),
        ),
        ("I flag clear", DropReason::VxlanNoIFlag, Box::new(|f| f[42] = 0)),
        ("unknown vni", DropReason::UnknownVni, Box::new(|f| f[46..49].copy_from_slice(&[0, 3, 0xe7]))),
        ("inner vlan", DropReason::InnerVlan, Box::new(|f| f[62..64].copy_from_slice(&[0x81, 0]))),
        ("inner qinq", DropReason::InnerVlan, Box::new(|f| f[62..64].copy_from_slice(&[0x88, 0xa8]))),
        ("inner ipv6", DropReason::InnerNotIpv4, Box::new(|f| f[62..64].copy_from_slice(&[0x86, 0xdd]))),
        ("inner ihl<5", DropReason::BadIpHeaderLen, Box::new(|f| f[64] = 0x43)),
        ("inner to a remote endpoint", DropReason::DecapNotLocal, Box::new(|f| f[80..84].copy_from_slice(&B))),
        (
            "inner to another network's endpoint",
            DropReason::DecapNotLocal,
            Box::new(|f| f[80..84].copy_from_slice(&OTHER_NET)),
        ),
        (
            "inner longer than the outer packet carries",
            DropReason::BadLength,
            Box::new(|f| {
                let t = u16::from_be_bytes([f[66], f[67]]) + 1;
                f[66..68].copy_from_slice(&t.to_be_bytes());
            }),
        ),
    ];
    for (what, reason, edit) in cases {
        let mut f = frame.clone();
        edit(&mut f);
        expect_drop(&mut bed, reason, &format!("{mode:?} {what}"), |b| mode.run(b, &f).0, v.drop);
    }
    // Outer IPv4 options (IHL 6) on VXLAN to our port.
    let mut f = frame[..14].to_vec();
    let mut ip = frame[14..34].to_vec();
    ip[0] = 0x46;
    let tot = u16::from_be_bytes([ip[2], ip[3]]) + 4;
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    f.extend(ip);
    f.extend([1, 1, 1, 1]);
    f.extend_from_slice(&frame[34..]);
    expect_drop(&mut bed, DropReason::OuterIpOptions, &format!("{mode:?} ihl>5"), |b| mode.run(b, &f).0, v.drop);
}

#[test]
fn malformed_vxlan_xdp() {
    malformed(Mode::Xdp);
}

#[test]
fn malformed_vxlan_tc() {
    malformed(Mode::Tc);
}

#[test]
fn programs_load_and_counters_start_at_zero() {
    let mut bed = bed();
    let c = bed.counters();
    assert_eq!(c.dropped.len(), DropReason::ALL.len());
    assert_eq!(total_drops(&c), 0);
}

// ---------------------------------------------------------------------------------------
// The hostile underlay: crafted VXLAN that must not get through

fn crafted(mode: Mode) {
    let mut bed = bed();
    let v = mode.v();
    let cases: Vec<(&str, DropReason, Vec<u8>)> = vec![
        ("from a host that is no node", DropReason::UnknownVtep, frame_to_a_from(ROGUE_IP, VNI, B, MAC_A).0),
        ("malformed, from a host that is no node", DropReason::UnknownVtep, {
            let mut f = frame_to_a_from(ROGUE_IP, VNI, B, MAC_A).0;
            f[42] = 0;
            f
        }),
        (
            "from a node that does not host the source",
            DropReason::VtepMismatch,
            frame_to_a_from(THIRD_IP, VNI, B, MAC_A).0,
        ),
        ("claiming a local endpoint as source", DropReason::VtepMismatch, frame_to_a_from(PEER_IP, VNI, C, MAC_A).0),
        (
            "inner source no endpoint",
            DropReason::UnknownInnerSource,
            frame_to_a_from(PEER_IP, VNI, [8, 8, 8, 8], MAC_A).0,
        ),
        (
            "inner source of another network",
            DropReason::UnknownInnerSource,
            frame_to_a_from(PEER_IP, VNI, OTHER_NET, MAC_A).0,
        ),
        ("broadcast inner MAC", DropReason::InnerMacMismatch, frame_to_a_from(PEER_IP, VNI, B, [0xff; 6]).0),
        ("another endpoint's inner MAC", DropReason::InnerMacMismatch, frame_to_a_from(PEER_IP, VNI, B, MAC_B).0),
    ];
    for (what, reason, f) in cases {
        expect_drop(&mut bed, reason, &format!("{mode:?} {what}"), |b| mode.run(b, &f).0, v.drop);
    }
    // Trailer smuggling: an empty UDP datagram (IPv4 total length 28, UDP length 8) whose frame
    // carries a VXLAN header and an inner frame in its Ethernet trailer.
    let (mut f, _) = frame_to_a(VNI);
    f[16..18].copy_from_slice(&28u16.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[38..40].copy_from_slice(&8u16.to_be_bytes());
    expect_drop(&mut bed, DropReason::BadLength, &format!("{mode:?} trailer smuggling"), |b| mode.run(b, &f).0, v.drop);
}

#[test]
fn crafted_vxlan_does_not_get_through_xdp() {
    crafted(Mode::Xdp);
}

#[test]
fn crafted_vxlan_does_not_get_through_tc() {
    crafted(Mode::Tc);
}

#[test]
fn a_container_must_use_its_own_mac() {
    let mut bed = bed();
    let mut f = inner_tcp(A, B, 1, 2, 20);
    f[6..12].copy_from_slice(&MAC_B);
    expect_drop(
        &mut bed,
        DropReason::SpoofedMac,
        "IPv4 with another endpoint's MAC",
        |b| b.from_container(&f).0,
        TC_ACT_SHOT,
    );
    let mut f = arp_request(MAC_A, A, B);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x99]);
    expect_drop(&mut bed, DropReason::SpoofedMac, "ARP from another MAC", |b| b.from_container(&f).0, TC_ACT_SHOT);
    // Ethernet source right, ARP sender hardware address wrong: the reply would go elsewhere.
    let mut f = arp_request(MAC_A, A, B);
    f[22..28].copy_from_slice(&MAC_B);
    expect_drop(&mut bed, DropReason::SpoofedMac, "ARP sender MAC", |b| b.from_container(&f).0, TC_ACT_SHOT);
}

#[test]
fn gso_segments_must_fit_the_underlay() {
    let mut bed = bed();
    // 20 bytes of IPv4 + 20 of TCP + the segment size + 50 of encapsulation: 1500 fits exactly.
    let f = inner_tcp(A, B, 40000, 80, 3000);
    // Segments that fit pass the size check. (The test runner cannot give the skb a GSO type, so
    // the kernel then refuses to push headers onto it: real TSO packets are encapsulated in the
    // end-to-end TCP tests.)
    let before = bed.counters();
    bed.tc_gso(PROG_FROM_CONTAINER, &f, A_IFINDEX, 1410);
    let after = bed.counters();
    assert_eq!(after.drop(DropReason::TooBig), before.drop(DropReason::TooBig), "segments that fit were refused");
    assert_eq!(after.drop(DropReason::HelperFailed), before.drop(DropReason::HelperFailed) + 1);
    let before = bed.counters();
    let (v, out) = bed.tc_gso(PROG_FROM_CONTAINER, &f, A_IFINDEX, 1411);
    let after = bed.counters();
    assert_eq!(after.drop(DropReason::TooBig), before.drop(DropReason::TooBig) + 1, "segments one byte too big");
    // A DF sender is told the MTU that fits, as for a single packet.
    assert_eq!(
        (v, after.fwd(FwdCounter::IcmpFragNeeded)),
        (TC_ACT_REDIRECT, before.fwd(FwdCounter::IcmpFragNeeded) + 1)
    );
    assert_eq!(&out[34..36], &[3, 4], "ICMP type 3 code 4");
    assert_eq!(u16::from_be_bytes([out[40], out[41]]), 1450);
}

// ---------------------------------------------------------------------------------------
// The next-hop cache

#[test]
fn encap_uses_the_cached_next_hop_then_falls_back_to_the_fib() {
    let mut bed = bed();
    let inner = inner_tcp(A, B, 40000, 80, 64);
    let sport = src_port(flow_hash(k(A), k(B), 6, ports_word(40000, 80)));
    // A MAC the FIB would never give (its neighbour entry says PEER_MAC): the cache was used.
    let cached = [2, 0, 0, 0, 0, 0x77];
    let ul = bed.underlay_ifindex;
    bed.set_peer_nexthop(Some(NextHop { ifindex: ul, dmac: cached, smac: NODE_MAC }));
    let mut out = Vec::new();
    expect_fwd(
        &mut bed,
        FwdCounter::EncapCached,
        "cached next hop",
        |b| {
            let (v, o) = b.from_container(&inner);
            out = o;
            v
        },
        TC_ACT_REDIRECT,
    );
    assert_eq!(out, expected_encap_to(cached, &inner, sport), "cached next hop: bytes");

    // Stale: resolved on an interface that is no longer the underlay. The FIB decides.
    bed.set_peer_nexthop(Some(NextHop { ifindex: ul + 100, dmac: cached, smac: NODE_MAC }));
    expect_fwd(
        &mut bed,
        FwdCounter::Encap,
        "stale cached next hop",
        |b| {
            let (v, o) = b.from_container(&inner);
            out = o;
            v
        },
        TC_ACT_REDIRECT,
    );
    assert_eq!(out, expected_encap(&inner, sport), "stale entry: the FIB's next hop");

    // Missing: the FIB decides.
    bed.set_peer_nexthop(None);
    expect_fwd(
        &mut bed,
        FwdCounter::Encap,
        "no cached next hop",
        |b| {
            let (v, o) = b.from_container(&inner);
            out = o;
            v
        },
        TC_ACT_REDIRECT,
    );
    assert_eq!(out, expected_encap(&inner, sport), "missing entry: the FIB's next hop");
}

//! BPF_PROG_TEST_RUN tests of docker_gwbridge masquerade in eBPF (nat.rs, from the gwbridge
//! program and the underlay programs): packet in, verdict and bytes out (checksums verified
//! independently of the datapath's arithmetic), the counters that moved (exactly those), and the
//! conntrack entries left.
//!
//! The bed is node 192.168.50.11 (ul0) with a permanent neighbour 192.168.50.12 (the outside
//! host here, reached through the underlay). A container's gwbridge port is `ul1` in the bed
//! (any existing device stands in), its address 172.18.0.2, the bridge 172.18.0.1/16.

use overlay_common::{
    maps::*,
    stats::{DropReason, FwdCounter},
    vxlan::{default_mac, flow_hash},
};
use overlay_tests::{bed::*, packet::*};

const GW_IP: [u8; 4] = [172, 18, 0, 2];
const GW_MAC: [u8; 6] = [0x02, 0x42, 172, 18, 0, 2];
const BRIDGE_IP: [u8; 4] = [172, 18, 0, 1];
const OUTSIDE: [u8; 4] = PEER_IP;
const CPORT: u16 = 40000;

fn bridge_mac() -> [u8; 6] {
    default_mac(BRIDGE_IP)
}

/// The bed with a gwbridge port (`ul1`) for 172.18.0.2; `flags`: GW_MASQUERADE and others.
fn gw_bed(flags: u16) -> (Bed, u32) {
    let mut bed = bed();
    let port = bed._ns.ifindex("ul1").unwrap();
    let mut c = bed.contents.clone();
    c.gw = GwConfig {
        subnet: k([172, 18, 0, 0]),
        mask: u32::from_ne_bytes([255, 255, 0, 0]),
        gateway: k(BRIDGE_IP),
        bridge_mac: bridge_mac(),
        flags,
    };
    c.local_ifaces.insert(port, LocalIface { vni: GW_VNI, ip: k(GW_IP), mac: GW_MAC, flags: 0 });
    c.endpoints.insert(
        EndpointKey { vni: GW_VNI, ip: k(GW_IP) },
        EndpointInfo { mac: GW_MAC, flags: EP_LOCAL, ifindex: port, vtep: 0 },
    );
    bed.apply(c);
    (bed, port)
}

enum Hook {
    /// The container's gwbridge port (TC ingress of its host end).
    Gw,
    /// The underlay in TC.
    Tc,
    /// The underlay in XDP.
    Xdp,
}

fn run(bed: &mut Bed, port: u32, hook: Hook, frame: &[u8]) -> (u32, Vec<u8>, Vec<(String, u64)>) {
    let before = bed.counters();
    let ul = bed.underlay_ifindex;
    let (v, out) = match hook {
        Hook::Gw => bed.tc(PROG_FROM_GWBRIDGE, frame, port),
        Hook::Tc => bed.tc(PROG_UNDERLAY_TC, frame, ul),
        Hook::Xdp => bed.xdp_on(frame, ul),
    };
    let after = bed.counters();
    (v, out, moved(&before, &after))
}

fn one(c: FwdCounter) -> Vec<(String, u64)> {
    vec![(c.name().to_string(), 1)]
}

/// A TCP segment from the container to the outside host, as it leaves eth1 (to the bridge).
fn out_tcp(flags: u8) -> Vec<u8> {
    ip_frame(bridge_mac(), GW_MAC, GW_IP, OUTSIDE, 6, &tcp(GW_IP, OUTSIDE, CPORT, 80, 1, 0, flags, b"hello"))
}

/// The outside host's reply to `port` on the node, as it arrives on the underlay.
fn in_tcp(port: u16) -> Vec<u8> {
    ip_frame(NODE_MAC, PEER_MAC, OUTSIDE, NODE_IP, 6, &tcp(OUTSIDE, NODE_IP, 80, port, 9, 2, TCP_ACK, b"world"))
}

fn ip_ok(f: &[u8]) {
    assert_eq!(csum(&f[14..34]), 0, "IPv4 header checksum");
    let (src, dst) = (f[26..30].try_into().unwrap(), f[30..34].try_into().unwrap());
    let l4 = &f[34..14 + u16::from_be_bytes([f[16], f[17]]) as usize];
    if f[23] == 17 && l4[6..8] == [0, 0] {
        return; // no UDP checksum: none to verify
    }
    assert_eq!(l4_csum(src, dst, f[23], l4), 0, "L4 checksum");
}

fn port_of(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[34], f[35]])
}

#[test]
fn tcp_out_is_masqueraded_and_sent_out_of_the_underlay() {
    let (mut bed, port) = gw_bed(GW_MASQUERADE);
    let (v, out, m) = run(&mut bed, port, Hook::Gw, &out_tcp(TCP_SYN));
    assert_eq!((v, m), (TC_ACT_REDIRECT, one(FwdCounter::GwSnat)));
    assert_eq!(&out[0..6], &PEER_MAC, "to the next hop's MAC");
    assert_eq!(&out[6..12], &NODE_MAC, "from the underlay's");
    assert_eq!(&out[26..30], &NODE_IP, "from the node's address");
    assert_eq!(&out[30..34], &OUTSIDE);
    let sport = port_of(&out);
    assert!((SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&sport), "port {sport} in the SNAT range");
    assert_eq!(out[22], 63, "TTL decremented");
    ip_ok(&out);
    assert_eq!(&out[54..], b"hello");
    // Both entries, and the next packet of the flow keeps its port.
    let ct = bed.conntrack();
    assert_eq!(ct.len(), 2);
    let rk =
        CtKey { src: k(OUTSIDE), dst: k(NODE_IP), sport: 80u16.to_be(), dport: sport.to_be(), proto: 6, _pad: [0; 3] };
    let reply = ct.iter().find(|(key, _)| *key == rk).expect("the reply entry owns the port").1;
    assert_eq!(reply.flags, CT_SNAT | CT_REPLY);
    assert_eq!((reply.nat_ip, u16::from_be(reply.nat_port), reply.backend), (k(GW_IP), CPORT, port));
    assert_eq!(&reply.macs[0..6], &GW_MAC);
    assert_eq!(&reply.macs[6..12], &bridge_mac());
    let (_, again, _) = run(&mut bed, port, Hook::Gw, &out_tcp(TCP_ACK));
    assert_eq!(port_of(&again), sport, "same flow, same port");
}

#[test]
fn replies_are_translated_back_into_the_container_in_tc_and_xdp() {
    for hook in [Hook::Tc, Hook::Xdp] {
        let (mut bed, port) = gw_bed(GW_MASQUERADE);
        let (_, out, _) = run(&mut bed, port, Hook::Gw, &out_tcp(TCP_SYN));
        let sport = port_of(&out);
        let xdp = matches!(hook, Hook::Xdp);
        let (v, back, m) = run(&mut bed, port, hook, &in_tcp(sport));
        assert_eq!(v, if xdp { XDP_REDIRECT } else { TC_ACT_REDIRECT });
        assert_eq!(m, one(FwdCounter::GwUnsnat));
        assert_eq!(&back[0..6], &GW_MAC, "to the container's MAC");
        assert_eq!(&back[6..12], &bridge_mac(), "from the bridge's");
        assert_eq!(&back[26..30], &OUTSIDE, "the outside host's address kept");
        assert_eq!(&back[30..34], &GW_IP);
        assert_eq!(u16::from_be_bytes([back[36], back[37]]), CPORT);
        assert_eq!(back[22], 63, "TTL decremented");
        ip_ok(&back);
        // Another port of the range, or another peer port: not ours, passed untouched.
        let other = if sport == SNAT_PORT_MAX { sport - 1 } else { sport + 1 };
        for f in [in_tcp(other), {
            let mut f = in_tcp(sport);
            f[34..36].copy_from_slice(&81u16.to_be_bytes());
            f
        }] {
            let (v, o, m) = run(&mut bed, port, if xdp { Hook::Xdp } else { Hook::Tc }, &f);
            assert_eq!(v, if xdp { XDP_PASS } else { TC_ACT_OK });
            assert_eq!(m, one(FwdCounter::PassHost));
            assert_eq!(o, f);
        }
    }
}

#[test]
fn udp_with_and_without_checksum() {
    for checksum in [true, false] {
        let (mut bed, port) = gw_bed(GW_MASQUERADE);
        let f =
            ip_frame(bridge_mac(), GW_MAC, GW_IP, OUTSIDE, 17, &udp_dgram(GW_IP, OUTSIDE, CPORT, 53, b"q", checksum));
        let (v, out, m) = run(&mut bed, port, Hook::Gw, &f);
        assert_eq!((v, m), (TC_ACT_REDIRECT, one(FwdCounter::GwSnat)));
        assert_eq!(out[40..42] == [0, 0], !checksum, "a missing UDP checksum stays missing");
        ip_ok(&out);
        let sport = port_of(&out);
        let r =
            ip_frame(NODE_MAC, PEER_MAC, OUTSIDE, NODE_IP, 17, &udp_dgram(OUTSIDE, NODE_IP, 53, sport, b"a", checksum));
        let (v, back, m) = run(&mut bed, port, Hook::Tc, &r);
        assert_eq!((v, m), (TC_ACT_REDIRECT, one(FwdCounter::GwUnsnat)));
        assert_eq!(back[40..42] == [0, 0], !checksum);
        ip_ok(&back);
    }
}

#[test]
fn what_ebpf_does_not_masquerade_goes_to_the_kernel() {
    let (mut bed, port) = gw_bed(GW_MASQUERADE);
    // ICMP: the kernel path (routed, nftables masquerade).
    let ping = ip_frame(bridge_mac(), GW_MAC, GW_IP, OUTSIDE, 1, &icmp(8, 0, [0, 1, 0, 1], b"x"));
    // A destination the node does not route out of the underlay (no route at all here).
    let nowhere = ip_frame(
        bridge_mac(),
        GW_MAC,
        GW_IP,
        [198, 51, 100, 1],
        6,
        &tcp(GW_IP, [198, 51, 100, 1], CPORT, 80, 1, 0, TCP_SYN, b""),
    );
    // TTL 1: the kernel answers "time exceeded".
    let mut expiring = out_tcp(TCP_SYN);
    expiring[22] = 1;
    expiring[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&expiring[14..34]);
    expiring[24..26].copy_from_slice(&c.to_be_bytes());
    for f in [ping, nowhere, expiring] {
        let (v, out, m) = run(&mut bed, port, Hook::Gw, &f);
        assert_eq!((v, m), (TC_ACT_OK, one(FwdCounter::GwOut)));
        assert_eq!(out, f, "untouched");
    }
    assert!(bed.conntrack().is_empty(), "nothing tracked");
    // Masquerade off: TCP goes to the kernel too, and replies are not looked at.
    let (mut bed, port) = gw_bed(0);
    let (v, _, m) = run(&mut bed, port, Hook::Gw, &out_tcp(TCP_SYN));
    assert_eq!((v, m), (TC_ACT_OK, one(FwdCounter::GwOut)));
    let (v, _, m) = run(&mut bed, port, Hook::Tc, &in_tcp(SNAT_PORT_MIN));
    assert_eq!((v, m), (TC_ACT_OK, one(FwdCounter::PassHost)));
}

/// The ports a flow tries, in order (as nat.rs derives them).
fn tried(sport: u16, dport: u16) -> Vec<u16> {
    let h = flow_hash(k(GW_IP), k(OUTSIDE), 6, (sport.to_be() as u32) | (dport.to_be() as u32) << 16);
    let range = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
    (0..16u32).map(|i| (SNAT_PORT_MIN as u32 + h.wrapping_add(i.wrapping_mul(2_654_435_761)) % range) as u16).collect()
}

fn foreign(port: u16) -> (CtKey, CtEntry) {
    let key =
        CtKey { src: k(OUTSIDE), dst: k(NODE_IP), sport: 80u16.to_be(), dport: port.to_be(), proto: 6, _pad: [0; 3] };
    let e = CtEntry {
        nat_ip: k([172, 18, 0, 9]),
        backend: 0,
        flags: CT_SNAT | CT_REPLY,
        nat_port: 1234u16.to_be(),
        service: 0,
        last_seen: 0,
        peer: 0,
        macs: [0; 12],
    };
    (key, e)
}

#[test]
fn a_taken_port_is_skipped_and_a_full_range_hands_the_flow_to_the_kernel() {
    let (mut bed, port) = gw_bed(GW_MASQUERADE);
    let ports = tried(CPORT, 80);
    let (key, e) = foreign(ports[0]);
    bed.put_conntrack(key, e);
    let (_, out, _) = run(&mut bed, port, Hook::Gw, &out_tcp(TCP_SYN));
    assert_eq!(port_of(&out), ports[1], "the first port is another flow's: the next one");

    // Every port tried is another live flow's: the kernel path, for this packet and the flow's
    // next ones (never a port switched mid-flow).
    let (mut bed, port) = gw_bed(GW_MASQUERADE);
    for p in &ports {
        let (key, e) = foreign(*p);
        bed.put_conntrack(key, e);
    }
    let syn = out_tcp(TCP_SYN);
    let (v, out, m) = run(&mut bed, port, Hook::Gw, &syn);
    let both = vec![(FwdCounter::GwOut.name().to_string(), 1), (FwdCounter::GwSnatFull.name().to_string(), 1)];
    assert_eq!((v, m), (TC_ACT_OK, both), "handed to the node (gw-out), because the range was full");
    assert_eq!(out, syn, "untouched: nftables masquerades it");
    let (key, _) = foreign(ports[0]);
    bed.remove_conntrack(&key);
    let ack = out_tcp(TCP_ACK);
    let (v, out, m) = run(&mut bed, port, Hook::Gw, &ack);
    assert_eq!(
        (v, m),
        (TC_ACT_OK, one(FwdCounter::GwOut)),
        "a port is free now, yet the flow stays on the kernel path"
    );
    assert_eq!(out, ack);
}

#[test]
fn a_closed_flows_port_is_reused_once_idle() {
    let ports = tried(CPORT, 80);
    for (flags, idle, reused) in [(CT_CLOSING, true, true), (CT_CLOSING, false, false), (0, true, false)] {
        let (mut bed, port) = gw_bed(GW_MASQUERADE);
        let (key, mut e) = foreign(ports[0]);
        e.flags |= flags;
        // last_seen 0 is long ago (the clock counts from boot); now is not.
        e.last_seen = if idle { 0 } else { overlay::datapath::now_ns() };
        bed.put_conntrack(key, e);
        let (_, out, _) = run(&mut bed, port, Hook::Gw, &out_tcp(TCP_SYN));
        let want = if reused { ports[0] } else { ports[1] };
        assert_eq!(port_of(&out), want, "closing {} idle {idle}", flags != 0);
    }
}

#[test]
fn a_flow_whose_forward_entry_was_evicted_gets_its_port_back() {
    let (mut bed, port) = gw_bed(GW_MASQUERADE);
    let (_, out, _) = run(&mut bed, port, Hook::Gw, &out_tcp(TCP_SYN));
    let sport = port_of(&out);
    let fk =
        CtKey { src: k(GW_IP), dst: k(OUTSIDE), sport: CPORT.to_be(), dport: 80u16.to_be(), proto: 6, _pad: [0; 3] };
    bed.remove_conntrack(&fk);
    // Its own reply entry still holds the port: the same one again, not the next free one.
    let (_, again, _) = run(&mut bed, port, Hook::Gw, &out_tcp(TCP_ACK));
    assert_eq!(port_of(&again), sport);
}

/// "Fragmentation needed" from a router about the masqueraded packet `sent` (as it left the
/// node): the ICMP error quotes its IPv4 header and first 8 bytes.
fn frag_needed_about(sent: &[u8], router: [u8; 4]) -> Vec<u8> {
    let quoted = &sent[14..14 + 28];
    ip_frame(NODE_MAC, PEER_MAC, router, NODE_IP, 1, &icmp(3, 4, [0, 0, 0x05, 0x00], quoted))
}

#[test]
fn icmp_errors_about_a_masqueraded_flow_reach_its_container() {
    for xdp in [false, true] {
        let (mut bed, port) = gw_bed(GW_MASQUERADE);
        let (_, sent, _) = run(&mut bed, port, Hook::Gw, &out_tcp(TCP_SYN));
        let err = frag_needed_about(&sent, [192, 168, 50, 1]);
        let (v, back, m) = run(&mut bed, port, if xdp { Hook::Xdp } else { Hook::Tc }, &err);
        assert_eq!(v, if xdp { XDP_REDIRECT } else { TC_ACT_REDIRECT });
        assert_eq!(m, one(FwdCounter::GwUnsnat));
        assert_eq!(&back[0..6], &GW_MAC);
        assert_eq!(&back[30..34], &GW_IP, "to the container");
        assert_eq!(back[22], 63, "TTL decremented");
        assert_eq!(csum(&back[14..34]), 0, "outer IPv4 checksum");
        assert_eq!(csum(&back[34..]), 0, "ICMP checksum");
        let q = &back[42..];
        assert_eq!(&q[12..16], &GW_IP, "the quoted packet is the container's own again");
        assert_eq!(u16::from_be_bytes([q[20], q[21]]), CPORT);
        assert_eq!(csum(&q[..20]), 0, "quoted IPv4 checksum");
        assert_eq!(&back[38..42], &[0, 0, 0x05, 0x00], "the MTU kept");
        // About a flow nobody masqueraded: not ours.
        let mut stray = sent.clone();
        stray[34..36].copy_from_slice(&(port_of(&sent) ^ 1).to_be_bytes());
        let err = frag_needed_about(&stray, [192, 168, 50, 1]);
        let (v, o, m) = run(&mut bed, port, if xdp { Hook::Xdp } else { Hook::Tc }, &err);
        assert_eq!((v, m), (if xdp { XDP_PASS } else { TC_ACT_OK }, one(FwdCounter::PassHost)));
        assert_eq!(o, err);
    }
}

/// `f` with its IPv4 total length set to `tot` (header checksum fixed): what follows is then
/// trailer, not packet.
fn with_tot_len(mut f: Vec<u8>, tot: u16) -> Vec<u8> {
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

#[test]
fn reads_are_bounded_by_the_ipv4_length() {
    let (mut bed, port) = gw_bed(GW_MASQUERADE);
    // From the container: ports only in the trailer.
    let (v, _, m) = run(&mut bed, port, Hook::Gw, &with_tot_len(out_tcp(TCP_SYN), 20));
    assert_eq!((v, m), (TC_ACT_SHOT, vec![(format!("drop:{}", DropReason::BadLength.name()), 1)]));
    assert!(bed.conntrack().is_empty());
    // A real flow, then a "reply" whose ports are trailer: not ours, passed untouched.
    let (_, out, _) = run(&mut bed, port, Hook::Gw, &out_tcp(TCP_SYN));
    for hook in [Hook::Tc, Hook::Xdp] {
        let xdp = matches!(hook, Hook::Xdp);
        let f = with_tot_len(in_tcp(port_of(&out)), 24);
        let (v, o, m) = run(&mut bed, port, hook, &f);
        assert_eq!((v, m), (if xdp { XDP_PASS } else { TC_ACT_OK }, one(FwdCounter::PassHost)));
        assert_eq!(o, f);
        // An ICMP error whose quoted packet lies past its IPv4 length: not ours either.
        let err = with_tot_len(frag_needed_about(&out, [192, 168, 50, 1]), 40);
        let (v, o, m) = run(&mut bed, port, if xdp { Hook::Xdp } else { Hook::Tc }, &err);
        assert_eq!((v, m), (if xdp { XDP_PASS } else { TC_ACT_OK }, one(FwdCounter::PassHost)));
        assert_eq!(o, err);
    }
}

#[test]
fn a_flow_whose_port_went_to_another_flow_gets_a_new_one_and_a_lost_reply_entry_comes_back() {
    let (mut bed, port) = gw_bed(GW_MASQUERADE);
    let (_, out, _) = run(&mut bed, port, Hook::Gw, &out_tcp(TCP_SYN));
    let first = port_of(&out);
    let rk = |p: u16| CtKey {
        src: k(OUTSIDE),
        dst: k(NODE_IP),
        sport: 80u16.to_be(),
        dport: p.to_be(),
        proto: 6,
        _pad: [0; 3],
    };
    // Its reply entry lost (evicted): a new connection on the same 5-tuple keeps the port and
    // the entry is written again.
    bed.remove_conntrack(&rk(first));
    let (_, out, _) = run(&mut bed, port, Hook::Gw, &out_tcp(TCP_SYN));
    assert_eq!(port_of(&out), first);
    let back = bed.conntrack().into_iter().find(|(k, _)| *k == rk(first)).expect("reply entry written again").1;
    assert_eq!((back.nat_ip, u16::from_be(back.nat_port)), (k(GW_IP), CPORT));
    // The port now another flow's (reused after this one closed): a new connection on the old
    // 5-tuple gets another port, never the other flow's replies.
    let (key, e) = foreign(first);
    bed.put_conntrack(key, e);
    let (v, out, _) = run(&mut bed, port, Hook::Gw, &out_tcp(TCP_SYN));
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_ne!(port_of(&out), first, "the other flow's port");
    let owner = bed.conntrack().into_iter().find(|(k, _)| *k == rk(first)).unwrap().1;
    assert_eq!(owner.nat_ip, k([172, 18, 0, 9]), "the other flow keeps it");
}

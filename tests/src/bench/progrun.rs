//! Per-packet cost of each program path through BPF_PROG_TEST_RUN, beside the XDP_PASS floor (and,
//! for TC programs, the TC_ACT_OK floor: a TC test run also builds an skb).
//!
//! Paths that leave the packet as it was (pass, drops, local delivery) are timed with one
//! large `repeat`, which the kernel averages. Paths that rewrite the packet (encap, decap, ARP
//! reply) cannot be: the second repetition would see the rewritten packet. They are run once
//! per call, many calls, and the median taken; the floor is timed the same way for them.

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use overlay_common::maps::*;

use super::report::Report;
use crate::{bed::*, packet::*};

const SECTION: &str = "Per-packet cost (BPF_PROG_TEST_RUN)";

enum Prog {
    Xdp(&'static str),
    Tc(&'static str, u32),
}

fn once(bed: &mut Bed, prog: &Prog, data: &[u8], repeat: u32) -> Result<(u32, Duration)> {
    let mut out = vec![0u8; data.len() + 256];
    let r = match prog {
        Prog::Xdp(name) => {
            let p: &Xdp = bed.dp.ebpf().program(name).context("program")?.try_into()?;
            p.test_run(TestRunOptions { data_in: Some(data), data_out: Some(&mut out), repeat, ..Default::default() })?
        }
        Prog::Tc(name, ifindex) => {
            let mut ctx = [0u8; 192];
            ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
            let p: &SchedClassifier = bed.dp.ebpf().program(name).context("program")?.try_into()?;
            p.test_run(TestRunOptions {
                data_in: Some(data),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat,
                ..Default::default()
            })?
        }
    };
    Ok((r.return_value, r.duration))
}

/// ns per packet, averaged by the kernel over `repeat` runs.
fn repeated(bed: &mut Bed, prog: &Prog, data: &[u8], repeat: u32, verdict: u32) -> Result<f64> {
    let (v, d) = once(bed, prog, data, repeat)?;
    anyhow::ensure!(v == verdict, "unexpected verdict {v} (want {verdict})");
    Ok(d.as_nanos() as f64)
}

/// ns per packet: median of single runs (for paths that rewrite the packet).
fn single(bed: &mut Bed, prog: &Prog, data: &[u8], calls: u32, verdict: u32) -> Result<f64> {
    let mut v = Vec::with_capacity(calls as usize);
    for _ in 0..calls {
        let (r, d) = once(bed, prog, data, 1)?;
        anyhow::ensure!(r == verdict, "unexpected verdict {r} (want {verdict})");
        v.push(d.as_nanos() as f64);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[v.len() / 2])
}

pub fn run(report: &mut Report, opts: &super::Opts) -> Result<()> {
    let quick = opts.quick;
    let mut bed = bed();
    {
        let p: &mut Xdp = bed.dp.ebpf().program_mut(PROG_BENCH_FLOOR).context("floor program")?.try_into()?;
        p.load()?;
        let p: &mut SchedClassifier =
            bed.dp.ebpf().program_mut(PROG_BENCH_FLOOR_TC).context("TC floor program")?.try_into()?;
        p.load()?;
    }
    let repeat = if quick { 200_000 } else { 2_000_000 };
    let calls = if quick { 3_000 } else { 30_000 };
    let ul = bed.underlay_ifindex;
    let floor = Prog::Xdp(PROG_BENCH_FLOOR);
    let floor_tc = Prog::Tc(PROG_BENCH_FLOOR_TC, ul);
    let xdp = Prog::Xdp(PROG_UNDERLAY_XDP);
    let tc_ul = Prog::Tc(PROG_UNDERLAY_TC, ul);
    let ct = Prog::Tc(PROG_FROM_CONTAINER, A_IFINDEX);

    // B (on the peer node) to A, as the peer's VTEP sends it; `from` varies the outer source.
    let frame = |from: [u8; 4], inner_src: [u8; 4]| {
        let inner = inner_tcp_macs(MAC_A, MAC_B, inner_src, A, 80, 40000, 64);
        vxlan_frame(NODE_MAC, PEER_MAC, from, NODE_IP, 51000, 4789, VNI, &inner)
    };
    let vx = frame(PEER_IP, B);
    let rogue = frame(ROGUE_IP, B);
    let wrong_node = frame(THIRD_IP, B);
    let foreign_src = frame(PEER_IP, [8, 8, 8, 8]);
    let mut dns = eth(NODE_MAC, PEER_MAC, 0x0800);
    dns.extend(ipv4(PEER_IP, NODE_IP, 17, 8 + 20, 0, 0));
    dns.extend(udp(5353, 53, 20));
    dns.extend([7u8; 20]);
    let mut unknown_vni = vx.clone();
    unknown_vni[46..49].copy_from_slice(&[0, 3, 0xe7]);
    let mut not_local = vx.clone();
    not_local[80..84].copy_from_slice(&B);
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = vx.clone();
        f(&mut v);
        v
    };
    let bad_len = edit(&|f| f[39] ^= 1);
    let no_i = edit(&|f| f[42] = 0);
    let frag = edit(&|f| f[20..22].copy_from_slice(&0x2000u16.to_be_bytes()));
    let vlan = edit(&|f| f[62..64].copy_from_slice(&[0x81, 0]));
    let short = {
        let mut f = vx[..60].to_vec();
        fix_lengths(&mut f, 60);
        f
    };
    let spoofed = inner_tcp([10, 0, 9, 8], B, 40000, 80, 64);
    let mut ipv6 = eth(MAC_B, MAC_A, 0x86dd);
    ipv6.extend_from_slice(&[0x60; 40]);
    let arp_unknown = arp_request(MAC_A, A, [10, 0, 9, 99]);
    let to_b = inner_tcp(A, B, 40000, 80, 64);
    let to_c = inner_tcp(A, C, 40000, 80, 64);
    let cross = inner_tcp(A, OTHER_NET, 40000, 80, 64);
    let arp = arp_request(MAC_A, A, B);

    let rp = "repeat";
    let sg = "single runs";
    let f_rep = repeated(&mut bed, &floor, &dns, repeat, XDP_PASS)?;
    report.add(SECTION, "floor: XDP_PASS (repeat)", f_rep, "ns/pkt", None, rp);
    let f_one = single(&mut bed, &floor, &dns, calls, XDP_PASS)?;
    report.add(SECTION, "floor: XDP_PASS (single runs)", f_one, "ns/pkt", None, sg);

    let t_rep = repeated(&mut bed, &floor_tc, &dns, repeat, TC_ACT_OK)?;
    report.add(SECTION, "floor: TC_ACT_OK (repeat)", t_rep, "ns/pkt", None, rp);
    let t_one = single(&mut bed, &floor_tc, &dns, calls, TC_ACT_OK)?;
    report.add(SECTION, "floor: TC_ACT_OK (single runs)", t_one, "ns/pkt", None, sg);
    // A TC row's multiple of the TC floor: what the program costs beyond the skb a test run builds.
    let tc_note = |ns: f64, can_repeat: bool| {
        let (floor, how) = if can_repeat { (t_rep, rp) } else { (t_one, sg) };
        format!("{how}; {:.2}x floor: TC_ACT_OK ({how})", ns / floor.max(1e-9))
    };

    let fr = Some("floor: XDP_PASS (repeat)");
    let fs = Some("floor: XDP_PASS (single runs)");
    let rows: Vec<(&str, &Prog, &[u8], u32, bool)> = vec![
        ("xdp pass-through of host traffic", &xdp, &dns, XDP_PASS, true),
        ("tc pass-through of host traffic", &tc_ul, &dns, TC_ACT_OK, true),
        ("xdp drop unknown-vni", &xdp, &unknown_vni, XDP_DROP, true),
        ("xdp drop decap-not-local", &xdp, &not_local, XDP_DROP, true),
        ("tc drop unknown-vni", &tc_ul, &unknown_vni, TC_ACT_SHOT, true),
        ("xdp drop bad-length", &xdp, &bad_len, XDP_DROP, true),
        ("xdp drop vxlan-no-i-flag", &xdp, &no_i, XDP_DROP, true),
        ("xdp drop outer-fragment", &xdp, &frag, XDP_DROP, true),
        ("xdp drop inner-vlan", &xdp, &vlan, XDP_DROP, true),
        ("xdp drop bad-length (too short to carry VXLAN)", &xdp, &short, XDP_DROP, true),
        ("xdp drop unknown-vtep", &xdp, &rogue, XDP_DROP, true),
        ("tc drop unknown-vtep", &tc_ul, &rogue, TC_ACT_SHOT, true),
        ("xdp drop vtep-mismatch", &xdp, &wrong_node, XDP_DROP, true),
        ("xdp drop unknown-inner-source", &xdp, &foreign_src, XDP_DROP, true),
        ("container drop unknown-destination", &ct, &cross, TC_ACT_SHOT, true),
        ("container drop spoofed-source", &ct, &spoofed, TC_ACT_SHOT, true),
        ("container drop not-ipv4", &ct, &ipv6, TC_ACT_SHOT, true),
        ("container drop arp-unknown-target", &ct, &arp_unknown, TC_ACT_SHOT, true),
        ("container local delivery", &ct, &to_c, TC_ACT_REDIRECT, true),
        ("xdp decap to local endpoint", &xdp, &vx, XDP_REDIRECT, false),
        ("tc decap to local endpoint", &tc_ul, &vx, TC_ACT_REDIRECT, false),
        ("container encap to remote endpoint, next hop from the FIB", &ct, &to_b, TC_ACT_REDIRECT, false),
        ("container ARP reply", &ct, &arp, TC_ACT_REDIRECT, false),
    ];
    for (name, prog, data, verdict, can_repeat) in rows {
        let (ns, reference, note) = if can_repeat {
            (repeated(&mut bed, prog, data, repeat, verdict)?, fr, rp)
        } else {
            (single(&mut bed, prog, data, calls, verdict)?, fs, sg)
        };
        let note = match prog {
            Prog::Tc(..) => tc_note(ns, can_repeat),
            Prog::Xdp(_) => note.to_string(),
        };
        report.add(SECTION, name, ns, "ns/pkt", reference, &note);
    }
    // What the agent sets up: the next hop towards the peer from its cache.
    let ul = bed.underlay_ifindex;
    bed.set_peer_nexthop(Some(NextHop { ifindex: ul, dmac: PEER_MAC, smac: NODE_MAC }));
    let cached = single(&mut bed, &ct, &to_b, calls, TC_ACT_REDIRECT)?;
    let note = tc_note(cached, false);
    report.add(SECTION, "container encap to remote endpoint, cached next hop", cached, "ns/pkt", fs, &note);
    vip_rows(report, calls, quick)?;
    let targets = [
        ("xdp decap to local endpoint", 2.0),
        ("tc decap to local endpoint", 2.0),
        ("container encap to remote endpoint, cached next hop", 3.0),
    ];
    for (row, goal) in targets {
        if let Some(v) = report.get(SECTION, row) {
            let x = v / f_one;
            report.target(
                &format!("{row}: multiple of the XDP_PASS floor"),
                &format!("<= {goal}x"),
                format!("{x:.2}x"),
                x <= goal,
            );
        }
    }
    Ok(())
}

/// A TCP segment from A to `dst` (MAC `dmac`), client port `sport`, with `flags`.
fn tcp_from_a(dst: [u8; 4], dmac: [u8; 6], sport: u16, flags: u8) -> Vec<u8> {
    let mut f = inner_tcp_macs(dmac, MAC_A, A, dst, sport, TCP_PORT, 64);
    f[47] = flags;
    f
}

/// Service VIP paths beside the same packet without balancing (A to the local backend C,
/// single runs: DNAT rewrites the packet). The VIP's backend is the local C, so the rows differ
/// by the balancing alone.
fn vip_rows(report: &mut Report, calls: u32, quick: bool) -> Result<()> {
    let mut bed = bed_with_table(SCHED_MAGLEV, &[ID_C]);
    let ct = Prog::Tc(PROG_FROM_CONTAINER, A_IFINDEX);
    let from_c = Prog::Tc(PROG_FROM_CONTAINER, C_IFINDEX);
    let direct = tcp_from_a(C, MAC_C, 40000, 0x10);
    let base = "container local delivery (single runs)";
    let d = single(&mut bed, &ct, &direct, calls, TC_ACT_REDIRECT)?;
    report.add(SECTION, base, d, "ns/pkt", None, "single runs; the same packet as the VIP rows, without balancing");
    let hit = |bed: &mut Bed| -> Result<f64> {
        let syn = tcp_from_a(VIP, VIP_MAC, 40001, 0x02);
        once(bed, &ct, &syn, 1)?;
        single(bed, &ct, &tcp_from_a(VIP, VIP_MAC, 40001, 0x10), calls, TC_ACT_REDIRECT)
    };
    let h10 = hit(&mut bed)?;
    let row_hit = "container to a VIP, conntrack hit (DNAT, local backend)";
    report.add(SECTION, row_hit, h10, "ns/pkt", Some(base), "single runs");
    // A new flow each run: a Maglev pick and two conntrack inserts.
    let mut v = Vec::with_capacity(calls as usize);
    for i in 0..calls.min(60_000) {
        let (r, dur) = once(&mut bed, &ct, &tcp_from_a(VIP, VIP_MAC, 1024 + (i % 60_000) as u16, 0x02), 1)?;
        anyhow::ensure!(r == TC_ACT_REDIRECT, "new flow: verdict {r}");
        v.push(dur.as_nanos() as f64);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    report.add(
        SECTION,
        "container to a VIP, new flow (Maglev pick, conntrack insert)",
        v[v.len() / 2],
        "ns/pkt",
        Some(base),
        "single runs, a new client port each",
    );
    // The backend's reply to the client on the same node: reverse NAT in C's program.
    let mut reply = inner_tcp_macs(MAC_A, MAC_C, C, A, TCP_PORT, 40001, 64);
    reply[47] = 0x10;
    let rv = single(&mut bed, &from_c, &reply, calls, TC_ACT_REDIRECT)?;
    report.add(SECTION, "backend reply to a VIP client, reverse NAT (local)", rv, "ns/pkt", Some(base), "single runs");

    // The same hit with 10,000 services in the maps: lookups must not grow with the count.
    let n = if quick { 1_000 } else { 10_000 };
    let mut c = bed.contents.clone();
    for i in 0..n as u32 {
        let key =
            ServiceKey { vni: VNI2, ip: k([10, 0, 10, 0]) ^ i.to_be(), port: TCP_PORT.to_be(), proto: 6, _pad: 0 };
        c.services.insert(
            key,
            ServiceInfo { id: 100 + i, offset: TABLE_OFFSET, size: 1, scheduler: SCHED_MAGLEV, flags: 0, target: 0 },
        );
    }
    bed.apply(c);
    let hn = hit(&mut bed)?;
    let row_n = format!("container to a VIP, conntrack hit, {n} more services in the maps");
    report.add(SECTION, &row_n, hn, "ns/pkt", Some(row_hit), "single runs");
    let x = hn / h10.max(1e-9);
    report.target(
        &format!("VIP per-packet cost with {n} more services in the maps vs without"),
        "within 10%",
        format!("{x:.2}x"),
        (0.9..=1.1).contains(&x),
    );
    Ok(())
}

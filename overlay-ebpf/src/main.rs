//! Kernel programs of the overlay. Entry points are thin: each calls a stage function that
//! returns `Result<action, DropReason>`, and every `Err` is counted before the packet is dropped.
#![no_std]
#![no_main]
// atomic_xadd for shared counters: the BPF target has no AtomicU64 (no compare-and-swap).
#![allow(internal_features)]
#![feature(core_intrinsics)]

// The packet path, in the order a packet meets it:
mod arp; // ARP answered from the maps
mod container; // container side: what a container sends (MAC/IP checks, local delivery)
mod decap; // underlay side: VXLAN to us, checked, to the local container
mod encap; // MTU check, next hop, outer headers
mod gwbridge; // docker_gwbridge side: what a container sends there (ICC block, host-mode replies)
mod hdr; // header builders shared by encap and icmp
mod icmp; // "destination unreachable" back to the sender
mod lb; // service VIPs: conntrack, schedulers, DNAT and reverse NAT
mod maps; // every map
mod mesh; // the ingress routing mesh: published ports on the underlay, replies back through the entry node
mod nat; // docker_gwbridge masquerade: containers' TCP/UDP out with the node's address, replies back in
mod parse; // bounds-checked access, header sizes
mod stats; // per-CPU counters

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// TC ingress on the host end of a container's veth: everything the container sends.
#[classifier]
pub fn ov_from_container(ctx: TcContext) -> i32 {
    match container::from_container(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            stats::drop(reason);
            TC_ACT_SHOT
        }
    }
}

/// TC ingress on the host end of a container's docker_gwbridge veth.
#[classifier]
pub fn ov_from_gwbridge(ctx: TcContext) -> i32 {
    match gwbridge::from_gwbridge(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            stats::drop(reason);
            TC_ACT_SHOT
        }
    }
}

/// XDP on the underlay interface: decapsulate our VXLAN, pass everything else.
#[xdp]
pub fn ov_underlay_xdp(ctx: XdpContext) -> u32 {
    match decap::underlay_xdp(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            stats::drop(reason);
            xdp_action::XDP_DROP
        }
    }
}

/// The same decapsulation as a TC ingress program (for devices where XDP costs more).
#[classifier]
pub fn ov_underlay_tc(ctx: TcContext) -> i32 {
    match decap::underlay_tc(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            stats::drop(reason);
            TC_ACT_SHOT
        }
    }
}

/// Benchmark floor: the cheapest XDP program there is. Never attached by the agent; the
/// benchmarks time it beside the real paths so results read as multiples of it.
#[xdp]
pub fn ov_bench_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The TC floor: a TC test run also allocates and frees an skb, which no XDP run pays.
#[classifier]
pub fn ov_bench_floor_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

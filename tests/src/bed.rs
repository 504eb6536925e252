//! A datapath loaded in a namespace of its own, with maps filled for a small cluster, for
//! BPF_PROG_TEST_RUN (the tests and the per-packet benchmarks share it).
//!
//! The namespace holds a veth underlay (192.168.50.11, forwarding on) with a permanent
//! neighbour entry for the peer VTEP 192.168.50.12, so the encapsulation's FIB lookup is
//! deterministic.

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use overlay::{
    datapath::{Contents, Counters, Datapath},
    netns::Entered,
};
use overlay_common::maps::*;

use crate::{packet::*, Netns};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

pub const NODE_IP: [u8; 4] = [192, 168, 50, 11];
pub const PEER_IP: [u8; 4] = [192, 168, 50, 12];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
/// Another cluster node, which hosts no endpoint the tests use.
pub const THIRD_IP: [u8; 4] = [192, 168, 50, 13];
/// A host on the underlay that is not a node.
pub const ROGUE_IP: [u8; 4] = [192, 168, 50, 66];
pub const A: [u8; 4] = [10, 0, 9, 3]; // local, behind ifindex 1 (lo stands in for its veth)
pub const B: [u8; 4] = [10, 0, 9, 4]; // remote, on the peer node
pub const C: [u8; 4] = [10, 0, 9, 5]; // local, other veth
pub const OTHER_NET: [u8; 4] = [10, 0, 10, 3]; // local, but on another network
pub const VNI: u32 = 4097;
pub const VNI2: u32 = 4098;
pub const A_IFINDEX: u32 = 1;
pub const C_IFINDEX: u32 = 42;

pub fn k(ip: [u8; 4]) -> u32 {
    u32::from_ne_bytes(ip)
}

/// Field order matters: the datapath goes first, then the thread leaves the namespace,
/// then the namespace is removed.
pub struct Bed {
    pub dp: Datapath,
    /// What OV_NEXTHOPS holds (empty by default: encapsulation asks the FIB).
    pub nexthops: rustc_hash::FxHashMap<u32, NextHop>,
    pub _in: Entered,
    pub _ns: Netns,
    pub underlay_ifindex: u32,
}

pub fn bed() -> Bed {
    let ns = Netns::new("ptr").unwrap();
    ns.sh(
        "ip link add ul0 type veth peer name ul1 && ip link set ul1 up && ip link set ul0 address 02:00:00:00:00:11 && \
         ip addr add 192.168.50.11/24 dev ul0 && ip link set ul0 up && \
         ip neigh add 192.168.50.12 lladdr 02:00:00:00:00:12 dev ul0 nud permanent && \
         sysctl -qw net.ipv4.conf.ul0.forwarding=1",
    )
    .unwrap();
    let underlay_ifindex = ns.ifindex("ul0").unwrap();
    let entered = Entered::enter(&ns.path()).unwrap();
    let mut dp = Datapath::open(None).unwrap();
    let mut c = Contents {
        config: Config { node_ip: k(NODE_IP), underlay_ifindex, underlay_mtu: 1500, vxlan_port: 4789, _pad: 0 },
        ..Default::default()
    };
    c.nodes.insert(k(PEER_IP), NodeInfo { _reserved: 0 });
    c.nodes.insert(k(THIRD_IP), NodeInfo { _reserved: 0 });
    c.networks.insert(VNI, NetworkInfo { mtu: 1450, _reserved: 0 });
    c.networks.insert(VNI2, NetworkInfo { mtu: 1450, _reserved: 0 });
    c.local_ifaces.insert(A_IFINDEX, LocalIface { vni: VNI, ip: k(A), mac: MAC_A, flags: 0 });
    let local = |ifindex, mac| EndpointInfo { mac, flags: EP_LOCAL, ifindex, vtep: 0 };
    c.endpoints.insert(EndpointKey { vni: VNI, ip: k(A) }, local(A_IFINDEX, MAC_A));
    c.endpoints.insert(EndpointKey { vni: VNI, ip: k(C) }, local(C_IFINDEX, [2, 0x42, 10, 0, 9, 5]));
    c.endpoints.insert(EndpointKey { vni: VNI2, ip: k(OTHER_NET) }, local(43, [2, 0x42, 10, 0, 10, 3]));
    c.endpoints.insert(
        EndpointKey { vni: VNI, ip: k(B) },
        EndpointInfo { mac: MAC_B, flags: 0, ifindex: 0, vtep: k(PEER_IP) },
    );
    dp.apply(&Contents::default(), &c).unwrap();
    Bed { dp, nexthops: Default::default(), _in: entered, _ns: ns, underlay_ifindex }
}

impl Bed {
    pub fn tc(&mut self, prog: &str, data: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        self.tc_gso(prog, data, ifindex, 0)
    }

    /// Like `tc`, for a GSO packet whose segments carry `gso_size` bytes of payload.
    pub fn tc_gso(&mut self, prog: &str, data: &[u8], ifindex: u32, gso_size: u32) -> (u32, Vec<u8>) {
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes()); // __sk_buff.ifindex
        if gso_size != 0 {
            ctx[164..168].copy_from_slice(&2u32.to_ne_bytes()); // __sk_buff.gso_segs
            ctx[176..180].copy_from_slice(&gso_size.to_ne_bytes()); // __sk_buff.gso_size
        }
        let mut out = vec![0u8; data.len() + 256];
        let p: &SchedClassifier = self.dp.ebpf().program(prog).unwrap().try_into().unwrap();
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(data),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("test run of {prog} with {} bytes: {e}", data.len()));
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    pub fn xdp(&mut self, data: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; data.len() + 256];
        let p: &Xdp = self.dp.ebpf().program(PROG_UNDERLAY_XDP).unwrap().try_into().unwrap();
        let r =
            p.test_run(TestRunOptions { data_in: Some(data), data_out: Some(&mut out), ..Default::default() }).unwrap();
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    pub fn from_container(&mut self, data: &[u8]) -> (u32, Vec<u8>) {
        self.tc(PROG_FROM_CONTAINER, data, A_IFINDEX)
    }

    /// Put (or, with `None`, remove) the cached next hop towards the peer VTEP.
    pub fn set_peer_nexthop(&mut self, nh: Option<NextHop>) {
        let key = k(PEER_IP);
        let mut want = rustc_hash::FxHashMap::default();
        if let Some(nh) = nh {
            want.insert(key, nh);
        }
        let current = std::mem::take(&mut self.nexthops);
        self.dp.apply_nexthops(&current, &want).unwrap();
        self.nexthops = want;
    }

    pub fn counters(&mut self) -> Counters {
        self.dp.counters().unwrap()
    }
}

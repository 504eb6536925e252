//! A datapath loaded in a namespace of its own, with maps filled for a small cluster, for
//! BPF_PROG_TEST_RUN (the tests and the per-packet benchmarks share it).
//!
//! The namespace holds a veth underlay (192.168.50.11, forwarding on) with a permanent
//! neighbour entry for the peer VTEP 192.168.50.12, so the encapsulation's FIB lookup is
//! deterministic.

use aya::{
    maps::HashMap as BpfHashMap,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use overlay::{
    datapath::{Contents, Counters, Datapath, Table},
    netns::Entered,
};
use overlay_common::{maps::*, vxlan::default_mac};

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
    /// What the maps hold (but OV_NEXTHOPS, see `nexthops`): the starting point of `apply`.
    pub contents: Contents,
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
        config: Config {
            node_ip: k(NODE_IP),
            underlay_ifindex,
            underlay_mtu: 1500,
            vxlan_port: 4789,
            _pad: 0,
            ingress_vni: 0,
        },
        ..Default::default()
    };
    c.nodes.insert(k(PEER_IP), NodeInfo { _reserved: 0 });
    c.nodes.insert(k(THIRD_IP), NodeInfo { _reserved: 0 });
    c.networks.insert(VNI, NetworkInfo { mtu: 1450, flags: 0, gateway: 0 });
    c.networks.insert(VNI2, NetworkInfo { mtu: 1450, flags: 0, gateway: 0 });
    c.local_ifaces.insert(A_IFINDEX, LocalIface { vni: VNI, ip: k(A), mac: MAC_A, flags: 0 });
    let local = |ifindex, mac| EndpointInfo { mac, flags: EP_LOCAL, ifindex, vtep: 0 };
    c.endpoints.insert(EndpointKey { vni: VNI, ip: k(A) }, local(A_IFINDEX, MAC_A));
    c.endpoints.insert(EndpointKey { vni: VNI, ip: k(C) }, local(C_IFINDEX, MAC_C));
    c.endpoints.insert(EndpointKey { vni: VNI2, ip: k(OTHER_NET) }, local(43, [2, 0x42, 10, 0, 10, 3]));
    c.endpoints.insert(
        EndpointKey { vni: VNI, ip: k(B) },
        EndpointInfo { mac: MAC_B, flags: 0, ifindex: 0, vtep: k(PEER_IP) },
    );
    dp.apply(&Contents::default(), &c).unwrap();
    Bed { dp, nexthops: Default::default(), contents: c, _in: entered, _ns: ns, underlay_ifindex }
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

    /// Bring the maps to `desired` (a diff from what they hold, as the agent applies it).
    pub fn apply(&mut self, desired: Contents) {
        self.dp.apply(&self.contents, &desired).unwrap();
        self.contents = desired;
    }

    /// Every conntrack entry (both directions), read straight from OV_CT.
    pub fn conntrack(&mut self) -> Vec<(CtKey, CtEntry)> {
        let map = self.dp.ebpf().map(MAP_CT).unwrap();
        let m = BpfHashMap::<_, CtKey, CtEntry>::try_from(map).unwrap();
        m.iter().map(|kv| kv.unwrap()).collect()
    }

    /// The container-side program, as backend C (a service backend on this node) sends.
    pub fn from_backend_c(&mut self, data: &[u8]) -> (u32, Vec<u8>) {
        self.tc(PROG_FROM_CONTAINER, data, C_IFINDEX)
    }
}

// ---------------------------------------------------------------------------------------
// A service VIP on the bed's network (see `bed_with_service`)

/// The service's VIP on VNI, and its MAC (Docker's rule, as the agent writes it).
pub const VIP: [u8; 4] = [10, 0, 9, 100];
pub const VIP_MAC: [u8; 6] = default_mac(VIP);
/// The service's ports: TCP 80 and UDP 53.
pub const TCP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 53;
/// The VIP's service id (its rr cursor's index).
pub const SERVICE_ID: u32 = 3;
/// Backend ids: C on this node, B on the peer node.
pub const ID_C: u32 = 10;
pub const ID_B: u32 = 11;
/// Where the service's table starts in OV_MAGLEV.
pub const TABLE_OFFSET: u32 = 1000;
/// The default table: 7 slots, in no regular pattern, so that a wrong slot shows.
pub const TABLE: [u32; 7] = [ID_C, ID_B, ID_B, ID_C, ID_B, ID_C, ID_C];

pub fn service_key(vni: u32, vip: [u8; 4], proto: u8, port: u16) -> ServiceKey {
    ServiceKey { vni, ip: k(vip), port: port.to_be(), proto, _pad: 0 }
}

/// `bed()` with a service VIP (10.0.9.100, TCP 80 and UDP 53) on VNI balanced by `scheduler`
/// (SCHED_*) over the default `TABLE`: backends C (local, ifindex C_IFINDEX) and B (on the peer
/// node). A is the client.
pub fn bed_with_service(scheduler: u8) -> Bed {
    bed_with_table(scheduler, &TABLE)
}

/// `bed_with_service` with the given table of backend ids (ID_C, ID_B).
pub fn bed_with_table(scheduler: u8, table: &[u32]) -> Bed {
    let mut bed = bed();
    // C sends too (its replies): a test run on an ifindex needs a device with that index.
    bed._ns.sh(&format!("ip link add c0 index {C_IFINDEX} type veth peer name c1")).unwrap();
    let mut c = bed.contents.clone();
    c.endpoints.insert(
        EndpointKey { vni: VNI, ip: k(VIP) },
        EndpointInfo { mac: VIP_MAC, flags: EP_VIP, ifindex: 0, vtep: 0 },
    );
    for ip in [C, B] {
        c.endpoints.get_mut(&EndpointKey { vni: VNI, ip: k(ip) }).unwrap().flags |= EP_BACKEND;
    }
    c.local_ifaces.insert(C_IFINDEX, LocalIface { vni: VNI, ip: k(C), mac: MAC_C, flags: EP_BACKEND });
    c.backends.insert(ID_C, BackendInfo { ip: k(C), weight: 1 });
    c.backends.insert(ID_B, BackendInfo { ip: k(B), weight: 1 });
    let info = ServiceInfo { id: SERVICE_ID, offset: 0, size: 0, scheduler, flags: 0, target: 0 };
    c.services.insert(service_key(VNI, VIP, 6, TCP_PORT), info);
    c.services.insert(service_key(VNI, VIP, 17, UDP_PORT), info);
    set_table(&mut c, TABLE_OFFSET, table);
    bed.apply(c);
    bed
}

/// Give the VIP's service (every port of it) this table at `offset`, as the agent switches
/// tables; an empty table leaves the service with no backend for new connections.
pub fn set_table(c: &mut Contents, offset: u32, table: &[u32]) {
    for (key, s) in c.services.iter_mut() {
        if key.vni == VNI && key.ip == k(VIP) {
            s.offset = if table.is_empty() { 0 } else { offset };
            s.size = table.len() as u32;
        }
    }
    c.tables.remove(&SERVICE_ID);
    if !table.is_empty() {
        c.tables.insert(SERVICE_ID, Table { offset, entries: table.to_vec() });
    }
}

/// Keep the calling thread on the CPU it runs on: per-CPU state (the rr cursors) then stays
/// the same across test runs.
pub fn pin_to_this_cpu() {
    // SAFETY: plain system calls on this thread, with a cpu_set_t we own.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu failed");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "sched_setaffinity");
    }
}

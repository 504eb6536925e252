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
pub const XDP_TX: u32 = 3;
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
        self.xdp_on(data, 0)
    }

    /// Like `xdp`, for a frame received on `ingress_ifindex` (0: the kernel's default, the
    /// loopback device of the namespace).
    pub fn xdp_on(&mut self, data: &[u8], ingress_ifindex: u32) -> (u32, Vec<u8>) {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(data.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let mut out = vec![0u8; data.len() + 256];
        let p: &Xdp = self.dp.ebpf().program(PROG_UNDERLAY_XDP).unwrap().try_into().unwrap();
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(data),
                data_out: Some(&mut out),
                ctx_in: if ingress_ifindex == 0 { None } else { Some(&ctx) },
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("XDP test run with {} bytes on ifindex {ingress_ifindex}: {e}", data.len()));
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    pub fn from_container(&mut self, data: &[u8]) -> (u32, Vec<u8>) {
        self.tc(PROG_FROM_CONTAINER, data, A_IFINDEX)
    }

    /// Put (or, with `None`, remove) the cached next hop towards the peer VTEP.
    pub fn set_peer_nexthop(&mut self, nh: Option<NextHop>) {
        self.set_nexthop(PEER_IP, nh);
    }

    /// Put (or, with `None`, remove) the cached next hop towards `vtep`; others stay.
    pub fn set_nexthop(&mut self, vtep: [u8; 4], nh: Option<NextHop>) {
        let mut want = self.nexthops.clone();
        match nh {
            Some(nh) => want.insert(k(vtep), nh),
            None => want.remove(&k(vtep)),
        };
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

    /// Write one conntrack entry straight into OV_CT (a state the datapath would reach some
    /// other way, e.g. on another node).
    pub fn put_conntrack(&mut self, key: CtKey, entry: CtEntry) {
        let map = self.dp.ebpf().map_mut(MAP_CT).unwrap();
        let mut m = BpfHashMap::<_, CtKey, CtEntry>::try_from(map).unwrap();
        m.insert(key, entry, 0).unwrap();
    }

    /// Remove one conntrack entry from OV_CT (as the LRU evicts one direction of a flow alone).
    pub fn remove_conntrack(&mut self, key: &CtKey) {
        let map = self.dp.ebpf().map_mut(MAP_CT).unwrap();
        let mut m = BpfHashMap::<_, CtKey, CtEntry>::try_from(map).unwrap();
        m.remove(key).unwrap();
    }

    /// A published port's counters, read straight from OV_PORT_STATS (`None`: no entry).
    pub fn port_stats(&mut self, id: u32) -> Option<PortStats> {
        let map = self.dp.ebpf().map(MAP_PORT_STATS).unwrap();
        let m = BpfHashMap::<_, u32, PortStats>::try_from(map).unwrap();
        match m.get(&id, 0) {
            Ok(s) => Some(s),
            Err(aya::maps::MapError::KeyNotFound) => None,
            Err(e) => panic!("reading {MAP_PORT_STATS}[{id}]: {e}"),
        }
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

// ---------------------------------------------------------------------------------------
// The routing mesh: an ingress network and published ports (see `bed_with_mesh`)

/// The ingress network (Docker's is VNI 4096, 10.0.0.0/24; another subnet here), its MTU and
/// its gateway, which backends send their replies to outside clients through.
pub const ING_VNI: u32 = 4096;
pub const ING_MTU: u32 = 1450;
pub const GW: [u8; 4] = [10, 255, 0, 1];
pub const GW_MAC: [u8; 6] = default_mac(GW);
/// Tasks on the ingress network: L a backend on this node, R a backend on the peer node, N a
/// container on this node that backs nothing.
pub const ING_L: [u8; 4] = [10, 255, 0, 5];
pub const ING_R: [u8; 4] = [10, 255, 0, 4];
pub const ING_N: [u8; 4] = [10, 255, 0, 6];
pub const MAC_L: [u8; 6] = default_mac(ING_L);
pub const MAC_R: [u8; 6] = default_mac(ING_R);
pub const MAC_N: [u8; 6] = default_mac(ING_N);
pub const L_IFINDEX: u32 = 44;
pub const N_IFINDEX: u32 = 45;
/// An outside client, and the router it comes through (the source MAC of its frames).
pub const CLIENT: [u8; 4] = [203, 0, 113, 7];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
/// Published ports and the ports the backends listen on.
pub const PUB_TCP: u16 = 8080;
pub const TARGET_TCP: u16 = 80;
pub const PUB_UDP: u16 = 5353;
pub const TARGET_UDP: u16 = 53;
/// The published ports' service ids (their OV_PORT_STATS keys) and their tables' offsets.
pub const MESH_TCP_ID: u32 = 7;
pub const MESH_UDP_ID: u32 = 8;
pub const MESH_TCP_OFFSET: u32 = 2000;
pub const MESH_UDP_OFFSET: u32 = 2100;
/// Backend ids of L and R.
pub const ID_L: u32 = 20;
pub const ID_R: u32 = 21;
/// Both ports' table: 7 slots in no regular pattern, so that a wrong slot shows.
pub const MESH_TABLE: [u32; 7] = [ID_L, ID_R, ID_R, ID_L, ID_R, ID_L, ID_L];

/// A published port's OV_SERVICES key: VNI 0, address 0, the port in network order.
pub fn published_key(proto: u8, port: u16) -> ServiceKey {
    ServiceKey { vni: 0, ip: 0, port: port.to_be(), proto, _pad: 0 }
}

/// `bed()` with the routing mesh: the ingress network (VNI ING_VNI, MTU 1450, gateway GW,
/// answered to ARP), tasks L (local backend), R (remote backend on the peer) and N (local, no
/// backend), TCP 8080 -> 80 and UDP 5353 -> 53 published over `MESH_TABLE` (Maglev).
/// OV_PORT_STATS gets each port's entry from `apply`, as the agent's.
pub fn bed_with_mesh() -> Bed {
    bed_with_mesh_table(SCHED_MAGLEV, &MESH_TABLE)
}

pub fn bed_with_mesh_table(scheduler: u8, table: &[u32]) -> Bed {
    let mut bed = bed();
    // L and N send too: a test run on an ifindex needs a device with that index.
    bed._ns
        .sh(&format!(
            "ip link add l0 index {L_IFINDEX} type veth peer name l1 && \
             ip link add n0 index {N_IFINDEX} type veth peer name n1"
        ))
        .unwrap();
    let mut c = bed.contents.clone();
    c.config.ingress_vni = ING_VNI;
    c.networks.insert(ING_VNI, NetworkInfo { mtu: ING_MTU, flags: NET_INGRESS, gateway: k(GW) });
    let ep = |ip| EndpointKey { vni: ING_VNI, ip: k(ip) };
    c.endpoints.insert(ep(GW), EndpointInfo { mac: GW_MAC, flags: EP_GATEWAY, ifindex: 0, vtep: 0 });
    c.endpoints
        .insert(ep(ING_L), EndpointInfo { mac: MAC_L, flags: EP_LOCAL | EP_BACKEND, ifindex: L_IFINDEX, vtep: 0 });
    c.endpoints.insert(ep(ING_N), EndpointInfo { mac: MAC_N, flags: EP_LOCAL, ifindex: N_IFINDEX, vtep: 0 });
    c.endpoints.insert(ep(ING_R), EndpointInfo { mac: MAC_R, flags: EP_BACKEND, ifindex: 0, vtep: k(PEER_IP) });
    c.local_ifaces.insert(L_IFINDEX, LocalIface { vni: ING_VNI, ip: k(ING_L), mac: MAC_L, flags: EP_BACKEND });
    c.local_ifaces.insert(N_IFINDEX, LocalIface { vni: ING_VNI, ip: k(ING_N), mac: MAC_N, flags: 0 });
    c.backends.insert(ID_L, BackendInfo { ip: k(ING_L), weight: 1 });
    c.backends.insert(ID_R, BackendInfo { ip: k(ING_R), weight: 1 });
    for (proto, port, target, id) in [(6, PUB_TCP, TARGET_TCP, MESH_TCP_ID), (17, PUB_UDP, TARGET_UDP, MESH_UDP_ID)] {
        let info = ServiceInfo { id, offset: 0, size: 0, scheduler, flags: SVC_PUBLISHED, target: target.to_be() };
        c.services.insert(published_key(proto, port), info);
    }
    set_published_table(&mut c, MESH_TCP_ID, MESH_TCP_OFFSET, table);
    set_published_table(&mut c, MESH_UDP_ID, MESH_UDP_OFFSET, table);
    bed.apply(c);
    bed
}

/// Give the published port of service `id` this table at `offset` (empty: no backend takes new
/// connections).
pub fn set_published_table(c: &mut Contents, id: u32, offset: u32, table: &[u32]) {
    for (key, s) in c.services.iter_mut() {
        if key.vni == 0 && key.ip == 0 && s.id == id {
            s.offset = if table.is_empty() { 0 } else { offset };
            s.size = table.len() as u32;
        }
    }
    c.tables.remove(&id);
    if !table.is_empty() {
        c.tables.insert(id, Table { offset, entries: table.to_vec() });
    }
}

/// Every counter that moved between two readings, by name (drops as "drop:<reason>"), with its
/// increase, sorted: what a test run asserts exactly.
pub fn moved(before: &Counters, after: &Counters) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for ((n, a), (_, b)) in after.forwarded.iter().zip(&before.forwarded) {
        if a != b {
            v.push((n.clone(), a - b));
        }
    }
    for ((n, a), (_, b)) in after.dropped.iter().zip(&before.dropped) {
        if a != b {
            v.push((format!("drop:{n}"), a - b));
        }
    }
    v.sort();
    v
}

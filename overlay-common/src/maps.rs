//! Map names, sizes, keys and values. Addresses are stored in network byte order
//! (as they appear in packets) so the datapath compares them without swapping.

/// Datapath configuration of this node: one entry at index 0.
pub const MAP_CONFIG: &str = "OV_CONFIG";
/// (VNI, IPv4) of every endpoint in the cluster -> where it is.
pub const MAP_ENDPOINTS: &str = "OV_ENDPOINTS";
/// VNI -> network (decap accepts only known VNIs).
pub const MAP_NETWORKS: &str = "OV_NETWORKS";
/// Host-side veth ifindex -> the local endpoint behind it.
pub const MAP_LOCAL_IFACES: &str = "OV_LOCAL_IFACES";
/// Underlay address (network order) of every cluster node -> `NodeInfo`: decapsulation
/// accepts VXLAN only from these.
pub const MAP_NODES: &str = "OV_NODES";
/// VTEP address (network order) -> `NextHop`: the outer Ethernet header towards that node, from
/// the kernel's route and neighbour tables, kept fresh by the agent. Encapsulation uses it
/// instead of a FIB lookup; a missing or stale entry falls back to the FIB.
pub const MAP_NEXTHOPS: &str = "OV_NEXTHOPS";
/// Per-CPU drop counters indexed by `DropReason`.
pub const MAP_DROPS: &str = "OV_DROPS";
/// Per-CPU forward counters indexed by `FwdCounter`.
pub const MAP_FWD: &str = "OV_FWD";
/// (VNI, VIP, port, protocol) -> `ServiceInfo`: the balanced service behind a VIP port.
pub const MAP_SERVICES: &str = "OV_SERVICES";
/// Backend id -> `BackendInfo`. Ids are the values in the lookup tables and in conntrack.
pub const MAP_BACKENDS: &str = "OV_BACKENDS";
/// Every service's lookup table side by side (backend ids); `ServiceInfo` says where its
/// table is. A new table is written beside the old one and switched in one map update.
pub const MAP_MAGLEV: &str = "OV_MAGLEV";
/// Connection tracking (LRU): one entry per direction of every balanced flow.
pub const MAP_CT: &str = "OV_CT";
/// Per-CPU round-robin cursor of each service (`rr`, `wrr`), by service id.
pub const MAP_RR: &str = "OV_RR";
/// Traffic counters of each backend (`LbStats`), by backend id; atomic adds.
pub const MAP_LB_STATS: &str = "OV_LB_STATS";
/// Traffic and drops of each published port (`PortStats`), by the port's service id.
pub const MAP_PORT_STATS: &str = "OV_PORT_STATS";
/// docker_gwbridge of this node (`GwConfig`): one entry at index 0. Its ports (the host ends of
/// the containers' gwbridge veths) are in OV_LOCAL_IFACES and OV_ENDPOINTS under `GW_VNI`.
pub const MAP_GWBRIDGE: &str = "OV_GWBRIDGE";

pub const ALL_MAPS: [&str; 16] = [
    MAP_CONFIG,
    MAP_ENDPOINTS,
    MAP_NETWORKS,
    MAP_LOCAL_IFACES,
    MAP_NODES,
    MAP_NEXTHOPS,
    MAP_DROPS,
    MAP_FWD,
    MAP_SERVICES,
    MAP_BACKENDS,
    MAP_MAGLEV,
    MAP_CT,
    MAP_RR,
    MAP_LB_STATS,
    MAP_PORT_STATS,
    MAP_GWBRIDGE,
];

pub const MAX_ENDPOINTS: u32 = 131_072;
pub const MAX_NETWORKS: u32 = 4_096;
pub const MAX_LOCAL_IFACES: u32 = 4_096;
pub const MAX_NODES: u32 = 16_384;
/// (VIP, port, protocol) keys over all services.
pub const MAX_SERVICES: u32 = 65_536;
const _: () = assert!(MAX_SERVICES <= 1 << 16, "CtEntry::service is a u16");
/// Backends over all services (10,000 services of 10, with room); also the size of the
/// per-backend counters.
pub const MAX_BACKENDS: u32 = 131_072;
/// Lookup-table slots over all services: 10,000 services of 10 backends at 100 slots a backend,
/// with room to write the largest table beside the one it replaces. Slots are stored two to an
/// element (`MaglevPair`): array elements take 8 bytes even for a 4-byte value, so pairs halve
/// the map to 64 MiB. Tables start at even slots.
pub const MAX_MAGLEV_SLOTS: u32 = 1 << 24;
/// Two consecutive slots of OV_MAGLEV (backend ids): slot `s` is element `s / 2`, half `s % 2`.
pub type MaglevPair = [u32; 2];
/// Conntrack entries (two per flow).
pub const MAX_CT: u32 = 262_144;
/// Published ports (protocol, port) over all services.
pub const MAX_PUBLISHED: u32 = 4_096;

/// Program names as compiled into the object.
pub const PROG_FROM_CONTAINER: &str = "ov_from_container";
pub const PROG_UNDERLAY_XDP: &str = "ov_underlay_xdp";
pub const PROG_UNDERLAY_TC: &str = "ov_underlay_tc";
/// TC ingress on the host end of a container's docker_gwbridge veth (ICC block, host-mode replies).
pub const PROG_FROM_GWBRIDGE: &str = "ov_from_gwbridge";
/// XDP_PASS and nothing else: the floor the benchmarks compare against (never attached).
pub const PROG_BENCH_FLOOR: &str = "ov_bench_floor";
/// TC_ACT_OK and nothing else: the same floor for TC programs, whose test runs also build an skb.
pub const PROG_BENCH_FLOOR_TC: &str = "ov_bench_floor_tc";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Config {
    /// This node's VTEP address (network order).
    pub node_ip: u32,
    /// ifindex of the underlay interface holding `node_ip`.
    pub underlay_ifindex: u32,
    /// MTU of the underlay interface.
    pub underlay_mtu: u32,
    /// VXLAN UDP destination port (host order).
    pub vxlan_port: u16,
    pub _pad: u16,
    /// VNI of the ingress network (routing-mesh traffic between nodes); 0: none.
    pub ingress_vni: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EndpointKey {
    /// VXLAN network identifier (host order).
    pub vni: u32,
    /// Endpoint IPv4 address (network order).
    pub ip: u32,
}

/// `EndpointInfo::flags`: the endpoint lives on this node.
pub const EP_LOCAL: u16 = 1;
/// `EndpointInfo::flags`: a service VIP, not an endpoint: traffic to it is balanced. Its MAC is
/// `default_mac(vip)` (answered to ARP like an endpoint's).
pub const EP_VIP: u16 = 2;
/// `EndpointInfo::flags` (and `LocalIface::flags`): the endpoint backs a service, so what it
/// sends may be a reply to reverse-NAT.
pub const EP_BACKEND: u16 = 4;
/// `EndpointInfo::flags`: the ingress network's gateway, answered to ARP (its MAC is
/// `default_mac(gateway)`): backends send their routing-mesh replies to outside clients to it.
/// Nothing is delivered to it.
pub const EP_GATEWAY: u16 = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EndpointInfo {
    pub mac: [u8; 6],
    pub flags: u16,
    /// Local endpoints: ifindex of the host-side veth. Remote: 0.
    pub ifindex: u32,
    /// Remote endpoints: VTEP address of their node (network order). Local: 0.
    pub vtep: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NetworkInfo {
    /// MTU of the overlay network (inner frames).
    pub mtu: u32,
    /// `NET_INGRESS`, or 0.
    pub flags: u32,
    /// The network's gateway address (network order), 0 if none.
    pub gateway: u32,
}

/// `NetworkInfo::flags`: the ingress network. Its frames may carry outside clients' addresses:
/// decapsulation checks them against routing-mesh conntrack instead of the endpoint table.
pub const NET_INGRESS: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NodeInfo {
    /// Zero today; the entry's presence is what counts.
    pub _reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct LocalIface {
    pub vni: u32,
    /// The endpoint's own IPv4 (network order): the only source address it may use.
    pub ip: u32,
    pub mac: [u8; 6],
    /// `EP_BACKEND` when the endpoint backs a service.
    pub flags: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NextHop {
    /// The interface the entry was resolved on; an entry for another interface than the
    /// configured underlay is stale and ignored.
    pub ifindex: u32,
    /// The next hop's MAC (the VTEP's, or its gateway's).
    pub dmac: [u8; 6],
    /// The underlay interface's own MAC.
    pub smac: [u8; 6],
}

/// Schedulers (`ServiceInfo::scheduler`). Maglev and sh index the table by a hash (of the flow,
/// of the client address); rr and wrr walk it with a per-CPU cursor.
pub const SCHED_MAGLEV: u8 = 0;
pub const SCHED_SH: u8 = 1;
pub const SCHED_RR: u8 = 2;
pub const SCHED_WRR: u8 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceKey {
    pub vni: u32,
    /// VIP (network order).
    pub ip: u32,
    /// Port (network order, as in the packet).
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceInfo {
    /// Stable while the service exists: the rr cursor's index.
    pub id: u32,
    /// Where the service's table starts in OV_MAGLEV, and its size (0: no backend takes new
    /// connections).
    pub offset: u32,
    pub size: u32,
    pub scheduler: u8,
    /// `SVC_PUBLISHED` for a published port's entry.
    pub flags: u8,
    /// Published ports: the port the backends listen on (network order). VIPs: 0 (unchanged).
    pub target: u16,
}

/// `ServiceInfo::flags`: the entry is a published port (key: VNI 0, address 0, the published
/// port): traffic to the node's address on it goes through the routing mesh.
pub const SVC_PUBLISHED: u8 = 1;
/// `ServiceInfo::flags`: a host-mode published port reached through docker_gwbridge: its
/// backends are the local tasks' gwbridge addresses (OV_ENDPOINTS under `GW_VNI`).
pub const SVC_VIA_GW: u8 = 2;

/// Pseudo-VNI (above VXLAN's 24 bits, so no packet ever carries it) under which the gwbridge
/// interfaces of local containers are kept in OV_ENDPOINTS (by address) and OV_LOCAL_IFACES
/// (by host-end ifindex).
pub const GW_VNI: u32 = 1 << 24;

/// This node's docker_gwbridge as its programs need it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct GwConfig {
    /// The bridge's subnet and mask (network order).
    pub subnet: u32,
    pub mask: u32,
    /// The bridge's own address (network order): containers' default gateway.
    pub gateway: u32,
    /// The bridge's MAC: the only unicast destination a container may use when ICC is off.
    pub bridge_mac: [u8; 6],
    /// `GW_ICC`, or 0.
    pub flags: u16,
}

/// `GwConfig::flags`: inter-container communication over the bridge is allowed (`icc = true`).
pub const GW_ICC: u16 = 1;
/// `GwConfig::flags`: a host-mode published port is served through the gwbridge here, so what
/// containers send outside may be its replies (looked up in conntrack; otherwise not).
pub const GW_HOST_PORTS: u16 = 2;
/// `GwConfig::flags`: masquerade (`masquerade = true`): containers' TCP and UDP to the outside
/// leave with the node's address and a port of `SNAT_PORT_MIN..=SNAT_PORT_MAX`, in eBPF.
pub const GW_MASQUERADE: u16 = 4;
/// Source ports of masqueraded flows: above Linux's default ephemeral range (32768-60999), so
/// the node's own connections do not hold them. A port is reused towards different peers.
pub const SNAT_PORT_MIN: u16 = 61000;
pub const SNAT_PORT_MAX: u16 = 65535;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BackendInfo {
    /// The backend endpoint's address (network order); the port is the VIP port.
    pub ip: u32,
    /// Weight 0: draining (in no table; its tracked flows go on).
    pub weight: u32,
}

/// A flow as the packet says it (addresses and ports in network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtKey {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// `CtEntry::flags`: the entry is the reply direction (backend -> client); its `nat_ip` is the VIP.
pub const CT_REPLY: u32 = 1;
/// TCP: a FIN or RST was seen; the flow is closing.
pub const CT_CLOSING: u32 = 2;
/// A routing-mesh flow (an outside client through a published port). Its reply entry is on the
/// entry node (`peer` = this node: reverse NAT to `nat_ip:nat_port` and send to the client with
/// `macs`) and on the backend's node (`peer` = the entry node: replies go back there).
pub const CT_MESH: u32 = 4;
/// A masqueraded docker_gwbridge flow. Forward entry (container -> outside): `nat_ip`/`nat_port`
/// are the node's address and the SNAT port. Reply entry (outside -> node, `CT_REPLY`):
/// `nat_ip`/`nat_port` are the container's gwbridge address and port, `backend` the ifindex of
/// its gwbridge port, `macs` the Ethernet header into the container.
pub const CT_SNAT: u32 = 8;
/// With `CT_SNAT` on a forward entry: the flow found every port it tried taken when it began, so
/// it takes the kernel path (nftables masquerade) for its whole life; nothing is rewritten.
pub const CT_KERNEL: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtEntry {
    /// Forward entry: the backend's address. Reply entry: the VIP (mesh: the entry node's
    /// address).
    pub nat_ip: u32,
    pub backend: u32,
    pub flags: u32,
    /// Mesh flows: the port to rewrite to (forward: the target port; reply: the published
    /// port), network order. VIP flows: 0.
    pub nat_port: u16,
    /// Mesh flows: the published port's service id (its `PortStats`). Ids fit: MAX_SERVICES
    /// is 65,536.
    pub service: u16,
    /// bpf_ktime_get_ns of the last packet, refreshed at most once a second.
    pub last_seen: u64,
    /// Mesh reply entries: the entry node's address (network order).
    pub peer: u32,
    /// Mesh reply entries on the entry node: the Ethernet header towards the client (its MAC,
    /// then ours), taken from the client's first packet.
    pub macs: [u8; 12],
}

/// Idle time after which the agent removes an entry (nanoseconds). Removal never breaks a
/// flow: its next packet finds the same backend again (the hash picks it), unlike IPVS's
/// 900 s timeout that silently kills idle connections.
pub const fn ct_timeout_ns(proto: u8, flags: u32) -> u64 {
    const S: u64 = 1_000_000_000;
    match proto {
        6 if flags & CT_CLOSING != 0 => 10 * S,
        6 => 6 * 3600 * S,
        _ => 300 * S,
    }
}

/// Per-backend traffic, as ipvsadm --stats counts it: in = towards the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct LbStats {
    pub conns: u64,
    pub in_pkts: u64,
    pub in_bytes: u64,
    pub out_pkts: u64,
    pub out_bytes: u64,
}

/// Traffic and drops of one published port (atomic adds). `drops` is indexed by `DropReason`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PortStats {
    pub traffic: LbStats,
    pub drops: [u64; crate::stats::DropReason::COUNT as usize],
}

impl Default for PortStats {
    fn default() -> Self {
        Self { traffic: LbStats::default(), drops: [0; crate::stats::DropReason::COUNT as usize] }
    }
}

// The layout is an ABI between two compilers: a change must be deliberate on both sides.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<Config>() == 20 && offset_of!(Config, ingress_vni) == 16);
    assert!(offset_of!(Config, underlay_mtu) == 8 && offset_of!(Config, vxlan_port) == 12);
    assert!(size_of::<EndpointKey>() == 8 && offset_of!(EndpointKey, ip) == 4);
    assert!(size_of::<EndpointInfo>() == 16);
    assert!(offset_of!(EndpointInfo, flags) == 6 && offset_of!(EndpointInfo, ifindex) == 8);
    assert!(offset_of!(EndpointInfo, vtep) == 12);
    assert!(size_of::<NetworkInfo>() == 12);
    assert!(size_of::<LocalIface>() == 16 && offset_of!(LocalIface, mac) == 8);
    assert!(size_of::<NodeInfo>() == 4);
    assert!(size_of::<NextHop>() == 16 && offset_of!(NextHop, dmac) == 4 && offset_of!(NextHop, smac) == 10);
    assert!(size_of::<ServiceKey>() == 12 && offset_of!(ServiceKey, port) == 8 && offset_of!(ServiceKey, proto) == 10);
    assert!(size_of::<ServiceInfo>() == 16 && offset_of!(ServiceInfo, scheduler) == 12);
    assert!(offset_of!(ServiceInfo, target) == 14);
    assert!(size_of::<BackendInfo>() == 8);
    assert!(size_of::<CtKey>() == 16 && offset_of!(CtKey, sport) == 8 && offset_of!(CtKey, proto) == 12);
    assert!(size_of::<CtEntry>() == 40 && offset_of!(CtEntry, last_seen) == 16);
    assert!(offset_of!(CtEntry, nat_port) == 12 && offset_of!(CtEntry, peer) == 24 && offset_of!(CtEntry, macs) == 28);
    assert!(size_of::<LbStats>() == 40);
    assert!(size_of::<GwConfig>() == 20 && offset_of!(GwConfig, bridge_mac) == 12 && offset_of!(GwConfig, flags) == 18);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C) with explicit padding; bytemuck's derive proves it.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for NetworkInfo {}
    unsafe impl aya::Pod for LocalIface {}
    unsafe impl aya::Pod for NodeInfo {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceInfo {}
    unsafe impl aya::Pod for BackendInfo {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for LbStats {}
    unsafe impl aya::Pod for PortStats {}
    unsafe impl aya::Pod for GwConfig {}
}

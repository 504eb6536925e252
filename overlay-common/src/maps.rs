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

pub const ALL_MAPS: [&str; 8] =
    [MAP_CONFIG, MAP_ENDPOINTS, MAP_NETWORKS, MAP_LOCAL_IFACES, MAP_NODES, MAP_NEXTHOPS, MAP_DROPS, MAP_FWD];

pub const MAX_ENDPOINTS: u32 = 131_072;
pub const MAX_NETWORKS: u32 = 4_096;
pub const MAX_LOCAL_IFACES: u32 = 4_096;
pub const MAX_NODES: u32 = 16_384;

/// Program names as compiled into the object.
pub const PROG_FROM_CONTAINER: &str = "ov_from_container";
pub const PROG_UNDERLAY_XDP: &str = "ov_underlay_xdp";
pub const PROG_UNDERLAY_TC: &str = "ov_underlay_tc";
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
    /// Zero today. Decapsulation checks every inner source against the endpoints of its network;
    /// a network that carries outside clients (the routing mesh's ingress network) will get a
    /// flag here selecting its own rule, keyed on connection tracking.
    pub _reserved: u32,
}

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
    pub _pad: [u8; 2],
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

// The layout is an ABI between two compilers: a change must be deliberate on both sides.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<Config>() == 16);
    assert!(offset_of!(Config, underlay_mtu) == 8 && offset_of!(Config, vxlan_port) == 12);
    assert!(size_of::<EndpointKey>() == 8 && offset_of!(EndpointKey, ip) == 4);
    assert!(size_of::<EndpointInfo>() == 16);
    assert!(offset_of!(EndpointInfo, flags) == 6 && offset_of!(EndpointInfo, ifindex) == 8);
    assert!(offset_of!(EndpointInfo, vtep) == 12);
    assert!(size_of::<NetworkInfo>() == 8);
    assert!(size_of::<LocalIface>() == 16 && offset_of!(LocalIface, mac) == 8);
    assert!(size_of::<NodeInfo>() == 4);
    assert!(size_of::<NextHop>() == 16 && offset_of!(NextHop, dmac) == 4 && offset_of!(NextHop, smac) == 10);
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
}

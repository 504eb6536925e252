//! Every map of the datapath, one line each on what it holds. The agent pins each one by name
//! (overlay-user datapath/pins.rs) so a restarted agent finds them again; tests load them
//! unpinned. Names and layouts come from overlay-common; the checks below keep the names here
//! (which the `#[map]` macro needs as literals) equal to the shared constants.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use overlay_common::{
    maps::{
        self as abi, BackendInfo, Config, CtEntry, CtKey, EndpointInfo, EndpointKey, GwConfig, LbStats, LocalIface,
        MaglevPair, NetworkInfo, NextHop, NodeInfo, PortStats, ServiceInfo, ServiceKey, MAX_BACKENDS, MAX_CT,
        MAX_ENDPOINTS, MAX_LOCAL_IFACES, MAX_MAGLEV_SLOTS, MAX_NETWORKS, MAX_NODES, MAX_PUBLISHED, MAX_SERVICES,
    },
    stats::{DropReason, FwdCounter},
};

/// This node's configuration (index 0).
#[map(name = "OV_CONFIG")]
pub static OV_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// (VNI, IP) of every endpoint in the cluster -> local veth or remote VTEP.
#[map(name = "OV_ENDPOINTS")]
pub static OV_ENDPOINTS: HashMap<EndpointKey, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// VNIs this node accepts on decapsulation.
#[map(name = "OV_NETWORKS")]
pub static OV_NETWORKS: HashMap<u32, NetworkInfo> = HashMap::with_max_entries(MAX_NETWORKS, 0);

/// Host-side veth ifindex -> the local endpoint behind it.
#[map(name = "OV_LOCAL_IFACES")]
pub static OV_LOCAL_IFACES: HashMap<u32, LocalIface> = HashMap::with_max_entries(MAX_LOCAL_IFACES, 0);

/// Underlay address of every other cluster node: decapsulation accepts VXLAN only from these.
#[map(name = "OV_NODES")]
pub static OV_NODES: HashMap<u32, NodeInfo> = HashMap::with_max_entries(MAX_NODES, 0);

/// Remote VTEP -> outer Ethernet header towards it, kept fresh by the agent (encap skips the FIB).
#[map(name = "OV_NEXTHOPS")]
pub static OV_NEXTHOPS: HashMap<u32, NextHop> = HashMap::with_max_entries(MAX_NODES, 0);

/// Per-CPU drop counters, indexed by DropReason.
#[map(name = "OV_DROPS")]
pub static OV_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

/// Per-CPU forward counters, indexed by FwdCounter.
#[map(name = "OV_FWD")]
pub static OV_FWD: PerCpuArray<u64> = PerCpuArray::with_max_entries(FwdCounter::COUNT, 0);

/// (VNI, VIP, port, protocol) -> the service balancing it. Not preallocated: a node without
/// services pays nothing for it (entries are written by the agent, never by packets).
#[map(name = "OV_SERVICES")]
pub static OV_SERVICES: HashMap<ServiceKey, ServiceInfo> = HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Backend id -> its address. Not preallocated, as OV_SERVICES.
#[map(name = "OV_BACKENDS")]
pub static OV_BACKENDS: HashMap<u32, BackendInfo> = HashMap::with_max_entries(MAX_BACKENDS, BPF_F_NO_PREALLOC);

/// All services' lookup tables (backend ids), side by side, two slots an element.
#[map(name = "OV_MAGLEV")]
pub static OV_MAGLEV: Array<MaglevPair> = Array::with_max_entries(MAX_MAGLEV_SLOTS / 2, 0);

/// Connection tracking of balanced flows, both directions.
#[map(name = "OV_CT")]
pub static OV_CT: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(MAX_CT, 0);

/// Round-robin cursor per service id, per CPU.
#[map(name = "OV_RR")]
pub static OV_RR: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Traffic per backend id (atomic adds: a per-CPU copy would cost MAX_BACKENDS x 40 bytes on
/// every CPU of large hosts).
#[map(name = "OV_LB_STATS")]
pub static OV_LB_STATS: Array<LbStats> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Traffic and drops per published port, by its service id (atomic adds). Not preallocated:
/// the agent writes an entry for each published port.
#[map(name = "OV_PORT_STATS")]
pub static OV_PORT_STATS: HashMap<u32, PortStats> = HashMap::with_max_entries(MAX_PUBLISHED, BPF_F_NO_PREALLOC);

/// docker_gwbridge of this node (index 0): subnet, gateway, bridge MAC, ICC.
#[map(name = "OV_GWBRIDGE")]
pub static OV_GWBRIDGE: Array<GwConfig> = Array::with_max_entries(1, 0);

/// Per-CPU scratch of the routing mesh's entry stages (mesh.rs). Holds nothing between
/// packets: not pinned.
#[map(name = "OV_MESH_SCRATCH")]
pub static OV_MESH_SCRATCH: PerCpuArray<crate::mesh::Scratch> = PerCpuArray::with_max_entries(1, 0);

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const _: () = {
    assert!(same("OV_CONFIG", abi::MAP_CONFIG));
    assert!(same("OV_ENDPOINTS", abi::MAP_ENDPOINTS));
    assert!(same("OV_NETWORKS", abi::MAP_NETWORKS));
    assert!(same("OV_LOCAL_IFACES", abi::MAP_LOCAL_IFACES));
    assert!(same("OV_NODES", abi::MAP_NODES));
    assert!(same("OV_NEXTHOPS", abi::MAP_NEXTHOPS));
    assert!(same("OV_DROPS", abi::MAP_DROPS));
    assert!(same("OV_FWD", abi::MAP_FWD));
    assert!(same("OV_SERVICES", abi::MAP_SERVICES));
    assert!(same("OV_BACKENDS", abi::MAP_BACKENDS));
    assert!(same("OV_MAGLEV", abi::MAP_MAGLEV));
    assert!(same("OV_CT", abi::MAP_CT));
    assert!(same("OV_RR", abi::MAP_RR));
    assert!(same("OV_LB_STATS", abi::MAP_LB_STATS));
    assert!(same("OV_PORT_STATS", abi::MAP_PORT_STATS));
    assert!(same("OV_GWBRIDGE", abi::MAP_GWBRIDGE));
    assert!(abi::ALL_MAPS.len() == 16, "a map was added: check its name here");
};

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    OV_CONFIG.get(0)
}

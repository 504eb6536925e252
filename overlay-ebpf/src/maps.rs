//! Every map of the datapath, one line each on what it holds. The agent pins each one by name
//! (overlay-user datapath/pins.rs) so a restarted agent finds them again; tests load them
//! unpinned. Names and layouts come from overlay-common; the checks below keep the names here
//! (which the `#[map]` macro needs as literals) equal to the shared constants.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use overlay_common::{
    maps::{
        self as abi, Config, EndpointInfo, EndpointKey, LocalIface, NetworkInfo, NextHop, NodeInfo, MAX_ENDPOINTS,
        MAX_LOCAL_IFACES, MAX_NETWORKS, MAX_NODES,
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
    assert!(abi::ALL_MAPS.len() == 8, "a map was added: check its name here");
};

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    OV_CONFIG.get(0)
}

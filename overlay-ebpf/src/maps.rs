//! Every map of the datapath. The agent pins each one by path (see datapath.rs) so a restarted
//! agent finds them again; tests load them unpinned.
//! Layouts come from overlay-common (the agent checks them before reusing a pin).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use overlay_common::{
    maps::{Config, EndpointInfo, EndpointKey, LocalIface, NetworkInfo, MAX_ENDPOINTS, MAX_LOCAL_IFACES, MAX_NETWORKS},
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

/// Per-CPU drop counters, indexed by DropReason.
#[map(name = "OV_DROPS")]
pub static OV_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

/// Per-CPU forward counters, indexed by FwdCounter.
#[map(name = "OV_FWD")]
pub static OV_FWD: PerCpuArray<u64> = PerCpuArray::with_max_entries(FwdCounter::COUNT, 0);

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    OV_CONFIG.get(0)
}

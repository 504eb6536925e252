//! Pins: the maps and program links of a node live on a bpffs so a restarted agent finds them.
//! A pinned map is reused only after its layout is checked: a pin left by another version of the
//! datapath is never read with the wrong layout.

use std::{io, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::MapType;
use overlay_common::{
    maps::*,
    stats::{DropReason, FwdCounter},
};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The pins must live on a bpffs mounted in the host's mount namespace (not inside an
/// `ip netns exec`, whose mounts die with it), or a restart would not find them.
pub fn check_bpffs(run_dir: &Path) -> Result<()> {
    let dir = run_dir.join("bpffs");
    let st = nix::sys::statfs::statfs(&dir).map_err(|e| {
        anyhow!("{}: {e}; mount a bpffs there first: mkdir -p {0} && mount -t bpf bpf {0}", dir.display())
    })?;
    if st.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        bail!("{} is not a bpffs; mount one there first: mount -t bpf bpf {0}", dir.display());
    }
    Ok(())
}

/// Expected layout of each pinned map: a pin from an older layout is never reused silently.
struct Layout {
    name: &'static str,
    kind: MapType,
    key: u32,
    value: u32,
    max: u32,
}

fn layouts() -> [Layout; 16] {
    use std::mem::size_of;
    [
        Layout { name: MAP_CONFIG, kind: MapType::Array, key: 4, value: size_of::<Config>() as u32, max: 1 },
        Layout {
            name: MAP_ENDPOINTS,
            kind: MapType::Hash,
            key: size_of::<EndpointKey>() as u32,
            value: size_of::<EndpointInfo>() as u32,
            max: MAX_ENDPOINTS,
        },
        Layout {
            name: MAP_NETWORKS,
            kind: MapType::Hash,
            key: 4,
            value: size_of::<NetworkInfo>() as u32,
            max: MAX_NETWORKS,
        },
        Layout {
            name: MAP_LOCAL_IFACES,
            kind: MapType::Hash,
            key: 4,
            value: size_of::<LocalIface>() as u32,
            max: MAX_LOCAL_IFACES,
        },
        Layout { name: MAP_NODES, kind: MapType::Hash, key: 4, value: size_of::<NodeInfo>() as u32, max: MAX_NODES },
        Layout { name: MAP_NEXTHOPS, kind: MapType::Hash, key: 4, value: size_of::<NextHop>() as u32, max: MAX_NODES },
        Layout { name: MAP_DROPS, kind: MapType::PerCpuArray, key: 4, value: 8, max: DropReason::COUNT },
        Layout { name: MAP_FWD, kind: MapType::PerCpuArray, key: 4, value: 8, max: FwdCounter::COUNT },
        Layout {
            name: MAP_SERVICES,
            kind: MapType::Hash,
            key: size_of::<ServiceKey>() as u32,
            value: size_of::<ServiceInfo>() as u32,
            max: MAX_SERVICES,
        },
        Layout {
            name: MAP_BACKENDS,
            kind: MapType::Hash,
            key: 4,
            value: size_of::<BackendInfo>() as u32,
            max: MAX_BACKENDS,
        },
        Layout { name: MAP_MAGLEV, kind: MapType::Array, key: 4, value: 8, max: MAX_MAGLEV_SLOTS / 2 },
        Layout {
            name: MAP_CT,
            kind: MapType::LruHash,
            key: size_of::<CtKey>() as u32,
            value: size_of::<CtEntry>() as u32,
            max: MAX_CT,
        },
        Layout { name: MAP_RR, kind: MapType::PerCpuArray, key: 4, value: 4, max: MAX_SERVICES },
        Layout {
            name: MAP_LB_STATS,
            kind: MapType::Array,
            key: 4,
            value: size_of::<LbStats>() as u32,
            max: MAX_BACKENDS,
        },
        Layout {
            name: MAP_PORT_STATS,
            kind: MapType::Hash,
            key: 4,
            value: size_of::<PortStats>() as u32,
            max: MAX_PUBLISHED,
        },
        Layout { name: MAP_GWBRIDGE, kind: MapType::Array, key: 4, value: size_of::<GwConfig>() as u32, max: 1 },
    ]
}

pub(super) fn check_pinned_layouts(maps_dir: &Path) -> Result<()> {
    for l in layouts() {
        let path = maps_dir.join(l.name);
        if !path.exists() {
            continue;
        }
        let info =
            aya::maps::MapInfo::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
        let kind = info.map_type().map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let found = (kind, info.key_size(), info.value_size(), info.max_entries());
        if found != (l.kind, l.key, l.value, l.max) {
            bail!(
                "pinned map {} has layout {:?} key {} value {} entries {}, this agent needs {:?} key {} value {} entries {}; \
                 it was left by another version: remove the old datapath with `overlay down` first",
                path.display(), found.0, found.1, found.2, found.3, l.kind, l.key, l.value, l.max
            );
        }
    }
    Ok(())
}

pub(super) fn remove_pin(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

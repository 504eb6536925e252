//! The kernel side as the agent sees it: load the programs, reuse pinned maps after checking
//! their layout, attach through pinned links (replaced atomically on restart, so forwarding
//! never stops), write map contents as a diff, and read the counters.

use rustc_hash::FxHashMap as HashMap;
use std::{
    collections::HashSet,
    hash::Hash,
    io,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, MapType, PerCpuArray},
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
        SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader, Pod,
};
use overlay_common::{
    maps::*,
    stats::{DropReason, FwdCounter},
};

/// The kernel programs, embedded at build time (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay.bpf.o"));

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecapMode {
    Xdp,
    Tc,
}

impl std::fmt::Display for DecapMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DecapMode::Xdp => "xdp",
            DecapMode::Tc => "tc",
        })
    }
}

/// Expected layout of each pinned map: a pin from an older layout is never reused silently.
struct Layout {
    name: &'static str,
    kind: MapType,
    key: u32,
    value: u32,
    max: u32,
}

fn layouts() -> [Layout; 6] {
    use std::mem::size_of;
    [
        Layout { name: MAP_CONFIG, kind: MapType::Array, key: 4, value: size_of::<Config>() as u32, max: 1 },
        Layout { name: MAP_ENDPOINTS, kind: MapType::Hash, key: size_of::<EndpointKey>() as u32, value: size_of::<EndpointInfo>() as u32, max: MAX_ENDPOINTS },
        Layout { name: MAP_NETWORKS, kind: MapType::Hash, key: 4, value: size_of::<NetworkInfo>() as u32, max: MAX_NETWORKS },
        Layout { name: MAP_LOCAL_IFACES, kind: MapType::Hash, key: 4, value: size_of::<LocalIface>() as u32, max: MAX_LOCAL_IFACES },
        Layout { name: MAP_DROPS, kind: MapType::PerCpuArray, key: 4, value: 8, max: DropReason::COUNT },
        Layout { name: MAP_FWD, kind: MapType::PerCpuArray, key: 4, value: 8, max: FwdCounter::COUNT },
    ]
}

fn check_pinned_layouts(maps_dir: &Path) -> Result<()> {
    for l in layouts() {
        let path = maps_dir.join(l.name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
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

pub struct Datapath {
    ebpf: Ebpf,
    /// `None`: nothing pinned (tests); links live as long as this value.
    pin_dir: Option<PathBuf>,
}

impl Datapath {
    /// Load the programs. With a pin directory, maps are reused from (or pinned to) `maps/`
    /// under it, and attachments are pinned under `links/`.
    pub fn open(pin_dir: Option<&Path>) -> Result<Self> {
        if OBJECT.is_empty() {
            bail!("this binary was built without the kernel programs: run `cargo xtask build`");
        }
        let mut loader = EbpfLoader::new();
        if let Some(dir) = pin_dir {
            let maps = dir.join("maps");
            std::fs::create_dir_all(&maps).with_context(|| format!("creating {}", maps.display()))?;
            std::fs::create_dir_all(dir.join("links"))?;
            check_pinned_layouts(&maps)?;
            for name in ALL_MAPS {
                loader.map_pin_path(name, maps.join(name));
            }
        }
        let mut ebpf = loader.load(OBJECT).context("loading the kernel programs")?;
        for name in [PROG_FROM_CONTAINER, PROG_UNDERLAY_TC] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).context("program missing")?.try_into()?;
            p.load().with_context(|| format!("verifying {name}"))?;
        }
        let p: &mut Xdp = ebpf.program_mut(PROG_UNDERLAY_XDP).context("program missing")?.try_into()?;
        p.load().with_context(|| format!("verifying {PROG_UNDERLAY_XDP}"))?;
        Ok(Self { ebpf, pin_dir: pin_dir.map(Path::to_path_buf) })
    }

    pub fn ebpf(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    fn link_pin(&self, name: &str) -> Option<PathBuf> {
        self.pin_dir.as_ref().map(|d| d.join("links").join(name))
    }

    fn existing_link(pin: &Path) -> Result<Option<FdLink>> {
        match PinnedLink::from_pin(pin) {
            Ok(l) => Ok(Some(FdLink::from(l))),
            Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("opening pinned link {}", pin.display())),
        }
    }

    /// Attach the decapsulation program to the underlay in `mode`, removing the other mode's
    /// attachment if there is one.
    pub fn attach_underlay(&mut self, ifname: &str, mode: DecapMode) -> Result<()> {
        let (xdp_pin, tc_pin) = (self.link_pin("underlay-xdp"), self.link_pin("underlay-tc"));
        match mode {
            DecapMode::Xdp => {
                if let Some(p) = &tc_pin {
                    remove_pin(p)?;
                }
                let prog: &mut Xdp = self.ebpf.program_mut(PROG_UNDERLAY_XDP).context("no xdp program")?.try_into()?;
                if let Some(pin) = &xdp_pin {
                    if let Some(link) = Self::existing_link(pin)? {
                        prog.attach_to_link(XdpLink::try_from(link)?).context("replacing the XDP program")?;
                        return Ok(());
                    }
                }
                let id = prog.attach(ifname, XdpMode::default()).with_context(|| format!("attaching XDP to {ifname}"))?;
                if let Some(pin) = &xdp_pin {
                    let link: FdLink = prog.take_link(id)?.try_into()?;
                    link.pin(pin).with_context(|| format!("pinning {}", pin.display()))?;
                }
            }
            DecapMode::Tc => {
                if let Some(p) = &xdp_pin {
                    remove_pin(p)?;
                }
                self.attach_tc(PROG_UNDERLAY_TC, ifname, tc_pin)?;
            }
        }
        Ok(())
    }

    fn attach_tc(&mut self, prog_name: &str, ifname: &str, pin: Option<PathBuf>) -> Result<()> {
        let prog: &mut SchedClassifier = self.ebpf.program_mut(prog_name).context("no tc program")?.try_into()?;
        if let Some(pin) = &pin {
            if let Some(link) = Self::existing_link(pin)? {
                prog.attach_to_link(SchedClassifierLink::try_from(link)?).context("replacing the TC program")?;
                return Ok(());
            }
        }
        let id = prog.attach(ifname, TcAttachType::Ingress).with_context(|| format!("attaching TC to {ifname}"))?;
        if let Some(pin) = &pin {
            let link: FdLink = prog.take_link(id)?.try_into()?;
            link.pin(pin).with_context(|| format!("pinning {}", pin.display()))?;
        }
        Ok(())
    }

    fn container_pin(&self, ifindex: u32) -> Option<PathBuf> {
        self.link_pin(&format!("container-{ifindex}"))
    }

    /// Attach the container-side program to a host-side veth (TC ingress: what the container sends).
    pub fn attach_container(&mut self, ifname: &str, ifindex: u32) -> Result<()> {
        let pin = self.container_pin(ifindex);
        self.attach_tc(PROG_FROM_CONTAINER, ifname, pin)
    }

    /// Forget container attachments other than `keep` (their veths are gone or going).
    pub fn prune_container_links(&self, keep: &HashSet<u32>) -> Result<()> {
        let Some(dir) = self.pin_dir.as_ref().map(|d| d.join("links")) else { return Ok(()) };
        for e in std::fs::read_dir(&dir)? {
            let name = e?.file_name().to_string_lossy().to_string();
            if let Some(idx) = name.strip_prefix("container-").and_then(|s| s.parse::<u32>().ok()) {
                if !keep.contains(&idx) {
                    remove_pin(&dir.join(&name))?;
                }
            }
        }
        Ok(())
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    /// Read what the maps hold now (the starting point of the first diff after a restart).
    pub fn read_contents(&mut self) -> Result<Contents> {
        let config = Array::<_, Config>::try_from(self.map_mut(MAP_CONFIG)?)?.get(&0, 0)?;
        let networks = read_hash::<u32, NetworkInfo>(self.map_mut(MAP_NETWORKS)?)?;
        let endpoints = read_hash::<EndpointKey, EndpointInfo>(self.map_mut(MAP_ENDPOINTS)?)?;
        let local_ifaces = read_hash::<u32, LocalIface>(self.map_mut(MAP_LOCAL_IFACES)?)?;
        Ok(Contents { config, networks, endpoints, local_ifaces })
    }

    /// Bring the maps from `current` to `desired`. Removals first: the entries are going
    /// anyway, and a map at its capacity then has room for the additions; a moved endpoint is
    /// one in-place update. Returns the number of writes.
    pub fn apply(&mut self, current: &Contents, desired: &Contents) -> Result<usize> {
        let mut writes = 0;
        if current.config != desired.config {
            Array::<_, Config>::try_from(self.map_mut(MAP_CONFIG)?)?.set(0, desired.config, 0)?;
            writes += 1;
        }
        writes += diff_hash(self.map_mut(MAP_NETWORKS)?, &current.networks, &desired.networks, MAP_NETWORKS)?;
        writes += diff_hash(self.map_mut(MAP_LOCAL_IFACES)?, &current.local_ifaces, &desired.local_ifaces, MAP_LOCAL_IFACES)?;
        writes += diff_hash(self.map_mut(MAP_ENDPOINTS)?, &current.endpoints, &desired.endpoints, MAP_ENDPOINTS)?;
        Ok(writes)
    }

    pub fn counters(&mut self) -> Result<Counters> {
        let drops = sum_per_cpu(self.ebpf.map(MAP_DROPS).context("no drop map")?)?;
        let fwd = sum_per_cpu(self.ebpf.map(MAP_FWD).context("no forward map")?)?;
        Ok(Counters::new(drops, fwd))
    }
}

fn remove_pin(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

fn read_hash<K: Pod + Eq + Hash, V: Pod>(map: &mut Map) -> Result<HashMap<K, V>> {
    let m = BpfHashMap::<_, K, V>::try_from(map)?;
    let mut out = HashMap::default();
    for kv in m.iter() {
        let (k, v) = kv?;
        out.insert(k, v);
    }
    Ok(out)
}

fn diff_hash<K: Pod + Eq + Hash, V: Pod + PartialEq>(
    map: &mut Map,
    current: &HashMap<K, V>,
    desired: &HashMap<K, V>,
    name: &str,
) -> Result<usize> {
    let mut m = BpfHashMap::<_, K, V>::try_from(map)?;
    let mut writes = 0;
    for k in current.keys() {
        if !desired.contains_key(k) {
            match m.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("removing from {name}")),
            }
            writes += 1;
        }
    }
    for (k, v) in desired {
        if current.get(k) != Some(v) {
            m.insert(k, v, 0).with_context(|| format!("writing {name}"))?;
            writes += 1;
        }
    }
    Ok(writes)
}

fn sum_per_cpu(map: &Map) -> Result<Vec<u64>> {
    let arr = PerCpuArray::<_, u64>::try_from(map)?;
    let mut out = Vec::new();
    for i in 0..arr.len() {
        out.push(arr.get(&i, 0)?.iter().sum());
    }
    Ok(out)
}

/// Everything the datapath maps hold, as the agent computes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contents {
    pub config: Config,
    pub networks: HashMap<u32, NetworkInfo>,
    pub endpoints: HashMap<EndpointKey, EndpointInfo>,
    pub local_ifaces: HashMap<u32, LocalIface>,
}

/// Counter totals over all CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub dropped: Vec<(String, u64)>,
    pub forwarded: Vec<(String, u64)>,
}

impl Counters {
    fn new(drops: Vec<u64>, fwd: Vec<u64>) -> Self {
        let at = |v: &Vec<u64>, i: u32| v.get(i as usize).copied().unwrap_or(0);
        Self {
            dropped: DropReason::ALL.iter().map(|r| (r.name().to_string(), at(&drops, *r as u32))).collect(),
            forwarded: FwdCounter::ALL.iter().map(|c| (c.name().to_string(), at(&fwd, *c as u32))).collect(),
        }
    }

    pub fn drop(&self, r: DropReason) -> u64 {
        self.dropped.iter().find(|(n, _)| n == r.name()).map(|x| x.1).unwrap_or(0)
    }

    pub fn fwd(&self, c: FwdCounter) -> u64 {
        self.forwarded.iter().find(|(n, _)| n == c.name()).map(|x| x.1).unwrap_or(0)
    }

    /// Read the counters of a running (or stopped) agent from its pins.
    pub fn from_pins(pin_dir: &Path) -> Result<Self> {
        let open = |name: &str| -> Result<Map> {
            let p = pin_dir.join("maps").join(name);
            let data = MapData::from_pin(&p).with_context(|| format!("opening {} (is the agent set up on this node?)", p.display()))?;
            Ok(Map::PerCpuArray(data))
        };
        Ok(Self::new(sum_per_cpu(&open(MAP_DROPS)?)?, sum_per_cpu(&open(MAP_FWD)?)?))
    }

    pub fn render(&self) -> String {
        let mut s = String::from("forwarded:\n");
        for (n, v) in &self.forwarded {
            s += &format!("  {n:<22} {v}\n");
        }
        s += "dropped:\n";
        for (n, v) in &self.dropped {
            s += &format!("  {n:<22} {v}\n");
        }
        s
    }
}

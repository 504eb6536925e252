//! The kernel side as the agent sees it. `contents` computes what the maps should hold (pure,
//! tested on its own); `maps` writes that as a diff; `attach` hooks the programs up through
//! pinned links; `pins` keeps maps and links findable after a restart; `counters` reads them;
//! `nexthops` resolves the outer Ethernet header towards each VTEP for encapsulation's cache.

mod attach;
mod contents;
mod counters;
mod lbview;
pub mod maglev;
mod maps;
mod nexthops;
mod pins;
mod services;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use aya::{
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use overlay_common::maps::*;

pub use contents::{desired_contents, network_mtu};
pub use counters::Counters;
pub use lbview::{
    flows_from_pins, flush_conntrack_pins, lb_stats_from_pins, now_ns, port_stats_from_pins, TrackedFlow,
};
pub use maps::Contents;
pub use nexthops::{resolve as resolve_nexthops, unresolved as unresolved_nexthops, Neighbour, Route};
pub use pins::check_bpffs;
use pins::check_pinned_layouts;
pub use services::{BackendView, PublishedView, ServiceView, Table};

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
        for name in [PROG_FROM_CONTAINER, PROG_FROM_GWBRIDGE, PROG_UNDERLAY_TC] {
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
}

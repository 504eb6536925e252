//! Counters: per-CPU drop and forward counters summed over CPUs, named by the shared enums.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use overlay_common::{
    maps::{MAP_DROPS, MAP_FWD},
    stats::{DropReason, FwdCounter},
};

use super::Datapath;

impl Datapath {
    pub fn counters(&mut self) -> Result<Counters> {
        let drops = sum_per_cpu(self.ebpf.map(MAP_DROPS).context("no drop map")?)?;
        let fwd = sum_per_cpu(self.ebpf.map(MAP_FWD).context("no forward map")?)?;
        Ok(Counters::new(drops, fwd))
    }
}

fn sum_per_cpu(map: &Map) -> Result<Vec<u64>> {
    let arr = PerCpuArray::<_, u64>::try_from(map)?;
    let mut out = Vec::new();
    for i in 0..arr.len() {
        out.push(arr.get(&i, 0)?.iter().sum());
    }
    Ok(out)
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
            let data = MapData::from_pin(&p)
                .with_context(|| format!("opening {} (is the agent set up on this node?)", p.display()))?;
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

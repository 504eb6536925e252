//! What a node has applied, kept beside its pins: enough to diff against after a restart and to
//! undo everything. Tests and tools read it to know when a state has been applied.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{DecapMode, ServiceView},
    netlink::Underlay,
    plumb::{Plumbed, VethSpec},
};

/// Where a node's state lives under the run dir.
pub struct Paths {
    /// bpffs directory of this node: maps/ and links/.
    pub pins: PathBuf,
    /// Plain directory of this node: the applied-state record and the agent's lock.
    pub records: PathBuf,
}

impl Paths {
    /// `node` must be a valid node name (`state::valid_node_name`): it becomes a directory name.
    pub fn new(run_dir: &Path, node: &str) -> Self {
        Self { pins: run_dir.join("bpffs").join(node), records: run_dir.join("nodes").join(node) }
    }
    pub fn record_file(&self) -> PathBuf {
        self.records.join("applied.json")
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub node: String,
    pub underlay: Option<Underlay>,
    pub decap: Option<DecapMode>,
    /// Local endpoints plumbed, by name.
    pub endpoints: BTreeMap<String, RecordedEndpoint>,
    /// Revision of the state last applied (for a file, a hash of its text).
    pub state_hash: String,
    /// Local endpoints of that state that could not be plumbed (yet), with the reason; the agent
    /// retries them while everything else stays applied.
    #[serde(default)]
    pub failed: BTreeMap<String, String>,
    /// The balanced services as applied, with names (the maps hold only ids), for the CLI.
    #[serde(default)]
    pub services: Vec<ServiceView>,
    /// docker_gwbridge: the bridge, each sandbox's port on it (addresses stay with their
    /// sandbox across restarts), and the nftables rules applied.
    #[serde(default)]
    pub gw_bridge: Option<crate::gwbridge::Bridge>,
    #[serde(default)]
    pub gw_ports: BTreeMap<PathBuf, crate::gwbridge::Port>,
    #[serde(default)]
    pub gw_rules: String,
    pub generation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEndpoint {
    pub spec: VethSpec,
    pub plumbed: Plumbed,
}

impl Record {
    pub fn load(path: &Path) -> Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Stable hash of a state file's text, as recorded in `applied.json`.
pub fn state_hash(text: &str) -> String {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{h:016x}")
}

//! Where the desired cluster state comes from. The agent's loop sees only `StateSource`: the
//! state file today; a key-value store or the Docker API later, without touching reconcile.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Result;

use super::{record::state_hash, watch::FileWatch};
use crate::state::{self, ClusterState, StateError};

/// One version of the desired state, valid or not. Shared: a source that validates changes
/// incrementally keeps the state it handed on as the base of the next.
pub struct Version {
    /// Identifies the version (recorded once applied; tests and tools wait on it).
    pub revision: String,
    pub state: Result<Arc<ClusterState>, StateError>,
}

#[allow(async_fn_in_trait)] // used with concrete types only: no Send bound needed
pub trait StateSource {
    /// The current version, at start.
    async fn first(&mut self) -> Result<Version>;
    /// Waits for a version different from the last one returned.
    async fn next(&mut self) -> Result<Version>;
    /// Whether the agent waits for a first version it can apply (a store being filled) rather
    /// than failing on it (a file the user just named).
    fn waits_for_state(&self) -> bool {
        false
    }
    /// Told after each version applied (a store publishes it for `overlay nodes`).
    fn applied(&mut self, _revision: &str, _state: &ClusterState) {}
    /// Told when the agent stops.
    async fn stop(&mut self) {}
}

/// The state file, followed with inotify and parsed incrementally.
pub struct FileSource {
    path: PathBuf,
    parser: state::IncrementalParser,
    watch: FileWatch,
    last_text: Option<String>,
}

impl FileSource {
    pub fn new(path: &Path) -> Result<Self> {
        Ok(Self { path: path.to_path_buf(), parser: Default::default(), watch: FileWatch::new(path)?, last_text: None })
    }

    fn version(&mut self, text: String) -> Version {
        let state = self.parser.parse(&text, &self.path).map(Arc::new);
        let revision = state_hash(&text);
        self.last_text = Some(text);
        Version { revision, state }
    }
}

impl StateSource for FileSource {
    async fn first(&mut self) -> Result<Version> {
        let text = state::read(&self.path)?;
        Ok(self.version(text))
    }

    async fn next(&mut self) -> Result<Version> {
        loop {
            self.watch.next().await?;
            match state::read(&self.path) {
                Ok(text) if self.last_text.as_deref() == Some(text.as_str()) => {}
                Ok(text) => return Ok(self.version(text)),
                Err(e) => {
                    // Reported like an invalid version: the last good state keeps running.
                    self.last_text = None;
                    return Ok(Version { revision: String::new(), state: Err(e) });
                }
            }
        }
    }
}

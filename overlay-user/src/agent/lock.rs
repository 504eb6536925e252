//! One agent per node: an exclusive lock in the node's record directory. Two agents for one node
//! would race on the same veths and maps.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    os::fd::AsRawFd,
    path::Path,
};

use anyhow::{bail, Context as _, Result};

/// Held for the agent's lifetime; the kernel releases it when the process ends, however it ends.
pub struct NodeLock {
    _file: File,
}

impl NodeLock {
    pub fn acquire(records: &Path, node: &str) -> Result<Self> {
        let path = records.join("agent.lock");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let pid = pid.trim();
            let who = if pid.is_empty() { "another process".to_string() } else { format!("pid {pid}") };
            bail!("another agent ({who}) is already running for node {node} (lock {})", path.display());
        }
        f.set_len(0)?;
        f.rewind()?;
        write!(f, "{}", std::process::id())?;
        Ok(Self { _file: f })
    }
}

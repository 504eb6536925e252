//! Network namespaces: run a piece of code (or open a netlink socket) inside a sandbox.
//! `setns` applies to the calling thread only, so every use restores the thread's namespace.

use std::{fs::File, os::fd::AsFd, path::Path};

use anyhow::{bail, Context as _, Result};
use nix::sched::{setns, CloneFlags};

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Whether `path` is a network namespace (a file on nsfs, as `ip netns add` makes). Checked with
/// statfs before anything opens it: opening a FIFO put there by mistake would block forever.
pub fn is_netns(path: &Path) -> Result<bool> {
    let st = nix::sys::statfs::statfs(path).with_context(|| format!("looking at {}", path.display()))?;
    Ok(st.filesystem_type().0 as i64 == NSFS_MAGIC)
}

/// While alive, the current thread is in another network namespace.
pub struct Entered {
    home: File,
}

impl Entered {
    pub fn enter(path: &Path) -> Result<Self> {
        if !is_netns(path)? {
            bail!("{} is not a network namespace", path.display());
        }
        let home = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
        let target = File::open(path).with_context(|| format!("opening netns {}", path.display()))?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering netns {}", path.display()))?;
        Ok(Self { home })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        // Failing to return would leave this thread in the sandbox: nothing sane can continue.
        if let Err(e) = setns(self.home.as_fd(), CloneFlags::CLONE_NEWNET) {
            panic!("cannot return to the original network namespace: {e}");
        }
    }
}

/// Run `f` with the current thread inside the namespace at `path`.
pub fn run_in<R>(path: &Path, f: impl FnOnce() -> Result<R>) -> Result<R> {
    let _in = Entered::enter(path)?;
    f()
}

//! Nothing a test creates outlives it: namespaces, bpffs mounts and processes are tracked and
//! removed on drop, on SIGINT/SIGTERM, and (for runs that were killed) by the next run, which
//! removes those whose process is gone.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex, Once,
    },
};

use anyhow::{Context as _, Result};

pub(crate) static COUNTER: AtomicU32 = AtomicU32::new(0);
pub(crate) static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LIVE_MOUNTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static LIVE_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static INIT: Once = Once::new();

/// Every namespace a test creates is named `ovt<pid>-<n>-<tag>`.
pub(crate) const PREFIX: &str = "ovt";

pub(crate) fn track(child: &Child) {
    LIVE_PIDS.lock().unwrap().push(child.id());
}

pub(crate) fn untrack(child: &Child) {
    LIVE_PIDS.lock().unwrap().retain(|p| *p != child.id());
}

pub(crate) fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{PREFIX}{}-{n}-{tag}", std::process::id())
}

/// Remove what earlier, killed runs left behind, and clean up on SIGINT/SIGTERM.
pub(crate) fn init() {
    INIT.call_once(|| {
        if let Ok(rd) = std::fs::read_dir("/var/run/netns") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let Some(rest) = name.strip_prefix(PREFIX) else { continue };
                let pid: i32 = rest.split('-').next().and_then(|p| p.parse().ok()).unwrap_or(0);
                if pid > 0 && !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = Command::new("ip").args(["netns", "del", &name]).status();
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir("/run") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let Some(rest) = name.strip_prefix("overlay-test-") else { continue };
                let pid: i32 = rest.split('-').next().and_then(|p| p.parse().ok()).unwrap_or(0);
                if pid > 0 && !Path::new(&format!("/proc/{pid}")).exists() {
                    let p = e.path();
                    let _ = nix::mount::umount2(&p.join("bpffs"), nix::mount::MntFlags::MNT_DETACH);
                    let _ = std::fs::remove_dir_all(&p);
                }
            }
        }
        // SAFETY: the handler only calls async-signal-tolerant cleanup and exits; a test run
        // being interrupted is the only case it serves.
        unsafe {
            let h = nix::sys::signal::SigHandler::Handler(on_signal);
            let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGINT, h);
            let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGTERM, h);
        }
    });
}

extern "C" fn on_signal(_: i32) {
    cleanup_all();
    std::process::exit(130);
}

/// Remove every namespace and mount this process created (also used by the demo on exit).
pub fn cleanup_all() {
    if let Ok(mut pids) = LIVE_PIDS.try_lock() {
        for p in pids.drain(..) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
    if let Ok(mut live) = LIVE.try_lock() {
        for n in live.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &n]).status();
        }
    }
    if let Ok(mut m) = LIVE_MOUNTS.try_lock() {
        for p in m.drain(..) {
            let _ = nix::mount::umount2(&p.join("bpffs"), nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

/// A run directory with its own bpffs (mounted in the host mount namespace so agents started
/// with `ip netns exec` share it and pins survive their restarts). Unmounted on drop.
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new() -> Result<Self> {
        init();
        let path = PathBuf::from(format!(
            "/run/overlay-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(path.join("bpffs"))?;
        nix::mount::mount(Some("bpf"), &path.join("bpffs"), Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .context("mounting a bpffs")?;
        LIVE_MOUNTS.lock().unwrap().push(path.clone());
        Ok(Self { path })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path.join("bpffs"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.path);
        LIVE_MOUNTS.lock().unwrap().retain(|p| p != &self.path);
    }
}

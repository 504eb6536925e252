//! Network namespaces for tests: create one, run commands and processes inside it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::cleanup::{init, track, unique, LIVE};

/// `sh -c CMD` inside the namespace called `name`.
pub fn in_netns(name: &str, cmd: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", name, "sh", "-c", cmd]);
    c
}

/// Start `cmd` inside the namespace called `name` (exec'd, so the pid is the command's),
/// output to `log`; the process is killed by `cleanup_all` if the run is interrupted.
pub fn spawn_in(name: &str, cmd: &str, log: std::fs::File) -> Result<Child> {
    let child = in_netns(name, &format!("exec {cmd}")).stdout(log.try_clone()?).stderr(log).spawn()?;
    track(&child);
    Ok(child)
}

/// A network namespace, removed when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Self> {
        Self::create(&Self::unique_name(tag))
    }

    /// A name no namespace of this or any other run has, for one to be created later.
    pub fn unique_name(tag: &str) -> String {
        init();
        unique(tag)
    }

    pub fn create(name: &str) -> Result<Self> {
        init();
        let name = name.to_string();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        LIVE.lock().unwrap().push(name.clone());
        let ns = Self { name };
        ns.sh("ip link set lo up")?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Run a shell command inside; fail with its output if it fails.
    pub fn sh(&self, cmd: &str) -> Result<String> {
        run(&mut in_netns(&self.name, cmd))
    }

    /// Run a shell command inside; return whether it succeeded.
    pub fn ok(&self, cmd: &str) -> bool {
        Self::ok_in(&self.name, cmd)
    }

    /// Like `ok`, for a namespace known only by name.
    pub fn ok_in(name: &str, cmd: &str) -> bool {
        in_netns(name, cmd).stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false)
    }

    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let out = self.sh(&format!("cat /sys/class/net/{ifname}/ifindex"))?;
        out.trim().parse().with_context(|| format!("ifindex of {ifname}: {out}"))
    }

    pub fn spawn(&self, cmd: &str, log: &Path) -> Result<Child> {
        spawn_in(&self.name, cmd, std::fs::File::create(log)?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        LIVE.lock().unwrap().retain(|n| n != &self.name);
    }
}

pub fn run(c: &mut Command) -> Result<String> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Poll `f` until it returns true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

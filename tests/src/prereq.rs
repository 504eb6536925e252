//! Tools the demo and the benchmarks run. A missing or broken tool is an error that names it
//! and its package, before anything is built: never a connectivity verdict.

use std::{path::Path, process::Command};

use anyhow::{bail, Result};

pub struct Tool {
    pub name: &'static str,
    /// Arguments that make it run and exit successfully, doing nothing.
    pub probe: &'static [&'static str],
    /// The Debian package that provides it.
    pub package: &'static str,
}

pub const IP: Tool = Tool { name: "ip", probe: &["-V"], package: "iproute2" };
pub const PING: Tool = Tool { name: "ping", probe: &["-V"], package: "iputils-ping" };
pub const ETHTOOL: Tool = Tool { name: "ethtool", probe: &["--version"], package: "ethtool" };
pub const IPERF3: Tool = Tool { name: "iperf3", probe: &["--version"], package: "iperf3" };
pub const NFT: Tool = Tool { name: "nft", probe: &["--version"], package: "nftables" };
pub const PERF: Tool = Tool { name: "perf", probe: &["--version"], package: "linux-perf" };
pub const ETCD: Tool = Tool { name: "etcd", probe: &["--version"], package: "etcd-server" };
pub const ETCDCTL: Tool = Tool { name: "etcdctl", probe: &["version"], package: "etcd-client" };

fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| is_executable(&d.join(name)))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Check every tool is on PATH and runs; the error lists each one that is not, with its package.
/// `installer` names the command that installs them (for the message).
pub fn require(tools: &[Tool], installer: &str) -> Result<()> {
    let mut problems = Vec::new();
    for t in tools {
        if !on_path(t.name) {
            problems.push(format!("`{}` not found on PATH (Debian package {})", t.name, t.package));
            continue;
        }
        match Command::new(t.name).args(t.probe).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => problems.push(format!(
                "`{} {}` failed ({}): {}",
                t.name,
                t.probe.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => problems.push(format!("`{}` cannot be run: {e}", t.name)),
        }
    }
    if !problems.is_empty() {
        bail!("missing prerequisites (`{installer}` installs them):\n  - {}", problems.join("\n  - "));
    }
    Ok(())
}

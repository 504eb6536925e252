//! Installing what the eBPF build and the tests need, idempotently.
//! The recipe is the one verified in shared/EBPF-TOOLCHAIN.md.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

const BPF_LINKER_VERSION: &str = "0.13.0";

pub struct Tools {
    pub bin: PathBuf,
}

/// Persistent across runs (and clones): a second build does not rebuild the linker.
fn tools_dir() -> PathBuf {
    if let Ok(d) = std::env::var("OVERLAY_TOOLS") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    Path::new(&home).join(".local/share/overlay-tools")
}

fn output(c: &mut Command) -> Result<String> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn ensure_ebpf_toolchain() -> Result<Tools> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("the nightly toolchain is needed for the kernel programs")?;
    let sysroot = PathBuf::from(sysroot);
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        eprintln!("xtask: installing rust-src for the nightly toolchain");
        output(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }

    let dir = tools_dir();
    let bin = dir.join("bin");
    let linker = bin.join("bpf-linker");
    // The linker must use the nightly's own LLVM; record which one it was built against.
    let llvm_lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .find(|n| n.starts_with("libLLVM.so."))
        .context("the nightly toolchain ships no libLLVM.so.*")?;
    let stamp = dir.join("bpf-linker.llvm");
    let built_for = std::fs::read_to_string(&stamp).unwrap_or_default();
    if linker.exists() && built_for.trim() == llvm_lib {
        return Ok(Tools { bin });
    }
    let major = llvm_lib.trim_start_matches("libLLVM.so.").split('.').next().unwrap_or_default().to_string();
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {llvm_lib} (about a minute)");
    let prefix = dir.join("llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let target = sysroot.join("lib").join(&llvm_lib);
    for name in ["libLLVM.so".to_string(), llvm_lib.clone()] {
        let link = prefix.join("lib").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)?;
    }
    let status = Command::new("cargo")
        .args(["+stable", "install", "--locked", "--force", "--root"])
        .arg(&dir)
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .status()?;
    if !status.success() {
        bail!("building bpf-linker failed");
    }
    std::fs::write(&stamp, &llvm_lib)?;
    Ok(Tools { bin })
}

/// Install rustup components of `toolchain` that are missing (rustfmt, clippy).
pub fn ensure_components(toolchain: &str, components: &[&str]) -> Result<()> {
    let installed =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", toolchain]))?;
    for c in components {
        if !installed.lines().any(|l| l.starts_with(&format!("{c}-"))) {
            eprintln!("xtask: installing {c} for the {toolchain} toolchain");
            output(Command::new("rustup").args(["component", "add", c, "--toolchain", toolchain]))?;
        }
    }
    Ok(())
}

/// Install Debian packages that are missing (CI runs as root on a fresh machine).
pub fn ensure_packages(pkgs: &[&str]) -> Result<()> {
    ensure_packages_listing(pkgs).map(|_| ())
}

/// etcd for the tests, the demo and the bench: they start their own inside namespaces. The
/// package's service (started by its install on a host with an init system) would listen in
/// the root namespace: when we install it, it is stopped and disabled at once.
pub fn ensure_etcd(pkgs: &[&str]) -> Result<()> {
    let installed = ensure_packages_listing(pkgs)?;
    if installed.iter().any(|p| p == "etcd-server") {
        let quiet = |prog: &str, args: &[&str]| {
            let _ = Command::new(prog)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        quiet("systemctl", &["disable", "--now", "etcd.service"]);
        quiet("invoke-rc.d", &["etcd", "stop"]);
        quiet("update-rc.d", &["etcd", "disable"]);
        eprintln!("xtask: etcd-server's own service is disabled (the tests, demo and bench run etcd in namespaces)");
    }
    Ok(())
}

/// Installs what is missing; returns what it installed.
fn ensure_packages_listing(pkgs: &[&str]) -> Result<Vec<String>> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let quiet = |c: &mut Command| c.env("DEBIAN_FRONTEND", "noninteractive").status();
    if !quiet(Command::new("apt-get").args(["-qq", "update"]))?.success() {
        bail!("apt-get update failed");
    }
    if !quiet(Command::new("apt-get").args(["-qq", "install", "-y"]).args(&missing))?.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(missing.iter().map(|p| p.to_string()).collect())
}

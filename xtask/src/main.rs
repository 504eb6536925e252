//! Project tasks: `cargo xtask build-ebpf | build | test | demo | bench`.
//! Everything a task needs (toolchain pieces, packages, bpffs) is installed here, so a fresh
//! machine runs the README's commands with nothing done by hand.

mod packages;
mod toolchain;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel programs (installs rust-src and bpf-linker if missing).
    BuildEbpf,
    /// Build the kernel programs and the `overlay` binary (release).
    Build,
    /// Run every test: unit, BPF_PROG_TEST_RUN and end-to-end (needs root).
    Test {
        /// Extra arguments for `cargo test` (`--test e2e`, a test name filter, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bring up a three-node cluster in namespaces, show connectivity and counters, tear down.
    Demo {
        /// Leave the cluster up and print how to look around.
        #[arg(long)]
        keep: bool,
        /// Keep the cluster state in a real etcd (in its own namespace) instead of a file.
        #[arg(long)]
        etcd: bool,
    },
    /// Measure the datapath against the kernel path it replaces (see README, Performance).
    Bench {
        /// A short run (under two minutes) that proves the harness works.
        #[arg(long)]
        quick: bool,
        /// Run one section only: per-packet, overlay, services, mesh, gwbridge or control-plane.
        #[arg(long)]
        only: Option<String>,
        /// Also write one flame graph per overlay datapath (perf samples of a TCP round).
        #[arg(long)]
        flame: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.cmd {
        Cmd::BuildEbpf => build_ebpf(&root).map(|_| ()),
        Cmd::Build => build(&root),
        Cmd::Test { args } => test(&root, &args),
        Cmd::Demo { keep, etcd } => {
            toolchain::ensure_packages(packages::DEMO)?;
            if etcd {
                toolchain::ensure_etcd(packages::ETCD)?;
            }
            build(&root)?;
            let mut c = cargo(&root);
            c.args(["run", "--release", "--quiet", "-p", "overlay-tests", "--bin", "demo", "--"]);
            if keep {
                c.arg("--keep");
            }
            if etcd {
                c.arg("--etcd");
            }
            run(&mut c)
        }
        Cmd::Bench { quick, only, flame } => {
            build(&root)?;
            toolchain::ensure_packages(packages::BENCH)?;
            toolchain::ensure_etcd(packages::ETCD)?;
            if flame {
                toolchain::ensure_packages(packages::FLAME)?;
            }
            let mut c = cargo(&root);
            c.args(["run", "--release", "--quiet", "-p", "overlay-tests", "--bin", "bench", "--"]);
            if quick {
                c.arg("--quick");
            }
            if let Some(o) = only {
                c.args(["--only", &o]);
            }
            if flame {
                c.arg("--flame");
            }
            run(&mut c)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Where the built object goes; overlay-user's build script embeds it from here.
pub fn bpf_object(root: &Path) -> PathBuf {
    root.join("target/bpf/overlay.bpf.o")
}

fn cargo(root: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root);
    c
}

fn run(c: &mut Command) -> Result<()> {
    let status = c.status().with_context(|| format!("running {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

fn build_ebpf(root: &Path) -> Result<PathBuf> {
    let tools = toolchain::ensure_ebpf_toolchain()?;
    let dir = root.join("overlay-ebpf");
    let path = format!("{}:{}", tools.bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut c = Command::new("cargo");
    c.current_dir(&dir)
        .env("PATH", &path)
        // The outer cargo's variables would point the inner build at the stable toolchain.
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .args(["+nightly", "build", "--release"]);
    run(&mut c)?;
    let built = dir.join("target/bpfel-unknown-none/release/overlay");
    let out = bpf_object(root);
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
    Ok(out)
}

fn build(root: &Path) -> Result<()> {
    toolchain::ensure_packages(packages::BUILD)?;
    build_ebpf(root)?;
    run(cargo(root).args(["build", "--release", "--quiet", "-p", "overlay-user", "-p", "overlay-tests"]))
}

/// `cargo fmt --check` and `cargo clippy -D warnings` over the workspace and the kernel crate.
fn lint(root: &Path) -> Result<()> {
    toolchain::ensure_components("stable", &["rustfmt", "clippy"])?;
    toolchain::ensure_components("nightly", &["rustfmt"])?;
    run(cargo(root).args(["fmt", "--all", "--check"])).context("formatting differs: run `cargo fmt --all`")?;
    let kernel = root.join("overlay-ebpf");
    let mut fmt_kernel = Command::new("cargo");
    fmt_kernel.current_dir(&kernel).env_remove("RUSTUP_TOOLCHAIN").env_remove("CARGO").env_remove("RUSTC");
    run(fmt_kernel.args(["+nightly", "fmt", "--check"]))
        .context("kernel crate formatting differs: run `cargo +nightly fmt` in overlay-ebpf")?;
    run(cargo(root).args(["clippy", "--workspace", "--all-targets", "--release", "--quiet", "--", "-D", "warnings"]))
        .context("clippy found warnings")?;
    Ok(())
}

fn test(root: &Path, args: &[String]) -> Result<()> {
    toolchain::ensure_packages(packages::TEST)?;
    toolchain::ensure_packages(packages::TEST_TLS)?;
    toolchain::ensure_etcd(packages::ETCD)?;
    build(root)?;
    // The whole suite also holds the code to its style and lints; a filtered run skips them.
    if args.is_empty() {
        lint(root)?;
    }
    let mut c = cargo(root);
    c.args(["test", "--release", "--workspace", "--no-fail-fast"]);
    // End-to-end tests each build a whole cluster; two cores run them best one at a time.
    c.args(args).args(["--", "--test-threads=1"]);
    c.stdout(Stdio::piped());
    let mut child = c.spawn().with_context(|| format!("running {c:?}"))?;
    // Echo the output and add up every test binary's result line for one closing summary.
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("no stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| {
                rest.split(';')
                    .find_map(|p| p.trim().strip_suffix(word)?.trim().rsplit(' ').next()?.parse::<u64>().ok())
            };
            passed += num("passed").unwrap_or(0);
            failed += num("failed").unwrap_or(0);
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

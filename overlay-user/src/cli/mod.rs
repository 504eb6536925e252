//! The command line: one file per verb. Each verb parses its arguments and calls the library.

mod check;
mod conntrack;
mod down;
mod nodes;
mod run;
mod services;
mod state;
mod stats;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};
use overlay::DEFAULT_RUN_DIR;

#[derive(Parser)]
#[command(name = "overlay", version, about = "eBPF VXLAN overlay for container hosts")]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Check(check::Args),
    Run(run::Args),
    Down(down::Args),
    Stats(stats::Args),
    Services(services::Args),
    Conntrack(conntrack::Args),
    #[command(subcommand)]
    State(state::Cmd),
    Nodes(nodes::Args),
}

impl Cli {
    pub fn run(self) -> Result<ExitCode> {
        match self.cmd {
            Cmd::Check(a) => check::main(a),
            Cmd::Run(a) => run::main(a),
            Cmd::Down(a) => down::main(a),
            Cmd::Stats(a) => stats::main(a),
            Cmd::Services(a) => services::main(a),
            Cmd::Conntrack(a) => conntrack::main(a),
            Cmd::State(c) => state::main(c),
            Cmd::Nodes(a) => nodes::main(a),
        }
    }
}

/// The node a command acts for: its name becomes a directory name under the run dir, so it is
/// checked like the state file's node names.
#[derive(clap::Args)]
struct NodeArgs {
    #[arg(long, value_parser = node_name)]
    node: String,
    /// Holds the bpffs with the pins (bpffs/) and the agent's records (nodes/).
    #[arg(long, env = "OVERLAY_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
}

fn node_name(s: &str) -> Result<String, String> {
    overlay::state::valid_node_name(s).map(|()| s.to_string())
}

/// Where the cluster state is kept, for `overlay run`, `overlay state` and `overlay nodes`.
#[derive(clap::Args)]
struct StoreArgs {
    /// etcd://HOST:PORT[,HOST:PORT...]/PREFIX (one key per object under PREFIX).
    #[arg(long, env = "OVERLAY_STORE")]
    store: Option<String>,
    /// CA certificate (PEM) to verify etcd's (turns TLS on).
    #[arg(long, requires = "store")]
    etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-cert auth (turns TLS on; with --etcd-key).
    #[arg(long, requires = "store")]
    etcd_cert: Option<PathBuf>,
    #[arg(long, requires = "store")]
    etcd_key: Option<PathBuf>,
}

impl StoreArgs {
    fn config(&self) -> Result<Option<overlay::store::StoreConfig>> {
        let Some(url) = &self.store else { return Ok(None) };
        let tls = overlay::store::Tls {
            cacert: self.etcd_cacert.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
        };
        Ok(Some(overlay::store::StoreConfig::parse(url, tls)?))
    }

    fn required(&self) -> Result<overlay::store::StoreConfig> {
        self.config()?.ok_or_else(|| anyhow::anyhow!("--store etcd://HOST:PORT/PREFIX is required (or OVERLAY_STORE)"))
    }
}

/// A one-shot command's runtime (the agent builds its own).
fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

//! The command line: one file per verb. Each verb parses its arguments and calls the library.

mod check;
mod conntrack;
mod down;
mod run;
mod services;
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

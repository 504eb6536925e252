//! `overlay run`: the agent for one node, in that node's network namespace.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use overlay::{
    agent::{self, FileSource},
    datapath::DecapMode,
};

/// Run the agent for NODE in this network namespace, following the state file.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    state: PathBuf,
    #[command(flatten)]
    node: super::NodeArgs,
    /// Where decapsulation runs on the underlay interface.
    #[arg(long, value_enum, default_value_t = DecapChoice::Auto)]
    decap: DecapChoice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DecapChoice {
    /// TC on veth underlays (measured faster there, see README), XDP elsewhere.
    Auto,
    Xdp,
    Tc,
}

pub fn main(a: Args) -> Result<ExitCode> {
    let decap = match a.decap {
        DecapChoice::Auto => None,
        DecapChoice::Xdp => Some(DecapMode::Xdp),
        DecapChoice::Tc => Some(DecapMode::Tc),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let source = FileSource::new(&a.state)?;
        agent::run(source, &a.node.node, &a.node.run_dir, decap).await
    })?;
    Ok(ExitCode::SUCCESS)
}

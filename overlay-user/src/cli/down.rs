//! `overlay down`: unload everything the agent created for a node (stopping the agent does not).

use std::process::ExitCode;

use anyhow::Result;

/// Remove everything the agent created for NODE (veths, programs, maps).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    node: super::NodeArgs,
}

pub fn main(a: Args) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(overlay::agent::down(&a.node.node, &a.node.run_dir))?;
    Ok(ExitCode::SUCCESS)
}

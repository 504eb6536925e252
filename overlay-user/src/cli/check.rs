//! `overlay check`: validate a state file without touching the host, with the same rules and
//! messages as `overlay run`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use overlay::state;

/// Validate a state file without touching the host.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    state: PathBuf,
    /// Also check what only matters on this node (it exists; its sandboxes exist).
    #[arg(long, value_parser = super::node_name)]
    node: Option<String>,
}

pub fn main(a: Args) -> Result<ExitCode> {
    let s = match state::load(&a.state) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("overlay: invalid state: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(node) = a.node {
        if let Err(problems) = state::check_for_node(&s, &node) {
            eprintln!("overlay: state not applicable on node {node}:\n{}", state::list_problems(&problems));
            return Ok(ExitCode::FAILURE);
        }
    }
    println!(
        "{}: ok ({} nodes, {} networks, {} endpoints, vxlan port {})",
        a.state.display(),
        s.nodes.len(),
        s.networks.len(),
        s.endpoints.len(),
        s.vxlan_port
    );
    Ok(ExitCode::SUCCESS)
}

//! `overlay stats`: the datapath's counters, read from the pins (the agent need not run), and
//! the local endpoints the agent could not plumb.

use std::{collections::BTreeMap, process::ExitCode};

use anyhow::Result;
use overlay::{
    agent::{Paths, Record},
    datapath::Counters,
};

/// Print the datapath's forward and per-reason drop counters for NODE.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    node: super::NodeArgs,
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Stats {
    #[serde(flatten)]
    counters: Counters,
    /// Endpoint name -> why it is not plumbed (the agent retries).
    not_plumbed: BTreeMap<String, String>,
}

pub fn main(a: Args) -> Result<ExitCode> {
    let paths = Paths::new(&a.node.run_dir, &a.node.node);
    let counters = Counters::from_pins(&paths.pins)?;
    let not_plumbed = Record::load(&paths.record_file())?.map(|r| r.failed).unwrap_or_default();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&Stats { counters, not_plumbed })?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", counters.render());
    if !not_plumbed.is_empty() {
        println!("not plumbed (retried every 2 s):");
        for (ep, why) in &not_plumbed {
            println!("  {ep}: {why}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `overlay stats`: the datapath's counters, read from the pins (the agent need not run).

use std::process::ExitCode;

use anyhow::Result;
use overlay::{agent::Paths, datapath::Counters};

/// Print the datapath's forward and per-reason drop counters for NODE.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    node: super::NodeArgs,
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> Result<ExitCode> {
    let c = Counters::from_pins(&Paths::new(&a.node.run_dir, &a.node.node).pins)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", c.render());
    }
    Ok(ExitCode::SUCCESS)
}

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
    /// docker_gwbridge, when the node has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    gwbridge: Option<Gwbridge>,
}

#[derive(serde::Serialize)]
struct Gwbridge {
    bridge: String,
    /// Sandbox -> its gwbridge address.
    ports: BTreeMap<String, String>,
    /// New connections from outside into the bridge, dropped by the node's nftables table
    /// (netfilter's drops, not the datapath's).
    inbound_dropped: Option<u64>,
}

pub fn main(a: Args) -> Result<ExitCode> {
    let paths = Paths::new(&a.node.run_dir, &a.node.node);
    let counters = Counters::from_pins(&paths.pins)?;
    let record = Record::load(&paths.record_file())?.unwrap_or_default();
    let not_plumbed = record.failed.clone();
    let gwbridge = record.gw_bridge.as_ref().map(|b| Gwbridge {
        bridge: b.name.clone(),
        ports: record.gw_ports.iter().map(|(ns, p)| (ns.display().to_string(), p.ip.to_string())).collect(),
        inbound_dropped: overlay::gwbridge::nft_inbound_dropped().ok().flatten(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&Stats { counters, not_plumbed, gwbridge })?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", counters.render());
    if let Some(g) = &gwbridge {
        let dropped = g.inbound_dropped.map_or("unknown (nft)".to_string(), |n| n.to_string());
        println!(
            "gwbridge {}: {} container(s); new connections from outside dropped by nftables: {dropped}",
            g.bridge,
            g.ports.len()
        );
    }
    if !not_plumbed.is_empty() {
        println!("not plumbed (retried every 2 s):");
        for (ep, why) in &not_plumbed {
            println!("  {ep}: {why}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

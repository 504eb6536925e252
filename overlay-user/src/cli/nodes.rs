//! `overlay nodes`: which nodes' agents are live on the store and which revision each applied.

use std::process::ExitCode;

use anyhow::Result;
use overlay::store::{self, revision_name};

use super::{block_on, StoreArgs};

/// Show the nodes of the stored state, whether each agent is live, and what it applied.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> Result<ExitCode> {
    let cfg = a.store.required()?;
    let view = block_on(store::nodes(&cfg))?;
    if a.json {
        let out = serde_json::json!({
            "revision": view.revision,
            "written": view.written,
            "nodes": view.rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} at {}; state last written at {}",
        cfg.url(),
        revision_name(view.revision),
        revision_name(view.written)
    );
    println!("{:<20} {:<6} {:<16} {:<14} {:<9} VERSION", "NODE", "LIVE", "ADDRESS", "APPLIED", "CURRENT");
    for r in &view.rows {
        let (live, address, applied, current, version) = match &r.live {
            Some(l) => {
                let rev = l.applied.strip_prefix("etcd:").and_then(|n| n.parse::<i64>().ok()).unwrap_or(0);
                let current = if rev >= view.written { "yes" } else { "no" };
                (
                    "yes",
                    l.address.clone().unwrap_or_else(|| "-".into()),
                    if l.applied.is_empty() { "-".to_string() } else { l.applied.clone() },
                    current,
                    l.version.clone(),
                )
            }
            None => ("no", "-".into(), "-".into(), "-", "-".into()),
        };
        let name = if r.in_state { r.node.clone() } else { format!("{} (not in state)", r.node) };
        println!("{name:<20} {live:<6} {address:<16} {applied:<14} {current:<9} {version}");
    }
    Ok(ExitCode::SUCCESS)
}

//! `overlay conntrack`: the connections the balancer tracks on a node, from the pins.

use std::process::ExitCode;

use anyhow::Result;
use overlay::{
    agent::{Paths, Record},
    datapath::flows_from_pins,
};

/// List (or count) the balanced connections tracked on NODE.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    node: super::NodeArgs,
    /// Only this service's connections (its name in the state).
    #[arg(long)]
    service: Option<String>,
    /// Only connections to this backend (its endpoint name).
    #[arg(long)]
    backend: Option<String>,
    /// Print the number of connections only.
    #[arg(long)]
    count: bool,
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> Result<ExitCode> {
    let paths = Paths::new(&a.node.run_dir, &a.node.node);
    let views = Record::load(&paths.record_file())?.map(|r| r.services).unwrap_or_default();
    let mut flows = flows_from_pins(&paths.pins)?;
    if let Some(s) = &a.service {
        // A VIP is the service's alone; a node's address is shared by every published port.
        let keys: Vec<_> = views
            .iter()
            .filter(|v| &v.service == s)
            .map(|v| (v.vip, v.published.as_ref().map(|p| p.published)))
            .collect();
        flows.retain(|f| keys.iter().any(|(vip, port)| *vip == f.vip && port.is_none_or(|p| p == f.port)));
    }
    if let Some(b) = &a.backend {
        let ips: Vec<_> = views.iter().flat_map(|v| &v.backends).filter(|x| &x.endpoint == b).map(|x| x.ip).collect();
        flows.retain(|f| ips.contains(&f.backend));
    }
    if a.count {
        if a.json {
            println!("{}", serde_json::json!({ "count": flows.len() }));
        } else {
            println!("{}", flows.len());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&flows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<5} {:<21} {:<21} {:<21} {:<8} {:>6}", "proto", "client", "vip / node", "backend", "state", "idle s");
    for f in &flows {
        println!(
            "{:<5} {:<21} {:<21} {:<21} {:<8} {:>6}",
            f.proto,
            format!("{}:{}", f.client, f.client_port),
            format!("{}:{}", f.vip, f.port),
            format!("{}:{}", f.backend, f.backend_port),
            f.state,
            f.idle_seconds
        );
    }
    println!("{} connection(s)", flows.len());
    Ok(ExitCode::SUCCESS)
}

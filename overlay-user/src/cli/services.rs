//! `overlay services`: each VIP and published port with its scheduler and backends, weights,
//! connections and traffic, the way `ipvsadm -Ln --stats` shows IPVS; a published port also with
//! its own counters and drops by reason. Names come from the agent's record,
//! numbers from the pins (the agent need not run).

use std::process::ExitCode;

use anyhow::Result;
use overlay::{
    agent::{Paths, Record},
    datapath::{flows_from_pins, lb_stats_from_pins, port_stats_from_pins, ServiceView},
};
use overlay_common::stats::DropReason;
use serde::Serialize;

/// Print the balanced services of NODE: VIPs, ports, scheduler, backends and their counters.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    node: super::NodeArgs,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    view: ServiceView,
    backends: Vec<BackendRow>,
    /// The VIP's totals: the sums over its backends.
    total: Totals,
    /// A published port's own counters (its traffic and its drops by reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<PortRow>,
}

#[derive(Serialize)]
struct PortRow {
    conns: u64,
    in_pkts: u64,
    in_bytes: u64,
    out_pkts: u64,
    out_bytes: u64,
    /// Drop reason -> packets (non-zero only).
    drops: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Serialize, Default)]
struct Totals {
    active: u64,
    inactive: u64,
    conns: u64,
    in_pkts: u64,
    in_bytes: u64,
    out_pkts: u64,
    out_bytes: u64,
}

impl Totals {
    fn plus(&self, o: &Totals) -> Totals {
        Totals {
            active: self.active + o.active,
            inactive: self.inactive + o.inactive,
            conns: self.conns + o.conns,
            in_pkts: self.in_pkts + o.in_pkts,
            in_bytes: self.in_bytes + o.in_bytes,
            out_pkts: self.out_pkts + o.out_pkts,
            out_bytes: self.out_bytes + o.out_bytes,
        }
    }
}

#[derive(Serialize)]
struct BackendRow {
    endpoint: String,
    ip: std::net::Ipv4Addr,
    node: String,
    weight: u32,
    /// Share of new connections (of the lookup table).
    share_percent: f64,
    #[serde(flatten)]
    counts: Totals,
}

pub fn main(a: Args) -> Result<ExitCode> {
    let paths = Paths::new(&a.node.run_dir, &a.node.node);
    let views = Record::load(&paths.record_file())?.map(|r| r.services).unwrap_or_default();
    let ids: Vec<u32> = views.iter().flat_map(|v| v.backends.iter().map(|b| b.id)).collect();
    let stats = lb_stats_from_pins(&paths.pins, &ids)?;
    let flows = flows_from_pins(&paths.pins)?;
    let port_ids: Vec<u32> = views.iter().filter(|v| v.published.is_some()).map(|v| v.id).collect();
    let ports = if port_ids.is_empty() { Default::default() } else { port_stats_from_pins(&paths.pins, &port_ids)? };
    let rows: Vec<Row> = views
        .into_iter()
        .map(|v| {
            let backends = v
                .backends
                .iter()
                .map(|b| {
                    let s = stats.get(&b.id).copied().unwrap_or_default();
                    let mine = flows.iter().filter(|f| f.backend_id == b.id && f.vip == v.vip);
                    let (active, inactive) =
                        mine.fold((0, 0), |(a, i), f| if f.state == "active" { (a + 1, i) } else { (a, i + 1) });
                    BackendRow {
                        endpoint: b.endpoint.clone(),
                        ip: b.ip,
                        node: b.node.clone(),
                        weight: b.weight,
                        share_percent: if v.table_size > 0 {
                            100.0 * b.slots as f64 / v.table_size as f64
                        } else {
                            0.0
                        },
                        counts: Totals {
                            active,
                            inactive,
                            conns: s.conns,
                            in_pkts: s.in_pkts,
                            in_bytes: s.in_bytes,
                            out_pkts: s.out_pkts,
                            out_bytes: s.out_bytes,
                        },
                    }
                })
                .collect::<Vec<BackendRow>>();
            let total = backends.iter().fold(Totals::default(), |t, b| t.plus(&b.counts));
            let port = v.published.as_ref().and_then(|_| ports.get(&v.id)).map(|s| PortRow {
                conns: s.traffic.conns,
                in_pkts: s.traffic.in_pkts,
                in_bytes: s.traffic.in_bytes,
                out_pkts: s.traffic.out_pkts,
                out_bytes: s.traffic.out_bytes,
                drops: DropReason::ALL
                    .iter()
                    .filter(|r| s.drops[**r as usize] != 0)
                    .map(|r| (r.name(), s.drops[*r as usize]))
                    .collect(),
            });
            Row { view: v, backends, total, port }
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no balanced services on this node");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<30} {:>6} {:>6} {:>6} {:>6} {:>8} {:>10} {:>12} {:>10} {:>12}",
        "VIP:ports / -> backend",
        "Weight",
        "Share",
        "Active",
        "InAct",
        "Conns",
        "InPkts",
        "InBytes",
        "OutPkts",
        "OutBytes"
    );
    for r in &rows {
        let protos = r.view.ports.iter().map(|p| p.split('/').next().unwrap_or("")).collect::<Vec<_>>();
        let nums = r.view.ports.iter().map(|p| p.split('/').nth(1).unwrap_or("")).collect::<Vec<_>>();
        match &r.view.published {
            None => println!(
                "{} {}:{} {} (service {}, network {})",
                protos.join(",").to_uppercase(),
                r.view.vip,
                nums.join(","),
                r.view.scheduler,
                r.view.service,
                r.view.network
            ),
            Some(p) => println!(
                "{} {}:{} -> :{} {} (service {}, published, mode {}, over network {})",
                p.protocol.to_uppercase(),
                r.view.vip,
                p.published,
                p.target,
                r.view.scheduler,
                r.view.service,
                p.mode,
                r.view.network
            ),
        }
        if let Some(p) = &r.port {
            let drops: Vec<String> = p.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!(
                "  {:<30} {:>6} {:>6} {:>6} {:>6} {:>8} {:>10} {:>12} {:>10} {:>12}{}",
                "(published port)",
                "",
                "",
                "",
                "",
                p.conns,
                p.in_pkts,
                p.in_bytes,
                p.out_pkts,
                p.out_bytes,
                if drops.is_empty() { String::new() } else { format!("  drops: {}", drops.join(", ")) }
            );
        }
        let t = &r.total;
        println!(
            "  {:<30} {:>6} {:>6} {:>6} {:>6} {:>8} {:>10} {:>12} {:>10} {:>12}",
            "(all backends)", "", "", t.active, t.inactive, t.conns, t.in_pkts, t.in_bytes, t.out_pkts, t.out_bytes
        );
        for b in &r.backends {
            println!(
                "  -> {:<27} {:>6} {:>5.1}% {:>6} {:>6} {:>8} {:>10} {:>12} {:>10} {:>12}",
                format!("{} ({}@{})", b.ip, b.endpoint, b.node),
                b.weight,
                b.share_percent,
                b.counts.active,
                b.counts.inactive,
                b.counts.conns,
                b.counts.in_pkts,
                b.counts.in_bytes,
                b.counts.out_pkts,
                b.counts.out_bytes
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `overlay services`: each VIP with its scheduler and backends, weights, connections and
//! traffic, the way `ipvsadm -Ln --stats` shows IPVS. Names come from the agent's record,
//! numbers from the pins (the agent need not run).

use std::process::ExitCode;

use anyhow::Result;
use overlay::{
    agent::{Paths, Record},
    datapath::{flows_from_pins, lb_stats_from_pins, ServiceView},
};
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
            Row { view: v, backends, total }
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
        println!(
            "{} {}:{} {} (service {}, network {})",
            r.view.ports.iter().map(|p| p.split('/').next().unwrap_or("")).collect::<Vec<_>>().join(",").to_uppercase(),
            r.view.vip,
            r.view.ports.iter().map(|p| p.split('/').nth(1).unwrap_or("")).collect::<Vec<_>>().join(","),
            r.view.scheduler,
            r.view.service,
            r.view.network
        );
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

//! `overlay`: the agent and its CLI.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};
use overlay::{
    agent::{self, DecapChoice, Paths},
    datapath::Counters,
    state, DEFAULT_RUN_DIR,
};

#[derive(Parser)]
#[command(name = "overlay", version, about = "eBPF VXLAN overlay for container hosts")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate a state file without touching the host.
    Check {
        #[arg(long)]
        state: PathBuf,
        /// Also check what only matters on this node (it exists; its sandboxes exist).
        #[arg(long)]
        node: Option<String>,
    },
    /// Run the agent for NODE in this network namespace, following the state file.
    Run {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        node: String,
        /// Holds the bpffs with the pins (bpffs/) and the agent's records (nodes/).
        #[arg(long, env = "OVERLAY_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Where decapsulation runs on the underlay interface.
        #[arg(long, value_enum, default_value_t = DecapChoice::Auto)]
        decap: DecapChoice,
    },
    /// Remove everything the agent created for NODE (veths, programs, maps).
    Down {
        #[arg(long)]
        node: String,
        #[arg(long, env = "OVERLAY_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Print the datapath's forward and per-reason drop counters for NODE.
    Stats {
        #[arg(long)]
        node: String,
        #[arg(long, env = "OVERLAY_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // netlink-packet-route warns about every attribute newer than itself.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,netlink_packet_route=error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    match real_main(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("overlay: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Check { state: path, node } => {
            let s = match state::load(&path) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("overlay: invalid state: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            if let Some(node) = node {
                if let Err(problems) = state::check_for_node(&s, &node) {
                    eprintln!("overlay: state not applicable on node {node}:");
                    for p in problems {
                        eprintln!("  - {p}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
            }
            println!(
                "{}: ok ({} nodes, {} networks, {} endpoints, vxlan port {})",
                path.display(),
                s.nodes.len(),
                s.networks.len(),
                s.endpoints.len(),
                s.vxlan_port
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { state, node, run_dir, decap } => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(agent::run(&state, &node, &run_dir, decap))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down { node, run_dir } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(agent::down(&node, &run_dir))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stats { node, run_dir, json } => {
            let c = Counters::from_pins(&Paths::new(&run_dir, &node).pins)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", c.render());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

//! `overlay`: the agent and its CLI. One file per verb under `cli/`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

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
    match cli::Cli::parse().run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("overlay: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

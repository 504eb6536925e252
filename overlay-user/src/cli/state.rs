//! `overlay state push|get|put|del`: the cluster state in the store, moved in and out whole or
//! one object at a time. Every write is validated against the whole resulting state and lands
//! in one transaction, or not at all.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use overlay::{state, store};

use super::{block_on, StoreArgs};

/// The cluster state in etcd.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Replace the stored state with a state file's (validated whole; one transaction).
    Push {
        #[arg(long)]
        state: PathBuf,
        #[command(flatten)]
        w: Write,
    },
    /// Print the stored state as a state file (`overlay check` accepts it).
    Get {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Add or replace the objects (tables) of a file, validated with the rest of the state.
    Put {
        /// A file of one or more tables in the state file's format.
        file: PathBuf,
        #[command(flatten)]
        w: Write,
    },
    /// Delete objects by key: `endpoints/NAME`, `services/NAME`, `nodes/NAME`, `gwbridge`, ...
    Del {
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        w: Write,
    },
}

#[derive(clap::Args)]
pub struct Write {
    #[command(flatten)]
    store: StoreArgs,
    /// Fail unless the state is unchanged since this revision (as `overlay state get` printed
    /// it, `etcd:N` or N): a read-modify-write that must not overwrite another writer.
    #[arg(long, value_parser = revision)]
    if_revision: Option<i64>,
}

fn revision(s: &str) -> Result<i64, String> {
    s.trim_start_matches("etcd:").parse::<i64>().map_err(|_| format!("{s:?} is not a revision (etcd:N)"))
}

pub fn main(cmd: Cmd) -> Result<ExitCode> {
    let (written, what) = match cmd {
        Cmd::Get { store } => {
            let cfg = store.required()?;
            let (text, bad) = block_on(store::get(&cfg))?;
            print!("{text}");
            if bad.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("overlay: keys holding no valid object (left out above):\n{}", state::list_problems(&bad));
            return Ok(ExitCode::FAILURE);
        }
        Cmd::Push { state, w } => (block_on(store::push(&w.store.required()?, &state, w.if_revision)), "pushed"),
        Cmd::Put { file, w } => (block_on(store::put(&w.store.required()?, &file, w.if_revision)), "put"),
        Cmd::Del { keys, w } => (block_on(store::del(&w.store.required()?, &keys, w.if_revision)), "deleted"),
    };
    match written {
        Ok(w) => {
            println!("{what}: {w}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("overlay: nothing written: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

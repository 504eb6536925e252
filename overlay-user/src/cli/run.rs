//! `overlay run`: the agent for one node, in that node's network namespace.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use overlay::{
    agent::{self, FileSource, Paths},
    datapath::DecapMode,
    store::EtcdSource,
};

/// Run the agent for NODE in this network namespace, following the state file or the store.
#[derive(clap::Args)]
pub struct Args {
    /// The state file (followed with inotify).
    #[arg(long, required_unless_present = "store", conflicts_with = "store")]
    state: Option<PathBuf>,
    #[command(flatten)]
    store: super::StoreArgs,
    #[command(flatten)]
    node: super::NodeArgs,
    /// Follow, validate and diff as the agent does, without a datapath (no program, map or
    /// link is touched); the log says what each version would write.
    #[arg(long)]
    dry_run: bool,
    /// Where decapsulation runs on the underlay interface.
    #[arg(long, value_enum, default_value_t = DecapChoice::Auto)]
    decap: DecapChoice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DecapChoice {
    /// TC on veth underlays (measured faster there, see README), XDP elsewhere.
    Auto,
    Xdp,
    Tc,
}

pub fn main(a: Args) -> Result<ExitCode> {
    let decap = match a.decap {
        DecapChoice::Auto => None,
        DecapChoice::Xdp => Some(DecapMode::Xdp),
        DecapChoice::Tc => Some(DecapMode::Tc),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        if a.dry_run {
            return match (&a.state, a.store.config()?) {
                (Some(file), _) => agent::dry_run(FileSource::new(file)?, &a.node.node).await,
                (None, Some(cfg)) => agent::dry_run(EtcdSource::start(cfg, &a.node.node, None), &a.node.node).await,
                (None, None) => anyhow::bail!("give --state FILE or --store etcd://..."),
            };
        }
        match (&a.state, a.store.config()?) {
            (Some(file), _) => agent::run(FileSource::new(file)?, &a.node.node, &a.node.run_dir, decap).await,
            (None, Some(cfg)) => {
                let cache = Paths::new(&a.node.run_dir, &a.node.node).records.join("store-cache.toml");
                agent::run(EtcdSource::start(cfg, &a.node.node, Some(cache)), &a.node.node, &a.node.run_dir, decap)
                    .await
            }
            (None, None) => anyhow::bail!("give --state FILE or --store etcd://..."),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

//! `overlay down`: remove the veths, links, maps, gwbridge and nftables table the agent created
//! for a node.

use std::path::Path;

use anyhow::{Context as _, Result};
use tracing::info;

use super::Paths;
use crate::{gwbridge, netlink::Netlink, plumb};

pub async fn down(node: &str, run_dir: &Path) -> Result<()> {
    let paths = Paths::new(run_dir, node);
    let nl = Netlink::connect()?;
    let mut removed = 0;
    // Every veth with our naming in this namespace, recorded or not (a crash may leave some).
    for l in nl.links().await? {
        if (plumb::is_host_veth_name(&l.name) || gwbridge::is_port_name(&l.name)) && l.is_veth {
            nl.delete_link(l.index).await?;
            removed += 1;
        }
    }
    // docker_gwbridge: our nftables table, and the bridge if the agent created it.
    let record = super::Record::load(&paths.record_file()).ok().flatten().unwrap_or_default();
    if !record.gw_rules.is_empty() {
        gwbridge::nft_remove()?;
    }
    if let Some(b) = record.gw_bridge.filter(|b| b.created) {
        nl.delete_link_named(&b.name).await?;
    }
    // Removing the link pins detaches the programs; removing the map pins frees the maps.
    if paths.pins.exists() {
        std::fs::remove_dir_all(&paths.pins).with_context(|| format!("removing {}", paths.pins.display()))?;
    }
    if paths.records.exists() {
        std::fs::remove_dir_all(&paths.records)?;
    }
    info!(node, veths = removed, "overlay removed from this node");
    Ok(())
}

//! `overlay run --dry-run`: the agent's source, validation and map diff without a datapath:
//! no program, no map, no netlink. Each version is turned into the map contents the node would
//! need and diffed against the previous; the log says how many writes it would make. For
//! watching a store from anywhere, and for measuring fan-out to many agents on one machine.

use std::{collections::BTreeMap, time::Instant};

use anyhow::Result;
use tracing::{error, info};

use super::{run::first_state, StateSource};
use crate::{
    datapath::{desired_contents, Contents},
    netlink::Underlay,
    state::ClusterState,
};

pub async fn dry_run(mut source: impl StateSource, node: &str) -> Result<()> {
    let (state, revision) = first_state(&mut source, node).await?;
    // A stand-in underlay: only the MTU of networks without one depends on it.
    let underlay = Underlay { ifindex: 0, name: "dry-run".into(), mtu: 1500, is_veth: false, mac: [0; 6] };
    let mut current = Contents::default();
    let mut apply = |state: &ClusterState, revision: &str, what: &str| {
        let t0 = Instant::now();
        match desired_contents(state, node, &underlay, &BTreeMap::new(), None, &current) {
            Ok(desired) => {
                let map_writes = current.count_changes(&desired);
                current = desired;
                info!(revision, map_writes, us = t0.elapsed().as_micros() as u64, "{what} (dry run)");
                true
            }
            Err(e) => {
                error!(revision, "state not applicable: {e:#}");
                false
            }
        }
    };
    if apply(&state, &revision, "state applied") {
        source.applied(&revision, &state);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            v = source.next() => {
                let v = v?;
                match v.state {
                    Ok(s) => {
                        if apply(&s, &v.revision, "state change applied") {
                            source.applied(&v.revision, &s);
                        }
                    }
                    Err(e) => error!("new state rejected, keeping the last good state:\n{e}"),
                }
            }
        }
    }
    source.stop().await;
    Ok(())
}

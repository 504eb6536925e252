//! `overlay run`: apply the first state, then follow the source until SIGINT/SIGTERM.
//!
//! The first version must be valid (the node's address locates the underlay). After that, an
//! invalid version is reported once and ignored; the last good state keeps running. Every 2 s the
//! last good state is applied again: that retries endpoints that could not be plumbed yet and
//! repairs what changed under the agent (a sandbox recreated, a veth deleted), touching only what
//! differs.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use anyhow::Result;
use tracing::{error, info, warn};

use super::{Agent, ReconcileReport, StateSource, Version};
use crate::{datapath::DecapMode, netlink::Changes, state::ClusterState};

const RETRY: Duration = Duration::from_secs(2);
/// How often idle conntrack entries are removed (their timeouts are seconds to hours).
const SWEEP: Duration = Duration::from_secs(10);

pub async fn run(mut source: impl StateSource, node: &str, run_dir: &Path, decap: Option<DecapMode>) -> Result<()> {
    let (state, revision) = first_state(&mut source, node).await?;
    let mut agent = Agent::start(&state, node, run_dir, decap).await?;
    let mut follow = Follow::default();
    follow.apply(&mut agent, state, revision, Why::First).await;
    follow.tell(&mut source);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut changes = Changes::subscribe()?;
    let mut tick = tokio::time::interval(RETRY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            v = source.next() => follow.offer(&mut agent, v?).await,
            _ = tick.tick() => follow.tick(&mut agent).await,
            _ = sweep.tick() => match agent.sweep_conntrack() {
                Ok(0) => {}
                Ok(n) => tracing::debug!(removed = n, "idle conntrack entries removed"),
                Err(e) => warn!("conntrack sweep failed (retried in {SWEEP:?}): {e:#}"),
            },
            c = changes.next() => {
                c?;
                if let Err(e) = agent.refresh_nexthops().await {
                    warn!("next hops not refreshed (the next pass retries): {e:#}");
                }
            }
        }
        follow.tell(&mut source);
    }
    info!("stopping; the datapath keeps forwarding (use `overlay down` to remove it)");
    source.stop().await;
    Ok(())
}

/// The first state to start from. A file must give one at once (the user just named it); a
/// store may still be empty or lack this node: the agent says so once and waits, touching
/// nothing (a datapath left by an earlier run keeps forwarding).
pub(super) async fn first_state(source: &mut impl StateSource, node: &str) -> Result<(Arc<ClusterState>, String)> {
    let mut v = source.first().await?;
    let mut said = String::new();
    loop {
        let problem = match v.state {
            Ok(s) if s.node(node).is_some() || !source.waits_for_state() => return Ok((s, v.revision)),
            Ok(_) => format!("node {node} is not in the state"),
            Err(e) if source.waits_for_state() => format!("state rejected:\n{e}"),
            Err(e) => return Err(e.into()),
        };
        if problem != said {
            warn!(revision = %v.revision, "waiting for a state this node can apply: {problem}");
            said = problem;
        }
        v = source.next().await?;
    }
}

/// Why a state is being applied: only what changes something is logged.
#[derive(Clone, Copy)]
enum Why {
    First,
    Change,
    /// The same state again: retries and repairs.
    Repair,
}

/// What the agent did with the versions it has seen, so each problem is logged once.
#[derive(Default)]
struct Follow {
    /// The last state applied (perhaps with some endpoints failing), kept for retries and repairs.
    good: Option<(Arc<ClusterState>, String)>,
    /// A valid state that could not be applied at all yet: retried on every tick.
    pending: Option<(Arc<ClusterState>, String)>,
    /// Last message logged for the source and for each failing endpoint.
    said: Option<String>,
    failing: BTreeMap<String, String>,
    /// Applied since the source was last told.
    untold: bool,
}

impl Follow {
    async fn offer(&mut self, agent: &mut Agent, v: Version) {
        match v.state {
            Ok(state) => self.apply(agent, state, v.revision, Why::Change).await,
            Err(e) => {
                let msg = e.to_string();
                if self.said.as_deref() != Some(msg.as_str()) {
                    error!("new state rejected, keeping the last good state:\n{msg}");
                    self.said = Some(msg);
                }
            }
        }
    }

    /// Tells the source what was applied since last time.
    fn tell(&mut self, source: &mut impl StateSource) {
        if let (true, Some((state, rev))) = (self.untold, &self.good) {
            source.applied(rev, state);
        }
        self.untold = false;
    }

    async fn tick(&mut self, agent: &mut Agent) {
        if let Some((state, rev)) = self.pending.take() {
            self.apply(agent, state, rev, Why::Change).await;
        } else if let Some((state, rev)) = self.good.take() {
            self.apply(agent, state, rev, Why::Repair).await;
        }
    }

    async fn apply(&mut self, agent: &mut Agent, state: Arc<ClusterState>, revision: String, why: Why) {
        match agent.reconcile(&state, &revision).await {
            Ok(r) => {
                self.log_applied(agent, &state, &revision, &r, why);
                self.untold |= !matches!(why, Why::Repair);
                self.good = Some((state, revision));
                self.pending = None;
                self.said = None;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if self.said.as_deref() != Some(msg.as_str()) {
                    error!("state not applied (will retry), keeping the last good state: {msg}");
                    self.said = Some(msg);
                }
                self.pending = Some((state, revision));
            }
        }
    }

    fn log_applied(&mut self, agent: &Agent, state: &ClusterState, revision: &str, r: &ReconcileReport, why: Why) {
        let ms = r.elapsed.as_millis() as u64;
        let failed = r.failed.len();
        match why {
            Why::First => {
                let local = state.local_endpoints(agent.node()).count();
                info!(
                    endpoints = state.endpoints.len(),
                    local,
                    plumbed = r.plumbed,
                    failed,
                    map_writes = r.map_writes,
                    ms,
                    "state applied"
                );
            }
            Why::Change => info!(
                revision,
                plumbed = r.plumbed,
                unplumbed = r.unplumbed,
                failed,
                map_writes = r.map_writes,
                ms,
                "state change applied"
            ),
            Why::Repair if r.plumbed + r.unplumbed + r.map_writes > 0 => {
                info!(plumbed = r.plumbed, unplumbed = r.unplumbed, map_writes = r.map_writes, ms, "repaired")
            }
            Why::Repair => {}
        }
        for (ep, why) in &r.failed {
            if self.failing.get(ep) != Some(why) {
                warn!(endpoint = %ep, "endpoint not plumbed (will retry): {why}");
            }
        }
        for ep in self.failing.keys().filter(|e| !r.failed.contains_key(*e)) {
            if r.plumbed > 0 || r.unplumbed > 0 {
                info!(endpoint = %ep, "endpoint plumbed after earlier failures");
            }
        }
        self.failing = r.failed.clone();
    }
}

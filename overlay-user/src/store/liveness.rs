//! Each agent's `PREFIX/alive/NODE` key, attached to a lease it keeps alive: the key says which
//! revision the node has applied, and disappears within the lease's TTL when the agent (or its
//! host) stops. `overlay nodes` reads these keys.

use std::time::Duration;

use anyhow::{bail, Result};
use etcd_client::PutOptions;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::debug;

use super::{
    config::{timed, StoreConfig},
    snapshot::ALIVE_DIR,
};

/// A dead agent's key goes within this.
pub const TTL_SECS: i64 = 10;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Alive {
    pub node: String,
    /// The node's address in the applied state.
    pub address: Option<String>,
    /// The agent's version.
    pub version: String,
    /// The revision of the last state applied (`etcd:N`); empty before the first.
    pub applied: String,
    pub pid: u32,
    #[serde(skip)]
    pub stopping: bool,
}

impl Alive {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            ..Default::default()
        }
    }
}

/// Keeps the key while the agent runs; reconnects (with a new lease) after any failure.
pub async fn run(cfg: StoreConfig, mut rx: watch::Receiver<Alive>) {
    let node = rx.borrow().node.clone();
    let mut wait = Duration::from_millis(200);
    loop {
        match session(&cfg, &node, &mut rx).await {
            Ok(()) => return, // stopping: lease revoked
            Err(e) => debug!("liveness key not kept ({e:#}); retrying"),
        }
        if rx.borrow().stopping {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

async fn session(cfg: &StoreConfig, node: &str, rx: &mut watch::Receiver<Alive>) -> Result<()> {
    let mut c = cfg.connect().await?;
    let lease = timed("granting a lease", c.lease_grant(TTL_SECS, None)).await?.id();
    let (mut keeper, mut acks) = timed("keeping the lease", c.lease_keep_alive(lease)).await?;
    let key = cfg.key(&format!("{ALIVE_DIR}{node}"));
    let mut tick = tokio::time::interval(Duration::from_secs(TTL_SECS as u64 / 3));
    rx.mark_changed();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                timed("renewing the lease", keeper.keep_alive()).await?;
                match timed("renewing the lease", acks.message()).await? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => bail!("lease {lease:x} expired"),
                }
            }
            r = rx.changed() => {
                r?;
                let a = rx.borrow_and_update().clone();
                if a.stopping {
                    let _ = timed("revoking the lease", c.lease_revoke(lease)).await;
                    return Ok(());
                }
                let value = serde_json::to_vec(&a)?;
                timed("writing the liveness key", c.put(key.clone(), value, Some(PutOptions::new().with_lease(lease)))).await?;
            }
        }
    }
}

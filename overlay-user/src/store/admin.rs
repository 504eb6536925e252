//! `overlay state push/get/put/del` and `overlay nodes`: one-shot commands on the store. Every
//! write validates the whole resulting state first and lands in one transaction guarded by the
//! revision it was computed from: a concurrent writer makes it fail, never interleave.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use super::{
    config::{timed, StoreConfig},
    liveness::Alive,
    snapshot::{self, Snapshot, GUARD_KEY},
    source::revision_name,
};
use crate::state::{self, Change, Kind, ObjectKey, Objects, StateError};

/// What a write did.
#[derive(Debug, Default)]
pub struct Written {
    pub puts: usize,
    pub deletes: usize,
    /// The revision of the write; `None` when there was nothing to write.
    pub revision: Option<i64>,
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.revision {
            Some(r) => write!(f, "{} put, {} deleted, at {}", self.puts, self.deletes, revision_name(r)),
            None => write!(f, "no change"),
        }
    }
}

/// Replaces the stored state with a state file's (validated whole first).
pub async fn push(cfg: &StoreConfig, file: &Path, if_revision: Option<i64>) -> Result<Written> {
    let text = state::read(file)?;
    let (new, _) = Objects::from_file_text(&text, file)?;
    let mut c = cfg.connect().await?;
    let snap = snapshot::read(&mut c, cfg).await?;
    let changes = snap.objects.diff(&new);
    // Keys that hold no valid object go (or are overwritten): the pushed file is the state.
    let bad: Vec<String> = snap.bad.keys().cloned().collect();
    write(&mut c, cfg, &snap, if_revision, &changes, &bad).await
}

/// Adds or replaces the objects in a file of tables (one or more), validated with the rest.
pub async fn put(cfg: &StoreConfig, file: &Path, if_revision: Option<i64>) -> Result<Written> {
    let text = state::read(file)?;
    let objs = Objects::from_fragment(&text, file)?;
    if objs.is_empty() {
        bail!(
            "{}: holds no table ([[nodes]], [[networks]], [[endpoints]], [[services]], [cluster], [gwbridge])",
            file.display()
        );
    }
    let mut c = cfg.connect().await?;
    let snap = snapshot::read(&mut c, cfg).await?;
    let changes: Vec<Change> = objs
        .iter()
        .filter(|(k, o)| snap.objects.get(k) != Some(*o))
        .map(|(k, o)| Change::Put(k.clone(), o.text().to_string()))
        .collect();
    write(&mut c, cfg, &snap, if_revision, &changes, &[]).await
}

/// Deletes objects by key (`endpoints/web.1`, `gwbridge`, ...), validated with the rest.
pub async fn del(cfg: &StoreConfig, keys: &[String], if_revision: Option<i64>) -> Result<Written> {
    let mut parsed = Vec::new();
    for k in keys {
        let Some(key) = ObjectKey::parse(k.trim_start_matches('/')) else {
            bail!("{k:?} is not an object key (cluster, gwbridge, nodes/NAME, networks/NAME, endpoints/NAME, services/NAME)");
        };
        parsed.push(key);
    }
    let mut c = cfg.connect().await?;
    let snap = snapshot::read(&mut c, cfg).await?;
    let mut changes = Vec::new();
    let mut bad = Vec::new();
    for key in parsed {
        if snap.objects.get(&key).is_some() {
            changes.push(Change::Delete(key));
        } else if snap.bad.contains_key(&key.path()) {
            bad.push(key.path());
        } else {
            bail!("{}: no such object in {}", key.path(), cfg.url());
        }
    }
    write(&mut c, cfg, &snap, if_revision, &changes, &bad).await
}

/// Validates `snap` changed by `changes` (and without the `bad` keys) and writes it in one
/// transaction that fails if any writer came between.
async fn write(
    c: &mut Client,
    cfg: &StoreConfig,
    snap: &Snapshot,
    if_revision: Option<i64>,
    changes: &[Change],
    drop_bad: &[String],
) -> Result<Written> {
    if let Some(r) = if_revision {
        if snap.guard_revision > r {
            bail!(
                "the state changed since {} (written at {}); nothing written",
                revision_name(r),
                revision_name(snap.guard_revision)
            );
        }
    }
    let mut result = snap.objects.clone();
    result.apply(changes).map_err(|p| StateError::Invalid { path: cfg.url().into(), problems: vec![p] })?;
    let put_keys: std::collections::HashSet<String> =
        changes.iter().filter_map(|c| if let Change::Put(k, _) = c { Some(k.path()) } else { None }).collect();
    let drop_bad: Vec<&String> = drop_bad.iter().filter(|k| !put_keys.contains(*k)).collect();
    let left_bad: Vec<_> = snap
        .bad
        .iter()
        .filter(|(k, _)| !drop_bad.contains(k) && !put_keys.contains(*k))
        .map(|(_, p)| p.clone())
        .collect();
    if !left_bad.is_empty() {
        return Err(StateError::Invalid { path: cfg.url().into(), problems: left_bad }).context(
            "the store holds keys that are not valid objects; replace or delete them (`overlay state put/del`)",
        );
    }
    result.validate().map_err(|problems| StateError::Invalid { path: cfg.url().into(), problems })?;
    if changes.is_empty() && drop_bad.is_empty() {
        return Ok(Written::default());
    }
    let mut ops = Vec::with_capacity(changes.len() + drop_bad.len() + 1);
    let mut w = Written::default();
    for ch in changes {
        match ch {
            Change::Put(k, text) => {
                w.puts += 1;
                ops.push(TxnOp::put(cfg.key(&k.path()), text.as_bytes(), None));
            }
            Change::Delete(k) => {
                w.deletes += 1;
                ops.push(TxnOp::delete(cfg.key(&k.path()), None));
            }
        }
    }
    for k in drop_bad.iter().copied() {
        w.deletes += 1;
        ops.push(TxnOp::delete(cfg.key(k), None));
    }
    ops.push(TxnOp::put(cfg.key(GUARD_KEY), revision_name(snap.revision), None));
    // The guard catches every writer using these commands (deletes included); the range
    // compares catch a foreign put (etcdctl) into any object directory since the read.
    let guard = cfg.key(GUARD_KEY);
    let mut when = vec![if snap.guard_revision == 0 {
        Compare::version(guard, CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(guard, CompareOp::Equal, snap.guard_revision)
    }];
    for kind in Kind::ALL {
        let base = cfg.key(kind.dir());
        let cmp = if kind.singleton() {
            Compare::mod_revision(base, CompareOp::Less, snap.revision + 1)
        } else {
            let (start, end) = (format!("{base}/"), format!("{base}0"));
            Compare::mod_revision(start, CompareOp::Less, snap.revision + 1).with_range(end)
        };
        when.push(cmp);
    }
    let txn = Txn::new().when(when).and_then(ops);
    let resp = match timed("writing the state to etcd", c.txn(txn)).await {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("{e:#}");
            if msg.contains("too many operations") || msg.contains("request is too large") {
                return Err(e).context(
                    "etcd refused one transaction this large: start etcd with a higher --max-txn-ops \
                     and --max-request-bytes (see README, Cluster state in etcd)",
                );
            }
            return Err(e);
        }
    };
    if !resp.succeeded() {
        bail!(
            "another writer changed the state after it was read at {}; nothing written (run it again)",
            revision_name(snap.revision)
        );
    }
    w.revision = resp.header().map(|h| h.revision());
    Ok(w)
}

/// The stored state as a state file (a first comment line names the store and revision), and
/// the keys that hold no valid object.
pub async fn get(cfg: &StoreConfig) -> Result<(String, Vec<state::Problem>)> {
    let mut c = cfg.connect().await?;
    let snap = snapshot::read(&mut c, cfg).await?;
    let text = format!("# {} at {}\n{}", cfg.url(), revision_name(snap.revision), snap.objects.to_toml());
    Ok((text, snap.bad.into_values().collect()))
}

/// One row of `overlay nodes`.
#[derive(Debug, serde::Serialize)]
pub struct NodeRow {
    pub node: String,
    /// In the stored state (a live agent may run for a node not, or no longer, in it).
    pub in_state: bool,
    pub live: Option<Alive>,
}

pub struct NodesView {
    pub revision: i64,
    /// The last write by `overlay state` commands.
    pub written: i64,
    pub rows: Vec<NodeRow>,
}

pub async fn nodes(cfg: &StoreConfig) -> Result<NodesView> {
    let mut c = cfg.connect().await?;
    let snap = snapshot::read(&mut c, cfg).await?;
    let mut rows: Vec<NodeRow> = snap
        .objects
        .iter()
        .filter(|(k, _)| k.kind == Kind::Node)
        .map(|(k, _)| NodeRow { node: k.name.clone(), in_state: true, live: None })
        .collect();
    for (node, value) in &snap.alive {
        let alive = serde_json::from_slice::<Alive>(value).ok();
        match rows.iter_mut().find(|r| &r.node == node) {
            Some(r) => r.live = alive,
            None => rows.push(NodeRow { node: node.clone(), in_state: false, live: alive }),
        }
    }
    rows.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(NodesView { revision: snap.revision, written: snap.guard_revision, rows })
}

//! What is under the prefix at one revision, sorted into state objects, liveness keys, the
//! write guard, and keys that are not valid objects (each kept as a problem naming the key).

use std::collections::BTreeMap;

use anyhow::Result;
use etcd_client::{Client, GetOptions};

use super::config::{timed, StoreConfig};
use crate::state::{Object, ObjectKey, Objects, Problem};

/// Liveness keys: `PREFIX/alive/NODE` (lease-backed, written by each agent).
pub const ALIVE_DIR: &str = "alive/";
/// Bumped by every write of `overlay state push/put/del`, in the same transaction: a writer
/// that read the store at revision R fails if this moved after R.
pub const GUARD_KEY: &str = "meta/guard";
/// Keys a page of the snapshot reads (gRPC messages have a size limit).
const PAGE: i64 = 2000;

/// What one key under the prefix is.
pub enum Entry {
    Object(ObjectKey, Object),
    /// A key or value that is not a valid object: refused, named.
    Bad(String, Problem),
    Alive(String, Vec<u8>),
    Guard,
}

/// Sorts one key (relative to the prefix) and its value.
pub fn classify(rel: &str, value: &[u8]) -> Entry {
    if let Some(node) = rel.strip_prefix(ALIVE_DIR) {
        return Entry::Alive(node.to_string(), value.to_vec());
    }
    if rel == GUARD_KEY {
        return Entry::Guard;
    }
    let bad = |field: &str, reason: &str| {
        Entry::Bad(rel.to_string(), Problem { entry: rel.to_string(), field: field.into(), reason: reason.into() })
    };
    let Some(key) = ObjectKey::parse(rel) else {
        return bad(
            "key",
            "not a key of the state (cluster, gwbridge, nodes/NAME, networks/NAME, endpoints/NAME, services/NAME)",
        );
    };
    let Ok(text) = std::str::from_utf8(value) else {
        return bad("value", "not UTF-8 text");
    };
    match Object::parse(&key, text) {
        Ok(o) => Entry::Object(key, o),
        Err(p) => Entry::Bad(rel.to_string(), p),
    }
}

#[derive(Default)]
pub struct Snapshot {
    /// The store's revision when read: a watch continues from the next.
    pub revision: i64,
    /// The revision of the state's last change seen (the newest object, or the guard key that
    /// every `overlay state` write moves): what an agent reports as applied. Alive keys move
    /// the store's revision without changing the state.
    pub state_revision: i64,
    pub objects: Objects,
    /// Keys that hold no valid object, by key relative to the prefix.
    pub bad: BTreeMap<String, Problem>,
    pub alive: BTreeMap<String, Vec<u8>>,
    /// The guard key's mod revision (0: never written).
    pub guard_revision: i64,
}

/// Reads everything under the prefix at one revision (pages after the first read at the
/// first's revision, so the whole is consistent).
pub async fn read(client: &mut Client, cfg: &StoreConfig) -> Result<Snapshot> {
    let (start, end) = cfg.range();
    let mut snap = Snapshot::default();
    let mut from = start.clone().into_bytes();
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if snap.revision > 0 {
            opts = opts.with_revision(snap.revision);
        }
        let resp = timed("reading the state from etcd", client.get(from.clone(), Some(opts))).await?;
        if snap.revision == 0 {
            snap.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        for kv in resp.kvs() {
            let rel = String::from_utf8_lossy(&kv.key()[start.len()..]).into_owned();
            let entry = classify(&rel, kv.value());
            if !matches!(entry, Entry::Alive(..)) {
                snap.state_revision = snap.state_revision.max(kv.mod_revision());
            }
            match entry {
                Entry::Object(k, o) => {
                    snap.objects.insert(k, o);
                }
                Entry::Bad(k, p) => {
                    snap.bad.insert(k, p);
                }
                Entry::Alive(n, v) => {
                    snap.alive.insert(n, v);
                }
                Entry::Guard => snap.guard_revision = kv.mod_revision(),
            }
        }
        match (resp.more(), resp.kvs().last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(snap)
}

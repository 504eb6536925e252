//! `overlay run --store`: the agent's state source on etcd. A background task reads a
//! revision-consistent snapshot, then watches from the next revision, re-parsing only the keys
//! each event names and validating the whole result; each valid or invalid version goes to the
//! agent through a one-slot mailbox (a slow agent gets the newest, never a backlog). A lost
//! watch or a compacted revision resyncs from a fresh snapshot; only a different state is
//! handed on, and reconcile applies only its difference.
//!
//! etcd unreachable: nothing is handed on, so forwarding goes on with the last state; the task
//! retries with backoff and logs the outage. An agent starting while etcd is down applies the
//! last valid state it saw (a cache beside its record) and keeps trying.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use etcd_client::{EventType, WatchOptions};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::{
    config::{timed, StoreConfig},
    liveness::{self, Alive},
    snapshot::{self, Entry, Snapshot},
};
use crate::{
    agent::{StateSource, Version},
    state::{ClusterState, ObjectKey, Objects, Problem, StateError},
};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A watch quiet this long asks etcd for a progress report ...
const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// ... and one quiet this long is taken as lost (resync from a fresh snapshot).
const SILENT_LIMIT: Duration = Duration::from_secs(8);
/// The cache is rewritten at most this often (it is only read when etcd is down at start).
const CACHE_EVERY: Duration = Duration::from_secs(1);

/// The newest version not yet taken by the agent.
#[derive(Default)]
struct Mailbox {
    slot: Mutex<Option<Version>>,
    notify: Notify,
}

impl Mailbox {
    fn put(&self, v: Version) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
        self.notify.notify_one();
    }
    /// Cancel-safe: a version stays in the slot until taken.
    async fn take(&self) -> Version {
        loop {
            if let Some(v) = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return v;
            }
            self.notify.notified().await;
        }
    }
}

pub struct EtcdSource {
    mailbox: Arc<Mailbox>,
    alive: watch::Sender<Alive>,
    follow: tokio::task::JoinHandle<()>,
    live: tokio::task::JoinHandle<()>,
}

impl EtcdSource {
    /// Starts following the store. `cache`: where the last valid state is kept for a start with
    /// etcd down. Without one (a dry run) the node's liveness key is not written either: only
    /// the node's real agent speaks for it.
    pub fn start(cfg: StoreConfig, node: &str, cache: Option<PathBuf>) -> Self {
        let mailbox = Arc::new(Mailbox::default());
        let (alive, alive_rx) = watch::channel(Alive::new(node));
        let live_cfg = cache.is_some().then(|| cfg.clone());
        let follow = tokio::spawn(follow(cfg, cache, mailbox.clone()));
        let live = tokio::spawn(async move {
            if let Some(cfg) = live_cfg {
                liveness::run(cfg, alive_rx).await
            }
        });
        Self { mailbox, alive, follow, live }
    }
}

impl Drop for EtcdSource {
    fn drop(&mut self) {
        self.follow.abort();
        self.live.abort();
    }
}

impl StateSource for EtcdSource {
    async fn first(&mut self) -> Result<Version> {
        Ok(self.mailbox.take().await)
    }

    async fn next(&mut self) -> Result<Version> {
        Ok(self.mailbox.take().await)
    }

    fn waits_for_state(&self) -> bool {
        true
    }

    fn applied(&mut self, revision: &str, state: &ClusterState) {
        let node = self.alive.borrow().node.clone();
        let address = state.node(&node).map(|n| n.address.to_string());
        self.alive.send_modify(|a| {
            a.applied = revision.to_string();
            a.address = address;
        });
    }

    async fn stop(&mut self) {
        // The liveness task revokes its lease: the node shows as stopped at once.
        self.alive.send_modify(|a| a.stopping = true);
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.live).await;
    }
}

/// The store as last seen.
#[derive(Default)]
pub struct View {
    /// The state's revision (see `Snapshot::state_revision`).
    pub revision: i64,
    /// Where the watch continues from (the store's revision read).
    pub watched: i64,
    pub objects: Objects,
    pub bad: BTreeMap<String, Problem>,
    /// The last valid state, and the objects changed since it: the base of the next
    /// (incremental) validation.
    valid: Option<Arc<ClusterState>>,
    changed: Vec<ObjectKey>,
}

impl View {
    pub fn from_snapshot(s: Snapshot) -> Self {
        Self { revision: s.state_revision, watched: s.revision, objects: s.objects, bad: s.bad, ..Default::default() }
    }

    /// Applies one watch event; returns whether the state changed.
    pub fn event(&mut self, rel: &str, value: Option<&[u8]>) -> bool {
        let changed = self.apply_event(rel, value);
        if changed {
            // A key that is no object makes the state invalid until it goes: it needs no base.
            if let Some(k) = ObjectKey::parse(rel) {
                self.changed.push(k);
            }
        }
        changed
    }

    fn apply_event(&mut self, rel: &str, value: Option<&[u8]>) -> bool {
        match value {
            None => {
                let removed = ObjectKey::parse(rel).is_some_and(|k| self.objects.remove(&k));
                self.bad.remove(rel).is_some() || removed
            }
            Some(v) => match snapshot::classify(rel, v) {
                Entry::Object(k, o) => {
                    let was_bad = self.bad.remove(rel).is_some();
                    self.objects.insert(k, o) || was_bad
                }
                Entry::Bad(k, p) => {
                    if let Some(key) = ObjectKey::parse(rel) {
                        self.objects.remove(&key);
                    }
                    self.bad.insert(k, p);
                    true
                }
                Entry::Alive(..) | Entry::Guard => false,
            },
        }
    }

    pub fn version(&mut self, cfg: &StoreConfig) -> Version {
        let invalid = |problems| StateError::Invalid { path: cfg.url().into(), problems };
        let state = if !self.bad.is_empty() {
            Err(invalid(self.bad.values().cloned().collect()))
        } else {
            let r = match &self.valid {
                Some(prev) => self.objects.validate_after(prev, &self.changed),
                None => self.objects.validate(),
            };
            r.map(Arc::new).map_err(invalid)
        };
        if let Ok(s) = &state {
            self.valid = Some(s.clone());
            self.changed.clear();
        }
        Version { revision: revision_name(self.revision), state }
    }
}

pub fn revision_name(rev: i64) -> String {
    format!("etcd:{rev}")
}

struct Backoff(Duration);

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }
}

/// Why a watch ended without an error.
enum WatchEnd {
    Compacted(i64),
}

async fn follow(cfg: StoreConfig, cache: Option<PathBuf>, mailbox: Arc<Mailbox>) {
    let mut view: Option<View> = None;
    let mut backoff = Backoff(BACKOFF_MIN);
    let mut down_since: Option<Instant> = None;
    let mut cache = cache.map(|path| Cache { path, due: None });
    loop {
        let session = async {
            let mut client = cfg.connect().await?;
            let snap = snapshot::read(&mut client, &cfg).await?;
            anyhow::Ok((client, snap))
        };
        let (client, snap) = match session.await {
            Ok(x) => x,
            Err(e) => {
                if down_since.is_none() {
                    down_since = Some(Instant::now());
                    if view.is_none() {
                        match cache.as_ref().map(|c| c.load(&cfg)) {
                            Some(Some(v)) => {
                                warn!(
                                    "etcd {} unreachable ({e:#}); applying the last state seen ({}) from {} and retrying",
                                    cfg.url(),
                                    v.revision,
                                    cache.as_ref().map(|c| c.path.display().to_string()).unwrap_or_default()
                                );
                                mailbox.put(v);
                            }
                            _ => warn!("etcd {} unreachable ({e:#}); waiting for it (retrying)", cfg.url()),
                        }
                    } else {
                        warn!(
                            "etcd {} unreachable ({e:#}); forwarding goes on with the last state, retrying",
                            cfg.url()
                        );
                    }
                }
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        backoff = Backoff(BACKOFF_MIN);
        if let Some(t) = down_since.take() {
            info!(revision = snap.revision, "etcd reachable again after {:.1} s; resynced", t.elapsed().as_secs_f64());
        }
        let mut fresh = View::from_snapshot(snap);
        let changed = view.as_ref().is_none_or(|v| v.objects != fresh.objects || v.bad != fresh.bad);
        if let (false, Some(old)) = (changed, view.as_mut()) {
            // The same objects: the last valid state stays the base of the next validation.
            fresh.valid = old.valid.take();
            fresh.changed = std::mem::take(&mut old.changed);
        }
        let v = view.insert(fresh);
        if changed {
            publish(&cfg, v, &mailbox, cache.as_mut());
        }
        match watch(client, &cfg, v, &mailbox, cache.as_mut()).await {
            Ok(WatchEnd::Compacted(c)) => {
                info!(compacted = c, "etcd compacted past the watched revision; resyncing from a fresh snapshot")
            }
            Err(e) => {
                warn!("etcd watch lost ({e:#}); resyncing");
                down_since = Some(Instant::now());
            }
        }
    }
}

fn publish(cfg: &StoreConfig, view: &mut View, mailbox: &Mailbox, cache: Option<&mut Cache>) {
    let v = view.version(cfg);
    let valid = v.state.is_ok();
    mailbox.put(v);
    // The cache holds valid states only: an invalid version cancels a pending write.
    match (valid, cache) {
        (true, Some(c)) => {
            c.due.get_or_insert_with(|| Instant::now() + CACHE_EVERY);
        }
        (false, Some(c)) => c.due = None,
        _ => {}
    }
}

async fn watch(
    mut client: etcd_client::Client,
    cfg: &StoreConfig,
    view: &mut View,
    mailbox: &Mailbox,
    mut cache: Option<&mut Cache>,
) -> Result<WatchEnd> {
    let (start, end) = cfg.range();
    let opts = WatchOptions::new().with_range(end).with_start_revision(view.watched + 1);
    let mut stream = timed("starting the etcd watch", client.watch(start.clone(), Some(opts))).await?;
    // A silent network is not seen by the watch stream itself (HTTP/2 keepalive did not end it
    // in our tests): a quiet watch asks etcd for a progress report and gives up without one.
    let mut heard = Instant::now();
    let mut check = tokio::time::interval(PROGRESS_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due = cache.as_ref().and_then(|c| c.due);
        let msg = tokio::select! {
            m = stream.message() => {
                heard = Instant::now();
                m?
            }
            _ = check.tick() => {
                if heard.elapsed() > SILENT_LIMIT {
                    bail!("no answer from etcd for {:.0} s", heard.elapsed().as_secs_f64());
                }
                if heard.elapsed() >= PROGRESS_EVERY {
                    timed("asking etcd for watch progress", stream.request_progress()).await?;
                }
                continue;
            }
            _ = sleep_until(due) => {
                if let Some(c) = cache.as_deref_mut() {
                    c.write(view, cfg);
                }
                continue;
            }
        };
        let Some(resp) = msg else { bail!("the watch stream ended") };
        if resp.compact_revision() != 0 {
            return Ok(WatchEnd::Compacted(resp.compact_revision()));
        }
        if resp.canceled() {
            bail!("etcd cancelled the watch: {}", resp.cancel_reason());
        }
        let mut changed = false;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            view.watched = view.watched.max(kv.mod_revision());
            let Some(rel) = kv.key().get(start.len()..) else { continue };
            let rel = String::from_utf8_lossy(rel);
            let value = (ev.event_type() == EventType::Put).then(|| kv.value());
            if view.event(&rel, value) {
                changed = true;
                view.revision = view.revision.max(kv.mod_revision());
            }
        }
        if changed {
            publish(cfg, view, mailbox, cache.as_deref_mut());
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// The last valid state seen, as a state file with the store and revision in its first line.
struct Cache {
    path: PathBuf,
    due: Option<Instant>,
}

impl Cache {
    fn header(cfg: &StoreConfig, rev: i64) -> String {
        format!("# overlay state cache: {} {}\n", cfg.url(), revision_name(rev))
    }

    fn write(&mut self, view: &View, cfg: &StoreConfig) {
        self.due = None;
        let text = Self::header(cfg, view.revision) + &view.objects.to_toml();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::fsutil::write_atomic(&path, text.as_bytes()) {
                warn!("state cache {} not written: {e:#}", path.display());
            }
        });
    }

    /// The cached version, if it was written for this store.
    fn load(&self, cfg: &StoreConfig) -> Option<Version> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let first = text.lines().next()?;
        let rev = first.strip_prefix(&format!("# overlay state cache: {} ", cfg.url()))?;
        let state = crate::state::parse(&text, &self.path).map(Arc::new);
        Some(Version { revision: rev.to_string(), state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Tls;

    fn cfg() -> StoreConfig {
        StoreConfig::parse("etcd://h:2379/p", Tls::default()).unwrap()
    }
    const NODE: &str = "[[nodes]]\nname = \"a\"\naddress = \"10.0.0.1\"\n";
    const NET: &str = "[[networks]]\nname = \"n\"\nvni = 7\nsubnet = \"10.1.0.0/24\"\n";
    fn ep(name: &str, ip: &str) -> String {
        format!("[[endpoints]]\nname = \"{name}\"\nnetwork = \"n\"\nnode = \"a\"\nip = \"{ip}\"\n")
    }

    /// A view fed by events, as the watch does.
    fn fed(events: &[(&str, Option<&str>)]) -> View {
        let mut v = View::default();
        for (k, val) in events {
            v.event(k, val.map(str::as_bytes));
        }
        v
    }

    #[test]
    fn events_change_the_view_only_when_the_state_changes() {
        let mut v = fed(&[("nodes/a", Some(NODE)), ("networks/n", Some(NET))]);
        assert!(v.event("endpoints/e1", Some(ep("e1", "10.1.0.2").as_bytes())));
        assert!(!v.event("endpoints/e1", Some(ep("e1", "10.1.0.2").as_bytes())), "the same value again");
        assert!(!v.event("alive/a", Some(b"{}")), "liveness keys are not state");
        assert!(!v.event("meta/guard", Some(b"etcd:3")));
        assert!(!v.event("endpoints/none", None), "deleting what is not there");
        let state = v.version(&cfg()).state.unwrap();
        assert_eq!(state.endpoints["e1"].ip.to_string(), "10.1.0.2");

        // A bad value takes its object out and makes the version invalid, naming the key and
        // the field; deleting or fixing it makes the state valid again.
        assert!(v.event("endpoints/e1", Some(b"[[endpoints]]\nname = \"e1\"\nipp = \"1\"\n")));
        let err = v.version(&cfg()).state.unwrap_err().to_string();
        assert!(err.contains("endpoints/e1") && err.contains("ipp"), "{err}");
        assert!(v.event("endpoints/e1", Some(ep("e1", "10.1.0.3").as_bytes())));
        assert!(v.version(&cfg()).state.is_ok());
        assert!(v.event("junk", Some(b"x")));
        assert!(v.version(&cfg()).state.unwrap_err().to_string().contains("junk"));
        assert!(v.event("junk", None));
        // An event that breaks a reference is refused by validation, as the file would be.
        assert!(v.event("networks/n", None));
        assert!(v.version(&cfg()).state.unwrap_err().to_string().contains("unknown network"));
    }

    #[test]
    fn a_resync_snapshot_equals_the_view_the_events_built() {
        // The keys as a fresh snapshot reads them after the events below.
        let events: Vec<(&str, Option<String>)> = vec![
            ("nodes/a", Some(NODE.into())),
            ("networks/n", Some(NET.into())),
            ("endpoints/e1", Some(ep("e1", "10.1.0.2"))),
            ("endpoints/e2", Some(ep("e2", "10.1.0.3"))),
            ("endpoints/e1", None),
            ("endpoints/e2", Some(ep("e2", "10.1.0.4"))),
            ("alive/a", Some("{}".into())),
        ];
        let mut watched = View::default();
        for (k, v) in &events {
            watched.event(k, v.as_deref().map(str::as_bytes));
        }
        let mut snap = Snapshot::default();
        for (k, v) in
            [("nodes/a", NODE.to_string()), ("networks/n", NET.into()), ("endpoints/e2", ep("e2", "10.1.0.4"))]
        {
            match snapshot::classify(k, v.as_bytes()) {
                Entry::Object(key, o) => {
                    snap.objects.insert(key, o);
                }
                _ => panic!("{k} should be an object"),
            }
        }
        let mut fresh = View::from_snapshot(snap);
        // Equal: the resync hands nothing new to the agent.
        assert!(fresh.objects == watched.objects && fresh.bad == watched.bad);
        assert_eq!(fresh.version(&cfg()).state.unwrap(), watched.version(&cfg()).state.unwrap());
    }
}

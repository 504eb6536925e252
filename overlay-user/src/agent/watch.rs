//! Wakes when the state file has been completely written. Writers should rename a finished file
//! into place (MOVED_TO); a file written in place counts once its writer closes it (CLOSE_WRITE),
//! never on a MODIFY, which can be the first of several chunks. Events on the directory are
//! watched, because editors and tools replace files by rename. A slow poll is the safety net for
//! missed events; it never reads while a writer is known to be half-way through.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _, Result};

/// Events that come in one burst (a tool that writes, closes and renames) count as one. Short:
/// every state change waits this long before it is read.
const SETTLE: Duration = Duration::from_millis(5);
const POLL: Duration = Duration::from_secs(2);
/// A writer that has not closed the file after this long is taken as gone.
const STUCK_WRITER: Duration = Duration::from_secs(30);

pub struct FileWatch {
    stream: inotify::EventStream<Vec<u8>>,
    name: std::ffi::OsString,
    tick: tokio::time::Interval,
    /// Since when the file has been modified without being closed.
    writing_since: Option<Instant>,
}

enum Seen {
    /// Modified: a writer is at work.
    Writing,
    /// Closed after writing, or renamed into place: complete.
    Complete,
    Other,
}

impl FileWatch {
    pub fn new(path: &Path) -> Result<Self> {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let ino = inotify::Inotify::init().context("inotify")?;
        use inotify::WatchMask as M;
        ino.watches()
            .add(dir, M::CLOSE_WRITE | M::MOVED_TO | M::MODIFY | M::CREATE)
            .with_context(|| format!("watching {}", dir.display()))?;
        let stream = ino.into_event_stream(vec![0u8; 4096])?;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let name = path.file_name().unwrap_or_default().to_os_string();
        Ok(Self { stream, name, tick, writing_since: None })
    }

    /// Returns when the file may have changed and no writer is half-way through it.
    pub async fn next(&mut self) -> Result<()> {
        loop {
            tokio::select! {
                seen = event(&mut self.stream, &self.name) => match seen? {
                    Seen::Writing => {
                        self.writing_since.get_or_insert_with(Instant::now);
                    }
                    Seen::Complete => {
                        self.writing_since = None;
                        self.settle().await?;
                        if self.writing_since.is_none() {
                            return Ok(());
                        }
                    }
                    Seen::Other => {}
                },
                _ = self.tick.tick() => {
                    match self.writing_since {
                        Some(t) if t.elapsed() < STUCK_WRITER => {}
                        _ => {
                            self.writing_since = None;
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Let a burst of events finish; a new write in the burst means the file is not done yet.
    async fn settle(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            match tokio::time::timeout_at(deadline, event(&mut self.stream, &self.name)).await {
                Err(_) => return Ok(()),
                Ok(seen) => match seen? {
                    Seen::Writing => {
                        self.writing_since.get_or_insert_with(Instant::now);
                    }
                    Seen::Complete => self.writing_since = None,
                    Seen::Other => {}
                },
            }
        }
    }
}

async fn event(stream: &mut inotify::EventStream<Vec<u8>>, name: &std::ffi::OsStr) -> Result<Seen> {
    use futures::StreamExt as _;
    use inotify::EventMask as E;
    let ev = stream.next().await.ok_or_else(|| anyhow!("inotify stream ended"))??;
    Ok(if ev.name.as_deref() != Some(name) {
        Seen::Other
    } else if ev.mask.intersects(E::CLOSE_WRITE | E::MOVED_TO) {
        Seen::Complete
    } else if ev.mask.intersects(E::MODIFY | E::CREATE) {
        Seen::Writing
    } else {
        Seen::Other
    })
}

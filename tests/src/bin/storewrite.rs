//! `storewrite etcd://HOST:PORT/PREFIX`: a writer that stays connected, for the bench's `store`
//! section. It connects once (the agent's own client setup), answers one read so the connection
//! is up, prints `ready`, then for each stdin line `KEY FILE` puts FILE's content under KEY (one
//! put each) and prints `UNIX_MICROS REVISION ROUND_TRIP_MICROS`: the wall clock just before
//! the put was sent, the revision etcd committed it at, and how long the put took to answer. Process start and connection setup stay out of the
//! timings the bench takes from it.

use std::{
    io::{BufRead as _, Write as _},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use overlay::store::{StoreConfig, Tls};

fn main() -> Result<()> {
    let Some(url) = std::env::args().nth(1) else { bail!("usage: storewrite etcd://HOST:PORT/PREFIX") };
    let cfg = StoreConfig::parse(&url, Tls::default())?;
    // Worker threads keep the connection served while this thread waits on stdin.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let mut client = rt.block_on(cfg.connect())?;
    rt.block_on(client.get(cfg.key("storewrite-warmup"), None)).context("first read")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let Some((key, file)) = line.split_once(' ') else { bail!("expected `KEY FILE`, got {line:?}") };
        let value = std::fs::read(file).with_context(|| format!("reading {file}"))?;
        let t = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros();
        let sent = Instant::now();
        let resp = rt.block_on(client.put(key, value, None)).with_context(|| format!("put {key}"))?;
        let rtt = sent.elapsed().as_micros();
        let rev = resp.header().map(|h| h.revision()).context("no header in the put's answer")?;
        writeln!(out, "{t} {rev} {rtt}")?;
        out.flush()?;
    }
    Ok(())
}

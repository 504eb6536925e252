//! Service VIPs in a running cluster: servers that say who they are (`tcpx id`), clients that
//! count who answered (`tcpx cps`, `ucps`), connections held open across changes (`tcpx hold`,
//! `uhold`), and the balancer as a user sees it (`overlay services`, `overlay conntrack`) plus a
//! conntrack flush through the node's pins.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use overlay::agent::Paths;

use crate::{
    cleanup::{track, untrack},
    cluster::{overlay_bin, tcpx_bin, Cluster, Proc},
    netns::{in_netns, wait_for},
};

/// Who answered, how many times: the server names `tcpx cps`/`ucps` printed.
pub type Tally = BTreeMap<String, u64>;

/// A TCP connection (or connected UDP socket) held open by `tcpx hold`/`uhold` in a container,
/// driven one round trip at a time. Killed on drop.
pub struct Held {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
    /// The container it was opened from.
    pub from: String,
    /// TCP: the name of the server that answered the connection. UDP: "-".
    pub id: String,
    /// The client's source port.
    pub port: u16,
}

impl Held {
    /// One round trip: "ok" (TCP), "ok NAME" (UDP), or what went wrong: "reset", "refused",
    /// "timeout" (tcpx's 10 s bound), "eof", "error ...", or "exited" if tcpx is gone.
    pub fn round(&mut self) -> String {
        if writeln!(self.stdin, "x").and_then(|_| self.stdin.flush()).is_err() {
            return "exited".into();
        }
        let mut line = String::new();
        match self.out.read_line(&mut line) {
            Ok(0) | Err(_) => "exited".into(),
            Ok(_) => line.trim().to_string(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        untrack(&self.child);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_tally(out: &str) -> Result<Tally> {
    let line = out.lines().last().unwrap_or("{}");
    serde_json::from_str(line).with_context(|| format!("tally {line:?}"))
}

impl Cluster {
    /// Write the spec's state (services included) and wait until every agent applied it.
    pub fn apply(&mut self) -> Result<()> {
        self.write_state(&self.render_state())?;
        if self.etcd.is_some() {
            // On a store the file is pushed: only the objects that changed are written.
            self.push_state()?;
        }
        self.wait_applied(Duration::from_secs(20))
    }

    pub fn node_of(&self, ep: &str) -> String {
        self.spec.endpoints.iter().find(|e| e.name == ep).map(|e| e.node.clone()).unwrap_or_default()
    }

    /// Start `tcpx id PORT NAME` (TCP and UDP) in each of `eps`, named after the endpoint, and
    /// wait until each answers on its own loopback.
    pub fn start_id_servers(&mut self, eps: &[&str], port: u16) -> Result<()> {
        let tcpx = tcpx_bin();
        for ep in eps {
            let log = self.logs.join(format!("id-{ep}.log"));
            let c = self.container(ep);
            self.servers.push(Proc(c.spawn(&format!("{} id {port} {ep}", tcpx.display()), &log)?));
        }
        for ep in eps {
            let c = self.container(ep);
            let probe = |proto: &str| format!("{} {proto} 127.0.0.1 {port} 1", tcpx.display());
            if !wait_for(Duration::from_secs(10), || c.ok(&probe("cps")) && c.ok(&probe("ucps"))) {
                bail!("identity server in {ep} does not answer on port {port}");
            }
        }
        Ok(())
    }

    fn tally(&self, mode: &str, from: &str, ip: &str, port: u16, n: u64) -> Result<Tally> {
        let cmd = format!("{} {mode} {ip} {port} {n}", tcpx_bin().display());
        let out = in_netns(&self.container(from).name, &cmd).output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("{mode} from {from} to {ip}:{port} failed: {}after {stdout}", String::from_utf8_lossy(&out.stderr));
        }
        parse_tally(&stdout)
    }

    /// `n` sequential TCP connections from container `from` to ip:port, counted by server name.
    pub fn cps(&self, from: &str, ip: &str, port: u16, n: u64) -> Result<Tally> {
        self.tally("cps", from, ip, port, n)
    }

    /// `n` UDP request/responses, each from a new source port, counted by server name.
    pub fn ucps(&self, from: &str, ip: &str, port: u16, n: u64) -> Result<Tally> {
        self.tally("ucps", from, ip, port, n)
    }

    /// `cps` (or `ucps` with `udp`) from several containers at once; tallies by container.
    pub fn tally_from(
        &self,
        froms: &[&str],
        ip: &str,
        port: u16,
        n: u64,
        udp: bool,
    ) -> Result<BTreeMap<String, Tally>> {
        let mode = if udp { "ucps" } else { "cps" };
        std::thread::scope(|s| {
            let jobs: Vec<_> =
                froms.iter().map(|f| (f.to_string(), s.spawn(move || self.tally(mode, f, ip, port, n)))).collect();
            jobs.into_iter()
                .map(|(f, j)| Ok((f, j.join().map_err(|_| anyhow::anyhow!("tally thread panicked"))??)))
                .collect()
        })
    }

    fn held(&self, mode: &str, from: &str, ip: &str, port: u16) -> Result<Held> {
        let log = std::fs::File::create(self.logs.join(format!("{mode}-{from}.log")))?;
        let cmd = format!("exec {} {mode} {ip} {port}", tcpx_bin().display());
        let mut child = in_netns(&self.container(from).name, &cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()?;
        track(&child);
        let stdin = child.stdin.take().context("stdin")?;
        let out = BufReader::new(child.stdout.take().context("stdout")?);
        let mut h = Held { child, stdin, out, from: from.to_string(), id: String::new(), port: 0 };
        let mut first = String::new();
        h.out.read_line(&mut first)?;
        let words: Vec<&str> = first.split_whitespace().collect();
        match words[..] {
            ["id", id, p] => {
                h.id = id.to_string();
                h.port = p.parse().with_context(|| format!("{mode}: {first:?}"))?;
            }
            _ => bail!("{mode} from {from} to {ip}:{port}: {first:?}"),
        }
        Ok(h)
    }

    /// A TCP connection from `from` to ip:port held open; `Held.id` names the server.
    pub fn hold(&self, from: &str, ip: &str, port: u16) -> Result<Held> {
        self.held("hold", from, ip, port)
    }

    /// A connected UDP socket from `from` to ip:port; each round names the server.
    pub fn uhold(&self, from: &str, ip: &str, port: u16) -> Result<Held> {
        self.held("uhold", from, ip, port)
    }

    fn overlay_json(&self, node: &str, verb: &str) -> Result<serde_json::Value> {
        let out = self.nodes[node].sh(&format!(
            "{} {verb} --node {node} --run-dir {} --json",
            overlay_bin().display(),
            self.run_dir.path.display()
        ))?;
        serde_json::from_str(&out).with_context(|| format!("overlay {verb} --json: {out}"))
    }

    /// `overlay services --node NODE --json`: one row per VIP with its backends and counters.
    pub fn services(&self, node: &str) -> Result<serde_json::Value> {
        self.overlay_json(node, "services")
    }

    /// `overlay conntrack --node NODE --json`: the tracked connections (forward entries).
    pub fn conntrack(&self, node: &str) -> Result<Vec<serde_json::Value>> {
        let v = self.overlay_json(node, "conntrack")?;
        v.as_array().cloned().with_context(|| format!("not a list: {v}"))
    }

    /// Empty the node's conntrack table through its pins; how many entries it held.
    pub fn flush_conntrack(&self, node: &str) -> Result<usize> {
        overlay::datapath::flush_conntrack_pins(&Paths::new(&self.run_dir.path, node).pins)
    }
}

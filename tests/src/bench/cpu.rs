//! What moving traffic costs in CPU. Every part of a rig (both nodes, both containers, the
//! traffic generator) runs on this machine, so the machine's busy time during a round is the
//! cost of the whole path; the same traffic through two datapaths differs by what the datapaths
//! cost. Read from /proc/stat before and after. Busy time is wall time x CPUs - idle: idle time
//! is exact, but the user/system/softirq split is sampled at clock ticks, which on a tickless
//! machine misses much of a lightly loaded CPU; what the samples miss is reported as such.

use anyhow::{Context as _, Result};

/// CPU seconds spent, all CPUs together.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// user + nice: the traffic generator, mostly.
    pub user: f64,
    /// system: syscalls, the sending stack.
    pub system: f64,
    /// softirq + irq: receiving, forwarding, and our programs.
    pub softirq: f64,
    /// Busy time the tick samples did not attribute.
    pub unattributed: f64,
}

impl Cpu {
    pub fn total(&self) -> f64 {
        self.user + self.system + self.softirq + self.unattributed
    }

    /// Each part divided by `by` (bytes in GB, packets in millions, seconds).
    pub fn per(&self, by: f64) -> Cpu {
        let by = by.max(1e-12);
        Cpu {
            user: self.user / by,
            system: self.system / by,
            softirq: self.softirq / by,
            unattributed: self.unattributed / by,
        }
    }

    pub fn split(&self) -> String {
        format!(
            "user {:.3} / system {:.3} / softirq {:.3} / not sampled {:.3}",
            self.user, self.system, self.softirq, self.unattributed
        )
    }
}

fn ticks() -> Result<[u64; 7]> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let mut v = [0u64; 7];
    // cpu user nice system idle iowait irq softirq
    for (i, f) in line.split_whitespace().skip(1).take(7).enumerate() {
        v[i] = f.parse().context("a /proc/stat field")?;
    }
    Ok(v)
}

/// Run `f` and return what it returned with the CPU time the machine spent meanwhile.
pub fn measure<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Cpu)> {
    let (a, t0) = (ticks()?, std::time::Instant::now());
    let out = f()?;
    let (b, wall) = (ticks()?, t0.elapsed().as_secs_f64());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let d = |i: usize| b[i].saturating_sub(a[i]) as f64 / hz;
    let (user, system, softirq) = (d(0) + d(1), d(2), d(5) + d(6));
    let busy = (wall * cpus - d(3) - d(4)).max(0.0);
    let unattributed = (busy - user - system - softirq).max(0.0);
    Ok((out, Cpu { user, system, softirq, unattributed }))
}

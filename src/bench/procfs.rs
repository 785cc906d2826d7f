//! CPU time and memory from `/proc` (Linux): the gateway's by its PID, the load generator's from
//! `/proc/self`, the built-in backend's from its thread. Read at the edges of the measured
//! window, so CPU per request covers exactly the requests counted.
// /proc files are small and never block: read them directly.
#![allow(clippy::disallowed_methods)]

use tokio::time::Instant;

/// The calling thread's kernel id (`/proc/thread-self` → `PID/task/TID`).
pub(super) fn thread_id() -> Option<u32> {
    std::fs::read_link("/proc/thread-self")
        .ok()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}

/// utime + stime of a process (clock ticks), from `/proc/PID/stat`.
pub(super) fn cpu_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&format!("/proc/{pid}/stat"))
}

fn stat_ticks(path: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after "(comm) ": [0] is field 3 (state); utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// VmRSS of a process, kB (`None` when it is gone). Public for the integration tests.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when that fails).
pub(super) fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(100)
}

/// CPU counters at one instant.
pub(super) struct Snapshot {
    at: Instant,
    gateway: Option<u64>,
    /// This process: the load generator, plus the built-in backend's thread.
    own: Option<u64>,
    backend: Option<u64>,
}

impl Snapshot {
    /// The gateway's counters by its PID (if known), this process's, and the built-in backend's
    /// thread's (if any).
    pub(super) fn take(gateway_pid: Option<u32>, backend_tid: Option<u32>) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            gateway: gateway_pid.and_then(cpu_ticks),
            own: stat_ticks("/proc/self/stat"),
            backend: backend_tid.and_then(|t| stat_ticks(&format!("/proc/self/task/{t}/stat"))),
        }
    }
}

/// CPU seconds used over the measured window.
pub(super) struct CpuUse {
    pub(super) wall_s: f64,
    pub(super) gateway_s: Option<f64>,
    pub(super) backend_s: Option<f64>,
    pub(super) loadgen_s: Option<f64>,
}

impl CpuUse {
    pub(super) fn between(a: &Snapshot, b: &Snapshot) -> CpuUse {
        let hz = clk_tck() as f64;
        let d =
            |x: Option<u64>, y: Option<u64>| x.zip(y).map(|(x, y)| y.saturating_sub(x) as f64 / hz);
        let own = d(a.own, b.own);
        let backend = d(a.backend, b.backend);
        CpuUse {
            wall_s: (b.at - a.at).as_secs_f64(),
            gateway_s: d(a.gateway, b.gateway),
            backend_s: backend,
            loadgen_s: own.map(|o| (o - backend.unwrap_or(0.0)).max(0.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_and_rss_of_this_process() {
        assert!(stat_ticks("/proc/self/stat").is_some());
        assert!(rss_kb(std::process::id()).unwrap() > 0);
        assert!(thread_id().is_some());
    }
}

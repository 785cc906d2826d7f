//! `--timeline FILE`: one JSON line per second of the measured window — requests answered,
//! failures (by kind), and the latency p50/p99/max of that second — so that a long run (the soak,
//! `bench/soak.sh`) shows *when* latency moved or errors happened, not only the whole run's
//! summary. Lines are flushed as they are written: a run that is cut short keeps what it measured.
//!
//! The load tasks add each outcome to the current second's bucket under a mutex. That is the
//! load generator's side, never the gateway's, and it is meant for paced (`--rate`) runs; in a
//! closed-loop run at tens of thousands of requests a second it costs the clients some CPU.
//! The last line is written once the load tasks have stopped, so the lines' counts add up to the
//! report's exactly (an outcome near a second's edge may land in the next line).

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::stats::{Failure, Stats};

pub(super) struct Timeline {
    bucket: Mutex<Stats>,
}

impl Timeline {
    pub(super) fn new() -> Timeline {
        Timeline {
            bucket: Mutex::new(Stats::new()),
        }
    }

    pub(super) fn add<T>(&self, took: Duration, r: &Result<T, Failure>) {
        self.bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(took, r);
    }

    /// The current second's bucket, replaced by an empty one.
    fn take(&self) -> Stats {
        let fresh = Stats::new();
        std::mem::replace(
            &mut *self.bucket.lock().unwrap_or_else(|e| e.into_inner()),
            fresh,
        )
    }

    /// Writes one line per second from `from` until `to`; the last one, covering what is left,
    /// once `stopped` resolves (the load tasks have ended). Opens (truncates) `path` first, so
    /// that a bad path fails before the load starts.
    pub(super) fn writer(
        self: std::sync::Arc<Self>,
        path: &Path,
        from: Instant,
        to: Instant,
        stopped: tokio::sync::oneshot::Receiver<()>,
    ) -> std::io::Result<impl Future<Output = std::io::Result<()>> + use<>> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        Ok(async move {
            let mut stopped = Some(stopped);
            // Every line but the last at its second; the last once the load has stopped.
            let mut t = from;
            while t < to {
                let next = (t + Duration::from_secs(1)).min(to);
                match stopped.take_if(|_| next >= to) {
                    Some(rx) => {
                        let _ = rx.await;
                    }
                    None => tokio::time::sleep_until(next).await,
                }
                let s = self.take();
                let line = line((next - from).as_secs_f64(), (next - t).as_secs_f64(), &s);
                writeln!(out, "{line}")?;
                out.flush()?;
                t = next;
            }
            Ok(())
        })
    }
}

/// One second's line: `t` is the end of the interval, seconds after the window opened.
fn line(t: f64, span: f64, s: &Stats) -> serde_json::Value {
    let q = |p: f64| (s.ok > 0).then(|| s.hist.value_at_quantile(p) as f64 / 1000.0);
    json!({
        "t": (t * 1000.0).round() / 1000.0,
        "span_s": (span * 1000.0).round() / 1000.0,
        "ok": s.ok,
        "errors": s.errors.total(),
        "error_kinds": s.errors.summary(),
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "max_ms": (s.ok > 0).then(|| s.hist.max() as f64 / 1000.0),
    })
}

#[cfg(test)]
mod tests {
    use super::super::stats::Kind;
    use super::*;

    #[test]
    fn a_line_holds_the_second_and_an_empty_one_has_no_latency() {
        let tl = Timeline::new();
        for ms in 1..=100u64 {
            tl.add::<()>(Duration::from_millis(ms), &Ok(()));
        }
        tl.add::<()>(
            Duration::ZERO,
            &Err(Failure::new(Kind::Status(503), "HTTP 503")),
        );
        let l = line(3.0, 1.0, &tl.take());
        assert_eq!(l["ok"], 100);
        assert_eq!(l["errors"], 1);
        assert_eq!(l["error_kinds"], "status 503: 1");
        let p99 = l["p99_ms"].as_f64().unwrap();
        assert!((98.0..=100.0).contains(&p99), "{p99}");
        assert!((l["max_ms"].as_f64().unwrap() - 100.0).abs() < 0.1);
        // The bucket was emptied.
        let empty = line(4.0, 1.0, &tl.take());
        assert_eq!(empty["ok"], 0);
        assert!(empty["p99_ms"].is_null());
    }
}

//! `--rate`: an open-loop schedule. Request *k* of the run is due at `start + k / rate`, whatever
//! the gateway is doing; the load tasks take the slots in turn, and a request's latency counts
//! from its slot, not from when a task got round to sending it. A gateway that stalls then shows
//! its backlog in the latencies (no "coordinated omission"), and the offered rate stays fixed,
//! which a soak at a fraction of the saturating rate needs.
//!
//! Without `--rate` the run is closed-loop: each task sends its next request as soon as the last
//! one is answered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub(super) struct Pace {
    start: Instant,
    /// Slots at or after this are not handed out: the run is over.
    end: Instant,
    rate: f64,
    next: AtomicU64,
}

impl Pace {
    /// `rate` requests per second, the first one due at `start`.
    pub(super) fn new(rate: f64, start: Instant, end: Instant) -> Pace {
        assert!(rate > 0.0 && rate.is_finite(), "rate must be positive");
        Pace {
            start,
            end,
            rate,
            next: AtomicU64::new(0),
        }
    }

    /// Takes the next slot and waits for it; `None` once the schedule has reached the end.
    ///
    /// The request's latency counts from the returned instant: the slot itself when the task
    /// comes to it late (it was still busy with an earlier request: the gateway's backlog, which
    /// must be measured), or the moment the task woke when it had to wait (tokio's timer fires
    /// up to a millisecond after the slot: the load generator's slack, not the gateway's).
    ///
    /// A schedule that has fallen behind ends at `end` too: slots still due then are not sent.
    pub(super) async fn next(&self) -> Option<Instant> {
        if Instant::now() >= self.end {
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let at = self.start + offset(k, self.rate);
        if at >= self.end {
            return None;
        }
        if Instant::now() >= at {
            return Some(at);
        }
        tokio::time::sleep_until(at).await;
        let now = Instant::now();
        (now < self.end).then_some(now)
    }
}

impl Pace {
    /// Every slot has been handed out.
    pub(super) fn exhausted(&self) -> bool {
        self.start + offset(self.next.load(Ordering::Relaxed), self.rate) >= self.end
    }
}

/// When slot `k` is due, after the schedule's start.
fn offset(k: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(k as f64 / rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_late_task_counts_from_the_slot() {
        let start = Instant::now();
        let pace = Pace::new(10.0, start, start + Duration::from_secs(1));
        // The task was busy for 350 ms: slots 0..=3 are all due, and each counts from itself.
        tokio::time::advance(Duration::from_millis(350)).await;
        for k in 0..4u64 {
            assert_eq!(
                pace.next().await,
                Some(start + Duration::from_millis(100 * k))
            );
        }
        // Slot 4 is in the future: waited for.
        assert_eq!(pace.next().await, Some(start + Duration::from_millis(400)));
        assert_eq!(Instant::now(), start + Duration::from_millis(400));
        // Behind at the end: the slots still due are dropped, not sent late.
        tokio::time::advance(Duration::from_millis(700)).await;
        assert_eq!(pace.next().await, None);
    }

    #[test]
    fn slots_are_evenly_spaced_at_the_rate() {
        assert_eq!(offset(0, 1000.0), Duration::ZERO);
        assert_eq!(offset(1000, 1000.0), Duration::from_secs(1));
        assert_eq!(offset(3, 2.0), Duration::from_millis(1500));
        // An hour at 5 000/s: no drift from accumulating intervals.
        assert_eq!(offset(18_000_000, 5000.0), Duration::from_secs(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn hands_out_each_slot_once_and_stops_at_the_end() {
        let start = Instant::now();
        let pace = Pace::new(10.0, start, start + Duration::from_secs(1));
        assert!(!pace.exhausted());
        let mut got = vec![];
        while let Some(at) = pace.next().await {
            // The slot has come when it is handed out (the paused clock jumps to it).
            assert_eq!(Instant::now(), at);
            got.push(at - start);
        }
        let want: Vec<Duration> = (0..10).map(|k| Duration::from_millis(100 * k)).collect();
        assert_eq!(got, want);
        assert!(pace.next().await.is_none());
        assert!(pace.exhausted());
    }
}

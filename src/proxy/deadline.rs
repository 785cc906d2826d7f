//! `Deadline`: the backend side's one timer for a request. It bounds the wait for the response
//! head (`scoring_timeout` from the first admission) and is then handed to the response body,
//! where it bounds each pause between frames: one timer entry per request instead of two, and
//! moved later rather than made again (tokio extends a later deadline without touching its
//! timer wheel).
//!
//! A future that checks it polls it only when the task's waker is not the one the timer
//! already holds; otherwise it reads the timer's state. The exchange and the body are polled
//! several times per request, nearly always for the backend's I/O, and a timer's poll (task
//! budget, waker registration) cost more than the rest of those polls.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Waker};

use tokio::time::{Instant, Sleep};

pub struct Deadline {
    sleep: Pin<Box<Sleep>>,
    /// The waker the timer wakes when it fires: the one it was last polled with (none before
    /// the first poll and after a reset).
    waker: Option<Waker>,
}

impl Deadline {
    /// A deadline at `at`, not yet registered with the timer (the first check does that).
    pub fn at(at: Instant) -> Deadline {
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            waker: None,
        }
    }

    /// When it expires.
    pub fn when(&self) -> Instant {
        self.sleep.deadline()
    }

    /// Whether it has passed. Registers the task's waker with the timer unless the timer holds
    /// one that wakes the same task, so that the task is woken when it passes.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => self.sleep.is_elapsed(),
            _ => {
                self.waker = Some(cx.waker().clone());
                self.sleep.as_mut().poll(cx).is_ready()
            }
        }
    }

    /// Moves it to `at` (registered again on the next check).
    pub fn reset(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Poll;
    use std::time::Duration;

    /// Resolves when the deadline has passed, checking it as the exchange does; fails if the
    /// task is not woken for it (the paused clock then runs on to the guard's end).
    async fn passed(d: &mut Deadline) {
        let check = poll_fn(|cx| {
            if d.expired(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::time::timeout(Duration::from_secs(3600), check)
            .await
            .expect("woken when the deadline passed");
    }

    #[tokio::test(start_paused = true)]
    async fn it_wakes_the_task_when_it_passes_and_not_before() {
        let start = Instant::now();
        let mut d = Deadline::at(start + Duration::from_secs(5));
        // Checked more than once before it passes (the later checks only read its state).
        for _ in 0..3 {
            assert!(!poll_fn(|cx| Poll::Ready(d.expired(cx))).await);
        }
        passed(&mut d).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_moves_it_both_ways() {
        let start = Instant::now();
        let mut d = Deadline::at(start + Duration::from_secs(5));
        assert!(!poll_fn(|cx| Poll::Ready(d.expired(cx))).await);
        // Later: not woken at the old time.
        d.reset(start + Duration::from_secs(8));
        passed(&mut d).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(8));
        // Earlier than a registered one, and after it had fired.
        let t = Instant::now();
        d.reset(t + Duration::from_secs(10));
        assert!(!poll_fn(|cx| Poll::Ready(d.expired(cx))).await);
        d.reset(t + Duration::from_secs(2));
        passed(&mut d).await;
        assert_eq!(Instant::now() - t, Duration::from_secs(2));
        assert_eq!(d.when(), t + Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_waker_is_registered() {
        let start = Instant::now();
        let mut d = Deadline::at(start + Duration::from_secs(3));
        // Checked from one task, then awaited from another: the second one is woken.
        assert!(!poll_fn(|cx| Poll::Ready(d.expired(cx))).await);
        let waited = tokio::spawn(async move {
            passed(&mut d).await;
            Instant::now()
        });
        assert_eq!(waited.await.unwrap() - start, Duration::from_secs(3));
    }
}

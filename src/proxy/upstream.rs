//! The backends of one service (deployment) and the choice of backend per request
//! (`Upstream::acquire`):
//! - Among *available* backends (active check says healthy and not in a passive back-off), pick
//!   by least outstanding requests with the power of two choices: the first candidate comes from
//!   a round-robin cursor, the second at random among the others, and the less loaded wins (ties
//!   go to the round-robin one, so idle traffic spreads evenly). No locks, no allocation.
//! - A backend at `max_concurrent_requests_per_backend` is skipped. When every available backend
//!   is full the request waits, in a bounded per-service queue, until a slot frees or
//!   `max_request_wait_time` passes (then 503). No available backend at all: 502 at once.
//!
//! The limit is read from the service config at each admission and compared with the backend's
//! shared in-flight count, so a reload (or a second service naming the same URL) never
//! overshoots it, and a changed limit takes effect with the snapshot that carries it: raised,
//! new requests go through at once; lowered, no new request is admitted until enough of the
//! ones in flight have finished.

use std::cell::Cell;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

pub use super::backend::{Backend, InFlight, ProbeSettings};
use crate::config::BackendProtocol;

/// Requests that may wait per concurrency slot of a service (limit × backends): a slot serves
/// several queued requests within one `max_request_wait_time` when scoring takes a fraction of
/// it (Azure ML defaults: 500 ms wait, tens of ms per score); more would time out anyway.
pub const WAITERS_PER_SLOT: usize = 8;
/// A cheap per-thread xorshift64 generator, seeded from the std hasher's random keys.
pub fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No backend is available (all unhealthy, backed off, or skipped): 502 at once.
    NoBackend,
    /// Every available backend is full and the wait queue is full: 503 at once.
    QueueFull,
    /// Every available backend stayed full for `max_request_wait_time`: 503.
    WaitExpired,
}

/// The end of a request's wait for a slot (`max_request_wait_time`): fixed the first time the
/// request has to wait and kept across its attempts, so that one that finds a slot at once
/// never reads the clock for it.
#[derive(Debug, Clone, Copy)]
pub struct WaitBound {
    max: Duration,
    until: Option<tokio::time::Instant>,
}

impl WaitBound {
    pub fn new(max: Duration) -> WaitBound {
        WaitBound { max, until: None }
    }

    fn until(&mut self) -> tokio::time::Instant {
        *self
            .until
            .get_or_insert_with(|| tokio::time::Instant::now() + self.max)
    }
}

enum Attempt {
    Slot(InFlight),
    Full,
    NoBackend,
}

/// The backends of one service, the round-robin cursor of the first choice, and the count of
/// requests waiting for a slot.
pub struct Upstream {
    pub backends: Vec<Arc<Backend>>,
    pub protocol: BackendProtocol,
    cursor: AtomicUsize,
    waiting: AtomicUsize,
}

impl Upstream {
    pub fn new(backends: Vec<Arc<Backend>>, protocol: BackendProtocol) -> Self {
        Upstream {
            backends,
            protocol,
            cursor: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        }
    }

    /// The backend a new request should go to, ignoring concurrency limits: least outstanding
    /// requests among two candidates (power of two choices) over available backends. `skip`
    /// excludes one (the one a connect just failed on). For tests of the choice.
    #[cfg(test)]
    fn pick(&self, skip: Option<&Arc<Backend>>) -> Option<&Arc<Backend>> {
        self.choose(skip, 0)
    }

    /// How many requests of this service wait for a slot right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The most requests that may wait for a slot at once with `limit` per backend.
    pub fn max_waiters(&self, limit: usize) -> usize {
        WAITERS_PER_SLOT
            .saturating_mul(limit)
            .saturating_mul(self.backends.len())
    }

    /// True when at least one backend may get requests (admin `state`).
    pub fn any_healthy(&self) -> bool {
        self.backends.iter().any(|b| b.is_available())
    }

    /// The admin API's `state`: `Succeeded` (every backend up), `Degraded` (some down),
    /// `Unhealthy` (none up).
    pub fn state(&self) -> &'static str {
        let up = self.backends.iter().filter(|b| b.is_available()).count();
        if up == self.backends.len() {
            "Succeeded"
        } else if up > 0 {
            "Degraded"
        } else {
            "Unhealthy"
        }
    }

    fn usable(b: &Arc<Backend>, skip: Option<&Arc<Backend>>) -> bool {
        b.is_available() && skip.is_none_or(|s| !Arc::ptr_eq(s, b))
    }

    /// Power of two choices among usable backends with room under `limit`; a full scan when
    /// neither candidate qualifies. No allocation, no lock.
    fn choose(&self, skip: Option<&Arc<Backend>>, limit: usize) -> Option<&Arc<Backend>> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let first = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let a = &self.backends[first];
        let ok = |b: &Arc<Backend>| Self::usable(b, skip) && b.has_room(limit);
        if n > 1 {
            let second = (first + 1 + (random() as usize) % (n - 1)) % n;
            let b = &self.backends[second];
            match (ok(a), ok(b)) {
                (true, true) if b.in_flight() < a.in_flight() => return Some(b),
                (true, _) => return Some(a),
                (false, true) => return Some(b),
                (false, false) => {}
            }
        } else if ok(a) {
            return Some(a);
        }
        (0..n)
            .map(|i| &self.backends[(first + i) % n])
            .filter(|b| ok(b))
            .min_by_key(|b| b.in_flight())
    }

    /// One lock-free attempt to take a slot.
    fn attempt(&self, skip: Option<&Arc<Backend>>, limit: usize) -> Attempt {
        // A chosen backend can fill up between the choice and the take; a few tries settle it.
        for _ in 0..3 {
            match self.choose(skip, limit) {
                Some(b) => {
                    if let Some(slot) = b.try_take(limit) {
                        return Attempt::Slot(slot);
                    }
                }
                None => break,
            }
        }
        if self.backends.iter().any(|b| Self::usable(b, skip)) {
            Attempt::Full
        } else {
            Attempt::NoBackend
        }
    }

    /// Takes a slot now or not at all (a mirrored copy never waits, contract §8): `NoBackend`
    /// when none is available, `QueueFull` when every available one is at `limit`.
    pub fn try_acquire(&self, limit: usize) -> Result<InFlight, Refusal> {
        match self.attempt(None, limit) {
            Attempt::Slot(s) => Ok(s),
            Attempt::Full => Err(Refusal::QueueFull),
            Attempt::NoBackend => Err(Refusal::NoBackend),
        }
    }

    /// Takes a slot on an available backend (not `skip`), waiting until `wait`'s end when all
    /// are at `limit` (0: no limit). Refuses at once when no backend is available or the wait
    /// queue is full. Cancel-safe: dropping the future leaves no count behind.
    pub async fn acquire(
        &self,
        skip: Option<&Arc<Backend>>,
        limit: usize,
        wait: &mut WaitBound,
    ) -> Result<InFlight, Refusal> {
        match self.attempt(skip, limit) {
            Attempt::Slot(s) => return Ok(s),
            Attempt::NoBackend => return Err(Refusal::NoBackend),
            Attempt::Full => {}
        }
        let wait_until = wait.until();
        let _ticket = Waiting::enter(self, limit).ok_or(Refusal::QueueFull)?;
        loop {
            // Register for wake-ups first, then look: a slot freed in between is not missed.
            let mut wakes: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> = self
                .backends
                .iter()
                .map(|b| Box::pin(b.freed.notified()))
                .collect();
            for w in &mut wakes {
                w.as_mut().enable();
            }
            match self.attempt(skip, limit) {
                Attempt::Slot(s) => return Ok(s),
                Attempt::NoBackend => return Err(Refusal::NoBackend),
                Attempt::Full => {}
            }
            let woken = poll_fn(|cx| {
                for w in &mut wakes {
                    if w.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                }
                Poll::Pending
            });
            if tokio::time::timeout_at(wait_until, woken).await.is_err() {
                return match self.attempt(skip, limit) {
                    Attempt::Slot(s) => Ok(s),
                    Attempt::NoBackend => Err(Refusal::NoBackend),
                    Attempt::Full => Err(Refusal::WaitExpired),
                };
            }
        }
    }
}

/// A place in a service's wait queue, registered with each of its backends; given back on drop.
struct Waiting<'a>(&'a Upstream);

impl<'a> Waiting<'a> {
    fn enter(up: &'a Upstream, limit: usize) -> Option<Self> {
        let max = up.max_waiters(limit);
        up.waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                (w < max).then_some(w + 1)
            })
            .ok()?;
        for b in &up.backends {
            b.waiters.fetch_add(1, Ordering::SeqCst);
        }
        Some(Waiting(up))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        for b in &self.0.backends {
            b.waiters.fetch_sub(1, Ordering::SeqCst);
        }
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::backend::PASSIVE_FAILURES;

    fn backends(n: usize) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| {
                Arc::new(Backend::new(
                    &format!("http://127.0.0.1:{}", 5000 + i).parse().unwrap(),
                ))
            })
            .collect()
    }

    fn later(ms: u64) -> WaitBound {
        WaitBound::new(Duration::from_millis(ms))
    }

    #[test]
    fn idle_backends_take_turns_and_the_less_loaded_wins() {
        let up = Upstream::new(backends(2), BackendProtocol::Http1);
        let picks: Vec<_> = (0..4).map(|_| up.pick(None).unwrap().url.clone()).collect();
        assert_eq!(picks[0], picks[2]);
        assert_ne!(picks[0], picks[1]);
        let busy = up.backends[0].clone().try_take(0).unwrap();
        for _ in 0..10 {
            assert!(Arc::ptr_eq(up.pick(None).unwrap(), &up.backends[1]));
        }
        drop(busy);
        assert_eq!(up.backends[0].in_flight(), 0);
    }

    #[test]
    fn unavailable_and_skipped_backends_are_not_picked() {
        let up = Upstream::new(backends(3), BackendProtocol::Http1);
        up.backends[0].healthy.store(false, Ordering::Relaxed);
        for _ in 0..PASSIVE_FAILURES {
            up.backends[1].connect_failed();
        }
        assert!(up.backends[1].is_ejected());
        for _ in 0..10 {
            assert!(Arc::ptr_eq(up.pick(None).unwrap(), &up.backends[2]));
        }
        assert!(up.pick(Some(&up.backends[2])).is_none());
        assert!(up.any_healthy());
        up.backends[2].healthy.store(false, Ordering::Relaxed);
        assert!(!up.any_healthy());
        up.backends[1].connect_succeeded();
        assert!(!up.backends[1].is_ejected());
        assert!(up.any_healthy());
    }

    #[tokio::test]
    async fn a_full_backend_makes_requests_wait_and_a_freed_slot_serves_them() {
        let up = Arc::new(Upstream::new(backends(1), BackendProtocol::Http1));
        let first = up.acquire(None, 1, &mut later(0)).await.unwrap();
        assert_eq!(
            up.acquire(None, 1, &mut later(20)).await.unwrap_err(),
            Refusal::WaitExpired
        );
        let up2 = up.clone();
        let waiter = tokio::spawn(async move {
            let s = up2.acquire(None, 1, &mut later(5000)).await;
            s.map(|s| s.backend().url.clone())
        });
        while up.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        drop(first);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!((up.backends[0].in_flight(), up.waiting()), (0, 0));
    }

    #[tokio::test]
    async fn the_wait_queue_is_bounded_and_cancelled_waits_leave_nothing_behind() {
        let up = Arc::new(Upstream::new(backends(1), BackendProtocol::Http1));
        let held = up.acquire(None, 1, &mut later(0)).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..up.max_waiters(1) {
            let up = up.clone();
            tasks.push(tokio::spawn(async move {
                let _ = up.acquire(None, 1, &mut later(60_000)).await;
            }));
        }
        while up.waiting() < up.max_waiters(1) {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            up.acquire(None, 1, &mut later(60_000)).await.unwrap_err(),
            Refusal::QueueFull
        );
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        assert_eq!(up.waiting(), 0);
        assert_eq!(up.backends[0].waiters.load(Ordering::Relaxed), 0);
        drop(held);
        assert_eq!(up.backends[0].in_flight(), 0);
    }

    #[tokio::test]
    async fn waiters_give_up_at_once_when_the_last_backend_goes() {
        let up = Arc::new(Upstream::new(backends(1), BackendProtocol::Http1));
        let _held = up.acquire(None, 1, &mut later(0)).await.unwrap();
        let up2 = up.clone();
        let waiter = tokio::spawn(async move { up2.acquire(None, 1, &mut later(60_000)).await });
        while up.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        up.backends[0].healthy.store(false, Ordering::Relaxed);
        up.backends[0].wake_waiters();
        let r = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(r.unwrap().unwrap().unwrap_err(), Refusal::NoBackend);
    }

    proptest::proptest! {
        /// Whatever the backends' health, load and the limit, a slot is given on a backend that
        /// is available, not skipped and has room, and one is always given when such a backend
        /// exists.
        #[test]
        fn the_choice_takes_only_a_usable_backend_with_room(
            states in proptest::collection::vec((proptest::bool::ANY, 0usize..4), 1..6),
            limit in 0usize..4,
            skip in proptest::option::of(0usize..6),
        ) {
            let up = Upstream::new(backends(states.len()), BackendProtocol::Http1);
            let mut held = Vec::new();
            for (b, (healthy, load)) in up.backends.iter().zip(&states) {
                b.healthy.store(*healthy, Ordering::Relaxed);
                for _ in 0..*load {
                    held.push(b.clone().try_take(0).unwrap());
                }
            }
            let skip = skip.and_then(|i| up.backends.get(i)).cloned();
            let fits = |b: &Arc<Backend>| {
                b.is_available()
                    && skip.as_ref().is_none_or(|s| !Arc::ptr_eq(s, b))
                    && (limit == 0 || b.in_flight() < limit)
            };
            let any_fits = up.backends.iter().any(fits);
            match up.attempt(skip.as_ref(), limit) {
                Attempt::Slot(slot) => {
                    let b = slot.backend().clone();
                    drop(slot);
                    proptest::prop_assert!(fits(&b));
                }
                Attempt::Full => proptest::prop_assert!(!any_fits),
                Attempt::NoBackend => proptest::prop_assert!(!any_fits),
            }
        }
    }
}

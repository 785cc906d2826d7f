//! Backends of a service, their connection pools (`pool`), and the choice of backend per
//! request.
//!
//! This module owns the per-backend runtime state that every snapshot shares (a `Backend` is
//! keyed by URL and carries over reloads): the count of requests in flight, which is both the
//! concurrency slot count and the load signal; the passive health state (consecutive connect
//! failures and the back-off they earn); the active health verdict (written by `health`); and
//! the wake-up for requests waiting for a slot.
//!
//! Choosing a backend (`Upstream::acquire`):
//! - Among *available* backends (active check says healthy and not in a passive back-off), pick
//!   by least outstanding requests with the power of two choices: the first candidate comes from
//!   a round-robin cursor, the second at random among the others, and the less loaded wins (ties
//!   go to the round-robin one, so idle traffic spreads evenly). No locks, no allocation.
//! - A backend at `max_concurrent_requests_per_backend` is skipped. When every available backend
//!   is full the request waits, in a bounded per-service queue, until a slot frees or
//!   `max_request_wait_time` passes (then 503). No available backend at all: 502 at once.
//! - A slot is an `InFlight` guard: it is taken before the request is sent and given back when
//!   the guard drops, i.e. when the backend's response head arrives, the request fails, or the
//!   handler future is dropped (client gone). The response body then streams outside the slot
//!   (azmlinfsrv computes the whole answer before it sends the head).
//!
//! The limit is read from the service config at each admission and compared with the backend's
//! shared in-flight count, so a reload (or a second service naming the same URL) never
//! overshoots it, and a changed limit takes effect with the snapshot that carries it: raised,
//! new requests go through at once; lowered, no new request is admitted until enough of the
//! ones in flight have finished.

use std::cell::Cell;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::pool::Pool;
use crate::config::{BackendProtocol, HealthConfig};

/// Requests that may wait per concurrency slot of a service (limit × backends): a slot serves
/// several queued requests within one `max_request_wait_time` when scoring takes a fraction of
/// it (Azure ML defaults: 500 ms wait, tens of ms per score); more would time out anyway.
pub const WAITERS_PER_SLOT: usize = 8;
/// Consecutive connect failures seen by real requests that take a backend out of rotation:
/// one or two can be a blip (a restart, a full accept queue); three in a row is a dead process.
pub const PASSIVE_FAILURES: u32 = 3;
/// First passive back-off: long enough to stop hammering a dead port, short enough that a
/// restarted backend is back within about a second.
pub const PASSIVE_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The back-off doubles with each ejection in a row, up to this: a backend that stays down is
/// tried twice a minute (the active check usually brings it back sooner).
pub const PASSIVE_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How the active health check probes a backend: the settings of the last service built that
/// names it (services sharing a backend URL are expected to agree).
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub health: HealthConfig,
    pub protocol: BackendProtocol,
}

/// One backend (model replica) and its runtime state.
#[derive(Debug)]
pub struct Backend {
    /// `http://host:port`, as configured (label in logs and metrics).
    pub url: String,
    /// Its connections (shared by every snapshot naming this URL).
    pub pool: Arc<Pool>,
    /// Requests holding a slot on this backend (sent and not yet answered), across services.
    pub in_flight: AtomicUsize,
    /// The active health check's verdict (true until probes say otherwise).
    pub healthy: AtomicBool,
    /// Consecutive connect failures seen by real requests.
    connect_failures: AtomicU32,
    /// Passive ejections in a row (the back-off exponent); reset by a successful connect.
    ejections: AtomicU32,
    /// End of the passive back-off, in ms since `epoch()`; 0 when not ejected.
    ejected_until: AtomicU64,
    /// Requests currently waiting for a slot that would take one here.
    waiters: AtomicUsize,
    /// Signalled when a slot frees (one waiter) or availability changes (all waiters).
    freed: Notify,
    probe: Mutex<ProbeSettings>,
}

impl Backend {
    pub fn new(uri: &http::Uri) -> Self {
        let authority = uri
            .authority()
            .cloned()
            .expect("validated backend URL has a host");
        Backend {
            url: format!("http://{authority}"),
            pool: Arc::new(Pool::new(authority)),
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            connect_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            freed: Notify::new(),
            probe: Mutex::new(ProbeSettings {
                health: HealthConfig::default(),
                protocol: BackendProtocol::Http1,
            }),
        }
    }

    /// Requests holding a slot here right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The active health check's verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// True while a passive back-off keeps the backend out of rotation.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// May get new requests: healthy, and not in a passive back-off.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    pub fn probe_settings(&self) -> ProbeSettings {
        self.probe.lock().unwrap().clone()
    }

    pub fn set_probe_settings(&self, health: &HealthConfig, protocol: BackendProtocol) {
        *self.probe.lock().unwrap() = ProbeSettings {
            health: health.clone(),
            protocol,
        };
    }

    /// Takes a slot if the backend has fewer than `limit` requests in flight (0: no limit).
    fn try_take(self: &Arc<Self>, limit: usize) -> Option<InFlight> {
        if limit == 0 {
            self.in_flight.fetch_add(1, Ordering::SeqCst);
        } else {
            self.in_flight
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < limit).then_some(n + 1)
                })
                .ok()?;
        }
        Some(InFlight(self.clone()))
    }

    fn has_room(&self, limit: usize) -> bool {
        limit == 0 || self.in_flight.load(Ordering::Relaxed) < limit
    }

    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        // Paired with the SeqCst increment of `waiters` before a waiter's last look: either the
        // waiter sees this slot free, or this sees the waiter and wakes it.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.freed.notify_one();
        }
    }

    /// Wakes every waiter to look again (availability changed).
    pub(crate) fn wake_waiters(&self) {
        self.freed.notify_waiters();
    }

    /// A real request could not connect: count it, and start (or extend) a back-off once
    /// `PASSIVE_FAILURES` come in a row. After the back-off the backend gets traffic again; one
    /// more failure then takes it out at once for twice as long.
    pub fn connect_failed(&self) {
        let n = self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < PASSIVE_FAILURES {
            return;
        }
        let now = now_ms();
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 && now < until {
            return; // already out (requests that were on their way when it went)
        }
        let k = self.ejections.load(Ordering::Relaxed);
        let backoff = backoff(k);
        let next = now + backoff.as_millis() as u64;
        if self
            .ejected_until
            .compare_exchange(until, next.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(backend = %self.url, failures = n, backoff = ?backoff,
                "backend refuses connections; taken out of rotation");
            self.wake_waiters();
        }
    }

    /// A connection to the backend worked: the failure streak and any back-off end.
    pub fn connect_succeeded(&self) {
        if self.connect_failures.load(Ordering::Relaxed) != 0
            || self.ejections.load(Ordering::Relaxed) != 0
        {
            self.clear_passive();
        }
    }

    pub(crate) fn clear_passive(&self) {
        self.connect_failures.store(0, Ordering::Relaxed);
        let was = self.ejections.swap(0, Ordering::Relaxed);
        self.ejected_until.store(0, Ordering::Relaxed);
        if was != 0 {
            tracing::info!(backend = %self.url, "backend reachable again; back in rotation");
            self.wake_waiters();
        }
    }
}

/// The passive back-off after `k` earlier ejections in a row.
fn backoff(k: u32) -> Duration {
    PASSIVE_BACKOFF_MIN
        .saturating_mul(1u32 << k.min(16))
        .min(PASSIVE_BACKOFF_MAX)
}

/// Milliseconds since a process-wide epoch (monotonic; never 0 after the first call's instant).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| Instant::now() - Duration::from_millis(1));
    epoch.elapsed().as_millis() as u64
}

/// A cheap per-thread xorshift64 generator, seeded from the std hasher's random keys.
fn random() -> u64 {
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

    /// Takes a slot on an available backend (not `skip`), waiting until `wait_until` when all
    /// are at `limit` (0: no limit). Refuses at once when no backend is available or the wait
    /// queue is full. Cancel-safe: dropping the future leaves no count behind.
    pub async fn acquire(
        &self,
        skip: Option<&Arc<Backend>>,
        limit: usize,
        wait_until: tokio::time::Instant,
    ) -> Result<InFlight, Refusal> {
        match self.attempt(skip, limit) {
            Attempt::Slot(s) => return Ok(s),
            Attempt::NoBackend => return Err(Refusal::NoBackend),
            Attempt::Full => {}
        }
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

/// A concurrency slot on a backend: counted in its in-flight requests until dropped, however
/// the request ends.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| {
                Arc::new(Backend::new(
                    &format!("http://127.0.0.1:{}", 5000 + i).parse().unwrap(),
                ))
            })
            .collect()
    }

    fn later(ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(ms)
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

    #[test]
    fn passive_backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), PASSIVE_BACKOFF_MIN);
        assert_eq!(backoff(1), PASSIVE_BACKOFF_MIN * 2);
        assert_eq!(backoff(4), Duration::from_secs(16));
        assert_eq!(backoff(5), PASSIVE_BACKOFF_MAX);
        assert_eq!(backoff(40), PASSIVE_BACKOFF_MAX);
    }

    #[tokio::test]
    async fn a_full_backend_makes_requests_wait_and_a_freed_slot_serves_them() {
        let up = Arc::new(Upstream::new(backends(1), BackendProtocol::Http1));
        let first = up.acquire(None, 1, later(0)).await.unwrap();
        assert_eq!(
            up.acquire(None, 1, later(20)).await.unwrap_err(),
            Refusal::WaitExpired
        );
        let up2 = up.clone();
        let waiter = tokio::spawn(async move {
            let s = up2.acquire(None, 1, later(5000)).await;
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
        let held = up.acquire(None, 1, later(0)).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..up.max_waiters(1) {
            let up = up.clone();
            tasks.push(tokio::spawn(async move {
                let _ = up.acquire(None, 1, later(60_000)).await;
            }));
        }
        while up.waiting() < up.max_waiters(1) {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            up.acquire(None, 1, later(60_000)).await.unwrap_err(),
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
        let _held = up.acquire(None, 1, later(0)).await.unwrap();
        let up2 = up.clone();
        let waiter = tokio::spawn(async move { up2.acquire(None, 1, later(60_000)).await });
        while up.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        up.backends[0].healthy.store(false, Ordering::Relaxed);
        up.backends[0].wake_waiters();
        let r = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(r.unwrap().unwrap().unwrap_err(), Refusal::NoBackend);
    }
}

//! One backend (model replica) and its runtime state, which every snapshot naming its URL shares
//! (a `Backend` carries over reloads): the count of requests in flight, which is both the
//! concurrency slot count and the load signal; the passive health state (consecutive connect
//! failures and the back-off they earn); the active health verdict (written by `health`); the
//! wake-up for requests waiting for a slot; and its connection pool (`pool`).
//!
//! A slot is an `InFlight` guard: taken before the request is sent and given back when the guard
//! drops — when the response body has ended (the gateway's observe record holds it), the request
//! fails, or the client goes away — so a backend never streams more responses at once than its
//! limit.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::pool::Pool;
use crate::config::{BackendProtocol, HealthConfig};

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

/// How one request's exchange with a backend ended, for `scoregate_backend_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeResult {
    /// A response head arrived (whatever its status: a backend's own 500 is a response).
    Response,
    /// The connection could not be made.
    ConnectError,
    /// No response head within `scoring_timeout`.
    Timeout,
    /// Connected, then the exchange broke (reset, a malformed response, too much before the head).
    Error,
}

impl ExchangeResult {
    /// Every result, in the order of the counters (and of the metric's `result` label).
    pub const ALL: [ExchangeResult; 4] = [
        ExchangeResult::Response,
        ExchangeResult::ConnectError,
        ExchangeResult::Timeout,
        ExchangeResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeResult::Response => "response",
            ExchangeResult::ConnectError => "connect_error",
            ExchangeResult::Timeout => "timeout",
            ExchangeResult::Error => "error",
        }
    }
}

/// The last failure seen on a backend (a request's or a health probe's), for the admin API.
#[derive(Debug, Clone)]
pub struct LastError {
    pub message: String,
    pub at: SystemTime,
}

/// What the admin API shows of a backend (`GET /v1/services/NAME`, `backends`).
#[derive(Debug, Clone)]
pub struct BackendView {
    pub url: String,
    /// Gets new requests: the health check passes and no passive back-off holds it out.
    pub up: bool,
    /// The longer of the current streaks of failed health probes and failed connects.
    pub consecutive_failures: u32,
    pub last_error: Option<LastError>,
    pub in_flight: usize,
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
    /// Health probes failed in a row (written by `health`).
    pub(super) probe_failures: AtomicU32,
    /// Exchanges by how they ended (`ExchangeResult::ALL` order); one relaxed add per request.
    exchanges: [AtomicU64; 4],
    /// Written on failures only, never on a request that worked.
    last_error: Mutex<Option<LastError>>,
    /// Requests currently waiting for a slot that would take one here.
    pub(super) waiters: AtomicUsize,
    /// Signalled when a slot frees (one waiter) or availability changes (all waiters).
    pub(super) freed: Notify,
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
            probe_failures: AtomicU32::new(0),
            exchanges: Default::default(),
            last_error: Mutex::new(None),
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

    /// Counts one exchange by how it ended.
    pub fn count(&self, result: ExchangeResult) {
        self.exchanges[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Exchanges so far that ended with `result`.
    pub fn exchanges(&self, result: ExchangeResult) -> u64 {
        self.exchanges[result as usize].load(Ordering::Relaxed)
    }

    /// Remembers a failure (a request's or a probe's) for the admin API.
    pub fn record_error(&self, message: String) {
        *self.last_error.lock().unwrap() = Some(LastError {
            message,
            at: SystemTime::now(),
        });
    }

    /// The backend as the admin API shows it.
    pub fn view(&self) -> BackendView {
        BackendView {
            url: self.url.clone(),
            up: self.is_available(),
            consecutive_failures: self
                .probe_failures
                .load(Ordering::Relaxed)
                .max(self.connect_failures.load(Ordering::Relaxed)),
            last_error: self.last_error.lock().unwrap().clone(),
            in_flight: self.in_flight(),
        }
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
    pub(super) fn try_take(self: &Arc<Self>, limit: usize) -> Option<InFlight> {
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

    pub(super) fn has_room(&self, limit: usize) -> bool {
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

    #[test]
    fn passive_backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), PASSIVE_BACKOFF_MIN);
        assert_eq!(backoff(1), PASSIVE_BACKOFF_MIN * 2);
        assert_eq!(backoff(4), Duration::from_secs(16));
        assert_eq!(backoff(5), PASSIVE_BACKOFF_MAX);
        assert_eq!(backoff(40), PASSIVE_BACKOFF_MAX);
    }

    proptest::proptest! {
        /// The back-off never shrinks with more ejections and stays within its bounds.
        #[test]
        fn backoff_grows_within_bounds(k in 0u32..100) {
            proptest::prop_assert!(backoff(k) >= PASSIVE_BACKOFF_MIN);
            proptest::prop_assert!(backoff(k) <= PASSIVE_BACKOFF_MAX);
            proptest::prop_assert!(backoff(k + 1) >= backoff(k));
        }
    }
}

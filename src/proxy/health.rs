//! Active health checks: one background task per backend URL that probes `GET {health.path}`
//! and flips the backend's `healthy` flag, with Azure ML liveness-probe semantics:
//! `failure_threshold` failures in a row (a non-2xx status, no answer within `timeout`, or no
//! connection) take the backend out of rotation; `success_threshold` successes in a row bring
//! it back.
//!
//! Timing: a backend starts out healthy (traffic flows at once, and real requests' connect
//! failures catch a dead one sooner, see `upstream`); the first probe comes `initial_delay +
//! period` after the backend first appears, then one every `period` (start to start). Settings
//! are read from the backend before each probe, so a reload that changes them applies from the
//! next probe on.
//!
//! The task holds only a `Weak<Backend>` and ends at its next tick once no snapshot names the
//! backend any more. `Gateway::backend` starts exactly one per backend, so several services or
//! snapshots naming one URL share one checker. Probes go through the backend's connection pool.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request};
use http_body_util::{BodyExt, Either, Full, Limited};

use super::pool::Pool;
use super::upstream::{Backend, ProbeSettings};

/// A probe answer is read (so its connection can be pooled again) up to this size; a liveness
/// route answers a few bytes, anything larger is dropped unread with its connection.
const PROBE_BODY_MAX: usize = 64 * 1024;
/// Lets a backend's access log tell probes from scoring traffic.
const PROBE_USER_AGENT: &str = concat!("scoregate-health/", env!("CARGO_PKG_VERSION"));

/// Starts the active health check of `backend` on the current tokio runtime (none: no checks,
/// e.g. a config check outside the server).
pub fn spawn_checker(backend: &Arc<Backend>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(run(Arc::downgrade(backend)));
}

async fn run(backend: Weak<Backend>) {
    let Some(first) = backend.upgrade().map(|b| b.probe_settings()) else {
        return;
    };
    let mut next = tokio::time::Instant::now() + first.health.initial_delay + first.health.period;
    let mut successes = 0u32;
    let mut failures = 0u32;
    loop {
        tokio::time::sleep_until(next).await;
        let Some(b) = backend.upgrade() else {
            return;
        };
        let settings = b.probe_settings();
        let h = &settings.health;
        next = tokio::time::Instant::now() + h.period;
        let url = b.url.clone();
        let path = PathAndQuery::try_from(h.path.as_str());
        // The pool, not the backend: a probe in progress does not keep a removed backend alive.
        let pool = b.pool.clone();
        drop(b);
        let ok = match path {
            Ok(path) => probe(&pool, &settings, path).await,
            Err(e) => Err(format!("bad probe path: {e}")),
        };
        let Some(b) = backend.upgrade() else {
            return;
        };
        match ok {
            Ok(()) => {
                failures = 0;
                b.probe_failures.store(0, Ordering::Relaxed);
                successes = successes.saturating_add(1);
                b.clear_passive();
                if successes >= h.success_threshold && !b.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(backend = %url, successes, "health check passes; backend back in rotation");
                    b.wake_waiters();
                }
            }
            Err(why) => {
                successes = 0;
                failures = failures.saturating_add(1);
                b.probe_failures.store(failures, Ordering::Relaxed);
                b.record_error(format!("health check: {why}"));
                if failures >= h.failure_threshold && b.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(backend = %url, failures, error = %why, "health check fails; backend out of rotation");
                    b.wake_waiters();
                } else {
                    tracing::debug!(backend = %url, failures, error = %why, "health probe failed");
                }
            }
        }
    }
}

/// One probe: a 2xx answer within the timeout is a success.
async fn probe(
    pool: &Arc<Pool>,
    settings: &ProbeSettings,
    path: PathAndQuery,
) -> Result<(), String> {
    let mut req = Request::new(Either::Right(Full::new(Bytes::new())));
    *req.method_mut() = Method::GET;
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static(PROBE_USER_AGENT),
    );
    let timeout = settings.health.timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let resp =
        match tokio::time::timeout_at(deadline, pool.clone().send(settings.protocol, path, req))
            .await
        {
            Err(_) => return Err(format!("no answer within {}", fmt(timeout))),
            Ok(Err(e)) => return Err(crate::error::DisplayChain(&e).to_string()),
            Ok(Ok(r)) => r,
        };
    let status = resp.status();
    // Read the (small) body so the connection can serve the next request; its fate does not
    // change the verdict.
    let body = Limited::new(resp.into_body(), PROBE_BODY_MAX).collect();
    let _ = tokio::time::timeout_at(deadline, body).await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

fn fmt(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

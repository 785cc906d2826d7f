//! Forwarding one request to a backend of an upstream and getting its response head.
//!
//! Admission comes first: the request takes a concurrency slot on an available backend
//! (`upstream`), waiting at most `max_request_wait_time` when all are full (503), or failing at
//! once when none is available (502). A connection that could not be established is retried
//! once on another backend (and counts towards that backend's passive back-off); a request that
//! may have reached a backend is never retried (scoring need not be idempotent). The slot
//! (`InFlight`) comes back with the response and stays taken until the response body ends.
//!
//! A client that goes away while its request is with a backend does not free the slot: the
//! backend is still computing. The exchange (`Exchange`) then goes on in a task of its own until
//! the backend answers or the scoring deadline passes, and only then gives the slot back — so a
//! client that opens and abandons requests cannot pile more work onto a backend than its limit.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;

use super::backend::ExchangeResult;
use super::body::{BodySlot, Copied, Leftover, Stalled, TooLarge, UpstreamBody};
use super::deadline::Deadline;
use super::pool::{Pool, PooledBody, SendError};
use super::upstream::{Backend, InFlight, Refusal, Upstream, WaitBound};
use crate::config::BackendProtocol;
use crate::error::{BackendError, DisplayChain, GatewayError, Overload};

/// How requests of one service (deployment) are forwarded.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardSettings {
    /// The backend's scoring path (`score_path`), parsed once at load (a clone is a reference
    /// count).
    pub score_path: PathAndQuery,
    pub scoring_timeout: Duration,
    pub max_body: u64,
    /// `max_concurrent_requests_per_backend` (0: no limit).
    pub limit: usize,
    pub max_wait: Duration,
    /// `limits.body_idle_timeout`: the longest wait for the request body's next KiB.
    pub body_idle: Duration,
}

/// Which backend route a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `POST {score_path}`.
    Score,
    /// `GET /swagger.json`.
    Swagger,
}

/// The backend's response head, which backend gave it, and the slot it holds.
pub struct Forwarded {
    pub response: Response<PooledBody>,
    pub backend: Arc<Backend>,
    pub slot: InFlight,
    /// The copy of the request body asked for (`copy`), once the body has been read.
    pub request_copy: Option<tokio::sync::oneshot::Receiver<Copied>>,
}

/// A forward that failed: why, on which backend (when one was chosen), and what is left of the
/// request body (so the gateway can drain it or close the connection).
pub struct ForwardError {
    pub error: GatewayError,
    pub backend: Option<Arc<Backend>>,
    pub body: Leftover,
}

/// The backend's path: the route's (+ the client's query, verbatim).
fn backend_path(path: &PathAndQuery, query: Option<&str>) -> PathAndQuery {
    match query {
        Some(q) => {
            let path = path.path();
            let mut s = String::with_capacity(path.len() + 1 + q.len());
            s.push_str(path);
            s.push('?');
            s.push_str(q);
            PathAndQuery::try_from(s)
                .expect("path and query come from a parsed URI and a validated score_path")
        }
        None => path.clone(),
    }
}

/// Sends the request to a backend of `up`. `parts` already carries the rewritten headers.
/// `chosen` is set to each backend as it is chosen, so whoever holds it knows where the request
/// went even if this future is dropped midway (a client gone). `copy`: also keep a copy of the
/// request body up to that many bytes (for a mirror).
pub async fn forward(
    up: &Upstream,
    settings: &ForwardSettings,
    target: Target,
    parts: Parts,
    body: Incoming,
    chosen: &mut Option<Arc<Backend>>,
    copy: Option<u64>,
) -> Result<Forwarded, ForwardError> {
    const SWAGGER: PathAndQuery = PathAndQuery::from_static("/swagger.json");
    let path = match target {
        Target::Score => &settings.score_path,
        Target::Swagger => &SWAGGER,
    };
    let query = parts.uri.query();
    let mut headers = parts.headers;
    let (slot_body, mut request_copy) =
        BodySlot::with_copy(body, settings.max_body, settings.body_idle, copy);
    let fail = |error, backend| ForwardError {
        error,
        backend,
        body: slot_body.leftover(),
    };
    let mut tried: Option<Arc<Backend>> = None;
    let mut wait = WaitBound::new(settings.max_wait);
    // The scoring timeout runs from the first admission, not from arrival: the wait for a slot
    // has its own bound.
    let mut scoring_deadline = None;
    loop {
        let slot = match up.acquire(tried.as_ref(), settings.limit, &mut wait).await {
            Ok(g) => g,
            Err(refusal) => return Err(fail(refused(refusal, tried.is_some()), tried)),
        };
        let backend = slot.backend().clone();
        *chosen = Some(backend.clone());
        let deadline = *scoring_deadline
            .get_or_insert_with(|| tokio::time::Instant::now() + settings.scoring_timeout);
        let mut req = Request::new(Either::Left(slot_body.body()));
        *req.method_mut() = parts.method.clone();
        // Only a first attempt with another backend to fall back on keeps a copy of the headers
        // for the retry; otherwise they move (a header map clone is a dozen allocations).
        *req.headers_mut() = if tried.is_none() && up.backends.len() > 1 {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        let (sent, slot, timer) = Exchange::start(
            backend.pool.clone(),
            up.protocol,
            backend_path(path, query),
            req,
            slot,
            deadline,
        )
        .await;
        match sent {
            Ok(Ok(response)) => {
                backend.connect_succeeded();
                backend.count(ExchangeResult::Response);
                return Ok(Forwarded {
                    response: response.map(|b| b.with_idle_limit(settings.scoring_timeout, timer)),
                    backend,
                    slot,
                    request_copy: request_copy.take(),
                });
            }
            Err(_) => {
                backend.count(ExchangeResult::Timeout);
                backend.record_error(format!(
                    "no response head within scoring_timeout ({})",
                    humantime::format_duration(settings.scoring_timeout)
                ));
                return Err(fail(
                    GatewayError::ScoringTimeout(settings.scoring_timeout),
                    Some(backend),
                ));
            }
            Ok(Err(e)) => {
                if e.is_connect() {
                    backend.connect_failed();
                } else {
                    backend.connect_succeeded();
                }
                if let Some(t) = find_source::<TooLarge>(&e) {
                    return Err(fail(
                        GatewayError::PayloadTooLarge { limit: t.0 },
                        Some(backend),
                    ));
                }
                if let Some(s) = find_source::<Stalled>(&e) {
                    return Err(fail(GatewayError::RequestTimeout(s.0), Some(backend)));
                }
                // The client's body was at fault above; from here on the backend was.
                backend.count(if e.is_connect() {
                    ExchangeResult::ConnectError
                } else {
                    ExchangeResult::Error
                });
                backend.record_error(DisplayChain(&e).to_string());
                // Retry once, elsewhere, only if nothing was sent and the body is still ours.
                if e.is_connect() && tried.is_none() && slot_body.available() {
                    tracing::warn!(backend = %backend.url, error = %e, "cannot connect to backend, trying another");
                    drop(slot);
                    tried = Some(backend);
                    continue;
                }
                tracing::warn!(backend = %backend.url, error = %DisplayChain(&e), "backend request failed");
                let cause = if e.is_connect() {
                    BackendError::Connect(Box::new(e))
                } else {
                    BackendError::Exchange(Box::new(e))
                };
                return Err(fail(GatewayError::BackendUnavailable(cause), Some(backend)));
            }
        }
    }
}

/// The backend's response head, or `Err(TimedOut)` when the scoring deadline passed first.
type Sent = Result<Result<Response<PooledBody>, SendError>, TimedOut>;

/// The scoring deadline passed before the backend's response head came.
#[derive(Debug)]
struct TimedOut;

type Sending = Pin<Box<dyn Future<Output = Result<Response<PooledBody>, SendError>> + Send>>;

/// One attempt's exchange with a backend: the request sent and its response head awaited under
/// the scoring deadline, holding the backend slot. Dropped before it finished (the client went
/// away), it finishes in a task of its own, and the slot is given back only then.
struct Exchange {
    fut: Option<Sending>,
    /// The scoring deadline; with the response head it goes on to time the body's pauses.
    deadline: Option<Deadline>,
    slot: Option<InFlight>,
}

impl Exchange {
    fn start(
        pool: Arc<Pool>,
        protocol: BackendProtocol,
        path: PathAndQuery,
        req: Request<UpstreamBody>,
        slot: InFlight,
        deadline: tokio::time::Instant,
    ) -> Exchange {
        Exchange {
            // `send` owns its pool handle, so no async block wraps it (one that would hold
            // the arguments a second time in the boxed state).
            fut: Some(Box::pin(pool.send(protocol, path, req))),
            deadline: Some(Deadline::at(deadline)),
            slot: Some(slot),
        }
    }
}

impl Future for Exchange {
    /// What was sent, the slot, and the timer (for the response body).
    type Output = (Sent, InFlight, Deadline);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let fut = this.fut.as_mut().expect("polled after completion");
        let sent = match fut.as_mut().poll(cx) {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => {
                let deadline = this.deadline.as_mut().expect("held until done");
                if !deadline.expired(cx) {
                    return Poll::Pending;
                }
                Err(TimedOut)
            }
        };
        this.fut = None;
        Poll::Ready((
            sent,
            this.slot.take().expect("the slot is held until done"),
            this.deadline.take().expect("held until done"),
        ))
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let (Some(fut), Some(slot), Some(deadline)) =
            (self.fut.take(), self.slot.take(), self.deadline.take())
        {
            // The backend may still be computing: keep its slot until it answers (the answer
            // is dropped unread) or the deadline passes.
            tokio::spawn(async move {
                let _ = tokio::time::timeout_at(deadline.when(), fut).await;
                drop(slot);
            });
        }
    }
}

/// The error for a request that got no slot.
fn refused(r: Refusal, retried: bool) -> GatewayError {
    match r {
        Refusal::NoBackend if retried => GatewayError::BackendUnavailable(BackendError::Connect(
            "the connection failed and no other backend is available".into(),
        )),
        Refusal::NoBackend => GatewayError::BackendUnavailable(BackendError::NoneAvailable),
        Refusal::QueueFull => GatewayError::Overloaded(Overload::QueueFull),
        Refusal::WaitExpired => GatewayError::Overloaded(Overload::WaitExpired),
    }
}

fn find_source<'a, E: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut cur: Option<&'a (dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(x) = err.downcast_ref::<E>() {
            return Some(x);
        }
        cur = err.source();
    }
    None
}

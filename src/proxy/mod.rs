//! Forwarding a scoring request to one of the service's backends and streaming the answer back.
//!
//! Admission comes first: the request takes a concurrency slot on an available backend
//! (`upstream`), waiting at most `max_request_wait_time` when all are full (503), or failing at
//! once when none is available (502). A connection that could not be established is retried
//! once on another backend (and counts towards that backend's passive back-off); a request that
//! reached a backend is never retried (scoring need not be idempotent).

pub mod headers;
pub mod health;
pub mod pool;
pub mod upstream;

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response};
use http_body_util::{Either, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::error::GatewayError;
use crate::route::Endpoint;
use crate::state::Service;
use pool::PooledBody;
use upstream::{Backend, InFlight, Refusal};

/// The outcome of a forward: the backend's response and which backend gave it.
pub struct Forwarded {
    pub response: Response<PooledBody>,
    pub backend: Arc<Backend>,
    pub guard: InFlight,
}

/// The backend's path: the route's (+ the client's query, verbatim).
fn backend_path(path: &str, query: Option<&str>) -> PathAndQuery {
    match query {
        Some(q) => {
            let mut s = String::with_capacity(path.len() + 1 + q.len());
            s.push_str(path);
            s.push('?');
            s.push_str(q);
            PathAndQuery::try_from(s)
        }
        None => PathAndQuery::try_from(path),
    }
    .expect("path and query come from a parsed URI and a validated score_path")
}

/// Sends the request to a backend of `svc`. `parts` already carries the rewritten headers.
pub async fn forward(
    svc: &Service,
    endpoint: Endpoint,
    parts: Parts,
    body: Incoming,
) -> Result<Forwarded, (GatewayError, Option<Arc<Backend>>)> {
    let path = match endpoint {
        Endpoint::Score => svc.config.score_path.as_str(),
        Endpoint::Swagger => "/swagger.json",
    };
    let query = parts.uri.query();
    let mut headers = parts.headers;
    let protocol = svc.upstream.protocol;
    let body = ReclaimableBody::new(Limited::new(body, svc.config.max_body as usize));
    let slot = body.slot.clone();
    let mut body = Some(body);
    let mut tried: Option<Arc<Backend>> = None;
    let limit = svc.config.max_concurrent_requests_per_backend;
    let wait_until = tokio::time::Instant::now() + svc.config.max_request_wait_time;
    // The scoring timeout runs from the first admission, not from arrival: the wait for a slot
    // has its own bound.
    let mut scoring_deadline = None;
    loop {
        let guard = match svc
            .upstream
            .acquire(tried.as_ref(), limit, wait_until)
            .await
        {
            Ok(g) => g,
            Err(refusal) => return Err((refused(refusal, tried.is_some()), tried)),
        };
        let backend = guard.backend().clone();
        let deadline = *scoring_deadline
            .get_or_insert_with(|| tokio::time::Instant::now() + svc.config.scoring_timeout);
        let b = body
            .take()
            .unwrap_or_else(|| ReclaimableBody::reclaim(&slot));
        let mut req = Request::new(Either::Left(b));
        *req.method_mut() = parts.method.clone();
        // Only a first attempt with another backend to fall back on keeps a copy of the headers
        // for the retry; otherwise they move (a header map clone is a dozen allocations).
        *req.headers_mut() = if tried.is_none() && svc.upstream.backends.len() > 1 {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        let sent = tokio::time::timeout_at(
            deadline,
            backend.pool.send(protocol, backend_path(path, query), req),
        )
        .await;
        match sent {
            Ok(Ok(response)) => {
                backend.connect_succeeded();
                return Ok(Forwarded {
                    response,
                    backend,
                    guard,
                });
            }
            Err(_) => {
                return Err((
                    GatewayError::ScoringTimeout(svc.config.scoring_timeout),
                    Some(backend),
                ));
            }
            Ok(Err(e)) => {
                if e.is_connect() {
                    backend.connect_failed();
                } else {
                    backend.connect_succeeded();
                }
                if has_source::<LengthLimitError>(&e) {
                    return Err((
                        GatewayError::PayloadTooLarge {
                            limit: svc.config.max_body,
                        },
                        Some(backend),
                    ));
                }
                // Retry once, elsewhere, only if nothing was sent and the body is still ours.
                if e.is_connect() && tried.is_none() && ReclaimableBody::available(&slot) {
                    tracing::warn!(backend = %backend.url, error = %e, "cannot connect to backend, trying another");
                    drop(guard);
                    tried = Some(backend);
                    continue;
                }
                tracing::warn!(backend = %backend.url, error = %DisplayChain(&e), "backend request failed");
                return Err((
                    GatewayError::BackendUnavailable(DisplayChain(&e).to_string()),
                    Some(backend),
                ));
            }
        }
    }
}

/// The error for a request that got no slot.
fn refused(r: Refusal, retried: bool) -> GatewayError {
    match r {
        Refusal::NoBackend if retried => GatewayError::BackendUnavailable(
            "connection failed and no other backend is available".into(),
        ),
        Refusal::NoBackend => GatewayError::BackendUnavailable("no healthy backend".into()),
        Refusal::QueueFull => {
            GatewayError::Overloaded("every backend is busy and the wait queue is full")
        }
        Refusal::WaitExpired => {
            GatewayError::Overloaded("every backend stayed busy for max_request_wait_time")
        }
    }
}

fn has_source<E: StdError + 'static>(e: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<E>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Formats an error with its sources (`a: b: c`), for logs.
pub struct DisplayChain<'a>(pub &'a (dyn StdError + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

/// A request body that can be taken back if the client never polled it: the body sits in a
/// shared slot until the first poll, so after a failed connect (nothing sent) the same body can
/// go to another backend.
pub struct ReclaimableBody {
    slot: Arc<Mutex<Option<Limited<Incoming>>>>,
    body: Option<Limited<Incoming>>,
    hint: SizeHint,
    end: bool,
}

impl ReclaimableBody {
    fn new(body: Limited<Incoming>) -> Self {
        let hint = body.size_hint();
        let end = body.is_end_stream();
        ReclaimableBody {
            slot: Arc::new(Mutex::new(Some(body))),
            body: None,
            hint,
            end,
        }
    }

    fn available(slot: &Arc<Mutex<Option<Limited<Incoming>>>>) -> bool {
        slot.lock().unwrap().is_some()
    }

    fn reclaim(slot: &Arc<Mutex<Option<Limited<Incoming>>>>) -> Self {
        let body = slot.lock().unwrap().take();
        let (hint, end) = body
            .as_ref()
            .map(|b| (b.size_hint(), b.is_end_stream()))
            .unwrap_or_default();
        ReclaimableBody {
            slot: Arc::new(Mutex::new(body)),
            body: None,
            hint,
            end,
        }
    }
}

impl Body for ReclaimableBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.body.is_none() {
            let taken = self.slot.lock().unwrap().take();
            match taken {
                Some(b) => self.body = Some(b),
                None => return Poll::Ready(None),
            }
        }
        Pin::new(self.body.as_mut().unwrap()).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(b) => b.is_end_stream(),
            None => self.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}

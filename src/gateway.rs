//! One scoring request, top to bottom:
//!
//! ```text
//! route (404/405) → policy (403) → authenticate (401) → admit (413, 503)
//!   → forward (502/504) → respond → observe (metrics + access log, always)
//! ```
//!
//! (Listener allow/deny and TLS happen before, in `server`.) Every refusal is a `GatewayError`;
//! `error` turns it into the contract's JSON. A request refused before its body was read does not
//! leave that body on an HTTP/1.1 connection: it is drained (small, bounded) or the connection is
//! closed after the answer. On HTTP/2 the answer is sent and the stream reset with NO_ERROR.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Incoming};

use crate::auth::AuthOutcome;
use crate::error::GatewayError;
use crate::proxy::headers::{self, ForwardedFor, X_MS_CLIENT_REQUEST_ID};
use crate::proxy::pool::PooledBody;
use crate::proxy::{self, upstream::InFlight};
use crate::route::{self, Endpoint};
use crate::state::{Gateway, Service, Snapshot};

/// What the client gets: the backend's streamed body, or a body the gateway made.
pub type RespBody = Either<PooledBody, Full<Bytes>>;

/// A refused request's body is read and thrown away up to this size so the connection can be
/// reused; anything larger (or of unknown size) closes the connection instead.
const DRAIN_MAX: u64 = 64 * 1024;
/// How long draining may take before the gateway gives up and closes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// On HTTP/2 a refused body is read in the background (the answer is already sent) up to this
/// much, so the stream ends cleanly; flow control bounds what a client sends before that.
const H2_DRAIN_MAX: u64 = 8 * 1024 * 1024;
const H2_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Facts about the client connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client, as far as the gateway can tell (the PROXY header's source behind a trusted
    /// load balancer, else the TCP peer).
    pub client: SocketAddr,
    /// The TCP peer (the load balancer when there is one).
    pub peer: SocketAddr,
}

/// The per-request record the observe phase reads.
struct RequestCtx {
    request_id: HeaderValue,
    client_request_id: Option<HeaderValue>,
    service: Option<Arc<Service>>,
    auth: AuthOutcome,
    backend: Option<Arc<crate::proxy::upstream::Backend>>,
    backend_elapsed: Option<Duration>,
    client_ip: IpAddr,
    /// Declared request body size (`Content-Length`), when known.
    bytes_in: Option<u64>,
}

fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).expect("a UUID is a valid header value")
}

/// hyper's service entry point.
pub async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let started = Instant::now();
    let snap = gw.snapshot();
    let _counted = Counted::new(&gw);
    let (mut parts, body) = req.into_parts();
    let mut ctx = RequestCtx {
        request_id: new_request_id(),
        client_request_id: None,
        service: None,
        auth: AuthOutcome::Unchecked,
        backend: None,
        backend_elapsed: None,
        client_ip: client_ip(&snap, &conn, &parts.headers),
        bytes_in: body.size_hint().exact(),
    };

    let version = parts.version;
    let resp = match admit(&gw, &snap, &parts, &body, &mut ctx) {
        Ok((svc, endpoint)) => {
            let host = authority_header(&parts);
            let fwd = ForwardedFor {
                client_ip: ctx.client_ip,
                // Behind PROXY protocol the proxy works at L4 (it cannot see inside TLS), so
                // forwarded headers on the request came from the client: not believed.
                trusted_peer: !snap.config.listen.proxy_protocol
                    && snap.is_trusted_proxy(conn.peer.ip()),
                host: host.as_ref(),
            };
            headers::rewrite_request(&mut parts.headers, &fwd, &ctx.request_id);
            let sent_at = Instant::now();
            // Boxed, like `refuse_early` below: hyper keeps room for this future on every
            // connection, busy or idle, so its size is idle memory; a box per request is cheaper.
            let forwarded = Box::pin(proxy::forward(&svc, endpoint, parts, body));
            match forwarded.await {
                Ok(f) => {
                    ctx.backend_elapsed = Some(sent_at.elapsed());
                    ctx.backend = Some(f.backend.clone());
                    respond(f.response, f.guard, &ctx)
                }
                Err((err, backend)) => {
                    ctx.backend = backend;
                    let mut r = error_response(&err, &ctx);
                    if version < Version::HTTP_2
                        && matches!(err, GatewayError::PayloadTooLarge { .. })
                    {
                        // The rest of the body is still on the wire: close after answering
                        // (HTTP/1.x only; on HTTP/2 the stream ends and the connection stays).
                        r.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    r
                }
            }
        }
        Err(err) => {
            if let GatewayError::Unauthorized { reason, .. } = &err {
                ctx.auth = AuthOutcome::Failed(*reason);
            }
            let resp = error_response(&err, &ctx);
            let refused = Box::pin(refuse_early(resp, version, &parts.headers, body));
            refused.await
        }
    };

    observe(&gw, &ctx, &resp, started);
    Ok(resp)
}

/// Counts a request as in flight (global cap, gauge) until dropped: also when the client goes
/// away mid-request and hyper drops the request's future, which would otherwise leave a ghost
/// that `max_in_flight` counts forever.
struct Counted<'a>(&'a Gateway);

impl<'a> Counted<'a> {
    fn new(gw: &'a Gateway) -> Self {
        gw.in_flight.fetch_add(1, Ordering::Relaxed);
        gw.metrics.in_flight.inc();
        Counted(gw)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.in_flight.dec();
    }
}

/// The checks before any backend work, in the contract's order.
fn admit(
    gw: &Gateway,
    snap: &Snapshot,
    parts: &http::request::Parts,
    body: &Incoming,
    ctx: &mut RequestCtx,
) -> Result<(Arc<Service>, Endpoint), GatewayError> {
    // A malformed client request id is the client's mistake whatever the path.
    if let Some(v) = parts.headers.get(X_MS_CLIENT_REQUEST_ID) {
        if !headers::valid_client_request_id(v) {
            return Err(GatewayError::BadRequest(
                "x-ms-client-request-id must be 1 to 100 characters of A-Z a-z 0-9 - _ . :",
            ));
        }
        ctx.client_request_id = Some(v.clone());
    }

    // Route: 404 / 405.
    let route = route::parse(parts.uri.path()).ok_or(GatewayError::NotFound)?;
    let svc = snap
        .service(route.service)
        .ok_or_else(|| GatewayError::ServiceNotFound(route.service.to_string()))?
        .clone();
    ctx.service = Some(svc.clone());
    if parts.method != route.endpoint.method() {
        return Err(GatewayError::MethodNotAllowed(route.endpoint));
    }

    // Policy: 403.
    if !svc.policy.admits(ctx.client_ip) {
        return Err(GatewayError::Forbidden);
    }

    // Authenticate: 401.
    ctx.auth = svc.auth.authenticate(&parts.headers)?;

    // Admit: 413 (declared size; streamed bytes are counted in `proxy`), 503 (global cap).
    let limit = svc.config.max_body;
    if body.size_hint().lower() > limit {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    let cap = snap.config.limits.max_in_flight;
    if cap > 0 && gw.in_flight.load(Ordering::Relaxed) > cap {
        return Err(GatewayError::Overloaded("too many requests in flight"));
    }
    Ok((svc, route.endpoint))
}

/// The client's address as policy, logs and forwarded headers should see it: behind a trusted
/// proxy that is the last address it appended to `X-Forwarded-For` (when not using PROXY
/// protocol), else the connection's client address.
fn client_ip(snap: &Snapshot, conn: &ConnInfo, h: &http::HeaderMap) -> IpAddr {
    if !snap.config.listen.proxy_protocol && snap.is_trusted_proxy(conn.peer.ip()) {
        let last = h
            .get_all(headers::X_FORWARDED_FOR)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|s| s.trim().parse::<IpAddr>().ok());
        if let Some(ip) = last {
            return ip;
        }
    }
    crate::state::canonical_ip(conn.client.ip())
}

/// The host the client addressed: `:authority` (HTTP/2, absolute-form) or `Host`.
fn authority_header(parts: &http::request::Parts) -> Option<HeaderValue> {
    match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    }
}

/// The backend's answer, passed through with the response header rules applied.
fn respond(resp: Response<PooledBody>, guard: InFlight, ctx: &RequestCtx) -> Response<RespBody> {
    drop(guard);
    let (mut parts, body) = resp.into_parts();
    headers::rewrite_response(
        &mut parts.headers,
        ctx.request_id.clone(),
        ctx.client_request_id.clone(),
    );
    Response::from_parts(parts, Either::Left(body))
}

/// Answers a request refused before its body was read, without leaving the body behind.
async fn refuse_early(
    mut resp: Response<RespBody>,
    version: Version,
    h: &http::HeaderMap,
    body: Incoming,
) -> Response<RespBody> {
    if body.is_end_stream() {
        return resp;
    }
    if version >= Version::HTTP_2 {
        // Answer now, and keep reading the body in the background: a stream reset while the
        // client is still sending makes clients like curl drop the answer (curl error 92).
        tokio::spawn(discard(body, H2_DRAIN_MAX, H2_DRAIN_TIMEOUT));
    } else if !drain(h, body).await {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Reads and throws away up to `max` bytes of a body within `timeout`. True if it ended.
async fn discard(mut body: Incoming, max: u64, timeout: Duration) -> bool {
    let read_all = async {
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    seen += f.data_ref().map_or(0, |d| d.len() as u64);
                    if seen > max {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    };
    tokio::time::timeout(timeout, read_all)
        .await
        .unwrap_or(false)
}

/// Reads and discards a small request body so the connection stays usable. False when the body
/// is too large, of unknown size, awaits `100-continue`, or does not arrive in time.
async fn drain(h: &http::HeaderMap, body: Incoming) -> bool {
    let expects_continue = h
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let declared = body.size_hint().exact();
    if expects_continue || declared.is_none_or(|n| n > DRAIN_MAX) {
        return false;
    }
    discard(body, DRAIN_MAX, DRAIN_TIMEOUT).await
}

/// A response the gateway makes itself: the contract's JSON error plus the headers every response
/// carries (our `x-ms-request-id`, the client's request id). Backend answers get the same headers
/// from `headers::rewrite_response`.
fn error_response(err: &GatewayError, ctx: &RequestCtx) -> Response<RespBody> {
    let mut resp = err.to_response().map(Either::Right);
    let h = resp.headers_mut();
    h.insert(headers::X_MS_REQUEST_ID, ctx.request_id.clone());
    if let Some(c) = &ctx.client_request_id {
        h.insert(X_MS_CLIENT_REQUEST_ID, c.clone());
    }
    resp
}

/// Metrics and the access log line. Never logs a credential.
fn observe(gw: &Gateway, ctx: &RequestCtx, resp: &Response<RespBody>, started: Instant) {
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    match &ctx.service {
        Some(s) => s.metrics.record(
            status,
            elapsed.as_secs_f64(),
            ctx.backend_elapsed.map(|d| d.as_secs_f64()),
            ctx.auth,
        ),
        None => gw.metrics.unrouted(status),
    }
    if tracing::enabled!(target: "access", tracing::Level::INFO) {
        let bytes_out = match resp.body() {
            Either::Left(b) => b.size_hint().exact(),
            Either::Right(b) => b.size_hint().exact(),
        };
        tracing::info!(
            target: "access",
            request_id = ctx.request_id.to_str().unwrap_or("-"),
            client = %ctx.client_ip,
            service = ctx.service.as_ref().map_or("-", |s| s.config.name.as_str()),
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            backend = ctx.backend.as_ref().map_or("-", |b| b.url.as_str()),
            backend_ms = ctx.backend_elapsed.map(|d| d.as_secs_f64() * 1000.0),
            bytes_in = ctx.bytes_in,
            bytes_out,
            auth = ctx.auth.as_str(),
        );
    }
}

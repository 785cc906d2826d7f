//! One scoring request, top to bottom. The phases, as `handle` runs them:
//!
//! ```text
//! (server: accept → TLS → HTTP/1.1 or HTTP/2)
//!   → syntax (400) → route (404/405) → policy (403) → authenticate (401)
//!   → deploy (404: which deployment) → limit (429)
//!   → admit (413 declared size, 503 global cap) → forward (502/503/504; 413 streamed)
//!   → respond → observe (metrics + access log, when the response ends or the client goes)
//! ```
//!
//! Each phase is a small function below or in its own module (`deploy` chooses the deployment,
//! `record` is the observe phase, `respond` the respond phase). Every refusal is a `GatewayError`; `error` turns it into the
//! contract's JSON, and `respond::refusal` decides what happens to the request body still on
//! the wire.

pub mod access_log;
pub mod deploy;
pub mod record;
pub mod respond;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};
use tokio::time::Instant;

use crate::auth::AuthOutcome;
use crate::client::{ClientIdentity, ConnIdentity};
use crate::error::{GatewayError, Overload};
use crate::metrics::Code;
use crate::mirror::Tee;
use crate::proxy::body::Leftover;
use crate::proxy::headers::{self, AZUREML_MODEL_DEPLOYMENT, ForwardedFor, X_MS_CLIENT_REQUEST_ID};
use crate::proxy::pool::PooledBody;
use crate::proxy::{self, Target};
use crate::route::{self, Endpoint};
use crate::state::{Service, Shared, Snapshot};
use deploy::Chosen;
use record::{Observed, Record};
use respond::Refused;

/// What the client gets: the backend's streamed body, or a body the gateway made, observed.
pub type RespBody = Observed<Either<Tee<PooledBody>, Full<Bytes>>>;

/// hyper's service entry point.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnIdentity>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let snap = shared.snapshot();
    let (mut parts, body) = req.into_parts();
    let client = conn.for_request(&parts.headers);
    let mut rec = Record::start(&shared, &parts, client.ip, body.size_hint().exact());
    let version = parts.version;
    let head = Head::scan(&parts.headers);
    let expects_continue = head
        .expect
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let refuse = |error, body| Refused {
        error,
        body,
        version,
        expects_continue,
    };

    let checked = check(&shared, &snap, &client, &parts, &head, &body, &mut rec).await;
    let (resp, code) = match checked {
        Err(error) => {
            let code = Code::Error(error.code_index());
            // Boxed: hyper keeps room for this future on every connection, busy or idle.
            let r = Box::pin(respond::refusal(
                refuse(error, Leftover::Unread(body)),
                &rec,
            ));
            (r.await, code)
        }
        Ok((svc, target, chosen)) => {
            let dep = &svc.deployments[chosen.index];
            forwarded_headers(&mut parts, &conn, &rec.request_id);
            parts
                .headers
                .insert(AZUREML_MODEL_DEPLOYMENT, dep.header.clone());
            // Mirror: drawn for an unpinned score request; the copy's headers are taken now.
            let mirror = deploy::mirror_draw(&svc, chosen, target, &parts);
            let sent_at = Instant::now();
            let forwarded = Box::pin(proxy::forward(
                &dep.upstream,
                &dep.forward,
                target,
                parts,
                body,
                &mut rec.backend,
                mirror.as_ref().map(deploy::MirrorPlan::max_body),
            ));
            match forwarded.await {
                Ok(f) => {
                    let took = sent_at.elapsed();
                    rec.backend_elapsed = Some(took);
                    rec.slot = Some(f.slot);
                    let response = match mirror {
                        Some(m) => {
                            rec.mirrored = true;
                            m.submit(f.response, f.request_copy, took, &rec.request_id)
                        }
                        None => f.response.map(Tee::plain),
                    };
                    (respond::backend(response, &rec), Code::Backend)
                }
                Err(f) => {
                    let code = Code::Error(f.error.code_index());
                    let r = Box::pin(respond::refusal(refuse(f.error, f.body), &rec));
                    (r.await, code)
                }
            }
        }
    };
    Ok(rec.attach(resp, code))
}

/// The phases before any backend work, in the contract's order. Only the limit phase of a
/// service whose limits are shared through the store ever waits.
async fn check(
    shared: &Shared,
    snap: &Snapshot,
    client: &ClientIdentity,
    parts: &http::request::Parts,
    head: &Head<'_>,
    body: &Incoming,
    rec: &mut Record,
) -> Result<(Arc<Service>, Target, Chosen), GatewayError> {
    syntax(parts.version, head, rec)?;
    let (svc, target) = route(snap, parts, rec)?;
    policy(&svc, client)?;
    authenticate(&svc, &parts.headers, rec)?;
    let chosen = deploy::choose(&svc, head.pin, rec)?;
    limit(&svc, client, rec).await?;
    admit(shared, snap, &svc, body)?;
    Ok((svc, target, chosen))
}

/// What the phases read from the request's headers, found in one pass over them: a lookup by
/// name hashes the name, where a pass only compares names (an enum tag for standard ones).
/// Single-valued headers keep their first value, as `HeaderMap::get` would.
#[derive(Default)]
struct Head<'a> {
    hosts: usize,
    transfer_encodings: usize,
    transfer_encoding: Option<&'a HeaderValue>,
    client_request_id: Option<&'a HeaderValue>,
    pins: usize,
    /// `azureml-model-deployment`: the deployment the request pins.
    pin: Option<&'a HeaderValue>,
    expect: Option<&'a HeaderValue>,
}

impl<'a> Head<'a> {
    fn scan(h: &'a http::HeaderMap) -> Head<'a> {
        let mut head = Head::default();
        for (name, value) in h {
            if name == header::HOST {
                head.hosts += 1;
            } else if name == header::TRANSFER_ENCODING {
                head.transfer_encodings += 1;
                head.transfer_encoding.get_or_insert(value);
            } else if name == X_MS_CLIENT_REQUEST_ID {
                head.client_request_id.get_or_insert(value);
            } else if name == AZUREML_MODEL_DEPLOYMENT {
                head.pins += 1;
                head.pin.get_or_insert(value);
            } else if name == header::EXPECT {
                head.expect.get_or_insert(value);
            }
        }
        head
    }
}

/// Syntax (400): what makes a request malformed whatever its path — the framing headers hyper
/// accepts but a gateway must not pass on (RFC 9112 §3.2, §6.1), and a bad client request id.
fn syntax(version: http::Version, head: &Head<'_>, rec: &mut Record) -> Result<(), GatewayError> {
    if head.hosts > 1 || (head.hosts == 0 && version == http::Version::HTTP_11) {
        return Err(GatewayError::BadRequest(
            "an HTTP/1.1 request needs exactly one Host header",
        ));
    }
    if let Some(v) = head.transfer_encoding
        && (head.transfer_encodings > 1
            || !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
    {
        return Err(GatewayError::BadRequest(
            "Transfer-Encoding must be exactly \"chunked\"",
        ));
    }
    if let Some(v) = head.client_request_id {
        if !headers::valid_client_request_id(v) {
            return Err(GatewayError::BadRequest(
                "x-ms-client-request-id must be 1 to 100 characters of A-Z a-z 0-9 - _ . :",
            ));
        }
        // Echoed on the response; unique per request as a rule, so kept out of HTTP/2's
        // header table (see `record::new_request_id`).
        let mut v = v.clone();
        v.set_sensitive(true);
        rec.client_request_id = Some(v);
    }
    if let Some(v) = head.pin
        && (head.pins > 1 || v.is_empty())
    {
        return Err(GatewayError::BadRequest(
            "azureml-model-deployment must name one deployment, once",
        ));
    }
    Ok(())
}

/// Route (404/405): the scoring path shapes, the service, the method.
fn route(
    snap: &Snapshot,
    parts: &http::request::Parts,
    rec: &mut Record,
) -> Result<(Arc<Service>, Target), GatewayError> {
    let route = route::parse(parts.uri.path()).ok_or(GatewayError::NotFound)?;
    let svc = snap
        .service(route.service)
        .ok_or_else(|| GatewayError::ServiceNotFound(route.service.to_string()))?
        .clone();
    rec.service = Some(svc.clone());
    if parts.method != route.endpoint.method() {
        return Err(GatewayError::MethodNotAllowed(route.endpoint));
    }
    let target = match route.endpoint {
        Endpoint::Score => Target::Score,
        Endpoint::Swagger => Target::Swagger,
    };
    Ok((svc, target))
}

/// Policy (403): the service's client allow/deny lists.
fn policy(svc: &Service, client: &ClientIdentity) -> Result<(), GatewayError> {
    if svc.policy.admits(client.ip) {
        Ok(())
    } else {
        Err(GatewayError::Forbidden)
    }
}

/// Authenticate (401): the credential against the service's auth mode.
fn authenticate(svc: &Service, h: &http::HeaderMap, rec: &mut Record) -> Result<(), GatewayError> {
    match svc.auth.authenticate(h) {
        Ok(outcome) => {
            rec.auth = outcome;
            Ok(())
        }
        Err(e) => {
            if let GatewayError::Unauthorized { reason, .. } = &e {
                rec.auth = AuthOutcome::Failed(*reason);
            }
            Err(e)
        }
    }
}

/// Limit (429): one token from every rate-limit policy of the service, or none (`limit`). From
/// here on every answer carries the `RateLimit` headers the decision chose (`respond`). With a
/// shared store the decision is one store script (boxed: only those requests pay for the
/// room), bounded by `rate_limit_timeout` and decided locally past it.
async fn limit(
    svc: &Service,
    client: &ClientIdentity,
    rec: &mut Record,
) -> Result<(), GatewayError> {
    if svc.limits.is_empty() {
        return Ok(());
    }
    let decided = if svc.limits.is_shared() {
        Box::pin(svc.limits.check_shared(client.ip, rec.auth)).await
    } else {
        svc.limits.check(client.ip, rec.auth)
    };
    match decided {
        Ok(shown) => {
            rec.rate_limit = shown;
            Ok(())
        }
        Err(refusal) => {
            rec.rate_limit = Some(refusal.shown);
            rec.rate_limited_by = Some(refusal.shown.policy);
            Err(GatewayError::TooManyRequests {
                retry_after: u32::try_from(refusal.retry_after).unwrap_or(u32::MAX),
                policy: refusal.policy,
            })
        }
    }
}

/// Admit (413, 503): the declared body size (streamed bytes are counted while forwarding) and
/// the global in-flight cap.
fn admit(
    shared: &Shared,
    snap: &Snapshot,
    svc: &Service,
    body: &Incoming,
) -> Result<(), GatewayError> {
    let limit = svc.config.max_body;
    if body.size_hint().lower() > limit {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    let cap = snap.config.limits.max_in_flight;
    if cap > 0 && shared.in_flight.load(Ordering::Relaxed) > cap {
        return Err(GatewayError::Overloaded(Overload::InFlightCap));
    }
    Ok(())
}

/// The request headers the backend sees (contract §1): hop-by-hop headers and the credential
/// gone, forwarded headers set from the client's identity, our request id added.
fn forwarded_headers(
    parts: &mut http::request::Parts,
    conn: &ConnIdentity,
    request_id: &HeaderValue,
) {
    // HTTP/2's `:authority`; on HTTP/1.1 the rewrite takes the `Host` it removes.
    let host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let fwd = ForwardedFor {
        hop: conn.forwarded_for(),
        trusted_peer: conn.http_proxy,
        host: host.as_ref(),
    };
    headers::rewrite_request(&mut parts.headers, &fwd, request_id);
}

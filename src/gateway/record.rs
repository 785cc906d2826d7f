//! The observe phase: one record per request, kept in a guard that records the request exactly
//! once — when its response body has ended, when that body fails, or when the record is dropped
//! because the client went away (mid-wait, mid-forward, mid-body, or while the gateway drains).
//!
//! The record travels with the request: it is made before the first check, filled in by each
//! phase (service, auth outcome, backend, timings), and moved into the response body
//! (`Observed`) when the head is ready. It also holds the request's place in the global
//! in-flight count and, for a forwarded request, its backend concurrency slot, so both are
//! released exactly when the response ends, never earlier.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Response};
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::access_log::AccessLine;
use crate::auth::AuthOutcome;
use crate::limit::Shown;
use crate::metrics::{Code, Outcome};
use crate::proxy::upstream::{Backend, InFlight};
use crate::state::{Service, Shared};

/// The access log keeps this much of a request's path (the query is never logged: it may carry
/// anything).
pub const LOGGED_PATH_MAX: usize = 256;
/// The status logged for a request whose client left before the response ended (nginx's 499).
pub const CLIENT_GONE_STATUS: u16 = 499;

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The whole body was handed to the connection.
    Complete,
    /// The body failed after the head was sent (the backend broke it).
    BodyError,
    /// The client went away first.
    ClientGone,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Complete => "complete",
            End::BodyError => "body_error",
            End::ClientGone => "client_gone",
        }
    }
}

/// Everything the observe phase reports about one request.
pub struct Record {
    shared: Arc<Shared>,
    started: Instant,
    pub request_id: HeaderValue,
    pub client_request_id: Option<HeaderValue>,
    method: Method,
    path: String,
    pub client: IpAddr,
    pub service: Option<Arc<Service>>,
    /// Index of the chosen deployment in the service's metrics (0: none chosen yet).
    pub deployment: usize,
    pub auth: AuthOutcome,
    /// What the `RateLimit` headers show (set by the limit phase; `None`: not reached, or no
    /// policy to show).
    pub rate_limit: Option<Shown>,
    /// The policy that refused the request (index in the service's policies).
    pub rate_limited_by: Option<usize>,
    pub backend: Option<Arc<Backend>>,
    pub backend_elapsed: Option<Duration>,
    /// A copy of the request went to the mirror deployment.
    pub mirrored: bool,
    /// The backend slot, held until the response ends.
    pub slot: Option<InFlight>,
    /// Declared request body size (`Content-Length`), when known.
    pub bytes_in: Option<u64>,
    bytes_out: u64,
    /// Set when the response head is ready.
    status: Option<u16>,
    code: Code,
    head_elapsed: Option<Duration>,
    end: Option<End>,
}

/// A new request id. Marked sensitive, which only HTTP/2's HPACK reads: a value that is never
/// sent twice is written as a literal that is never indexed, instead of being looked up in and
/// added to the connection's header table, where it would push out entries that do repeat.
fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    let mut v = HeaderValue::from_str(s).expect("a UUID is a valid header value");
    v.set_sensitive(true);
    v
}

impl Record {
    /// Puts the rate-limit headers the limit phase chose on a response of this request.
    pub fn rate_limit_headers(&self, h: &mut http::HeaderMap) {
        if let (Some(shown), Some(svc)) = (self.rate_limit, &self.service) {
            svc.limits.write_headers(shown, h);
        }
    }

    /// Names the chosen deployment on a response of this request (contract §8: every response
    /// after the choice).
    pub fn deployment_header(&self, h: &mut http::HeaderMap) {
        if let Some(d) = self.chosen_deployment() {
            h.insert(
                crate::proxy::headers::AZUREML_MODEL_DEPLOYMENT,
                d.header.clone(),
            );
        }
    }

    /// The chosen deployment, once the deploy phase has run.
    pub fn chosen_deployment(&self) -> Option<&crate::state::Deployment> {
        let i = self.deployment.checked_sub(1)?;
        self.service.as_ref()?.deployments.get(i)
    }

    /// Starts the record of a request (and counts it in flight).
    pub fn start(
        shared: &Arc<Shared>,
        parts: &http::request::Parts,
        client: IpAddr,
        bytes_in: Option<u64>,
    ) -> Box<Record> {
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        shared.metrics.in_flight.inc();
        let path = if tracing::enabled!(target: "access", tracing::Level::INFO) {
            let p = parts.uri.path();
            let cut = p.floor_char_boundary(LOGGED_PATH_MAX);
            p[..cut].to_string()
        } else {
            String::new()
        };
        Box::new(Record {
            shared: shared.clone(),
            started: Instant::now(),
            request_id: new_request_id(),
            client_request_id: None,
            method: parts.method.clone(),
            path,
            client,
            service: None,
            deployment: 0,
            auth: AuthOutcome::Unchecked,
            rate_limit: None,
            rate_limited_by: None,
            backend: None,
            backend_elapsed: None,
            mirrored: false,
            slot: None,
            bytes_in,
            bytes_out: 0,
            status: None,
            code: Code::ClientGone,
            head_elapsed: None,
            end: None,
        })
    }

    /// The response head is ready: remember its status and who made it, and move the record
    /// into the body, which finishes it.
    pub fn attach<B: Body<Data = Bytes> + Unpin>(
        mut self: Box<Self>,
        resp: Response<B>,
        code: Code,
    ) -> Response<Observed<B>> {
        self.status = Some(resp.status().as_u16());
        self.code = code;
        self.head_elapsed = Some(self.started.elapsed());
        let (parts, body) = resp.into_parts();
        if body.is_end_stream() {
            // Nothing will poll an empty body: it is complete as soon as the head goes out.
            self.end = Some(End::Complete);
        }
        Response::from_parts(parts, Observed { body, record: self })
    }

    fn finish(&mut self) {
        let end = self.end.unwrap_or(End::ClientGone);
        // A 499 for a client that left before its response head.
        let logged_status = self.status.unwrap_or(CLIENT_GONE_STATUS);
        let code = match end {
            End::Complete => self.code,
            End::BodyError => Code::BodyError,
            End::ClientGone => Code::ClientGone,
        };
        let elapsed = self.started.elapsed();
        match &self.service {
            Some(s) => s.metrics.record(&Outcome {
                status: logged_status,
                code,
                head_s: self.head_elapsed.map(|d| d.as_secs_f64()),
                backend_s: self.backend_elapsed.map(|d| d.as_secs_f64()),
                auth: self.auth,
                deployment: self.deployment,
            }),
            None => self.shared.metrics.unrouted(logged_status, code),
        }
        if tracing::enabled!(target: "access", tracing::Level::INFO) {
            AccessLine {
                request_id: self.request_id.to_str().unwrap_or("-"),
                client: self.client,
                method: self.method.as_str(),
                path: self.path.as_str(),
                service: self
                    .service
                    .as_ref()
                    .map_or("-", |s| s.config.name.as_str()),
                deployment: self.chosen_deployment().map_or("-", |d| d.name.as_str()),
                status: logged_status,
                code: code.as_str(),
                outcome: end.as_str(),
                latency_us: self.head_elapsed.map(|d| d.as_micros() as u64),
                duration_us: elapsed.as_micros() as u64,
                backend: self.backend.as_ref().map_or("-", |b| b.url.as_str()),
                backend_us: self.backend_elapsed.map(|d| d.as_micros() as u64),
                bytes_in: self.bytes_in,
                bytes_out: self.bytes_out,
                auth: self.auth.as_str(),
                rate_limited_by: match (&self.service, self.rate_limited_by) {
                    (Some(s), Some(i)) => s.limits.name(i),
                    _ => "-",
                },
                mirrored: self.mirrored,
            }
            .log();
        }
        self.slot = None;
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.shared.metrics.in_flight.dec();
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A response body that finishes its request's record when it ends, fails, or is dropped.
pub struct Observed<B> {
    body: B,
    /// Boxed from the start (`Record::start`): the response is moved several times on its way
    /// out (into hyper's dispatcher, into its write state) and the request's future is kept on
    /// every connection, so a pointer is cheaper than the record's ~340 bytes at each move.
    record: Box<Record>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Observed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.record.bytes_out += d.len() as u64;
                }
                if this.body.is_end_stream() {
                    this.record.end.get_or_insert(End::Complete);
                }
            }
            Poll::Ready(None) => {
                this.record.end.get_or_insert(End::Complete);
            }
            Poll::Ready(Some(Err(_))) => {
                this.record.end.get_or_insert(End::BodyError);
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request id is new, a hyphenated UUID, and marked sensitive, which the `h2` crate's
    /// encoder writes as a literal that is never indexed (its own test,
    /// `test_sensitive_headers_are_never_indexed`, holds it to that).
    #[test]
    fn request_ids_are_fresh_uuids_kept_out_of_the_http2_header_table() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        for v in [&a, &b] {
            assert!(v.is_sensitive());
            let s = v.to_str().unwrap();
            assert_eq!(
                uuid::Uuid::parse_str(s).unwrap().hyphenated().to_string(),
                s
            );
        }
    }
}

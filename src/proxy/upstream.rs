//! Backends of a service, the pooled clients that reach them, and the choice of backend per
//! request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http_body_util::{Either, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::BackendProtocol;

/// What the gateway sends upstream: the client's body (length-limited), or nothing (probes).
pub type UpstreamBody = Either<super::ReclaimableBody, Empty<Bytes>>;
pub type HttpClient = Client<HttpConnector, UpstreamBody>;

/// Connecting to a backend on the same network takes well under a second; a SYN that gets no
/// answer in 5 s means the backend is gone, and the request can go elsewhere.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections are closed after this: under azmlinfsrv/gunicorn's keep-alive
/// default would be 2 s, but it closes every connection anyway; other servers keep them longer.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per backend: enough for a burst of 256 concurrent requests to reuse.
const POOL_MAX_IDLE_PER_HOST: usize = 256;

/// The two pooled clients of the process (one per backend protocol). Pools are keyed by backend
/// address, so they carry over reloads untouched.
pub struct Clients {
    http1: HttpClient,
    h2c: HttpClient,
}

impl Clients {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.enforce_http(true);
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let http1 = b.build(connector.clone());
        b.http2_only(true);
        let h2c = b.build(connector);
        Clients { http1, h2c }
    }

    pub fn get(&self, p: BackendProtocol) -> &HttpClient {
        match p {
            BackendProtocol::Http1 => &self.http1,
            BackendProtocol::H2c => &self.h2c,
        }
    }
}

impl Default for Clients {
    fn default() -> Self {
        Self::new()
    }
}

/// One backend (model replica) and its runtime state.
#[derive(Debug)]
pub struct Backend {
    /// `http://host:port`, as configured (label in logs and metrics).
    pub url: String,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Requests sent and not yet answered.
    pub in_flight: AtomicUsize,
    pub healthy: AtomicBool,
}

impl Backend {
    pub fn new(uri: &http::Uri) -> Self {
        Backend {
            url: format!(
                "{}://{}",
                uri.scheme_str().unwrap_or("http"),
                uri.authority().unwrap()
            ),
            scheme: uri.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority: uri
                .authority()
                .cloned()
                .expect("validated backend URL has a host"),
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
        }
    }
}

/// The backends of one service and the round-robin cursor over them.
pub struct Upstream {
    pub backends: Vec<Arc<Backend>>,
    pub protocol: BackendProtocol,
    cursor: AtomicUsize,
}

impl Upstream {
    pub fn new(backends: Vec<Arc<Backend>>, protocol: BackendProtocol) -> Self {
        Upstream {
            backends,
            protocol,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Round robin over healthy backends; `skip` excludes one (the one a connect just failed on).
    pub fn pick(&self, skip: Option<&Arc<Backend>>) -> Option<&Arc<Backend>> {
        let n = self.backends.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.backends[(start + i) % n])
            .find(|b| b.healthy.load(Ordering::Relaxed) && skip.is_none_or(|s| !Arc::ptr_eq(s, b)))
    }

    pub fn any_healthy(&self) -> bool {
        self.backends
            .iter()
            .any(|b| b.healthy.load(Ordering::Relaxed))
    }
}

/// Decrements a backend's in-flight count when the request is done, however it ends.
pub struct InFlight(pub Arc<Backend>);

impl InFlight {
    pub fn start(b: &Arc<Backend>) -> Self {
        b.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(b.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

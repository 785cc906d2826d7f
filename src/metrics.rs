//! Prometheus metrics. Every name starts with `scoregate_`; the `service` label only takes
//! configured names. Per-service handles are resolved when a snapshot is built (the request
//! counter's rarer (code, class) pairs on their first use, then kept), so the hot path increments
//! plain atomics and never looks up a label.
//!
//! `scoregate_requests_total{service, deployment, class, code}` counts every request once, when
//! its response has ended or the client has gone: `code` is the gateway's error code when the
//! gateway answered (`BackendUnavailable`, `ScoringTimeout`, ...), `backend` when the backend's
//! answer was delivered (whatever its status), `body_error` when the backend's body broke after
//! its head was sent, and `client_gone` when the client left before the response ended (with the
//! status of the head when one was sent, else 499, as nginx logs it). So a model's own 500 (`code="backend"`)
//! and a 502 the gateway made (`code="BackendUnavailable"`) are told apart.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use std::sync::OnceLock;

use crate::auth::AuthOutcome;
use crate::auth::keys::KeySlot;
use crate::error::AuthFailure;
pub use crate::store::metrics::StoreMetrics;

/// Latency buckets (seconds): scoring calls span ~1 ms (tiny models) to a minute (the timeout).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// `scoregate_tls_handshake_failures_total{reason}`: a TLS alert or garbage (`protocol`), the
/// peer going away (`io`), or `limits.tls_handshake_timeout` (`timeout`).
pub const TLS_FAILURE_REASONS: [&str; 3] = ["protocol", "io", "timeout"];
/// `scoregate_connections_refused_total{reason}`: listener allow/deny, `limits.max_connections`,
/// a missing or malformed PROXY header from a trusted proxy.
pub const REFUSAL_REASONS: [&str; 4] = [
    "policy",
    "max_connections",
    "max_connections_per_client",
    "proxy_protocol",
];
/// `scoregate_connections_closed_total{reason}`: an HTTP/2 client that cancelled most of its
/// accepted streams (`cancelled_streams`), an idle connection closed because the connection cap
/// was near (`pressure`).
pub const CLOSE_REASONS: [&str; 2] = ["cancelled_streams", "pressure"];
/// `scoregate_connection_timeouts_total{reason}`: `limits.header_read_timeout` (a request head,
/// or the first one after TLS, too slow), `limits.idle_timeout` (keep-alive without requests),
/// `send` (a client that stopped reading its response for `limits.idle_timeout`).
pub const TIMEOUT_REASONS: [&str; 3] = ["header_read", "idle", "send"];

/// `scoregate_mirror_requests_total{result}` (contract §8), in `MirrorResult` order.
pub const MIRROR_RESULTS: [&str; 8] = [
    "same",
    "different_status",
    "different_body",
    "error",
    "skipped_busy",
    "skipped_too_large",
    "skipped_live_failed",
    "unchecked_too_large",
];
/// `scoregate_mirror_latency_ratio` buckets: mirror ÷ live time to the response head.
const MIRROR_RATIO_BUCKETS: &[f64] = &[0.25, 0.5, 0.8, 1.0, 1.25, 2.0, 4.0, 8.0];

/// What became of one mirrored copy (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorResult {
    Same,
    DifferentStatus,
    DifferentBody,
    /// No answer: connect failure, timeout, a broken exchange.
    Error,
    /// No place for it (mirror_max_in_flight and mirror_queue full, or no free slot).
    SkippedBusy,
    /// The request body was over `mirror_max_body`.
    SkippedTooLarge,
    /// The live forward failed (or its client left): nothing to compare with.
    SkippedLiveFailed,
    /// Equal statuses, a response body over `mirror_max_body`.
    UncheckedTooLarge,
}

/// Handles for one mirror deployment, resolved when a snapshot is built.
#[derive(Clone)]
pub struct MirrorMetrics {
    results: [IntCounter; 8],
    pub latency_ratio: Histogram,
}

impl MirrorMetrics {
    pub fn count(&self, r: MirrorResult) {
        self.results[r as usize].inc();
    }

    /// Copies counted under `r` so far.
    #[cfg(test)]
    pub fn counted(&self, r: MirrorResult) -> u64 {
        self.results[r as usize].get()
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const AUTH_REASONS: [AuthFailure; 6] = AuthFailure::ALL;

/// How a request ended, for the `code` label: who answered, or what went wrong after the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The backend's answer was delivered, whatever its status.
    Backend,
    /// The client went away before the response ended.
    ClientGone,
    /// The backend's body failed after its head was sent.
    BodyError,
    /// The gateway answered with the error code at this index of `error::CODES`.
    Error(usize),
}

/// `code` label values, in slot order: the three outcomes, then every error code.
fn code_labels() -> impl Iterator<Item = &'static str> {
    ["backend", "client_gone", "body_error"]
        .into_iter()
        .chain(crate::error::CODES)
}

const N_CODES: usize = 3 + crate::error::CODES.len();

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Backend => "backend",
            Code::ClientGone => "client_gone",
            Code::BodyError => "body_error",
            Code::Error(i) => crate::error::CODES[i],
        }
    }

    fn slot(self) -> usize {
        match self {
            Code::Backend => 0,
            Code::ClientGone => 1,
            Code::BodyError => 2,
            Code::Error(i) => 3 + i,
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    backend_duration: HistogramVec,
    auth_failures: IntCounterVec,
    key_used: IntCounterVec,
    unrouted: IntCounterVec,
    pub in_flight: IntGauge,
    pub connections: IntGauge,
    pub connections_parked: IntGauge,
    pub tls_handshakes: IntCounter,
    pub tls_handshake_failures: IntCounterVec,
    pub connections_refused: IntCounterVec,
    pub connection_timeouts: IntCounterVec,
    pub connections_closed: IntCounterVec,
    pub requests_cancelled: IntCounter,
    pub cert_expiry: prometheus::GaugeVec,
    mirror_requests: IntCounterVec,
    mirror_latency_ratio: HistogramVec,
    pub store: StoreMetrics,
    pub reloads: IntCounterVec,
}

fn class_index(status: u16) -> usize {
    ((status / 100).clamp(1, 5) - 1) as usize
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "scoregate_requests_total",
                "Scoring requests by service, deployment, status class and code (the gateway's error code, or backend, client_gone, body_error)",
            ),
            &["service", "deployment", "class", "code"],
        )
        .unwrap();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "scoregate_request_duration_seconds",
                "Time from request to response headers, by service and deployment",
            )
            .buckets(BUCKETS.to_vec()),
            &["service", "deployment"],
        )
        .unwrap();
        let backend_duration = HistogramVec::new(
            HistogramOpts::new(
                "scoregate_backend_duration_seconds",
                "Time the backend took to answer (response headers), by service and deployment",
            )
            .buckets(BUCKETS.to_vec()),
            &["service", "deployment"],
        )
        .unwrap();
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "scoregate_auth_failures_total",
                "Refused credentials by service and reason",
            ),
            &["service", "reason"],
        )
        .unwrap();
        let key_used = IntCounterVec::new(
            Opts::new(
                "scoregate_key_used_total",
                "Authenticated requests by which key they used (see that nobody uses a key before regenerating it)",
            ),
            &["service", "key"],
        )
        .unwrap();
        let unrouted = IntCounterVec::new(
            Opts::new(
                "scoregate_unrouted_requests_total",
                "Requests that matched no configured service (404) or were malformed, by status class and code",
            ),
            &["class", "code"],
        )
        .unwrap();
        let in_flight =
            IntGauge::new("scoregate_requests_in_flight", "Requests being handled").unwrap();
        let connections =
            IntGauge::new("scoregate_connections_open", "Client connections open").unwrap();
        let connections_parked = IntGauge::new(
            "scoregate_connections_parked",
            "Idle HTTP/1.1 connections held without hyper's buffers (idle for over a second)",
        )
        .unwrap();
        let tls_handshakes =
            IntCounter::new("scoregate_tls_handshakes_total", "Completed TLS handshakes").unwrap();
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "scoregate_tls_handshake_failures_total",
                "Failed TLS handshakes by reason",
            ),
            &["reason"],
        )
        .unwrap();
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "scoregate_connections_refused_total",
                "Connections closed at accept, by reason",
            ),
            &["reason"],
        )
        .unwrap();
        let connection_timeouts = IntCounterVec::new(
            Opts::new(
                "scoregate_connection_timeouts_total",
                "Client connections closed by a front-side timeout (header_read, idle, send)",
            ),
            &["reason"],
        )
        .unwrap();
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "scoregate_connections_closed_total",
                "Client connections the gateway closed early: cancelled_streams (an HTTP/2 client that cancels most accepted streams), pressure (idle, near max_connections)",
            ),
            &["reason"],
        )
        .unwrap();
        let requests_cancelled = IntCounter::new(
            "scoregate_requests_cancelled_total",
            "Requests whose client went away (closed the connection or reset the stream) before the response ended",
        )
        .unwrap();
        let mirror_requests = IntCounterVec::new(
            Opts::new(
                "scoregate_mirror_requests_total",
                "Mirrored copies by service, mirror deployment and result (same, different_status, different_body, error, skipped_busy, skipped_too_large, skipped_live_failed, unchecked_too_large)",
            ),
            &["service", "deployment", "result"],
        )
        .unwrap();
        let mirror_latency_ratio = HistogramVec::new(
            HistogramOpts::new(
                "scoregate_mirror_latency_ratio",
                "Mirror time to the response head divided by the live one, per mirrored request",
            )
            .buckets(MIRROR_RATIO_BUCKETS.to_vec()),
            &["service", "deployment"],
        )
        .unwrap();
        let store = StoreMetrics::new();
        let cert_expiry = prometheus::GaugeVec::new(
            Opts::new(
                "scoregate_certificate_expiry_timestamp_seconds",
                "Expiry (notAfter, Unix time) of each served certificate",
            ),
            &["cname"],
        )
        .unwrap();
        let reloads = IntCounterVec::new(
            Opts::new("scoregate_reloads_total", "Reloads by result"),
            &["result"],
        )
        .unwrap();
        let build_info = IntGaugeVec::new(
            Opts::new("scoregate_build_info", "Build information (always 1)"),
            &["version"],
        )
        .unwrap();
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Series that exist from the start, so dashboards and alerts see 0 rather than nothing.
        for r in ["ok", "error"] {
            reloads.with_label_values(&[r]);
        }
        for r in TLS_FAILURE_REASONS {
            tls_handshake_failures.with_label_values(&[r]);
        }
        for r in REFUSAL_REASONS {
            connections_refused.with_label_values(&[r]);
        }
        for r in TIMEOUT_REASONS {
            connection_timeouts.with_label_values(&[r]);
        }
        for r in CLOSE_REASONS {
            connections_closed.with_label_values(&[r]);
        }
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(requests.clone()),
            Box::new(request_duration.clone()),
            Box::new(backend_duration.clone()),
            Box::new(auth_failures.clone()),
            Box::new(key_used.clone()),
            Box::new(unrouted.clone()),
            Box::new(in_flight.clone()),
            Box::new(connections.clone()),
            Box::new(connections_parked.clone()),
            Box::new(tls_handshakes.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(connections_refused.clone()),
            Box::new(connection_timeouts.clone()),
            Box::new(connections_closed.clone()),
            Box::new(requests_cancelled.clone()),
            Box::new(cert_expiry.clone()),
            Box::new(mirror_requests.clone()),
            Box::new(mirror_latency_ratio.clone()),
            Box::new(reloads.clone()),
            Box::new(build_info),
        ];
        for c in collectors.into_iter().chain(store.collectors()) {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            request_duration,
            backend_duration,
            auth_failures,
            key_used,
            unrouted,
            in_flight,
            connections,
            connections_parked,
            tls_handshakes,
            tls_handshake_failures,
            connections_refused,
            connection_timeouts,
            connections_closed,
            requests_cancelled,
            cert_expiry,
            mirror_requests,
            mirror_latency_ratio,
            store,
            reloads,
        }
    }

    /// Resolves every handle one service needs, once, at snapshot build. `deployments` are the
    /// service's deployment names; requests refused before a deployment was chosen count under
    /// deployment `""`.
    pub fn for_service(&self, name: &str, deployments: &[&str]) -> ServiceMetrics {
        let by_deployment = std::iter::once("")
            .chain(deployments.iter().copied())
            .map(|d| DeploymentMetrics {
                service: name.into(),
                deployment: d.into(),
                requests: self.requests.clone(),
                counters: std::array::from_fn(|_| OnceLock::new()),
                backend_2xx: self
                    .requests
                    .with_label_values(&[name, d, "2xx", "backend"]),
                duration: self.request_duration.with_label_values(&[name, d]),
                backend_duration: self.backend_duration.with_label_values(&[name, d]),
            })
            .collect();
        ServiceMetrics {
            by_deployment,
            auth_failures: AUTH_REASONS
                .map(|r| self.auth_failures.with_label_values(&[name, r.as_str()])),
            key_used: [
                self.key_used
                    .with_label_values(&[name, KeySlot::Primary.as_str()]),
                self.key_used
                    .with_label_values(&[name, KeySlot::Secondary.as_str()]),
            ],
        }
    }

    /// The mirror handles of (service, deployment); its result series exist from then on.
    pub fn for_mirror(&self, service: &str, deployment: &str) -> MirrorMetrics {
        MirrorMetrics {
            results: MIRROR_RESULTS.map(|r| {
                self.mirror_requests
                    .with_label_values(&[service, deployment, r])
            }),
            latency_ratio: self
                .mirror_latency_ratio
                .with_label_values(&[service, deployment]),
        }
    }

    /// Drops the series of deployments a kept service no longer has.
    pub fn forget_deployments(&self, name: &str, deployments: &[&str]) {
        for d in deployments {
            for class in CLASSES {
                for code in code_labels() {
                    let _ = self.requests.remove_label_values(&[name, d, class, code]);
                }
            }
            let _ = self.request_duration.remove_label_values(&[name, d]);
            let _ = self.backend_duration.remove_label_values(&[name, d]);
            self.forget_mirror(name, d);
        }
    }

    /// Drops the mirror series of (service, deployment): a copy still running then counts into
    /// a handle no scrape shows.
    fn forget_mirror(&self, service: &str, deployment: &str) {
        for r in MIRROR_RESULTS {
            let _ = self
                .mirror_requests
                .remove_label_values(&[service, deployment, r]);
        }
        let _ = self
            .mirror_latency_ratio
            .remove_label_values(&[service, deployment]);
    }

    /// Drops the series of a service no longer configured (and of its deployments).
    pub fn forget_service(&self, name: &str, deployments: &[&str]) {
        for d in std::iter::once("").chain(deployments.iter().copied()) {
            for class in CLASSES {
                for code in code_labels() {
                    let _ = self.requests.remove_label_values(&[name, d, class, code]);
                }
            }
            let _ = self.request_duration.remove_label_values(&[name, d]);
            let _ = self.backend_duration.remove_label_values(&[name, d]);
            self.forget_mirror(name, d);
        }
        for r in AUTH_REASONS {
            let _ = self.auth_failures.remove_label_values(&[name, r.as_str()]);
        }
        for k in [KeySlot::Primary, KeySlot::Secondary] {
            let _ = self.key_used.remove_label_values(&[name, k.as_str()]);
        }
    }

    /// A request that matched no configured service (404), or was refused before routing.
    pub fn unrouted(&self, status: u16, code: Code) {
        self.unrouted
            .with_label_values(&[CLASSES[class_index(status)], code.as_str()])
            .inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Pre-resolved handles for one service.
pub struct ServiceMetrics {
    /// Index 0: before a deployment was chosen (`deployment=""`); then one per deployment.
    by_deployment: Vec<DeploymentMetrics>,
    auth_failures: [IntCounter; 6],
    key_used: [IntCounter; 2],
}

/// Handles for one (service, deployment).
pub struct DeploymentMetrics {
    service: String,
    deployment: String,
    requests: IntCounterVec,
    /// One per (code, class), resolved on first use.
    counters: [OnceLock<IntCounter>; N_CODES * 5],
    /// The common case, resolved at build.
    backend_2xx: IntCounter,
    duration: Histogram,
    backend_duration: Histogram,
}

impl DeploymentMetrics {
    fn count(&self, status: u16, code: Code) {
        let class = class_index(status);
        if code == Code::Backend && class == 1 {
            self.backend_2xx.inc();
            return;
        }
        self.counters[code.slot() * 5 + class]
            .get_or_init(|| {
                self.requests.with_label_values(&[
                    self.service.as_str(),
                    self.deployment.as_str(),
                    CLASSES[class],
                    code.as_str(),
                ])
            })
            .inc();
    }
}

/// What the observe phase records for one request.
pub struct Outcome {
    pub status: u16,
    pub code: Code,
    /// Time to the response head (`None`: the client left before it).
    pub head_s: Option<f64>,
    pub backend_s: Option<f64>,
    pub auth: AuthOutcome,
    /// Index of the deployment (0: none chosen).
    pub deployment: usize,
}

impl ServiceMetrics {
    /// Records one finished request (the observe phase).
    pub fn record(&self, o: &Outcome) {
        let d = self
            .by_deployment
            .get(o.deployment)
            .unwrap_or(&self.by_deployment[0]);
        d.count(o.status, o.code);
        if let Some(h) = o.head_s {
            d.duration.observe(h);
        }
        if let Some(b) = o.backend_s {
            d.backend_duration.observe(b);
        }
        match o.auth {
            AuthOutcome::Failed(f) => {
                let i = AUTH_REASONS.iter().position(|r| *r == f).unwrap_or(0);
                self.auth_failures[i].inc();
            }
            AuthOutcome::Key(KeySlot::Primary) => self.key_used[0].inc(),
            AuthOutcome::Key(KeySlot::Secondary) => self.key_used[1].inc(),
            _ => {}
        }
    }
}

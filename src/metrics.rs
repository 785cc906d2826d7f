//! Prometheus metrics. Every name starts with `scoregate_`; the `service` label only takes
//! configured names. Per-service handles are resolved when a snapshot is built, so the hot path
//! increments plain atomics and never looks up a label.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::auth::AuthOutcome;
use crate::auth::keys::KeyType;
use crate::error::AuthFailure;

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
pub const REFUSAL_REASONS: [&str; 3] = ["policy", "max_connections", "proxy_protocol"];
/// `scoregate_connection_timeouts_total{reason}`: `limits.header_read_timeout` (a request head,
/// or the first one after TLS, too slow), `limits.idle_timeout` (keep-alive without requests),
/// `send` (a client that stopped reading its response for `limits.idle_timeout`).
pub const TIMEOUT_REASONS: [&str; 3] = ["header_read", "idle", "send"];

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const AUTH_REASONS: [AuthFailure; 6] = [
    AuthFailure::Missing,
    AuthFailure::Malformed,
    AuthFailure::WrongKey,
    AuthFailure::InvalidToken,
    AuthFailure::ExpiredToken,
    AuthFailure::WrongMode,
];

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
    pub tls_handshakes: IntCounter,
    pub tls_handshake_failures: IntCounterVec,
    pub connections_refused: IntCounterVec,
    pub connection_timeouts: IntCounterVec,
    pub cert_expiry: prometheus::GaugeVec,
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
                "Scoring requests by service and status class",
            ),
            &["service", "class"],
        )
        .unwrap();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "scoregate_request_duration_seconds",
                "Time from request to response headers, by service",
            )
            .buckets(BUCKETS.to_vec()),
            &["service"],
        )
        .unwrap();
        let backend_duration = HistogramVec::new(
            HistogramOpts::new(
                "scoregate_backend_duration_seconds",
                "Time the backend took to answer (response headers), by service",
            )
            .buckets(BUCKETS.to_vec()),
            &["service"],
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
                "Requests that matched no configured service (404) or were malformed, by status class",
            ),
            &["class"],
        )
        .unwrap();
        let in_flight =
            IntGauge::new("scoregate_requests_in_flight", "Requests being handled").unwrap();
        let connections =
            IntGauge::new("scoregate_connections_open", "Client connections open").unwrap();
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
                "Client connections closed by a front-side timeout (header_read, idle)",
            ),
            &["reason"],
        )
        .unwrap();
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
        for c in &CLASSES {
            unrouted.with_label_values(&[c]);
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
            Box::new(tls_handshakes.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(connections_refused.clone()),
            Box::new(connection_timeouts.clone()),
            Box::new(cert_expiry.clone()),
            Box::new(reloads.clone()),
            Box::new(build_info),
        ];
        for c in collectors {
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
            tls_handshakes,
            tls_handshake_failures,
            connections_refused,
            connection_timeouts,
            cert_expiry,
            reloads,
        }
    }

    /// Resolves every handle one service needs, once, at snapshot build.
    pub fn for_service(&self, name: &str) -> ServiceMetrics {
        ServiceMetrics {
            requests: CLASSES.map(|c| self.requests.with_label_values(&[name, c])),
            duration: self.request_duration.with_label_values(&[name]),
            backend_duration: self.backend_duration.with_label_values(&[name]),
            auth_failures: AUTH_REASONS
                .map(|r| self.auth_failures.with_label_values(&[name, r.as_str()])),
            key_used: [
                self.key_used
                    .with_label_values(&[name, KeyType::Primary.as_str()]),
                self.key_used
                    .with_label_values(&[name, KeyType::Secondary.as_str()]),
            ],
        }
    }

    /// Drops the series of services no longer configured.
    pub fn forget_service(&self, name: &str) {
        for c in CLASSES {
            let _ = self.requests.remove_label_values(&[name, c]);
        }
        let _ = self.request_duration.remove_label_values(&[name]);
        let _ = self.backend_duration.remove_label_values(&[name]);
        for r in AUTH_REASONS {
            let _ = self.auth_failures.remove_label_values(&[name, r.as_str()]);
        }
        for k in [KeyType::Primary, KeyType::Secondary] {
            let _ = self.key_used.remove_label_values(&[name, k.as_str()]);
        }
    }

    pub fn unrouted(&self, status: u16) {
        self.unrouted
            .with_label_values(&[CLASSES[class_index(status)]])
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
    requests: [IntCounter; 5],
    duration: Histogram,
    backend_duration: Histogram,
    auth_failures: [IntCounter; 6],
    key_used: [IntCounter; 2],
}

impl ServiceMetrics {
    /// Records one finished request (the observe phase).
    pub fn record(&self, status: u16, elapsed_s: f64, backend_s: Option<f64>, auth: AuthOutcome) {
        self.requests[class_index(status)].inc();
        self.duration.observe(elapsed_s);
        if let Some(b) = backend_s {
            self.backend_duration.observe(b);
        }
        match auth {
            AuthOutcome::Failed(f) => {
                let i = AUTH_REASONS.iter().position(|r| *r == f).unwrap_or(0);
                self.auth_failures[i].inc();
            }
            AuthOutcome::Key(KeyType::Primary) => self.key_used[0].inc(),
            AuthOutcome::Key(KeyType::Secondary) => self.key_used[1].inc(),
            _ => {}
        }
    }
}

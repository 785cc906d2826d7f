//! Per-backend metrics, computed when `/metrics` is scraped rather than kept up to date on the
//! request path: `scoregate_backend_up{service, backend}` (1 while the backend gets requests)
//! and `scoregate_backend_requests_total{backend, result}` (exchanges by how they ended, read from
//! the counters each `Backend` keeps). A scrape walks the snapshot in force, so a backend that a
//! reload removed disappears from both at once, and a request pays one relaxed atomic add.

use std::sync::Weak;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use super::Shared;
use crate::proxy::backend::ExchangeResult;

/// Registered in the metrics registry once `Shared` exists; holds it weakly (the registry is
/// part of `Shared`).
pub(super) struct BackendCollector {
    shared: Weak<Shared>,
    up: IntGaugeVec,
    requests: IntCounterVec,
}

impl BackendCollector {
    pub(super) fn new(shared: Weak<Shared>) -> Self {
        BackendCollector {
            shared,
            up: up_vec(),
            requests: requests_vec(),
        }
    }
}

fn up_vec() -> IntGaugeVec {
    IntGaugeVec::new(
        Opts::new(
            "scoregate_backend_up",
            "1 while the backend gets requests (its health check passes and no passive back-off holds it out), else 0",
        ),
        &["service", "backend"],
    )
    .expect("valid metric")
}

fn requests_vec() -> IntCounterVec {
    IntCounterVec::new(
        Opts::new(
            "scoregate_backend_requests_total",
            "Requests sent to a backend, by how the exchange ended: response (a response head, any status), connect_error, timeout (no head within scoring_timeout), error (connected, then broken)",
        ),
        &["backend", "result"],
    )
    .expect("valid metric")
}

impl Collector for BackendCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.up
            .desc()
            .into_iter()
            .chain(self.requests.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(shared) = self.shared.upgrade() else {
            return vec![];
        };
        // Fresh vectors per scrape: only what the snapshot in force names is exposed.
        let up = up_vec();
        let requests = requests_vec();
        let snap = shared.snapshot();
        let mut seen = std::collections::HashSet::new();
        for (name, svc) in &snap.services {
            for b in svc
                .deployments
                .iter()
                .flat_map(|d| d.upstream.backends.iter())
            {
                up.with_label_values(&[name.as_str(), b.url.as_str()])
                    .set(i64::from(b.is_available()));
                if seen.insert(b.url.as_str()) {
                    for r in ExchangeResult::ALL {
                        requests
                            .with_label_values(&[b.url.as_str(), r.as_str()])
                            .inc_by(b.exchanges(r));
                    }
                }
            }
        }
        let mut out = up.collect();
        out.extend(requests.collect());
        out
    }
}

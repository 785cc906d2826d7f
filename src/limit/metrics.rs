//! The rate-limit metrics (contract §7), registered in the gateway's registry. Handles are
//! resolved per policy when a snapshot is built; the hot path only increments them.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub struct LimitMetrics {
    limited: IntCounterVec,
    buckets: IntGaugeVec,
    dropped: IntCounterVec,
    /// `scoregate_rate_limit_degraded`: 1 while deciding locally because the shared store is
    /// out of reach (always 0 with the file store).
    pub degraded: IntGauge,
}

/// One policy's handles.
pub struct PolicyMetrics {
    pub limited: IntCounter,
    pub buckets: IntGauge,
    pub dropped: IntCounter,
}

impl LimitMetrics {
    pub fn new(registry: &Registry) -> LimitMetrics {
        let labels = &["service", "policy"];
        let limited = IntCounterVec::new(
            Opts::new(
                "scoregate_rate_limited_total",
                "Requests refused with 429, by service and the policy named in the answer (the refusing one with the longest wait)",
            ),
            labels,
        )
        .unwrap();
        let buckets = IntGaugeVec::new(
            Opts::new(
                "scoregate_rate_limit_buckets",
                "Rate-limit buckets this replica tracks (full buckets are forgotten), by service and policy",
            ),
            labels,
        )
        .unwrap();
        let dropped = IntCounterVec::new(
            Opts::new(
                "scoregate_rate_limit_buckets_dropped_total",
                "Buckets dropped (closest to full first) because a policy reached 100000 buckets, by service and policy",
            ),
            labels,
        )
        .unwrap();
        let degraded = IntGauge::new(
            "scoregate_rate_limit_degraded",
            "1 while rate limits are decided locally because the shared store is out of reach",
        )
        .unwrap();
        for c in [
            Box::new(limited.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(buckets.clone()),
            Box::new(dropped.clone()),
            Box::new(degraded.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        LimitMetrics {
            limited,
            buckets,
            dropped,
            degraded,
        }
    }

    pub fn for_policy(&self, service: &str, policy: &str) -> PolicyMetrics {
        let l = &[service, policy];
        PolicyMetrics {
            limited: self.limited.with_label_values(l),
            buckets: self.buckets.with_label_values(l),
            dropped: self.dropped.with_label_values(l),
        }
    }

    /// Drops the series of a policy no longer configured.
    pub fn forget(&self, service: &str, policy: &str) {
        let l = &[service, policy];
        let _ = self.limited.remove_label_values(l);
        let _ = self.buckets.remove_label_values(l);
        let _ = self.dropped.remove_label_values(l);
    }
}

//! The shared store's metrics (contract §6). Defined here, so the store needs nothing of
//! `metrics`; `metrics::Metrics` registers them.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

/// `scoregate_store_operations_total{op}`: the store operations counted.
pub const STORE_OPS: [&str; 6] = ["read", "write", "script", "publish", "subscribe", "ping"];

/// The shared store's metrics (contract §6).
#[derive(Clone)]
pub struct StoreMetrics {
    pub up: IntGauge,
    pub last_sync: prometheus::Gauge,
    operations: IntCounterVec,
    pub replicas: IntGauge,
    pub unseal_failures: IntCounter,
}

impl StoreMetrics {
    pub(crate) fn new() -> Self {
        let operations = IntCounterVec::new(
            Opts::new(
                "scoregate_store_operations_total",
                "Shared-store operations by kind (read, write, script, publish, subscribe, ping) and result (ok, error, timeout)",
            ),
            &["op", "result"],
        )
        .unwrap();
        for op in STORE_OPS {
            for r in ["ok", "error", "timeout"] {
                operations.with_label_values(&[op, r]);
            }
        }
        StoreMetrics {
            up: IntGauge::new(
                "scoregate_store_up",
                "1 while the shared store is reachable (always 1 with the file store)",
            )
            .unwrap(),
            last_sync: prometheus::Gauge::new(
                "scoregate_store_last_sync_timestamp_seconds",
                "When this replica last read the whole shared store (Unix time)",
            )
            .unwrap(),
            operations,
            replicas: IntGauge::new(
                "scoregate_store_replicas",
                "Live replicas in the shared store's registry",
            )
            .unwrap(),
            unseal_failures: IntCounter::new(
                "scoregate_store_unseal_failures_total",
                "Store records whose secrets did not unseal (kept as they were, never treated as missing)",
            )
            .unwrap(),
        }
    }

    pub(crate) fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.up.clone()),
            Box::new(self.last_sync.clone()),
            Box::new(self.operations.clone()),
            Box::new(self.replicas.clone()),
            Box::new(self.unseal_failures.clone()),
        ]
    }

    /// Counts one store operation (`op` from `STORE_OPS`; `result` ok, error or timeout).
    pub fn op(&self, op: &str, result: &str) {
        self.operations.with_label_values(&[op, result]).inc();
    }
}

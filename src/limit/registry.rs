//! `Registry`: the process's rate-limit tables by policy, kept across reloads by (service,
//! name, by), the limiter clock's epoch, the fleet limiter once the store is shared, and the
//! sweep that forgets full buckets. `build` gives a new snapshot's services their `ServiceLimits`;
//! `publish` puts them in force.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::fleet::{Fleet, SharedBuckets, SharedPolicy};
use super::gcra::{self, Gcra};
use super::headers::Rendered;
use super::metrics::LimitMetrics;
use super::table::{MAX_BUCKETS, Table};
use super::{Limiter, Policy, SWEEP_EVERY, ServiceLimits};
use crate::config::{RateLimitBy, ServiceConfig};

/// Identifies a policy's table across reloads: (service, name), and what it counts by (a
/// policy whose `by` changed has other keys, so it starts a new table).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PolicyId {
    service: String,
    name: String,
    by: RateLimitBy,
}

type Tables = Arc<Mutex<HashMap<PolicyId, Weak<Table>>>>;

/// The process's rate-limit tables by policy, the limiter clock's epoch and the metrics; in
/// `Shared`. `build` hands each service of a new snapshot its tables (kept ones, or new ones
/// that start full) without changing anything in force; `publish` puts new parameters of kept
/// policies in force and forgets removed policies.
pub struct Registry {
    epoch: Instant,
    tables: Tables,
    next_id: AtomicU64,
    pub metrics: LimitMetrics,
    sweeping: AtomicBool,
    max_buckets: usize,
    /// With a shared store: the fleet limiter every snapshot's services use (`share`).
    fleet: OnceLock<Arc<Fleet>>,
}

/// What `Registry::publish` puts in force for one built snapshot.
#[derive(Default)]
pub struct Pending {
    tables: Vec<(PolicyId, Arc<Table>, Gcra)>,
}

impl Registry {
    pub fn new(registry: &prometheus::Registry) -> Registry {
        Self::with_cap(registry, MAX_BUCKETS)
    }

    /// A registry whose policies hold at most `max_buckets` each (tests of the cap).
    pub fn with_cap(registry: &prometheus::Registry, max_buckets: usize) -> Registry {
        Registry {
            epoch: Instant::now(),
            tables: Tables::default(),
            next_id: AtomicU64::new(1),
            metrics: LimitMetrics::new(registry),
            sweeping: AtomicBool::new(false),
            max_buckets,
            fleet: OnceLock::new(),
        }
    }

    /// Decides through the shared store from now on (`store = "redis"`; called once at start,
    /// before the first snapshot is built), each script call bounded by `timeout`.
    pub fn share(&self, store: Arc<dyn SharedBuckets>, timeout: Duration) {
        let _ = self.fleet.set(Arc::new(Fleet::new(
            store,
            timeout,
            self.metrics.degraded.clone(),
        )));
    }

    /// A service's limits for a new snapshot: kept policies keep their tables (their new
    /// parameters apply at `publish`), new or renamed ones get a new, empty (all full) table.
    pub fn build(&self, sc: &ServiceConfig, pending: &mut Pending) -> ServiceLimits {
        let tables = self.tables.lock().unwrap().clone();
        let mut policies = Vec::with_capacity(sc.rate_limits.len());
        for rl in &sc.rate_limits {
            let gcra = Gcra::new(rl.requests, rl.per.as_secs(), rl.burst);
            let id = PolicyId {
                service: sc.name.clone(),
                name: rl.name.clone(),
                by: rl.by,
            };
            let m = self.metrics.for_policy(&sc.name, &rl.name);
            let table = tables.get(&id).and_then(Weak::upgrade).unwrap_or_else(|| {
                Arc::new(Table::new(
                    self.next_id.fetch_add(1, Ordering::Relaxed),
                    gcra,
                    self.max_buckets,
                    m.buckets,
                    m.dropped,
                ))
            });
            pending.tables.push((id, table.clone(), gcra));
            policies.push(Policy {
                name: rl.name.as_str().into(),
                headers: Rendered::new(
                    &rl.name,
                    rl.requests,
                    rl.per.as_secs(),
                    rl.burst,
                    gcra::ceil_s(gcra.t),
                ),
                limited: m.limited,
                config: rl.clone(),
                table,
            });
        }
        let mut lock_order: Vec<usize> = (0..policies.len()).collect();
        lock_order.sort_by_key(|&i| policies[i].table.id);
        let mut lock_pos = vec![0; policies.len()];
        for (pos, &i) in lock_order.iter().enumerate() {
            lock_pos[i] = pos;
        }
        // A service without policies never touches the store.
        let fleet = self.fleet.get().filter(|_| !policies.is_empty());
        let shared: Vec<SharedPolicy> = fleet.map_or_else(Vec::new, |f| {
            sc.rate_limits
                .iter()
                .map(|rl| {
                    SharedPolicy::new(
                        format!(
                            "{}rl:{}:{}:{}:",
                            f.store.prefix(),
                            sc.name,
                            rl.name,
                            rl.by.as_str()
                        ),
                        rl.requests,
                        rl.per.as_secs(),
                        rl.burst,
                    )
                })
                .collect()
        });
        ServiceLimits {
            epoch: self.epoch,
            limiter: fleet.map_or(Limiter::Local, |f| Limiter::Fleet(f.clone())),
            policies: policies.into(),
            lock_order: lock_order.into(),
            lock_pos: lock_pos.into(),
            shared_params: shared.iter().flat_map(|s| s.params_us()).collect(),
            shared: shared.into(),
        }
    }

    /// Puts a built snapshot's policies in force: new parameters of kept policies (each bucket
    /// converted: `Table::set_params`), the table list the sweep and the next build see, and the
    /// metric series of policies that are gone removed. Starts the sweep on first use.
    pub fn publish(&self, pending: Pending) {
        let now = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64;
        let mut next = HashMap::with_capacity(pending.tables.len());
        for (id, table, gcra) in pending.tables {
            if table.params() != gcra {
                table.set_params(gcra, now);
            }
            next.insert(id, Arc::downgrade(&table));
        }
        let old = std::mem::replace(&mut *self.tables.lock().unwrap(), next.clone());
        for id in old.keys() {
            if !next
                .keys()
                .any(|n| n.service == id.service && n.name == id.name)
            {
                self.metrics.forget(&id.service, &id.name);
            }
        }
        self.start_sweep();
    }

    fn start_sweep(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let tables = Arc::downgrade(&self.tables);
        let epoch = self.epoch;
        rt.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // The registry is gone (its gateway stopped): so is the sweep.
                let Some(tables) = tables.upgrade() else {
                    return;
                };
                let live: Vec<Arc<Table>> = tables
                    .lock()
                    .unwrap()
                    .values()
                    .filter_map(Weak::upgrade)
                    .collect();
                drop(tables);
                let now = Instant::now().saturating_duration_since(epoch).as_nanos() as u64;
                for t in live {
                    t.sweep(now);
                }
            }
        });
    }
}

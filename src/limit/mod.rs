//! Rate limits (contract §7): the `[[service.rate_limit]]` policies of each service, the
//! buckets behind them, and the headers that describe them.
//!
//! - `gcra`: the maths, pure — `decide` takes "now", the policies' parameters and their
//!   buckets and answers admit (one token from every bucket) or refuse (none), with what the
//!   `RateLimit` header shows and the Retry-After.
//! - `table`: one policy's buckets on this replica (sharded, capped at 100 000, full buckets
//!   forgotten), which outlive snapshots.
//! - `headers`: `RateLimit` / `RateLimit-Policy` values, made once and reused.
//! - `metrics`: the four rate-limit metrics.
//!
//! This module: `ServiceLimits`, what a snapshot's service holds (its policies, their tables,
//! the limiter that decides), the key of a request in each policy (`key`), and `Registry`, in
//! `Shared`, which keeps the tables across reloads by (service, name) and sweeps them.
//!
//! **Which limiter decides.** `Limiter` is chosen per snapshot. `Local`: the buckets are this
//! replica's tables, locked in a fixed order for the length of one `decide` (synchronous).
//! `Fleet` (`store = "redis"`, see `fleet`): one store script per request decides for all of the
//! service's policies on the store's clock (`check_shared`, awaited); a script that fails or
//! takes longer than `rate_limit_timeout` is decided on this replica's tables instead, with
//! `by = "service"` policies divided by the live replicas, buckets full at the start of each
//! outage.

pub mod fleet;
pub mod gcra;
pub mod headers;
pub mod metrics;
pub mod table;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use http::HeaderMap;
use prometheus::IntCounter;
use tokio::time::Instant;

use crate::auth::AuthOutcome;
use crate::auth::keys::KeySlot;
use crate::config::{RateLimitBy, RateLimitConfig, ServiceConfig};
use crate::proxy::headers::{RATELIMIT, RATELIMIT_POLICY};
use fleet::{Fleet, SharedBuckets, SharedPolicy};
pub use gcra::{Decision, Gcra, Shown};
use headers::Rendered;
use metrics::LimitMetrics;
use table::{MAX_BUCKETS, Shard, Table};

/// How often full buckets are forgotten (besides whenever a shard needs room): the gauge of
/// tracked buckets lags by at most this.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Policies a request's buckets are held for on the stack; a service with more uses the heap.
const INLINE: usize = 8;

/// One policy of a service, as a snapshot holds it.
pub struct Policy {
    pub config: RateLimitConfig,
    /// For the 429's message (shared, so a refusal does not copy it).
    pub name: Arc<str>,
    table: Arc<Table>,
    headers: Rendered,
    limited: IntCounter,
}

/// Which limiter decides for a snapshot (see the module comment).
pub enum Limiter {
    /// This replica's buckets.
    Local,
    /// The shared store's buckets, this replica's when the store does not answer in time.
    Fleet(Arc<Fleet>),
}

/// A service's rate limits in one snapshot.
pub struct ServiceLimits {
    epoch: Instant,
    pub limiter: Limiter,
    policies: Box<[Policy]>,
    /// Policy indices in the order their tables are locked (increasing table id, the same in
    /// every snapshot, so two requests never wait on each other's locks in a cycle).
    lock_order: Box<[usize]>,
    /// `lock_pos[i]`: where policy `i` is in `lock_order`.
    lock_pos: Box<[usize]>,
    /// With `Limiter::Fleet`: each policy's keys and parameters in the store, and those
    /// parameters as the script takes them (two per policy); empty otherwise.
    shared: Box<[SharedPolicy]>,
    shared_params: Box<[i64]>,
}

/// A refused request: the policy named in the answer and the wait.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub shown: Shown,
    pub retry_after: u64,
    pub policy: Arc<str>,
}

impl ServiceLimits {
    /// No policies.
    pub fn none() -> ServiceLimits {
        ServiceLimits {
            epoch: Instant::now(),
            limiter: Limiter::Local,
            policies: Box::new([]),
            lock_order: Box::new([]),
            lock_pos: Box::new([]),
            shared: Box::new([]),
            shared_params: Box::new([]),
        }
    }

    /// Whether decisions go through the shared store (`check_shared`).
    pub fn is_shared(&self) -> bool {
        matches!(self.limiter, Limiter::Fleet(_))
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Nanoseconds on the limiter's clock (the registry's epoch, shared by every snapshot).
    pub fn now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64
    }

    /// The limit phase for one request that passed every earlier check: its client address
    /// and who it authenticated as pick its bucket in each policy. `Ok`: admitted, with what to
    /// show; `Err`: refused, nothing taken.
    pub fn check(&self, ip: IpAddr, auth: AuthOutcome) -> Result<Option<Shown>, Refusal> {
        self.check_at(self.now(), ip, auth)
    }

    /// `check` at a given time on the limiter's clock (benchmarks, tests).
    pub fn check_at(
        &self,
        now: u64,
        ip: IpAddr,
        auth: AuthOutcome,
    ) -> Result<Option<Shown>, Refusal> {
        self.finish(self.decide_locally(now, ip, auth, 1))
    }

    /// The limit phase through the shared store (`Limiter::Fleet`): one script call for all of
    /// the service's policies, bounded by `rate_limit_timeout`; decided on this replica's tables
    /// when the store is known to be unreachable or the call fails or is late (never an error
    /// because of the store). With `Limiter::Local`, the same as `check`.
    pub async fn check_shared(
        &self,
        ip: IpAddr,
        auth: AuthOutcome,
    ) -> Result<Option<Shown>, Refusal> {
        let Limiter::Fleet(f) = &self.limiter else {
            return self.check(ip, auth);
        };
        if self.policies.is_empty() {
            return Ok(None);
        }
        let why = if f.store.is_up() {
            let keys = self
                .shared
                .iter()
                .zip(self.policies.iter())
                .map(|(s, p)| s.key(key(p.config.by, ip, auth)))
                .collect();
            match f
                .store
                .clone()
                .take(keys, &self.shared_params, f.timeout)
                .await
            {
                Ok(answer) => {
                    f.answered();
                    return self.finish(fleet::read_answer(&answer, &self.shared, |i| {
                        self.policies[i].config.by != RateLimitBy::Service
                    }));
                }
                Err(why) => why,
            }
        } else {
            "the shared store is unreachable".to_string()
        };
        let episode = f.local(&why);
        for p in self.policies.iter() {
            p.table.start_episode(episode);
        }
        self.finish(self.decide_locally(self.now(), ip, auth, f.divisor()))
    }

    /// A decision as the phase answers it; a refusal is counted.
    fn finish(&self, decision: Decision) -> Result<Option<Shown>, Refusal> {
        match decision {
            Decision::Admit(shown) => Ok(shown),
            Decision::Refuse { shown, retry_after } => {
                let p = &self.policies[shown.policy];
                p.limited.inc();
                Err(Refusal {
                    shown,
                    retry_after,
                    policy: p.name.clone(),
                })
            }
        }
    }

    /// Decides on this replica's tables; `by = "service"` policies with `requests` and `burst`
    /// divided by `divisor` (rounded up, at least 1; 1: as configured).
    fn decide_locally(&self, now: u64, ip: IpAddr, auth: AuthOutcome, divisor: u64) -> Decision {
        let n = self.policies.len();
        if n == 0 {
            return Decision::Admit(None);
        }
        if n <= INLINE {
            let mut keys = [0u64; INLINE];
            let mut tats = [0u64; INLINE];
            let mut gcras = [Gcra { t: 1, tau: 1 }; INLINE];
            let mut guards: [Option<MutexGuard<'_, Shard>>; INLINE] = Default::default();
            self.local(
                now,
                ip,
                auth,
                divisor,
                &mut keys[..n],
                &mut tats[..n],
                &mut gcras[..n],
                &mut guards[..n],
            )
        } else {
            let mut keys = vec![0u64; n];
            let mut tats = vec![0u64; n];
            let mut gcras = vec![Gcra { t: 1, tau: 1 }; n];
            let mut guards: Vec<Option<MutexGuard<'_, Shard>>> = (0..n).map(|_| None).collect();
            self.local(
                now,
                ip,
                auth,
                divisor,
                &mut keys,
                &mut tats,
                &mut gcras,
                &mut guards,
            )
        }
    }

    /// The local limiter: lock each policy's shard for this request's key (in `lock_order`),
    /// read the buckets, decide, write them back on an admit, unlock.
    #[allow(clippy::too_many_arguments)]
    fn local<'a>(
        &'a self,
        now: u64,
        ip: IpAddr,
        auth: AuthOutcome,
        divisor: u64,
        keys: &mut [u64],
        tats: &mut [u64],
        gcras: &mut [Gcra],
        guards: &mut [Option<MutexGuard<'a, Shard>>],
    ) -> Decision {
        for (k, p) in keys.iter_mut().zip(self.policies.iter()) {
            *k = key(p.config.by, ip, auth);
        }
        for (g, &i) in guards.iter_mut().zip(self.lock_order.iter()) {
            *g = Some(self.policies[i].table.lock(keys[i]));
        }
        for i in 0..self.policies.len() {
            let shard = guards[self.lock_pos[i]].as_ref().expect("locked above");
            tats[i] = shard.tat(keys[i]);
            let c = &self.policies[i].config;
            gcras[i] = if divisor > 1 && c.by == RateLimitBy::Service {
                Gcra::new(
                    c.requests.div_ceil(divisor),
                    c.per.as_secs(),
                    c.burst.div_ceil(divisor),
                )
            } else {
                shard.gcra
            };
        }
        let decision = gcra::decide(now, gcras, tats, |i| {
            self.policies[i].config.by != RateLimitBy::Service
        });
        if let Decision::Admit(_) = decision {
            for (i, p) in self.policies.iter().enumerate() {
                let shard = guards[self.lock_pos[i]].as_mut().expect("locked above");
                p.table.store(shard, keys[i], tats[i], now);
            }
        }
        decision
    }

    /// Puts the `RateLimit` and `RateLimit-Policy` headers of `shown` on a response.
    pub fn write_headers(&self, shown: Shown, h: &mut HeaderMap) {
        if let Some(p) = self.policies.get(shown.policy) {
            h.insert(RATELIMIT_POLICY, p.headers.policy());
            h.insert(RATELIMIT, p.headers.ratelimit(shown.remaining, shown.reset));
        }
    }

    /// The name of policy `i` (the access log's `rate_limited_by`).
    pub fn name(&self, i: usize) -> &str {
        self.policies.get(i).map_or("-", |p| p.config.name.as_str())
    }
}

/// The bucket a request takes from in a policy counting `by`.
/// - client: IPv4 addresses as themselves, IPv6 by /64 (one host usually holds a whole /64);
///   IPv4 keys sit in `ffff:ffff::/32`, multicast space that is never a source address;
/// - credential: key slots 1 and 2, a token by its `Subject`;
/// - service: one bucket.
pub fn key(by: RateLimitBy, ip: IpAddr, auth: AuthOutcome) -> u64 {
    match by {
        RateLimitBy::Client => match ip {
            IpAddr::V4(v4) => 0xffff_ffff_0000_0000 | u64::from(u32::from(v4)),
            IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
        },
        RateLimitBy::Credential => match auth {
            AuthOutcome::Key(KeySlot::Primary) => 1,
            AuthOutcome::Key(KeySlot::Secondary) => 2,
            AuthOutcome::Token(s) => s.0,
            // Not reached: a credential policy needs a key- or token-mode service.
            _ => 0,
        },
        RateLimitBy::Service => 0,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tokens::Subject;
    use crate::config::AuthMode;
    use gcra::NS;

    fn service(limits: Vec<RateLimitConfig>) -> ServiceConfig {
        let mut s = ServiceConfig::new("iris", AuthMode::Key, vec![]);
        s.rate_limits = limits;
        s
    }

    fn rl(name: &str, by: RateLimitBy, requests: u64, per: u64, burst: u64) -> RateLimitConfig {
        RateLimitConfig::new(name, by, requests, Duration::from_secs(per), burst)
    }

    fn built(reg: &Registry, sc: &ServiceConfig) -> ServiceLimits {
        let mut p = Pending::default();
        let l = reg.build(sc, &mut p);
        reg.publish(p);
        l
    }

    const A: AuthOutcome = AuthOutcome::Key(KeySlot::Primary);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keys_tell_clients_and_credentials_apart() {
        let k = |s| key(RateLimitBy::Client, ip(s), A);
        assert_ne!(k("10.0.0.1"), k("10.0.0.2"));
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"), "one /64");
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_ne!(k("0.0.0.0"), k("::"));
        let c = |a| key(RateLimitBy::Credential, ip("10.0.0.1"), a);
        assert_ne!(c(A), c(AuthOutcome::Key(KeySlot::Secondary)));
        assert_ne!(
            c(AuthOutcome::Token(Subject(7))),
            c(AuthOutcome::Token(Subject(8)))
        );
        assert_eq!(key(RateLimitBy::Service, ip("10.0.0.1"), A), 0);
    }

    #[test]
    fn a_reload_keeps_buckets_of_kept_policies_only() {
        let reg = Registry::new(&prometheus::Registry::new());
        let sc = service(vec![
            rl("client", RateLimitBy::Client, 1, 60, 1),
            rl("other", RateLimitBy::Client, 1, 60, 1),
        ]);
        let l1 = built(&reg, &sc);
        // The limiter's clock: `publish` converts kept buckets at its own "now".
        let now = l1.now();
        assert!(l1.check_at(now, ip("10.0.0.1"), A).is_ok());
        assert!(l1.check_at(now, ip("10.0.0.1"), A).is_err());
        // Same config: still empty. `other` renamed: starts full, but `client` still refuses.
        let mut sc2 = sc.clone();
        sc2.rate_limits[1].name = "renamed".into();
        let l2 = built(&reg, &sc2);
        let e = l2.check_at(now, ip("10.0.0.1"), A).unwrap_err();
        assert_eq!(&*e.policy, "client");
        // A bigger burst applies to the kept bucket: its level (0) is kept, the new rate
        // refills it.
        let mut sc3 = sc2.clone();
        sc3.rate_limits[0] = rl("client", RateLimitBy::Client, 60, 60, 5);
        let l3 = built(&reg, &sc3);
        assert!(l3.check_at(now, ip("10.0.0.1"), A).is_err());
        assert!(l3.check_at(now + 2 * NS, ip("10.0.0.1"), A).is_ok());
        // Removing the policy and adding it back starts it full (once no snapshot holds it).
        drop((l1, l2, l3));
        built(&reg, &service(vec![]));
        let l5 = built(&reg, &sc);
        assert!(l5.check_at(now, ip("10.0.0.1"), A).is_ok());
    }

    #[test]
    fn many_policies_take_all_or_nothing_beyond_the_inline_ones() {
        let reg = Registry::new(&prometheus::Registry::new());
        let mut limits: Vec<RateLimitConfig> = (0..10)
            .map(|i| rl(&format!("p{i}"), RateLimitBy::Client, 5, 60, 5))
            .collect();
        limits.push(rl("svc", RateLimitBy::Service, 1, 60, 1));
        let l = built(&reg, &service(limits));
        let now = NS;
        let ok = l.check_at(now, ip("10.0.0.1"), A).unwrap().unwrap();
        assert_eq!((ok.remaining, ok.reset), (4, 0));
        let e = l.check_at(now, ip("10.0.0.2"), A).unwrap_err();
        assert_eq!((&*e.policy, e.retry_after), ("svc", 60));
        // The refused request took nothing from its client's ten buckets.
        assert_eq!(l.policies[0].table.len(), 1);
    }

    /// A store that answers as told: `Some(answer)`, or fails.
    struct FakeStore {
        up: AtomicBool,
        replicas: AtomicU64,
        answer: Mutex<Option<fleet::Answer>>,
        calls: AtomicU64,
    }

    impl SharedBuckets for FakeStore {
        fn is_up(&self) -> bool {
            self.up.load(Ordering::Relaxed)
        }
        fn live_replicas(&self) -> u64 {
            self.replicas.load(Ordering::Relaxed)
        }
        fn prefix(&self) -> &str {
            "p:"
        }
        fn take(
            self: Arc<Self>,
            keys: Vec<String>,
            params: &[i64],
            _timeout: Duration,
        ) -> fleet::Pending {
            assert_eq!(params.len(), 2 * keys.len());
            self.calls.fetch_add(1, Ordering::Relaxed);
            let a = self.answer.lock().unwrap().clone();
            Box::pin(async move { a.ok_or_else(|| "down".to_string()) })
        }
    }

    #[tokio::test]
    async fn the_fleet_limiter_falls_back_by_the_outage_rules() {
        let prom = prometheus::Registry::new();
        let reg = Registry::new(&prom);
        let store = Arc::new(FakeStore {
            up: AtomicBool::new(true),
            replicas: AtomicU64::new(3),
            answer: Mutex::new(None),
            calls: AtomicU64::new(0),
        });
        reg.share(store.clone(), Duration::from_millis(50));
        let sc = service(vec![
            rl("client", RateLimitBy::Client, 100, 60, 100),
            rl("svc", RateLimitBy::Service, 10, 60, 10),
        ]);
        let l = built(&reg, &sc);
        assert!(l.is_shared());
        assert_eq!(
            l.shared.iter().map(|p| &*p.stem).collect::<Vec<_>>(),
            ["p:rl:iris:client:client:", "p:rl:iris:svc:service:"]
        );
        // A service without policies is never shared: nothing to ask the store.
        assert!(!built(&reg, &service(vec![])).is_shared());
        let degraded = || reg.metrics.degraded.get();
        let c = ip("10.0.0.1");

        // The store answers: its verdict, shown as decide reads it.
        *store.answer.lock().unwrap() = Some(fleet::Answer {
            admitted: true,
            now_us: 5_000_000,
            tats_us: vec![0, 0],
        });
        let shown = l.check_shared(c, A).await.unwrap().unwrap();
        assert_eq!((shown.policy, shown.remaining), (0, 99));
        assert_eq!(degraded(), 0);
        assert_eq!(l.policies[1].table.len(), 0, "nothing kept locally");

        // It fails: decided locally, `svc` divided by 3 live replicas (ceil(10 / 3) = 4).
        *store.answer.lock().unwrap() = None;
        for _ in 0..4 {
            assert!(l.check_shared(c, A).await.is_ok());
        }
        let e = l.check_shared(c, A).await.unwrap_err();
        assert_eq!((&*e.policy, e.retry_after), ("svc", 15));
        assert_eq!(degraded(), 1);

        // Unreachable: not even asked, still the same local buckets (the same outage).
        store.up.store(false, Ordering::Relaxed);
        let calls = store.calls.load(Ordering::Relaxed);
        assert!(l.check_shared(c, A).await.is_err());
        assert_eq!(store.calls.load(Ordering::Relaxed), calls);

        // Back: shared again, the gauge 0.
        store.up.store(true, Ordering::Relaxed);
        *store.answer.lock().unwrap() = Some(fleet::Answer {
            admitted: true,
            now_us: 6_000_000,
            tats_us: vec![0, 0],
        });
        assert!(l.check_shared(c, A).await.is_ok());
        assert_eq!(degraded(), 0);

        // The next outage starts full; now with one live replica: `svc` at its full 10.
        *store.answer.lock().unwrap() = None;
        store.replicas.store(0, Ordering::Relaxed);
        for i in 0..10 {
            assert!(l.check_shared(c, A).await.is_ok(), "request {i}");
        }
        assert!(l.check_shared(c, A).await.is_err());
        assert_eq!(degraded(), 1);
    }
}

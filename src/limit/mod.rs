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
//! - `registry`: `Registry`, in `Shared`, which keeps the tables across reloads by (service,
//!   name) and sweeps them.
//!
//! This module: `ServiceLimits`, what a snapshot's service holds (its policies, their tables,
//! the limiter that decides), and the key of a request in each policy (`key`).
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
mod registry;
pub mod table;

use std::net::IpAddr;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use http::HeaderMap;
use prometheus::IntCounter;
use tokio::time::Instant;

use crate::auth::AuthOutcome;
use crate::auth::keys::KeySlot;
use crate::config::{RateLimitBy, RateLimitConfig};
use crate::proxy::headers::{RATELIMIT, RATELIMIT_POLICY};
use fleet::{Fleet, SharedPolicy};
pub use gcra::{Decision, Gcra, Shown};
use headers::Rendered;
pub use registry::{Pending, Registry};
use table::{Shard, Table};

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

#[cfg(test)]
mod tests;

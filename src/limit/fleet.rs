//! Rate limits across the fleet (contract §7, `store = "redis"`): one store script per request
//! decides for all of a service's policies at once, on the store's clock, so every replica
//! takes from the same buckets; when the store does not answer in time the request is decided
//! locally, by the outage rules.
//!
//! This module knows the store only through `SharedBuckets` (implemented by
//! `store::redis::ratelimit`): it makes the bucket keys and the parameters, and reads the
//! script's answer with the same `gcra::decide` arithmetic the local limiter uses, so both answer
//! alike (same headers, same Retry-After).
//!
//! **Units.** The store's clock is `TIME` in microseconds (exact in Lua's doubles for the next
//! 280 years); a policy's emission interval is rounded up to whole microseconds, so the fleet's
//! rate never exceeds `requests / per` (a policy above 1 000 000 requests per second per bucket
//! runs at 1 000 000). The answer is read in nanoseconds (× 1000), exactly.
//!
//! **Local decisions** (a script call that failed or passed `rate_limit_timeout`, or a store
//! known to be unreachable): this replica's own tables, `by = "service"` policies with
//! `requests` and `burst` divided by the live replicas last read from the registry (rounded up,
//! at least 1), the others at full value. An outage is an *episode*: the first local decision
//! after shared ones starts a new one, and each table is emptied (all buckets full) before its
//! first use in it. `scoregate_rate_limit_degraded` is 1 from the first local decision until a
//! script answers again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntGauge;

use super::gcra::{Decision, Gcra, Shown};

/// A script call in flight (boxed: only fleet decisions pay for it).
pub type Pending = Pin<Box<dyn Future<Output = Result<Answer, String>> + Send>>;

/// What the fleet limiter needs of the shared store.
pub trait SharedBuckets: Send + Sync {
    /// False while the store is known to be unreachable: decide locally without asking.
    fn is_up(&self) -> bool;
    /// The live replicas in the registry at its last successful read (0: never read).
    fn live_replicas(&self) -> u64;
    /// The store's key prefix (every bucket key starts with it).
    fn prefix(&self) -> &str;
    /// Runs the rate-limit script once: `keys[i]` is policy `i`'s bucket, `params` holds
    /// (emission interval, depth) per policy in microseconds. Answers within `timeout`; an
    /// error (a failure, a late answer) is decided locally by the caller.
    fn take(self: Arc<Self>, keys: Vec<String>, params: &[i64], timeout: Duration) -> Pending;
}

/// The script's answer: whether it admitted (one token taken from every bucket) or refused
/// (none), the store's "now" and each bucket as it was read (µs; 0: full).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub admitted: bool,
    pub now_us: u64,
    pub tats_us: Vec<u64>,
}

/// The process's link to the shared store, in `limit::Registry` (set once at start).
pub struct Fleet {
    pub store: Arc<dyn SharedBuckets>,
    /// `state.redis.rate_limit_timeout`.
    pub timeout: Duration,
    degraded: AtomicBool,
    /// Outage episodes so far; a table is emptied once per episode (`Table::start_episode`).
    episode: AtomicU64,
    gauge: IntGauge,
}

impl Fleet {
    pub fn new(store: Arc<dyn SharedBuckets>, timeout: Duration, gauge: IntGauge) -> Fleet {
        gauge.set(0);
        Fleet {
            store,
            timeout,
            degraded: AtomicBool::new(false),
            episode: AtomicU64::new(0),
            gauge,
        }
    }

    /// A script answered: shared decisions again.
    pub fn answered(&self) {
        if self.degraded.load(Ordering::Relaxed) && self.degraded.swap(false, Ordering::Relaxed) {
            self.gauge.set(0);
            tracing::info!("rate limits decided through the shared store again");
        }
    }

    /// This request is decided locally: returns the episode it belongs to (a new one when the
    /// decisions before it were shared).
    pub fn local(&self, why: &str) -> u64 {
        if !self.degraded.load(Ordering::Relaxed) && !self.degraded.swap(true, Ordering::Relaxed) {
            let e = self.episode.fetch_add(1, Ordering::Relaxed) + 1;
            self.gauge.set(1);
            tracing::warn!(
                reason = why,
                "rate limits decided on this replica (the shared store did not answer in time): by = \"service\" divided by the live replicas, the others at full value"
            );
            return e;
        }
        self.episode.load(Ordering::Relaxed)
    }

    /// What `by = "service"` policies are divided by while deciding locally.
    pub fn divisor(&self) -> u64 {
        self.store.live_replicas().max(1)
    }
}

/// A policy's part in the script: its keys' stem and its parameters in microseconds.
pub struct SharedPolicy {
    /// `{prefix}rl:{service}:{policy}:{by}:`; a bucket's key adds its 16 hex digits.
    pub stem: Box<str>,
    /// The parameters the answer is read with: `t_us × 1000`, `tau_us × 1000` nanoseconds.
    pub gcra: Gcra,
}

impl SharedPolicy {
    /// `requests` per `per_s` seconds, `burst` at once, under `stem`.
    pub fn new(stem: String, requests: u64, per_s: u64, burst: u64) -> SharedPolicy {
        let local = Gcra::new(requests, per_s, burst);
        let t_us = local.t.div_ceil(1000).max(1);
        SharedPolicy {
            stem: stem.into(),
            gcra: Gcra {
                t: t_us * 1000,
                tau: t_us * burst.max(1) * 1000,
            },
        }
    }

    /// (emission interval, depth) in microseconds, as the script takes them.
    pub fn params_us(&self) -> [i64; 2] {
        [(self.gcra.t / 1000) as i64, (self.gcra.tau / 1000) as i64]
    }

    /// The store key of one bucket (the `limit::key` of the request in this policy).
    pub fn key(&self, bucket: u64) -> String {
        use std::fmt::Write;
        let mut k = String::with_capacity(self.stem.len() + 16);
        k.push_str(&self.stem);
        let _ = write!(k, "{bucket:016x}");
        k
    }
}

/// The decision an answer stands for, with what the headers show: the script's verdict, read
/// with `gcra::decide` on the buckets as the script found them (the same integer arithmetic,
/// so the two agree; should they not, the script's verdict stands).
pub fn read_answer(
    answer: &Answer,
    policies: &[SharedPolicy],
    shown_on_admit: impl Fn(usize) -> bool,
) -> Decision {
    let gcras: Vec<Gcra> = policies.iter().map(|p| p.gcra).collect();
    let mut tats: Vec<u64> = answer
        .tats_us
        .iter()
        .map(|&t| t.saturating_mul(1000))
        .collect();
    tats.resize(gcras.len(), 0);
    let d = super::gcra::decide(
        answer.now_us.saturating_mul(1000),
        &gcras,
        &mut tats,
        shown_on_admit,
    );
    match (answer.admitted, d) {
        (true, Decision::Admit(s)) => Decision::Admit(s),
        (false, d @ Decision::Refuse { .. }) => d,
        (true, Decision::Refuse { .. }) => Decision::Admit(None),
        (false, Decision::Admit(_)) => Decision::Refuse {
            shown: Shown {
                policy: 0,
                remaining: 0,
                reset: 1,
            },
            retry_after: 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::gcra::NS;

    #[test]
    fn shared_parameters_round_up_to_whole_microseconds() {
        // 3 per second: 333 333 333.3 ns → 333 334 µs.
        let p = SharedPolicy::new("p:".into(), 3, 1, 2);
        assert_eq!(p.params_us(), [333_334, 666_668]);
        // Never faster than the policy: t × requests ≥ per.
        assert!(p.gcra.t * 3 >= NS);
        // A million per second is one per microsecond; more is capped there.
        let p = SharedPolicy::new("p:".into(), 1_000_000_000, 1, 5);
        assert_eq!(p.params_us(), [1, 5]);
        assert_eq!(p.key(0xffff_ffff_7f00_0001), "p:ffffffff7f000001");
        assert_eq!(p.key(1), "p:0000000000000001");
    }

    #[test]
    fn an_answer_reads_as_the_local_decision_would() {
        let ps = [
            SharedPolicy::new("a:".into(), 2, 60, 2),
            SharedPolicy::new("b:".into(), 10, 1, 10),
        ];
        let now_us = 1_000_000_000;
        // Policy 0 has one token left, policy 1 is full.
        let a = Answer {
            admitted: true,
            now_us,
            tats_us: vec![now_us + 30_000_000, 0],
        };
        assert_eq!(
            read_answer(&a, &ps, |_| true),
            Decision::Admit(Some(Shown {
                policy: 0,
                remaining: 0,
                reset: 30
            }))
        );
        // Policy 0 empty: refused, wait 30 s.
        let r = Answer {
            admitted: false,
            now_us,
            tats_us: vec![now_us + 60_000_000, 0],
        };
        assert!(matches!(
            read_answer(&r, &ps, |_| true),
            Decision::Refuse { shown, retry_after: 30 } if shown.policy == 0
        ));
        // The script's verdict stands when the two disagree.
        let odd = Answer {
            admitted: true,
            ..r.clone()
        };
        assert_eq!(read_answer(&odd, &ps, |_| true), Decision::Admit(None));
    }
}

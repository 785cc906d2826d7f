//! One policy's buckets on this replica: key → TAT (`gcra`), in `SHARDS` hash maps behind their
//! own mutexes, so requests of different clients rarely meet on a lock. A table outlives
//! snapshots: a reload that keeps the policy keeps its table (`limit::Registry`).
//!
//! Memory stays bounded: a full bucket is the same as no bucket, so full buckets are forgotten
//! (by the sweep every few seconds, and whenever room is needed), and a table holds at most
//! `MAX_BUCKETS`. A new bucket beyond that drops the bucket closest to full (the smallest TAT),
//! counted in `scoregate_rate_limit_buckets_dropped_total`. The candidates are the buckets of
//! the new key's shard (1/32 of the table, a scan of ~3 000 on the rare insert that needs it)
//! and the new bucket itself: a fresh bucket that is closer to full than every other is the one
//! not kept.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use prometheus::{IntCounter, IntGauge};

use super::gcra::Gcra;

/// Buckets per policy and replica (contract §7): about 3.5 MiB at the cap (BENCHMARKS.md).
pub const MAX_BUCKETS: usize = 100_000;
/// Shards per table: enough that cores rarely wait on one another, few enough that one shard
/// (~3 000 buckets at the cap) is a fair sample when looking for the bucket closest to full.
pub const SHARDS: usize = 32;

/// One shard: the parameters its buckets are written in, and the buckets.
pub struct Shard {
    pub gcra: Gcra,
    buckets: HashMap<u64, u64>,
}

impl Shard {
    /// The bucket of `key` (0: full, never seen or forgotten).
    pub fn tat(&self, key: u64) -> u64 {
        self.buckets.get(&key).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Forgets full buckets; returns how many.
    fn forget_full(&mut self, now: u64) -> usize {
        let before = self.buckets.len();
        self.buckets.retain(|_, tat| *tat > now);
        before - self.buckets.len()
    }
}

/// The long-lived buckets of one policy.
pub struct Table {
    /// Unique per process: requests lock several tables in increasing `id` order.
    pub id: u64,
    shards: Box<[Mutex<Shard>]>,
    /// At most this many buckets.
    max: usize,
    /// Buckets held, across shards.
    count: AtomicUsize,
    hasher: std::collections::hash_map::RandomState,
    /// The fleet limiter's outage episode this table's buckets belong to (`start_episode`).
    episode: AtomicU64,
    /// `scoregate_rate_limit_buckets{service, policy}`.
    pub buckets: IntGauge,
    /// `scoregate_rate_limit_buckets_dropped_total{service, policy}`.
    pub dropped: IntCounter,
}

impl Table {
    pub fn new(id: u64, gcra: Gcra, max: usize, buckets: IntGauge, dropped: IntCounter) -> Table {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    gcra,
                    buckets: HashMap::new(),
                })
            })
            .collect();
        Table {
            id,
            shards,
            max: max.max(1),
            count: AtomicUsize::new(0),
            hasher: Default::default(),
            episode: AtomicU64::new(0),
            buckets,
            dropped,
        }
    }

    /// The shard that holds `key`, locked. (A keyed hash picks it, so no client can aim all of
    /// its keys at one shard.)
    pub fn lock(&self, key: u64) -> MutexGuard<'_, Shard> {
        let h = self.hasher.hash_one(key);
        lock(&self.shards[(h >> 59) as usize % SHARDS])
    }

    /// Writes a bucket in its (locked) shard. A new key in a full table first makes room:
    /// full buckets of the shard are forgotten, else the bucket closest to full is dropped —
    /// which may be the new one.
    pub fn store(&self, shard: &mut Shard, key: u64, tat: u64, now: u64) {
        if let Some(b) = shard.buckets.get_mut(&key) {
            *b = tat;
            return;
        }
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max {
            let forgotten = shard.forget_full(now);
            self.removed(forgotten);
            if forgotten == 0 {
                self.dropped.inc();
                let closest = shard
                    .buckets
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(k, t)| (*k, *t));
                match closest {
                    Some((k, t)) if t < tat => {
                        shard.buckets.remove(&k);
                        self.removed(1);
                    }
                    // The new bucket is the closest to full (or its shard is empty): not kept.
                    _ => {
                        self.count.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
        shard.buckets.insert(key, tat);
        self.buckets.inc();
    }

    /// `n` buckets left the table.
    fn removed(&self, n: usize) {
        if n > 0 {
            self.count.fetch_sub(n, Ordering::Relaxed);
            self.buckets.sub(n as i64);
        }
    }

    /// Forgets every full bucket, one shard at a time, and gives memory back to the allocator
    /// when a shard has shrunk a lot. Returns how many were forgotten.
    pub fn sweep(&self, now: u64) -> usize {
        let mut total = 0;
        for s in self.shards.iter() {
            let mut s = lock(s);
            let n = s.forget_full(now);
            let (len, cap) = (s.buckets.len(), s.buckets.capacity());
            if cap > 64 && len < cap / 4 {
                s.buckets.shrink_to(len * 2);
            }
            drop(s);
            self.removed(n);
            total += n;
        }
        total
    }

    /// Puts new parameters in force (a reload changed this kept policy): every bucket is
    /// converted (`Gcra::convert`), one shard at a time under its lock, so no decision ever
    /// reads a bucket with parameters it was not written in.
    pub fn set_params(&self, gcra: Gcra, now: u64) {
        for s in self.shards.iter() {
            let mut s = lock(s);
            if s.gcra == gcra {
                continue;
            }
            let old = s.gcra;
            for tat in s.buckets.values_mut() {
                *tat = gcra.convert(&old, *tat, now);
            }
            s.gcra = gcra;
            let n = s.forget_full(now);
            drop(s);
            self.removed(n);
        }
    }

    /// With the fleet limiter, this replica's tables serve only local decisions, and each outage
    /// starts with full buckets: the first use in a new `episode` forgets every bucket (what the
    /// table held came from an earlier outage). Requests of the episode that raced the emptying
    /// may lose their bucket: it reads as full, as the episode's buckets start anyway.
    pub fn start_episode(&self, episode: u64) {
        let seen = self.episode.load(Ordering::Relaxed);
        if seen >= episode
            || self
                .episode
                .compare_exchange(seen, episode, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        for s in self.shards.iter() {
            let mut s = lock(s);
            let n = s.buckets.len();
            s.buckets.clear();
            drop(s);
            self.removed(n);
        }
    }

    /// The parameters in force.
    pub fn params(&self) -> Gcra {
        lock(&self.shards[0]).gcra
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Table {
    /// Several tables may share one gauge series (a policy whose `by` changed); each takes its
    /// own buckets out of it when it goes.
    fn drop(&mut self) {
        self.buckets.sub(*self.count.get_mut() as i64);
    }
}

/// A poisoned shard (a panic while it was held) is still a consistent map of numbers.
fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::gcra::NS;

    fn table(max: usize) -> Table {
        Table::new(
            1,
            Gcra::new(1, 60, 1),
            max,
            IntGauge::new("b", "b").unwrap(),
            IntCounter::new("d", "d").unwrap(),
        )
    }

    fn take(t: &Table, key: u64, now: u64) {
        let mut s = t.lock(key);
        let g = s.gcra;
        let tat = s.tat(key).max(now) + g.t;
        t.store(&mut s, key, tat, now);
    }

    #[test]
    fn the_cap_drops_the_bucket_closest_to_full_and_counts_it() {
        let t = table(MAX_BUCKETS);
        let now = 10 * NS;
        // One bucket per key, each spent a little later than the one before: key 0 is the
        // closest to full.
        for k in 0..MAX_BUCKETS as u64 {
            take(&t, k, now + k);
        }
        assert_eq!(t.len(), MAX_BUCKETS);
        assert_eq!(t.buckets.get(), MAX_BUCKETS as i64);
        assert_eq!(t.dropped.get(), 0);
        // More keys than the cap: never more than MAX_BUCKETS, and each new one drops one.
        for k in 0..1000u64 {
            take(&t, 1_000_000 + k, now + 1_000_000 + k);
        }
        assert_eq!(t.len(), MAX_BUCKETS);
        assert_eq!(t.buckets.get(), MAX_BUCKETS as i64);
        assert_eq!(t.dropped.get(), 1000);
        // The dropped ones were the oldest of their shard: every newer key is still there.
        for k in 0..1000u64 {
            assert_ne!(t.lock(1_000_000 + k).tat(1_000_000 + k), 0);
        }
        // A new bucket closer to full than every other is itself the one not kept.
        let mut s = t.lock(7_000_000);
        t.store(&mut s, 7_000_000, now + 1, now);
        assert_eq!(s.tat(7_000_000), 0);
        drop(s);
        assert_eq!((t.len(), t.dropped.get()), (MAX_BUCKETS, 1001));
        // Once full again, buckets are forgotten rather than dropped.
        let later = now + 120 * NS;
        take(&t, 5_000_000, later);
        assert_eq!(t.dropped.get(), 1001);
        let before = t.len();
        assert!(before < MAX_BUCKETS);
        assert_eq!(t.sweep(later), before - 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.buckets.get(), 1);
    }

    #[test]
    fn new_params_convert_every_bucket_and_forget_the_full_ones() {
        let t = table(1000);
        let now = 10 * NS;
        take(&t, 1, now);
        assert_eq!(t.len(), 1);
        // 1 per minute, burst 1: bucket 1 is empty. Read as 10 per minute, burst 10, its
        // level (0 tokens) is kept.
        let bigger = Gcra::new(10, 60, 10);
        t.set_params(bigger, now);
        assert_eq!(t.params(), bigger);
        let s = t.lock(1);
        assert_eq!(bigger.tokens(s.tat(1), now), 0);
        drop(s);
        // Back to 1 per minute: the level stays capped at burst 1, i.e. still empty...
        let one = Gcra::new(1, 60, 1);
        t.set_params(one, now + 6 * NS);
        // ...one new token (6 s at 10 per minute) is a full bucket of burst 1: forgotten.
        assert_eq!(t.len(), 0);
        assert_eq!(t.buckets.get(), 0);
    }
}

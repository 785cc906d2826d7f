//! Key auth: the primary/secondary pair in force for a key-mode service, and the constant-time
//! check of a credential against it. The pair lives in a cell (`KeyCell`) that the snapshot
//! reads and that a regeneration (admin API, or a change another replica made) swaps, so a new
//! key is in force without rebuilding anything. The store keeps the pairs (`store`).
//!
//! The cell also counts each key's use (`KeyUsage`: requests authenticated with it, and when it
//! was last used), so an operator can tell whether anyone still sends a key before replacing it.
//! Counting is two relaxed atomic operations per request; a key that changes starts its count
//! over. This replica's counts are kept in the state dir (`state::usage`), never on the hot path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::crypto::Secret;
pub use crate::store::KeySlot;

/// The two keys in force for one service. Immutable: a regeneration publishes a new pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub primary: Secret,
    pub secondary: Secret,
}

impl KeyPair {
    /// Compares the credential with both keys in constant time (both comparisons always run, so
    /// timing tells nothing about which key, if any, matched): aws-lc's `CRYPTO_memcmp`, which
    /// the compiler may vectorise, where `subtle`'s `ct_eq` hides every byte from it; only the
    /// lengths, which are public, end a comparison early.
    pub fn check(&self, credential: &[u8]) -> Option<KeySlot> {
        use aws_lc_rs::constant_time::verify_slices_are_equal as same;
        let p = same(self.primary.expose().as_bytes(), credential).is_ok();
        let s = same(self.secondary.expose().as_bytes(), credential).is_ok();
        if p {
            Some(KeySlot::Primary)
        } else if s {
            Some(KeySlot::Secondary)
        } else {
            None
        }
    }
}

/// A key pair shared between the snapshot the hot path reads and whatever replaces it.
pub type SharedKeys = Arc<KeyCell>;

/// The key pair in force for one service, and how much each of its keys was used.
#[derive(Debug)]
pub struct KeyCell {
    pair: ArcSwap<KeyPair>,
    pub usage: KeyUsage,
}

impl KeyCell {
    pub fn new(pair: KeyPair) -> KeyCell {
        KeyCell {
            pair: ArcSwap::from_pointee(pair),
            usage: KeyUsage::new(now_secs()),
        }
    }

    /// The pair in force (one atomic load).
    pub fn load(&self) -> arc_swap::Guard<Arc<KeyPair>> {
        self.pair.load()
    }

    /// The pair in force, to keep.
    pub fn load_full(&self) -> Arc<KeyPair> {
        self.pair.load_full()
    }

    /// Puts a pair in force; a key that changed starts its usage over (a request that checked
    /// the old key just before may still land in the new count).
    pub fn store(&self, pair: KeyPair) {
        let old = self.pair.load_full();
        let now = now_secs();
        for slot in [KeySlot::Primary, KeySlot::Secondary] {
            if old.get(slot) != pair.get(slot) {
                self.usage.slot(slot).reset(now);
            }
        }
        self.pair.store(Arc::new(pair));
    }

    /// Authenticates `credential` and counts the use of the key that matched.
    pub fn check(&self, credential: &[u8]) -> Option<KeySlot> {
        let slot = self.pair.load().check(credential)?;
        self.usage.slot(slot).record(now_secs());
        Some(slot)
    }
}

impl KeyPair {
    pub fn get(&self, slot: KeySlot) -> &Secret {
        match slot {
            KeySlot::Primary => &self.primary,
            KeySlot::Secondary => &self.secondary,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How much each key of a pair was used, on this replica.
#[derive(Debug)]
pub struct KeyUsage {
    slots: [SlotUsage; 2],
}

impl KeyUsage {
    fn new(now: u64) -> KeyUsage {
        KeyUsage {
            slots: [SlotUsage::new(now), SlotUsage::new(now)],
        }
    }

    pub fn slot(&self, slot: KeySlot) -> &SlotUsage {
        &self.slots[slot as usize]
    }
}

/// One key's use: lock-free counters the hot path bumps.
#[derive(Debug)]
pub struct SlotUsage {
    requests: AtomicU64,
    /// Unix seconds; 0: never.
    last_used: AtomicU64,
    /// Unix seconds: since when this key is counted (it came into force, or this replica
    /// started counting it).
    since: AtomicU64,
}

/// What a `SlotUsage` held at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub requests: u64,
    /// Unix seconds.
    pub last_used: Option<u64>,
    /// Unix seconds.
    pub since: u64,
}

impl SlotUsage {
    fn new(now: u64) -> SlotUsage {
        SlotUsage {
            requests: AtomicU64::new(0),
            last_used: AtomicU64::new(0),
            since: AtomicU64::new(now),
        }
    }

    /// One request authenticated with this key. The time is stored only when the second changed,
    /// so that a busy key's cache line is written once per request, not twice.
    pub fn record(&self, now: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.last_used.load(Ordering::Relaxed) < now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }

    fn reset(&self, now: u64) {
        self.requests.store(0, Ordering::Relaxed);
        self.last_used.store(0, Ordering::Relaxed);
        self.since.store(now, Ordering::Relaxed);
    }

    pub fn get(&self) -> Usage {
        let last = self.last_used.load(Ordering::Relaxed);
        Usage {
            requests: self.requests.load(Ordering::Relaxed),
            last_used: (last > 0).then_some(last),
            since: self.since.load(Ordering::Relaxed),
        }
    }

    /// Adds what an earlier run of this replica counted for the same key (at start).
    pub fn restore(&self, earlier: Usage) {
        self.requests.fetch_add(earlier.requests, Ordering::Relaxed);
        if let Some(t) = earlier.last_used {
            self.last_used.fetch_max(t, Ordering::Relaxed);
        }
        self.since.fetch_min(earlier.since, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_matches_either_key_only() {
        let kp = KeyPair {
            primary: Secret::new("a".repeat(43)),
            secondary: Secret::new("b".repeat(43)),
        };
        assert_eq!(kp.check("a".repeat(43).as_bytes()), Some(KeySlot::Primary));
        assert_eq!(
            kp.check("b".repeat(43).as_bytes()),
            Some(KeySlot::Secondary)
        );
        assert_eq!(kp.check("a".repeat(42).as_bytes()), None);
        assert_eq!(kp.check(b""), None);
    }

    #[test]
    fn the_cell_counts_each_key_and_a_new_key_starts_over() {
        let pair = |p: &str, s: &str| KeyPair {
            primary: Secret::new(p.repeat(43)),
            secondary: Secret::new(s.repeat(43)),
        };
        let cell = KeyCell::new(pair("a", "b"));
        for _ in 0..3 {
            assert_eq!(
                cell.check("a".repeat(43).as_bytes()),
                Some(KeySlot::Primary)
            );
        }
        assert_eq!(cell.check(b"nope"), None);
        let p = cell.usage.slot(KeySlot::Primary).get();
        assert_eq!(p.requests, 3);
        assert!(p.last_used.unwrap() >= p.since);
        assert_eq!(cell.usage.slot(KeySlot::Secondary).get().requests, 0);
        assert_eq!(cell.usage.slot(KeySlot::Secondary).get().last_used, None);

        cell.check("b".repeat(43).as_bytes()).unwrap();
        // The primary changes: its count starts over; the secondary's stays.
        cell.store(pair("c", "b"));
        assert_eq!(cell.usage.slot(KeySlot::Primary).get().requests, 0);
        assert_eq!(cell.usage.slot(KeySlot::Primary).get().last_used, None);
        assert_eq!(cell.usage.slot(KeySlot::Secondary).get().requests, 1);

        cell.usage.slot(KeySlot::Secondary).restore(Usage {
            requests: 10,
            last_used: Some(5),
            since: 1,
        });
        let s = cell.usage.slot(KeySlot::Secondary).get();
        assert_eq!((s.requests, s.since), (11, 1));
        assert!(s.last_used.unwrap() > 5, "the later of the two");
    }
}

//! Key auth: the primary/secondary pair in force for a key-mode service, and the constant-time
//! check of a credential against it. The pair lives in a cell (`SharedKeys`) that the snapshot
//! reads and that a regeneration (admin API, or a change another replica made) swaps, so a new
//! key is in force without rebuilding anything. The store keeps the pairs (`store`).

use std::sync::Arc;

use arc_swap::ArcSwap;
use subtle::ConstantTimeEq;

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
    /// timing tells nothing about which key, if any, matched).
    pub fn check(&self, credential: &[u8]) -> Option<KeySlot> {
        let p = self.primary.expose().as_bytes().ct_eq(credential);
        let s = self.secondary.expose().as_bytes().ct_eq(credential);
        if bool::from(p) {
            Some(KeySlot::Primary)
        } else if bool::from(s) {
            Some(KeySlot::Secondary)
        } else {
            None
        }
    }
}

/// A key pair shared between the snapshot the hot path reads and whatever replaces it.
pub type SharedKeys = Arc<ArcSwap<KeyPair>>;

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
}

//! What the state store keeps: one record per service (id, timestamps, auth mode, the key pair,
//! and what config values were applied to it) and the token signing keys. Plain data, serialised
//! as JSON; `revision` grows with every change of a record.
//!
//! `applied` remembers, per config-driven field (`primary_key`, `secondary_key`, `auth`,
//! `algorithm`), the fingerprint of the config value in force and those it replaced. A config
//! value is applied only if it was never applied before; one that was applied and since replaced
//! is "superseded": a replica whose config still holds it adopts the store's value instead of
//! undoing a newer one (every rollout runs replicas on two config versions at once).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::Secret;

/// Which of the two keys (the `key` label of the key-use metric, `keyType` in the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySlot {
    Primary,
    Secondary,
}

impl KeySlot {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySlot::Primary => "primary",
            KeySlot::Secondary => "secondary",
        }
    }
}

/// A service as the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    /// Grows with every change of this record.
    #[serde(default)]
    pub revision: u64,
    /// The auth mode the record was made under (`key`, `token`, `none`); keys never carry over
    /// to another mode.
    #[serde(default)]
    pub auth: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "secret_serde"
    )]
    pub primary_key: Option<Secret>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "secret_serde"
    )]
    pub secondary_key: Option<Secret>,
    /// The config values applied to this record, by field (see the module comment).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub applied: BTreeMap<String, Applied>,
    /// The live traffic split set through the admin API (`PUT .../traffic`), every deployment
    /// with its weight; `None`: the config's is in force (contract §8: the latest action wins,
    /// with `applied["traffic"]` remembering the config value it was set against).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<BTreeMap<String, u8>>,
    /// The mirror set through the admin API (`{}`: none); `None`: the config's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_traffic: Option<BTreeMap<String, u8>>,
    /// Earlier versions' preset fingerprints (read once, moved into `applied`).
    #[serde(default, skip_serializing)]
    pub primary_preset: Option<String>,
    #[serde(default, skip_serializing)]
    pub secondary_preset: Option<String>,
}

/// How many superseded values a field remembers.
pub const APPLIED_HISTORY: usize = 32;

/// The fingerprint of the value of one config-driven field in force, and those it replaced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Applied {
    pub current: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
}

/// What to do with a config value for a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It is the value in force: nothing to do.
    Keep,
    /// It was never applied: apply it.
    Apply,
    /// It was applied once and has been replaced since: adopt the store's value.
    Superseded,
}

/// The decision for `fingerprint` in `field`.
pub fn decide(applied: &BTreeMap<String, Applied>, field: &str, fingerprint: &str) -> Decision {
    match applied.get(field) {
        Some(a) if a.current == fingerprint => Decision::Keep,
        Some(a) if a.history.iter().any(|h| h == fingerprint) => Decision::Superseded,
        _ => Decision::Apply,
    }
}

/// Records `fingerprint` as the value in force for `field`.
pub fn record_applied(applied: &mut BTreeMap<String, Applied>, field: &str, fingerprint: String) {
    let a = applied.entry(field.into()).or_default();
    if a.current == fingerprint {
        return;
    }
    let old = std::mem::replace(&mut a.current, fingerprint);
    if !old.is_empty() {
        a.history.retain(|h| *h != old);
        a.history.push(old);
        if a.history.len() > APPLIED_HISTORY {
            a.history.remove(0);
        }
    }
    let current = a.current.clone();
    a.history.retain(|h| *h != current);
}

impl ServiceRecord {
    pub fn key(&self, slot: KeySlot) -> Option<&Secret> {
        match slot {
            KeySlot::Primary => self.primary_key.as_ref(),
            KeySlot::Secondary => self.secondary_key.as_ref(),
        }
    }

    pub fn key_mut(&mut self, slot: KeySlot) -> &mut Option<Secret> {
        match slot {
            KeySlot::Primary => &mut self.primary_key,
            KeySlot::Secondary => &mut self.secondary_key,
        }
    }
}

/// A token signing key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeyRecord {
    pub kid: String,
    pub alg: String,
    /// Unix seconds.
    pub created: u64,
    /// From when it signs (unix seconds): in a fleet, `resync` after it was written, so that
    /// every replica knows it before its first token; `None`: from `created`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signs_from: Option<u64>,
    /// When a newer key took over signing; it keeps verifying until its tokens have expired.
    #[serde(default)]
    pub retired: Option<u64>,
    /// PKCS#8 PEM (ES256, RS256) or base64url secret (HS256).
    #[serde(with = "secret_serde_plain")]
    pub private: Secret,
    /// SPKI PEM (ES256, RS256); empty for HS256.
    #[serde(default)]
    pub public: String,
}

impl SigningKeyRecord {
    pub fn signs_from(&self) -> u64 {
        self.signs_from.unwrap_or(self.created)
    }
}

/// The token signing keys, one record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SigningRecord {
    #[serde(default)]
    pub revision: u64,
    #[serde(default)]
    pub keys: Vec<SigningKeyRecord>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub applied: BTreeMap<String, Applied>,
}

impl SigningRecord {
    /// The key that signs new tokens at `now` (unix seconds): the newest one whose `signs_from`
    /// has come (a key written moments ago by another replica waits until every replica can
    /// verify its tokens; until then the one before it signs).
    pub fn signing_key(&self, now: u64) -> Option<&SigningKeyRecord> {
        self.keys.iter().rev().find(|k| k.signs_from() <= now)
    }
}

/// Everything the store holds that a replica reads into memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreState {
    pub services: BTreeMap<String, ServiceRecord>,
    pub signing: SigningRecord,
}

mod secret_serde {
    use super::Secret;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) => s.serialize_some(x.expose()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(Secret::new))
    }
}

mod secret_serde_plain {
    use super::Secret;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Secret, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        Ok(Secret::new(String::deserialize(d)?))
    }
}

//! What the state store keeps: one record per service (id, timestamps, auth mode, the key pair,
//! and what config values were applied to it) and the token signing keys. Plain data, serialised
//! as JSON; `revision` grows with every change of a record.

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
    /// Fingerprint of the config preset last applied to each key, so that an unchanged preset
    /// does not undo a later `regenerateKeys`, while a changed one replaces the stored key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_preset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_preset: Option<String>,
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
pub struct SigningKeyRecord {
    pub kid: String,
    pub alg: String,
    /// Unix seconds.
    pub created: u64,
    /// When a newer key replaced it; it keeps verifying until its tokens have expired.
    #[serde(default)]
    pub retired: Option<u64>,
    /// PKCS#8 PEM (ES256, RS256) or base64url secret (HS256).
    #[serde(with = "secret_serde_plain")]
    pub private: Secret,
    /// SPKI PEM (ES256, RS256); empty for HS256.
    #[serde(default)]
    pub public: String,
}

/// Everything the store holds that a replica reads into memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreState {
    pub services: BTreeMap<String, ServiceRecord>,
    pub signing_keys: Vec<SigningKeyRecord>,
}

impl StoreState {
    /// The key that signs new tokens: the newest one not retired.
    pub fn signing_key(&self) -> Option<&SigningKeyRecord> {
        self.signing_keys.iter().rev().find(|k| k.retired.is_none())
    }
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

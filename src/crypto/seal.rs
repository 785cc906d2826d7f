//! Sealed secrets (contract §6, "Secrets"): service keys and private signing keys are sealed with
//! AES-256-GCM (aws-lc-rs, the crypto provider already in the tree) before they reach the shared
//! store or this replica's cache, bound by their associated data to the store prefix, the kind of
//! record, the service (or key id), the slot and the record's revision — so a blob moved to
//! another record, or an old blob put back, fails to unseal. A blob that fails to unseal is never
//! treated as missing: the caller keeps what it had and counts the failure.
//!
//! Blobs look like `v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`; the key id (the first
//! 8 bytes of SHA-256 of the key, in hex) names which key sealed it, so a replica holding the
//! current and the previous key (rotation) picks the right one. Fingerprints of applied config
//! values are HMAC-SHA256 under a key derived from the sealing key, so the store learns nothing of
//! a preset from its fingerprint.
//!
//! With `allow_plaintext_secrets = true` and no key, blobs are `plain.<base64url(value)>` and
//! fingerprints are SHA-256 salted with the prefix.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::crypto::Secret;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a sealing key or a blob is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "the sealing key must be 32 bytes, raw or base64 (`openssl rand -base64 32`); this one is {0} bytes"
    )]
    KeyLength(usize),
    #[error("sealed with key {0}, which this replica does not hold")]
    UnknownKey(String),
    #[error("does not unseal (another record's blob, an old copy put back, or a wrong key)")]
    Open,
    #[error("not a sealed value this build understands")]
    Format,
    #[error("a plaintext value, but this replica only accepts sealed ones")]
    Plaintext,
}

/// One AES-256 key and its id.
struct SealKey {
    id: String,
    key: LessSafeKey,
}

impl SealKey {
    fn new(raw: &[u8]) -> Result<SealKey, SealError> {
        let bytes = decode_key(raw)?;
        let id = Sha256::digest(&bytes)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::KeyLength(bytes.len()))?,
        );
        Ok(SealKey { id, key })
    }
}

/// A 32-byte key given raw or as base64 (with or without padding, standard or URL-safe), with
/// surrounding whitespace ignored.
fn decode_key(raw: &[u8]) -> Result<Vec<u8>, SealError> {
    if raw.len() == 32 {
        return Ok(raw.to_vec());
    }
    let text = std::str::from_utf8(raw).map_err(|_| SealError::KeyLength(raw.len()))?;
    let t = text.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(t)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
        .or_else(|_| B64.decode(t))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(t));
    match decoded {
        Ok(k) if k.len() == 32 => Ok(k),
        Ok(k) => Err(SealError::KeyLength(k.len())),
        Err(_) => Err(SealError::KeyLength(t.len())),
    }
}

/// What a sealed value is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// `svc` (a service key) or `signing` (a private signing key).
    pub kind: &'a str,
    /// The service name, or the signing key's `kid`.
    pub name: &'a str,
    /// `primary`, `secondary`, or `private`.
    pub slot: &'a str,
    pub revision: u64,
}

/// Seals and unseals secrets, and fingerprints config values, for one store prefix.
pub struct Sealer {
    prefix: String,
    current: Option<SealKey>,
    previous: Option<SealKey>,
    fingerprint_key: hmac::Key,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("prefix", &self.prefix)
            .field("key_id", &self.key_id())
            .finish()
    }
}

impl Sealer {
    /// A sealer with `current` (and, while rotating, `previous`) keys; with neither, secrets go
    /// in plaintext (`allow_plaintext_secrets`).
    pub fn new(
        prefix: &str,
        current: Option<&[u8]>,
        previous: Option<&[u8]>,
    ) -> Result<Sealer, SealError> {
        let fp_material = match current {
            Some(raw) => {
                let raw = decode_key(raw)?;
                hmac::sign(
                    &hmac::Key::new(hmac::HMAC_SHA256, &raw),
                    b"scoregate fingerprint key",
                )
                .as_ref()
                .to_vec()
            }
            None => Sha256::digest(format!("scoregate fingerprint salt {prefix}")).to_vec(),
        };
        let current = current.map(SealKey::new).transpose()?;
        let previous = previous.map(SealKey::new).transpose()?;
        Ok(Sealer {
            prefix: prefix.into(),
            current,
            previous,
            fingerprint_key: hmac::Key::new(hmac::HMAC_SHA256, &fp_material),
        })
    }

    /// The id of the key that seals (`None`: plaintext).
    pub fn key_id(&self) -> Option<&str> {
        self.current.as_ref().map(|k| k.id.as_str())
    }

    /// The ids of every key this sealer can open with.
    pub fn key_ids(&self) -> Vec<&str> {
        self.current
            .iter()
            .chain(self.previous.iter())
            .map(|k| k.id.as_str())
            .collect()
    }

    fn aad(&self, b: &Binding<'_>) -> String {
        format!(
            "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            self.prefix, b.kind, b.name, b.slot, b.revision
        )
    }

    /// Seals `value` for `binding` with the key whose id is `with` (the key the store names in
    /// its meta record), or the current key.
    pub fn seal(&self, value: &Secret, b: &Binding<'_>, with: Option<&str>) -> String {
        let key = match with {
            Some(id) => self
                .current
                .iter()
                .chain(self.previous.iter())
                .find(|k| k.id == id)
                .or(self.current.as_ref()),
            None => self.current.as_ref(),
        };
        let Some(key) = key else {
            return format!("plain.{}", B64.encode(value.expose()));
        };
        let mut nonce = [0u8; NONCE_LEN];
        crate::crypto::fill_random(&mut nonce);
        let mut buf = value.expose().as_bytes().to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(b).as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM sealing does not fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!("v1.{}.{}", key.id, B64.encode(out))
    }

    /// Opens a blob sealed for `binding`.
    pub fn unseal(&self, blob: &str, b: &Binding<'_>) -> Result<Secret, SealError> {
        if let Some(plain) = blob.strip_prefix("plain.") {
            if self.current.is_some() {
                return Err(SealError::Plaintext);
            }
            let bytes = B64.decode(plain).map_err(|_| SealError::Format)?;
            return String::from_utf8(bytes)
                .map(Secret::new)
                .map_err(|_| SealError::Format);
        }
        let mut parts = blob.splitn(3, '.');
        let (Some("v1"), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SealError::Format);
        };
        let key = self
            .current
            .iter()
            .chain(self.previous.iter())
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.into()))?;
        let mut bytes = B64.decode(data).map_err(|_| SealError::Format)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Format);
        }
        let mut ct = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| SealError::Format)?;
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(self.aad(b).as_bytes()), &mut ct)
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain.to_vec())
            .map(Secret::new)
            .map_err(|_| SealError::Format)
    }

    /// A fingerprint of a config value: identifies it without revealing it.
    pub fn fingerprint(&self, value: &str) -> String {
        hmac::sign(&self.fingerprint_key, value.as_bytes()).as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Vec<u8> {
        vec![b; 32]
    }

    fn bind(name: &str, rev: u64) -> Binding<'_> {
        Binding {
            kind: "svc",
            name,
            slot: "primary",
            revision: rev,
        }
    }

    #[test]
    fn sealed_values_open_only_where_they_were_sealed() {
        let s = Sealer::new("p:", Some(&key(1)), None).unwrap();
        let v = Secret::new("k".repeat(43));
        let blob = s.seal(&v, &bind("iris", 3), None);
        assert!(!blob.contains(&"k".repeat(43)));
        assert_eq!(s.unseal(&blob, &bind("iris", 3)).unwrap(), v);
        // Another record, another revision, another prefix, another key: refused.
        assert_eq!(s.unseal(&blob, &bind("wine", 3)), Err(SealError::Open));
        assert_eq!(s.unseal(&blob, &bind("iris", 2)), Err(SealError::Open));
        let other_prefix = Sealer::new("q:", Some(&key(1)), None).unwrap();
        assert_eq!(
            other_prefix.unseal(&blob, &bind("iris", 3)),
            Err(SealError::Open)
        );
        let other_key = Sealer::new("p:", Some(&key(2)), None).unwrap();
        assert!(matches!(
            other_key.unseal(&blob, &bind("iris", 3)),
            Err(SealError::UnknownKey(_))
        ));
        // Rotation: the previous key still opens what it sealed.
        let rotating = Sealer::new("p:", Some(&key(2)), Some(&key(1))).unwrap();
        assert_eq!(rotating.unseal(&blob, &bind("iris", 3)).unwrap(), v);
        // Sealing with the key the store names.
        let old_id = s.key_id().unwrap().to_string();
        let resealed = rotating.seal(&v, &bind("iris", 4), Some(&old_id));
        assert_eq!(s.unseal(&resealed, &bind("iris", 4)).unwrap(), v);
    }

    #[test]
    fn keys_are_32_bytes_raw_or_base64_and_plaintext_is_refused_when_sealing() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(key(7));
        let a = Sealer::new("p:", Some(b64.as_bytes()), None).unwrap();
        let b = Sealer::new("p:", Some(format!("{b64}\n").as_bytes()), None).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        assert_eq!(
            a.key_id(),
            Sealer::new("p:", Some(&key(7)), None).unwrap().key_id()
        );
        assert!(matches!(
            Sealer::new("p:", Some(b"too short"), None),
            Err(SealError::KeyLength(_))
        ));
        let plain = Sealer::new("p:", None, None).unwrap();
        let blob = plain.seal(&Secret::new("x".repeat(40)), &bind("iris", 1), None);
        assert!(blob.starts_with("plain."));
        assert_eq!(a.unseal(&blob, &bind("iris", 1)), Err(SealError::Plaintext));
    }

    #[test]
    fn fingerprints_depend_on_the_key_and_hide_the_value() {
        let a = Sealer::new("p:", Some(&key(1)), None).unwrap();
        let b = Sealer::new("p:", Some(&key(2)), None).unwrap();
        let v = "p".repeat(40);
        assert_eq!(a.fingerprint(&v), a.fingerprint(&v));
        assert_ne!(a.fingerprint(&v), b.fingerprint(&v));
        assert!(!a.fingerprint(&v).contains(&v));
        assert_eq!(a.fingerprint(&v).len(), 32);
    }
}

//! The tokens scoregate issues: signing with the current key, and the set of public keys that
//! verify them. The set is built from the store's signing-key records (`SigningSet::build`,
//! which fails on a record that does not decode, before anything is published) and swapped in
//! whole (`Signer::publish`), so a new key from a reload, or from another replica through the
//! shared store, verifies at once without rebuilding any snapshot.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::store::SigningKeyRecord;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `iss` of the tokens scoregate issues.
pub const OWN_ISSUER: &str = "scoregate";

/// A key that verifies scoregate's own tokens.
#[derive(Clone)]
pub struct VerifyKey {
    pub alg: Algorithm,
    pub key: DecodingKey,
}

struct SignKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    /// Signs from this time on (unix seconds), until a newer key's time has come.
    from: u64,
}

/// The decoded signing keys: those that sign (each from its `signs_from`), and every one that
/// verifies, by `kid`.
pub struct SigningSet {
    /// Oldest first; at any moment the newest one whose time has come signs (contract §6: a new
    /// key from a shared store signs only once every replica can verify it).
    signing: Vec<SignKey>,
    verify: HashMap<String, VerifyKey>,
}

#[derive(Debug, thiserror::Error)]
#[error("token signing key {kid}: {why}")]
pub struct SignerError {
    pub kid: String,
    pub why: String,
}

fn algorithm(alg: &str) -> Option<Algorithm> {
    match alg {
        "ES256" => Some(Algorithm::ES256),
        "RS256" => Some(Algorithm::RS256),
        "HS256" => Some(Algorithm::HS256),
        _ => None,
    }
}

impl SigningSet {
    /// Decodes every record; at any moment the newest one whose `signs_from` has come signs.
    pub fn build(records: &[SigningKeyRecord]) -> Result<SigningSet, SignerError> {
        let mut verify = HashMap::with_capacity(records.len());
        let mut signing = Vec::new();
        for r in records {
            let fail = |why: String| SignerError {
                kid: r.kid.clone(),
                why,
            };
            let alg =
                algorithm(&r.alg).ok_or_else(|| fail(format!("unknown algorithm {}", r.alg)))?;
            let (dec, enc) = match alg {
                Algorithm::ES256 => (
                    DecodingKey::from_ec_pem(r.public.as_bytes()),
                    EncodingKey::from_ec_pem(r.private.expose().as_bytes()),
                ),
                Algorithm::RS256 => (
                    DecodingKey::from_rsa_pem(r.public.as_bytes()),
                    EncodingKey::from_rsa_pem(r.private.expose().as_bytes()),
                ),
                _ => {
                    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(r.private.expose())
                        .map_err(|e| fail(e.to_string()))?;
                    (
                        Ok(DecodingKey::from_secret(&secret)),
                        Ok(EncodingKey::from_secret(&secret)),
                    )
                }
            };
            let dec = dec.map_err(|e| fail(e.to_string()))?;
            verify.insert(r.kid.clone(), VerifyKey { alg, key: dec });
            // A retired key may still sign: until the key that retires it reaches `signs_from`.
            if r.retired.is_none_or(|until| until > r.signs_from()) {
                signing.push(SignKey {
                    kid: r.kid.clone(),
                    alg,
                    key: enc.map_err(|e| fail(e.to_string()))?,
                    from: r.signs_from(),
                });
            }
        }
        Ok(SigningSet { signing, verify })
    }

    /// The key that signs at `now` (unix seconds).
    fn signing_at(&self, now: u64) -> Option<&SignKey> {
        self.signing.iter().rev().find(|k| k.from <= now)
    }

    pub fn verify_key(&self, kid: &str) -> Option<&VerifyKey> {
        self.verify.get(kid)
    }

    pub fn signing_kid(&self) -> Option<&str> {
        self.signing_at(unix_now()).map(|k| k.kid.as_str())
    }
}

/// The admin API's token answer (contract §2).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expiry_on: u64,
    pub refresh_after: u64,
}

/// The claims of the tokens scoregate issues: `aud` names the service, `sub` the caller (a
/// subject given to the token endpoint, else a random UUID), `jti` this token.
#[derive(Serialize, Deserialize)]
struct OwnClaims {
    iss: String,
    aud: String,
    sub: String,
    jti: String,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// The signing keys in force, shared by every snapshot.
pub struct Signer {
    set: ArcSwap<SigningSet>,
    /// Notified when a token with this gateway's issuer names a `kid` nobody here knows: another
    /// replica may have made a key this one has not read yet (the shared store re-reads).
    pub unknown_kid: Arc<tokio::sync::Notify>,
}

impl Signer {
    pub fn new(set: SigningSet) -> Signer {
        Signer {
            set: ArcSwap::from_pointee(set),
            unknown_kid: Arc::default(),
        }
    }

    /// Puts a new set in force (reload, or a store change).
    pub fn publish(&self, set: SigningSet) {
        self.set.store(Arc::new(set));
    }

    /// The set in force, for verification.
    pub fn current(&self) -> arc_swap::Guard<Arc<SigningSet>> {
        self.set.load()
    }

    /// Issues a token for `service`.
    pub fn issue(
        &self,
        service: &str,
        subject: Option<&str>,
        lifetime: Duration,
        refresh_after: Duration,
    ) -> Result<TokenResponse, String> {
        let set = self.set.load();
        let now = unix_now();
        let key = set.signing_at(now).ok_or("no signing key in force")?;
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        let claims = OwnClaims {
            iss: OWN_ISSUER.into(),
            aud: service.into(),
            sub: subject.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string),
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now,
            nbf: now,
            exp: now + lifetime.as_secs(),
        };
        let token = jsonwebtoken::encode(&header, &claims, &key.key).map_err(|e| e.to_string())?;
        Ok(TokenResponse {
            access_token: token,
            token_type: "Bearer",
            expiry_on: claims.exp,
            refresh_after: now + refresh_after.as_secs(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenAlgorithm;
    use crate::store::plan::generate_signing_key;

    /// A key written by a replica of a fleet signs only from its `signs_from` (once every replica
    /// has read it); until then the key it retires signs, and both verify.
    #[test]
    fn a_new_key_signs_only_from_its_signs_from() {
        let now = unix_now();
        let mut old = generate_signing_key(TokenAlgorithm::HS256, now - 100).unwrap();
        let mut new = generate_signing_key(TokenAlgorithm::HS256, now).unwrap();
        new.signs_from = Some(now + 30);
        old.retired = Some(now + 30);
        let set = SigningSet::build(&[old.clone(), new.clone()]).unwrap();
        assert_eq!(set.signing_at(now).unwrap().kid, old.kid);
        assert_eq!(set.signing_at(now + 29).unwrap().kid, old.kid);
        assert_eq!(set.signing_at(now + 30).unwrap().kid, new.kid);
        assert!(set.verify_key(&old.kid).is_some() && set.verify_key(&new.kid).is_some());
        // A single replica's key change: the new key signs at once.
        let mut old = generate_signing_key(TokenAlgorithm::HS256, now - 100).unwrap();
        old.retired = Some(now);
        let new = generate_signing_key(TokenAlgorithm::HS256, now).unwrap();
        let set = SigningSet::build(&[old, new.clone()]).unwrap();
        assert_eq!(set.signing_kid(), Some(new.kid.as_str()));
    }
}

//! Token auth for one service: JWTs that scoregate issued for it (`signer`), or that a trusted
//! external issuer (`issuers`) signed.
//!
//! Verification is local and stateless (no call to anything else on the request path):
//! - the algorithm is pinned per key by config, never taken from the token (`alg: none` and
//!   RS/HS confusion fail), `kid` is only a lookup key (`jku`, `x5u`, embedded `jwk` are
//!   ignored), and a `crit` header naming any extension is refused (RFC 7515 §4.1.11: none is
//!   understood here);
//! - `exp` and `nbf` are checked with the configured leeway, `iss` and `aud` are required: tokens
//!   scoregate issues carry `iss = "scoregate"` and `aud = <service name>`, so a token for service
//!   A is refused on B;
//! - a verified token is cached per service under the SHA-256 of the token until its `exp`, so a
//!   repeated token costs a hash and a lookup, not a signature check. The cache is bounded
//!   (`quick_cache`, S3-FIFO: insertion and eviction in O(1)), so a flood of new tokens costs each
//!   one its signature check and nothing more. Caches belong to a snapshot (a reload starts empty
//!   ones) and remember which JWKS generation verified an entry (a JWKS refresh that changes keys
//!   invalidates entries verified with the old set).
//! - a verified token says who it is (`Subject`, for `by = "credential"` rate limits): a
//!   64-bit hash of its (`iss`, `sub`), computed once when it is verified and kept in the cache
//!   entry, so a cache hit costs nothing more.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::issuers::TrustedIssuer;
use super::signer::{OWN_ISSUER, Signer};
use crate::error::AuthFailure;

/// Verified tokens kept per service; a client fleet rarely holds more live tokens than this,
/// and 10k entries are ~1 MiB. When full, the least useful entry goes (S3-FIFO).
const CACHE_CAPACITY: usize = 10_000;

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Which key set verified a cached token, so a changed JWKS invalidates the entry.
#[derive(Clone, Copy)]
enum Source {
    Own,
    Issuer { index: usize, generation: u64 },
}

/// Who a verified token speaks for: a 64-bit hash of its (`iss`, `sub`), so every token of one
/// subject from one issuer shares a rate-limit bucket. A token without `sub` is its own
/// subject: the hash of its (`iss`, `jti`), or of the token itself without a `jti`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subject(pub u64);

impl Subject {
    fn of(iss: &str, sub: Option<&str>, jti: Option<&str>, token: &[u8]) -> Subject {
        let mut h = Sha256::new();
        let (kind, id) = match (sub, jti) {
            (Some(s), _) => (&b"sub"[..], s.as_bytes()),
            (None, Some(j)) => (&b"jti"[..], j.as_bytes()),
            (None, None) => (&b"token"[..], token),
        };
        // Lengths first, so no two (kind, iss, id) triples hash the same bytes.
        for part in [kind, iss.as_bytes(), id] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let d = h.finalize();
        Subject(u64::from_be_bytes(d[..8].try_into().expect("8 bytes")))
    }
}

/// A verified token's cache entry.
#[derive(Clone, Copy)]
pub struct CacheEntry {
    exp: u64,
    source: Source,
    subject: Subject,
}

/// The claims read from a verified token (`iss` and `aud` are checked by the validation).
#[derive(Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    iss: String,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    jti: Option<String>,
}

impl Claims {
    fn subject(&self, token: &[u8]) -> Subject {
        Subject::of(&self.iss, self.sub.as_deref(), self.jti.as_deref(), token)
    }
}

/// Token verification for one service (part of a snapshot).
pub struct ServiceTokens {
    audience: String,
    own: Arc<Signer>,
    issuers: Vec<Arc<TrustedIssuer>>,
    leeway: u64,
    cache: quick_cache::sync::Cache<[u8; 32], CacheEntry>,
}

impl ServiceTokens {
    pub fn new(
        service: &str,
        own: Arc<Signer>,
        issuers: Vec<Arc<TrustedIssuer>>,
        leeway: Duration,
    ) -> Self {
        ServiceTokens {
            audience: service.into(),
            own,
            issuers,
            leeway: leeway.as_secs(),
            cache: quick_cache::sync::Cache::new(CACHE_CAPACITY),
        }
    }

    /// Verifies a token for this service: a cache hit, else a full check (then cached). Says
    /// whose token it is.
    pub fn verify(&self, token: &[u8]) -> Result<Subject, AuthFailure> {
        let hash: [u8; 32] = Sha256::digest(token).into();
        let now = now_s();
        if let Some(e) = self.cache.get(&hash) {
            let current = match e.source {
                Source::Own => true,
                Source::Issuer { index, generation } => {
                    self.issuers[index].generation() == generation
                }
            };
            if now < e.exp && current {
                return Ok(e.subject);
            }
        }
        let entry = self.verify_uncached(token)?;
        if entry.exp > now {
            self.cache.insert(hash, entry);
        }
        Ok(entry.subject)
    }

    /// The full check: signature with a pinned algorithm, `exp`/`nbf` with leeway, `iss`, `aud`.
    /// (The cache-miss path; public so the benchmarks can measure it.)
    pub fn verify_uncached(&self, token: &[u8]) -> Result<CacheEntry, AuthFailure> {
        let token = std::str::from_utf8(token).map_err(|_| AuthFailure::InvalidToken)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthFailure::InvalidToken)?;
        if header.crit.is_some() {
            // No JWS extension is understood here, so none may be critical.
            return Err(AuthFailure::InvalidToken);
        }
        if let Some(kid) = &header.kid {
            let own = self.own.current();
            if let Some(k) = own.verify_key(kid) {
                let v = self.validation(k.alg, OWN_ISSUER, &self.audience);
                let data = jsonwebtoken::decode::<Claims>(token, &k.key, &v).map_err(map_err)?;
                return Ok(CacheEntry {
                    exp: data.claims.exp,
                    source: Source::Own,
                    subject: data.claims.subject(token.as_bytes()),
                });
            }
        }
        if header.kid.is_some() && own_issuer(token) {
            // Signed by a replica of this gateway with a key this one has not read yet: ask
            // for a re-read of the signing keys (rate-limited by the store).
            self.own.unknown_kid.notify_one();
            return Err(AuthFailure::InvalidToken);
        }
        let mut unknown_kid = Vec::new();
        for (index, issuer) in self.issuers.iter().enumerate() {
            let keys = issuer.keys();
            let Some(key) = keys.key(header.kid.as_deref()) else {
                unknown_kid.push(issuer);
                continue;
            };
            let v = self.validation(
                issuer.config.algorithm,
                &issuer.config.issuer,
                &issuer.config.audience,
            );
            return match jsonwebtoken::decode::<Claims>(token, key, &v) {
                Ok(data) if too_long_lived(&data.claims, issuer.config.max_token_lifetime) => {
                    Err(AuthFailure::InvalidToken)
                }
                Ok(data) => Ok(CacheEntry {
                    exp: data.claims.exp,
                    source: Source::Issuer {
                        index,
                        generation: keys.generation,
                    },
                    subject: data.claims.subject(token.as_bytes()),
                }),
                Err(e) => {
                    // The provider may have put new material under a known `kid`: look again
                    // (rate-limited, like an unknown `kid`).
                    if *e.kind() == jsonwebtoken::errors::ErrorKind::InvalidSignature {
                        issuer.refetch_soon();
                    }
                    Err(map_err(e))
                }
            };
        }
        // Nobody knows this key: the issuer may have rotated; look again (rate-limited).
        for issuer in unknown_kid {
            issuer.refetch_soon();
        }
        Err(AuthFailure::InvalidToken)
    }

    fn validation(&self, alg: Algorithm, iss: &str, aud: &str) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[iss]);
        v.set_audience(&[aud]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// An external token whose `exp` lies further ahead than `max` — from now, or from its `iat` —
/// is refused (a year-9999 token must not be accepted and cached forever).
fn too_long_lived(c: &Claims, max: Duration) -> bool {
    let max = max.as_secs();
    c.exp > now_s().saturating_add(max) || c.iat.is_some_and(|iat| c.exp.saturating_sub(iat) > max)
}

/// Whether the (unverified) token claims this gateway as its issuer.
fn own_issuer(token: &str) -> bool {
    use base64::Engine;
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Iss>(&b).ok())
        .is_some_and(|c| c.iss.as_deref() == Some(OWN_ISSUER))
}

fn map_err(e: jsonwebtoken::errors::Error) -> AuthFailure {
    match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthFailure::ExpiredToken,
        _ => AuthFailure::InvalidToken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::signer::SigningSet;
    use crate::config::TokenAlgorithm;
    use crate::store::plan::generate_signing_key;

    fn signer(alg: TokenAlgorithm) -> Arc<Signer> {
        let k = generate_signing_key(alg, now_s()).unwrap();
        Arc::new(Signer::new(SigningSet::build(&[k]).unwrap()))
    }

    fn tokens_for(signer: &Arc<Signer>, service: &str) -> ServiceTokens {
        ServiceTokens::new(service, signer.clone(), vec![], Duration::from_secs(0))
    }

    fn issue(s: &Signer, service: &str) -> String {
        s.issue(
            service,
            None,
            Duration::from_secs(60),
            Duration::from_secs(45),
        )
        .unwrap()
        .access_token
    }

    #[test]
    fn each_algorithm_issues_and_verifies_and_binds_the_service() {
        for alg in [
            TokenAlgorithm::ES256,
            TokenAlgorithm::RS256,
            TokenAlgorithm::HS256,
        ] {
            let s = signer(alg);
            let t = issue(&s, "iris");
            let h = jsonwebtoken::decode_header(&t).unwrap();
            assert_eq!(format!("{:?}", h.alg), alg.as_str());
            assert!(h.kid.is_some());
            let iris = tokens_for(&s, "iris");
            assert!(iris.verify(t.as_bytes()).is_ok());
            assert_eq!(iris.cached(), 1);
            assert!(iris.verify(t.as_bytes()).is_ok());
            let other = tokens_for(&s, "other");
            assert_eq!(other.verify(t.as_bytes()), Err(AuthFailure::InvalidToken));
        }
    }

    #[test]
    fn tokens_of_one_subject_share_a_subject_and_others_do_not() {
        let s = signer(TokenAlgorithm::ES256);
        let v = tokens_for(&s, "iris");
        let issue_as = |sub: Option<&str>| {
            let t = s
                .issue(
                    "iris",
                    sub,
                    Duration::from_secs(60),
                    Duration::from_secs(45),
                )
                .unwrap()
                .access_token;
            v.verify(t.as_bytes()).unwrap()
        };
        let alice = issue_as(Some("alice"));
        assert_eq!(alice, issue_as(Some("alice")));
        // Cache hits answer the same subject.
        assert_ne!(alice, issue_as(Some("bob")));
        assert_ne!(issue_as(None), issue_as(None));
        // Without `sub`: by `jti`, else by the token itself; never equal to a `sub` of the
        // same text.
        let a = Subject::of("i", Some("x"), None, b"t");
        assert_ne!(a, Subject::of("i", None, Some("x"), b"t"));
        assert_ne!(a, Subject::of("i", None, None, b"x"));
        assert_ne!(a, Subject::of("j", Some("x"), None, b"t"));
        assert_eq!(a, Subject::of("i", Some("x"), Some("other"), b"other"));
    }

    #[test]
    fn a_new_signing_set_keeps_old_tokens_verifying_while_their_key_is_in_it() {
        let old = generate_signing_key(TokenAlgorithm::ES256, now_s()).unwrap();
        let s = Arc::new(Signer::new(
            SigningSet::build(std::slice::from_ref(&old)).unwrap(),
        ));
        let t_old = issue(&s, "iris");
        let mut retired = old;
        retired.retired = Some(now_s());
        let new = generate_signing_key(TokenAlgorithm::RS256, now_s()).unwrap();
        s.publish(SigningSet::build(&[retired, new]).unwrap());
        let t_new = issue(&s, "iris");
        let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
        assert_ne!(kid(&t_old), kid(&t_new));
        let v = tokens_for(&s, "iris");
        assert!(v.verify(t_old.as_bytes()).is_ok());
        assert!(v.verify(t_new.as_bytes()).is_ok());
    }

    #[test]
    fn external_tokens_living_longer_than_the_limit_are_refused() {
        let day = Duration::from_secs(86_400);
        let now = now_s();
        let c = |exp, iat| Claims {
            exp,
            iat,
            iss: "x".into(),
            sub: None,
            jti: None,
        };
        assert!(!too_long_lived(&c(now + 3600, Some(now)), day));
        assert!(too_long_lived(&c(now + 2 * 86_400, None), day));
        assert!(
            too_long_lived(&c(253_402_300_799, Some(now)), day),
            "year 9999"
        );
        assert!(too_long_lived(&c(now + 60, Some(now - 3 * 86_400)), day));
    }

    #[test]
    fn a_critical_header_extension_is_refused() {
        use base64::Engine;
        let k = generate_signing_key(TokenAlgorithm::HS256, now_s()).unwrap();
        let s = Arc::new(Signer::new(
            SigningSet::build(std::slice::from_ref(&k)).unwrap(),
        ));
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(k.private.expose())
            .unwrap();
        let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
        h.kid = Some(k.kid.clone());
        h.crit = Some(vec!["exp-unknown".into()]);
        let now = now_s();
        let claims =
            serde_json::json!({"iss": OWN_ISSUER, "aud": "iris", "exp": now + 60, "nbf": now});
        let t = jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert_eq!(
            tokens_for(&s, "iris").verify(t.as_bytes()),
            Err(AuthFailure::InvalidToken)
        );
    }
}

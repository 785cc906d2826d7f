//! The token signing keys a config asks for: a new key when the configured algorithm was
//! applied (latest action wins), signing from `now + activation_delay` in a fleet, retired keys
//! dropped once no token they signed can still be valid; and making a key.

use base64::Engine;

use super::{PlanCtx, PlanError, unix_now};
use crate::config::{TokenAlgorithm, TokensConfig};
use crate::crypto::{self, Secret};
use crate::store::records::{Decision, SigningKeyRecord, SigningRecord, decide, record_applied};

/// The signing keys as the token settings ask (`None`: unchanged), and warnings. Retired keys
/// are kept for `lifetime + leeway` after they stopped signing, then dropped.
pub fn plan_signing(
    current: &SigningRecord,
    tokens: &TokensConfig,
    ctx: &PlanCtx<'_>,
) -> Result<(Option<SigningRecord>, Vec<String>), PlanError> {
    let now = unix_now(ctx.now);
    let alg = tokens.algorithm;
    let keep_for = (tokens.lifetime + tokens.leeway).as_secs();
    let mut warnings = Vec::new();
    let mut next = current.clone();
    if !next.applied.contains_key("algorithm")
        && let Some(k) = next.keys.iter().rev().find(|k| k.retired.is_none())
    {
        let alg = k.alg.clone();
        record_applied(&mut next.applied, "algorithm", alg);
    }
    let has_key = next
        .keys
        .iter()
        .any(|k| k.retired.is_none() && k.alg == alg.as_str());
    match decide(&next.applied, "algorithm", alg.as_str()) {
        Decision::Keep if has_key => {}
        Decision::Keep | Decision::Apply => {
            let signs_from = if next.keys.is_empty() {
                now
            } else {
                now + ctx.activation_delay.as_secs()
            };
            for k in next.keys.iter_mut().filter(|k| k.retired.is_none()) {
                k.retired = Some(signs_from);
            }
            let mut key = generate_signing_key(alg, now)?;
            key.signs_from = (signs_from != now).then_some(signs_from);
            next.keys.push(key);
            record_applied(&mut next.applied, "algorithm", alg.as_str().into());
        }
        Decision::Superseded => warnings.push(format!(
            "tokens.algorithm = {:?} was replaced in the shared store since; signing with the store's key (another replica has a newer config)",
            alg.as_str()
        )),
    }
    next.keys
        .retain(|k| k.retired.is_none_or(|r| r + keep_for >= now));
    if next == *current {
        return Ok((None, warnings));
    }
    next.revision = current.revision + 1;
    Ok((Some(next), warnings))
}

/// A new signing key for `alg`: ES256 and RS256 key pairs in PEM, HS256 a 32-byte secret. RSA
/// generation takes a good fraction of a second: callers run it off the runtime.
pub fn generate_signing_key(alg: TokenAlgorithm, now: u64) -> Result<SigningKeyRecord, PlanError> {
    let kid = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let fail = |why: String| PlanError::KeyGen {
        alg: alg.as_str(),
        why,
    };
    let (private, public) = match alg {
        TokenAlgorithm::HS256 => {
            let mut buf = [0u8; 32];
            crypto::fill_random(&mut buf);
            (
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf),
                String::new(),
            )
        }
        TokenAlgorithm::ES256 | TokenAlgorithm::RS256 => {
            let sig = if alg == TokenAlgorithm::ES256 {
                &rcgen::PKCS_ECDSA_P256_SHA256
            } else {
                &rcgen::PKCS_RSA_SHA256
            };
            let kp = rcgen::KeyPair::generate_for(sig).map_err(|e| fail(e.to_string()))?;
            (kp.serialize_pem(), kp.public_key_pem())
        }
    };
    Ok(SigningKeyRecord {
        kid,
        alg: alg.as_str().into(),
        created: now,
        signs_from: None,
        retired: None,
        private: Secret::new(private),
        public,
    })
}

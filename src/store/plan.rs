//! What a config asks of the store, computed without touching it: records for new services, the
//! presets the contract's "latest action wins" rule applies, keys dropped on a switch of auth
//! mode, removed services dropped, and a signing key for the configured algorithm. `plan` is
//! pure apart from the random keys it makes, so a reload can compute it, build everything else
//! on it, and only then write it (`Store::commit`); a failure anywhere leaves the store as it was.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

use super::records::{KeySlot, ServiceRecord, SigningKeyRecord, StoreState};
use crate::config::{AuthMode, Config, TokenAlgorithm};
use crate::crypto::{self, Secret};

/// Why a config cannot be applied to the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("service {0:?}: the primary and secondary keys would be equal")]
    KeysEqual(String),
    #[error("cannot make a {alg} token signing key: {why}")]
    KeyGen { alg: &'static str, why: String },
}

/// Unix seconds.
pub fn unix_now(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 UTC, whole seconds (`createdAt`, `updatedAt`).
pub fn rfc3339(now: SystemTime) -> String {
    humantime::format_rfc3339_seconds(now).to_string()
}

/// SHA-256 in hex: the file store's fingerprint of applied presets.
pub fn sha256_fingerprint(v: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(v.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The store state `config` asks for, starting from `current`. `fingerprint` identifies a
/// config value without holding it (a preset key is a secret). Retired signing keys are kept
/// for `config.tokens.lifetime + leeway` (their tokens' lifetime), then dropped.
pub fn plan(
    current: &StoreState,
    config: &Config,
    now: SystemTime,
    fingerprint: &dyn Fn(&str) -> String,
) -> Result<StoreState, PlanError> {
    let stamp = rfc3339(now);
    let mut next = StoreState {
        services: Default::default(),
        signing_keys: current.signing_keys.clone(),
    };
    for svc in &config.services {
        let old = current.services.get(&svc.name);
        let mut rec = match old {
            Some(r) => r.clone(),
            None => ServiceRecord {
                id: uuid::Uuid::new_v4().to_string(),
                created_at: stamp.clone(),
                updated_at: stamp.clone(),
                revision: 0,
                auth: svc.auth.as_str().into(),
                primary_key: None,
                secondary_key: None,
                primary_preset: None,
                secondary_preset: None,
            },
        };
        if rec.auth != svc.auth.as_str() {
            // Keys never carry over from another auth mode: switching back to key mode must not
            // bring old, possibly leaked, keys back to life.
            rec.primary_key = None;
            rec.secondary_key = None;
            rec.primary_preset = None;
            rec.secondary_preset = None;
            rec.auth = svc.auth.as_str().into();
        }
        if svc.auth == AuthMode::Key {
            for (slot, preset) in [
                (KeySlot::Primary, &svc.primary_key),
                (KeySlot::Secondary, &svc.secondary_key),
            ] {
                apply_preset(&mut rec, slot, preset.as_ref(), fingerprint);
                let key = rec.key_mut(slot);
                if key.is_none() {
                    *key = Some(Secret::new(crypto::generate_key()));
                }
            }
            if rec.primary_key == rec.secondary_key {
                return Err(PlanError::KeysEqual(svc.name.clone()));
            }
        }
        if let Some(o) = old
            && *o != rec
        {
            rec.updated_at = stamp.clone();
            rec.revision = o.revision + 1;
        }
        next.services.insert(svc.name.clone(), rec);
    }
    ensure_signing_key(
        &mut next,
        config.tokens.algorithm,
        config.tokens.lifetime + config.tokens.leeway,
        unix_now(now),
    )?;
    Ok(next)
}

/// Applies the preset rule to one key: a preset that differs from the one last applied replaces
/// the stored key; an unchanged preset keeps whatever is stored (a later regeneration wins); no
/// preset keeps the stored key.
fn apply_preset(
    rec: &mut ServiceRecord,
    slot: KeySlot,
    preset: Option<&Secret>,
    fingerprint: &dyn Fn(&str) -> String,
) {
    let applied = match slot {
        KeySlot::Primary => &mut rec.primary_preset,
        KeySlot::Secondary => &mut rec.secondary_preset,
    };
    match preset {
        Some(p) => {
            let f = fingerprint(p.expose());
            if applied.as_deref() != Some(f.as_str()) {
                *applied = Some(f);
                *rec.key_mut(slot) = Some(p.clone());
            }
        }
        None => *applied = None,
    }
}

/// Makes `alg` the signing algorithm: a new key (new `kid`) when the current one differs, the
/// old one retired; retired keys older than `keep_for` dropped.
fn ensure_signing_key(
    state: &mut StoreState,
    alg: TokenAlgorithm,
    keep_for: Duration,
    now: u64,
) -> Result<(), PlanError> {
    let current_ok = state
        .signing_keys
        .iter()
        .any(|k| k.retired.is_none() && k.alg == alg.as_str());
    if !current_ok {
        for k in state
            .signing_keys
            .iter_mut()
            .filter(|k| k.retired.is_none())
        {
            k.retired = Some(now);
        }
        state.signing_keys.push(generate_signing_key(alg, now)?);
    }
    state
        .signing_keys
        .retain(|k| k.retired.is_none_or(|r| r + keep_for.as_secs() >= now));
    Ok(())
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
        retired: None,
        private: Secret::new(private),
        public,
    })
}

/// One key of a service replaced (`regenerateKeys`): with `value`, or a fresh random key.
/// Checked at write time: the two keys of a service must differ.
pub fn regenerate(
    rec: &ServiceRecord,
    slot: KeySlot,
    value: Option<Secret>,
    now: SystemTime,
) -> Result<ServiceRecord, &'static str> {
    let new = value.unwrap_or_else(|| Secret::new(crypto::generate_key()));
    let other = match slot {
        KeySlot::Primary => rec.key(KeySlot::Secondary),
        KeySlot::Secondary => rec.key(KeySlot::Primary),
    };
    if other == Some(&new) {
        return Err("keyValue must differ from the other key, or both would be the same key");
    }
    let mut next = rec.clone();
    *next.key_mut(slot) = Some(new);
    next.updated_at = rfc3339(now);
    next.revision += 1;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceConfig;
    use std::path::PathBuf;

    fn config(services: Vec<ServiceConfig>) -> Config {
        let mut c = Config::new_in_code(
            "test",
            "127.0.0.1:0".parse().unwrap(),
            vec![],
            PathBuf::from("/nonexistent"),
        );
        c.services = services;
        c
    }

    fn svc(name: &str, auth: AuthMode) -> ServiceConfig {
        ServiceConfig::new(name, auth, vec!["http://127.0.0.1:1".parse().unwrap()])
    }

    fn plan_now(cur: &StoreState, c: &Config) -> StoreState {
        plan(cur, c, SystemTime::now(), &sha256_fingerprint).unwrap()
    }

    #[test]
    fn keys_are_generated_once_and_kept() {
        let c = config(vec![
            svc("iris", AuthMode::Key),
            svc("open", AuthMode::None),
        ]);
        let first = plan_now(&StoreState::default(), &c);
        let iris = &first.services["iris"];
        assert_eq!(iris.primary_key.as_ref().unwrap().expose().len(), 43);
        assert_ne!(iris.primary_key, iris.secondary_key);
        assert!(first.services["open"].primary_key.is_none());
        assert_eq!(first.signing_keys.len(), 1);
        // Planning again from the result changes nothing.
        assert_eq!(plan_now(&first, &c), first);
    }

    #[test]
    fn presets_follow_latest_action_wins() {
        let preset = Secret::new("p".repeat(40));
        let mut s = svc("iris", AuthMode::Key);
        s.primary_key = Some(preset.clone());
        let st = plan_now(&StoreState::default(), &config(vec![s.clone()]));
        assert_eq!(st.services["iris"].primary_key.as_ref(), Some(&preset));
        // A regeneration replaces the preset, and a reload with the same preset keeps it.
        let regen = regenerate(
            &st.services["iris"],
            KeySlot::Primary,
            None,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(regen.revision, st.services["iris"].revision + 1);
        let mut st2 = st.clone();
        st2.services.insert("iris".into(), regen.clone());
        let st3 = plan_now(&st2, &config(vec![s.clone()]));
        assert_eq!(st3.services["iris"].primary_key, regen.primary_key);
        // A changed preset replaces it.
        let preset2 = Secret::new("q".repeat(40));
        s.primary_key = Some(preset2.clone());
        let st4 = plan_now(&st3, &config(vec![s.clone()]));
        assert_eq!(st4.services["iris"].primary_key.as_ref(), Some(&preset2));
        assert!(st4.services["iris"].revision > st3.services["iris"].revision);
        // Removing the preset keeps the stored key; removing the service drops it.
        s.primary_key = None;
        let st5 = plan_now(&st4, &config(vec![s]));
        assert_eq!(st5.services["iris"].primary_key.as_ref(), Some(&preset2));
        assert!(plan_now(&st5, &config(vec![])).services.is_empty());
    }

    #[test]
    fn a_mode_switch_drops_keys_for_good() {
        let st = plan_now(
            &StoreState::default(),
            &config(vec![svc("iris", AuthMode::Key)]),
        );
        let old = st.services["iris"].primary_key.clone();
        let tok = plan_now(&st, &config(vec![svc("iris", AuthMode::Token)]));
        assert!(tok.services["iris"].primary_key.is_none());
        let back = plan_now(&tok, &config(vec![svc("iris", AuthMode::Key)]));
        assert_ne!(back.services["iris"].primary_key, old);
        assert_eq!(back.services["iris"].id, st.services["iris"].id);
    }

    #[test]
    fn an_algorithm_change_retires_the_old_key_and_drops_it_after_its_tokens() {
        let mut c = config(vec![]);
        let st = plan_now(&StoreState::default(), &c);
        let old_kid = st.signing_keys[0].kid.clone();
        c.tokens.algorithm = TokenAlgorithm::HS256;
        let st2 = plan_now(&st, &c);
        assert_eq!(st2.signing_keys.len(), 2);
        assert!(st2.signing_keys[0].retired.is_some());
        assert_ne!(st2.signing_key().unwrap().kid, old_kid);
        let later =
            SystemTime::now() + c.tokens.lifetime + c.tokens.leeway + Duration::from_secs(5);
        let st3 = plan(&st2, &c, later, &sha256_fingerprint).unwrap();
        assert_eq!(st3.signing_keys.len(), 1);
    }

    #[test]
    fn regenerating_to_the_other_key_is_refused() {
        let st = plan_now(
            &StoreState::default(),
            &config(vec![svc("iris", AuthMode::Key)]),
        );
        let rec = &st.services["iris"];
        let other = rec.secondary_key.clone();
        assert!(regenerate(rec, KeySlot::Primary, other, SystemTime::now()).is_err());
    }
}

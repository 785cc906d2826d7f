//! What a config asks of the store, computed without touching it, one record at a time:
//! a record for each new service, the presets, auth mode and signing algorithm the config sets,
//! a signing key for the configured algorithm, and services the config no longer has dropped.
//! `plan` is pure apart from the random keys it makes, so a reload can compute it, build
//! everything else on it, and only then write it; a failure anywhere leaves the store as it was.
//! The shared store re-runs `plan_service` on a record that another replica changed meanwhile.
//!
//! The rules (contract §2 "latest action wins", §6 "config-driven writes in a fleet"):
//! - A config value (a preset key, the auth mode, the token algorithm) is applied only if it was
//!   never applied before (`records::decide`); an unchanged one keeps whatever the store holds (a
//!   later `regenerateKeys` wins); one that was applied and since replaced is superseded: the
//!   store's value stays, with a warning. Removing a preset keeps the stored key.
//! - Keys never carry over to another auth mode: a switch away from key mode drops them — in a
//!   fleet, only once no other live replica serves the service in key mode.
//! - A service the config no longer names is dropped — in a fleet, only once no other live
//!   replica serves it.
//! - A new signing key signs from `now + activation_delay` (every replica re-reads within
//!   `resync`, so its tokens verify everywhere); the key before it signs until then, and keeps
//!   verifying for a token lifetime after that. On an empty store the first key signs at once.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

use super::records::{
    Decision, KeySlot, ServiceRecord, SigningKeyRecord, SigningRecord, StoreState, decide,
    record_applied,
};
use crate::config::{AuthMode, Config, ServiceConfig, TokenAlgorithm, TokensConfig};
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

/// SHA-256 in hex: the file store's fingerprint of applied config values.
pub fn sha256_fingerprint(v: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(v.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a plan needs to know besides the config and the record.
pub struct PlanCtx<'a> {
    pub now: SystemTime,
    /// Identifies a config value without holding it (a preset key is a secret).
    pub fingerprint: &'a dyn Fn(&str) -> String,
    /// How long a new signing key waits before it signs (0 for a single replica).
    pub activation_delay: Duration,
    /// Whether another live replica serves `service` (in `mode`, or in any mode for `None`).
    pub others_serve: &'a dyn Fn(&str, Option<AuthMode>) -> bool,
}

impl PlanCtx<'_> {
    /// A single replica's context (the file store): nobody else serves anything.
    pub fn single(now: SystemTime, fingerprint: &dyn Fn(&str) -> String) -> PlanCtx<'_> {
        PlanCtx {
            now,
            fingerprint,
            activation_delay: Duration::ZERO,
            others_serve: &|_, _| false,
        }
    }
}

/// The store state `config` asks for, starting from `current`, and the warnings the rules gave.
pub fn plan(
    current: &StoreState,
    config: &Config,
    ctx: &PlanCtx<'_>,
) -> Result<(StoreState, Vec<String>), PlanError> {
    let mut warnings = Vec::new();
    let mut services = BTreeMap::new();
    for svc in &config.services {
        let old = current.services.get(&svc.name);
        let (next, w) = plan_service(old, svc, ctx)?;
        warnings.extend(w);
        match next.or_else(|| old.cloned()) {
            Some(rec) => services.insert(svc.name.clone(), rec),
            None => None,
        };
    }
    for (name, rec) in &current.services {
        if config.service(name).is_none() && (ctx.others_serve)(name, None) {
            // Another replica still serves it (a rollout in progress): keep it for them.
            services.insert(name.clone(), rec.clone());
        }
    }
    let (signing, w) = plan_signing(&current.signing, &config.tokens, ctx)?;
    warnings.extend(w);
    Ok((
        StoreState {
            services,
            signing: signing.unwrap_or_else(|| current.signing.clone()),
        },
        warnings,
    ))
}

/// One service's record as its config asks (`None`: unchanged), and warnings.
pub fn plan_service(
    current: Option<&ServiceRecord>,
    svc: &ServiceConfig,
    ctx: &PlanCtx<'_>,
) -> Result<(Option<ServiceRecord>, Vec<String>), PlanError> {
    let stamp = rfc3339(ctx.now);
    let mut warnings = Vec::new();
    let mut rec = match current {
        Some(r) => r.clone(),
        None => ServiceRecord {
            id: uuid::Uuid::new_v4().to_string(),
            created_at: stamp.clone(),
            updated_at: stamp.clone(),
            revision: 0,
            auth: svc.auth.as_str().into(),
            primary_key: None,
            secondary_key: None,
            applied: BTreeMap::new(),
            primary_preset: None,
            secondary_preset: None,
            traffic: None,
            mirror_traffic: None,
        },
    };
    // Earlier versions kept the preset fingerprints in fields of their own.
    for (field, old) in [
        ("primary_key", rec.primary_preset.take()),
        ("secondary_key", rec.secondary_preset.take()),
    ] {
        if let Some(fp) = old
            && !rec.applied.contains_key(field)
        {
            record_applied(&mut rec.applied, field, fp);
        }
    }
    if !rec.applied.contains_key("auth") && !rec.auth.is_empty() {
        let mode = rec.auth.clone();
        record_applied(&mut rec.applied, "auth", mode);
    }
    match decide(&rec.applied, "auth", svc.auth.as_str()) {
        Decision::Keep => {}
        Decision::Apply => {
            if rec.auth != svc.auth.as_str() && !(ctx.others_serve)(&svc.name, Some(AuthMode::Key))
            {
                // Keys never carry over from another auth mode: switching back to key mode must
                // not bring old, possibly leaked, keys back to life.
                rec.primary_key = None;
                rec.secondary_key = None;
                rec.applied.remove("primary_key");
                rec.applied.remove("secondary_key");
            }
            rec.auth = svc.auth.as_str().into();
            record_applied(&mut rec.applied, "auth", svc.auth.as_str().into());
        }
        Decision::Superseded => warnings.push(format!(
            "service {:?}: auth = {:?} was replaced by {:?} in the shared store; keeping the store's (another replica has a newer config)",
            svc.name,
            svc.auth.as_str(),
            rec.auth
        )),
    }
    if svc.auth == AuthMode::Key {
        for (slot, preset) in [
            (KeySlot::Primary, &svc.primary_key),
            (KeySlot::Secondary, &svc.secondary_key),
        ] {
            let field = match slot {
                KeySlot::Primary => "primary_key",
                KeySlot::Secondary => "secondary_key",
            };
            if let Some(p) = preset {
                let fp = (ctx.fingerprint)(p.expose());
                match decide(&rec.applied, field, &fp) {
                    Decision::Keep => {}
                    Decision::Apply => {
                        *rec.key_mut(slot) = Some(p.clone());
                        record_applied(&mut rec.applied, field, fp);
                    }
                    Decision::Superseded => warnings.push(format!(
                        "service {:?}: the {field} preset was replaced in the shared store since (a regeneration, or a newer config); keeping the store's key",
                        svc.name
                    )),
                }
            }
            let key = rec.key_mut(slot);
            if key.is_none() {
                *key = Some(Secret::new(crypto::generate_key()));
            }
        }
        if rec.primary_key == rec.secondary_key {
            return Err(PlanError::KeysEqual(svc.name.clone()));
        }
    }
    plan_traffic(&mut rec, svc, ctx, &mut warnings);
    match current {
        Some(o) if *o == rec => Ok((None, warnings)),
        Some(o) => {
            rec.updated_at = stamp;
            rec.revision = o.revision + 1;
            Ok((Some(rec), warnings))
        }
        None => {
            rec.revision = 1;
            Ok((Some(rec), warnings))
        }
    }
}

/// The fingerprint of a split or mirror as configured (`-` for no mirror).
pub fn traffic_fingerprint(t: &crate::config::Traffic) -> String {
    if t.is_empty() {
        "-".into()
    } else {
        crate::config::traffic_string(t)
    }
}

/// `traffic` and `mirror_traffic` (contract §8), latest action wins: a value stored by the
/// admin API stays until the config's effective value changes (then the config's is in
/// force); a config value applied once and replaced since is superseded while another replica
/// serves the service (a rollout on two config versions), and applied again otherwise (a
/// single replica rolled back). A stored value that no longer fits the deployments is dropped
/// for the config's, with a warning. Services whose split was never set through the API
/// remember nothing (no store write for them).
fn plan_traffic(
    rec: &mut ServiceRecord,
    svc: &ServiceConfig,
    ctx: &PlanCtx<'_>,
    warnings: &mut Vec<String>,
) {
    for mirror in [false, true] {
        let (field, config_value) = if mirror {
            ("mirror_traffic", &svc.mirror_traffic)
        } else {
            ("traffic", &svc.traffic)
        };
        let stored_is_some = if mirror {
            rec.mirror_traffic.is_some()
        } else {
            rec.traffic.is_some()
        };
        if !stored_is_some && !rec.applied.contains_key(field) {
            continue;
        }
        let fp = traffic_fingerprint(config_value);
        let apply = match decide(&rec.applied, field, &fp) {
            Decision::Keep => false,
            Decision::Apply => true,
            Decision::Superseded if (ctx.others_serve)(&svc.name, None) => {
                warnings.push(format!(
                    "service {:?}: {field} = {{{fp}}} was replaced in the shared store since; keeping the store's (another replica has a newer config)",
                    svc.name
                ));
                false
            }
            Decision::Superseded => true,
        };
        if apply {
            if mirror {
                rec.mirror_traffic = None;
            } else {
                rec.traffic = None;
            }
            record_applied(&mut rec.applied, field, fp);
        }
    }
    if (rec.traffic.is_some() || rec.mirror_traffic.is_some())
        && let Err(e) = crate::config::deployment::effective(
            svc,
            rec.traffic.as_ref(),
            rec.mirror_traffic.as_ref(),
        )
    {
        warnings.push(format!(
            "service {:?}: the traffic split set through the admin API does not fit the configured deployments ({e}); the config's is in force",
            svc.name
        ));
        rec.traffic = None;
        rec.mirror_traffic = None;
        record_applied(
            &mut rec.applied,
            "traffic",
            traffic_fingerprint(&svc.traffic),
        );
        record_applied(
            &mut rec.applied,
            "mirror_traffic",
            traffic_fingerprint(&svc.mirror_traffic),
        );
    }
}

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

    fn plan_at(cur: &StoreState, c: &Config, now: SystemTime) -> StoreState {
        plan(cur, c, &PlanCtx::single(now, &sha256_fingerprint))
            .unwrap()
            .0
    }

    fn plan_now(cur: &StoreState, c: &Config) -> StoreState {
        plan_at(cur, c, SystemTime::now())
    }

    fn two(traffic: &[(&str, u8)]) -> ServiceConfig {
        use crate::config::DeploymentConfig;
        let d = |n: &str, port: u16| {
            DeploymentConfig::new(n, vec![format!("http://127.0.0.1:{port}").parse().unwrap()])
        };
        svc("iris", AuthMode::None).with_deployments(vec![d("blue", 1), d("green", 2)], traffic)
    }

    /// A split stored through the admin API, as `Shared::set_traffic` writes it.
    fn put(st: &StoreState, s: &ServiceConfig, blue: u8, green: u8) -> StoreState {
        let mut st = st.clone();
        let rec = st.services.get_mut("iris").unwrap();
        rec.traffic = Some([("blue".into(), blue), ("green".into(), green)].into());
        rec.mirror_traffic = Some(Default::default());
        record_applied(&mut rec.applied, "traffic", traffic_fingerprint(&s.traffic));
        record_applied(
            &mut rec.applied,
            "mirror_traffic",
            traffic_fingerprint(&s.mirror_traffic),
        );
        st
    }

    #[test]
    fn a_stored_split_follows_latest_action_wins() {
        let a = two(&[("blue", 100)]);
        let st = plan_now(&StoreState::default(), &config(vec![a.clone()]));
        // Never set through the API: nothing is remembered (no store write for it).
        assert_eq!(st.services["iris"].traffic, None);
        assert!(!st.services["iris"].applied.contains_key("traffic"));
        let st = put(&st, &a, 40, 60);
        // The same config keeps the stored split.
        let kept = plan_now(&st, &config(vec![a.clone()]));
        assert_eq!(kept.services["iris"].traffic, st.services["iris"].traffic);
        // A changed config value replaces it.
        let b = two(&[("green", 100)]);
        let changed = plan_now(&kept, &config(vec![b.clone()]));
        assert_eq!(changed.services["iris"].traffic, None);
        assert!(changed.services["iris"].revision > kept.services["iris"].revision);
        // Back to the first config: a single replica applies it (a rollback of the file)...
        let st2 = put(&changed, &b, 30, 70);
        let back = plan_now(&st2, &config(vec![a.clone()]));
        assert_eq!(back.services["iris"].traffic, None);
        // ...while with another replica serving the service, the old value is superseded: a
        // replica still on the old config does not undo the newer one.
        let others = |_: &str, _| true;
        let fp = sha256_fingerprint;
        let ctx = PlanCtx {
            now: SystemTime::now(),
            fingerprint: &fp,
            activation_delay: Duration::ZERO,
            others_serve: &others,
        };
        let (fleet, warnings) = plan(&st2, &config(vec![a.clone()]), &ctx).unwrap();
        assert_eq!(fleet.services["iris"].traffic, st2.services["iris"].traffic);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn a_stored_split_that_no_longer_fits_gives_way_to_the_configs() {
        let a = two(&[("blue", 100)]);
        let st = plan_now(&StoreState::default(), &config(vec![a.clone()]));
        let st = put(&st, &a, 0, 100);
        // green is gone from the config (whose traffic string is unchanged: blue=100,green=0
        // becomes blue=100, a change anyway); here the stored split names a missing deployment
        // with a live weight.
        let mut one = a.clone();
        one.deployments.truncate(1);
        one.traffic.remove("green");
        let mut rec_applied = st.clone();
        record_applied(
            &mut rec_applied.services.get_mut("iris").unwrap().applied,
            "traffic",
            traffic_fingerprint(&one.traffic),
        );
        let (next, warnings) = plan(
            &rec_applied,
            &config(vec![one]),
            &PlanCtx::single(SystemTime::now(), &sha256_fingerprint),
        )
        .unwrap();
        assert_eq!(next.services["iris"].traffic, None);
        assert!(
            warnings.iter().any(|w| w.contains("does not fit")),
            "{warnings:?}"
        );
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
        assert_eq!(iris.revision, 1);
        assert!(first.services["open"].primary_key.is_none());
        assert_eq!(first.signing.keys.len(), 1);
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
        let mut without = s.clone();
        without.primary_key = None;
        let st5 = plan_now(&st4, &config(vec![without]));
        assert_eq!(st5.services["iris"].primary_key.as_ref(), Some(&preset2));
        assert!(plan_now(&st5, &config(vec![])).services.is_empty());
        // A replica still on the first config (preset 1, since superseded) does not undo it.
        let mut old = s.clone();
        old.primary_key = Some(preset.clone());
        let (st6, warnings) = plan(
            &st4,
            &config(vec![old]),
            &PlanCtx::single(SystemTime::now(), &sha256_fingerprint),
        )
        .unwrap();
        assert_eq!(st6.services["iris"].primary_key.as_ref(), Some(&preset2));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn a_mode_switch_drops_keys_for_good_unless_another_replica_still_uses_them() {
        let st = plan_now(
            &StoreState::default(),
            &config(vec![svc("iris", AuthMode::Key)]),
        );
        let old = st.services["iris"].primary_key.clone();
        let tok = plan_now(&st, &config(vec![svc("iris", AuthMode::Token)]));
        assert!(tok.services["iris"].primary_key.is_none());
        let back = plan_now(&tok, &config(vec![svc("iris", AuthMode::Key)]));
        assert!(back.services["iris"].primary_key.is_some());
        assert_ne!(back.services["iris"].primary_key, old);
        assert_eq!(back.services["iris"].id, st.services["iris"].id);
        // With a replica still serving key mode, the keys stay.
        let ctx = PlanCtx {
            now: SystemTime::now(),
            fingerprint: &sha256_fingerprint,
            activation_delay: Duration::ZERO,
            others_serve: &|_, m| m == Some(AuthMode::Key),
        };
        let (fleet, _) = plan(&st, &config(vec![svc("iris", AuthMode::Token)]), &ctx).unwrap();
        assert_eq!(fleet.services["iris"].auth, "token");
        assert_eq!(fleet.services["iris"].primary_key, old);
    }

    #[test]
    fn a_service_another_replica_serves_is_not_dropped() {
        let st = plan_now(
            &StoreState::default(),
            &config(vec![svc("iris", AuthMode::Key)]),
        );
        let ctx = PlanCtx {
            now: SystemTime::now(),
            fingerprint: &sha256_fingerprint,
            activation_delay: Duration::ZERO,
            others_serve: &|name, _| name == "iris",
        };
        let (kept, _) = plan(&st, &config(vec![]), &ctx).unwrap();
        assert_eq!(kept.services["iris"], st.services["iris"]);
    }

    #[test]
    fn a_new_signing_key_waits_for_the_fleet_and_the_old_one_is_dropped_after_its_tokens() {
        let mut c = config(vec![]);
        let now = SystemTime::now();
        let st = plan_at(&StoreState::default(), &c, now);
        let first = st.signing.keys[0].clone();
        assert_eq!(
            st.signing.signing_key(unix_now(now)).unwrap().kid,
            first.kid
        );
        c.tokens.algorithm = TokenAlgorithm::HS256;
        let ctx = PlanCtx {
            now,
            fingerprint: &sha256_fingerprint,
            activation_delay: Duration::from_secs(30),
            others_serve: &|_, _| false,
        };
        let (st2, _) = plan(&st, &c, &ctx).unwrap();
        assert_eq!(st2.signing.keys.len(), 2);
        let t = unix_now(now);
        assert_eq!(
            st2.signing.signing_key(t).unwrap().kid,
            first.kid,
            "the old key signs until the new one is known everywhere"
        );
        assert_ne!(st2.signing.signing_key(t + 30).unwrap().kid, first.kid);
        let later = now
            + Duration::from_secs(30)
            + c.tokens.lifetime
            + c.tokens.leeway
            + Duration::from_secs(5);
        let st3 = plan_at(&st2, &c, later);
        assert_eq!(st3.signing.keys.len(), 1);
        // A replica still configured with the first algorithm does not undo the change.
        c.tokens.algorithm = TokenAlgorithm::ES256;
        let (st4, w) = plan(&st3, &c, &PlanCtx::single(later, &sha256_fingerprint)).unwrap();
        assert_eq!(st4, st3);
        assert_eq!(w.len(), 1);
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

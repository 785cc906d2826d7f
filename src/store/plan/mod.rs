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
//!
//! The signing keys' part lives in `signing`; services, splits and key regeneration here.

mod signing;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::records::{Decision, KeySlot, ServiceRecord, StoreState, decide, record_applied};
use crate::config::{AuthMode, Config, ServiceConfig};
use crate::crypto::{self, Secret};
pub use signing::{generate_signing_key, plan_signing};

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
mod tests;

//! Unit tests of the plan: latest action wins for presets, splits and signing keys; keys made
//! once and kept; what a fleet's other replicas still serve is not dropped.

use super::*;
use crate::config::TokenAlgorithm;
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

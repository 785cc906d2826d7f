//! The shared store's secrets and access (contract §6, "Secrets"): no key or private signing key
//! in Redis or a replica's cache, a sealed blob moved to another record refused without being
//! treated as missing, and the Redis user of the Kubernetes example enough for a fleet.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::Duration;

use scoregate::config::AuthMode;
use scoregate_testkit::fleet::eventually;
use scoregate_testkit::fleet::*;
use scoregate_testkit::metrics::{metrics, value};
use scoregate_testkit::redis::{Redis, use_redis};
use scoregate_testkit::*;

/// One test at a time in this file: they time propagation on two shared cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// No service key (generated or preset) and no private signing key is in any value the store
/// holds, nor in a replica's cache: only sealed blobs and fingerprints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_value_nor_private_signing_key_reaches_the_store_or_the_cache() {
    let _serial = SERIAL.lock().await;
    const PRESET: &str = "fleetSealedPreset0123456789abcdefghijklmnop";
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let mut c = fleet_config(
        &pki,
        &redis,
        &[("iris", AuthMode::Key), ("tok", AuthMode::Token)],
        &backend,
    );
    let mut preset = service("pre", AuthMode::Key, &[backend.url()]);
    preset.primary_key = Some(scoregate::crypto::Secret::new(PRESET));
    c.services.push(preset);
    let a = Gw::start(c).await;
    let r = regenerate(&a, "iris", "Secondary").await;
    assert_eq!(r.status, 200);
    let state = a.server.shared.state();
    let mut secrets: Vec<String> = vec![PRESET.into()];
    for s in ["iris", "pre"] {
        let (p, q) = a.keys(s);
        secrets.push(p);
        secrets.push(q);
    }
    assert!(!state.signing.keys.is_empty());
    for k in &state.signing.keys {
        let pem = k.private.expose();
        assert!(pem.contains("PRIVATE KEY"), "an ES256 key in PEM");
        // Every line of the key's base64 body.
        secrets.extend(
            pem.lines()
                .filter(|l| !l.starts_with("-----") && l.len() > 16)
                .map(str::to_string),
        );
    }
    let dump = redis.dump("test:");
    assert!(
        dump.contains("test:svc:iris") && dump.contains("test:signing"),
        "{dump}"
    );
    let cache = std::fs::read_to_string(
        a.server
            .shared
            .snapshot()
            .config
            .state_dir
            .join("state.json"),
    )
    .unwrap();
    assert!(
        cache.contains("\"source\""),
        "a cache of the shared store: {cache}"
    );
    for (what, text) in [("store", &dump), ("cache", &cache)] {
        assert!(!text.contains("PRIVATE KEY"), "{what}: {text}");
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{what} holds a secret: {text}");
        }
    }
    a.stop().await;
}

/// Service alpha's sealed record copied over service bravo's (`redis-cli`): it does not unseal
/// (the blob is bound to alpha), and it is not treated as missing: every replica keeps bravo's
/// keys in force, nothing regenerates or writes over it, and the failures are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_blob_moved_to_another_record_is_refused_not_treated_as_missing() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let services = [("alpha", AuthMode::Key), ("bravo", AuthMode::Key)];
    let a = Gw::start(fleet_config(&pki, &redis, &services, &backend)).await;
    let b = Gw::start(fleet_config(&pki, &redis, &services, &backend)).await;
    let client = pki.client();
    let (alpha_key, _) = a.keys("alpha");
    let bravo_keys = b.keys("bravo");
    assert_eq!(
        redis.hget("test:svc:alpha", "rev"),
        redis.hget("test:svc:bravo", "rev"),
        "only the record's name tells the blobs apart"
    );
    let moved = redis.hget("test:svc:alpha", "data").unwrap();
    assert_eq!(
        redis
            .cli(&["HSET", "test:svc:bravo", "data", &moved])
            .trim(),
        "0"
    );
    // A spoofed notification costs a read, nothing more.
    redis.cli(&["PUBLISH", "test:changes", "svc:bravo"]);
    for gw in [&a, &b] {
        eventually(
            "the unseal failure is counted",
            Duration::from_secs(3),
            async || {
                value(
                    &metrics(gw).await,
                    "scoregate_store_unseal_failures_total",
                    &[],
                ) > 0.0
            },
        )
        .await;
    }
    // Past a resync, too.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for gw in [&a, &b] {
        assert_eq!(gw.keys("bravo"), bravo_keys, "bravo's keys stay in force");
        assert_eq!(score(&client, gw, "bravo", &bravo_keys.0).await, 200);
        assert_eq!(score(&client, gw, "bravo", &bravo_keys.1).await, 200);
        assert_eq!(score(&client, gw, "bravo", &alpha_key).await, 401);
        assert_eq!(score(&client, gw, "alpha", &alpha_key).await, 200);
        let r = admin_request(
            gw.admin,
            "GET",
            "/v1/services/bravo",
            Some(&gw.admin_token()),
            "",
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(
            value(
                &metrics(gw).await,
                "scoregate_store_unseal_failures_total",
                &[]
            ) >= 2.0
        );
    }
    assert_eq!(
        redis.hget("test:svc:bravo", "data").unwrap(),
        moved,
        "nothing was written over the record (no regeneration, no write-back)"
    );
    a.stop().await;
    b.stop().await;
}

/// The Redis user of the Kubernetes example (`deploy/kubernetes/overlays/redis/secrets/
/// users.acl`: its own password, keys and channels under `scoregate:` only, no dangerous
/// commands) is all a fleet needs: replicas start, change notifications and the registry work,
/// `check`'s inspection answers, and Redis refuses nothing the gateway sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_user_is_all_a_replica_needs() {
    let _serial = SERIAL.lock().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes/overlays/redis/secrets");
    let acl = std::fs::read_to_string(dir.join("users.acl")).unwrap();
    let rules: Vec<&str> = acl
        .lines()
        .find_map(|l| l.strip_prefix("user scoregate "))
        .expect("users.acl has the scoregate user")
        .split_whitespace()
        .collect();
    let example_url = std::fs::read_to_string(dir.join("redis-url")).unwrap();
    let password = example_url
        .trim()
        .strip_prefix("redis://scoregate:")
        .and_then(|r| r.split('@').next())
        .unwrap()
        .to_string();
    let redis = Redis::start();
    let mut args = vec!["ACL", "SETUSER", "scoregate"];
    args.extend(rules);
    assert_eq!(redis.cli(&args).trim(), "OK");
    let pki = Pki::new();
    let backend = Backend::start().await;
    let replica = || {
        let mut c = config(
            &pki,
            vec![
                service("iris", AuthMode::Key, &[backend.url()]),
                service("tok", AuthMode::Token, &[backend.url()]),
            ],
        );
        use_redis(&mut c, &redis, "scoregate:", 1);
        if let scoregate::config::StoreConfig::Redis(r) = &mut c.store {
            r.url = scoregate::crypto::Secret::new(redis.url_with("scoregate", &password));
        }
        c
    };
    let a = Gw::start(replica()).await;
    let b = Gw::start(replica()).await;
    let client = pki.client();
    let r = regenerate(&a, "iris", "Primary").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let new = r.json()["primaryKey"].as_str().unwrap().to_string();
    let took = eventually("B has the new key", Duration::from_secs(3), async || {
        score(&client, &b, "iris", &new).await == 200
    })
    .await;
    assert!(took < Duration::from_secs(1), "notified: {took:?}");
    assert_eq!(
        score(&client, &b, "tok", &token(&a, "tok").await).await,
        200
    );
    eventually(
        "both replicas registered",
        Duration::from_secs(7),
        async || {
            let r = admin_request(a.admin, "GET", "/v1/replicas", Some(&a.admin_token()), "").await;
            r.json().as_array().unwrap().len() == 2
        },
    )
    .await;
    let (lines, warnings) = scoregate::store::admin::inspect(&replica()).await.unwrap();
    let lines = lines.join("\n");
    assert!(
        lines.contains("answered (Redis 7.") && lines.contains("2 live replica(s)"),
        "{lines}"
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(!redis.keys("scoregate:").is_empty());
    assert_eq!(
        redis.cli(&["ACL", "LOG"]).trim(),
        "",
        "Redis refused something"
    );
    a.stop().await;
    b.stop().await;
}

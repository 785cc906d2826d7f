//! The shared store's faults (contract §6, "Store unreachable", "Start while the store is
//! unreachable", "A store that lost data"): Redis killed and frozen under load on two replicas,
//! restarted empty, a reload while it is down, a replica starting from its cache, and the store
//! metrics through it all.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::{Duration, Instant};

use scoregate::config::{AuthMode, Config};
use scoregate_testkit::fleet::eventually;
use scoregate_testkit::fleet::*;
use scoregate_testkit::metrics::{metrics, value};
use scoregate_testkit::redis::{Redis, use_redis};
use scoregate_testkit::*;

/// One test at a time in this file: they time outages on two shared cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fleet_config(pki: &Pki, redis: &Redis, backend: &Backend) -> Config {
    let mut c = config(
        pki,
        vec![
            service("iris", AuthMode::Key, &[backend.url()]),
            service("tok", AuthMode::Token, &[backend.url()]),
        ],
    );
    use_redis(&mut c, redis, "test:", 1);
    c
}

async fn admin(gw: &Gw, method: &str, path: &str, body: &str) -> Resp {
    admin_request(gw.admin, method, path, Some(&gw.admin_token()), body).await
}

async fn regenerate(gw: &Gw, key_type: &str) -> Resp {
    admin(
        gw,
        "POST",
        "/v1/services/iris/regenerateKeys",
        &format!(r#"{{"keyType": "{key_type}"}}"#),
    )
    .await
}

async fn token(gw: &Gw) -> String {
    let r = admin(gw, "POST", "/v1/services/tok/token", "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["accessToken"].as_str().unwrap().to_string()
}

async fn score(client: &TlsClient, gw: &Gw, service: &str, credential: &str) -> Resp {
    client
        .h1(gw.addr)
        .await
        .score(service, credential, BODY)
        .await
}

/// A 503 `StoreUnavailable` with a `Retry-After` in whole seconds.
fn assert_store_unavailable(r: &Resp, what: &str) {
    assert_eq!(r.status, 503, "{what}: {:?}", r.body);
    assert_eq!(r.code(), "StoreUnavailable", "{what}");
    assert!(
        r.header("retry-after").parse::<u32>().is_ok_and(|s| s >= 1),
        "{what}: Retry-After {:?}",
        r.header("retry-after")
    );
}

fn load_targets(a: &Gw, b: &Gw, key: &str, tokens: (&str, &str)) -> Vec<Target> {
    let t = |gw: &Gw, service: &str, credential: &str| Target {
        addr: gw.addr,
        service: service.into(),
        credential: credential.into(),
    };
    vec![
        t(a, "iris", key),
        t(b, "iris", key),
        t(a, "tok", tokens.0),
        t(b, "tok", tokens.1),
    ]
}

fn assert_no_failures(report: &[(u64, u64, Vec<String>)], at_least: u64) {
    eprintln!(
        "scoring requests per target (ok, failed): {:?}",
        report.iter().map(|(ok, f, _)| (ok, f)).collect::<Vec<_>>()
    );
    for (i, (ok, failed, errors)) in report.iter().enumerate() {
        assert_eq!(
            *failed, 0,
            "target {i}: {ok} ok, {failed} failed: {errors:?}"
        );
        assert!(*ok >= at_least, "target {i}: only {ok} requests");
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Outage {
    /// SIGKILL: connections refused at once; back by a restart on the same port (with the data
    /// of a snapshot taken just before, as a Redis with persistence).
    Killed,
    /// SIGSTOP: connections stay open and nothing answers (timeouts); back by SIGCONT.
    Frozen,
}

/// Two replicas under load (keys and tokens, keep-alive HTTP/1.1, HTTP/2 and a fresh connection
/// per request, on each) while Redis goes away and comes back: not one scoring request fails;
/// meanwhile admin writes answer 503 `StoreUnavailable` with `Retry-After` and change nothing,
/// reads answer from memory with `x-scoregate-store: unreachable`, new tokens are issued and
/// verify on the other replica; once Redis is back, writes work again within 5 s.
async fn outage_under_load(outage: Outage) {
    let mut redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let a = Gw::start(fleet_config(&pki, &redis, &backend)).await;
    let b = Gw::start(fleet_config(&pki, &redis, &backend)).await;
    let client = pki.client();
    let keys = a.keys("iris");
    assert_eq!(b.keys("iris"), keys);
    let (ta, tb) = (token(&a).await, token(&b).await);
    let load = Load::start(&client, &load_targets(&a, &b, &keys.0, (&tb, &ta)));
    tokio::time::sleep(Duration::from_secs(1)).await;

    match outage {
        Outage::Killed => {
            redis.save();
            redis.kill();
        }
        Outage::Frozen => redis.freeze(),
    }
    let down = Instant::now();
    for gw in [&a, &b] {
        assert_store_unavailable(
            &regenerate(gw, "Primary").await,
            "a write during the outage",
        );
    }
    for gw in [&a, &b] {
        let took = eventually(
            "the replica reports the store unreachable",
            Duration::from_secs(6),
            async || {
                admin(gw, "GET", "/v1/services", "")
                    .await
                    .header("x-scoregate-store")
                    == "unreachable"
            },
        )
        .await;
        assert!(took < Duration::from_secs(6));
    }
    for (gw, other) in [(&a, &b), (&b, &a)] {
        let r = regenerate(gw, "Secondary").await;
        assert_store_unavailable(&r, "regenerateKeys while unreachable");
        assert_eq!(r.header("x-scoregate-store"), "unreachable");
        let r = admin(gw, "POST", "/v1/services/iris/listKeys", "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-scoregate-store"), "unreachable");
        assert_eq!(r.json()["primaryKey"], keys.0.as_str());
        assert_eq!(r.json()["secondaryKey"], keys.1.as_str());
        for path in ["/v1/services", "/v1/services/iris"] {
            let r = admin(gw, "GET", path, "").await;
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(r.header("x-scoregate-store"), "unreachable", "{path}");
        }
        let r = admin(gw, "GET", "/v1/services", "").await;
        assert_eq!(r.json().as_array().unwrap().len(), 2);
        // New tokens are issued, and verify on the other replica.
        let fresh = token(gw).await;
        assert_eq!(score(&client, other, "tok", &fresh).await.status, 200);
        assert_eq!(admin(gw, "GET", "/readyz", "").await.status, 200);
        assert_eq!(value(&metrics(gw).await, "scoregate_store_up", &[]), 0.0);
        assert_eq!(gw.keys("iris"), keys, "nothing changed");
    }
    // Several seconds of load through the outage.
    let elapsed = down.elapsed();
    if elapsed < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_secs(3) - elapsed).await;
    }

    match outage {
        Outage::Killed => redis.start_again(),
        Outage::Frozen => redis.thaw(),
    }
    let back = Instant::now();
    let mut new_secondary = String::new();
    for gw in [&a, &b] {
        eventually("writes work again", Duration::from_secs(6), async || {
            let r = regenerate(gw, "Secondary").await;
            match r.status {
                200 => {
                    assert_eq!(r.header("x-scoregate-store"), "up");
                    assert_eq!(r.json()["primaryKey"], keys.0.as_str());
                    new_secondary = r.json()["secondaryKey"].as_str().unwrap().to_string();
                    true
                }
                503 => false,
                s => panic!("{s}: {:?}", r.body),
            }
        })
        .await;
    }
    assert!(
        back.elapsed() <= Duration::from_secs(5),
        "{:?}",
        back.elapsed()
    );
    let want = (keys.0.clone(), new_secondary.clone());
    eventually(
        "both replicas hold the last write",
        Duration::from_secs(3),
        async || a.keys("iris") == want && b.keys("iris") == want,
    )
    .await;
    for gw in [&a, &b] {
        assert_eq!(value(&metrics(gw).await, "scoregate_store_up", &[]), 1.0);
        assert_eq!(score(&client, gw, "iris", &new_secondary).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.finish().await;
    assert_no_failures(&report, 50);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_fails_no_scoring_request() {
    let _serial = SERIAL.lock().await;
    outage_under_load(Outage::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_under_load_fails_no_scoring_request() {
    let _serial = SERIAL.lock().await;
    outage_under_load(Outage::Frozen).await;
}

/// Redis restarted empty (no persistence) under load: the replicas write back what they know,
/// with the revisions they know — no key is regenerated, clients see nothing — and a replica
/// that starts afterwards reads the same keys and signing keys from the store. An admin write
/// right after the restart answers 200 or 503, never 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_gets_the_records_written_back() {
    let _serial = SERIAL.lock().await;
    let mut redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let a = Gw::start(fleet_config(&pki, &redis, &backend)).await;
    let b = Gw::start(fleet_config(&pki, &redis, &backend)).await;
    let client = pki.client();
    let keys = a.keys("iris");
    let t = token(&a).await;
    let records = ["test:svc:iris", "test:svc:tok", "test:signing"];
    let revs: Vec<Option<String>> = records.iter().map(|k| redis.hget(k, "rev")).collect();
    assert!(revs.iter().all(Option::is_some), "{revs:?}");
    let load = Load::start(&client, &load_targets(&a, &b, &keys.0, (&t, &t)));
    tokio::time::sleep(Duration::from_millis(700)).await;

    redis.restart_empty();
    let back = Instant::now();
    assert!(redis.keys("test:").is_empty(), "empty");
    eventually(
        "the records are written back",
        Duration::from_secs(5),
        async || {
            redis.hget("test:meta", "version").is_some()
                && records.iter().all(|k| redis.hget(k, "rev").is_some())
        },
    )
    .await;
    let now: Vec<Option<String>> = records.iter().map(|k| redis.hget(k, "rev")).collect();
    assert_eq!(
        now, revs,
        "written back with the revisions the replicas knew"
    );
    assert_eq!(a.keys("iris"), keys, "no key regenerated");
    assert_eq!(b.keys("iris"), keys);
    // A replica that starts now reads them from the store.
    let c = Gw::start(fleet_config(&pki, &redis, &backend)).await;
    assert_eq!(c.keys("iris"), keys);
    assert_eq!(score(&client, &c, "tok", &t).await.status, 200);
    assert_eq!(score(&client, &c, "iris", &keys.1).await.status, 200);
    // Writes work, and reach every replica.
    let r = regenerate(&b, "Secondary").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let want = (
        keys.0.clone(),
        r.json()["secondaryKey"].as_str().unwrap().to_string(),
    );
    eventually(
        "every replica has the write",
        Duration::from_secs(3),
        async || a.keys("iris") == want && b.keys("iris") == want && c.keys("iris") == want,
    )
    .await;
    let report = load.finish().await;
    assert_no_failures(&report, 30);
    assert!(back.elapsed() < Duration::from_secs(10));

    // Again, with an admin write racing the write-back: 503 or 200, never "no such service".
    redis.restart_empty();
    let back = Instant::now();
    loop {
        let r = regenerate(&a, "Primary").await;
        match r.status {
            200 => break,
            503 => assert_eq!(r.code(), "StoreUnavailable"),
            s => panic!("{s} {:?} after the store lost its data", r.body),
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "writes do not come back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually("the records are back", Duration::from_secs(5), async || {
        records.iter().all(|k| redis.hget(k, "rev").is_some())
    })
    .await;
    eventually(
        "every replica converges",
        Duration::from_secs(3),
        async || a.keys("iris") == b.keys("iris") && b.keys("iris") == c.keys("iris"),
    )
    .await;
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

/// While the store is down, a reload that needs a store write (a new key-mode service, a changed
/// preset) is refused whole with 503 `StoreUnavailable` — its new certificate is not applied
/// either — and one that needs none (a certificate) is applied. Once the store is back, the
/// refused reload goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_needs_a_store_write_is_refused_while_the_store_is_down() {
    let _serial = SERIAL.lock().await;
    const PRESET: &str = "fleetReloadPreset0123456789abcdefghijklmnop";
    let mut redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let site = Site::new(&pki, &redis, 1);
    let iris = service_toml("iris", "key", &[backend.url()], "");
    let extra = service_toml("extra", "key", &[backend.url()], "");
    let preset = service_toml(
        "iris",
        "key",
        &[backend.url()],
        &format!("primary_key = \"{PRESET}\""),
    );
    let write = |rest: &str| site.write_config("127.0.0.1:0", "127.0.0.1:0", REDIS_SETTINGS, rest);
    write(&iris);
    let a = Gw::start(site.load()).await;
    let client = pki.client();
    let serial1 = presented_serial(&client, a.addr, "localhost").await;
    let keys = a.keys("iris");
    redis.save();
    redis.kill();
    eventually("unreachable", Duration::from_secs(6), async || {
        admin(&a, "GET", "/v1/services", "")
            .await
            .header("x-scoregate-store")
            == "unreachable"
    })
    .await;

    let serial2 = site.write_cert(&pki, 2);
    write(&format!("{iris}{extra}"));
    let r = admin(&a, "POST", "/v1/reload", "").await;
    assert_store_unavailable(&r, "a reload with a new key-mode service");
    assert_eq!(
        presented_serial(&client, a.addr, "localhost").await,
        serial1,
        "nothing applied"
    );
    assert_eq!(
        score(&client, &a, "extra", "whatever").await.code(),
        "ServiceNotFound"
    );
    let r = admin(&a, "GET", "/v1/services", "").await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);

    write(&preset);
    assert_store_unavailable(
        &admin(&a, "POST", "/v1/reload", "").await,
        "a reload with a changed preset",
    );
    assert_eq!(a.keys("iris"), keys);
    assert_eq!(score(&client, &a, "iris", PRESET).await.status, 401);

    let serial3 = site.write_cert(&pki, 3);
    assert_ne!(serial3, serial2);
    write(&iris);
    let r = admin(&a, "POST", "/v1/reload", "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["changed"], serde_json::json!(["tls.certificates"]));
    assert_eq!(
        presented_serial(&client, a.addr, "localhost").await,
        serial3
    );
    assert_eq!(score(&client, &a, "iris", &keys.0).await.status, 200);

    redis.start_again();
    write(&format!("{iris}{extra}"));
    eventually(
        "the reload goes through once the store is back",
        Duration::from_secs(6),
        async || admin(&a, "POST", "/v1/reload", "").await.status == 200,
    )
    .await;
    let extra_keys = a.keys("extra");
    assert_eq!(score(&client, &a, "extra", &extra_keys.0).await.status, 200);
    assert!(redis.hget("test:svc:extra", "rev").is_some());
    a.stop().await;
}

/// A replica that ran once has a cache of the store in its state dir; started again while Redis
/// is down, it is ready and serves the keys and tokens it knows; a key-mode service missing from
/// its cache answers 503 `StoreUnavailable` with `Retry-After` until the store is back, and then
/// gets its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_cache_starts_and_serves_while_the_store_is_down() {
    let _serial = SERIAL.lock().await;
    let mut redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let site = Site::new(&pki, &redis, 1);
    let known = service_toml("iris", "key", &[backend.url()], "")
        + &service_toml("tok", "token", &[backend.url()], "");
    site.write_config("127.0.0.1:0", "127.0.0.1:0", REDIS_SETTINGS, &known);
    let first = Gw::start(site.load()).await;
    let keys = first.keys("iris");
    let t = token(&first).await;
    first.stop().await;
    let cache = std::fs::read_to_string(site.state_dir().join("state.json")).unwrap();
    assert!(
        cache.contains("\"source\"") && cache.contains("syncedAt"),
        "{cache}"
    );
    assert!(!cache.contains(&keys.0), "secrets are sealed in the cache");

    redis.save();
    redis.kill();
    let fresh = service_toml("fresh", "key", &[backend.url()], "");
    site.write_config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        REDIS_SETTINGS,
        &format!("{known}{fresh}"),
    );
    let started = Instant::now();
    let a = Gw::start(site.load()).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let client = pki.client();
    assert_eq!(admin(&a, "GET", "/readyz", "").await.status, 200);
    assert_eq!(a.keys("iris"), keys);
    assert_eq!(score(&client, &a, "iris", &keys.0).await.status, 200);
    assert_eq!(score(&client, &a, "iris", &keys.1).await.status, 200);
    assert_eq!(score(&client, &a, "iris", "wrong-key").await.status, 401);
    assert_eq!(score(&client, &a, "tok", &t).await.status, 200);
    let new_token = token(&a).await;
    assert_eq!(score(&client, &a, "tok", &new_token).await.status, 200);
    let r = score(&client, &a, "fresh", "any-key").await;
    assert_store_unavailable(&r, "a key-mode service missing from the cache");
    let r = admin(&a, "GET", "/v1/services/iris", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-scoregate-store"), "unreachable");

    redis.start_again();
    let mut fresh_key = String::new();
    eventually(
        "the new service gets its keys once the store is back",
        Duration::from_secs(6),
        async || {
            let r = admin(&a, "POST", "/v1/services/fresh/listKeys", "").await;
            if r.status == 200 {
                fresh_key = r.json()["primaryKey"].as_str().unwrap().to_string();
            }
            r.status == 200
        },
    )
    .await;
    assert_eq!(score(&client, &a, "fresh", &fresh_key).await.status, 200);
    assert_eq!(score(&client, &a, "fresh", "any-key").await.status, 401);
    assert_eq!(score(&client, &a, "iris", &keys.0).await.status, 200);
    assert!(redis.hget("test:svc:fresh", "rev").is_some());
    a.stop().await;
}

/// The store metrics: present from the start, and moving — up/down, the last full read, the
/// operations by kind and result, the live replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_metrics_follow_the_store() {
    let _serial = SERIAL.lock().await;
    let mut redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let before = scoregate::store::plan::unix_now(std::time::SystemTime::now()) as f64;
    let a = Gw::start(fleet_config(&pki, &redis, &backend)).await;
    let ops = |m: &[scoregate_testkit::metrics::Sample], op: &str, result: &str| {
        value(
            m,
            "scoregate_store_operations_total",
            &[("op", op), ("result", result)],
        )
    };
    let m = metrics(&a).await;
    for op in ["read", "write", "script", "publish", "subscribe", "ping"] {
        for result in ["ok", "error", "timeout"] {
            assert!(
                m.iter()
                    .any(|s| s.name == "scoregate_store_operations_total"
                        && s.labels.get("op").map(String::as_str) == Some(op)
                        && s.labels.get("result").map(String::as_str) == Some(result)),
                "{op}/{result}"
            );
        }
    }
    assert_eq!(value(&m, "scoregate_store_up", &[]), 1.0);
    assert_eq!(value(&m, "scoregate_store_unseal_failures_total", &[]), 0.0);
    assert_eq!(value(&m, "scoregate_store_replicas", &[]), 1.0);
    assert!(ops(&m, "read", "ok") >= 1.0);
    assert!(ops(&m, "script", "ok") >= 1.0);
    // The subscription is made by the sync task, in the background of the start.
    eventually(
        "the subscription is counted",
        Duration::from_secs(3),
        async || ops(&metrics(&a).await, "subscribe", "ok") >= 1.0,
    )
    .await;
    let synced = value(&m, "scoregate_store_last_sync_timestamp_seconds", &[]);
    assert!(synced >= before, "{synced} {before}");

    // The resync reads the store again (2 s).
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let m2 = metrics(&a).await;
    assert!(value(&m2, "scoregate_store_last_sync_timestamp_seconds", &[]) > synced);
    assert!(ops(&m2, "read", "ok") > ops(&m, "read", "ok"));
    assert_eq!(regenerate(&a, "Primary").await.status, 200);
    let m3 = metrics(&a).await;
    assert!(ops(&m3, "script", "ok") > ops(&m2, "script", "ok"));

    redis.save();
    redis.kill();
    let failed = |m: &[scoregate_testkit::metrics::Sample]| {
        ["read", "write", "script", "ping"]
            .iter()
            .map(|op| ops(m, op, "error") + ops(m, op, "timeout"))
            .sum::<f64>()
    };
    eventually(
        "scoregate_store_up turns 0",
        Duration::from_secs(6),
        async || value(&metrics(&a).await, "scoregate_store_up", &[]) == 0.0,
    )
    .await;
    let m4 = metrics(&a).await;
    assert!(failed(&m4) > failed(&m3));
    let synced4 = value(&m4, "scoregate_store_last_sync_timestamp_seconds", &[]);
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(
        value(
            &metrics(&a).await,
            "scoregate_store_last_sync_timestamp_seconds",
            &[]
        ),
        synced4,
        "no full read while the store is down"
    );

    redis.start_again();
    eventually(
        "scoregate_store_up turns 1",
        Duration::from_secs(5),
        async || value(&metrics(&a).await, "scoregate_store_up", &[]) == 1.0,
    )
    .await;
    eventually(
        "a full read after the store is back",
        Duration::from_secs(3),
        async || {
            value(
                &metrics(&a).await,
                "scoregate_store_last_sync_timestamp_seconds",
                &[],
            ) > synced4
        },
    )
    .await;
    let m5 = metrics(&a).await;
    assert!(ops(&m5, "ping", "ok") >= 1.0);
    assert_eq!(
        value(&m5, "scoregate_store_unseal_failures_total", &[]),
        0.0
    );
    a.stop().await;
}

/// A store that acknowledged a write and then lost it, and meanwhile got an older copy of the
/// record (another replica's write-back after Redis restarted empty, found by bench/fleet.sh):
/// the replica that made the write puts its newer copy back at the next full read and keeps it
/// in force. It used to adopt the older copy, so the regenerated key came back on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_write_is_written_back_and_the_replaced_key_never_comes_back() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let a = Gw::start(fleet_config(&pki, &redis, &backend)).await;
    let client = pki.client();
    let record = "test:svc:iris";
    let old_fields: Vec<String> = redis
        .cli(&["HGETALL", record])
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        old_fields.len() >= 2 && old_fields.len().is_multiple_of(2),
        "{old_fields:?}"
    );
    let old_rev = redis.hget(record, "rev").unwrap();
    let (old_primary, _) = a.keys("iris");

    let r = regenerate(&a, "Primary").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let new_primary = r.json()["primaryKey"].as_str().unwrap().to_string();
    let new_rev = redis.hget(record, "rev").unwrap();
    assert_ne!(new_rev, old_rev);

    // The store loses the write and holds the older copy again (in one step: a replica that
    // read the record missing in between would take it for a new service).
    let mut args = vec![
        "EVAL",
        "redis.call('DEL', KEYS[1]); return redis.call('HSET', KEYS[1], unpack(ARGV))",
        "1",
        record,
    ];
    args.extend(old_fields.iter().map(String::as_str));
    let set = redis.cli(&args);
    assert_eq!(set.trim(), (old_fields.len() / 2).to_string(), "{set}");

    // The next full read (resync: 2 s here) writes the newer copy back.
    eventually(
        "the newer record is written back",
        Duration::from_secs(6),
        async || redis.hget(record, "rev").as_deref() == Some(new_rev.as_str()),
    )
    .await;
    assert_eq!(a.keys("iris").0, new_primary, "the new key stays in force");
    assert_eq!(score(&client, &a, "iris", &new_primary).await.status, 200);
    assert_eq!(
        score(&client, &a, "iris", &old_primary).await.status,
        401,
        "the replaced key never comes back"
    );
    // A replica that starts now reads the newer record.
    let b = Gw::start(fleet_config(&pki, &redis, &backend)).await;
    assert_eq!(b.keys("iris").0, new_primary);
    a.stop().await;
    b.stop().await;
}

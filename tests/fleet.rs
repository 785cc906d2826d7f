//! Several replicas sharing one state in a real `redis-server` (contract §6).
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::{Duration, Instant};

use scoregate::config::{AuthMode, Config};
use scoregate_testkit::redis::{Redis, use_redis};
use scoregate_testkit::*;

const BODY: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

fn fleet_config(pki: &Pki, redis: &Redis, backend: &Backend) -> Config {
    let mut c = config(pki, vec![service("iris", AuthMode::Key, &[backend.url()])]);
    use_redis(&mut c, redis, "test:", 1);
    c
}

async fn eventually(what: &str, within: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let t = Instant::now();
    while !ok().await {
        assert!(t.elapsed() < within, "timed out after {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(client: &TlsClient, gw: &Gw, key: &str) -> u16 {
    client
        .h1(gw.addr)
        .await
        .score("iris", key, BODY)
        .await
        .status
}

/// A regeneration through replica A is in force on replica B: the new key works there, the
/// old one is refused (within a second, by the change notification).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_regenerated_through_one_replica_is_in_force_on_the_other() {
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let a = Gw::start(fleet_config(&pki, &redis, &backend)).await;
    let b = Gw::start(fleet_config(&pki, &redis, &backend)).await;
    assert_eq!(a.keys("iris"), b.keys("iris"), "one key pair for the fleet");
    let (old, _) = a.keys("iris");
    let client = pki.client();
    assert_eq!(status(&client, &b, &old).await, 200);
    let r = admin_request(
        a.admin,
        "POST",
        "/v1/services/iris/regenerateKeys",
        Some(&a.admin_token()),
        r#"{"keyType": "Primary"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-scoregate-store"), "up");
    let new = r.json()["primaryKey"].as_str().unwrap().to_string();
    let started = Instant::now();
    eventually("B has the new key", Duration::from_secs(3), async || {
        status(&client, &b, &new).await == 200
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        status(&client, &b, &old).await,
        401,
        "the old key is refused on B"
    );
    assert_eq!(status(&client, &a, &old).await, 401);
    // No key value in any store value.
    let dump = redis.dump("test:");
    assert!(!dump.contains(&new) && !dump.contains(&old), "{dump}");
    a.stop().await;
    b.stop().await;
}

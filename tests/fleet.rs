//! Several replicas sharing one state in a real `redis-server` (contract §6): what one replica
//! changes is in force on the others (notifications, the resync, an unknown `kid`), concurrent
//! writes both land, an old config does not undo a newer one, and the replica registry. Sealed
//! secrets and the Redis user are in `fleet_secrets.rs`, the store's faults in `fleet_faults.rs`,
//! the binary's start-up, `check` and `store import` in `fleet_binary.rs`.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::{Duration, Instant};

use scoregate::config::AuthMode;
use scoregate_testkit::fleet::eventually;
use scoregate_testkit::fleet::*;
use scoregate_testkit::metrics::{metrics, value};
use scoregate_testkit::redis::Redis;
use scoregate_testkit::*;

/// One test at a time in this file: they time propagation on two shared cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn kid_and_alg(jwt: &str) -> (String, String) {
    let h = jsonwebtoken::decode_header(jwt).unwrap();
    (h.kid.unwrap(), format!("{:?}", h.alg))
}

/// A Redis user that may do everything but subscribe: a replica connected as it never gets a
/// change notification, so it learns of changes only by its own re-reads.
fn add_user_without_subscribe(redis: &Redis) -> String {
    let out = redis.cli(&[
        "ACL",
        "SETUSER",
        "nosub",
        "on",
        ">nosub-password",
        "~*",
        "&*",
        "+@all",
        "-subscribe",
        "-psubscribe",
        "-ssubscribe",
    ]);
    assert_eq!(out.trim(), "OK");
    redis.url_with("nosub", "nosub-password")
}

/// Whether Redis refused a SUBSCRIBE of the `nosub` user (the ACL log).
fn subscribe_was_refused(redis: &Redis) -> bool {
    let log = redis.cli(&["ACL", "LOG"]);
    log.contains("nosub") && log.to_ascii_lowercase().contains("subscribe")
}

/// A regeneration through replica A is in force on replica B: the new key works there, the
/// old one is refused (within a second, by the change notification).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_regenerated_through_one_replica_is_in_force_on_the_other() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let a = Gw::start(fleet_config(
        &pki,
        &redis,
        &[("iris", AuthMode::Key)],
        &backend,
    ))
    .await;
    let b = Gw::start(fleet_config(
        &pki,
        &redis,
        &[("iris", AuthMode::Key)],
        &backend,
    ))
    .await;
    assert_eq!(a.keys("iris"), b.keys("iris"), "one key pair for the fleet");
    let (old, _) = a.keys("iris");
    let client = pki.client();
    assert_eq!(score(&client, &b, "iris", &old).await, 200);
    let r = regenerate(&a, "iris", "Primary").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-scoregate-store"), "up");
    let new = r.json()["primaryKey"].as_str().unwrap().to_string();
    let took = eventually("B has the new key", Duration::from_secs(3), async || {
        score(&client, &b, "iris", &new).await == 200
    })
    .await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(
        score(&client, &b, "iris", &old).await,
        401,
        "the old key is refused on B"
    );
    assert_eq!(score(&client, &a, "iris", &old).await, 401);
    a.stop().await;
    b.stop().await;
}

/// A token issued through replica A verifies on replica B (one signing key for the fleet), and
/// the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_by_one_replica_verifies_on_the_other() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let services = [("tok", AuthMode::Token), ("other", AuthMode::Token)];
    let a = Gw::start(fleet_config(&pki, &redis, &services, &backend)).await;
    let b = Gw::start(fleet_config(&pki, &redis, &services, &backend)).await;
    let client = pki.client();
    let from_a = token(&a, "tok").await;
    let from_b = token(&b, "tok").await;
    assert_eq!(
        kid_and_alg(&from_a),
        kid_and_alg(&from_b),
        "one signing key"
    );
    assert_eq!(score(&client, &b, "tok", &from_a).await, 200);
    assert_eq!(score(&client, &a, "tok", &from_b).await, 200);
    // Still bound to its service on the other replica.
    assert_eq!(score(&client, &b, "other", &from_a).await, 401);
    assert_eq!(score(&client, &b, "tok", "not-a-token").await, 401);
    a.stop().await;
    b.stop().await;
}

/// A new signing key (the algorithm changed by a reload on A) is written first and signs only
/// once `resync` has passed: until then A keeps signing with the previous key. Replica B gets no
/// notifications (its Redis user may not subscribe) and re-reads only every 30 s; a token
/// signed with the new key gets 401 there once, which makes B re-read the signing keys, and
/// then verifies — long before B's resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_signing_key_signs_after_resync_and_an_unknown_kid_makes_a_replica_re_read() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let services = service_toml("tok", "token", &[backend.url()], "");
    let site_a = Site::new(&pki, &redis, 1);
    // A's resync (4 s) is how long its new signing key waits before it signs.
    let write_a = |alg: &str| {
        site_a.write_config(
            "127.0.0.1:0",
            "127.0.0.1:0",
            "prefix = \"test:\"\nresync = \"4s\"\n",
            &format!("[tokens]\nalgorithm = \"{alg}\"\n\n{services}"),
        )
    };
    write_a("ES256");
    let site_b = Site::new(&pki, &redis, 1);
    site_b.set_redis_url(&add_user_without_subscribe(&redis));
    site_b.write_config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "prefix = \"test:\"\nresync = \"30s\"\n",
        &format!("[tokens]\nalgorithm = \"ES256\"\n\n{services}"),
    );
    let a = Gw::start(site_a.load()).await;
    let b = Gw::start(site_b.load()).await;
    let client = pki.client();
    let first = token(&a, "tok").await;
    let (kid0, alg0) = kid_and_alg(&first);
    assert_eq!(alg0, "ES256");
    assert_eq!(score(&client, &b, "tok", &first).await, 200);

    write_a("HS256");
    let reloading = Instant::now();
    let r = admin_request(a.admin, "POST", "/v1/reload", Some(&a.admin_token()), "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Not yet: B may not know the new key.
    let early = token(&a, "tok").await;
    assert_eq!(
        kid_and_alg(&early).0,
        kid0,
        "the new key signs only after resync; until then the previous one"
    );
    assert_eq!(score(&client, &b, "tok", &early).await, 200);
    let mut late = String::new();
    let took = eventually(
        "A signs with the new key",
        Duration::from_secs(7),
        async || {
            late = token(&a, "tok").await;
            kid_and_alg(&late).0 != kid0
        },
    )
    .await;
    assert!(
        reloading.elapsed() >= Duration::from_secs(3),
        "signed with the new key {took:?} after the reload, before resync (4 s)"
    );
    assert_eq!(kid_and_alg(&late).1, "HS256");
    assert_eq!(score(&client, &a, "tok", &late).await, 200);
    // B never heard of it (no notification, its resync is 30 s away): 401 once, then a re-read.
    assert!(
        subscribe_was_refused(&redis),
        "{}",
        redis.cli(&["ACL", "LOG"])
    );
    assert_eq!(score(&client, &b, "tok", &late).await, 401);
    let took = eventually(
        "B verifies the new key after re-reading",
        Duration::from_secs(3),
        async || score(&client, &b, "tok", &late).await == 200,
    )
    .await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Tokens of the previous key keep verifying everywhere.
    assert_eq!(score(&client, &b, "tok", &first).await, 200);
    assert_eq!(score(&client, &a, "tok", &first).await, 200);
    a.stop().await;
    b.stop().await;
}

/// Primary regenerated through A while the secondary is regenerated through B, at the same
/// moment, twenty times: both writes always land (the loser of the compare-and-set re-reads and
/// writes again) and both replicas converge on the pair that holds both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_regenerations_of_both_keys_on_two_replicas_both_land() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let a = Gw::start(fleet_config(
        &pki,
        &redis,
        &[("iris", AuthMode::Key)],
        &backend,
    ))
    .await;
    let b = Gw::start(fleet_config(
        &pki,
        &redis,
        &[("iris", AuthMode::Key)],
        &backend,
    ))
    .await;
    let client = pki.client();
    let rev = |r: &Redis| {
        r.hget("test:svc:iris", "rev")
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let rev0 = rev(&redis);
    let rounds = 20;
    for round in 0..rounds {
        let (ra, rb) = tokio::join!(
            regenerate(&a, "iris", "Primary"),
            regenerate(&b, "iris", "Secondary")
        );
        assert_eq!(ra.status, 200, "round {round}: {:?}", ra.body);
        assert_eq!(rb.status, 200, "round {round}: {:?}", rb.body);
        let primary = ra.json()["primaryKey"].as_str().unwrap().to_string();
        let secondary = rb.json()["secondaryKey"].as_str().unwrap().to_string();
        let want = (primary.clone(), secondary.clone());
        eventually(
            &format!("round {round}: both replicas hold both new keys"),
            Duration::from_secs(3),
            async || a.keys("iris") == want && b.keys("iris") == want,
        )
        .await;
        if round == rounds - 1 {
            for gw in [&a, &b] {
                assert_eq!(score(&client, gw, "iris", &primary).await, 200);
                assert_eq!(score(&client, gw, "iris", &secondary).await, 200);
            }
        }
    }
    assert_eq!(
        rev(&redis),
        rev0 + 2 * rounds,
        "every write is one revision"
    );
    a.stop().await;
    b.stop().await;
}

/// Replica B misses every change notification (its Redis user may not subscribe): a key
/// regenerated through A is still in force on B within `resync` (2 s here), by B's full re-read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_converges_within_resync() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let a = Gw::start(fleet_config(
        &pki,
        &redis,
        &[("iris", AuthMode::Key)],
        &backend,
    ))
    .await;
    let mut cb = fleet_config(&pki, &redis, &[("iris", AuthMode::Key)], &backend);
    if let scoregate::config::StoreConfig::Redis(r) = &mut cb.store {
        r.url = scoregate::crypto::Secret::new(add_user_without_subscribe(&redis));
    }
    let b = Gw::start(cb).await;
    assert!(
        subscribe_was_refused(&redis),
        "{}",
        redis.cli(&["ACL", "LOG"])
    );
    let client = pki.client();
    let (old, _) = b.keys("iris");
    for _ in 0..2 {
        let r = regenerate(&a, "iris", "Primary").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let new = r.json()["primaryKey"].as_str().unwrap().to_string();
        let took = eventually("B has the new key", Duration::from_secs(4), async || {
            score(&client, &b, "iris", &new).await == 200
        })
        .await;
        assert!(
            took <= Duration::from_secs(3),
            "B took {took:?}, resync is 2 s"
        );
    }
    assert_eq!(score(&client, &b, "iris", &old).await, 401);
    a.stop().await;
    b.stop().await;
}

/// A's config had preset P1, then P2 (applied by a reload). Replica B starts later with a config
/// that still says P1 (a rollout in progress): B warns, adopts P2 and writes nothing; P1 is
/// refused everywhere, also after B's next resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_an_old_config_adopts_a_newer_preset_instead_of_undoing_it() {
    let _serial = SERIAL.lock().await;
    const P1: &str = "fleetPresetOne0123456789abcdefghijklmnopqrst";
    const P2: &str = "fleetPresetTwo0123456789abcdefghijklmnopqrst";
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let with_preset = |p: &str| {
        service_toml(
            "iris",
            "key",
            &[backend.url()],
            &format!("primary_key = \"{p}\""),
        )
    };
    let site_a = Site::new(&pki, &redis, 1);
    site_a.write_config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        REDIS_SETTINGS,
        &with_preset(P1),
    );
    let a = Gw::start(site_a.load()).await;
    assert_eq!(a.keys("iris").0, P1);
    site_a.write_config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        REDIS_SETTINGS,
        &with_preset(P2),
    );
    let r = admin_request(a.admin, "POST", "/v1/reload", Some(&a.admin_token()), "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(a.keys("iris").0, P2);
    let rev = redis.hget("test:svc:iris", "rev").unwrap();

    let site_b = Site::new(&pki, &redis, 1);
    let (listen, admin) = (reserve_addr(), reserve_addr());
    site_b.write_config(
        &listen.to_string(),
        &admin.to_string(),
        REDIS_SETTINGS,
        &with_preset(P1),
    );
    let mut b = Proc::spawn(
        env!("CARGO_BIN_EXE_scoregate"),
        &site_b.config_path(),
        admin,
    );
    b.wait_ready(Duration::from_secs(15)).await;
    let keys = b
        .admin(
            &site_b.admin_token(),
            "POST",
            "/v1/services/iris/listKeys",
            "",
        )
        .await;
    assert_eq!(keys.json()["primaryKey"], P2, "B adopts the newer preset");
    assert!(
        b.stderr()
            .contains("preset was replaced in the shared store"),
        "B warns: {}",
        b.stderr()
    );
    let client = pki.client();
    let on_b = |key: &'static str| {
        let client = client.clone();
        async move {
            client
                .h1(listen)
                .await
                .score("iris", key, BODY)
                .await
                .status
        }
    };
    assert_eq!(on_b(P2).await, 200);
    assert_eq!(on_b(P1).await, 401);
    assert_eq!(score(&client, &a, "iris", P1).await, 401);
    assert_eq!(score(&client, &a, "iris", P2).await, 200);
    // B's re-reads (resync 2 s) do not bring P1 back either.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        redis.hget("test:svc:iris", "rev").unwrap(),
        rev,
        "B wrote nothing"
    );
    assert_eq!(a.keys("iris").0, P2);
    assert_eq!(on_b(P1).await, 401);
    assert_eq!(score(&client, &a, "iris", P1).await, 401);
    a.stop().await;
}

/// `GET /v1/replicas` lists every live replica with what it serves; a replica that dies
/// (SIGKILL, no goodbye) drops out of the list within its 15 s expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_registry_lists_live_replicas_and_drops_a_dead_one() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let a = Gw::start(fleet_config(
        &pki,
        &redis,
        &[("iris", AuthMode::Key)],
        &backend,
    ))
    .await;
    let site_b = Site::new(&pki, &redis, 1);
    let admin = reserve_addr();
    site_b.write_config(
        &reserve_addr().to_string(),
        &admin.to_string(),
        REDIS_SETTINGS,
        &(service_toml("iris", "key", &[backend.url()], "")
            + &service_toml("tok", "token", &[backend.url()], "")),
    );
    let mut b = Proc::spawn(
        env!("CARGO_BIN_EXE_scoregate"),
        &site_b.config_path(),
        admin,
    );
    b.wait_ready(Duration::from_secs(15)).await;
    let replicas = async || {
        let r = admin_request(a.admin, "GET", "/v1/replicas", Some(&a.admin_token()), "").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.header("x-scoregate-store"), "up");
        r.json().as_array().unwrap().clone()
    };
    let a_id = a.server.shared.replica_info().id;
    eventually(
        "A lists both replicas",
        Duration::from_secs(7),
        async || replicas().await.len() == 2,
    )
    .await;
    let list = replicas().await;
    let me = list.iter().find(|r| r["id"] == a_id.as_str()).unwrap();
    let other = list.iter().find(|r| r["id"] != a_id.as_str()).unwrap();
    assert_eq!(me["services"], serde_json::json!({"iris": "key"}));
    assert_eq!(
        other["services"],
        serde_json::json!({"iris": "key", "tok": "token"})
    );
    for r in [me, other] {
        assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
        assert!(r["configDigest"].as_str().is_some_and(|d| !d.is_empty()));
        assert!(r["startedAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    assert_ne!(me["configDigest"], other["configDigest"]);
    eventually(
        "the replicas gauge says 2",
        Duration::from_secs(6),
        async || value(&metrics(&a).await, "scoregate_store_replicas", &[]) == 2.0,
    )
    .await;
    b.kill();
    let took = eventually(
        "A drops the dead replica",
        Duration::from_secs(17),
        async || replicas().await.len() == 1,
    )
    .await;
    eprintln!("the dead replica left the list {took:?} after it was killed");
    assert!(took <= Duration::from_millis(15_500), "{took:?}");
    assert_eq!(replicas().await[0]["id"], a_id.as_str());
    a.stop().await;
}

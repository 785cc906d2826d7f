//! The `scoregate` binary with a shared store (contract §6): a replica that cannot start (no
//! cache, the wrong sealing key) is alive but not ready and binds no scoring port;
//! `scoregate store import`; `scoregate check` with `store = "redis"`, and the Redis password
//! kept out of everything it prints.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use scoregate_testkit::fleet::eventually;
use scoregate_testkit::fleet::*;
use scoregate_testkit::redis::Redis;
use scoregate_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_scoregate");

/// One test at a time in this file: they wait on processes on two shared cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn run(args: &[&str], config: &Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("SCOREGATE_LOG", "info")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn score_at(client: &TlsClient, addr: SocketAddr, service: &str, credential: &str) -> u16 {
    client
        .h1(addr)
        .await
        .score(service, credential, BODY)
        .await
        .status
}

/// The records of the state under `test:` (not the registry, which live replicas renew).
fn records(redis: &Redis) -> String {
    let mut out = String::new();
    for k in ["test:meta", "test:svc:iris", "test:svc:tok", "test:signing"] {
        out.push_str(&format!("{k}\n{}\n", redis.cli(&["HGETALL", k])));
    }
    out.push_str(&redis.cli(&["SMEMBERS", "test:services"]));
    out
}

/// A replica without a cache, started while Redis is down: alive (`/healthz` 200), not ready
/// (`/readyz` 503), its admin API answers 503 `StoreUnavailable`, and its scoring port is not
/// bound. Once Redis is started it becomes ready within a few seconds, binds the port and serves,
/// and holds no more connections to Redis than its own two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_a_cache_is_not_ready_and_binds_no_port_until_the_store_answers() {
    let _serial = SERIAL.lock().await;
    let mut redis = Redis::start();
    redis.kill();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let site = Site::new(&pki, &redis, 1);
    let (listen, admin) = (reserve_addr(), reserve_addr());
    site.write_config(
        &listen.to_string(),
        &admin.to_string(),
        REDIS_SETTINGS,
        &service_toml("iris", "key", &[backend.url()], ""),
    );
    let mut p = Proc::spawn(BIN, &site.config_path(), admin);
    eventually(
        "the admin listener answers",
        Duration::from_secs(10),
        async || p.get("/healthz").await.is_some(),
    )
    .await;
    let waiting = Instant::now();
    while waiting.elapsed() < Duration::from_millis(2_500) {
        assert_eq!(p.get("/healthz").await.map(|r| r.0), Some(200));
        assert_eq!(p.readyz().await, Some(503));
        assert!(
            !listening(listen).await,
            "the scoring port is bound before the state: {}\n{}",
            who_listens(listen.port()),
            p.stderr()
        );
        let r = p
            .admin(&site.admin_token(), "GET", "/v1/services", "")
            .await;
        assert_eq!(r.status, 503);
        assert_eq!(r.code(), "StoreUnavailable");
        assert!(!p.exited(), "{}", p.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    redis.start_again();
    let took = p.wait_ready(Duration::from_secs(10)).await;
    eprintln!("ready {took:?} after the store started");
    assert!(
        took <= Duration::from_secs(6),
        "ready {took:?} after the store started"
    );
    assert!(listening(listen).await);
    let r = p
        .admin(
            &site.admin_token(),
            "POST",
            "/v1/services/iris/listKeys",
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-scoregate-store"), "up");
    let key = r.json()["primaryKey"].as_str().unwrap().to_string();
    assert_eq!(score_at(&pki.client(), listen, "iris", &key).await, 200);
    // The failed attempts left no clients behind that reconnect forever.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let clients = redis.cli(&["CLIENT", "LIST"]);
    let others = clients
        .lines()
        .filter(|l| !l.contains("cmd=client"))
        .count();
    assert!(
        others <= 2,
        "{others} connections from one replica:\n{clients}"
    );
}

/// A replica whose sealing key is not the store's is alive, never ready, binds no scoring port,
/// never registers and writes nothing; it says why, and its attempts leave no connections open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_the_wrong_sealing_key_is_not_ready_and_never_writes() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let services = service_toml("iris", "key", &[backend.url()], "")
        + &service_toml("tok", "token", &[backend.url()], "")
        + &service_toml("new", "key", &[backend.url()], "");
    let site_a = Site::new(&pki, &redis, 1);
    site_a.write_config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        REDIS_SETTINGS,
        &(service_toml("iris", "key", &[backend.url()], "")
            + &service_toml("tok", "token", &[backend.url()], "")),
    );
    let a = Gw::start(site_a.load()).await;
    let before = records(&redis);
    let site = Site::new(&pki, &redis, 2);
    let (listen, admin) = (reserve_addr(), reserve_addr());
    site.write_config(
        &listen.to_string(),
        &admin.to_string(),
        REDIS_SETTINGS,
        &services,
    );
    let p = Proc::spawn(BIN, &site.config_path(), admin);
    eventually(
        "the admin listener answers",
        Duration::from_secs(10),
        async || p.get("/healthz").await.is_some(),
    )
    .await;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        assert_eq!(p.readyz().await, Some(503));
        assert!(
            !listening(listen).await,
            "{}\n{}",
            who_listens(listen.port()),
            p.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        p.stderr().contains("sealed with key"),
        "says why: {}",
        p.stderr()
    );
    assert_eq!(records(&redis), before, "it wrote nothing");
    // Each attempt gave up its connections: A's two, and at most the two of an attempt under way.
    let clients = redis.cli(&["CLIENT", "LIST"]);
    let others = clients
        .lines()
        .filter(|l| !l.contains("cmd=client"))
        .count();
    assert!(others <= 4, "{others} connections:\n{clients}");
    let registered = redis.cli(&["ZRANGE", "test:replicas", "0", "-1"]);
    assert_eq!(
        registered.trim(),
        a.server.shared.replica_info().id,
        "only A is registered"
    );
    a.stop().await;
}

/// `scoregate store import`: a file store (keys, ids, signing keys) moves into an empty Redis,
/// sealed; a gateway on the shared store then serves the same keys, ids and tokens. A second
/// import into a store that knows the services is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_import_moves_a_file_store_into_an_empty_store_and_refuses_a_second_time() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let site = Site::new(&pki, &redis, 1);
    let services = service_toml("iris", "key", &[backend.url()], "")
        + &service_toml("tok", "token", &[backend.url()], "");
    site.write_file_store_config("127.0.0.1:0", "127.0.0.1:0", &services);
    let file_gw = Gw::start(site.load()).await;
    let keys = file_gw.keys("iris");
    let info = admin_request(
        file_gw.admin,
        "GET",
        "/v1/services/iris",
        Some(&file_gw.admin_token()),
        "",
    )
    .await
    .json();
    let token = admin_request(
        file_gw.admin,
        "POST",
        "/v1/services/tok/token",
        Some(&file_gw.admin_token()),
        "",
    )
    .await
    .json()["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    file_gw.stop().await;
    let file_store = std::fs::read(site.state_dir().join("state.json")).unwrap();

    site.write_config("127.0.0.1:0", "127.0.0.1:0", REDIS_SETTINGS, &services);
    let (ok, out, err) = run(&["store", "import"], &site.config_path());
    assert!(ok, "{out}{err}");
    assert!(out.contains("imported 2 service(s)"), "{out}");
    assert!(out.contains("1 signing key(s) imported"), "{out}");
    assert!(!format!("{out}{err}").contains(&keys.0));
    let dump = redis.dump("test:");
    assert!(dump.contains("test:svc:iris") && dump.contains("test:signing"));
    assert!(
        !dump.contains(&keys.0) && !dump.contains(&keys.1),
        "sealed: {dump}"
    );

    let gw = Gw::start(site.load()).await;
    assert_eq!(gw.keys("iris"), keys);
    let r = admin_request(
        gw.admin,
        "GET",
        "/v1/services/iris",
        Some(&gw.admin_token()),
        "",
    )
    .await;
    assert_eq!(r.header("x-scoregate-store"), "up");
    assert_eq!(r.json()["id"], info["id"]);
    assert_eq!(r.json()["createdAt"], info["createdAt"]);
    let client = pki.client();
    assert_eq!(score_at(&client, gw.addr, "iris", &keys.0).await, 200);
    assert_eq!(score_at(&client, gw.addr, "iris", &keys.1).await, 200);
    assert_eq!(score_at(&client, gw.addr, "tok", &token).await, 200);
    gw.stop().await;

    // The file store again (the gateway replaced it with its cache): refused, nothing written.
    let before = records(&redis);
    std::fs::write(site.state_dir().join("state.json"), &file_store).unwrap();
    let (ok, out, err) = run(&["store", "import"], &site.config_path());
    assert!(!ok, "{out}{err}");
    assert!(err.contains("already knows iris, tok"), "{err}");
    assert_eq!(records(&redis), before);
}

const PASSWORD: &str = "fleetRedisPassw0rd-1234";

/// `scoregate check` with `store = "redis"` behind a password: the address without the
/// password, that it answered, the format, the sealing key and the live replicas; a wrong
/// password, a wrong sealing key or a Redis Cluster fail it, an unreachable store is a warning;
/// the password appears in no output, log or error of `check` or `serve`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_shared_store_and_never_its_password() {
    let _serial = SERIAL.lock().await;
    let mut redis = Redis::start_with_password(PASSWORD);
    let pki = Pki::new();
    let backend = Backend::start().await;
    let site = Site::new(&pki, &redis, 1);
    site.set_redis_url(&redis.url_with("", PASSWORD));
    site.write_config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        REDIS_SETTINGS,
        &service_toml("iris", "key", &[backend.url()], ""),
    );
    let no_password = |what: &str, text: &str| {
        assert!(
            !text.contains(PASSWORD),
            "{what} shows the password: {text}"
        );
        assert!(
            !text.contains("wrong-Passw0rd"),
            "{what} shows the password: {text}"
        );
    };
    let address = format!("redis://127.0.0.1:{}/0", redis.port);

    let (ok, out, err) = run(&["check"], &site.config_path());
    assert!(ok, "{out}{err}");
    no_password("check", &format!("{out}{err}"));
    assert!(
        out.contains(&format!("store    redis {address} prefix \"test:\"")),
        "{out}"
    );
    assert!(out.contains("answered (Redis 7."), "{out}");
    assert!(
        out.contains("empty (format 1 is written at the first start)"),
        "{out}"
    );
    assert!(out.contains("0 live replica(s)"), "{out}");
    assert_eq!(out.lines().last(), Some("ok"), "{out}{err}");

    // A replica (the binary: its log is read too) on the same store.
    let admin = reserve_addr();
    site.write_config(
        &reserve_addr().to_string(),
        &admin.to_string(),
        REDIS_SETTINGS,
        &service_toml("iris", "key", &[backend.url()], ""),
    );
    let mut p = Proc::spawn(BIN, &site.config_path(), admin);
    p.wait_ready(Duration::from_secs(15)).await;
    let replicas = p
        .admin(&site.admin_token(), "GET", "/v1/replicas", "")
        .await;
    let id = replicas.json()[0]["id"].as_str().unwrap().to_string();
    let (ok, out, err) = run(&["check"], &site.config_path());
    assert!(ok, "{out}{err}");
    no_password("check", &format!("{out}{err}"));
    assert!(
        out.contains("format 1, 1 service(s), 1 signing key(s), sealing key "),
        "{out}"
    );
    assert!(out.contains(&format!("1 live replica(s): {id}")), "{out}");
    assert_eq!(out.lines().last(), Some("ok"));

    // The wrong sealing key fails it.
    site.set_store_key(9);
    let (ok, out, err) = run(&["check"], &site.config_path());
    assert!(!ok, "{out}{err}");
    assert!(err.contains("sealed with key"), "{err}");
    site.set_store_key(1);

    p.kill();
    no_password("the replica's log", &p.stderr());
    assert!(
        p.stderr().contains(&address),
        "the log names the store: {}",
        p.stderr()
    );

    // The wrong password fails it, and `serve` with it fails (even with a cache to start from)
    // without printing it; every time: a refusal must not pass for an unreachable store.
    site.set_redis_url(&redis.url_with("", "wrong-Passw0rd"));
    for _ in 0..3 {
        let (ok, out, err) = run(&["check"], &site.config_path());
        assert!(!ok, "{out}{err}");
        assert!(err.contains("refused the credentials"), "{err}");
        no_password("check", &format!("{out}{err}"));
    }
    for _ in 0..5 {
        let mut bad = Proc::spawn(BIN, &site.config_path(), admin);
        let t = Instant::now();
        while !bad.exited() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "serve with a wrong password does not exit: {}",
                bad.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            bad.stderr().contains("refused the credentials"),
            "{}",
            bad.stderr()
        );
        no_password("serve", &bad.stderr());
    }

    // Unreachable: a warning, not a failure.
    site.set_redis_url(&redis.url_with("", PASSWORD));
    redis.kill();
    let (ok, out, err) = run(&["check"], &site.config_path());
    assert!(ok, "{out}{err}");
    assert_eq!(out.lines().last(), Some("ok, 1 warning"), "{out}");
    assert!(
        err.contains("warning: the shared store did not answer"),
        "{err}"
    );
    no_password("check", &format!("{out}{err}"));

    // A Redis Cluster is refused.
    let cluster = Redis::start_cluster_node();
    site.set_redis_url(&cluster.url());
    let (ok, out, err) = run(&["check"], &site.config_path());
    assert!(!ok, "{out}{err}");
    assert!(err.contains("Redis Cluster"), "{err}");
}

//! Rate limits across the fleet (contract §7 with `store = "redis"`): replicas sharing one Redis
//! take from the same buckets (one script per request, on the store's clock); the fleet stays
//! within the bound over an interval and refuses nothing well below it; the bucket keys are
//! safe (no credential in them) and expire; a reload keeps the shared buckets of kept policies;
//! Redis killed or frozen under load fails no scoring request, decides locally by the outage
//! rules (`by = "service"` divided by the live replicas, buckets starting full) with
//! `scoregate_rate_limit_degraded` at 1, and goes back to the shared buckets when it answers.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use scoregate::config::{
    AuthMode, Config, RateLimitBy, RateLimitConfig, ServiceConfig, StoreConfig,
};
use scoregate_testkit::fleet::{
    BODY, Load, REDIS_SETTINGS, Site, Target, eventually, service_toml,
};
use scoregate_testkit::metrics::{metrics, value};
use scoregate_testkit::redis::{Redis, use_redis};
use scoregate_testkit::*;

/// One test at a time in this file: they time load and outages on two shared cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rl(name: &str, by: RateLimitBy, requests: u64, per: u64, burst: u64) -> RateLimitConfig {
    RateLimitConfig::new(name, by, requests, Duration::from_secs(per), burst)
}

fn limited(
    name: &str,
    auth: AuthMode,
    backend: &Backend,
    limits: Vec<RateLimitConfig>,
) -> ServiceConfig {
    let mut s = service(name, auth, &[backend.url()]);
    s.rate_limits = limits;
    s
}

fn fleet(pki: &Pki, redis: &Redis, services: Vec<ServiceConfig>) -> Config {
    let mut c = config(pki, services);
    use_redis(&mut c, redis, "test:", 1);
    c
}

/// POST to `service`'s score endpoint, with a key when given.
async fn score(conn: &mut Conn, service: &str, key: Option<&str>) -> Resp {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut h = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    conn.send(
        "POST",
        &format!("/api/v1/service/{service}/score"),
        &h,
        BODY,
    )
    .await
}

fn assert_429(r: &Resp, retry_after: u64) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "TooManyRequests"),
        "{r:?}"
    );
    assert_eq!(r.header("retry-after"), retry_after.to_string(), "{r:?}");
}

async fn degraded(gw: &Gw) -> f64 {
    value(&metrics(gw).await, "scoregate_rate_limit_degraded", &[])
}

/// The rate-limit keys in Redis under the test prefix, sorted.
fn buckets(redis: &Redis) -> Vec<String> {
    let mut k: Vec<String> = redis
        .keys("test:rl:")
        .into_iter()
        .filter(|k| !k.is_empty())
        .collect();
    k.sort();
    k
}

/// A `by = "client"` bucket spent on one replica is spent on the other: 429 there with the
/// shared wait; another client address is apart. The keys are under the prefix, name the
/// client address (and the key slot, never the key), hold the parameters and expire when full.
/// A reload that keeps the policy keeps the shared bucket (and converts it to new parameters).
#[tokio::test]
async fn replicas_take_from_the_same_buckets() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let policies = |client: &str| {
        format!(
            "[[service.rate_limit]]\nname = \"per-client\"\nby = \"client\"\n{client}\n\n[[service.rate_limit]]\nname = \"per-key\"\nby = \"credential\"\nrequests = 1000\nper = \"60s\"\n"
        )
    };
    let site_a = Site::new(&pki, &redis, 1);
    let site_b = Site::new(&pki, &redis, 1);
    let rest = |client: &str| service_toml("iris", "key", &[backend.url()], &policies(client));
    let slow = "requests = 3\nper = \"60s\"";
    for s in [&site_a, &site_b] {
        s.write_config("127.0.0.1:0", "127.0.0.1:0", REDIS_SETTINGS, &rest(slow));
    }
    let a = Gw::start(site_a.load()).await;
    let b = Gw::start(site_b.load()).await;
    let (key, _) = a.keys("iris");
    let client = pki.client();
    let mut ca = client.h1(a.addr).await;
    let mut cb = client.h1(b.addr).await;

    // Three tokens for 127.0.0.1, across both replicas.
    for (on_a, left) in [(true, 2), (false, 1), (true, 0)] {
        let conn = if on_a { &mut ca } else { &mut cb };
        let r = score(conn, "iris", Some(&key)).await;
        assert_eq!(r.status, 200, "{r:?}");
        let t = if left == 0 { 20 } else { 0 };
        assert_eq!(
            r.header("ratelimit"),
            format!("\"per-client\";r={left};t={t}")
        );
    }
    let r = score(&mut cb, "iris", Some(&key)).await;
    assert_429(&r, 20);
    assert_eq!(r.header("ratelimit"), "\"per-client\";r=0;t=20");
    assert_eq!(r.header("ratelimit-policy"), "\"per-client\";q=3;w=60");
    assert_eq!(backend.scored(), 3, "the refused request was not forwarded");
    // Another client address has its own bucket, on either replica.
    let mut other = client.h1_from("127.0.0.2", b.addr).await;
    assert_eq!(score(&mut other, "iris", Some(&key)).await.status, 200);

    // The keys: one per (policy, bucket), under the prefix; no key value anywhere in Redis.
    let keys = buckets(&redis);
    assert_eq!(
        keys,
        [
            "test:rl:iris:per-client:client:ffffffff7f000001",
            "test:rl:iris:per-client:client:ffffffff7f000002",
            "test:rl:iris:per-key:credential:0000000000000001",
        ]
    );
    let dump = redis.dump("test:");
    assert!(!dump.contains(&key), "a key value in the store");
    // TAT:T:TAU in microseconds; expires when full again (at most 60 s for 3 spent of 3).
    let v = redis.cli(&["GET", &keys[0]]);
    let parts: Vec<u64> = v.trim().split(':').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts[1..], [20_000_000, 60_000_000], "{v}");
    let ttl: i64 = redis.cli(&["PTTL", &keys[0]]).trim().parse().unwrap();
    assert!(ttl > 55_000 && ttl <= 60_000, "PTTL {ttl}");
    let ttl: i64 = redis.cli(&["PTTL", &keys[1]]).trim().parse().unwrap();
    assert!(ttl > 15_000 && ttl <= 20_000, "PTTL {ttl}");

    // A reload that adds a policy keeps the shared bucket: still refused, on both replicas.
    std::fs::write(
        site_a.config_path(),
        std::fs::read_to_string(site_a.config_path())
            .unwrap()
            .replace(
                "per = \"60s\"\n\n[[service.rate_limit]]\nname = \"per-key\"",
                "per = \"60s\"\n\n[[service.rate_limit]]\nname = \"extra\"\nby = \"service\"\nrequests = 1000\nper = \"1s\"\n\n[[service.rate_limit]]\nname = \"per-key\"",
            ),
    )
    .unwrap();
    let token = a.admin_token();
    let r = admin_request(a.admin, "POST", "/v1/reload", Some(&token), "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["changed"].to_string().contains("service.iris"));
    assert_429(&score(&mut ca, "iris", Some(&key)).await, 20);
    assert_429(&score(&mut cb, "iris", Some(&key)).await, 20);
    assert!(
        buckets(&redis).contains(&keys[0]),
        "the shared key survives"
    );
    // New parameters for the kept policy: its level (0 tokens) is kept, the faster refill (1 per
    // second) shows in the wait.
    site_a.write_config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        REDIS_SETTINGS,
        &rest("requests = 60\nper = \"60s\"\nburst = 5"),
    );
    let r = admin_request(a.admin, "POST", "/v1/reload", Some(&token), "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = score(&mut ca, "iris", Some(&key)).await;
    assert_429(&r, 1);
    assert_eq!(r.header("ratelimit-policy"), "\"per-client\";q=60;w=60");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(score(&mut ca, "iris", Some(&key)).await.status, 200);

    for gw in [&a, &b] {
        let m = metrics(gw).await;
        assert_eq!(value(&m, "scoregate_rate_limit_degraded", &[]), 0.0);
        assert!(
            value(
                &m,
                "scoregate_store_operations_total",
                &[("op", "script"), ("result", "ok")]
            ) >= 2.0
        );
    }
    a.stop().await;
    b.stop().await;
}

/// A service without rate limits sends nothing to the store for its requests.
#[tokio::test]
async fn services_without_limits_never_touch_the_store() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let gw = Gw::start(fleet(
        &pki,
        &redis,
        vec![service("free", AuthMode::None, &[backend.url()])],
    ))
    .await;
    let scripts = async || {
        let m = metrics(&gw).await;
        ["ok", "error", "timeout"]
            .iter()
            .map(|r| {
                value(
                    &m,
                    "scoregate_store_operations_total",
                    &[("op", "script"), ("result", r)],
                )
            })
            .sum::<f64>()
    };
    let before = scripts().await;
    let mut c = pki.client().h1(gw.addr).await;
    for _ in 0..20 {
        assert_eq!(score(&mut c, "free", None).await.status, 200);
    }
    // Registration renews every 5 s (a script): at most one may fall in between.
    assert!(scripts().await - before <= 1.0);
    assert!(buckets(&redis).is_empty());
    gw.stop().await;
}

/// What a stream of requests got: admitted, refused (429) and anything else.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
}

/// `clients` keep-alive connections per replica, each sending as fast as answered (or one
/// request per `pace`), to `service`, until `stop`.
fn drive(
    client: &TlsClient,
    replicas: &[SocketAddr],
    clients: usize,
    service: &'static str,
    pace: Option<Duration>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for &addr in replicas {
        for _ in 0..clients {
            let (client, stop, counts) = (client.clone(), stop.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = client.h1(addr).await;
                while !stop.load(Ordering::Relaxed) {
                    let r = score(&mut c, service, None).await;
                    match r.status {
                        200 => counts.ok.fetch_add(1, Ordering::Relaxed),
                        429 => counts.limited.fetch_add(1, Ordering::Relaxed),
                        _ => counts.other.fetch_add(1, Ordering::Relaxed),
                    };
                    if let Some(p) = pace {
                        tokio::time::sleep(p).await;
                    }
                }
            }));
        }
    }
    tasks
}

/// Three replicas sharing a `by = "service"` limit of 20 per second, burst 10. Offered half the
/// rate, the fleet refuses nothing; flooded for 4 s from all three, it admits at most
/// `burst + requests × T / per` (+ max(2, 10 %)) over the flood's interval T, and at least 90 % of
/// it.
#[tokio::test]
async fn the_fleet_stays_within_the_bound() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let (requests, burst) = (20u64, 10u64);
    let services = || {
        ["calm", "busy"]
            .iter()
            .map(|n| {
                limited(
                    n,
                    AuthMode::None,
                    &backend,
                    vec![rl("fleet", RateLimitBy::Service, requests, 1, burst)],
                )
            })
            .collect::<Vec<_>>()
    };
    let mut gws = Vec::new();
    for _ in 0..3 {
        let mut c = fleet(&pki, &redis, services());
        // Under this flood two shared cores delay tasks past 50 ms now and then, and such a
        // request is decided locally (the outage rules, tested below). The bound under test is
        // the shared one: every decision here must come from the script.
        if let StoreConfig::Redis(r) = &mut c.store {
            r.timeout = Duration::from_secs(2);
            r.rate_limit_timeout = Duration::from_secs(2);
        }
        gws.push(Gw::start(c).await);
    }
    let addrs: Vec<SocketAddr> = gws.iter().map(|g| g.addr).collect();
    let client = pki.client();

    // Below the rate: 3 replicas × one request every 300 ms = 10 per second, for 3 s.
    let stop = Arc::new(AtomicBool::new(false));
    let calm = Arc::new(Counts::default());
    let tasks = drive(
        &client,
        &addrs,
        1,
        "calm",
        Some(Duration::from_millis(300)),
        stop.clone(),
        calm.clone(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (ok, refused) = (
        calm.ok.load(Ordering::Relaxed),
        calm.limited.load(Ordering::Relaxed),
    );
    eprintln!("below the rate: {ok} admitted, {refused} refused");
    assert_eq!(refused, 0, "refused below the rate");
    assert_eq!(calm.other.load(Ordering::Relaxed), 0);
    assert!(ok >= 15, "{ok}");

    // A flood from all three replicas (6 connections each).
    let stop = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(Counts::default());
    let started = Instant::now();
    let tasks = drive(&client, &addrs, 6, "busy", None, stop.clone(), busy.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let t = started.elapsed().as_secs_f64();
    let (ok, refused) = (
        busy.ok.load(Ordering::Relaxed),
        busy.limited.load(Ordering::Relaxed),
    );
    let bound = burst as f64 + requests as f64 * t;
    let slack = (bound * 0.1).max(2.0);
    eprintln!(
        "flood over {t:.2} s: {ok} admitted, {refused} refused; bound {bound:.1} (+{slack:.1})"
    );
    assert_eq!(busy.other.load(Ordering::Relaxed), 0);
    assert!(refused > ok, "the flood was not over the limit");
    assert!(ok as f64 <= bound + slack, "{ok} admitted over {t:.2} s");
    // The flood's first requests came after connecting: count from the first 200 at the latest.
    assert!(
        ok as f64 >= 0.9 * (burst as f64 + requests as f64 * (t - 0.5)),
        "only {ok} admitted over {t:.2} s"
    );
    for gw in &gws {
        let m = metrics(gw).await;
        assert_eq!(value(&m, "scoregate_rate_limit_degraded", &[]), 0.0);
        for result in ["error", "timeout"] {
            let failed = value(
                &m,
                "scoregate_store_operations_total",
                &[("op", "script"), ("result", result)],
            );
            assert_eq!(failed, 0.0, "script calls with result {result}");
        }
    }
    for gw in gws {
        gw.stop().await;
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Outage {
    Killed,
    Frozen,
}

/// Sends `n` requests to `service` on one connection; the statuses and the last 429.
async fn statuses(conn: &mut Conn, service: &str, n: usize) -> (Vec<u16>, Option<Resp>) {
    let mut out = Vec::new();
    let mut last = None;
    for _ in 0..n {
        let r = score(conn, service, None).await;
        out.push(r.status);
        if r.status == 429 {
            last = Some(r);
        }
    }
    (out, last)
}

/// Two replicas under load on a rate-limited service (never refusing) while Redis goes away
/// and comes back: not one of those requests fails, none waits long; both report
/// `scoregate_rate_limit_degraded` 1 and decide by the outage rules — a `by = "service"` limit
/// of 10 (spent in the store just before) gives each replica ceil(10 / 2) = 5 from full — and
/// report 0 once Redis answers again, deciding through it again.
async fn outage_under_load(outage: Outage) {
    let _serial = SERIAL.lock().await;
    let mut redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let services = || {
        vec![
            limited(
                "iris",
                AuthMode::Key,
                &backend,
                vec![
                    rl("client", RateLimitBy::Client, 100_000, 1, 100_000),
                    rl("credential", RateLimitBy::Credential, 100_000, 1, 100_000),
                ],
            ),
            limited(
                "svc",
                AuthMode::None,
                &backend,
                vec![rl("svc", RateLimitBy::Service, 10, 60, 10)],
            ),
        ]
    };
    let a = Gw::start(fleet(&pki, &redis, services())).await;
    let b = Gw::start(fleet(&pki, &redis, services())).await;
    // Both in the registry (renewed every 5 s).
    eventually(
        "both replicas registered",
        Duration::from_secs(8),
        async || {
            value(&metrics(&a).await, "scoregate_store_replicas", &[]) == 2.0
                && value(&metrics(&b).await, "scoregate_store_replicas", &[]) == 2.0
        },
    )
    .await;
    let client = pki.client();
    let (key, _) = a.keys("iris");
    let targets: Vec<Target> = [&a, &b]
        .iter()
        .map(|g| Target {
            addr: g.addr,
            service: "iris".into(),
            credential: key.clone(),
        })
        .collect();
    let load = Load::start(&client, &targets);
    let mut ca = client.h1(a.addr).await;
    let mut cb = client.h1(b.addr).await;
    // The shared `svc` bucket: 10 across both replicas, then refused.
    for i in 0..10 {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        assert_eq!(score(c, "svc", None).await.status, 200, "request {i}");
    }
    assert_429(&score(&mut ca, "svc", None).await, 6);
    assert_429(&score(&mut cb, "svc", None).await, 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for gw in [&a, &b] {
        assert_eq!(degraded(gw).await, 0.0);
    }

    match outage {
        Outage::Killed => redis.kill(),
        Outage::Frozen => redis.freeze(),
    }
    let down = Instant::now();
    for gw in [&a, &b] {
        eventually("degraded", Duration::from_secs(6), async || {
            degraded(gw).await == 1.0
        })
        .await;
    }
    // Nobody waits on the store: a request answers well within a second.
    let t = Instant::now();
    let r = score(&mut ca, "iris", Some(&key)).await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The outage rules: each replica's own `svc` bucket, full, of ceil(10 / 2) = 5, refilled at
    // 5 per minute (Retry-After 12).
    for conn in [&mut ca, &mut cb] {
        let (got, last) = statuses(conn, "svc", 7).await;
        assert_eq!(got, [200, 200, 200, 200, 200, 429, 429]);
        assert_429(&last.unwrap(), 12);
    }
    let elapsed = down.elapsed();
    if elapsed < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_secs(3) - elapsed).await;
    }

    match outage {
        Outage::Killed => redis.start_again(),
        Outage::Frozen => redis.thaw(),
    }
    for gw in [&a, &b] {
        eventually("shared again", Duration::from_secs(8), async || {
            degraded(gw).await == 0.0
        })
        .await;
    }
    // Decided through the store again: after a restart without data its bucket is full (10
    // across both replicas); after a freeze it is as spent as before (at most one token back
    // per 6 s).
    let mut got = Vec::new();
    for i in 0..12 {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        let r = score(c, "svc", None).await;
        assert!(matches!(r.status, 200 | 429), "request {i}: {r:?}");
        got.push(r.status);
    }
    let admitted = got.iter().filter(|&&s| s == 200).count();
    match outage {
        Outage::Killed => assert_eq!(admitted, 10, "{got:?}"),
        Outage::Frozen => assert!(admitted <= 3, "{got:?}"),
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.finish().await;
    eprintln!(
        "{outage:?}: scoring requests per replica (ok, failed): {:?}",
        report.iter().map(|(ok, f, _)| (ok, f)).collect::<Vec<_>>()
    );
    for (i, (ok, failed, errors)) in report.iter().enumerate() {
        assert_eq!(
            *failed, 0,
            "replica {i}: {ok} ok, {failed} failed: {errors:?}"
        );
        assert!(*ok >= 50, "replica {i}: only {ok} requests");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn redis_killed_under_load() {
    outage_under_load(Outage::Killed).await;
}

#[tokio::test]
async fn redis_frozen_under_load() {
    outage_under_load(Outage::Frozen).await;
}

/// A rate-limit call the gateway gave up on while Redis was gone never runs once Redis is back:
/// requests made just after Redis dies (before the store counts as unreachable) are decided
/// locally, and a restarted, empty Redis then holds no bucket at all until a new request is
/// made; from then on the shared bucket is whole (10).
#[tokio::test]
async fn a_call_given_up_during_an_outage_never_runs_after_it() {
    let _serial = SERIAL.lock().await;
    let mut redis = Redis::start();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let services = vec![limited(
        "svc",
        AuthMode::None,
        &backend,
        vec![rl("svc", RateLimitBy::Service, 10, 60, 10)],
    )];
    let gw = Gw::start(fleet(&pki, &redis, services)).await;
    let mut conn = pki.client().h1(gw.addr).await;
    assert_eq!(score(&mut conn, "svc", None).await.status, 200);
    assert_eq!(buckets(&redis).len(), 1, "the shared bucket");

    redis.kill();
    // Decided locally: the store does not answer.
    for i in 0..3 {
        assert_eq!(
            score(&mut conn, "svc", None).await.status,
            200,
            "request {i}"
        );
    }
    assert_eq!(degraded(&gw).await, 1.0);
    // Past the store's command timeout (250 ms): every one of those calls has been given up.
    tokio::time::sleep(Duration::from_millis(600)).await;
    redis.start_again();
    eventually(
        "the store is up again",
        Duration::from_secs(8),
        async || value(&metrics(&gw).await, "scoregate_store_up", &[]) == 1.0,
    )
    .await;
    // Reconnected (the PING answered): anything still queued would have run by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        buckets(&redis),
        Vec::<String>::new(),
        "a call given up during the outage ran in the restarted Redis"
    );
    // Shared again: the fresh bucket holds all 10.
    let (got, last) = statuses(&mut conn, "svc", 11).await;
    assert_eq!(got, [[200; 10].as_slice(), &[429]].concat());
    assert_429(&last.unwrap(), 6);
    assert_eq!(degraded(&gw).await, 0.0);
    gw.stop().await;
}

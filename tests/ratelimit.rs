//! Rate limits (contract §7) against the real gateway: a burst then 429 with Retry-After, the
//! `RateLimit` / `RateLimit-Policy` headers on every answer past the check (and on none before
//! it), buckets per client address, per key slot and per token subject, all-or-nothing across a
//! service's policies, buckets kept across a reload, the metrics and the access log.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use scoregate::certgen::LeafOptions;
use scoregate::config::{AuthMode, Config, RateLimitBy, RateLimitConfig, ServiceConfig};
use scoregate_testkit::metrics::{metrics, value};
use scoregate_testkit::*;
use serde_json::Value;

const BODY: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

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

fn score_path(service: &str) -> String {
    format!("/api/v1/service/{service}/score")
}

/// POST to `service`'s score endpoint with an optional credential.
async fn score(conn: &mut Conn, service: &str, credential: Option<&str>) -> Resp {
    let auth = credential.map(|c| format!("Bearer {c}"));
    let mut h = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    conn.send("POST", &score_path(service), &h, BODY).await
}

/// The rate-limit headers of a response: (`RateLimit-Policy`, `RateLimit`), each exactly once.
fn limit_headers(r: &Resp) -> (String, String) {
    let one = |name: &str| {
        let all: Vec<_> = r.headers.get_all(name).iter().collect();
        assert!(all.len() <= 1, "{name} twice: {all:?}");
        all.first()
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (one("ratelimit-policy"), one("ratelimit"))
}

fn assert_429(r: &Resp, retry_after: u64) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "TooManyRequests"),
        "{r:?}"
    );
    assert_eq!(r.header("retry-after"), retry_after.to_string());
}

// ---------------------------------------------------------------- access log capture

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A JSON subscriber for the `access` target, once per test binary, writing to memory.
fn access_log() -> Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let c = Capture::default();
            let w = c.clone();
            tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_env_filter("off,access=info")
                .with_writer(move || w.clone())
                .init();
            c
        })
        .clone()
}

fn access_lines(service: &str) -> Vec<Value> {
    let bytes = access_log().0.lock().unwrap().clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["service"] == service)
        .collect()
}

// ---------------------------------------------------------------- tests

/// A burst of `burst` passes, the next is refused with 429 and Retry-After, and every answer
/// carries the contract's header syntax and values; the refusal is counted and logged.
#[tokio::test]
async fn a_burst_passes_then_429_with_retry_after_and_headers() {
    access_log();
    let pki = Pki::new();
    let backend = Backend::start().await;
    let gw = Gw::start(config(
        &pki,
        vec![limited(
            "burst",
            AuthMode::None,
            &backend,
            vec![rl("client", RateLimitBy::Client, 1, 60, 3)],
        )],
    ))
    .await;
    let mut c = pki.client().h1(gw.addr).await;
    for left in [2, 1, 0] {
        let r = score(&mut c, "burst", None).await;
        assert_eq!(r.status, 200);
        let t = if left == 0 { 60 } else { 0 };
        assert_eq!(
            limit_headers(&r),
            (
                "\"client\";q=1;w=60".to_string(),
                format!("\"client\";r={left};t={t}")
            )
        );
    }
    let r = score(&mut c, "burst", None).await;
    assert_429(&r, 60);
    assert_eq!(
        limit_headers(&r),
        (
            "\"client\";q=1;w=60".to_string(),
            "\"client\";r=0;t=60".to_string()
        )
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("client")
    );
    assert_eq!(backend.scored(), 3, "a refused request is not forwarded");
    // swagger.json counts like score.
    let r = c
        .send("GET", "/api/v1/service/burst/swagger.json", &[], "")
        .await;
    assert_429(&r, 60);

    let m = metrics(&gw).await;
    let labels = [("service", "burst"), ("policy", "client")];
    assert_eq!(value(&m, "scoregate_rate_limited_total", &labels), 2.0);
    assert_eq!(value(&m, "scoregate_rate_limit_buckets", &labels), 1.0);
    assert_eq!(
        value(&m, "scoregate_rate_limit_buckets_dropped_total", &labels),
        0.0
    );
    assert_eq!(value(&m, "scoregate_rate_limit_degraded", &[]), 0.0);
    assert_eq!(
        value(
            &m,
            "scoregate_requests_total",
            &[("service", "burst"), ("code", "TooManyRequests")]
        ),
        2.0
    );
    let lines = access_lines("burst");
    let by: Vec<&str> = lines
        .iter()
        .map(|l| l["rate_limited_by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["-", "-", "-", "client", "client"], "{lines:?}");
    gw.stop().await;
}

/// A request sent Retry-After seconds after a 429 passes.
#[tokio::test]
async fn retry_after_is_honoured() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let gw = Gw::start(config(
        &pki,
        vec![limited(
            "retry",
            AuthMode::None,
            &backend,
            vec![rl("client", RateLimitBy::Client, 1, 1, 1)],
        )],
    ))
    .await;
    let mut c = pki.client().h1(gw.addr).await;
    assert_eq!(score(&mut c, "retry", None).await.status, 200);
    let r = score(&mut c, "retry", None).await;
    assert_429(&r, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = score(&mut c, "retry", None).await;
    assert_eq!(r.status, 200);
    gw.stop().await;
}

/// Requests refused before the check (401) spend nothing and carry no rate-limit headers;
/// answers after it (413, 502, a backend's own) carry them, and a backend's own rate-limit
/// headers are replaced.
#[tokio::test]
async fn only_answers_past_the_check_carry_headers_and_401s_spend_nothing() {
    let pki = Pki::new();
    let backend = Backend::with(|_| {
        let mut r = Reply::ok(r#"{"ok":true}"#);
        r.headers
            .push(("ratelimit".into(), "\"backend\";r=99;t=0".into()));
        r.headers
            .push(("ratelimit-policy".into(), "\"backend\";q=99;w=1".into()));
        r
    })
    .await;
    let dead = refused_port();
    let mut small = limited(
        "keyed",
        AuthMode::Key,
        &backend,
        vec![rl("client", RateLimitBy::Client, 1, 60, 3)],
    );
    small.max_body = 64;
    let mut gone = limited(
        "gone",
        AuthMode::None,
        &backend,
        vec![rl("client", RateLimitBy::Client, 1, 60, 3)],
    );
    gone.backends = vec![format!("http://{dead}").parse().unwrap()];
    let gw = Gw::start(config(&pki, vec![small, gone])).await;
    let (key, _) = gw.keys("keyed");
    let mut c = pki.client().h1(gw.addr).await;
    for _ in 0..5 {
        let r = score(&mut c, "keyed", Some("wrong-key")).await;
        assert_eq!(r.status, 401);
        assert_eq!(limit_headers(&r), (String::new(), String::new()));
    }
    let r = score(&mut c, "keyed", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(limit_headers(&r), (String::new(), String::new()));
    // Unknown service: no headers either.
    let r = score(&mut c, "nosuch", None).await;
    assert_eq!((r.status, limit_headers(&r).1), (404, String::new()));

    // The first counted request finds a full bucket: the 401s took nothing.
    let r = score(&mut c, "keyed", Some(&key)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        limit_headers(&r).1,
        "\"client\";r=2;t=0",
        "ours, not the backend's"
    );
    assert_eq!(limit_headers(&r).0, "\"client\";q=1;w=60");
    // 413 on a declared size over max_body: past the check, so counted and described.
    let r = c
        .send(
            "POST",
            &score_path("keyed"),
            &[("authorization", &format!("Bearer {key}"))],
            &"x".repeat(100),
        )
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(limit_headers(&r).1, "\"client\";r=1;t=0");
    // 502 from a dead backend.
    let r = score(&mut c, "gone", None).await;
    assert_eq!(r.status, 502);
    assert_eq!(limit_headers(&r).1, "\"client\";r=2;t=0");
    gw.stop().await;
}

/// `by = "client"`: each client address has its own bucket.
#[tokio::test]
async fn client_buckets_are_apart() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let gw = Gw::start(config(
        &pki,
        vec![limited(
            "perclient",
            AuthMode::None,
            &backend,
            vec![rl("per-client", RateLimitBy::Client, 1, 60, 1)],
        )],
    ))
    .await;
    let client = pki.client();
    let mut a = client.h1_from("127.0.0.2", gw.addr).await;
    let mut b = client.h1_from("127.0.0.3", gw.addr).await;
    assert_eq!(score(&mut a, "perclient", None).await.status, 200);
    assert_429(&score(&mut a, "perclient", None).await, 60);
    // A new connection from the same address shares its bucket.
    let mut a2 = client.h1_from("127.0.0.2", gw.addr).await;
    assert_429(&score(&mut a2, "perclient", None).await, 60);
    let r = score(&mut b, "perclient", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(limit_headers(&r).1, "\"per-client\";r=0;t=60");
    let m = metrics(&gw).await;
    let labels = [("service", "perclient"), ("policy", "per-client")];
    assert_eq!(value(&m, "scoregate_rate_limit_buckets", &labels), 2.0);
    assert_eq!(value(&m, "scoregate_rate_limited_total", &labels), 2.0);
    gw.stop().await;
}

/// `by = "credential"`: the primary and the secondary key have a bucket each (a regenerated
/// key keeps its slot's bucket), and tokens share a bucket by subject.
#[tokio::test]
async fn credential_buckets_are_apart_by_key_slot_and_token_subject() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let per_cred = || vec![rl("credential", RateLimitBy::Credential, 1, 60, 1)];
    let gw = Gw::start(config(
        &pki,
        vec![
            limited("keyed", AuthMode::Key, &backend, per_cred()),
            limited("tokened", AuthMode::Token, &backend, per_cred()),
        ],
    ))
    .await;
    let (primary, secondary) = gw.keys("keyed");
    let mut c = pki.client().h1(gw.addr).await;
    assert_eq!(score(&mut c, "keyed", Some(&primary)).await.status, 200);
    assert_429(&score(&mut c, "keyed", Some(&primary)).await, 60);
    assert_eq!(score(&mut c, "keyed", Some(&secondary)).await.status, 200);
    assert_429(&score(&mut c, "keyed", Some(&secondary)).await, 60);
    // A new primary key keeps the primary slot's (empty) bucket.
    let admin_token = gw.admin_token();
    let r = admin_request(
        gw.admin,
        "POST",
        "/v1/services/keyed/regenerateKeys",
        Some(&admin_token),
        r#"{"keyType": "Primary"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let new_primary = r.json()["primaryKey"].as_str().unwrap().to_string();
    assert_429(&score(&mut c, "keyed", Some(&new_primary)).await, 60);

    let token = |subject: Option<&'static str>| {
        let admin_token = admin_token.clone();
        async move {
            let body = subject.map_or(String::new(), |s| format!(r#"{{"subject": "{s}"}}"#));
            let r = admin_request(
                gw.admin,
                "POST",
                "/v1/services/tokened/token",
                Some(&admin_token),
                &body,
            )
            .await;
            assert_eq!(r.status, 200, "{r:?}");
            r.json()["accessToken"].as_str().unwrap().to_string()
        }
    };
    let (alice1, alice2, bob) = (
        token(Some("alice@example.com")).await,
        token(Some("alice@example.com")).await,
        token(Some("bob")).await,
    );
    assert_ne!(alice1, alice2);
    assert_eq!(score(&mut c, "tokened", Some(&alice1)).await.status, 200);
    assert_429(&score(&mut c, "tokened", Some(&alice2)).await, 60);
    assert_eq!(score(&mut c, "tokened", Some(&bob)).await.status, 200);
    // Without a subject, each token is a subject of its own (a random UUID).
    let (anon1, anon2) = (token(None).await, token(None).await);
    assert_eq!(score(&mut c, "tokened", Some(&anon1)).await.status, 200);
    assert_eq!(score(&mut c, "tokened", Some(&anon2)).await.status, 200);
    // A bad subject is refused.
    for bad in [
        r#"{"subject": ""}"#,
        r#"{"subject": "a b"}"#,
        r#"{"sub": "x"}"#,
    ] {
        let r = admin_request(
            gw.admin,
            "POST",
            "/v1/services/tokened/token",
            Some(&admin_token),
            bad,
        )
        .await;
        assert_eq!(r.status, 400, "{bad}");
    }
    let long = format!(r#"{{"subject": "{}"}}"#, "a".repeat(129));
    let r = admin_request(
        gw.admin,
        "POST",
        "/v1/services/tokened/token",
        Some(&admin_token),
        &long,
    )
    .await;
    assert_eq!(r.status, 400);
    gw.stop().await;
}

/// Two policies: a request takes a token from both or from neither, and the header shows the
/// right one (a `by = "service"` policy only on a 429).
#[tokio::test]
async fn two_policies_take_all_or_nothing() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let gw = Gw::start(config(
        &pki,
        vec![limited(
            "both",
            AuthMode::None,
            &backend,
            vec![
                rl("client", RateLimitBy::Client, 2, 60, 2),
                rl("service", RateLimitBy::Service, 3, 60, 3),
            ],
        )],
    ))
    .await;
    let client = pki.client();
    let mut a = client.h1_from("127.0.0.2", gw.addr).await;
    let r = score(&mut a, "both", None).await;
    assert_eq!(limit_headers(&r).1, "\"client\";r=1;t=0");
    let r = score(&mut a, "both", None).await;
    assert_eq!(limit_headers(&r).1, "\"client\";r=0;t=30");
    // Refused by the client policy: the service bucket keeps its last token.
    let r = score(&mut a, "both", None).await;
    assert_429(&r, 30);
    assert_eq!(limit_headers(&r).1, "\"client\";r=0;t=30");
    // Another client (over HTTP/2) gets that last token, then the service policy refuses.
    let mut b = client.h2(gw.addr).await; // from 127.0.0.1
    let r = score(&mut b, "both", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(limit_headers(&r).1, "\"client\";r=1;t=0");
    let r = score(&mut b, "both", None).await;
    assert_429(&r, 20);
    assert_eq!(
        limit_headers(&r),
        (
            "\"service\";q=3;w=60".to_string(),
            "\"service\";r=0;t=20".to_string()
        )
    );
    assert_eq!(backend.scored(), 3);
    let m = metrics(&gw).await;
    for p in ["client", "service"] {
        let labels = [("service", "both"), ("policy", p)];
        assert_eq!(
            value(&m, "scoregate_rate_limited_total", &labels),
            1.0,
            "{p}"
        );
    }
    gw.stop().await;
}

// ---------------------------------------------------------------- reload

/// A gateway started from a config file, so that `POST /v1/reload` re-reads it.
struct Site {
    dir: PathBuf,
    head: String,
}

impl Site {
    fn new(pki: &Pki) -> Site {
        let dir = tempdir("ratelimit-reload");
        let (cert, _) = pki.cert(
            "localhost",
            &["localhost", "127.0.0.1"],
            &LeafOptions::default(),
        );
        let head = format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n\n[[tls.certificates]]\ncname = \"localhost\"\ncert = {:?}\nkey = {:?}\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"admin-token\"\n\n[state]\ndir = \"state\"\n",
            cert.cert.display().to_string(),
            cert.key.display().to_string()
        );
        Site { dir, head }
    }

    fn write(&self, services: &str) -> Config {
        let path = self.dir.join("scoregate.toml");
        std::fs::write(&path, format!("{}\n{services}", self.head)).unwrap();
        Config::load(&path).unwrap()
    }
}

/// A reload keeps the buckets of kept policies (new parameters apply to them); a renamed
/// policy starts full; a removed one leaves no metric series.
#[tokio::test]
async fn a_reload_keeps_the_buckets_of_kept_policies() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let site = Site::new(&pki);
    let svc = |limits: &str| {
        format!(
            "[[service]]\nname = \"iris\"\nauth = \"none\"\nbackends = [\"{}\"]\n{limits}",
            backend.url()
        )
    };
    let policy = |name: &str, requests: u64, burst: u64| {
        format!(
            "\n[[service.rate_limit]]\nname = \"{name}\"\nby = \"client\"\nrequests = {requests}\nper = \"60s\"\nburst = {burst}\n"
        )
    };
    let gw = Gw::start(site.write(&svc(&policy("per-client", 1, 2)))).await;
    let token = gw.admin_token();
    let reload = || async {
        let r = admin_request(gw.admin, "POST", "/v1/reload", Some(&token), "").await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    };
    let mut c = pki.client().h1(gw.addr).await;
    assert_eq!(score(&mut c, "iris", None).await.status, 200);
    assert_eq!(score(&mut c, "iris", None).await.status, 200);
    assert_429(&score(&mut c, "iris", None).await, 60);

    // Unchanged, and with another policy added: the bucket stays empty.
    site.write(&(svc(&policy("per-client", 1, 2)) + &policy("extra", 100, 100)));
    let report = reload().await;
    assert!(
        report["changed"].to_string().contains("service.iris"),
        "{report}"
    );
    let r = score(&mut c, "iris", None).await;
    assert_429(&r, 60);
    // New parameters apply to the kept bucket: its level (0 tokens) is kept, the faster
    // refill (1 per second) shows in the wait.
    site.write(&svc(&policy("per-client", 60, 5)));
    reload().await;
    let r = score(&mut c, "iris", None).await;
    assert_429(&r, 1);
    assert_eq!(limit_headers(&r).0, "\"per-client\";q=60;w=60");
    let m = metrics(&gw).await;
    assert_eq!(
        value(
            &m,
            "scoregate_rate_limit_buckets",
            &[("service", "iris"), ("policy", "extra")]
        ),
        0.0
    );
    assert!(
        !m.iter()
            .any(|s| s.labels.get("policy").is_some_and(|p| p == "extra")),
        "a removed policy's series are gone"
    );
    // Renamed: a new policy, full.
    site.write(&svc(&policy("renamed", 1, 2)));
    reload().await;
    let r = score(&mut c, "iris", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(limit_headers(&r).1, "\"renamed\";r=1;t=0");
    gw.stop().await;
}

// ---------------------------------------------------------------- memory

/// The process's resident memory, in bytes.
fn rss() -> u64 {
    scoregate::bench::rss_kb(std::process::id()).expect("VmRSS") * 1024
}

/// The memory of one policy holding 100 000 buckets (its cap), for BENCHMARKS.md. Run alone,
/// so no other test moves the RSS:
/// `cargo test --release --test ratelimit -- --ignored --nocapture memory_of`.
#[test]
#[ignore]
fn memory_of_100k_tracked_buckets() {
    use scoregate::auth::AuthOutcome;
    use scoregate::limit::{Pending, Registry};
    let registry = Registry::new(&prometheus::Registry::new());
    let mut sc = ServiceConfig::new("iris", AuthMode::None, vec![]);
    // Slow refill: every bucket stays tracked (not full) for the whole test.
    sc.rate_limits = vec![rl("client", RateLimitBy::Client, 1, 3600, 10)];
    let mut p = Pending::default();
    let limits = registry.build(&sc, &mut p);
    registry.publish(p);
    let now = limits.now();
    let before = rss();
    for i in 0..100_000u32 {
        let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        limits.check_at(now, ip, AuthOutcome::Anonymous).unwrap();
    }
    let after = rss();
    let m = registry.metrics.for_policy("iris", "client");
    assert_eq!(m.buckets.get(), 100_000);
    let delta = after.saturating_sub(before);
    eprintln!(
        "100000 buckets: RSS +{:.2} MiB ({:.1} bytes per bucket)",
        delta as f64 / 1048576.0,
        delta as f64 / 100_000.0
    );
    // A HashMap<u64, u64> entry is 16 bytes plus a control byte, at most 8/7 overhead plus the
    // growth to the next power of two.
    assert!(delta < 8 * 1024 * 1024, "{delta}");
}

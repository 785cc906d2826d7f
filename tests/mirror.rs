//! Mirrored traffic (contract §8) against the real gateway: the copy's headers (the fixed list,
//! `mirror_headers`, `x-scoregate-mirror: 1`, never the credential or cookies), its share, every
//! result of the comparison (`same` for 1 vs 1.0, `different_body`, `error`, each skip and
//! `unchecked_too_large`), pinned and `swagger.json` requests never mirrored, a mirror that
//! sleeps 3 s leaving every live answer as fast and byte-identical, and queued copies cancelled
//! when the mirror is removed.
// Integration tests time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::{Duration, Instant};

use scoregate::certgen::LeafOptions;
use scoregate::config::{AuthMode, DeploymentConfig, ServiceConfig};
use scoregate_testkit::metrics::{metrics, value};
use scoregate_testkit::*;
use serde_json::json;

const BODY: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;
const PIN: &str = "azureml-model-deployment";

fn answering(body: &'static str, delay: Duration) -> impl Fn(&Seen) -> Reply + Send + Sync {
    move |_| {
        let mut r = Reply::ok(body);
        r.delay = delay;
        r
    }
}

/// `iris` (key auth): live deployment blue, mirror green at `share` percent.
fn mirrored(live: &str, mirror: &str, share: u8) -> ServiceConfig {
    let mut s = service("iris", AuthMode::Key, &[]).with_deployments(
        vec![
            DeploymentConfig::new("blue", vec![live.parse().unwrap()]),
            DeploymentConfig::new("green", vec![mirror.parse().unwrap()]),
        ],
        &[("blue", 100)],
    );
    s.mirror_traffic = [("green".to_string(), share)].into();
    s
}

async fn result_count(gw: &Gw, result: &str) -> f64 {
    value(
        &metrics(gw).await,
        "scoregate_mirror_requests_total",
        &[
            ("service", "iris"),
            ("deployment", "green"),
            ("result", result),
        ],
    )
}

async fn wait_results(gw: &Gw, result: &str, n: f64) {
    let t = Instant::now();
    loop {
        let got = result_count(gw, result).await;
        if got >= n {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{result}: {got} of {n} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn posts(b: &Backend) -> Vec<Seen> {
    b.seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect()
}

/// The copy carries the method, path, query, body and only the listed headers; the share is
/// within 4.5σ over 800 requests at 50 %; `1` and `1.0` compare `same`; pinned and
/// `swagger.json` requests are never mirrored.
#[tokio::test]
async fn copies_carry_only_the_listed_headers_at_their_share_and_compare_same() {
    let live = Backend::with(answering(r#"{"predictions": [1, 2]}"#, Duration::ZERO)).await;
    let mirror = Backend::with(answering(r#"{"predictions": [1.0, 2.0]}"#, Duration::ZERO)).await;
    let pki = Pki::new();
    let mut svc = mirrored(&live.url(), &mirror.url(), 50);
    svc.mirror.headers = vec!["x-tenant".into()];
    let gw = Gw::start(config(&pki, vec![svc])).await;
    let (key, _) = gw.keys("iris");
    let auth = format!("Bearer {key}");
    let mut c = pki.client().h2(gw.addr).await;
    let n = 800usize;
    for _ in 0..n {
        let r = c
            .send(
                "POST",
                "/api/v1/service/iris/score?verbose=1",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                    ("cookie", "session=secret"),
                    (
                        "traceparent",
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    ),
                    ("x-tenant", "acme"),
                    ("x-other", "not copied"),
                    ("x-ms-client-request-id", "client-1"),
                ],
                BODY,
            )
            .await;
        assert_eq!((r.status, r.header(PIN)), (200, "blue"));
    }
    // Pinned and swagger requests: never mirrored.
    for _ in 0..50 {
        let r = c
            .send(
                "POST",
                "/api/v1/service/iris/score",
                &[("authorization", &auth), (PIN, "blue")],
                BODY,
            )
            .await;
        assert_eq!(r.status, 200);
        let r = c
            .send(
                "GET",
                "/api/v1/service/iris/swagger.json",
                &[("authorization", &auth)],
                "",
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let copies = {
        // Every copy sent is answered and compared.
        let t = Instant::now();
        loop {
            let sent = posts(&mirror).len();
            let same = result_count(&gw, "same").await as usize;
            if same == sent && sent > 0 {
                break sent;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{same} same of {sent} copies"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let sigma = (n as f64 * 0.25).sqrt();
    let dev = (copies as f64 - n as f64 / 2.0).abs();
    assert!(dev <= 4.5 * sigma, "{copies} copies of {n} at 50 %");
    assert!(
        mirror
            .seen()
            .iter()
            .all(|s| s.method != "GET" || s.uri == "/"),
        "no swagger copy"
    );
    let live_ids: Vec<String> = posts(&live)
        .iter()
        .map(|s| s.headers["x-ms-request-id"].to_str().unwrap().to_string())
        .collect();
    for s in posts(&mirror) {
        assert_eq!(s.uri, "/score?verbose=1");
        assert_eq!(s.body, BODY.as_bytes());
        let h = &s.headers;
        assert_eq!(h["x-scoregate-mirror"], "1");
        assert_eq!(h[PIN], "green");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-tenant"], "acme");
        assert_eq!(h["x-ms-client-request-id"], "client-1");
        assert!(h["traceparent"].to_str().unwrap().starts_with("00-0af7"));
        assert!(live_ids.contains(&h["x-ms-request-id"].to_str().unwrap().to_string()));
        for never in ["authorization", "cookie", "x-other", "x-forwarded-for"] {
            assert!(!h.contains_key(never), "{never} reached the mirror");
        }
    }
    // The copies count only in scoregate_mirror_*: the request counter saw the live ones.
    let m = metrics(&gw).await;
    assert_eq!(
        value(
            &m,
            "scoregate_requests_total",
            &[
                ("service", "iris"),
                ("deployment", "green"),
                ("code", "backend")
            ]
        ),
        0.0
    );
    assert!(
        value(
            &m,
            "scoregate_mirror_latency_ratio_count",
            &[("service", "iris"), ("deployment", "green")]
        ) >= copies as f64
    );
    gw.stop().await;
}

/// `different_body` (the live and mirror answers differ at `$.predictions[3]`), `error` for a
/// dead mirror, `skipped_too_large`, `unchecked_too_large`, `skipped_live_failed`, `skipped_busy`.
#[tokio::test]
async fn every_result_is_counted() {
    let pki = Pki::new();
    let live = Backend::with(answering(
        r#"{"predictions": [0, 1, 2, 3]}"#,
        Duration::ZERO,
    ))
    .await;
    let other = Backend::with(answering(
        r#"{"predictions": [0, 1, 2, 4]}"#,
        Duration::ZERO,
    ))
    .await;
    let gw = Gw::start(config(&pki, vec![mirrored(&live.url(), &other.url(), 50)])).await;
    let (key, _) = gw.keys("iris");
    let mut c = pki.client().h1(gw.addr).await;
    for _ in 0..40 {
        assert_eq!(c.score("iris", &key, BODY).await.status, 200);
    }
    wait_results(&gw, "different_body", 5.0).await;
    assert_eq!(result_count(&gw, "same").await, 0.0);
    gw.stop().await;

    // A dead mirror: error.
    let dead = format!("http://{}", refused_port());
    let gw = Gw::start(config(&pki, vec![mirrored(&live.url(), &dead, 50)])).await;
    let (key, _) = gw.keys("iris");
    let mut c = pki.client().h1(gw.addr).await;
    for _ in 0..40 {
        assert_eq!(c.score("iris", &key, BODY).await.status, 200);
    }
    wait_results(&gw, "error", 5.0).await;
    gw.stop().await;

    // Bodies over mirror_max_body: the request (skipped_too_large), the answer
    // (unchecked_too_large: equal statuses).
    let big = Box::leak(format!(r#"{{"p": "{}"}}"#, "x".repeat(300)).into_boxed_str());
    let live_big = Backend::with(answering(big, Duration::ZERO)).await;
    let mirror_big = Backend::with(answering(big, Duration::ZERO)).await;
    let mut svc = mirrored(&live_big.url(), &mirror_big.url(), 50);
    svc.mirror.max_body = 200;
    let gw = Gw::start(config(&pki, vec![svc])).await;
    let (key, _) = gw.keys("iris");
    let mut c = pki.client().h1(gw.addr).await;
    for _ in 0..40 {
        assert_eq!(c.score("iris", &key, BODY).await.status, 200);
        assert_eq!(c.score("iris", &key, big).await.status, 200);
    }
    wait_results(&gw, "unchecked_too_large", 5.0).await;
    wait_results(&gw, "skipped_too_large", 5.0).await;
    assert!(
        posts(&mirror_big).iter().all(|s| s.body.len() <= 200),
        "a body over mirror_max_body was copied"
    );
    gw.stop().await;

    // The live forward fails (502): skipped_live_failed, and nothing is sent to the mirror.
    let dead_live = format!("http://{}", refused_port());
    let gw = Gw::start(config(&pki, vec![mirrored(&dead_live, &other.url(), 50)])).await;
    let (key, _) = gw.keys("iris");
    let before = posts(&other).len();
    let mut c = pki.client().h1(gw.addr).await;
    for _ in 0..40 {
        assert_eq!(c.score("iris", &key, BODY).await.status, 502);
    }
    wait_results(&gw, "skipped_live_failed", 5.0).await;
    assert_eq!(posts(&other).len(), before);
    gw.stop().await;

    // One copy at a time, none waiting, a slow mirror: skipped_busy.
    let slow = Backend::with(answering("{}", Duration::from_millis(500))).await;
    let mut svc = mirrored(&live.url(), &slow.url(), 50);
    svc.mirror.max_in_flight = 1;
    svc.mirror.queue = 0;
    let gw = Gw::start(config(&pki, vec![svc])).await;
    let (key, _) = gw.keys("iris");
    let mut c = pki.client().h1(gw.addr).await;
    for _ in 0..40 {
        assert_eq!(c.score("iris", &key, BODY).await.status, 200);
    }
    wait_results(&gw, "skipped_busy", 5.0).await;
    gw.stop().await;
}

/// A mirror that takes 3 s leaves every live answer as fast as without a mirror (within 50 ms
/// of the slowest answer without one) and byte-identical.
#[tokio::test]
async fn a_slow_mirror_never_slows_or_changes_the_live_answer() {
    let live = Backend::with(answering(
        r#"{"predictions": [1]}"#,
        Duration::from_millis(20),
    ))
    .await;
    let slow = Backend::with(answering(r#"{"predictions": [2]}"#, Duration::from_secs(3))).await;
    let pki = Pki::new();
    let gw = Gw::start(config(&pki, vec![mirrored(&live.url(), &slow.url(), 50)])).await;
    let (key, _) = gw.keys("iris");
    let token = gw.admin_token();
    let mut c = pki.client().h1(gw.addr).await;
    let run = async |c: &mut Conn| {
        let mut times = Vec::new();
        let mut bodies = Vec::new();
        for _ in 0..30 {
            let t = Instant::now();
            let r = c.score("iris", &key, BODY).await;
            times.push(t.elapsed());
            assert_eq!(r.status, 200);
            bodies.push((r.body.clone(), r.header("content-type").to_string()));
        }
        (times, bodies)
    };
    // Without a mirror first.
    let r = admin_request(
        gw.admin,
        "PUT",
        "/v1/services/iris/traffic",
        Some(&token),
        &json!({"mirrorTraffic": {}}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    let (plain, plain_bodies) = run(&mut c).await;
    let r = admin_request(
        gw.admin,
        "PUT",
        "/v1/services/iris/traffic",
        Some(&token),
        &json!({"mirrorTraffic": {"green": 50}}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    let (with, with_bodies) = run(&mut c).await;
    let slowest = *plain.iter().max().unwrap();
    for t in &with {
        assert!(
            *t <= slowest + Duration::from_millis(50),
            "{t:?} with a 3 s mirror; {slowest:?} at most without"
        );
    }
    assert_eq!(
        with_bodies, plain_bodies,
        "the live answers are byte-identical"
    );
    assert!(posts(&slow).len() >= 5, "copies were sent");
    gw.stop().await;
}

/// Removing the mirror (here through the admin API, which rebuilds like a reload) cancels the
/// copies still queued: the mirror gets no more of them.
#[tokio::test]
async fn removing_the_mirror_cancels_queued_copies() {
    let live = Backend::with(answering("{}", Duration::ZERO)).await;
    let slow = Backend::with(answering("{}", Duration::from_millis(700))).await;
    let pki = Pki::new();
    let mut svc = mirrored(&live.url(), &slow.url(), 50);
    svc.mirror.max_in_flight = 1;
    svc.mirror.queue = 64;
    let gw = Gw::start(config(&pki, vec![svc])).await;
    let (key, _) = gw.keys("iris");
    let mut c = pki.client().h1(gw.addr).await;
    for _ in 0..60 {
        assert_eq!(c.score("iris", &key, BODY).await.status, 200);
    }
    let r = admin_request(
        gw.admin,
        "PUT",
        "/v1/services/iris/traffic",
        Some(&gw.admin_token()),
        &json!({"mirrorTraffic": {}}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    let at_cancel = posts(&slow).len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = posts(&slow).len();
    assert!(
        after <= at_cancel + 1,
        "{at_cancel} copies sent when the mirror was removed, {after} two seconds later"
    );
    // Some 30 copies were drawn; one at a time every 700 ms, so most were still queued.
    assert!(at_cancel < 10, "{at_cancel}");
    // The cancelled copies are counted (none was refused for want of a place before: the
    // queue holds 64): `skipped_busy` for those not yet sent.
    assert!(
        result_count(&gw, "skipped_busy").await >= 5.0,
        "cancelled copies are counted"
    );
    gw.stop().await;
}

/// A mirror target that refuses connections is taken out by its copies' connect failures (the
/// passive health of any backend), long before its first health probe: the admin API shows the
/// mirror deployment `Unhealthy` with its backend down, `scoregate_backend_up` is 0, and every
/// live answer stays 200.
#[tokio::test]
async fn copies_that_cannot_connect_show_the_mirror_down() {
    let live = Backend::with(answering(r#"{"predictions": [1]}"#, Duration::ZERO)).await;
    let dead = format!("http://{}", refused_port());
    let pki = Pki::new();
    let mut svc = mirrored(&live.url(), &dead, 50);
    // No probe within the test: only the copies can tell.
    svc.health.initial_delay = Duration::from_secs(600);
    let gw = Gw::start(config(&pki, vec![svc])).await;
    let (key, _) = gw.keys("iris");
    let token = gw.admin_token();
    let mut c = pki.client().h1(gw.addr).await;
    let t = Instant::now();
    let view = loop {
        for _ in 0..10 {
            assert_eq!(c.score("iris", &key, BODY).await.status, 200);
        }
        let r = admin_request(gw.admin, "GET", "/v1/services/iris", Some(&token), "").await;
        assert_eq!(r.status, 200);
        let v = r.json();
        if v["deployments"][1]["state"] == "Unhealthy" {
            break v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the mirror deployment still shows {v}"
        );
    };
    assert_eq!(
        view["deployments"],
        json!([
            {"name": "blue", "state": "Succeeded"},
            {"name": "green", "state": "Unhealthy"}
        ])
    );
    let backends = view["backends"].as_array().expect("backends");
    let down = backends
        .iter()
        .find(|b| b["url"] == dead.as_str())
        .expect("the mirror backend is listed");
    assert_eq!(down["up"], false, "{down}");
    assert!(
        down["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("mirrored copy")),
        "{down}"
    );
    let m = metrics(&gw).await;
    assert_eq!(
        value(
            &m,
            "scoregate_backend_up",
            &[("service", "iris"), ("backend", dead.as_str())]
        ),
        0.0
    );
    assert_eq!(
        value(
            &m,
            "scoregate_backend_up",
            &[("service", "iris"), ("backend", live.url().as_str())]
        ),
        1.0
    );
    assert!(result_count(&gw, "error").await >= 3.0);
    gw.stop().await;
}

/// A reload that removes the mirror deployment, or the whole service, removes its
/// `scoregate_mirror_*` series like the service's other series.
#[tokio::test]
async fn a_reload_removes_the_mirror_series_of_removed_deployments_and_services() {
    let live = Backend::with(answering("{}", Duration::ZERO)).await;
    let cand = Backend::with(answering("{}", Duration::ZERO)).await;
    let pki = Pki::new();
    let dir = tempdir("mirror-reload");
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
    let with_mirror = |name: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nauth = \"none\"\ntraffic = {{ blue = 100, green = 0 }}\nmirror_traffic = {{ green = 50 }}\n\n[[service.deployment]]\nname = \"blue\"\nbackends = [\"{}\"]\n\n[[service.deployment]]\nname = \"green\"\nbackends = [\"{}\"]\n\n",
            live.url(),
            cand.url()
        )
    };
    let path = dir.join("scoregate.toml");
    std::fs::write(
        &path,
        format!("{head}\n{}{}", with_mirror("iris"), with_mirror("pear")),
    )
    .unwrap();
    let gw = Gw::start(scoregate::config::Config::load(&path).unwrap()).await;
    let token = gw.admin_token();
    let mirror_series = |m: &[scoregate_testkit::metrics::Sample], service: &str| {
        m.iter()
            .filter(|s| {
                s.name.starts_with("scoregate_mirror_")
                    && s.labels.get("service").is_some_and(|v| v == service)
            })
            .count()
    };
    let mut c = pki.client().h1(gw.addr).await;
    for service in ["iris", "pear"] {
        for _ in 0..20 {
            let r = c
                .send(
                    "POST",
                    &format!("/api/v1/service/{service}/score"),
                    &[],
                    BODY,
                )
                .await;
            assert_eq!(r.status, 200);
        }
    }
    let m = metrics(&gw).await;
    assert!(mirror_series(&m, "iris") > 0 && mirror_series(&m, "pear") > 0);

    // iris keeps only blue; pear goes.
    std::fs::write(
        &path,
        format!(
            "{head}\n[[service]]\nname = \"iris\"\nauth = \"none\"\nbackends = [\"{}\"]\n",
            live.url()
        ),
    )
    .unwrap();
    let r = admin_request(gw.admin, "POST", "/v1/reload", Some(&token), "").await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let m = metrics(&gw).await;
    assert_eq!(
        mirror_series(&m, "iris"),
        0,
        "iris/green's mirror series stay"
    );
    assert_eq!(mirror_series(&m, "pear"), 0, "pear's mirror series stay");
    gw.stop().await;
}

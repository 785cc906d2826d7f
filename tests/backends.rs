//! Backends in view (issue 15, item 1): `GET /v1/services/NAME` lists each backend (URL, up or
//! down, consecutive failures, last error and when, in-flight requests), the service's `state`
//! is `Degraded` while some backends are down and `Unhealthy` while all are, and `/metrics` has
//! `scoregate_backend_up{service, backend}` and `scoregate_backend_requests_total{backend,
//! result}`. Before this, `state` said `Succeeded` with one of two backends dead, and nothing
//! named the backend or its error.
// Integration tests time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::Duration;

use scoregate::config::{AuthMode, HealthConfig};
use scoregate_testkit::metrics::{metrics, value};
use scoregate_testkit::*;
use serde_json::Value;

const BODY: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

/// Fast probes, so a dead backend is seen within a second.
fn quick_health() -> HealthConfig {
    HealthConfig {
        initial_delay: Duration::ZERO,
        period: Duration::from_millis(200),
        timeout: Duration::from_millis(500),
        failure_threshold: 2,
        success_threshold: 1,
        ..HealthConfig::default()
    }
}

async fn service_view(gw: &Gw, name: &str) -> Value {
    let r = admin_request(
        gw.admin,
        "GET",
        &format!("/v1/services/{name}"),
        Some(&gw.admin_token()),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn backend<'a>(view: &'a Value, url: &str) -> &'a Value {
    view["backends"]
        .as_array()
        .expect("backends is a list")
        .iter()
        .find(|b| b["url"] == url)
        .unwrap_or_else(|| panic!("no backend {url} in {view}"))
}

#[tokio::test]
async fn a_dead_backend_is_shown_down_with_its_error_and_the_service_degraded() {
    let live = Backend::with(|_| Reply {
        delay: Duration::from_millis(600),
        ..Reply::ok(r#"{"ok":true}"#)
    })
    .await;
    let dead = refused_port();
    let dead_url = format!("http://{dead}");
    let pki = Pki::new();
    let mut svc = service("iris", AuthMode::None, &[live.url(), dead_url.clone()]);
    svc.health = quick_health();
    let mut lone = service("lone", AuthMode::None, std::slice::from_ref(&dead_url));
    lone.health = quick_health();
    let gw = Gw::start(config(&pki, vec![svc, lone])).await;

    // The probes take the dead backend out; the live one stays up.
    let mut view = Value::Null;
    for _ in 0..50 {
        view = service_view(&gw, "iris").await;
        if view["state"] == "Degraded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(view["state"], "Degraded", "{view}");
    let d = backend(&view, &dead_url);
    assert_eq!(d["up"], false, "{d}");
    assert!(d["consecutiveFailures"].as_u64().unwrap() >= 2, "{d}");
    let err = d["lastError"].as_str().expect("lastError is set");
    assert!(err.starts_with("health check:"), "{err}");
    let at = d["lastErrorAt"].as_str().expect("lastErrorAt is set");
    assert!(at.ends_with('Z') && at.len() >= 20, "RFC 3339 UTC: {at}");
    let l = backend(&view, &live.url());
    assert_eq!(l["up"], true, "{l}");
    assert_eq!(l["consecutiveFailures"], 0, "{l}");
    assert_eq!(l["lastError"], Value::Null, "{l}");
    assert_eq!(l["inFlight"], 0, "{l}");

    // A service whose only backend is dead is Unhealthy.
    assert_eq!(service_view(&gw, "lone").await["state"], "Unhealthy");

    // A request in progress shows as in flight on the backend that has it.
    let client = pki.client();
    let addr = gw.addr;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.h1(addr).await.score("iris", "", BODY).await }
    });
    let mut in_flight = 0;
    for _ in 0..40 {
        in_flight = backend(&service_view(&gw, "iris").await, &live.url())["inFlight"]
            .as_u64()
            .unwrap();
        if in_flight == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(in_flight, 1, "the slow request is in flight");
    assert_eq!(pending.await.unwrap().status, 200);
    let after = service_view(&gw, "iris").await;
    assert_eq!(backend(&after, &live.url())["inFlight"], 0);

    // The metrics say the same, per service and backend.
    let m = metrics(&gw).await;
    let up = |svc: &str, b: &str| {
        value(
            &m,
            "scoregate_backend_up",
            &[("service", svc), ("backend", b)],
        )
    };
    assert_eq!(up("iris", &live.url()), 1.0);
    assert_eq!(up("iris", &dead_url), 0.0);
    assert_eq!(up("lone", &dead_url), 0.0);
    let requests = |b: &str, result: &str| {
        value(
            &m,
            "scoregate_backend_requests_total",
            &[("backend", b), ("result", result)],
        )
    };
    assert_eq!(requests(&live.url(), "response"), 1.0);
    assert_eq!(requests(&live.url(), "timeout"), 0.0);
    assert_eq!(requests(&dead_url, "response"), 0.0);
    gw.stop().await;
}

#[tokio::test]
async fn request_failures_are_counted_by_cause_and_named_in_last_error() {
    // A backend that accepts and never answers (scoring_timeout), and one that refuses
    // connections (no probes: only requests see them).
    let silent = TcpBackend::start(|mut s| async move {
        read_request(&mut s).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    })
    .await;
    let dead = refused_port();
    let dead_url = format!("http://{dead}");
    let pki = Pki::new();
    let no_probes = HealthConfig {
        period: Duration::from_secs(3600),
        ..HealthConfig::default()
    };
    let mut slow = service("slow", AuthMode::None, &[silent.url()]);
    slow.health = no_probes.clone();
    slow.scoring_timeout = Duration::from_millis(300);
    let mut gone = service("gone", AuthMode::None, std::slice::from_ref(&dead_url));
    gone.health = no_probes;
    let gw = Gw::start(config(&pki, vec![slow, gone])).await;
    let client = pki.client();

    let r = client.h1(gw.addr).await.score("slow", "", BODY).await;
    assert_eq!(r.status, 504);
    let r = client.h1(gw.addr).await.score("gone", "", BODY).await;
    assert_eq!(r.status, 502);

    let v = service_view(&gw, "slow").await;
    let b = backend(&v, &silent.url());
    assert!(
        b["lastError"]
            .as_str()
            .unwrap()
            .contains("no response head within scoring_timeout"),
        "{b}"
    );
    let v = service_view(&gw, "gone").await;
    let b = backend(&v, &dead_url);
    assert!(b["lastError"].is_string(), "{b}");
    assert!(b["consecutiveFailures"].as_u64().unwrap() >= 1, "{b}");

    let m = metrics(&gw).await;
    let requests = |b: &str, result: &str| {
        value(
            &m,
            "scoregate_backend_requests_total",
            &[("backend", b), ("result", result)],
        )
    };
    assert_eq!(requests(&silent.url(), "timeout"), 1.0);
    assert_eq!(requests(&silent.url(), "response"), 0.0);
    assert!(requests(&dead_url, "connect_error") >= 1.0);
    assert_eq!(requests(&dead_url, "error"), 0.0);
    gw.stop().await;
}

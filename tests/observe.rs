//! The observe phase: every request is recorded exactly once — in the access log and in
//! `scoregate_requests_total` — however it ends, and the response, the log and the metric always
//! agree on its status and code.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use scoregate::config::AuthMode;
use scoregate_testkit::metrics::{metrics, value};
use scoregate_testkit::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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

/// Installs (once per test binary) a JSON subscriber for the `access` target that writes to
/// memory, and returns what it has captured so far.
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

/// The access-log lines whose `field` is `value`.
fn lines_where(field: &str, v: &str) -> Vec<Value> {
    let bytes = access_log().0.lock().unwrap().clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l[field] == v)
        .collect()
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..100 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

fn slow(d: Duration) -> Reply {
    Reply {
        delay: d,
        ..Reply::ok(r#"{"ok":true}"#)
    }
}

// ---------------------------------------------------------------- clients that leave

/// Regression (issue 10): a client that gave up while its request was being forwarded left no
/// access-log line and no metric, because recording ran only when the handler returned.
#[tokio::test]
async fn a_client_that_leaves_mid_forward_is_logged_once_and_counted() {
    access_log();
    let pki = Pki::new();
    let backend = Backend::with(|_| slow(Duration::from_secs(3))).await;
    let gw = Gw::start(config(
        &pki,
        vec![service("gone-forward", AuthMode::None, &[backend.url()])],
    ))
    .await;
    let client = pki.client();
    let addr = gw.addr;
    let req = tokio::spawn(async move {
        let mut c = client.h1(addr).await;
        c.send("POST", "/api/v1/service/gone-forward/score", &[], "{}")
            .await
    });
    eventually("the backend has the request", || backend.count() == 1).await;
    req.abort();
    let _ = req.await;
    eventually("one access-log line", || {
        !lines_where("service", "gone-forward").is_empty()
    })
    .await;
    // Give a second (wrong) line the chance to appear.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = lines_where("service", "gone-forward");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["outcome"], "client_gone", "{l}");
    assert_eq!(l["status"], 499, "{l}");
    assert_eq!(l["code"], "client_gone", "{l}");
    assert_eq!(l["method"], "POST", "{l}");
    assert_eq!(l["path"], "/api/v1/service/gone-forward/score", "{l}");
    assert!(l["backend"].as_str().unwrap().starts_with("http://"), "{l}");
    let m = metrics(&gw).await;
    assert_eq!(
        value(
            &m,
            "scoregate_requests_total",
            &[("service", "gone-forward"), ("code", "client_gone")]
        ),
        1.0
    );
    assert_eq!(value(&m, "scoregate_requests_in_flight", &[]), 0.0);
    gw.stop().await;
}

/// Regression (issue 10): the same for a client that left while waiting for a backend slot.
#[tokio::test]
async fn a_client_that_leaves_while_waiting_for_a_slot_is_logged_once() {
    access_log();
    let pki = Pki::new();
    let backend = Backend::with(|_| slow(Duration::from_secs(3))).await;
    let mut svc = service("gone-wait", AuthMode::None, &[backend.url()]);
    svc.max_concurrent_requests_per_backend = 1;
    svc.max_request_wait_time = Duration::from_secs(10);
    let gw = Gw::start(config(&pki, vec![svc])).await;
    let (client, addr) = (pki.client(), gw.addr);
    let first = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut c = client.h1(addr).await;
            c.send("POST", "/api/v1/service/gone-wait/score", &[], "{}")
                .await
        })
    };
    eventually("the first request holds the slot", || backend.count() == 1).await;
    let waiting = tokio::spawn(async move {
        let mut c = client.h1(addr).await;
        c.send("POST", "/api/v1/service/gone-wait/score", &[], "{}")
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiting.abort();
    let _ = waiting.await;
    eventually("the waiter is logged", || {
        lines_where("service", "gone-wait").len() == 1
    })
    .await;
    let l = &lines_where("service", "gone-wait")[0];
    assert_eq!(l["outcome"], "client_gone", "{l}");
    assert_eq!(l["backend"], "-", "it never reached a backend: {l}");
    // The first request still completes and is logged as a success.
    assert_eq!(first.await.unwrap().status, 200);
    eventually("both are logged", || {
        lines_where("service", "gone-wait").len() == 2
    })
    .await;
    assert_eq!(backend.count(), 1, "the waiter never reached the backend");
    gw.stop().await;
}

/// A backend that sends a head and then breaks its body: logged with the head's status and
/// `outcome = body_error`, counted under `code = body_error`, never as a success.
#[tokio::test]
async fn a_body_that_breaks_after_its_head_is_a_body_error() {
    access_log();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"partial",
                    )
                    .await;
                // Close with 90 bytes still owed.
            });
        }
    });
    let pki = Pki::new();
    let gw = Gw::start(config(
        &pki,
        vec![service("broken-body", AuthMode::None, &[url])],
    ))
    .await;
    let tls = pki.client().connect(gw.addr, &[b"http/1.1"]).await;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/api/v1/service/broken-body/score")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let resp = tokio::time::timeout(STEP, tx.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the head went out before the body broke"
    );
    let body = tokio::time::timeout(STEP, http_body_util::BodyExt::collect(resp.into_body()))
        .await
        .unwrap();
    assert!(body.is_err(), "the client sees the body fail");
    eventually("logged", || {
        !lines_where("service", "broken-body").is_empty()
    })
    .await;
    let lines = lines_where("service", "broken-body");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "body_error", "{}", lines[0]);
    assert_eq!(lines[0]["status"], 200);
    let m = metrics(&gw).await;
    assert_eq!(
        value(
            &m,
            "scoregate_requests_total",
            &[("service", "broken-body"), ("code", "body_error")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "scoregate_requests_total",
            &[("service", "broken-body"), ("code", "backend")]
        ),
        0.0
    );
    gw.stop().await;
}

// ---------------------------------------------------------------- every error agrees

/// (method, path, headers, body, status, code, service label when routed)
type Case<'a> = (
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    &'a str,
    u16,
    &'a str,
    Option<&'a str>,
);

/// For every error the gateway can make, the response's status and code, the access log's
/// `status` and `code`, and the `code` label of the request counter are the same thing.
#[tokio::test]
async fn every_gateway_error_agrees_in_response_log_and_metrics() {
    access_log();
    let pki = Pki::new();
    let ok = Backend::start().await;
    let slow_backend = Backend::with(|_| slow(Duration::from_millis(800))).await;
    let dead = refused_port();
    let mut keyed = service("errs-key", AuthMode::Key, &[ok.url()]);
    keyed.max_body = 10;
    let mut denied = service("errs-deny", AuthMode::None, &[ok.url()]);
    denied.deny = vec!["127.0.0.0/8".parse().unwrap()];
    let mut timeout = service("errs-timeout", AuthMode::None, &[slow_backend.url()]);
    timeout.scoring_timeout = Duration::from_millis(100);
    let mut busy = service("errs-busy", AuthMode::None, &[slow_backend.url()]);
    busy.max_concurrent_requests_per_backend = 1;
    busy.max_request_wait_time = Duration::from_millis(50);
    let dead_svc = service("errs-dead", AuthMode::None, &[format!("http://{dead}")]);
    let mut limited = service("errs-limit", AuthMode::None, &[ok.url()]);
    limited.rate_limits = vec![scoregate::config::RateLimitConfig::new(
        "one",
        scoregate::config::RateLimitBy::Service,
        1,
        Duration::from_secs(3600),
        1,
    )];
    let gw = Gw::start(config(
        &pki,
        vec![keyed, denied, timeout, busy, dead_svc, limited],
    ))
    .await;
    let (key, _) = gw.keys("errs-key");
    let auth = format!("Bearer {key}");
    let client = pki.client();

    // A request that holds errs-busy's one slot while the 503 is provoked.
    let holder = {
        let (client, addr) = (client.clone(), gw.addr);
        tokio::spawn(async move {
            once(
                &client,
                addr,
                "POST",
                "/api/v1/service/errs-busy/score",
                &[],
                "{}",
            )
            .await
        })
    };
    eventually("errs-busy's slot is taken", || slow_backend.count() >= 1).await;
    // errs-limit's one token is spent.
    let r = once(
        &client,
        gw.addr,
        "POST",
        "/api/v1/service/errs-limit/score",
        &[],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200);

    let score = |s: &str| format!("/api/v1/service/{s}/score");
    let cases: Vec<Case> = vec![
        (
            "POST",
            score("errs-key"),
            vec![("x-ms-client-request-id", "a/b")],
            "{}",
            400,
            "BadRequest",
            None,
        ),
        ("GET", "/nope".into(), vec![], "", 404, "NotFound", None),
        (
            "POST",
            score("no-such-svc"),
            vec![],
            "{}",
            404,
            "ServiceNotFound",
            None,
        ),
        (
            "GET",
            score("errs-key"),
            vec![],
            "",
            405,
            "MethodNotAllowed",
            Some("errs-key"),
        ),
        (
            "POST",
            score("errs-deny"),
            vec![],
            "{}",
            403,
            "Forbidden",
            Some("errs-deny"),
        ),
        (
            "POST",
            score("errs-key"),
            vec![("authorization", "Bearer wrong")],
            "{}",
            401,
            "Unauthorized",
            Some("errs-key"),
        ),
        (
            "POST",
            score("errs-key"),
            vec![("authorization", auth.as_str())],
            "this body is longer than ten bytes",
            413,
            "PayloadTooLarge",
            Some("errs-key"),
        ),
        (
            "POST",
            score("errs-limit"),
            vec![],
            "{}",
            429,
            "TooManyRequests",
            Some("errs-limit"),
        ),
        (
            "POST",
            score("errs-busy"),
            vec![],
            "{}",
            503,
            "ServiceOverloaded",
            Some("errs-busy"),
        ),
        (
            "POST",
            score("errs-dead"),
            vec![],
            "{}",
            502,
            "BackendUnavailable",
            Some("errs-dead"),
        ),
        (
            "POST",
            score("errs-timeout"),
            vec![],
            "{}",
            504,
            "ScoringTimeout",
            Some("errs-timeout"),
        ),
    ];
    for (method, path, headers, body, status, code, svc) in cases {
        let before = metrics(&gw).await;
        let r = once(&client, gw.addr, method, &path, &headers, body).await;
        assert_eq!(r.status, status, "{code}: {:?}", r.body);
        assert_eq!(r.code(), code);
        let rid = r.header("x-ms-request-id").to_string();
        eventually(&format!("{code} is logged"), || {
            lines_where("request_id", &rid).len() == 1
        })
        .await;
        let line = &lines_where("request_id", &rid)[0];
        assert_eq!(line["status"], status, "{line}");
        assert_eq!(line["code"], code, "{line}");
        assert_eq!(line["outcome"], "complete", "{line}");
        let after = metrics(&gw).await;
        let class = format!("{}xx", status / 100);
        let (name, labels): (&str, Vec<(&str, &str)>) = match svc {
            Some(s) => (
                "scoregate_requests_total",
                vec![("service", s), ("code", code), ("class", &class)],
            ),
            None => (
                "scoregate_unrouted_requests_total",
                vec![("code", code), ("class", &class)],
            ),
        };
        assert_eq!(
            value(&after, name, &labels) - value(&before, name, &labels),
            1.0,
            "{code}: {name} {labels:?}"
        );
    }
    assert_eq!(holder.await.unwrap().status, 200);
    gw.stop().await;
}

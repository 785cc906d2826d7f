//! Backend resilience against the real gateway: per-backend concurrency limits with a bounded
//! wait, least-loaded choice (power of two choices), active and passive health, and backends
//! that are slow, down, or cut the connection.
//!
//! These tests measure time, so they run one at a time (`SERIAL`), assert lower bounds tightly
//! and upper bounds loosely, and poll with bounded loops instead of sleeping a fixed time.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use scoregate::config::{AuthMode, HealthConfig, ServiceConfig};
use scoregate::proxy::upstream::Backend as GwBackend;
use scoregate::state::Service;
use scoregate_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const BODY: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

/// One timing-sensitive test at a time, even when the harness runs tests in parallel.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fast probes, so health changes show within a second.
fn quick_health(failures: u32, successes: u32) -> HealthConfig {
    HealthConfig {
        period: Duration::from_millis(200),
        timeout: Duration::from_millis(500),
        failure_threshold: failures,
        success_threshold: successes,
        ..HealthConfig::default()
    }
}

/// No probe within any test's lifetime: isolates the other mechanisms.
fn no_probes() -> HealthConfig {
    HealthConfig {
        period: Duration::from_secs(3600),
        ..HealthConfig::default()
    }
}

fn slow(delay: Duration) -> Reply {
    Reply {
        delay,
        ..Reply::ok(r#"{"ok":true}"#)
    }
}

fn svc(gw: &Gw, name: &str) -> Arc<Service> {
    gw.server.shared.snapshot().service(name).unwrap().clone()
}

fn gw_backend(gw: &Gw, name: &str, addr: SocketAddr) -> Arc<GwBackend> {
    let url = format!("http://{addr}");
    svc(gw, name).deployments[0]
        .upstream
        .backends
        .iter()
        .find(|b| b.url == url)
        .unwrap()
        .clone()
}

/// Polls `cond` every 20 ms until it holds; fails the test after `within`.
async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A scoring request on its own HTTP/1.1 connection, driven inside the calling task: when the
/// task is aborted the connection closes, like a client that goes away. `Err` when the
/// response head or body breaks.
async fn score_owned(client: TlsClient, addr: SocketAddr, service: String) -> Result<Resp, String> {
    let tls = client.connect(addr, &[b"http/1.1"]).await;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let req = Request::post(format!("/api/v1/service/{service}/score"))
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(BODY)))
        .unwrap();
    let exchange = async {
        let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            version: parts.version,
        })
    };
    let run = async {
        let mut conn = std::pin::pin!(conn);
        let mut exchange = std::pin::pin!(exchange);
        tokio::select! {
            biased;
            r = &mut exchange => r,
            _ = &mut conn => exchange.await,
        }
    };
    tokio::time::timeout(STEP, run)
        .await
        .map_err(|_| "request timed out".to_string())?
}

/// `score_owned` in a task of its own, with the time it took.
fn spawn_score(
    client: &TlsClient,
    addr: SocketAddr,
    service: &str,
) -> JoinHandle<(Result<Resp, String>, Duration)> {
    let (client, service) = (client.clone(), service.to_string());
    tokio::spawn(async move {
        let t = Instant::now();
        let r = score_owned(client, addr, service).await;
        (r, t.elapsed())
    })
}

async fn score(client: &TlsClient, addr: SocketAddr, service: &str) -> (Resp, Duration) {
    let t = Instant::now();
    let r = score_owned(client.clone(), addr, service.into())
        .await
        .unwrap();
    (r, t.elapsed())
}

/// The service's `state` as the admin API reports it.
async fn admin_state(gw: &Gw, name: &str) -> String {
    let token = gw.admin_token();
    let r = admin_request(
        gw.admin,
        "GET",
        &format!("/v1/services/{name}"),
        Some(&token),
        "",
    )
    .await;
    r.json()["state"].as_str().unwrap().to_string()
}

fn limited(name: &str, backends: &[String], limit: usize, wait: Duration) -> ServiceConfig {
    let mut s = service(name, AuthMode::None, backends);
    s.max_concurrent_requests_per_backend = limit;
    s.max_request_wait_time = wait;
    s.health = no_probes();
    s
}

fn assert_overloaded(r: &Resp) {
    assert_eq!((r.status, r.code().as_str()), (503, "ServiceOverloaded"));
    let secs: u64 = r
        .header("retry-after")
        .parse()
        .expect("Retry-After in seconds");
    assert!(secs >= 1, "Retry-After {secs}");
}

#[tokio::test]
async fn a_busy_backend_gets_503_with_retry_after_once_the_wait_runs_out() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::with(|_| slow(Duration::from_millis(1500))).await;
    let wait = Duration::from_millis(300);
    let gw = Gw::start(config(
        &pki,
        vec![limited("iris", &[backend.url()], 1, wait)],
    ))
    .await;
    let client = pki.client();

    let first = spawn_score(&client, gw.addr, "iris");
    eventually("the first request reaches the backend", STEP, || {
        backend.scored() == 1
    })
    .await;
    let (second, took) = score(&client, gw.addr, "iris").await;
    assert_overloaded(&second);
    assert!(
        took >= wait,
        "refused after {took:?}, before the wait ran out"
    );
    assert!(took < Duration::from_millis(1400), "{took:?}");

    let (first, _) = first.await.unwrap();
    assert_eq!(first.unwrap().status, 200);
    assert_eq!(
        backend.scored(),
        1,
        "the refused request never reached the backend"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_waiting_request_is_served_when_a_slot_frees() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let delay = Duration::from_millis(600);
    let backend = Backend::with(move |_| slow(delay)).await;
    let gw = Gw::start(config(
        &pki,
        vec![limited("iris", &[backend.url()], 1, Duration::from_secs(5))],
    ))
    .await;
    let client = pki.client();

    let first = spawn_score(&client, gw.addr, "iris");
    eventually("the first request reaches the backend", STEP, || {
        backend.scored() == 1
    })
    .await;
    let since_first = Instant::now();
    let (second, took) = score(&client, gw.addr, "iris").await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    // It waited for the first to finish, then took its own turn at the backend.
    assert!(
        since_first.elapsed() >= delay + delay / 2,
        "served after {took:?}: it did not wait for the slot"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(first.await.unwrap().0.unwrap().status, 200);
    assert_eq!(backend.scored(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn a_full_wait_queue_is_refused_at_once_and_clients_that_leave_free_their_places() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    // The first request takes 3 s; later ones are quick.
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let backend = Backend::with(move |_| {
        if c2.fetch_add(1, Ordering::SeqCst) == 0 {
            slow(Duration::from_secs(3))
        } else {
            Reply::ok(r#"{"ok":true}"#)
        }
    })
    .await;
    let wait = Duration::from_secs(30);
    let gw = Gw::start(config(
        &pki,
        vec![limited("iris", &[backend.url()], 1, wait)],
    ))
    .await;
    let client = pki.client();
    let service = svc(&gw, "iris");
    let queue = service.deployments[0].upstream.max_waiters(1);
    assert_eq!(queue, scoregate::proxy::upstream::WAITERS_PER_SLOT);

    let mut clients = vec![spawn_score(&client, gw.addr, "iris")];
    eventually("the first request holds the slot", STEP, || {
        backend.scored() == 1
    })
    .await;
    for _ in 0..queue {
        clients.push(spawn_score(&client, gw.addr, "iris"));
    }
    eventually("the wait queue fills", STEP, || {
        service.deployments[0].upstream.waiting() == queue
    })
    .await;
    let (r, took) = score(&client, gw.addr, "iris").await;
    assert_overloaded(&r);
    assert!(
        took < Duration::from_secs(2),
        "queue full must be refused at once: {took:?}"
    );

    // Every client goes away: the queue places come back at once; the slot of the request the
    // backend is still computing stays taken until the backend answers (issue 11).
    for c in &clients {
        c.abort();
    }
    let b = service.deployments[0].upstream.backends[0].clone();
    eventually("no queue place is left behind", STEP, || {
        service.deployments[0].upstream.waiting() == 0
    })
    .await;
    assert_eq!(b.in_flight(), 1, "the backend is still computing");
    eventually("the slot comes back when the backend answers", STEP, || {
        b.in_flight() == 0
    })
    .await;
    let (r, took) = score(&client, gw.addr, "iris").await;
    assert_eq!(r.status, 200);
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(b.in_flight(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn a_new_limit_applies_with_the_next_snapshot_and_counts_requests_already_in_flight() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::with(|_| slow(Duration::from_millis(1500))).await;
    let wait = Duration::from_millis(200);
    let cfg = config(&pki, vec![limited("iris", &[backend.url()], 1, wait)]);
    let gw = Gw::start(cfg.clone()).await;
    let client = pki.client();
    let gateway = gw.server.shared.clone();
    let republish = |limit: usize| {
        let mut c = cfg.clone();
        c.services[0].max_concurrent_requests_per_backend = limit;
        let issuers = gateway.snapshot().issuers.clone();
        gateway.publish(gateway.build(c, gateway.state(), issuers).unwrap());
    };

    let first = spawn_score(&client, gw.addr, "iris");
    eventually("the first request holds the slot", STEP, || {
        backend.scored() == 1
    })
    .await;
    // A new snapshot with the same limit shares the backend: the request in flight counts.
    republish(1);
    let (r, _) = score(&client, gw.addr, "iris").await;
    assert_overloaded(&r);
    // A raised limit lets the next request through at once.
    republish(2);
    let second = spawn_score(&client, gw.addr, "iris");
    eventually("the second request reaches the backend", STEP, || {
        backend.scored() == 2
    })
    .await;
    assert_eq!(
        svc(&gw, "iris").deployments[0].upstream.backends[0].in_flight(),
        2
    );
    let (r, _) = score(&client, gw.addr, "iris").await;
    assert_overloaded(&r);
    assert_eq!(first.await.unwrap().0.unwrap().status, 200);
    assert_eq!(second.await.unwrap().0.unwrap().status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn with_one_of_two_backends_down_every_request_succeeds() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let live = Backend::start().await;
    let dead = refused_port();
    let mut s = service(
        "iris",
        AuthMode::None,
        &[format!("http://{dead}"), live.url()],
    );
    s.health = no_probes();
    let gw = Gw::start(config(&pki, vec![s])).await;
    let client = pki.client();
    let mut c = client.h1(gw.addr).await;
    for _ in 0..10 {
        let r = c.score("iris", "", BODY).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    // Concurrently too.
    let tasks: Vec<_> = (0..10)
        .map(|_| spawn_score(&client, gw.addr, "iris"))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().0.unwrap().status, 200);
    }
    assert_eq!(live.scored(), 20);
    // Real requests' connect failures took the dead one out (passive check).
    assert!(gw_backend(&gw, "iris", dead).is_ejected());
    gw.stop().await;
}

#[tokio::test]
async fn a_backend_backed_off_for_refusing_connections_gets_traffic_again_when_it_is_back() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let live = Backend::start().await;
    let port = dead_port().await;
    let mut s = service(
        "iris",
        AuthMode::None,
        &[format!("http://{port}"), live.url()],
    );
    s.health = no_probes();
    let gw = Gw::start(config(&pki, vec![s])).await;
    let client = pki.client();
    let flappy = gw_backend(&gw, "iris", port);
    let mut c = client.h1(gw.addr).await;
    let mut sent = 0;
    while !flappy.is_ejected() {
        assert!(sent < 50, "never backed off");
        assert_eq!(c.score("iris", "", BODY).await.status, 200);
        sent += 1;
    }
    let back = Backend::on(port, |_| Reply::ok(r#"{"ok":true}"#)).await;
    let t = Instant::now();
    while back.scored() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a restarted backend never got traffic after its back-off"
        );
        assert_eq!(c.score("iris", "", BODY).await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!flappy.is_ejected());
    gw.stop().await;
}

#[tokio::test]
async fn the_active_check_takes_a_failing_backend_out_and_brings_it_back() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let live = Backend::start().await;
    // Scores fine, but its liveness route fails while `sick` is set.
    let sick = Arc::new(AtomicBool::new(false));
    let s2 = sick.clone();
    let flaky = Backend::with(move |seen| {
        if seen.method == "GET" && s2.load(Ordering::SeqCst) {
            Reply {
                status: 503,
                ..Reply::ok("{}")
            }
        } else {
            Reply::ok(r#"{"ok":true}"#)
        }
    })
    .await;
    let mut s = service("iris", AuthMode::None, &[flaky.url(), live.url()]);
    s.health = quick_health(2, 2);
    let gw = Gw::start(config(&pki, vec![s])).await;
    let client = pki.client();
    let b = gw_backend(&gw, "iris", flaky.addr);
    let mut c = client.h1(gw.addr).await;
    for _ in 0..6 {
        assert_eq!(c.score("iris", "", BODY).await.status, 200);
    }
    assert!(
        flaky.scored() > 0,
        "both backends get traffic while healthy"
    );

    sick.store(true, Ordering::SeqCst);
    eventually("two failed probes take it out", STEP, || !b.is_healthy()).await;
    let (before_flaky, before_live) = (flaky.scored(), live.scored());
    for _ in 0..20 {
        assert_eq!(c.score("iris", "", BODY).await.status, 200);
    }
    assert_eq!(
        flaky.scored(),
        before_flaky,
        "an unhealthy backend gets no requests"
    );
    assert_eq!(live.scored(), before_live + 20);
    assert_eq!(
        admin_state(&gw, "iris").await,
        "Degraded",
        "one backend is still up, one is out"
    );

    sick.store(false, Ordering::SeqCst);
    eventually("two good probes bring it back", STEP, || b.is_healthy()).await;
    for _ in 0..6 {
        assert_eq!(c.score("iris", "", BODY).await.status, 200);
    }
    assert!(
        flaky.scored() > before_flaky,
        "a recovered backend gets traffic again"
    );
    assert!(flaky.probes() >= 4);
    gw.stop().await;
}

#[tokio::test]
async fn a_stopped_backend_is_taken_out_and_comes_back_when_restarted_on_its_port() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let live = Backend::start().await;
    let port = dead_port().await;
    let flappy = Backend::on(port, |_| Reply::ok(r#"{"ok":true}"#)).await;
    let mut s = service(
        "iris",
        AuthMode::None,
        &[format!("http://{port}"), live.url()],
    );
    s.health = quick_health(2, 1);
    let gw = Gw::start(config(&pki, vec![s])).await;
    let client = pki.client();
    let b = gw_backend(&gw, "iris", port);
    let mut c = client.h1(gw.addr).await;
    for _ in 0..6 {
        assert_eq!(c.score("iris", "", BODY).await.status, 200);
    }
    assert!(flappy.scored() > 0);

    drop(flappy);
    // The backend's connections close when its aborted task is next run: give that a moment,
    // so that no request is in flight on one of them as it closes (that one would get a 502:
    // a request that was sent is never resent).
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Requests keep succeeding while the gateway finds out.
    let t = Instant::now();
    while b.is_healthy() {
        assert!(t.elapsed() < STEP, "the active check never noticed");
        let r = c.score("iris", "", BODY).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let back = Backend::on(port, |_| Reply::ok(r#"{"ok":true}"#)).await;
    eventually("a good probe brings it back", STEP, || b.is_healthy()).await;
    let t = Instant::now();
    while back.scored() == 0 {
        assert!(
            t.elapsed() < STEP,
            "the restarted backend never got traffic"
        );
        assert_eq!(c.score("iris", "", BODY).await.status, 200);
    }
    gw.stop().await;
}

#[tokio::test]
async fn with_every_backend_down_requests_fail_fast_with_502_and_the_service_is_unhealthy() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let (p1, p2) = (dead_port().await, dead_port().await);
    // A limit and a long wait: none of it may be spent when no backend is up.
    let mut s = limited(
        "iris",
        &[format!("http://{p1}"), format!("http://{p2}")],
        1,
        Duration::from_secs(5),
    );
    s.health = quick_health(1, 1);
    let gw = Gw::start(config(&pki, vec![s])).await;
    let client = pki.client();

    // Before any check has run: both refuse the connection.
    let (r, took) = score(&client, gw.addr, "iris").await;
    assert_eq!((r.status, r.code().as_str()), (502, "BackendUnavailable"));
    assert!(took < Duration::from_secs(1), "{took:?}");

    let t = Instant::now();
    while admin_state(&gw, "iris").await != "Unhealthy" {
        assert!(t.elapsed() < STEP, "never reported Unhealthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        let (r, took) = score(&client, gw.addr, "iris").await;
        assert_eq!((r.status, r.code().as_str()), (502, "BackendUnavailable"));
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    let back = Backend::on(p2, |_| Reply::ok(r#"{"ok":true}"#)).await;
    let t = Instant::now();
    // One of the two is back: requests flow again, and the service is Degraded, not Unhealthy.
    while admin_state(&gw, "iris").await != "Degraded" {
        assert!(t.elapsed() < STEP, "never back to Degraded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (r, _) = score(&client, gw.addr, "iris").await;
    assert_eq!(r.status, 200);
    assert_eq!(back.scored(), 1);
    gw.stop().await;
}

/// How a misbehaving raw backend ends each exchange.
#[derive(Clone, Copy)]
enum Cut {
    /// Reads the request, then closes without a word.
    Silent,
    /// Sends half a response head, then closes.
    HalfHead,
    /// Sends a head promising 100 bytes, 10 of them, then closes.
    HalfBody,
}

/// A raw TCP backend that reads each request whole (counting them), then misbehaves as told.
/// A complete request head at the start of `buf`: its length (with the blank line) and the
/// body's `Content-Length` (0 when absent).
fn request_head(buf: &[u8]) -> Option<(usize, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    Some((end + 4, len))
}

async fn cutting_backend(cut: Cut) -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let r2 = requests.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let requests = r2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head, then as many body bytes as Content-Length says.
                let want = loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some((head, len)) = request_head(&buf) {
                        break head + len;
                    }
                };
                while buf.len() < want {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                requests.fetch_add(1, Ordering::SeqCst);
                let out: &[u8] = match cut {
                    Cut::Silent => b"",
                    Cut::HalfHead => b"HTTP/1.1 200 OK\r\nContent-Le",
                    Cut::HalfBody => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
                };
                let _ = s.write_all(out).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, requests, task)
}

#[tokio::test]
async fn a_backend_that_cuts_the_connection_mid_answer_is_a_502_and_the_gateway_keeps_serving() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let good = Backend::start().await;
    let (silent, silent_seen, t1) = cutting_backend(Cut::Silent).await;
    let (half_head, half_head_seen, t2) = cutting_backend(Cut::HalfHead).await;
    let (half_body, _, t3) = cutting_backend(Cut::HalfBody).await;
    let mk = |name: &str, url: String| {
        let mut s = service(name, AuthMode::None, &[url]);
        s.health = no_probes();
        s
    };
    let gw = Gw::start(config(
        &pki,
        vec![
            mk("good", good.url()),
            mk("silent", format!("http://{silent}")),
            mk("half-head", format!("http://{half_head}")),
            mk("half-body", format!("http://{half_body}")),
        ],
    ))
    .await;
    let client = pki.client();
    let mut c = client.h1(gw.addr).await;
    for (name, addr, seen) in [
        ("silent", silent, &silent_seen),
        ("half-head", half_head, &half_head_seen),
    ] {
        let r = c.score(name, "", BODY).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (502, "BackendUnavailable"),
            "{name}"
        );
        // Same connection, next request: the gateway is fine.
        assert_eq!(c.score("good", "", BODY).await.status, 200);
        // A sent request is never retried, and a broken answer is no connect failure.
        assert_eq!(seen.load(Ordering::SeqCst), 1, "{name}");
        assert!(!gw_backend(&gw, name, addr).is_ejected());
    }
    // Headers already went to the client: the body must break, not end short and clean.
    let r = score_owned(client.clone(), gw.addr, "half-body".into()).await;
    assert!(r.is_err(), "a cut body must not look complete: {r:?}");
    for _ in 0..3 {
        assert_eq!(c.score("good", "", BODY).await.status, 200);
    }
    assert_eq!(good.scored(), 5);
    for t in [t1, t2, t3] {
        t.abort();
    }
    gw.stop().await;
}

#[tokio::test]
async fn least_loaded_choice_sends_most_requests_to_the_faster_backend() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let slow_one = Backend::with(|_| slow(Duration::from_secs(2))).await;
    let fast = Backend::start().await;
    let mut s = service("iris", AuthMode::None, &[slow_one.url(), fast.url()]);
    s.health = no_probes();
    let gw = Gw::start(config(&pki, vec![s])).await;
    let client = pki.client();
    // Four clients send back to back for 1.5 s. No slow answer comes back within that window,
    // so the slow backend's outstanding count only grows: it can get a request only while it
    // has no more than the fast one, i.e. at most 3 of them (the fourth client is then the only
    // one left to load the fast backend). Round robin would park every client on it at once.
    const WORKERS: usize = 4;
    let window = Duration::from_millis(1500);
    let until = Instant::now() + window;
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let client = client.clone();
            let addr = gw.addr;
            tokio::spawn(async move {
                let mut c = client.h1(addr).await;
                while Instant::now() < until {
                    assert_eq!(c.score("iris", "", BODY).await.status, 200);
                }
            })
        })
        .collect();
    tokio::time::sleep_until(until.into()).await;
    let (s, f) = (slow_one.scored(), fast.scored());
    for w in workers {
        w.await.unwrap();
    }
    assert!(s < WORKERS, "slow {s}, fast {f}");
    assert!(f >= 20, "slow {s}, fast {f}");
    gw.stop().await;
}

/// Request bodies this large are answered as soon as their head arrives, and read afterwards
/// (`keep_alive_backend`), like a server that refuses an upload early but keeps the connection.
const EARLY_ANSWER_AT: usize = 100_000;

/// A keep-alive HTTP/1.1 backend that counts the connections it accepts and closes a
/// connection that stays idle for `idle_close` (as gunicorn and most servers do). A request
/// body of `EARLY_ANSWER_AT` bytes or more is answered before it is read.
async fn keep_alive_backend(
    idle_close: Duration,
) -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: head, then Content-Length body bytes; idle too long: close.
                    let out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
                    let (want, early) = loop {
                        if let Some((head, len)) = request_head(&buf) {
                            break (head + len, len >= EARLY_ANSWER_AT);
                        }
                        match tokio::time::timeout(idle_close, s.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => {
                                let _ = s.shutdown().await;
                                return;
                            }
                        }
                    };
                    if early && s.write_all(out).await.is_err() {
                        return;
                    }
                    while buf.len() < want {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..want);
                    if !early && s.write_all(out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, task)
}

/// Backend connections are pooled: sequential requests share one, a burst opens more and later
/// requests reuse them, and a connection the backend closed while idle is not used again (the
/// request after it still succeeds).
#[tokio::test]
async fn backend_connections_are_reused_and_one_the_backend_closed_is_replaced() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let (addr, accepted, task) = keep_alive_backend(Duration::from_millis(300)).await;
    let mut s = service("pooled", AuthMode::None, &[format!("http://{addr}")]);
    s.health = no_probes();
    let gw = Gw::start(config(&pki, vec![s])).await;
    let client = pki.client();
    let mut c = client.h1(gw.addr).await;

    for _ in 0..10 {
        assert_eq!(c.score("pooled", "", BODY).await.status, 200);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "sequential requests share a connection"
    );

    // The backend closes its idle connection; the next requests get a new one.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for _ in 0..5 {
        assert_eq!(c.score("pooled", "", BODY).await.status, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // A burst needs more connections; afterwards they are reused, not reopened.
    let burst: Vec<_> = (0..6)
        .map(|_| spawn_score(&client, gw.addr, "pooled"))
        .collect();
    for t in burst {
        assert_eq!(t.await.unwrap().0.unwrap().status, 200);
    }
    let after_burst = accepted.load(Ordering::SeqCst);
    assert!(
        after_burst <= 2 + 6,
        "{after_burst} connections for 6 requests"
    );
    for _ in 0..10 {
        assert_eq!(c.score("pooled", "", BODY).await.status, 200);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        after_burst,
        "pooled connections are reused"
    );
    task.abort();
    gw.stop().await;
}

/// A backend connection whose answer came before the request body was fully sent is not handed
/// to the next request until the upload is done: the next request gets another connection at
/// once instead of waiting behind the upload, and the first connection is pooled afterwards.
#[tokio::test]
async fn a_connection_still_uploading_is_not_given_to_the_next_request() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let (addr, accepted, task) = keep_alive_backend(Duration::from_secs(30)).await;
    let mut s = service("early", AuthMode::None, &[format!("http://{addr}")]);
    s.health = no_probes();
    let gw = Gw::start(config(&pki, vec![s])).await;
    let client = pki.client();

    // A 200 kB upload trickled over ~2 s; the backend answers when the head arrives.
    let tls = client.connect(gw.addr, &[b"http/1.1"]).await;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);
    let (mut body_tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(4);
    let chunks = 20;
    let chunk = vec![b' '; 10_000];
    let upload = Request::post("/api/v1/service/early/score")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("content-length", (chunks * chunk.len()).to_string())
        .body(body)
        .unwrap();
    let uploader = tokio::spawn(async move {
        for _ in 0..chunks {
            if body_tx.send_data(Bytes::from(chunk.clone())).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    });
    let resp = tokio::time::timeout(STEP, tx.send_request(upload))
        .await
        .expect("no early answer")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await.unwrap();
    assert!(
        !uploader.is_finished(),
        "the upload should still be running"
    );

    // The next request does not wait for that upload.
    let t = Instant::now();
    let (r, _) = score(&client, gw.addr, "early").await;
    let took = t.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        took < Duration::from_millis(1000),
        "the next request waited {took:?} for another request's upload"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // Once the upload is done, its connection is pooled again and reused.
    assert!(uploader.await.unwrap(), "the upload was cut off");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..2 {
        let burst: Vec<_> = (0..2)
            .map(|_| spawn_score(&client, gw.addr, "early"))
            .collect();
        for t in burst {
            assert_eq!(t.await.unwrap().0.unwrap().status, 200);
        }
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "both connections are reused once the upload is done"
    );
    conn_task.abort();
    task.abort();
    gw.stop().await;
}

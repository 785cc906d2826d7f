//! Hardening (issue 11) against the real gateway, apart from HTTP/2 streams (see
//! `hardening_h2.rs`): files that are not files on reload, connections per client and under the
//! connection cap, the backend slot held for the whole response, bodies that stall either way,
//! request framing that must be refused, a backend that never sends a final head, and the admin
//! connection cap.
//!
//! Timing-sensitive tests run one at a time (`SERIAL`), with bounds well past what they need:
//! CI has two shared cores.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use scoregate::certgen::LeafOptions;
use scoregate::config::{AuthMode, Config, HealthConfig, ServiceConfig};
use scoregate_testkit::metrics::{metrics, value};
use scoregate_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const BODY: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

/// One timing-sensitive test at a time in this file.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------- helpers

/// No probe within any test's lifetime.
fn no_probes() -> HealthConfig {
    HealthConfig {
        period: Duration::from_secs(3600),
        ..HealthConfig::default()
    }
}

fn open_service(name: &str, url: String) -> ServiceConfig {
    let mut s = service(name, AuthMode::None, &[url]);
    s.health = no_probes();
    s
}

/// A service with one slot per backend and a short wait for it.
fn one_slot(name: &str, url: String) -> ServiceConfig {
    let mut s = open_service(name, url);
    s.max_concurrent_requests_per_backend = 1;
    s.max_request_wait_time = Duration::from_millis(200);
    s
}

fn score_path(service: &str) -> String {
    format!("/api/v1/service/{service}/score")
}

/// A TCP connection from a chosen loopback source address (127.0.0.x all work on Linux).
async fn tcp_from(src: &str, addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(STEP, sock.connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// TLS (ALPN http/1.1) from `src`; the handshake's result.
async fn tls_from(
    client: &TlsClient,
    src: &str,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(src, addr).await;
    let cfg = client.config(&[b"http/1.1"], rustls::DEFAULT_VERSIONS);
    tokio::time::timeout(
        STEP,
        TlsConnector::from(Arc::new(cfg)).connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("handshake timed out")
}

/// Writes a raw HTTP/1.1 request over TLS and reads until the server closes (send
/// `Connection: close`). Returns `(status, body)`.
async fn raw_request(client: &TlsClient, addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut tls = client.connect(addr, &[b"http/1.1"]).await;
    tls.write_all(request).await.unwrap();
    tls.flush().await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(STEP, tls.read_to_end(&mut got))
        .await
        .expect("no answer in time");
    let text = String::from_utf8_lossy(&got).into_owned();
    parse_response(&text)
}

/// `(status, body)` of a raw HTTP/1.1 response (`Content-Length` or to the end).
fn parse_response(text: &str) -> (u16, String) {
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn json_code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

/// A request whose response head is returned as soon as it arrives (the body is read by the
/// caller, frame by frame), on its own HTTP/1.1 connection.
async fn head_only(
    client: &TlsClient,
    addr: SocketAddr,
    service: &str,
) -> http::Response<hyper::body::Incoming> {
    let tls = client.connect(addr, &[b"http/1.1"]).await;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post(score_path(service))
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap();
    tokio::time::timeout(STEP, tx.send_request(req))
        .await
        .expect("response head timed out")
        .expect("response head")
}

fn assert_overloaded(r: &Resp) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "ServiceOverloaded"),
        "{:?}",
        r.body
    );
}

async fn score(client: &TlsClient, addr: SocketAddr, service: &str) -> Resp {
    once(client, addr, "POST", &score_path(service), &[], BODY).await
}

// ---------------------------------------------------------------- 5. files that are not files

/// The gateway's resident memory (this process: the gateway runs in it), in KiB.
fn rss_kib() -> Option<u64> {
    scoregate::bench::rss_kb(std::process::id())
}

/// A config directory: `scoregate.toml` (one service), `tls/cert.pem`, `tls/key.pem`.
fn write_site(dir: &Path, pki: &Pki, backend: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    let leaf = pki
        .ca
        .leaf(&["localhost", "127.0.0.1"], &LeafOptions::default());
    std::fs::write(dir.join("tls/cert.pem"), &leaf.chain_pem).unwrap();
    std::fs::write(dir.join("tls/key.pem"), &leaf.key_pem).unwrap();
    let path = dir.join("scoregate.toml");
    write_config(&path, backend);
    path
}

fn write_config(path: &Path, backend: &str) {
    let text = format!(
        r#"
[listen]
address = "127.0.0.1:0"

[[tls.certificates]]
cname = "localhost"
cert = "tls/cert.pem"
key = "tls/key.pem"

[admin]
address = "127.0.0.1:0"
token_file = "admin-token"

[state]
dir = "state"

[[service]]
name = "iris"
auth = "none"
backends = ["{backend}"]
"#
    );
    std::fs::write(path, text).unwrap();
}

/// `POST /v1/reload`, which must answer within 2 s; `(status, body)`. If it does not, `unblock`
/// runs (so a reader stuck on a FIFO gets its end of file) before the test fails.
async fn quick_reload(gw: &Gw, token: &str, unblock: impl FnOnce()) -> (u16, String) {
    let t = Instant::now();
    let reload = admin_request(gw.admin, "POST", "/v1/reload", Some(token), "");
    match tokio::time::timeout(Duration::from_secs(2), reload).await {
        Ok(r) => {
            eprintln!("reload answered {} in {:?}", r.status, t.elapsed());
            (r.status, String::from_utf8_lossy(&r.body).into_owned())
        }
        Err(_) => {
            unblock();
            panic!("POST /v1/reload did not answer within 2 s");
        }
    }
}

/// Opens a FIFO for writing without blocking and closes it: a reader blocked on it gets its end
/// of file. Nothing happens when nobody reads it.
fn release_fifo_reader(fifo: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    /// `O_NONBLOCK` on Linux.
    const O_NONBLOCK: i32 = 0o4000;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(O_NONBLOCK)
        .open(fifo);
}

async fn assert_still_serving(gw: &Gw, client: &TlsClient) {
    let r = admin_request(gw.admin, "GET", "/healthz", None, "").await;
    assert_eq!(r.status, 200);
    let r = score(client, gw.addr, "iris").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// Regression (issue 11): at d524b49 a reload read the config and the certificates with
/// `std::fs::read_to_string` on a runtime thread. A config path that is a FIFO blocked that read
/// (and the reload, and the thread) until a writer came, so `POST /v1/reload` never answered; a
/// certificate symlinked to `/dev/zero` was read without end, the process growing until memory
/// ran out. Now both are refused before they are opened: 400 `InvalidConfig` at once, naming the
/// file and what it is, the gateway serving on and no bigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_a_fifo_config_and_a_certificate_on_dev_zero_at_once() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::start().await;
    let dir = tempdir("hardening-files");
    let path = write_site(&dir, &pki, &backend.url());
    let gw = Gw::start(Config::load(&path).unwrap()).await;
    let token = std::fs::read_to_string(dir.join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let client = pki.client();
    assert_still_serving(&gw, &client).await;
    let rss_before = rss_kib();

    // The config file becomes a FIFO.
    std::fs::remove_file(&path).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let (status, body) = quick_reload(&gw, &token, || release_fifo_reader(&path)).await;
    release_fifo_reader(&path);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("InvalidConfig"), "{body}");
    assert!(body.contains("scoregate.toml"), "names the file: {body}");
    assert!(body.contains("not a regular file (a FIFO)"), "{body}");
    assert_still_serving(&gw, &client).await;

    // A good config again, but its certificate is a symlink to /dev/zero.
    std::fs::remove_file(&path).unwrap();
    write_config(&path, &backend.url());
    let cert = dir.join("tls/cert.pem");
    std::fs::remove_file(&cert).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &cert).unwrap();
    let (status, body) = quick_reload(&gw, &token, || {}).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cert.pem"), "names the file: {body}");
    assert!(body.contains("not a regular file (a device)"), "{body}");
    assert_still_serving(&gw, &client).await;

    if let (Some(before), Some(after)) = (rss_before, rss_kib()) {
        eprintln!("RSS {before} KiB before, {after} KiB after");
        assert!(
            after < before + 50 * 1024,
            "the process grew from {before} KiB to {after} KiB"
        );
    }
    let m = metrics(&gw).await;
    assert_eq!(
        value(&m, "scoregate_reloads_total", &[("result", "error")]),
        2.0
    );
    gw.stop().await;
}

// ---------------------------------------------------------------- 6. connections per client

/// Regression (issue 11): at d524b49 one client address could open connections up to the global
/// cap (`max_connections`, 10 000 by default) and so lock everyone else out. Now
/// `limits.max_connections_per_client` (5 here) holds: the sixth connection from 127.0.0.2 is
/// closed before TLS and counted (`connections_refused{reason="max_connections_per_client"}`),
/// 127.0.0.3 is served meanwhile, and 127.0.0.2 gets its place back when one of its connections
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixth_connection_from_one_address_is_refused_before_tls_others_are_served() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::start().await;
    let mut cfg = config(&pki, vec![open_service("iris", backend.url())]);
    cfg.limits.max_connections_per_client = 5;
    let gw = Gw::start(cfg).await;
    let client = pki.client();

    let mut held = Vec::new();
    for i in 0..5 {
        let tls = tls_from(&client, "127.0.0.2", gw.addr)
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        held.push(tls);
    }
    let sixth = tls_from(&client, "127.0.0.2", gw.addr).await;
    assert!(sixth.is_err(), "the sixth connection is closed before TLS");
    let refused = |m: &[metrics::Sample]| {
        value(
            m,
            "scoregate_connections_refused_total",
            &[("reason", "max_connections_per_client")],
        )
    };
    assert_eq!(refused(&metrics(&gw).await), 1.0);

    // Another address is served meanwhile.
    let tls = tls_from(&client, "127.0.0.3", gw.addr).await.unwrap();
    let r = Conn::h1(tls)
        .await
        .send("POST", &score_path("iris"), &[], BODY)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // The held connections are usable, and one closed makes room for another.
    let mut c = Conn::h1(held.pop().unwrap()).await;
    let r = c.send("POST", &score_path("iris"), &[], BODY).await;
    assert_eq!(r.status, 200);
    drop(c);
    let t = Instant::now();
    loop {
        if let Ok(tls) = tls_from(&client, "127.0.0.2", gw.addr).await {
            let r = Conn::h1(tls)
                .await
                .send("POST", &score_path("iris"), &[], BODY)
                .await;
            assert_eq!(r.status, 200);
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a closed connection gives its place back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    gw.stop().await;
}

/// Regression (issue 11): at d524b49 idle keep-alive connections kept their place under the
/// connection cap until their `idle_timeout` (60 s, the default, here) ran out, so with
/// `max_connections = 10` and ten idle connections held, every new client was refused for a
/// minute. Now idle connections are closed when the cap is near
/// (`connections_closed{reason="pressure"}`), and a new client is served within a couple of
/// seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_make_room_when_the_connection_cap_is_near() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::start().await;
    let mut cfg = config(&pki, vec![open_service("iris", backend.url())]);
    cfg.limits.max_connections = 10;
    let gw = Gw::start(cfg).await;
    let client = pki.client();

    // Ten keep-alive connections from five addresses, one request each, then idle.
    let mut held = Vec::new();
    for i in 0..10 {
        let src = format!("127.0.0.{}", 2 + i / 2);
        let tls = tls_from(&client, &src, gw.addr)
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        let mut c = Conn::h1(tls).await;
        let r = c.send("POST", &score_path("iris"), &[], BODY).await;
        assert_eq!(r.status, 200, "connection {i}");
        held.push(c);
    }

    let t = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        if let Ok(tls) = tls_from(&client, "127.0.0.9", gw.addr).await {
            let r = Conn::h1(tls)
                .await
                .send("POST", &score_path("iris"), &[], BODY)
                .await;
            assert_eq!(r.status, 200);
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a new client was refused for {:?} ({tries} tries)",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("new client served after {:?} ({tries} tries)", t.elapsed());
    let m = metrics(&gw).await;
    assert!(
        value(
            &m,
            "scoregate_connections_closed_total",
            &[("reason", "pressure")]
        ) > 0.0
    );
    drop(held);
    gw.stop().await;
}

// ---------------------------------------------------------------- 7. the slot and the body

/// Regression (issue 11): at d524b49 the backend slot was given back as soon as the response head
/// arrived, so with `max_concurrent_requests_per_backend = 1` a second request went to a backend
/// that was still streaming the first response (200 instead of waiting). Now the slot is held
/// until the body ends: the second request waits and gets 503 after `max_request_wait_time`
/// (200 ms), and once the first body has ended the next request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_slot_is_held_until_the_response_body_ends() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    // Head at once, then ten chunks over about a second; keep-alive.
    let streaming = TcpBackend::start(|mut s| async move {
        while read_request(&mut s).await {
            let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
            if s.write_all(head).await.is_err() {
                return;
            }
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if s.write_all(b"5\r\nhello\r\n").await.is_err() {
                    return;
                }
            }
            if s.write_all(b"0\r\n\r\n").await.is_err() {
                return;
            }
        }
    })
    .await;
    let gw = Gw::start(config(&pki, vec![one_slot("stream", streaming.url())])).await;
    let client = pki.client();

    let first = head_only(&client, gw.addr, "stream").await;
    assert_eq!(first.status(), 200);
    let mut body = first.into_body();
    let mut got = Vec::new();
    let f = tokio::time::timeout(STEP, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    got.extend_from_slice(&f.into_data().unwrap());

    // The first response is still streaming: its slot is taken.
    let t = Instant::now();
    let second = score(&client, gw.addr, "stream").await;
    let waited = t.elapsed();
    assert_overloaded(&second);
    assert!(
        waited >= Duration::from_millis(180),
        "the second request waited for the slot ({waited:?})"
    );

    while let Some(f) = tokio::time::timeout(STEP, body.frame()).await.unwrap() {
        got.extend_from_slice(&f.unwrap().into_data().unwrap());
    }
    assert_eq!(got, "hello".repeat(10).as_bytes());
    // The body has ended: the slot is free.
    let third = score(&client, gw.addr, "stream").await;
    assert_eq!(third.status, 200, "{:?}", third.body);
    assert_eq!(third.body, "hello".repeat(10));
    gw.stop().await;
}

/// Regression (issue 11): at d524b49 a backend that sent a head and then nothing more held the
/// client's response body open for good (`scoring_timeout` stopped counting at the head). Now a
/// backend body that pauses longer than `scoring_timeout` (500 ms) is cut off: the client's body
/// fails within about a second, and the slot is free for the next request at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stalls_after_its_head_is_cut_off_after_scoring_timeout() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let connections = Arc::new(AtomicUsize::new(0));
    let c2 = connections.clone();
    // The first connection stalls after 10 of 100 body bytes; later ones answer at once.
    let stalling = TcpBackend::start(move |mut s| {
        let n = c2.fetch_add(1, Ordering::SeqCst);
        async move {
            while read_request(&mut s).await {
                if n == 0 {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                        .await;
                    std::future::pending::<()>().await;
                }
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
                if s.write_all(ok).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let mut svc = one_slot("stall", stalling.url());
    svc.scoring_timeout = Duration::from_millis(500);
    let gw = Gw::start(config(&pki, vec![svc])).await;
    let client = pki.client();

    let resp = head_only(&client, gw.addr, "stall").await;
    assert_eq!(resp.status(), 200);
    let head_at = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(3), resp.into_body().collect())
        .await
        .expect("the stalled body still hangs after 3 s");
    let took = head_at.elapsed();
    assert!(body.is_err(), "a cut-off body is an error, not an end");
    assert!(
        took < Duration::from_secs(2),
        "cut off after {took:?} (scoring_timeout 500ms)"
    );
    let next = score(&client, gw.addr, "stall").await;
    assert_eq!(next.status, 200, "{:?}", next.body);
    assert_eq!(next.body, r#"{"ok":true}"#);
    gw.stop().await;
}

// ---------------------------------------------------------------- 8. a trickling upload

/// Regression (issue 11): at d524b49 a client that trickled its body (1 byte every 300 ms) held a
/// backend slot and connection for as long as it kept trickling (the scoring timeout, 10 s here,
/// was the only bound). Now `limits.body_idle_timeout` (500 ms) wants the next KiB within that
/// time: the client gets 408 `RequestTimeout` JSON within about a second, and the service's only
/// slot is free again for the next request at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_upload_gets_408_and_frees_the_slot() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::start().await;
    let mut svc = one_slot("iris", backend.url());
    svc.scoring_timeout = Duration::from_secs(10);
    let mut cfg = config(&pki, vec![svc]);
    cfg.limits.body_idle_timeout = Duration::from_millis(500);
    let gw = Gw::start(cfg).await;
    let client = pki.client();

    let tls = client.connect(gw.addr, &[b"http/1.1"]).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        score_path("iris")
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    wr.flush().await.unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..30 {
            if wr.write_all(b"1\r\nx\r\n").await.is_err() || wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .to_ascii_lowercase()
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if body.len() >= len {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("no answer within 5 s to a trickling upload");
    let took = started.elapsed();
    trickle.abort();
    let text = String::from_utf8_lossy(&got).into_owned();
    let (status, body) = parse_response(&text);
    assert_eq!(status, 408, "{text}");
    assert_eq!(json_code(&body), "RequestTimeout");
    assert!(
        took < Duration::from_secs(2),
        "answered after {took:?} (body_idle_timeout 500ms)"
    );

    // The slot is free again: the next request does not wait for it.
    let t = Instant::now();
    let r = score(&client, gw.addr, "iris").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(
        backend.scored(),
        1,
        "the trickled request was never processed"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------- 9/10. request framing

/// Regression (issue 11): at d524b49 hyper accepted these heads and the gateway forwarded them (it
/// re-frames the body, so the backend answered 200): `Transfer-Encoding` other than exactly
/// `chunked` (`chunked, chunked`, `gzip, chunked`, or two header lines), which RFC 9112 §6.1
/// says a server must not guess at, and an HTTP/1.1 request without `Host` or with two, which
/// RFC 9112 §3.2 says must get 400. Now each is 400 `BadRequest` JSON, and a correct request is
/// still 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_and_host_headers_get_400() {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let gw = Gw::start(config(&pki, vec![open_service("iris", backend.url())])).await;
    let client = pki.client();
    let path = score_path("iris");
    let chunked_body = format!("{:x}\r\n{BODY}\r\n0\r\n\r\n", BODY.len());
    let cases: Vec<(&str, String)> = vec![
        (
            "Transfer-Encoding: chunked, chunked",
            format!(
                "POST {path} HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked, chunked\r\nconnection: close\r\n\r\n{chunked_body}"
            ),
        ),
        (
            "Transfer-Encoding: gzip, chunked",
            format!(
                "POST {path} HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n{chunked_body}"
            ),
        ),
        (
            "two Transfer-Encoding lines",
            format!(
                "POST {path} HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{chunked_body}"
            ),
        ),
        (
            "no Host",
            format!(
                "POST {path} HTTP/1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
                BODY.len()
            ),
        ),
        (
            "two Host headers",
            format!(
                "POST {path} HTTP/1.1\r\nhost: localhost\r\nhost: evil.example\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
                BODY.len()
            ),
        ),
    ];
    for (what, request) in &cases {
        let (status, body) = raw_request(&client, gw.addr, request.as_bytes()).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(json_code(&body), "BadRequest", "{what}: {body}");
    }
    assert_eq!(backend.scored(), 0, "none of them reached the backend");
    for request in [
        format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{chunked_body}"
        ),
        format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
            BODY.len()
        ),
    ] {
        let (status, body) = raw_request(&client, gw.addr, request.as_bytes()).await;
        assert_eq!(status, 200, "{request}: {body}");
    }
    assert_eq!(backend.scored(), 2);
    assert_eq!(backend.seen()[0].body, BODY);
    gw.stop().await;
}

// ---------------------------------------------------------------- 14. endless 1xx

/// Regression (issue 11): hyper's client skips 1xx responses without bound, so at d524b49 a
/// backend that answered with `100 Continue` forever kept the exchange (and a core) busy until
/// `scoring_timeout` (30 s here), then 504. Now a backend may send at most 1 MiB before its final
/// head: the client gets 502 `BackendUnavailable` within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_sending_endless_100_continue_gets_502_quickly() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let endless = TcpBackend::start(|mut s| async move {
        if !read_request(&mut s).await {
            return;
        }
        let batch = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(100);
        // Until the gateway closes the connection.
        while s.write_all(&batch).await.is_ok() {}
    })
    .await;
    let mut svc = open_service("endless", endless.url());
    svc.scoring_timeout = Duration::from_secs(30);
    let gw = Gw::start(config(&pki, vec![svc])).await;
    let client = pki.client();
    let t = Instant::now();
    let r = score(&client, gw.addr, "endless").await;
    let took = t.elapsed();
    assert_eq!(
        (r.status, r.code().as_str()),
        (502, "BackendUnavailable"),
        "{:?}",
        r.body
    );
    assert!(took < Duration::from_secs(5), "502 after {took:?}");
    eprintln!("endless 100 Continue: 502 after {took:?}");
    gw.stop().await;
}

// ---------------------------------------------------------------- 13. admin connections

/// Whether the server closed `s`: a read ends (EOF or error) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// `GET /healthz` on a new plain TCP connection to the admin listener; the status, if any.
async fn healthz(admin: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&got)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// Regression (issue 11): at d524b49 the admin listener took every connection it was offered, so
/// a local flood of idle connections took file descriptors from the scoring side. Now it holds at
/// most 64 (`admin::MAX_ADMIN_CONNECTIONS`): of 70 held connections the 6 past the cap are closed
/// at once, and once the held ones close `/healthz` answers again on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_closes_connections_past_64_at_once() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    // No admin connection before the flood: each holds a place until its task has ended.
    let gw = Gw::start(config(&pki, vec![])).await;
    assert_eq!(scoregate::admin::MAX_ADMIN_CONNECTIONS, 64);

    let mut held = Vec::new();
    for _ in 0..70 {
        held.push(
            tokio::time::timeout(STEP, TcpStream::connect(gw.admin))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // Every connection watched at once, for half a second.
    let mut checks = tokio::task::JoinSet::new();
    for mut s in held {
        checks.spawn(async move {
            let closed = closed_within(&mut s, Duration::from_millis(500)).await;
            (closed, s)
        });
    }
    let mut closed = 0;
    let mut open = Vec::new();
    while let Some(r) = checks.join_next().await {
        match r.unwrap() {
            (true, _) => closed += 1,
            (false, s) => open.push(s),
        }
    }
    assert_eq!(closed, 6, "the connections past 64 are closed at once");
    assert_eq!(open.len(), 64);
    assert_eq!(
        healthz(gw.admin).await,
        None,
        "at the cap, a new one is closed too"
    );

    drop(open);
    let t = Instant::now();
    while healthz(gw.admin).await != Some(200) {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "/healthz answers again once the held connections are gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.stop().await;
}

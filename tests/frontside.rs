//! Front-side limits and network policy against the real gateway: slowloris, header size and
//! count, idle keep-alive, the connection cap, the in-flight cap, listener and service CIDR rules
//! from different loopback source addresses, several listen addresses, and PROXY protocol v2 from
//! trusted and untrusted peers.
//!
//! Timing-sensitive tests run one at a time (`SERIAL`) with generous windows: CI has two shared
//! cores, and a flaky test is worse than none.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use scoregate::config::{AuthMode, Config};
use scoregate::proxy_protocol;
use scoregate_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const BODY: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------- helpers

/// A TCP connection from a chosen loopback source address (127.0.0.x all work on Linux).
async fn tcp_from(src: &str, addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(STEP, sock.connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// TLS over `tcp` (after writing `prefix`, e.g. a PROXY header); the handshake's result.
async fn tls_over(
    client: &TlsClient,
    mut tcp: TcpStream,
    prefix: &[u8],
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    if !prefix.is_empty() {
        tcp.write_all(prefix).await?;
    }
    let cfg = client.config(&[alpn], rustls::DEFAULT_VERSIONS);
    tokio::time::timeout(
        STEP,
        TlsConnector::from(Arc::new(cfg)).connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("handshake timed out")
}

async fn tls_from(
    client: &TlsClient,
    src: &str,
    addr: SocketAddr,
    prefix: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_over(client, tcp_from(src, addr).await, prefix, b"http/1.1").await
}

/// An HTTP/1.1 connection from `src`, through an optional PROXY header.
async fn h1_from(client: &TlsClient, src: &str, addr: SocketAddr, prefix: &[u8]) -> Conn {
    Conn::h1(
        tls_from(client, src, addr, prefix)
            .await
            .expect("handshake"),
    )
    .await
}

/// Writes raw HTTP/1.1 bytes and reads the response: its head (until the blank line, or EOF)
/// and the body its `content-length` declares.
async fn raw_exchange(tls: &mut TlsStream<TcpStream>, request: &[u8]) -> String {
    tls.write_all(request).await.unwrap();
    tls.flush().await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    // The head, and as much body as it declares: a body that came in a later
                    // read must not be left for the next exchange to find.
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                        let body = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        if got.len() >= end + 4 + body {
                            break;
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(STEP, read)
        .await
        .expect("response timed out");
    String::from_utf8_lossy(&got).into_owned()
}

async fn metric(gw: &Gw, name_and_labels: &str) -> f64 {
    let text = admin_request(gw.admin, "GET", "/metrics", None, "")
        .await
        .body;
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)?
                .strip_prefix(' ')?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// A client connection whose driving task can be watched (it ends when the server closes).
async fn conn_with_task(
    tls: TlsStream<TcpStream>,
    h2: bool,
) -> (Conn, tokio::task::JoinHandle<()>) {
    let io = TokioIo::new(tls);
    if h2 {
        let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        (
            Conn::H2(tx),
            tokio::spawn(async move {
                let _ = conn.await;
            }),
        )
    } else {
        let (tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        (
            Conn::H1(tx),
            tokio::spawn(async move {
                let _ = conn.await;
            }),
        )
    }
}

fn base(pki: &Pki, backend: &Backend) -> Config {
    config(pki, vec![service("iris", AuthMode::None, &[backend.url()])])
}

async fn score(c: &mut Conn, service: &str) -> Resp {
    c.send(
        "POST",
        &format!("/api/v1/service/{service}/score"),
        &[("content-type", "application/json")],
        BODY,
    )
    .await
}

// ---------------------------------------------------------------- limits

/// 200 slowloris connections — half send nothing after TLS, half trickle a request head — do
/// not keep a normal client from being served at once, and each is closed after
/// `header_read_timeout` (1 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_connections_are_cut_off_and_do_not_starve_others() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::start().await;
    let mut cfg = base(&pki, &backend);
    cfg.limits.header_read_timeout = Duration::from_secs(1);
    let gw = Gw::start(cfg).await;
    let client = pki.client();
    let addr = gw.addr;

    let n = 200;
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n);
    let mut slow = Vec::new();
    for i in 0..n {
        let (client, gate, ready) = (client.clone(), gate.clone(), ready_tx.clone());
        slow.push(tokio::spawn(async move {
            let mut tls = {
                let _p = gate.acquire().await.unwrap();
                let tcp = TcpStream::connect(addr).await.unwrap();
                tls_over(&client, tcp, b"", b"http/1.1").await.unwrap()
            };
            let since = Instant::now();
            ready.send(()).await.unwrap();
            let trickle = i % 2 == 0;
            if trickle {
                tls.write_all(
                    b"POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\nx-slow: ",
                )
                .await
                .unwrap();
                tls.flush().await.unwrap();
            }
            let mut buf = [0u8; 256];
            loop {
                tokio::select! {
                    r = tls.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return (trickle, since.elapsed()),
                        Ok(_) => {}
                    },
                    _ = tokio::time::sleep(Duration::from_millis(200)), if trickle => {
                        if tls.write_all(b"a").await.is_err() || tls.flush().await.is_err() {
                            return (trickle, since.elapsed());
                        }
                    }
                }
                assert!(since.elapsed() < Duration::from_secs(15), "never closed");
            }
        }));
    }
    drop(ready_tx);
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
            .await
            .expect("slow connections established")
            .unwrap();
    }
    // A normal client, while the slow ones hold their connections.
    let t = Instant::now();
    let mut c = client.h1(addr).await;
    assert_eq!(score(&mut c, "iris").await.status, 200);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "normal client waited {took:?}"
    );

    let mut longest = Duration::ZERO;
    for h in slow {
        let (trickle, lived) = tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .expect("slow connection closed")
            .unwrap();
        assert!(
            lived >= Duration::from_millis(700),
            "closed before header_read_timeout ({trickle}): {lived:?}"
        );
        assert!(
            lived < Duration::from_secs(8),
            "closed long after header_read_timeout ({trickle}): {lived:?}"
        );
        longest = longest.max(lived);
    }
    eprintln!(
        "slowloris: {n} slow connections; normal request took {:.0} ms; slow ones closed after at most {:.2}s",
        took.as_secs_f64() * 1000.0,
        longest.as_secs_f64()
    );
    assert!(
        metric(
            &gw,
            "scoregate_connection_timeouts_total{reason=\"header_read\"}"
        )
        .await
            >= n as f64
    );
    // The normal client's keep-alive connection is still usable.
    assert_eq!(score(&mut c, "iris").await.status, 200);
    gw.stop().await;
}

/// A header block over `max_header_size`, or more than `max_headers` headers, gets 431 and the
/// gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_too_many_headers_get_431() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::start().await;
    let gw = Gw::start(base(&pki, &backend)).await;
    let client = pki.client();

    let huge = format!(
        "POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    let mut tls = tls_from(&client, "127.0.0.1", gw.addr, b"").await.unwrap();
    let head = raw_exchange(&mut tls, huge.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head:?}");

    let mut many = String::from("POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\n");
    for i in 0..150 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("content-length: 0\r\n\r\n");
    let mut tls = tls_from(&client, "127.0.0.1", gw.addr, b"").await.unwrap();
    let head = raw_exchange(&mut tls, many.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head:?}");

    // Just under the limits: served.
    let mut ok = String::from("POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\n");
    for i in 0..90 {
        ok.push_str(&format!("x-h{i}: v\r\n"));
    }
    ok.push_str(&format!(
        "x-big: {}\r\ncontent-length: 0\r\n\r\n",
        "a".repeat(12 * 1024)
    ));
    let mut tls = tls_from(&client, "127.0.0.1", gw.addr, b"").await.unwrap();
    let head = raw_exchange(&mut tls, ok.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");

    gw.stop().await;

    // A configured `max_headers` other than hyper's own default (100) is enforced: the gateway
    // sets it on hyper only then (server::http), so both sides of that branch are checked here.
    let mut cfg = base(&pki, &backend);
    cfg.limits.max_headers = 20;
    let gw = Gw::start(cfg).await;
    let head_with = |n: usize| {
        let mut s = String::from("POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\n");
        for i in 0..n {
            s.push_str(&format!("x-h{i}: v\r\n"));
        }
        s.push_str("content-length: 0\r\n\r\n");
        s
    };
    let mut tls = tls_from(&client, "127.0.0.1", gw.addr, b"").await.unwrap();
    let head = raw_exchange(&mut tls, head_with(25).as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head:?}");
    let mut tls = tls_from(&client, "127.0.0.1", gw.addr, b"").await.unwrap();
    let head = raw_exchange(&mut tls, head_with(15).as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");

    // HTTP/2: a header list over the limit gets 431 on its stream (from the h2 layer); the
    // connection and the gateway go on.
    let mut h2 = client.h2(gw.addr).await;
    let big = "a".repeat(32 * 1024);
    let refused: Option<u16> = match &mut h2 {
        Conn::H2(tx) => {
            let req = Request::post("https://localhost/api/v1/service/iris/score")
                .header("x-big", big.as_str())
                .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                .unwrap();
            tx.ready().await.unwrap();
            match tokio::time::timeout(STEP, tx.send_request(req))
                .await
                .unwrap()
            {
                Ok(r) => Some(r.status().as_u16()),
                Err(_) => None,
            }
        }
        Conn::H1(_) => unreachable!(),
    };
    assert_eq!(refused, Some(431), "HTTP/2 oversized header list");
    assert_eq!(score(&mut h2, "iris").await.status, 200);
    let mut c = client.h1(gw.addr).await;
    assert_eq!(score(&mut c, "iris").await.status, 200);
    assert_eq!(backend.scored(), 4);
    gw.stop().await;
}

/// An idle keep-alive connection is closed after `idle_timeout`, independently of the shorter
/// `header_read_timeout`: HTTP/1.1 (closed) and HTTP/2 (GOAWAY, then closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_after_idle_timeout() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::start().await;
    let mut cfg = base(&pki, &backend);
    cfg.limits.header_read_timeout = Duration::from_secs(1);
    cfg.limits.idle_timeout = Duration::from_secs(3);
    let gw = Gw::start(cfg).await;
    let client = pki.client();

    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let tls = client.connect(gw.addr, &[alpn]).await;
        let (mut c, conn_task) = conn_with_task(tls, alpn == b"h2").await;
        assert_eq!(score(&mut c, "iris").await.status, 200);
        // Idle for longer than header_read_timeout: still open.
        tokio::time::sleep(Duration::from_millis(1800)).await;
        assert!(!conn_task.is_finished());
        assert_eq!(
            score(&mut c, "iris").await.status,
            200,
            "{alpn:?} after 1.8 s idle"
        );
        let last = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), conn_task)
            .await
            .expect("idle connection closed")
            .unwrap();
        let idle = last.elapsed();
        eprintln!(
            "idle timeout: {} connection closed {:.2}s after its last response (idle_timeout 3s)",
            String::from_utf8_lossy(alpn),
            idle.as_secs_f64()
        );
        assert!(
            idle >= Duration::from_millis(2500) && idle < Duration::from_secs(8),
            "{idle:?}"
        );
    }
    assert!(metric(&gw, "scoregate_connection_timeouts_total{reason=\"idle\"}").await >= 2.0);
    gw.stop().await;
}

/// An HTTP/1.1 connection is handed to hyper only when its first request starts to arrive (it
/// holds no HTTP buffers before): a request sent well after the handshake, or one whose first
/// byte comes alone, is served; a connection that never sends anything does not hold up a drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_wait_before_their_first_request_are_served_and_drained() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::start().await;
    let mut cfg = base(&pki, &backend);
    cfg.limits.header_read_timeout = Duration::from_secs(2);
    let gw = Gw::start(cfg).await;
    let client = pki.client();
    let request = "POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\n\
                   content-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

    // Quiet for a while after the handshake, then the whole request.
    let mut late = tls_from(&client, "127.0.0.1", gw.addr, b"").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let head = raw_exchange(&mut late, request.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The same connection serves a second request (hyper owns it now).
    let head = raw_exchange(&mut late, request.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // The first byte alone, the rest later: the byte is not lost.
    let mut split = tls_from(&client, "127.0.0.1", gw.addr, b"").await.unwrap();
    split.write_all(&request.as_bytes()[..1]).await.unwrap();
    split.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let head = raw_exchange(&mut split, &request.as_bytes()[1..]).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(backend.scored(), 3);

    // On a keep-alive connection, the header-read timer starts again with the first byte of
    // the next request: a head that stalls after one served request is cut off in time.
    let mut stall = tls_from(&client, "127.0.0.1", gw.addr, b"").await.unwrap();
    let head = raw_exchange(&mut stall, request.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(Duration::from_millis(2500)).await; // idle, longer than the header timer
    stall.write_all(b"POST /api/v1/ser").await.unwrap();
    stall.flush().await.unwrap();
    let first_byte = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(STEP, stall.read(&mut buf))
        .await
        .expect("a stalled head was never cut off");
    let cut = first_byte.elapsed();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(
        cut >= Duration::from_millis(1700) && cut < Duration::from_secs(5),
        "cut {cut:?} after the first byte (header_read_timeout 2 s)"
    );

    // A connection that sent nothing is closed by the drain, which does not wait for it.
    let mut fresh = tls_from(&client, "127.0.0.1", gw.addr, b"").await.unwrap();
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(4), gw.stop())
        .await
        .expect("the drain waited for a connection that never sent a request");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(STEP, fresh.read(&mut buf))
        .await
        .expect("the fresh connection was left open");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    eprintln!(
        "drain with a fresh connection took {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
}

/// Waits (up to 6 s) until the gauge `scoregate_connections_parked` reads `want`.
async fn parked_becomes(gw: &Gw, want: f64) -> bool {
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        if metric(gw, "scoregate_connections_parked").await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A keep-alive HTTP/1.1 connection idle for over a second is parked (hyper and its buffers let
/// go, `scoregate_connections_parked`) and taken up again by its next request; the start of a
/// pipelined request that hyper had already read survives the park; a drain closes a parked
/// connection with TLS `close_notify` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_connections_are_parked_and_taken_up_again() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::start().await;
    let gw = Gw::start(base(&pki, &backend)).await;
    let client = pki.client();
    let request = "POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\n\
                   content-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

    let mut idle = tls_from(&client, "127.0.0.1", gw.addr, b"").await.unwrap();
    let head = raw_exchange(&mut idle, request.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        parked_becomes(&gw, 1.0).await,
        "an idle connection was not parked"
    );
    for round in 0..2 {
        let head = raw_exchange(&mut idle, request.as_bytes()).await;
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "after park {round}: {head}"
        );
        assert_eq!(metric(&gw, "scoregate_connections_parked").await, 0.0);
        assert!(parked_becomes(&gw, 1.0).await, "not parked again");
    }

    // One request and the first half of the next in one write: hyper reads both, answers the
    // first and holds the half while the connection idles long enough to be parked.
    let mut piped = tls_from(&client, "127.0.0.1", gw.addr, b"").await.unwrap();
    let (first, rest) = request.as_bytes().split_at(30);
    let mut write = request.as_bytes().to_vec();
    write.extend_from_slice(first);
    let head = raw_exchange(&mut piped, &write).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let head = raw_exchange(&mut piped, rest).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "the pipelined half was lost in the park: {head}"
    );
    assert_eq!(backend.scored(), 5);

    // Both connections parked: the drain closes them cleanly and does not wait for them.
    assert!(parked_becomes(&gw, 2.0).await, "both connections parked");
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(4), gw.stop())
        .await
        .expect("the drain waited for parked connections");
    for mut c in [idle, piped] {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(STEP, c.read(&mut buf))
            .await
            .expect("a parked connection was left open");
        assert!(matches!(n, Ok(0)), "not closed with close_notify: {n:?}");
    }
    eprintln!(
        "drain with two parked connections took {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
}

/// At `max_connections` a new connection is closed at once; when one closes, new ones are
/// accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_then_accepts_again() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::start().await;
    let mut cfg = base(&pki, &backend);
    cfg.limits.max_connections = 2;
    let gw = Gw::start(cfg).await;
    let client = pki.client();

    let mut first = client.h1(gw.addr).await;
    let mut second = client.h1(gw.addr).await;
    assert_eq!(score(&mut first, "iris").await.status, 200);
    assert_eq!(score(&mut second, "iris").await.status, 200);
    let third = tls_from(&client, "127.0.0.1", gw.addr, b"").await;
    assert!(third.is_err(), "a third connection is closed before TLS");
    assert!(
        metric(
            &gw,
            "scoregate_connections_refused_total{reason=\"max_connections\"}"
        )
        .await
            >= 1.0
    );

    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut again = loop {
        if let Ok(tls) = tls_from(&client, "127.0.0.1", gw.addr, b"").await {
            break Conn::h1(tls).await;
        }
        assert!(Instant::now() < deadline, "the freed slot was not reused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(score(&mut again, "iris").await.status, 200);
    assert_eq!(score(&mut second, "iris").await.status, 200);
    gw.stop().await;
}

/// Beyond `max_in_flight` requests across the gateway, new ones get 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_answers_503_beyond_the_cap() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::with(|_| {
        let mut r = Reply::ok(r#"{"ok":true}"#);
        r.delay = Duration::from_secs(3);
        r
    })
    .await;
    let mut cfg = base(&pki, &backend);
    cfg.limits.max_in_flight = 2;
    let gw = Gw::start(cfg).await;
    let client = pki.client();
    let mut slow = Vec::new();
    for _ in 0..2 {
        let client = client.clone();
        let addr = gw.addr;
        slow.push(tokio::spawn(async move {
            score(&mut client.h1(addr).await, "iris").await.status
        }));
    }
    let deadline = Instant::now() + STEP;
    while backend.scored() < 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = score(&mut client.h1(gw.addr).await, "iris").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.code(), "ServiceOverloaded");
    assert!(!r.header("retry-after").is_empty());
    for t in slow {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        score(&mut client.h1(gw.addr).await, "iris").await.status,
        200
    );
    gw.stop().await;
}

/// Regression: a client that goes away while its request waits on the backend (hyper drops the
/// request's future) must not stay counted as in flight, or `max_in_flight` would fill up with
/// ghosts and refuse everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_do_not_leak_the_in_flight_count() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::with(|_| {
        let mut r = Reply::ok(r#"{"ok":true}"#);
        r.delay = Duration::from_millis(800);
        r
    })
    .await;
    let mut cfg = base(&pki, &backend);
    cfg.limits.max_in_flight = 1;
    let gw = Gw::start(cfg).await;
    let client = pki.client();
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let before = backend.scored();
        let tls = client.connect(gw.addr, &[alpn]).await;
        let (mut c, task) = conn_with_task(tls, alpn == b"h2").await;
        let pending = tokio::spawn(async move { score(&mut c, "iris").await });
        let deadline = Instant::now() + STEP;
        while backend.scored() == before {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The client gives up: its connection goes away mid-request.
        pending.abort();
        task.abort();
        let deadline = Instant::now() + STEP;
        while metric(&gw, "scoregate_requests_in_flight").await != 0.0 {
            assert!(
                Instant::now() < deadline,
                "{alpn:?}: the abandoned request stays counted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut c = client.h1(gw.addr).await;
        assert_eq!(score(&mut c, "iris").await.status, 200, "{alpn:?}");
    }
    gw.stop().await;
}

// ---------------------------------------------------------------- network policy

/// Listener allow/deny at accept (before TLS) and service allow/deny (403 before auth), from
/// 127.0.0.x source addresses; deny wins over allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cidr_rules_at_the_listener_and_per_service() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::start().await;
    let mut iris = service("iris", AuthMode::None, &[backend.url()]);
    iris.deny = vec!["127.0.0.2/32".parse().unwrap()];
    let mut wine = service("wine", AuthMode::Key, &[backend.url()]);
    wine.allow = vec![
        "127.0.0.2/32".parse().unwrap(),
        "127.0.0.3/32".parse().unwrap(),
    ];
    wine.deny = vec!["127.0.0.2/32".parse().unwrap()];
    let mut cfg = config(&pki, vec![iris, wine]);
    cfg.listen.allow = vec!["127.0.0.0/29".parse().unwrap()];
    cfg.listen.deny = vec!["127.0.0.4/32".parse().unwrap()];
    let gw = Gw::start(cfg).await;
    let client = pki.client();
    let (wine_key, _) = gw.keys("wine");

    // Listener: .4 is denied, .9 is outside the allow list; both closed before TLS.
    for src in ["127.0.0.4", "127.0.0.9"] {
        assert!(
            tls_from(&client, src, gw.addr, b"").await.is_err(),
            "{src} must be refused at accept"
        );
    }
    assert_eq!(
        metric(
            &gw,
            "scoregate_connections_refused_total{reason=\"policy\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(
            &gw,
            "scoregate_tls_handshake_failures_total{reason=\"protocol\"}"
        )
        .await,
        0.0,
        "no TLS work was done for them"
    );

    // Services.
    let cases = [
        ("127.0.0.1", "iris", 200),
        ("127.0.0.2", "iris", 403),
        ("127.0.0.3", "iris", 200),
        ("127.0.0.1", "wine", 403),
        ("127.0.0.2", "wine", 403), // allowed and denied: deny wins
        ("127.0.0.3", "wine", 200),
    ];
    for (src, svc, want) in cases {
        let mut c = h1_from(&client, src, gw.addr, b"").await;
        let r = c
            .send(
                "POST",
                &format!("/api/v1/service/{svc}/score"),
                &[("authorization", &format!("Bearer {wine_key}"))],
                BODY,
            )
            .await;
        assert_eq!(r.status, want, "{src} → {svc}");
        if want == 403 {
            assert_eq!(r.code(), "Forbidden");
            // 403 comes before the credential check: no credential, still 403.
            let r = c
                .send("POST", &format!("/api/v1/service/{svc}/score"), &[], BODY)
                .await;
            assert_eq!(r.status, 403, "{src} → {svc} without a credential");
        }
    }
    assert_eq!(backend.scored(), 3);
    let seen = backend.seen();
    let xff: Vec<&str> = seen
        .iter()
        .map(|s| s.headers["x-forwarded-for"].to_str().unwrap())
        .collect();
    assert_eq!(xff, ["127.0.0.1", "127.0.0.3", "127.0.0.3"]);
    gw.stop().await;
}

/// Regression (issue 10): behind a trusted HTTP proxy (PROXY protocol off), the client is the
/// last address in `X-Forwarded-For` (policy sees it), and the backend receives the chain with
/// the proxy's own address appended (`C, <proxy>`), not the client twice. From an untrusted peer
/// the header is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_http_proxy_is_appended_to_x_forwarded_for() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::start().await;
    let mut iris = service("iris", AuthMode::None, &[backend.url()]);
    iris.deny = vec!["198.51.100.0/24".parse().unwrap()];
    let mut cfg = config(&pki, vec![iris]);
    cfg.listen.trusted_proxies = vec!["127.0.0.5/32".parse().unwrap()];
    let gw = Gw::start(cfg).await;
    let client = pki.client();
    let send = |xff: &'static str, src: &'static str| {
        let (client, addr) = (client.clone(), gw.addr);
        async move {
            let mut c = h1_from(&client, src, addr, b"").await;
            c.send(
                "POST",
                "/api/v1/service/iris/score",
                &[("x-forwarded-for", xff), ("x-forwarded-proto", "https")],
                BODY,
            )
            .await
        }
    };
    assert_eq!(send("203.0.113.7", "127.0.0.5").await.status, 200);
    assert_eq!(
        send("203.0.113.7, 198.51.100.9", "127.0.0.5").await.status,
        403,
        "the proxy's last entry is the client the service policy judges"
    );
    assert_eq!(send("203.0.113.7", "127.0.0.6").await.status, 200);
    let seen = backend.seen();
    let xff: Vec<&str> = seen
        .iter()
        .map(|s| s.headers["x-forwarded-for"].to_str().unwrap())
        .collect();
    assert_eq!(xff, ["203.0.113.7, 127.0.0.5", "127.0.0.6"]);
    gw.stop().await;
}

/// Several listen addresses all serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listen_address_serves() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::start().await;
    let mut cfg = base(&pki, &backend);
    cfg.listen.addresses = vec![
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.2:0".parse().unwrap(),
    ];
    let gw = Gw::start(cfg).await;
    let addrs = gw.server.addrs.clone();
    assert_eq!(addrs.len(), 2);
    assert_eq!(addrs[1].ip().to_string(), "127.0.0.2");
    for a in &addrs {
        let mut c = pki.client().h1(*a).await;
        assert_eq!(score(&mut c, "iris").await.status, 200, "{a}");
        let mut c = pki.client().h2(*a).await;
        assert_eq!(score(&mut c, "iris").await.status, 200, "{a} h2");
    }
    gw.stop().await;
}

/// PROXY protocol v2: believed from a trusted proxy (the header's client is what policy, logs and
/// `X-Forwarded-For` see), required from it, and never read from anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_only_from_trusted_proxies() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    let backend = Backend::start().await;
    let iris = service("iris", AuthMode::None, &[backend.url()]);
    let mut wine = service("wine", AuthMode::None, &[backend.url()]);
    wine.deny = vec!["203.0.113.0/24".parse().unwrap()];
    let mut cfg = config(&pki, vec![iris, wine]);
    cfg.listen.proxy_protocol = true;
    cfg.listen.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    cfg.listen.deny = vec!["198.51.100.0/24".parse().unwrap()];
    let gw = Gw::start(cfg).await;
    let client = pki.client();
    let to = gw.addr;
    let header = |src: &str| proxy_protocol::encode(src.parse().unwrap(), to);
    let last_xff = |b: &Backend| {
        b.seen()
            .last()
            .unwrap()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };

    // Trusted proxy, IPv4 client: the client is the header's source. A forwarded header the
    // client itself sent through the L4 proxy is not believed.
    let mut c = h1_from(&client, "127.0.0.1", to, &header("203.0.113.7:5555")).await;
    let r = c
        .send(
            "POST",
            "/api/v1/service/iris/score",
            &[("x-forwarded-for", "6.6.6.6")],
            BODY,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(last_xff(&backend), ["203.0.113.7"]);
    // ... and service policy judges that client.
    assert_eq!(score(&mut c, "wine").await.status, 403);

    // IPv6 client behind the (IPv4) proxy.
    let v6 = proxy_protocol::encode(
        "[2001:db8::7]:1234".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    );
    let mut c = h1_from(&client, "127.0.0.1", to, &v6).await;
    assert_eq!(score(&mut c, "wine").await.status, 200);
    assert_eq!(last_xff(&backend), ["2001:db8::7"]);

    // HTTP/2 through the proxy.
    let tls = tls_over(
        &client,
        tcp_from("127.0.0.1", to).await,
        &header("192.0.2.44:1"),
        b"h2",
    )
    .await
    .unwrap();
    let mut c = Conn::h2(tls).await;
    assert_eq!(score(&mut c, "iris").await.status, 200);
    assert_eq!(last_xff(&backend), ["192.0.2.44"]);

    // A LOCAL header (the proxy's own health check): the proxy is the client.
    let mut c = h1_from(&client, "127.0.0.1", to, &proxy_protocol::encode_local()).await;
    assert_eq!(score(&mut c, "iris").await.status, 200);
    assert_eq!(last_xff(&backend), ["127.0.0.1"]);

    // The listener's deny list applies to the client the header names.
    assert!(
        tls_from(&client, "127.0.0.1", to, &header("198.51.100.9:1"))
            .await
            .is_err()
    );
    assert_eq!(
        metric(
            &gw,
            "scoregate_connections_refused_total{reason=\"policy\"}"
        )
        .await,
        1.0
    );

    // A trusted proxy that sends no header (or garbage) is closed.
    assert!(tls_from(&client, "127.0.0.1", to, b"").await.is_err());
    assert!(
        tls_from(
            &client,
            "127.0.0.1",
            to,
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
        )
        .await
        .is_err()
    );
    assert_eq!(
        metric(
            &gw,
            "scoregate_connections_refused_total{reason=\"proxy_protocol\"}"
        )
        .await,
        2.0
    );

    // An untrusted peer: a PROXY header is not read, so it breaks its own TLS handshake ...
    assert!(
        tls_from(&client, "127.0.0.2", to, &header("10.9.9.9:1"))
            .await
            .is_err()
    );
    // ... and without one, it is served as itself.
    let mut c = h1_from(&client, "127.0.0.2", to, b"").await;
    assert_eq!(score(&mut c, "iris").await.status, 200);
    assert_eq!(last_xff(&backend), ["127.0.0.2"]);
    gw.stop().await;
}

/// A client that stops reading a large response does not hold its connection forever: once the
/// gateway's writes have been blocked for `idle_timeout`, the connection is dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_after_idle_timeout() {
    let _serial = SERIAL.lock().await;
    let pki = Pki::new();
    // Far more than the socket buffers of both ends can hold.
    let big = "x".repeat(64 * 1024 * 1024);
    let backend = Backend::with(move |_| Reply::ok(&big)).await;
    let mut cfg = base(&pki, &backend);
    cfg.limits.idle_timeout = Duration::from_secs(2);
    let gw = Gw::start(cfg).await;
    let client = pki.client();

    let mut tls = tls_from(&client, "127.0.0.1", gw.addr, b"").await.unwrap();
    tls.write_all(
        b"POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\n\
          content-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await
    .unwrap();
    tls.flush().await.unwrap();
    // Read the head and a little of the body, then stop reading.
    let mut buf = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(STEP, tls.read(&mut buf))
        .await
        .expect("no response")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let stopped = Instant::now();
    let dropped = async {
        loop {
            if metric(&gw, "scoregate_connection_timeouts_total{reason=\"send\"}").await >= 1.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), dropped)
        .await
        .expect("a client that stopped reading was never dropped");
    let after = stopped.elapsed();
    eprintln!(
        "send timeout: dropped {:.2}s after the client stopped reading",
        after.as_secs_f64()
    );
    assert!(
        after >= Duration::from_millis(1500),
        "dropped too early: {after:?}"
    );
    // The dropped request is no longer counted in flight.
    assert_eq!(metric(&gw, "scoregate_requests_in_flight").await, 0.0);
    gw.stop().await;
}

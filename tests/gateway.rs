//! The core request path against the real gateway: routing, key auth, forwarding rules, errors.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::{Duration, Instant};

use scoregate::config::AuthMode;
use scoregate_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

async fn setup(auth: AuthMode) -> (Pki, Backend, Gw) {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let gw = Gw::start(config(&pki, vec![service("iris", auth, &[backend.url()])])).await;
    (pki, backend, gw)
}

#[tokio::test]
async fn both_keys_work_and_the_backend_gets_a_clean_request() {
    let (pki, backend, gw) = setup(AuthMode::Key).await;
    let (primary, secondary) = gw.keys("iris");
    assert_eq!(primary.len(), 43);
    let mut c = pki.client().h1(gw.addr).await;
    for key in [&primary, &secondary] {
        let auth = format!("Bearer {key}");
        let r = c
            .send(
                "POST",
                "/api/v1/service/iris/score?verbose=1&x=%2F",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                    ("x-ms-client-request-id", "client-42:a.b_c"),
                    ("x-ms-request-id", "spoofed"),
                    ("connection", "keep-alive, x-secret-hop"),
                    ("x-secret-hop", "1"),
                    ("keep-alive", "timeout=5"),
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-custom", "kept"),
                ],
                BODY,
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body, r#"{"ok":true}"#);
        assert_eq!(r.header("x-ms-client-request-id"), "client-42:a.b_c");
        let rid = r.header("x-ms-request-id").to_string();
        assert_eq!(rid.len(), 36, "a UUID: {rid}");
        assert_eq!(r.headers.get_all("x-ms-request-id").iter().count(), 1);

        let seen = backend.seen().pop().unwrap();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.uri, "/score?verbose=1&x=%2F");
        assert_eq!(seen.body, BODY);
        assert!(
            seen.headers.get("authorization").is_none(),
            "Authorization must never reach a backend"
        );
        assert!(seen.headers.get("x-secret-hop").is_none());
        assert!(seen.headers.get("keep-alive").is_none());
        assert_eq!(seen.headers["x-ms-request-id"], rid.as_str());
        assert_eq!(seen.headers["x-ms-client-request-id"], "client-42:a.b_c");
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        assert_eq!(seen.headers["x-forwarded-host"], "localhost");
        assert_eq!(seen.headers["host"], backend.addr.to_string().as_str());
        assert_eq!(seen.headers["x-custom"], "kept");
        assert_eq!(seen.headers["content-type"], "application/json");
    }
    // Every response gets a fresh request id.
    let a = c
        .score("iris", &primary, BODY)
        .await
        .header("x-ms-request-id")
        .to_string();
    let b = c
        .score("iris", &primary, BODY)
        .await
        .header("x-ms-request-id")
        .to_string();
    assert_ne!(a, b);
    gw.stop().await;
}

#[tokio::test]
async fn refused_credentials_get_401_json_and_never_reach_the_backend() {
    let (pki, backend, gw) = setup(AuthMode::Key).await;
    let (primary, _) = gw.keys("iris");
    let client = pki.client();
    let wrong = format!("Bearer {}", "x".repeat(43));
    let basic = format!("Basic {primary}");
    let jwt = "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
    let prefix = format!("Bearer {}", &primary[..42]);
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("authorization", wrong.as_str())],
        vec![("authorization", basic.as_str())],
        vec![("authorization", primary.as_str())],
        vec![("authorization", jwt)],
        vec![("authorization", prefix.as_str())],
        vec![("authorization", "Bearer ")],
    ];
    for h in cases {
        let r = once(
            &client,
            gw.addr,
            "POST",
            "/api/v1/service/iris/score",
            &h,
            BODY,
        )
        .await;
        assert_eq!(r.status, 401, "{h:?}");
        assert_eq!(r.code(), "Unauthorized");
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header("www-authenticate"), "Bearer");
        assert!(!r.header("x-ms-request-id").is_empty());
    }
    // swagger.json needs the same credential.
    let r = once(
        &client,
        gw.addr,
        "GET",
        "/api/v1/service/iris/swagger.json",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(backend.count(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn routing_is_exact_and_checks_come_in_the_contracts_order() {
    let (pki, backend, gw) = setup(AuthMode::Key).await;
    let (key, _) = gw.keys("iris");
    let auth = format!("Bearer {key}");
    let a = [("authorization", auth.as_str())];
    let mut c = pki.client().h1(gw.addr).await;
    for p in [
        "/api/v1/service/iris/score/",
        "/api/v1/service/%69ris/score",
        "/api/v1/service/iris/scor%65",
        "/api/v1/service/iris%2Fscore",
        "/api/v1/service/x/../iris/score",
        "/api/v1/service/./iris/score",
        "/api/v1/service//iris/score",
        "/api/v1/service/IRIS/score",
        "/API/v1/service/iris/score",
        "/api/v1/service/iris",
        "/",
        "/score",
    ] {
        let r = c.send("POST", p, &a, BODY).await;
        assert_eq!((r.status, r.code().as_str()), (404, "NotFound"), "{p}");
    }
    let r = c
        .send("POST", "/api/v1/service/nosuch/score", &a, BODY)
        .await;
    assert_eq!((r.status, r.code().as_str()), (404, "ServiceNotFound"));
    // Route before credential: an unknown service is 404 even without a key.
    let r = c
        .send("POST", "/api/v1/service/nosuch/score", &[], BODY)
        .await;
    assert_eq!(r.status, 404);
    // Wrong methods: 405 with Allow, before the credential is looked at.
    let r = c.send("GET", "/api/v1/service/iris/score", &[], "").await;
    assert_eq!(
        (r.status, r.code().as_str(), r.header("allow")),
        (405, "MethodNotAllowed", "POST")
    );
    let r = c.send("PUT", "/api/v1/service/iris/score", &a, BODY).await;
    assert_eq!((r.status, r.header("allow")), (405, "POST"));
    let r = c
        .send("POST", "/api/v1/service/iris/swagger.json", &a, BODY)
        .await;
    assert_eq!((r.status, r.header("allow")), (405, "GET"));
    assert_eq!(backend.count(), 0);
    // swagger.json with a key is forwarded, query included.
    let r = c
        .send("GET", "/api/v1/service/iris/swagger.json?version=3", &a, "")
        .await;
    assert_eq!(r.status, 200);
    let seen = backend.seen().pop().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str()),
        ("GET", "/swagger.json?version=3")
    );
    gw.stop().await;
}

#[tokio::test]
async fn bad_client_request_id_is_400() {
    let (pki, backend, gw) = setup(AuthMode::None).await;
    let client = pki.client();
    let long = "a".repeat(101);
    for bad in [long.as_str(), "has space", "semi;colon", "slash/"] {
        let r = once(
            &client,
            gw.addr,
            "POST",
            "/api/v1/service/iris/score",
            &[("x-ms-client-request-id", bad)],
            BODY,
        )
        .await;
        assert_eq!((r.status, r.code().as_str()), (400, "BadRequest"), "{bad}");
        assert!(
            r.headers.get("x-ms-client-request-id").is_none(),
            "a bad id is not echoed"
        );
    }
    assert_eq!(backend.count(), 0);
    let ok = "a".repeat(100);
    let r = once(
        &client,
        gw.addr,
        "POST",
        "/api/v1/service/iris/score",
        &[("x-ms-client-request-id", &ok)],
        BODY,
    )
    .await;
    assert_eq!(r.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn auth_none_needs_no_credential_and_still_strips_authorization() {
    let (pki, backend, gw) = setup(AuthMode::None).await;
    let client = pki.client();
    let r = once(
        &client,
        gw.addr,
        "POST",
        "/api/v1/service/iris/score",
        &[],
        BODY,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = once(
        &client,
        gw.addr,
        "POST",
        "/api/v1/service/iris/score",
        &[("authorization", "Bearer whatever")],
        BODY,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        backend
            .seen()
            .iter()
            .all(|s| s.headers.get("authorization").is_none())
    );
    gw.stop().await;
}

/// Raw HTTP/1.1 over TLS, to control exactly what is on the wire. An error means the gateway
/// closed the connection first (which some exchanges allow).
async fn raw_exchange(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    bytes: &[u8],
) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Reads one HTTP/1.1 response (headers + Content-Length body); returns (head, body).
async fn read_response(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let fut = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                while buf.len() < end + 4 + len {
                    let n = stream.read(&mut tmp).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return Some((head, body));
            }
            let n = stream.read(&mut tmp).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
    };
    tokio::time::timeout(STEP, fut).await.ok().flatten()
}

#[tokio::test]
async fn an_early_401_does_not_let_the_unread_body_become_the_next_request() {
    let (pki, backend, gw) = setup(AuthMode::Key).await;
    let (key, _) = gw.keys("iris");
    // The body of a refused request is itself a valid request with the right key: if the gateway
    // left it on the connection, it would be parsed and forwarded as the next request.
    let smuggled = format!(
        "POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    let first = format!(
        "POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer wrong\r\ncontent-length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let mut s = pki.client().connect(gw.addr, &[b"http/1.1"]).await;
    raw_exchange(&mut s, first.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s).await.expect("401 response");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("Unauthorized"));
    // The connection is either closed, or (small body, drained) still usable for a real request.
    let second = format!(
        "POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\ncontent-length: 3\r\n\r\nabc"
    );
    // (A write error is the closed connection: then there is no response to read.)
    let _ = raw_exchange(&mut s, second.as_bytes()).await;
    if let Some((head, _)) = read_response(&mut s).await {
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let seen = backend.seen();
        assert_eq!(
            seen.len(),
            1,
            "only the real second request reached the backend"
        );
        assert_eq!(seen[0].body, "abc");
    }
    assert!(
        backend.seen().iter().all(|s| s.body != "{}"),
        "the smuggled request was forwarded"
    );

    // A large unread body: the gateway answers and closes rather than read megabytes.
    let mut s = pki.client().connect(gw.addr, &[b"http/1.1"]).await;
    let head = "POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer wrong\r\ncontent-length: 10000000\r\n\r\n";
    raw_exchange(&mut s, head.as_bytes()).await.unwrap();
    // The 401 may be sent, and the connection closed, before all of this is written.
    let _ = raw_exchange(&mut s, &vec![b'x'; 100_000]).await;
    let (head, _) = read_response(&mut s).await.expect("401 response");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn http2_client_reads_the_json_error_not_a_reset() {
    let (pki, _backend, gw) = setup(AuthMode::Key).await;
    let tls = pki.client().connect(gw.addr, &[b"h2"]).await;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // A streaming body that keeps coming: the gateway answers 401 before reading it.
    let (mut tx, body) =
        http_body_util::channel::Channel::<bytes::Bytes, std::convert::Infallible>::new(4);
    let req = http::Request::post("https://localhost/api/v1/service/iris/score")
        .header("authorization", "Bearer wrong")
        .body(body)
        .unwrap();
    let feeder = tokio::spawn(async move {
        for _ in 0..64 {
            if tx
                .send_data(bytes::Bytes::from(vec![b'x'; 16 * 1024]))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let resp = tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .unwrap()
        .expect("a response, not a reset");
    assert_eq!(resp.status(), 401);
    let body = tokio::time::timeout(STEP, http_body_util::BodyExt::collect(resp.into_body()))
        .await
        .unwrap()
        .expect("the JSON body arrives whole")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\"Unauthorized\""));
    feeder.abort();
    gw.stop().await;
}

#[tokio::test]
async fn alpn_chooses_http2_or_http1() {
    let (pki, backend, gw) = setup(AuthMode::None).await;
    let client = pki.client();
    let mut h2 = client.h2(gw.addr).await;
    let r = h2.score("iris", "", BODY).await;
    assert_eq!((r.status, r.version), (200, http::Version::HTTP_2));
    // The backend gets HTTP/1.1 whatever the client spoke.
    assert_eq!(
        backend.seen().pop().unwrap().version,
        http::Version::HTTP_11
    );
    // Several concurrent streams on one connection.
    let mut handles = Vec::new();
    for _ in 0..8 {
        let Conn::H2(s) = &h2 else { unreachable!() };
        let mut c = Conn::H2(s.clone());
        handles.push(tokio::spawn(async move {
            c.score("iris", "", BODY).await.status
        }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap(), 200);
    }
    let tls = client.connect(gw.addr, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = Conn::h1(tls).await.score("iris", "", BODY).await;
    assert_eq!((r.status, r.version), (200, http::Version::HTTP_11));
    // No ALPN at all: HTTP/1.1.
    let tls = client.connect(gw.addr, &[]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    assert_eq!(
        Conn::h1(tls).await.score("iris", "", BODY).await.status,
        200
    );
    gw.stop().await;
}

#[tokio::test]
async fn tls12_and_tls13_both_work() {
    let (pki, _backend, gw) = setup(AuthMode::None).await;
    let client = pki.client();
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let tls = client
            .connect_with(gw.addr, "localhost", client.config(&[b"http/1.1"], &[v]))
            .await;
        assert_eq!(tls.get_ref().1.protocol_version(), Some(v.version));
        assert_eq!(
            Conn::h1(tls).await.score("iris", "", BODY).await.status,
            200
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn backend_errors_pass_through_and_gateway_errors_are_502_504() {
    let pki = Pki::new();
    let failing = Backend::with(|_| Reply {
        status: 500,
        headers: vec![
            ("x-ms-run-function-failed".into(), "True".into()),
            ("x-ms-request-id".into(), "from-backend".into()),
            ("content-type".into(), "text/plain".into()),
        ],
        body: "An unexpected error occurred in scoring script.".into(),
        delay: Duration::ZERO,
    })
    .await;
    let slow = Backend::with(|_| Reply {
        delay: Duration::from_secs(5),
        ..Reply::ok("{}")
    })
    .await;
    let dead = refused_port();
    let mut slow_svc = service("slow", AuthMode::None, &[slow.url()]);
    slow_svc.scoring_timeout = Duration::from_millis(500);
    let gw = Gw::start(config(
        &pki,
        vec![
            service("failing", AuthMode::None, &[failing.url()]),
            slow_svc,
            service("gone", AuthMode::None, &[format!("http://{dead}")]),
        ],
    ))
    .await;
    let mut c = pki.client().h1(gw.addr).await;
    let r = c.score("failing", "", BODY).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("x-ms-run-function-failed"), "True");
    assert_eq!(r.header("content-type"), "text/plain");
    assert_eq!(r.body, "An unexpected error occurred in scoring script.");
    assert_ne!(r.header("x-ms-request-id"), "from-backend");
    assert_eq!(r.headers.get_all("x-ms-request-id").iter().count(), 1);

    let t = Instant::now();
    let r = c.score("slow", "", BODY).await;
    assert_eq!((r.status, r.code().as_str()), (504, "ScoringTimeout"));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(4),
        "{took:?}"
    );

    let r = c.score("gone", "", BODY).await;
    assert_eq!((r.status, r.code().as_str()), (502, "BackendUnavailable"));
    gw.stop().await;
}

#[tokio::test]
async fn h2c_backends_are_spoken_to_in_http2() {
    let pki = Pki::new();
    let backend = Backend::with_protocol(|_| Reply::ok("{}"), true).await;
    let mut svc = service("iris", AuthMode::None, &[backend.url()]);
    svc.backend_protocol = scoregate::config::BackendProtocol::H2c;
    let gw = Gw::start(config(&pki, vec![svc])).await;
    let r = pki.client().h1(gw.addr).await.score("iris", "", BODY).await;
    assert_eq!(r.status, 200);
    let seen = backend.seen().pop().unwrap();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.body, BODY);
    gw.stop().await;
}

/// The shared h2c connection is replaced when the backend restarts: requests after the restart
/// succeed on a new connection.
#[tokio::test]
async fn an_h2c_backend_restarted_on_its_port_gets_a_new_connection() {
    let pki = Pki::new();
    let addr = dead_port().await;
    let backend = Backend::on_with_protocol(addr, |_| Reply::ok("{}"), true).await;
    let mut svc = service("iris", AuthMode::None, &[format!("http://{addr}")]);
    svc.backend_protocol = scoregate::config::BackendProtocol::H2c;
    let gw = Gw::start(config(&pki, vec![svc])).await;
    let mut c = pki.client().h1(gw.addr).await;
    for _ in 0..3 {
        assert_eq!(c.score("iris", "", BODY).await.status, 200);
    }
    drop(backend);
    let backend = Backend::on_with_protocol(addr, |_| Reply::ok("{}"), true).await;
    for i in 0..5 {
        let r = c.score("iris", "", BODY).await;
        assert_eq!(r.status, 200, "request {i} after the restart: {:?}", r.body);
    }
    assert_eq!(backend.scored(), 5);
    assert!(
        backend
            .seen()
            .iter()
            .all(|s| s.version == http::Version::HTTP_2)
    );
    gw.stop().await;
}

#[tokio::test]
async fn round_robin_over_backends() {
    let pki = Pki::new();
    let a = Backend::start().await;
    let b = Backend::start().await;
    let gw = Gw::start(config(
        &pki,
        vec![service("iris", AuthMode::None, &[a.url(), b.url()])],
    ))
    .await;
    let mut c = pki.client().h1(gw.addr).await;
    for _ in 0..10 {
        assert_eq!(c.score("iris", "", BODY).await.status, 200);
    }
    assert_eq!((a.count(), b.count()), (5, 5));
    gw.stop().await;
}

#[tokio::test]
async fn a_backend_that_refuses_connections_is_skipped_once() {
    let pki = Pki::new();
    let live = Backend::start().await;
    let dead = refused_port();
    let gw = Gw::start(config(
        &pki,
        vec![service(
            "iris",
            AuthMode::None,
            &[format!("http://{dead}"), live.url()],
        )],
    ))
    .await;
    let mut c = pki.client().h1(gw.addr).await;
    for _ in 0..6 {
        let r = c.score("iris", "", BODY).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert_eq!(live.count(), 6);
    assert!(
        live.seen().iter().all(|s| s.body == BODY),
        "the retried body arrives whole"
    );
    gw.stop().await;
}

/// The gateway in front of one backend, its service's `max_body` 1000 bytes.
async fn body_limited() -> (Pki, Backend, Gw) {
    let pki = Pki::new();
    let backend = Backend::start().await;
    let mut svc = service("iris", AuthMode::None, &[backend.url()]);
    svc.max_body = 1000;
    let gw = Gw::start(config(&pki, vec![svc])).await;
    (pki, backend, gw)
}

#[tokio::test]
async fn body_limit_from_content_length_and_from_streamed_bytes() {
    let (pki, backend, gw) = body_limited().await;
    let client = pki.client();
    let big = "x".repeat(1001);
    let r = once(
        &client,
        gw.addr,
        "POST",
        "/api/v1/service/iris/score",
        &[],
        &big,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (413, "PayloadTooLarge"));
    let ok = "x".repeat(1000);
    assert_eq!(
        once(
            &client,
            gw.addr,
            "POST",
            "/api/v1/service/iris/score",
            &[],
            &ok
        )
        .await
        .status,
        200
    );
    assert_eq!(backend.count(), 1);

    // Chunked (no Content-Length) growing past the limit: 413, and the backend never gets it whole.
    let mut s = client.connect(gw.addr, &[b"http/1.1"]).await;
    let head = "POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n";
    raw_exchange(&mut s, head.as_bytes()).await.unwrap();
    // The 413 may come, and the connection close, before the last chunks are written.
    for _ in 0..5 {
        let _ = raw_exchange(&mut s, format!("12c\r\n{}\r\n", "y".repeat(300)).as_bytes()).await;
    }
    let _ = raw_exchange(&mut s, b"0\r\n\r\n").await;
    let (head, body) = read_response(&mut s).await.expect("an answer");
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("PayloadTooLarge"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        backend.count(),
        1,
        "the backend never received the oversized request whole"
    );
    gw.stop().await;
}

/// A client that is still sending a body the gateway refused (413 from its declared size, too
/// large to drain) can finish writing and then read the answer: the gateway keeps reading and
/// throwing away what comes after it has answered and closed (lingering close), instead of
/// closing a socket with unread data, which resets the connection under the client's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_a_refused_body_gets_to_read_the_answer() {
    let (pki, backend, gw) = body_limited().await;
    let client = pki.client();
    // Far more than the socket buffers on both sides hold, so the gateway must read it.
    const SIZE: usize = 24 << 20;
    let mut s = client.connect(gw.addr, &[b"http/1.1"]).await;
    let head = format!(
        "POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\n\
         content-type: application/json\r\ncontent-length: {SIZE}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let write = async {
        for _ in 0..SIZE / chunk.len() {
            s.write_all(&chunk).await?;
        }
        s.flush().await
    };
    let written = tokio::time::timeout(Duration::from_secs(20), write)
        .await
        .expect("writing the body timed out");
    assert!(
        written.is_ok(),
        "the connection was reset while the client was still sending: {written:?}"
    );
    let (head, body) = read_response(&mut s).await.expect("an answer");
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(String::from_utf8_lossy(&body).contains("PayloadTooLarge"));
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(STEP, s.read(&mut buf))
        .await
        .expect("closed");
    assert!(matches!(end, Ok(0)), "closed with close_notify: {end:?}");
    assert_eq!(backend.count(), 0);
    gw.stop().await;
}

/// Regression: over HTTP/2 an early 401 reset the stream while curl was still sending the body,
/// and curl dropped the answer (exit 92) most of the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http2_reads_early_refusals_with_large_bodies() {
    let (pki, backend, gw) = setup(AuthMode::Key).await;
    let dir = tempdir("curl");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pki.ca.cert_pem()).unwrap();
    let body = dir.join("body.bin");
    std::fs::write(&body, vec![b'x'; 300_000]).unwrap();
    let url = format!(
        "https://localhost:{}/api/v1/service/iris/score",
        gw.addr.port()
    );
    for i in 0..10 {
        let out = tokio::process::Command::new("curl")
            .args(["-s", "--http2", "--max-time", "10", "--resolve"])
            .arg(format!("localhost:{}:127.0.0.1", gw.addr.port()))
            .arg("--cacert")
            .arg(&ca)
            .args(["-H", "Authorization: Bearer wrong", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .args(["-w", "\n%{http_code} %{http_version}"])
            .arg(&url)
            .output()
            .await
            .expect("curl is installed (CI installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "try {i}: curl exit {:?}: {text}",
            out.status.code()
        );
        assert!(text.ends_with("401 2"), "try {i}: {text}");
        assert!(text.contains("\"Unauthorized\""), "try {i}: {text}");
    }
    assert_eq!(backend.count(), 0);
    gw.stop().await;
}

//! scoregate's integration-test harness: the real gateway on 127.0.0.1:0, backends that record
//! what they receive, and real TLS clients (rustls) that trust a throwaway test CA. Every wait is
//! bounded. A crate of its own, so that each test file uses what it needs without dead code.
// Tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod fleet;
pub mod metrics;
pub mod redis;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use scoregate::admin_client::AdminClient;
use scoregate::certgen::{Ca, Leaf, LeafOptions};
use scoregate::config::{AuthMode, CertificateConfig, Config, ServiceConfig};
use scoregate::server::Server;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Upper bound for any single network step in tests.
pub const STEP: Duration = Duration::from_secs(10);

pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "scoregate-test-{tag}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------- backends

/// What a backend received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// How a recording backend answers.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: &str) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
}

pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests whose body was cut off before it was complete.
    pub aborted: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// A backend answering 200 `{"ok":true}` to everything.
    pub async fn start() -> Backend {
        Self::with(|_| Reply::ok(r#"{"ok":true}"#)).await
    }

    pub async fn with(f: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Backend {
        Self::with_protocol(f, false).await
    }

    /// `h2c`: serve HTTP/2 with prior knowledge instead of HTTP/1.1.
    pub async fn with_protocol(
        f: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
        h2c: bool,
    ) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(l, f, h2c, false)
    }

    /// A backend on a chosen address (e.g. one from `dead_port()`, to stop and restart a backend
    /// on the same port). Unlike the others, dropping it also closes the connections it accepted,
    /// so a stopped backend really stops answering.
    pub async fn on(
        addr: SocketAddr,
        f: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        Self::on_with_protocol(addr, f, false).await
    }

    /// `on`, serving HTTP/2 with prior knowledge when `h2c`.
    pub async fn on_with_protocol(
        addr: SocketAddr,
        f: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
        h2c: bool,
    ) -> Backend {
        let l = tokio::time::timeout(STEP, async {
            loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => return l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await
        .expect("the port is free again");
        Self::serve(l, f, h2c, true)
    }

    /// `own_connections`: connection tasks live in a `JoinSet` owned by the accept task, so
    /// aborting it (on drop) closes them too.
    fn serve(
        l: TcpListener,
        f: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
        h2c: bool,
        own_connections: bool,
    ) -> Backend {
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let handler: Handler = Arc::new(f);
        let s2 = seen.clone();
        let aborted: Arc<Mutex<usize>> = Arc::default();
        let a2 = aborted.clone();
        let task = tokio::spawn(async move {
            let mut owned = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    continue;
                };
                while owned.try_join_next().is_some() {}
                let seen = s2.clone();
                let handler = handler.clone();
                let aborted = a2.clone();
                let conn = async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        let handler = handler.clone();
                        let aborted = aborted.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
                                // The request was cut off: a real server never processes it.
                                *aborted.lock().unwrap() += 1;
                                return Ok(Response::new(Full::new(Bytes::new())));
                            };
                            let s = Seen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                                version: parts.version,
                            };
                            let reply = handler(&s);
                            seen.lock().unwrap().push(s);
                            if !reply.delay.is_zero() {
                                tokio::time::sleep(reply.delay).await;
                            }
                            let mut r = Response::new(Full::new(Bytes::from(reply.body)));
                            *r.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                            for (k, v) in reply.headers {
                                r.headers_mut().append(
                                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    http::HeaderValue::from_str(&v).unwrap(),
                                );
                            }
                            Ok::<_, Infallible>(r)
                        }
                    });
                    if h2c {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    }
                };
                if own_connections {
                    owned.spawn(conn);
                } else {
                    tokio::spawn(conn);
                }
            }
        });
        Backend {
            addr,
            seen,
            aborted,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Requests other than the gateway's health probes (`GET` with its user agent).
    pub fn scored(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| !is_probe(s))
            .count()
    }

    /// The gateway's health probes received so far.
    pub fn probes(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| is_probe(s))
            .count()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_probe(s: &Seen) -> bool {
    s.headers
        .get("user-agent")
        .is_some_and(|v| v.as_bytes().starts_with(b"scoregate-health/"))
}

/// A loopback port that refuses connections for the rest of the test process: a socket is bound
/// to it and never listens, so that no parallel test can take the port and answer on it (as one
/// from `dead_port` can, once it has been given back).
pub fn refused_port() -> SocketAddr {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let a = s.local_addr().unwrap();
    // Held, unlistened, until the process exits.
    std::mem::forget(s);
    a
}

/// A loopback port with nothing listening on it now, free for the test to bind later (another
/// test may take it meanwhile: for a port that must stay dead, `refused_port`).
pub async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

// ---------------------------------------------------------------- certificates and gateway

/// A test PKI: one CA, and certificates written to files on demand.
pub struct Pki {
    pub ca: Ca,
    pub dir: PathBuf,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            ca: Ca::new("scoregate test CA"),
            dir: tempdir("pki"),
        }
    }

    /// Writes a leaf for `names` and returns a config entry for `cname`, plus the leaf.
    pub fn cert(
        &self,
        cname: &str,
        names: &[&str],
        opts: &LeafOptions,
    ) -> (CertificateConfig, Leaf) {
        let leaf = self.ca.leaf(names, opts);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let cert = self.dir.join(format!("{id}-chain.pem"));
        let key = self.dir.join(format!("{id}-key.pem"));
        std::fs::write(&cert, &leaf.chain_pem).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        (
            CertificateConfig {
                cname: cname.into(),
                cert,
                key,
            },
            leaf,
        )
    }

    pub fn client(&self) -> TlsClient {
        TlsClient::new(&self.ca.cert_pem())
    }
}

/// A config with one `localhost` certificate and the given services, state in a temp dir.
pub fn config(pki: &Pki, services: Vec<ServiceConfig>) -> Config {
    let (cert, _) = pki.cert(
        "localhost",
        &["localhost", "127.0.0.1"],
        &LeafOptions::default(),
    );
    let state = tempdir("state");
    let mut c = Config::new_in_code("(test)", "127.0.0.1:0".parse().unwrap(), vec![cert], state);
    c.services = services;
    c
}

pub fn service(name: &str, auth: AuthMode, backends: &[String]) -> ServiceConfig {
    ServiceConfig::new(
        name,
        auth,
        backends.iter().map(|b| b.parse().unwrap()).collect(),
    )
}

pub struct Gw {
    pub server: Server,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Gw {
    pub async fn start(config: Config) -> Gw {
        let server = tokio::time::timeout(STEP, scoregate::server::start(config))
            .await
            .expect("gateway start timed out")
            .expect("gateway starts");
        let addr = server.addrs[0];
        let admin = server.admin_addr;
        Gw {
            server,
            addr,
            admin,
        }
    }

    pub fn keys(&self, service: &str) -> (String, String) {
        let k = self.server.shared.keys(service).unwrap();
        (
            k.primary.expose().to_string(),
            k.secondary.expose().to_string(),
        )
    }

    pub fn admin_token(&self) -> String {
        let p = &self.server.shared.snapshot().config.admin.token_file;
        std::fs::read_to_string(p).unwrap().trim().to_string()
    }

    pub async fn stop(self) {
        self.server.shutdown(Duration::from_secs(5)).await;
    }
}

// ---------------------------------------------------------------- clients

/// A rustls client that trusts the test CA.
#[derive(Clone)]
pub struct TlsClient {
    roots: Arc<rustls::RootCertStore>,
}

impl TlsClient {
    pub fn new(ca_pem: &str) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        TlsClient {
            roots: Arc::new(roots),
        }
    }

    pub fn config(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ClientConfig {
        let mut c =
            rustls::ClientConfig::builder_with_provider(scoregate::crypto::provider().clone())
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        c
    }

    pub async fn connect_with(
        &self,
        addr: SocketAddr,
        sni: &str,
        config: rustls::ClientConfig,
    ) -> TlsStream<TcpStream> {
        let tcp = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let name = ServerName::try_from(sni.to_string()).unwrap();
        tokio::time::timeout(
            STEP,
            TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .expect("handshake timed out")
        .expect("handshake")
    }

    pub async fn connect(&self, addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let cfg = self.config(alpn, rustls::DEFAULT_VERSIONS);
        self.connect_with(addr, "localhost", cfg).await
    }

    /// An HTTP/1.1 connection (ALPN http/1.1).
    pub async fn h1(&self, addr: SocketAddr) -> Conn {
        let tls = self.connect(addr, &[b"http/1.1"]).await;
        Conn::h1(tls).await
    }

    /// An HTTP/1.1 connection from a chosen loopback source address (127.0.0.2, ...): a second
    /// client address for per-client rules (rate limits, allow lists).
    pub async fn h1_from(&self, src: &str, addr: SocketAddr) -> Conn {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
        let tcp = tokio::time::timeout(STEP, sock.connect(addr))
            .await
            .unwrap()
            .unwrap();
        let cfg = self.config(&[b"http/1.1"], rustls::DEFAULT_VERSIONS);
        let tls = tokio::time::timeout(
            STEP,
            TlsConnector::from(Arc::new(cfg))
                .connect(ServerName::try_from("localhost").unwrap(), tcp),
        )
        .await
        .unwrap()
        .unwrap();
        Conn::h1(tls).await
    }

    /// An HTTP/2 connection (ALPN h2).
    pub async fn h2(&self, addr: SocketAddr) -> Conn {
        let tls = self.connect(addr, &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        Conn::h2(tls).await
    }
}

pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

impl Conn {
    pub async fn h1(tls: TlsStream<TcpStream>) -> Conn {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn::H1(sender)
    }

    pub async fn h2(tls: TlsStream<TcpStream>) -> Conn {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        Conn::H2(sender)
    }

    /// Sends a request and reads the whole response. `headers` are `(name, value)` pairs.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Resp {
        let mut b = Request::builder().method(method);
        b = match self {
            Conn::H1(_) => b.uri(path).header("host", "localhost"),
            Conn::H2(_) => b.uri(format!("https://localhost{path}")),
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let fut = async {
            let resp = match self {
                Conn::H1(s) => {
                    s.ready().await.unwrap();
                    s.send_request(req).await
                }
                Conn::H2(s) => {
                    s.ready().await.unwrap();
                    s.send_request(req).await
                }
            }
            .expect("response");
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            Resp {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
                version: parts.version,
            }
        };
        tokio::time::timeout(STEP, fut)
            .await
            .expect("request timed out")
    }

    /// POST to a service's score endpoint with a key.
    pub async fn score(&mut self, service: &str, key: &str, body: &str) -> Resp {
        let auth = format!("Bearer {key}");
        self.send(
            "POST",
            &format!("/api/v1/service/{service}/score"),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await
    }
}

/// One request on a fresh HTTP/1.1 connection.
pub async fn once(
    client: &TlsClient,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    client
        .h1(addr)
        .await
        .send(method, path, headers, body)
        .await
}

/// Reads a PEM certificate's serial (hex, as `x509-parser` prints it).
pub fn serial_of(cert_der: &[u8]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(cert_der).unwrap();
    c.raw_serial_as_string()
}

/// Reads the serial of the certificate a server presents on a fresh handshake with `sni`.
pub async fn presented_serial(client: &TlsClient, addr: SocketAddr, sni: &str) -> String {
    let tls = client
        .connect_with(
            addr,
            sni,
            client.config(&[b"http/1.1"], rustls::DEFAULT_VERSIONS),
        )
        .await;
    let certs = tls.get_ref().1.peer_certificates().unwrap();
    serial_of(certs[0].as_ref())
}

pub fn leaf_serial(leaf: &Leaf) -> String {
    let der = rustls_pki_types::CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
    serial_of(der.as_ref())
}

/// One request to an admin listener through the gateway's own admin client, fully read; `token`
/// goes in `Authorization: Bearer`. Bounded by `STEP`.
pub async fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Resp {
    let client = AdminClient::for_addr(addr, token.map(str::to_string)).with_timeout(STEP);
    let method = http::Method::from_bytes(method.as_bytes()).unwrap();
    let r = client
        .send(method, path, Bytes::from(body.to_string()))
        .await
        .unwrap_or_else(|e| panic!("admin request {path}: {e:#}"));
    Resp {
        status: r.status.as_u16(),
        headers: r.headers,
        body: r.body,
        version: http::Version::HTTP_11,
    }
}

// ---------------------------------------------------------------- backends that misbehave

/// A backend that hands each TCP connection it accepts to `serve`: raw bytes, for servers that
/// misbehave in ways hyper would not (endless 1xx, a head and then silence, a slow trickle).
/// Dropping it stops accepting and closes every connection it accepted.
pub struct TcpBackend {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TcpBackend {
    pub async fn start<F, Fut>(serve: F) -> TcpBackend
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                conns.spawn(serve(tcp));
            }
        });
        TcpBackend { addr, task }
    }

    /// An HTTP/1.1 backend whose every request is answered by `handle`, which decides when to
    /// answer and how the body streams.
    pub async fn hyper<F, Fut, B>(handle: F) -> TcpBackend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<B>> + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let handle = Arc::new(handle);
        Self::start(move |tcp| {
            let handle = handle.clone();
            async move {
                let svc = service_fn(move |req| {
                    let fut = handle(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            }
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 request (head, then a `Content-Length` or chunked body) from a raw
/// backend connection. `false` when the peer closed or broke the connection first.
pub async fn read_request(s: &mut TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_len, head) = loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break (
                end + 4,
                String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase(),
            );
        }
    };
    let chunked = head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap_or(0));
    let done = |b: &[u8]| {
        let body = &b[head_len..];
        if chunked {
            body.ends_with(b"0\r\n\r\n")
        } else {
            body.len() >= length
        }
    };
    while !done(&buf) {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// Polls `cond` every 20 ms until it holds; fails the test after `within`.
pub async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

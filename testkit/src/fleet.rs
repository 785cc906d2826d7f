//! For the fleet tests (contract §6): a replica's config directory whose state is shared through
//! Redis (`Site`), the real binary (`Proc`), a load of concurrent clients that counts every
//! failed scoring request (`Load`), and bounded waiting (`eventually`).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use scoregate::admin_client::AdminClient;
use scoregate::certgen::LeafOptions;
use scoregate::config::{AuthMode, Config};

use super::redis::{Redis, sealing_key, use_redis};
use super::{
    Backend, Gw, Pki, Resp, TlsClient, admin_request, config, leaf_serial, service, tempdir,
};

/// The scoring body every fleet test sends.
pub const BODY: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

/// The `[state.redis]` settings of a test replica besides the URL and sealing-key files: the
/// test prefix, the default command timeout and a short resync (2 s), so that tests see
/// convergence quickly.
pub const REDIS_SETTINGS: &str = "prefix = \"test:\"\ntimeout = \"250ms\"\nresync = \"2s\"\n";

/// Waits until `ok` holds, at most `within`; panics with `what` otherwise. Returns how long it
/// took.
pub async fn eventually(
    what: &str,
    within: Duration,
    mut ok: impl AsyncFnMut() -> bool,
) -> Duration {
    let t = Instant::now();
    while !ok().await {
        assert!(t.elapsed() < within, "timed out after {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.elapsed()
}

/// A loopback port that is free now (for configs of the binary, which must name one, and for a
/// Redis restarted on the same port). It lies below Linux's ephemeral range (32768-60999), so
/// that no other process's `bind(0)` or outgoing connection takes it meanwhile.
pub fn reserve_port() -> u16 {
    loop {
        let p = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// What listens on `port` (`ss`), for a failure message.
pub fn who_listens(port: u16) -> String {
    std::process::Command::new("ss")
        .args(["-ltnp", &format!("sport = :{port}")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A loopback address with a port that was free a moment ago.
pub fn reserve_addr() -> SocketAddr {
    format!("127.0.0.1:{}", reserve_port()).parse().unwrap()
}

/// Whether something accepts TCP connections on `addr` now.
pub async fn listening(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

// ---------------------------------------------------------------- a replica's config directory

/// A replica's config directory: `scoregate.toml`, `tls/cert.pem` and `tls/key.pem` (from the
/// shared test CA), `admin-token`, `redis-url`, `store-key` (the sealing key) and `state/` (the
/// file store, or this replica's cache of the shared store).
pub struct Site {
    pub dir: PathBuf,
}

impl Site {
    /// A directory with a certificate for `localhost`, an admin token, the URL of `redis` and the
    /// sealing key made from `key_byte`.
    pub fn new(pki: &Pki, redis: &Redis, key_byte: u8) -> Site {
        let site = Site {
            dir: tempdir("site"),
        };
        std::fs::create_dir_all(site.dir.join("tls")).unwrap();
        site.write_cert(pki, 1);
        std::fs::write(
            site.dir.join("admin-token"),
            "fleet-admin-token-0123456789\n",
        )
        .unwrap();
        site.set_redis_url(&redis.url());
        site.set_store_key(key_byte);
        site
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("scoregate.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Writes a fresh `localhost` leaf with this serial; returns its serial as the server will
    /// present it.
    pub fn write_cert(&self, pki: &Pki, serial: u64) -> String {
        let leaf = pki.ca.leaf(
            &["localhost", "127.0.0.1"],
            &LeafOptions {
                serial: Some(serial),
                ..LeafOptions::default()
            },
        );
        std::fs::write(self.dir.join("tls/cert.pem"), &leaf.chain_pem).unwrap();
        std::fs::write(self.dir.join("tls/key.pem"), &leaf.key_pem).unwrap();
        leaf_serial(&leaf)
    }

    pub fn set_redis_url(&self, url: &str) {
        std::fs::write(self.dir.join("redis-url"), format!("{url}\n")).unwrap();
    }

    pub fn set_store_key(&self, key_byte: u8) {
        std::fs::write(self.dir.join("store-key"), sealing_key(key_byte)).unwrap();
    }

    /// Writes `scoregate.toml` for a replica sharing its state through Redis: the listener, the
    /// certificate, the admin listener, `[state]` with `store = "redis"` and `[state.redis]`
    /// (`url_file`, `secret_key_file`, then `redis`, e.g. `REDIS_SETTINGS`), then `rest` (more
    /// sections and the `[[service]]` entries).
    pub fn write_config(&self, listen: &str, admin: &str, redis: &str, rest: &str) {
        self.write(
            listen,
            admin,
            &format!(
                "store = \"redis\"\n\n[state.redis]\nurl_file = \"redis-url\"\nsecret_key_file = \"store-key\"\n{redis}"
            ),
            rest,
        );
    }

    /// Writes `scoregate.toml` for a replica with the file store.
    pub fn write_file_store_config(&self, listen: &str, admin: &str, rest: &str) {
        self.write(listen, admin, "", rest);
    }

    fn write(&self, listen: &str, admin: &str, state: &str, rest: &str) {
        let text = format!(
            r#"
[listen]
address = "{listen}"

[[tls.certificates]]
cname = "localhost"
cert = "tls/cert.pem"
key = "tls/key.pem"

[admin]
address = "{admin}"
token_file = "admin-token"

[state]
dir = "state"
{state}

{rest}
"#
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    pub fn load(&self) -> Config {
        Config::load(&self.config_path()).unwrap()
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_string()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `[[service]]` entry.
pub fn service_toml(name: &str, auth: &str, backends: &[String], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[service]]\nname = \"{name}\"\nauth = \"{auth}\"\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    )
}

// ---------------------------------------------------------------- the real binary

/// A `scoregate` process, stopped (SIGKILL) when dropped; its stderr is collected.
pub struct Proc {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// Reads the child's stderr until EOF; joined once the child has exited, so that its last
    /// words are in `stderr` before anyone looks.
    reader: Option<std::thread::JoinHandle<()>>,
    pub admin: SocketAddr,
}

impl Proc {
    /// Starts `BIN serve --config FILE` (`bin`: the test's `env!("CARGO_BIN_EXE_scoregate")`)
    /// without waiting for anything.
    pub fn spawn(bin: &str, config: &Path, admin: SocketAddr) -> Proc {
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(config)
            .env("SCOREGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            child,
            stderr,
            reader: Some(reader),
            admin,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An unauthenticated admin GET (`/healthz`, `/readyz`, `/metrics`): `None` when the admin
    /// listener does not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let client = AdminClient::for_addr(self.admin, None).with_timeout(Duration::from_secs(2));
        let r = client.send(Method::GET, path, Bytes::new()).await.ok()?;
        Some((
            r.status.as_u16(),
            String::from_utf8_lossy(&r.body).into_owned(),
        ))
    }

    /// An admin request with the token.
    pub async fn admin(&self, token: &str, method: &str, path: &str, body: &str) -> Resp {
        admin_request(self.admin, method, path, Some(token), body).await
    }

    pub async fn readyz(&self) -> Option<u16> {
        self.get("/readyz").await.map(|(s, _)| s)
    }

    /// Waits until `/readyz` answers 200, at most `within`; panics (with the log) if the process
    /// exits or stays unready.
    pub async fn wait_ready(&mut self, within: Duration) -> Duration {
        let t = Instant::now();
        loop {
            if self.readyz().await == Some(200) {
                return t.elapsed();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("scoregate exited ({status}): {}", self.stderr());
            }
            assert!(
                t.elapsed() < within,
                "not ready within {within:?}: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process has exited (then its whole stderr has been read).
    pub fn exited(&mut self) -> bool {
        let done = self.child.try_wait().unwrap().is_some();
        if done && let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        done
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- load

/// Requests of one load target: how many answered 200, how many did not (any other status, or a
/// transport error), and the first failures.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub errors: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, what: &str, r: Result<u16, String>) {
        match r {
            Ok(200) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut e = self.errors.lock().unwrap();
                if e.len() < 20 {
                    e.push(format!("{what}: {other:?}"));
                }
            }
        }
    }
}

/// Concurrent clients scoring against several gateways until `finish`: per target one
/// keep-alive HTTP/1.1 connection, one HTTP/2 connection, and one client that opens a fresh
/// connection (a full TLS handshake) for every request.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub tallies: Vec<Arc<Tally>>,
}

/// What a target is: an address, a service, a credential.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub service: String,
    pub credential: String,
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

fn score_request(t: &Target, h2: bool) -> Request<Full<Bytes>> {
    let path = format!("/api/v1/service/{}/score", t.service);
    let b = if h2 {
        Request::post(format!("https://localhost{path}"))
    } else {
        Request::post(path).header("host", "localhost")
    };
    b.header("authorization", format!("Bearer {}", t.credential))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap()
}

async fn tls(
    client: &TlsClient,
    addr: SocketAddr,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let cfg = client.config(&[alpn], rustls::DEFAULT_VERSIONS);
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .map_err(|e| e.to_string())
}

async fn h1(client: &TlsClient, addr: SocketAddr) -> Result<H1, String> {
    let (tx, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls(client, addr, b"http/1.1").await?))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(tx)
}

async fn h2(client: &TlsClient, addr: SocketAddr) -> Result<H2, String> {
    let (tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls(client, addr, b"h2").await?),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(tx)
}

async fn status_of(
    fut: impl std::future::Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
) -> Result<u16, String> {
    let resp = tokio::time::timeout(super::STEP, fut)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

/// Pause between two requests of one client: enough load to matter, not so much that two shared
/// cores starve the gateways' store timers.
const PACE: Duration = Duration::from_millis(3);

impl Load {
    pub fn start(client: &TlsClient, targets: &[Target]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let mut tallies = Vec::new();
        for t in targets {
            let tally = Arc::new(Tally::default());
            tallies.push(tally.clone());
            // Keep-alive HTTP/1.1.
            let (c, t1, s, y) = (client.clone(), t.clone(), stop.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn: Option<H1> = None;
                while !s.load(Ordering::Relaxed) {
                    if conn.is_none() {
                        match h1(&c, t1.addr).await {
                            Ok(x) => conn = Some(x),
                            Err(e) => {
                                y.record("h1 connect", Err(e));
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                    }
                    let tx = conn.as_mut().unwrap();
                    let r = match tx.ready().await {
                        Ok(()) => status_of(tx.send_request(score_request(&t1, false))).await,
                        Err(e) => Err(e.to_string()),
                    };
                    if r.is_err() {
                        conn = None;
                    }
                    y.record("h1", r);
                    tokio::time::sleep(PACE).await;
                }
            }));
            // HTTP/2.
            let (c, t2, s, y) = (client.clone(), t.clone(), stop.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn: Option<H2> = None;
                while !s.load(Ordering::Relaxed) {
                    if conn.is_none() {
                        match h2(&c, t2.addr).await {
                            Ok(x) => conn = Some(x),
                            Err(e) => {
                                y.record("h2 connect", Err(e));
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                    }
                    let tx = conn.as_mut().unwrap();
                    let r = match tx.ready().await {
                        Ok(()) => status_of(tx.send_request(score_request(&t2, true))).await,
                        Err(e) => Err(e.to_string()),
                    };
                    if r.is_err() {
                        conn = None;
                    }
                    y.record("h2", r);
                    tokio::time::sleep(PACE).await;
                }
            }));
            // A fresh connection (full handshake) per request.
            let (c, t3, s, y) = (client.clone(), t.clone(), stop.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                while !s.load(Ordering::Relaxed) {
                    let r = match h1(&c, t3.addr).await {
                        Ok(mut tx) => match tx.ready().await {
                            Ok(()) => status_of(tx.send_request(score_request(&t3, false))).await,
                            Err(e) => Err(e.to_string()),
                        },
                        Err(e) => Err(format!("connect: {e}")),
                    };
                    y.record("fresh", r);
                    tokio::time::sleep(PACE).await;
                }
            }));
        }
        Load {
            stop,
            tasks,
            tallies,
        }
    }

    /// Stops the clients; `(ok, failed, first failures)` per target, in order.
    pub async fn finish(self) -> Vec<(u64, u64, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(super::STEP, t).await;
        }
        self.tallies
            .iter()
            .map(|t| {
                (
                    t.ok.load(Ordering::Relaxed),
                    t.failed.load(Ordering::Relaxed),
                    t.errors.lock().unwrap().clone(),
                )
            })
            .collect()
    }
}

// ---------------------------------------------------------------- in-process replicas

/// A config with `services` (each on `backend`) on the shared store `redis` (prefix `test:`,
/// sealing key 1).
pub fn fleet_config(
    pki: &Pki,
    redis: &Redis,
    services: &[(&str, AuthMode)],
    backend: &Backend,
) -> Config {
    let mut c = config(
        pki,
        services
            .iter()
            .map(|(n, m)| service(n, *m, &[backend.url()]))
            .collect(),
    );
    use_redis(&mut c, redis, "test:", 1);
    c
}

/// The status of one scoring request on a fresh HTTP/1.1 connection.
pub async fn score(client: &TlsClient, gw: &Gw, service: &str, credential: &str) -> u16 {
    client
        .h1(gw.addr)
        .await
        .score(service, credential, BODY)
        .await
        .status
}

/// `regenerateKeys` through `gw`'s admin API.
pub async fn regenerate(gw: &Gw, service: &str, key_type: &str) -> Resp {
    admin_request(
        gw.admin,
        "POST",
        &format!("/v1/services/{service}/regenerateKeys"),
        Some(&gw.admin_token()),
        &format!(r#"{{"keyType": "{key_type}"}}"#),
    )
    .await
}

/// A new token from `gw`'s admin API (asserts 200).
pub async fn token(gw: &Gw, service: &str) -> String {
    let r = admin_request(
        gw.admin,
        "POST",
        &format!("/v1/services/{service}/token"),
        Some(&gw.admin_token()),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["accessToken"].as_str().unwrap().to_string()
}

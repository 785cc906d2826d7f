//! Live operations against the real gateway: reload under load (certificates, services, backends),
//! failed reloads that change nothing, TLS resumption across reloads, graceful drain of the real
//! binary on SIGTERM, the metrics exposition, the access log, watch mode with a Kubernetes
//! style symlink swap, and the binary's memory given back to the kernel once connections close.
//!
//! The gateways here start from a config *file* (reload re-reads it). Timing-sensitive tests run
//! one at a time (`SERIAL`), with generous windows: CI has two shared cores.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use scoregate::admin_client::AdminClient;
use scoregate::certgen::LeafOptions;
use scoregate::config::Config;
use scoregate_testkit::metrics::{metrics, value};
use scoregate_testkit::*;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const BODY: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

/// One timing-sensitive test at a time in this file.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------- a gateway started from files

/// A config directory: `scoregate.toml`, `tls/cert.pem`, `tls/key.pem`, `state/`, `admin-token`.
struct Site {
    pki: Pki,
    dir: PathBuf,
}

impl Site {
    fn new(tag: &str) -> Site {
        let dir = tempdir(tag);
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        Site {
            pki: Pki::new(),
            dir,
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("scoregate.toml")
    }

    /// Writes a fresh `localhost` leaf with this serial to `tls/`; returns its serial as the
    /// server will present it.
    fn write_cert(&self, serial: u64) -> String {
        let leaf = self.pki.ca.leaf(
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

    /// Writes `scoregate.toml`: the listener and certificate, then `rest` (more sections and the
    /// `[[service]]` entries).
    fn write_config(&self, listen: &str, admin: &str, rest: &str) {
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

{rest}
"#
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    fn load(&self) -> Config {
        Config::load(&self.config_path()).unwrap()
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_string()
    }
}

fn service_toml(name: &str, auth: &str, backends: &[&Backend], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.url()))
        .collect();
    format!(
        "[[service]]\nname = \"{name}\"\nauth = \"{auth}\"\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    )
}

/// A request to the admin API; `(status, body)`.
async fn admin(addr: SocketAddr, token: &str, method: &str, path: &str) -> (u16, String) {
    let r = admin_request(addr, method, path, (!token.is_empty()).then_some(token), "").await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

async fn reload(gw: &Gw, token: &str) -> (u16, serde_json::Value) {
    let (status, body) = admin(gw.admin, token, "POST", "/v1/reload").await;
    (status, serde_json::from_str(&body).unwrap())
}

// ---------------------------------------------------------------- metrics text

// ---------------------------------------------------------------- load generation

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
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

fn score_request(key: &str, h2: bool) -> Request<Full<Bytes>> {
    let b = if h2 {
        Request::post("https://localhost/api/v1/service/iris/score")
    } else {
        Request::post("/api/v1/service/iris/score").header("host", "localhost")
    };
    b.header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap()
}

async fn tls_connect(
    client: &TlsClient,
    addr: SocketAddr,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let cfg = client.config(&[alpn], rustls::DEFAULT_VERSIONS);
    TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn h1_conn(client: &TlsClient, addr: SocketAddr) -> Result<H1, String> {
    let tls = tls_connect(client, addr, b"http/1.1").await?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(tx)
}

async fn h2_conn(client: &TlsClient, addr: SocketAddr) -> Result<H2, String> {
    let tls = tls_connect(client, addr, b"h2").await?;
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(tx)
}

async fn status_of(
    fut: impl std::future::Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
) -> Result<u16, String> {
    let resp = tokio::time::timeout(STEP, fut)
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

async fn h1_send(tx: &mut H1, req: Request<Full<Bytes>>) -> Result<u16, String> {
    tx.ready().await.map_err(|e| e.to_string())?;
    status_of(tx.send_request(req)).await
}

async fn h2_send(tx: &mut H2, req: Request<Full<Bytes>>) -> Result<u16, String> {
    tx.ready().await.map_err(|e| e.to_string())?;
    status_of(tx.send_request(req)).await
}

// ---------------------------------------------------------------- tests

/// (a) 50 reloads, each with a new certificate and a changed config, under continuous load over
/// keep-alive HTTP/1.1, fresh connections and HTTP/2: not one request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_reloads_under_load_fail_no_request() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let site = Site::new("ops-reload");
    let a = Backend::start().await;
    let b = Backend::start().await;
    let mut serial = site.write_cert(1000);
    site.write_config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        &service_toml("iris", "key", &[&a], ""),
    );
    let gw = Gw::start(site.load()).await;
    let token = site.admin_token();
    let key = gw.keys("iris").0;
    let client = site.pki.client();
    let addr = gw.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let kinds = ["keep-alive h1", "fresh h1", "h2"];
    let tallies: Vec<Arc<Tally>> = kinds.iter().map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    // Two keep-alive HTTP/1.1 clients: one connection each for the whole run.
    for _ in 0..2 {
        let (client, key, stop, t) = (
            client.clone(),
            key.clone(),
            stop.clone(),
            tallies[0].clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tx = match h1_conn(&client, addr).await {
                Ok(tx) => tx,
                Err(e) => return t.record("connect", Err(e)),
            };
            while !stop.load(Ordering::Relaxed) {
                t.record(
                    "keep-alive",
                    h1_send(&mut tx, score_request(&key, false)).await,
                );
            }
        }));
    }
    // Two clients that open a fresh connection (full TLS handshake) per request.
    for _ in 0..2 {
        let (client, key, stop, t) = (
            client.clone(),
            key.clone(),
            stop.clone(),
            tallies[1].clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = match h1_conn(&client, addr).await {
                    Ok(mut tx) => h1_send(&mut tx, score_request(&key, false)).await,
                    Err(e) => Err(format!("connect: {e}")),
                };
                t.record("fresh", r);
            }
        }));
    }
    // One HTTP/2 connection carrying three concurrent request loops.
    let h2 = h2_conn(&client, addr).await.expect("h2 connection");
    for _ in 0..3 {
        let (mut tx, key, stop, t) = (h2.clone(), key.clone(), stop.clone(), tallies[2].clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                t.record("h2", h2_send(&mut tx, score_request(&key, true)).await);
            }
        }));
    }

    // Let the load settle, then reload 50 times.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reloads = 50;
    let mut extra_on = false;
    for i in 0..reloads {
        serial = site.write_cert(1001 + i as u64);
        extra_on = !extra_on;
        let backends: Vec<&Backend> = match i % 3 {
            0 => vec![&b],
            1 => vec![&a, &b],
            _ => vec![&a],
        };
        let mut services = service_toml("iris", "key", &backends, "");
        if extra_on {
            services.push_str(&service_toml("extra", "none", &[&b], ""));
        }
        site.write_config("127.0.0.1:0", "127.0.0.1:0", &services);
        let (status, report) = reload(&gw, &token).await;
        assert_eq!(status, 200, "reload {i}: {report}");
        let changed = report["changed"].to_string();
        assert!(changed.contains("tls.certificates"), "reload {i}: {report}");
        assert!(changed.contains("service.extra"), "reload {i}: {report}");
        assert_eq!(report["restartRequired"], serde_json::json!([]));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(STEP, t)
            .await
            .expect("load task ends")
            .unwrap();
    }

    let mut total = 0;
    let mut failed = 0;
    for (kind, t) in kinds.iter().zip(&tallies) {
        let ok = t.ok.load(Ordering::Relaxed);
        let f = t.failed.load(Ordering::Relaxed);
        eprintln!("reload under load: {kind}: {ok} ok, {f} failed");
        total += ok + f;
        failed += f;
        assert!(ok > 20, "{kind}: too little load to mean anything ({ok})");
    }
    let m = metrics(&gw).await;
    let ok_reloads = value(&m, "scoregate_reloads_total", &[("result", "ok")]);
    eprintln!(
        "reload under load: {total} requests, {reloads} reloads ({ok_reloads} counted ok), {failed} failed, in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for t in &tallies {
        for e in t.errors.lock().unwrap().iter() {
            eprintln!("  failure: {e}");
        }
    }
    assert_eq!(failed, 0, "requests failed during reloads");
    assert_eq!(ok_reloads, reloads as f64);
    assert!(
        a.scored() > 0 && b.scored() > 0,
        "both backend lists served"
    );

    // After the last reload: a new handshake sees the last certificate, the service set is the
    // last one written, and the established HTTP/2 connection still works.
    assert_eq!(presented_serial(&client, addr, "localhost").await, serial);
    let (_, list) = admin(gw.admin, &token, "GET", "/v1/services").await;
    assert_eq!(list.contains("\"extra\""), extra_on, "{list}");
    let mut tx = h2;
    assert_eq!(h2_send(&mut tx, score_request(&key, true)).await, Ok(200));
    gw.stop().await;
}

/// (b) A broken certificate file, a key that does not match, and an invalid config each leave
/// the gateway exactly as it was; the admin API says why with 400, and the metric counts them.
/// Every file in a folder, by name, with its bytes.
fn files_in(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Regression (issue 10): a reload that changes a preset key and the signing algorithm, and then
/// fails — in its build (a bad JWKS file) or when it persists (the state file cannot be
/// replaced) — leaves nothing changed: the old key works, the new one is refused, tokens keep
/// their `kid`, and the state dir's files are byte for byte what they were. (Before, the key
/// store was written and its cells swapped before the rest of the build could fail.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_fails_after_a_preset_change_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let site = Site::new("ops-atomic-reload");
    let backend = Backend::start().await;
    site.write_cert(3);
    let (p1, p2) = ("a".repeat(40), "b".repeat(40));
    let cfg = |preset: &str, alg: &str, extra: &str| {
        format!(
            "[tokens]\nalgorithm = \"{alg}\"\n{extra}\n{}{}",
            service_toml(
                "iris",
                "key",
                &[&backend],
                &format!("primary_key = \"{preset}\"")
            ),
            service_toml("tok", "token", &[&backend], "")
        )
    };
    site.write_config("127.0.0.1:0", "127.0.0.1:0", &cfg(&p1, "ES256", ""));
    let gw = Gw::start(site.load()).await;
    let admin_token = site.admin_token();
    let issue = || async {
        let (status, body) = admin(gw.admin, &admin_token, "POST", "/v1/services/tok/token").await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["accessToken"].as_str().unwrap().to_string()
    };
    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    let old_token = issue().await;
    let state_dir = site.dir.join("state");
    let files_before = files_in(&state_dir);
    let client = site.pki.client();
    let unchanged = |what: &'static str| {
        let (client, gw, p1, p2, old_token, files_before, state_dir) = (
            &client,
            &gw,
            &p1,
            &p2,
            &old_token,
            &files_before,
            &state_dir,
        );
        let issue = &issue;
        async move {
            let mut c = client.h1(gw.addr).await;
            assert_eq!(
                c.score("iris", p1, BODY).await.status,
                200,
                "{what}: old key"
            );
            assert_eq!(
                c.score("iris", p2, BODY).await.status,
                401,
                "{what}: new key"
            );
            assert_eq!(c.score("tok", old_token, BODY).await.status, 200, "{what}");
            assert_eq!(kid(&issue().await), kid(old_token), "{what}: signing key");
            assert!(
                files_in(state_dir) == *files_before,
                "{what}: state files changed"
            );
        }
    };

    // 1. The build fails: a JWKS file that is not one.
    std::fs::write(site.dir.join("idp.json"), "not a JWKS").unwrap();
    let issuer = "[[tokens.trusted_issuers]]\nissuer = \"https://idp.example.test/\"\naudience = \"api://x\"\nalgorithm = \"RS256\"\njwks = \"idp.json\"\n";
    site.write_config("127.0.0.1:0", "127.0.0.1:0", &cfg(&p2, "RS256", issuer));
    let (status, body) = reload(&gw, &admin_token).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "InvalidConfig");
    unchanged("a failed build").await;

    // 2. The persist step fails: the state file cannot be replaced.
    site.write_config("127.0.0.1:0", "127.0.0.1:0", &cfg(&p2, "RS256", ""));
    let state_file = state_dir.join("state.json");
    let kept = site.dir.join("state.json.kept");
    std::fs::rename(&state_file, &kept).unwrap();
    std::fs::create_dir(&state_file).unwrap();
    let (status, body) = reload(&gw, &admin_token).await;
    std::fs::remove_dir(&state_file).unwrap();
    std::fs::rename(&kept, &state_file).unwrap();
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "ReloadFailed");
    unchanged("a failed write").await;

    // 3. The same reload, now able to write, applies all of it.
    let (status, body) = reload(&gw, &admin_token).await;
    assert_eq!(status, 200, "{body}");
    let mut c = client.h1(gw.addr).await;
    assert_eq!(c.score("iris", &p2, BODY).await.status, 200);
    assert_eq!(c.score("iris", &p1, BODY).await.status, 401);
    assert_eq!(
        c.score("tok", &old_token, BODY).await.status,
        200,
        "old tokens still verify"
    );
    assert_ne!(
        kid(&issue().await),
        kid(&old_token),
        "a new algorithm mints a new kid"
    );
    assert!(files_in(&state_dir) != files_before);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reloads_keep_the_old_state_and_are_counted() {
    let _serial = SERIAL.lock().await;
    let site = Site::new("ops-badreload");
    let backend = Backend::start().await;
    let serial = site.write_cert(7);
    let good = service_toml("iris", "key", &[&backend], "");
    site.write_config("127.0.0.1:0", "127.0.0.1:0", &good);
    let gw = Gw::start(site.load()).await;
    let token = site.admin_token();
    let client = site.pki.client();
    let (key, _) = gw.keys("iris");
    let cert_pem = std::fs::read(site.dir.join("tls/cert.pem")).unwrap();
    let key_pem = std::fs::read(site.dir.join("tls/key.pem")).unwrap();
    let mut c = client.h1(gw.addr).await;

    let assert_unchanged = |what: &'static str| {
        let gw = &gw;
        let client = &client;
        let serial = &serial;
        let token = &token;
        async move {
            assert_eq!(
                &presented_serial(client, gw.addr, "localhost").await,
                serial,
                "{what}: the old certificate stays"
            );
            let (_, list) = admin(gw.admin, token, "GET", "/v1/services").await;
            let list: serde_json::Value = serde_json::from_str(&list).unwrap();
            let names: Vec<&str> = list
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap())
                .collect();
            assert_eq!(names, ["iris"], "{what}: the old services stay");
        }
    };

    // 1. A certificate file that is not PEM.
    std::fs::write(site.dir.join("tls/cert.pem"), "not a certificate\n").unwrap();
    let (status, body) = reload(&gw, &token).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "InvalidConfig");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("cert.pem"), "{msg}");
    assert_unchanged("broken certificate").await;
    assert_eq!(c.score("iris", &key, BODY).await.status, 200);
    std::fs::write(site.dir.join("tls/cert.pem"), &cert_pem).unwrap();

    // 2. A key that belongs to another certificate.
    let other = site.pki.ca.leaf(&["localhost"], &LeafOptions::default());
    std::fs::write(site.dir.join("tls/key.pem"), &other.key_pem).unwrap();
    let (status, body) = reload(&gw, &token).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "InvalidConfig");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("does not match"), "{msg}");
    assert_unchanged("mismatched key").await;
    std::fs::write(site.dir.join("tls/key.pem"), &key_pem).unwrap();

    // 3. An invalid config that would also add a service and change the certificate: nothing
    //    of it applies.
    site.write_cert(8);
    let bad = format!(
        "{good}{}[limits]\nmax_conections = 5\n",
        service_toml("extra", "none", &[&backend], "")
    );
    site.write_config("127.0.0.1:0", "127.0.0.1:0", &bad);
    let (status, body) = reload(&gw, &token).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "InvalidConfig");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("max_conections") && msg.contains("scoregate.toml"),
        "{msg}"
    );
    assert_unchanged("invalid config").await;
    // A semantic error (not TOML syntax) is refused the same way.
    site.write_config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        &format!("{good}[[service]]\nname = \"Bad Name\"\nbackends = [\"ftp://x\"]\n"),
    );
    let (status, body) = reload(&gw, &token).await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("service[1].name") && msg.contains("service[1].backends[0]"),
        "{msg}"
    );
    assert_unchanged("invalid service").await;

    // The established connection and the keys carried on through all of it.
    assert_eq!(c.score("iris", &key, BODY).await.status, 200);
    let m = metrics(&gw).await;
    assert_eq!(
        value(&m, "scoregate_reloads_total", &[("result", "error")]),
        4.0
    );
    assert_eq!(
        value(&m, "scoregate_reloads_total", &[("result", "ok")]),
        0.0
    );

    // Fixed files: the reload goes through, with the new certificate and service.
    let new_serial = site.write_cert(9);
    site.write_config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        &format!("{good}{}", service_toml("extra", "none", &[&backend], "")),
    );
    let (status, body) = reload(&gw, &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        presented_serial(&client, gw.addr, "localhost").await,
        new_serial
    );
    assert_eq!(
        c.score("iris", &key, BODY).await.status,
        200,
        "keys survive"
    );

    // Start-time settings: reported, kept; live ones applied.
    site.write_config(
        "127.0.0.2:0",
        "127.0.0.1:0",
        &format!(
            "[server]\ndrain_timeout = \"7s\"\nwatch = true\n[limits]\nmax_in_flight = 77\nidle_timeout = \"5s\"\n{good}"
        ),
    );
    let (status, body) = reload(&gw, &token).await;
    assert_eq!(status, 200, "{body}");
    let restart: Vec<String> = serde_json::from_value(body["restartRequired"].clone()).unwrap();
    assert_eq!(
        restart,
        ["listen.address", "server.watch", "limits"],
        "{body}"
    );
    let changed = body["changed"].to_string();
    for c in [
        "service.extra: removed",
        "limits.max_in_flight",
        "server.drain_timeout",
    ] {
        assert!(changed.contains(c), "{c} in {changed}");
    }
    let live = gw.server.shared.snapshot();
    assert_eq!(live.config.limits.max_in_flight, 77);
    assert_eq!(
        live.config.limits.idle_timeout,
        scoregate::config::DEFAULT_IDLE_TIMEOUT
    );
    assert_eq!(live.config.server.drain_timeout, Duration::from_secs(7));
    assert!(!live.config.server.watch);
    assert_eq!(
        c.score("iris", &key, BODY).await.status,
        200,
        "still on the old address"
    );
    let m = metrics(&gw).await;
    assert_eq!(
        value(&m, "scoregate_reloads_total", &[("result", "ok")]),
        2.0
    );
    gw.stop().await;
}

/// The rustls config (and its ticket keys) outlives reloads: a client resumes its session after
/// the certificate changed, while a client without a ticket gets the new certificate, and an
/// established connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_resume_across_a_certificate_reload() {
    let _serial = SERIAL.lock().await;
    let site = Site::new("ops-resume");
    let backend = Backend::start().await;
    let old = site.write_cert(21);
    site.write_config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        &service_toml("iris", "none", &[&backend], ""),
    );
    let gw = Gw::start(site.load()).await;
    let client = site.pki.client();
    let mut next_serial = 22;
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let cfg = client.config(&[b"http/1.1"], versions);
        // First connection: full handshake; one request so the client reads its ticket.
        let tls = client.connect_with(gw.addr, "localhost", cfg.clone()).await;
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        let mut established = Conn::h1(tls).await;
        assert_eq!(
            established
                .send("POST", "/api/v1/service/iris/score", &[], BODY)
                .await
                .status,
            200
        );
        // Reload with a new certificate.
        next_serial += 1;
        let new = site.write_cert(next_serial);
        assert_ne!(new, old);
        let (status, body) = reload(&gw, &site.admin_token()).await;
        assert_eq!(status, 200, "{body}");
        // The same client resumes; a new client gets the new certificate.
        let again = client.connect_with(gw.addr, "localhost", cfg.clone()).await;
        assert_eq!(
            again.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{versions:?}: resumption across the reload"
        );
        assert_eq!(presented_serial(&client, gw.addr, "localhost").await, new);
        // The connection made before the reload carries on.
        assert_eq!(
            established
                .send("POST", "/api/v1/service/iris/score", &[], BODY)
                .await
                .status,
            200
        );
    }
    gw.stop().await;
}

/// (d) `/metrics` is well-formed Prometheus text, has every metric the operations issue lists,
/// and its counters move with requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_and_count_requests_and_keys() {
    let _serial = SERIAL.lock().await;
    let site = Site::new("ops-metrics");
    let backend = Backend::start().await;
    site.write_cert(31);
    site.write_config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        &service_toml("iris", "key", &[&backend], ""),
    );
    let gw = Gw::start(site.load()).await;
    let (primary, secondary) = gw.keys("iris");
    let before = metrics(&gw).await;
    for family in [
        "scoregate_requests_total",
        "scoregate_request_duration_seconds_bucket",
        "scoregate_backend_duration_seconds_bucket",
        "scoregate_requests_in_flight",
        "scoregate_connections_open",
        "scoregate_tls_handshakes_total",
        "scoregate_tls_handshake_failures_total",
        "scoregate_connections_refused_total",
        "scoregate_connection_timeouts_total",
        "scoregate_certificate_expiry_timestamp_seconds",
        "scoregate_reloads_total",
        "scoregate_auth_failures_total",
        "scoregate_key_used_total",
        "scoregate_build_info",
    ] {
        assert!(
            before.iter().any(|s| s.name == family),
            "{family} missing from /metrics"
        );
    }
    let expiry = value(
        &before,
        "scoregate_certificate_expiry_timestamp_seconds",
        &[("cname", "localhost")],
    );
    assert!(expiry > 1.0e9, "expiry is a Unix time: {expiry}");
    assert_eq!(
        value(
            &before,
            "scoregate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    let mut c = site.pki.client().h1(gw.addr).await;
    for _ in 0..3 {
        assert_eq!(c.score("iris", &primary, BODY).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(c.score("iris", &secondary, BODY).await.status, 200);
    }
    assert_eq!(c.score("iris", &"x".repeat(43), BODY).await.status, 401);
    assert_eq!(c.score("nosuchservice", &primary, BODY).await.status, 404);
    let mut h2 = site.pki.client().h2(gw.addr).await;
    assert_eq!(h2.score("iris", &primary, BODY).await.status, 200);

    let after = metrics(&gw).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let iris = ("service", "iris");
    assert_eq!(
        delta("scoregate_requests_total", &[iris, ("class", "2xx")]),
        6.0
    );
    assert_eq!(
        delta("scoregate_requests_total", &[iris, ("class", "4xx")]),
        1.0
    );
    assert_eq!(
        delta("scoregate_key_used_total", &[iris, ("key", "primary")]),
        4.0
    );
    assert_eq!(
        delta("scoregate_key_used_total", &[iris, ("key", "secondary")]),
        2.0
    );
    assert_eq!(
        delta(
            "scoregate_auth_failures_total",
            &[iris, ("reason", "wrong_key")]
        ),
        1.0
    );
    assert_eq!(
        delta("scoregate_request_duration_seconds_count", &[iris]),
        7.0
    );
    assert_eq!(
        delta("scoregate_backend_duration_seconds_count", &[iris]),
        6.0
    );
    assert_eq!(
        delta("scoregate_unrouted_requests_total", &[("class", "4xx")]),
        1.0
    );
    assert!(delta("scoregate_tls_handshakes_total", &[]) >= 2.0);
    assert_eq!(value(&after, "scoregate_requests_in_flight", &[]), 0.0);
    assert!(
        !after
            .iter()
            .any(|s| s.labels.get("service").is_some_and(|v| v != "iris")),
        "the service label only takes configured names"
    );
    gw.stop().await;
}

/// (e) Watch mode follows a Kubernetes Secret update: `tls.crt -> ..data/tls.crt`, and `..data`
/// swapped atomically to a new timestamped directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_mode_follows_a_kubernetes_symlink_swap() {
    let _serial = SERIAL.lock().await;
    use std::os::unix::fs::symlink;
    let site = Site::new("ops-watch");
    let backend = Backend::start().await;
    let secret = site.dir.join("secret");
    let write_version = |name: &str, serial: u64| -> String {
        let d = secret.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let leaf = site.pki.ca.leaf(
            &["localhost", "127.0.0.1"],
            &LeafOptions {
                serial: Some(serial),
                ..LeafOptions::default()
            },
        );
        std::fs::write(d.join("tls.crt"), &leaf.chain_pem).unwrap();
        std::fs::write(d.join("tls.key"), &leaf.key_pem).unwrap();
        leaf_serial(&leaf)
    };
    let first = write_version("..2026_01_01_00_00_00.000000001", 41);
    symlink("..2026_01_01_00_00_00.000000001", secret.join("..data")).unwrap();
    symlink("..data/tls.crt", secret.join("tls.crt")).unwrap();
    symlink("..data/tls.key", secret.join("tls.key")).unwrap();
    let config = format!(
        r#"
[listen]
address = "127.0.0.1:0"
[[tls.certificates]]
cname = "localhost"
cert = "secret/tls.crt"
key = "secret/tls.key"
[admin]
address = "127.0.0.1:0"
token_file = "admin-token"
[state]
dir = "state"
[server]
watch = true
{}"#,
        service_toml("iris", "none", &[&backend], "")
    );
    std::fs::write(site.config_path(), config).unwrap();
    let gw = Gw::start(site.load()).await;
    let client = site.pki.client();
    assert_eq!(presented_serial(&client, gw.addr, "localhost").await, first);
    let mut c = client.h1(gw.addr).await;

    // What the kubelet does: write the new version, point a new symlink at it, rename it over
    // `..data` (atomic), remove the old version.
    let second = write_version("..2026_01_01_00_05_00.000000002", 42);
    symlink("..2026_01_01_00_05_00.000000002", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    std::fs::remove_dir_all(secret.join("..2026_01_01_00_00_00.000000001")).unwrap();
    let swapped = Instant::now();

    let deadline = swapped + Duration::from_secs(10);
    loop {
        if presented_serial(&client, gw.addr, "localhost").await == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watch mode did not pick up the swap"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "watch mode: new certificate served {:.1}s after the swap",
        swapped.elapsed().as_secs_f64()
    );
    assert_eq!(
        c.send("POST", "/api/v1/service/iris/score", &[], BODY)
            .await
            .status,
        200
    );
    let m = metrics(&gw).await;
    assert_eq!(
        value(&m, "scoregate_reloads_total", &[("result", "ok")]),
        1.0
    );
    gw.stop().await;
}

// ---------------------------------------------------------------- the real binary

/// A loopback port that was free a moment ago (for configs of the binary, which must name one).
fn reserve_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Running {
    child: std::process::Child,
    stderr: Arc<Mutex<String>>,
    admin: SocketAddr,
}

impl Running {
    /// Starts `scoregate serve --config FILE` and waits until `/readyz` answers 200.
    async fn start(config: &Path, admin: SocketAddr) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_scoregate"))
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
        std::thread::spawn(move || {
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
        let mut r = Running {
            child,
            stderr,
            admin,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if r.readyz().await == Some(200) {
                return r;
            }
            if let Some(status) = r.child.try_wait().unwrap() {
                panic!("scoregate exited ({status}): {}", r.stderr());
            }
            assert!(Instant::now() < deadline, "not ready: {}", r.stderr());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// `/readyz` status, or `None` when the admin listener does not answer.
    async fn readyz(&self) -> Option<u16> {
        let client = AdminClient::for_addr(self.admin, None).with_timeout(Duration::from_secs(2));
        let r = client.send(Method::GET, "/readyz", Bytes::new()).await;
        r.ok().map(|r| r.status.as_u16())
    }

    /// Waits for the process to exit; its status and how long that took.
    async fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s, t.elapsed());
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                panic!("scoregate did not exit within {limit:?}: {}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PRESET_KEY: &str = "opsTestPrimaryKey0123456789abcdefghijklmnopq";

/// A site for the binary with one key-auth service `iris`; `top` is added to the config's top
/// level.
fn binary_site(
    tag: &str,
    backend: &Backend,
    drain: &str,
    top: &str,
) -> (Site, SocketAddr, SocketAddr) {
    let site = Site::new(tag);
    site.write_cert(51);
    let addr: SocketAddr = format!("127.0.0.1:{}", reserve_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", reserve_port()).parse().unwrap();
    site.write_config(
        &addr.to_string(),
        &admin.to_string(),
        &format!(
            "{top}[server]\ndrain_timeout = \"{drain}\"\n[log]\nformat = \"json\"\n{}",
            service_toml(
                "iris",
                "key",
                &[backend],
                &format!("primary_key = \"{PRESET_KEY}\"")
            )
        ),
    );
    (site, addr, admin)
}

/// A backend whose `/score` takes `delay`; anything else answers at once.
async fn slow_backend(delay: Duration) -> Backend {
    Backend::with(move |seen| {
        let mut r = Reply::ok(r#"{"ok":true}"#);
        if seen.uri.starts_with("/score") {
            r.delay = delay;
        }
        r
    })
    .await
}

/// (c) SIGTERM while slow requests are in flight: `/readyz` turns 503, new connections are
/// refused, the requests in flight (HTTP/1.1 and HTTP/2) complete with 200, idle keep-alive
/// connections do not hold the drain up, and the process exits 0 as soon as the last one is done,
/// long before `drain_timeout`. The JSON access log has a line per request and no credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let _serial = SERIAL.lock().await;
    let backend = slow_backend(Duration::from_secs(2)).await;
    let (site, addr, admin_addr) = binary_site("ops-sigterm", &backend, "20s", "");
    let mut gw = Running::start(&site.config_path(), admin_addr).await;
    let client = site.pki.client();

    // An idle keep-alive HTTP/1.1 connection and an idle HTTP/2 connection, both used once.
    let swagger = |h2: bool| {
        let b = if h2 {
            Request::get("https://localhost/api/v1/service/iris/swagger.json")
        } else {
            Request::get("/api/v1/service/iris/swagger.json").header("host", "localhost")
        };
        b.header("authorization", format!("Bearer {PRESET_KEY}"))
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    let mut idle_h1 = h1_conn(&client, addr).await.unwrap();
    assert_eq!(h1_send(&mut idle_h1, swagger(false)).await, Ok(200));
    let mut idle_h2 = h2_conn(&client, addr).await.unwrap();
    assert_eq!(h2_send(&mut idle_h2, swagger(true)).await, Ok(200));

    // Three slow requests: two over HTTP/1.1, one over HTTP/2.
    let mut in_flight = Vec::new();
    for i in 0..3 {
        let client = client.clone();
        in_flight.push(tokio::spawn(async move {
            if i == 2 {
                let mut tx = h2_conn(&client, addr).await?;
                h2_send(&mut tx, score_request(PRESET_KEY, true)).await
            } else {
                let mut tx = h1_conn(&client, addr).await?;
                h1_send(&mut tx, score_request(PRESET_KEY, false)).await
            }
        }));
    }
    let deadline = Instant::now() + STEP;
    while backend.scored() < 3 {
        assert!(
            Instant::now() < deadline,
            "requests did not reach the backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let term = Instant::now();
    gw.signal("-TERM");
    // Not ready, while the admin listener still answers.
    loop {
        match gw.readyz().await {
            Some(503) => break,
            Some(200) => {}
            other => panic!("/readyz during the drain: {other:?}"),
        }
        assert!(
            term.elapsed() < Duration::from_secs(2),
            "/readyz stayed 200"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // New connections are refused.
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {}
        }
        assert!(term.elapsed() < Duration::from_secs(2), "still accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused_after = term.elapsed();
    assert_eq!(
        gw.readyz().await,
        Some(503),
        "admin stays up during the drain"
    );
    // The idle connections are closed by the drain.
    assert!(
        h1_send(&mut idle_h1, swagger(false)).await.is_err(),
        "an idle HTTP/1.1 keep-alive connection is closed"
    );
    assert!(
        h2_send(&mut idle_h2, swagger(true)).await.is_err(),
        "an idle HTTP/2 connection got GOAWAY"
    );
    // The requests in flight finish.
    for t in in_flight {
        assert_eq!(t.await.unwrap(), Ok(200));
    }
    let (status, _) = gw.wait_exit(Duration::from_secs(15)).await;
    let exited_after = term.elapsed();
    eprintln!(
        "SIGTERM drain: not accepting after {:.2}s, exit {status} after {:.2}s (drain_timeout 20s, requests 2s)",
        refused_after.as_secs_f64(),
        exited_after.as_secs_f64()
    );
    assert_eq!(status.code(), Some(0), "{}", gw.stderr());
    assert!(
        exited_after < Duration::from_secs(8),
        "exits when the last request is done, not at the drain deadline: {exited_after:?}"
    );

    // The access log: JSON, one line per request, nothing secret.
    let log = gw.stderr();
    assert!(!log.contains(PRESET_KEY), "a credential reached the log");
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    assert_eq!(access.len(), 5, "{log}");
    for v in &access {
        assert_eq!(v["status"], 200, "{v}");
        assert_eq!(v["service"], "iris");
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(v["auth"], "key:primary", "{v}");
        assert_eq!(v["request_id"].as_str().unwrap().len(), 36, "{v}");
        assert!(v["latency_us"].as_u64().is_some(), "{v}");
        assert!(
            v["backend"]
                .as_str()
                .unwrap()
                .starts_with("http://127.0.0.1:")
        );
        assert!(
            v.get("bytes_in").is_some() && v.get("bytes_out").is_some(),
            "{v}"
        );
    }
    let slow = access
        .iter()
        .filter(|v| v["latency_us"].as_u64().unwrap() >= 1_900_000)
        .count();
    assert_eq!(slow, 3, "the three drained requests were logged");
}

/// A second SIGTERM during the drain exits at once (non-zero: requests were cut off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let _serial = SERIAL.lock().await;
    let backend = slow_backend(Duration::from_secs(10)).await;
    let (site, addr, admin_addr) = binary_site("ops-sigterm2", &backend, "30s", "");
    let mut gw = Running::start(&site.config_path(), admin_addr).await;
    let client = site.pki.client();
    let req = tokio::spawn(async move {
        let mut tx = h1_conn(&client, addr).await?;
        h1_send(&mut tx, score_request(PRESET_KEY, false)).await
    });
    let deadline = Instant::now() + STEP;
    while backend.scored() < 1 {
        assert!(
            Instant::now() < deadline,
            "request did not reach the backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.signal("-TERM");
    let t = Instant::now();
    while gw.readyz().await != Some(503) {
        assert!(t.elapsed() < Duration::from_secs(2), "not draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.signal("-INT");
    let (status, took) = gw.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(
        status.code(),
        Some(scoregate::signals::FORCED_EXIT_CODE),
        "{}",
        gw.stderr()
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(req.await.unwrap().is_err(), "the cut-off request fails");
}

/// The gateway process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    scoregate::bench::rss_kb(pid).expect("the gateway's VmRSS")
}

/// The binary's allocator gives memory that connections free back to the kernel (README, "Memory
/// and the allocator"): 500 keep-alive connections, each after one scoring request, grow the RSS
/// by megabytes; once they have closed, it falls back most of the way within seconds. glibc's
/// `malloc` keeps that heap in the process, where the RSS stays at its peak. One worker, so that
/// the figures do not depend on the machine's core count (an arena and a thread cache per worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "jemalloc"),
    ignore = "the system allocator keeps freed heap"
)]
async fn memory_freed_by_closed_connections_goes_back_to_the_kernel() {
    const CONNS: usize = 500;
    let _serial = SERIAL.lock().await;
    let backend = Backend::start().await;
    let one_worker = "[runtime]\nworker_threads = 1\n";
    let (site, addr, admin_addr) = binary_site("ops-memory", &backend, "5s", one_worker);
    let gw = Running::start(&site.config_path(), admin_addr).await;
    let pid = gw.child.id();
    let client = site.pki.client();
    // One request first, so that what the first request sets up once is not counted.
    let mut warm = client.h1(addr).await;
    assert_eq!(warm.score("iris", PRESET_KEY, BODY).await.status, 200);
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);

    let mut conns = Vec::with_capacity(CONNS);
    for chunk in 0..CONNS / 50 {
        let opened = futures_util::future::join_all((0..50).map(|_| async {
            let mut c = client.h1(addr).await;
            let status = c.score("iris", PRESET_KEY, BODY).await.status;
            (c, status)
        }))
        .await;
        for (c, status) in opened {
            assert_eq!(status, 200, "chunk {chunk}");
            conns.push(c);
        }
    }
    let open = rss_kib(pid);
    // Even parked (idle for a second), a connection holds ~10 KiB: 500 hold several MiB.
    assert!(
        open >= before + 4 * 1024,
        "{CONNS} connections grew the RSS only {} KiB ({before} → {open})",
        open.saturating_sub(before)
    );
    drop(conns);

    // Back below half of what they added, within 20 s (about 2 s here).
    let limit = before + (open - before) / 2;
    let what = format!(
        "RSS below {limit} KiB after the connections closed (before them {before}, with them \
         {open})"
    );
    fleet::eventually(&what, Duration::from_secs(20), async || {
        rss_kib(pid) <= limit
    })
    .await;
}

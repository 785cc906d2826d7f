//! End to end against the real Azure ML inference server: scoregate in front of `azmlinfsrv`
//! (PyPI `azureml-inference-server-http`) serving `tests/azureml/score.py`, called by the Python
//! client of Azure ML's docs (`tests/azureml/client.py`) and by the harness's Rust client.
//!
//! Needs `SCOREGATE_AZMLINFSRV`, the path of an `azmlinfsrv` executable in a venv that also has
//! `requests` (`scripts/azureml-venv.sh` makes one and prints it; `scripts/test.sh` sets it). Without
//! it the test is skipped, except under `CI`, where it fails.
// Integration tests read fixture files and time real sockets with the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use scoregate::config::AuthMode;
use scoregate_testkit::*;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long azmlinfsrv may take to answer its liveness route after start (it imports Flask,
/// gunicorn and the entry script first: about 2 s here).
const BOOT: Duration = Duration::from_secs(60);
/// Upper bound for the Python client (two requests, one interpreter start).
const CLIENT: Duration = Duration::from_secs(60);
/// Upper bound for everything after azmlinfsrv is up.
const CHECKS: Duration = Duration::from_secs(120);

const SETOSA: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_ml_client_through_scoregate_to_the_real_inference_server() {
    let Some(exe) = std::env::var_os("SCOREGATE_AZMLINFSRV").filter(|v| !v.is_empty()) else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "SCOREGATE_AZMLINFSRV is not set: CI must run the Azure ML end-to-end test. \
                 Set it to the output of scripts/azureml-venv.sh (scripts/test.sh does)."
            );
        }
        eprintln!(
            "SKIPPED azure_ml_client_through_scoregate_to_the_real_inference_server: set \
             SCOREGATE_AZMLINFSRV=\"$(scripts/azureml-venv.sh)\" to run it"
        );
        return;
    };
    let exe = std::path::absolute(PathBuf::from(exe)).unwrap();
    assert!(
        exe.is_file(),
        "SCOREGATE_AZMLINFSRV={} is not a file: run scripts/azureml-venv.sh",
        exe.display()
    );
    let python = exe.parent().unwrap().join("python");
    assert!(
        python.is_file(),
        "no python beside {} (expected a venv's bin/)",
        exe.display()
    );

    let dir = tempdir("azureml");
    let srv = AzmlInfSrv::start(&exe, &dir).await;
    let log = srv.log.clone();
    let port = srv.port;
    let checks = tokio::spawn(async move {
        tokio::time::timeout(CHECKS, checks(port, python, dir))
            .await
            .expect("the checks timed out")
    })
    .await;
    let stopped = srv.stop().await;
    if let Err(e) = checks {
        let msg = match e.try_into_panic() {
            Ok(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(non-string panic)".into()),
            Err(e) => e.to_string(),
        };
        panic!("{msg}\n{}", tail(&log));
    }
    assert!(
        stopped,
        "azmlinfsrv did not stop on SIGTERM\n{}",
        tail(&log)
    );
}

async fn checks(port: u16, python: PathBuf, dir: PathBuf) {
    let pki = Pki::new();
    let backend = format!("http://127.0.0.1:{port}");
    let gw = Gw::start(config(
        &pki,
        vec![service("iris", AuthMode::Key, &[backend])],
    ))
    .await;
    let (primary, secondary) = gw.keys("iris");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pki.ca.cert_pem()).unwrap();
    let log = dir.join("azmlinfsrv.log");

    // a. The Python client from Azure ML's docs (urllib, then requests), unchanged but for the
    //    CA it trusts, against the scoring URI.
    let uri = format!(
        "https://localhost:{}/api/v1/service/iris/score",
        gw.addr.port()
    );
    let mut cmd = Command::new(&python);
    cmd.arg("tests/azureml/client.py")
        .arg(&uri)
        .arg(&primary)
        .arg(&ca)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(CLIENT, cmd.output())
        .await
        .expect("client.py timed out")
        .expect("client.py runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("client.py: {}\n{stdout}{stderr}", out.status);
    assert!(
        out.status.success(),
        "client.py failed ({}):\n{stdout}{stderr}",
        out.status
    );
    assert!(
        stdout.contains("setosa") && stdout.contains("virginica"),
        "{stdout}"
    );
    assert!(stdout.contains("urllib: 200"), "{stdout}");
    assert!(
        stdout.contains("requests: 200"),
        "requests is in the venv: {stdout}"
    );

    // b. The other key works too; a wrong key is refused and never reaches azmlinfsrv. One
    //    worker serves requests in order, so once the later good request is in its log, a
    //    forwarded wrong-key request would be there too.
    let client = pki.client();
    let mut c = client.h1(gw.addr).await;
    let before = score_hits(&log);
    let wrong = format!("Bearer {}", "x".repeat(43));
    let r = c
        .send(
            "POST",
            "/api/v1/service/iris/score",
            &[
                ("authorization", &wrong),
                ("content-type", "application/json"),
            ],
            SETOSA,
        )
        .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(r.code(), "Unauthorized");
    assert_eq!(r.header("content-type"), "application/json");
    // Same client connection: the gateway keeps it although azmlinfsrv closes each of its own.
    let r = c.score("iris", &secondary, SETOSA).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["predictions"], serde_json::json!(["setosa"]));
    assert_eq!(r.header("x-ms-server-version"), "azmlinfsrv/1.5.1");
    assert_eq!(r.header("x-ms-run-function-failed"), "False");
    assert!(
        r.headers.get("x-ms-client-request-id").is_none(),
        "no client request id was sent, so none comes back (azmlinfsrv echoes the forwarded x-ms-request-id)"
    );
    assert!(
        r.header("connection").is_empty(),
        "the backend's Connection: close is hop-by-hop: {:?}",
        r.headers
    );
    wait_for(
        || score_hits(&log) > before,
        "the secondary-key request in the log",
    )
    .await;
    assert_eq!(
        score_hits(&log),
        before + 1,
        "only the secondary-key request reached azmlinfsrv"
    );

    // The same over HTTP/2 to the gateway (HTTP/1.1, one connection per request, behind it).
    let mut h2 = client.h2(gw.addr).await;
    for _ in 0..3 {
        let r = h2
            .score("iris", &primary, r#"{"data": [[6.3, 3.3, 6.0, 2.5]]}"#)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.json()["predictions"], serde_json::json!(["virginica"]));
    }

    // c. swagger.json needs the key and is azmlinfsrv's own document, query passed on.
    let auth = format!("Bearer {primary}");
    let r = c
        .send(
            "GET",
            "/api/v1/service/iris/swagger.json?version=3",
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let doc = r.json();
    assert!(
        doc.get("openapi").is_some() || doc.get("swagger").is_some(),
        "{doc}"
    );
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with('3'),
        "?version=3 reached azmlinfsrv: {doc}"
    );
    let r = c
        .send("GET", "/api/v1/service/iris/swagger.json", &[], "")
        .await;
    assert_eq!(r.status, 401);

    // d. run() throws: azmlinfsrv's 500 passes through unchanged, with the gateway's request id.
    let r = c.score("iris", &primary, r#"{"data": [[1,2]]}"#).await;
    assert_eq!(r.status, 500, "{:?}", r.body);
    assert_eq!(r.header("x-ms-run-function-failed"), "True");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap_or("")
            .contains("scoring script"),
        "azmlinfsrv's own body: {:?}",
        r.body
    );
    assert_eq!(r.headers.get_all("x-ms-request-id").iter().count(), 1);
    let rid = r.header("x-ms-request-id");
    assert!(
        rid.len() == 36 && uuid::Uuid::parse_str(rid).is_ok(),
        "the gateway's UUID: {rid:?}"
    );

    // e. The client's request id comes back; the request id is still the gateway's.
    let r = c
        .send(
            "POST",
            "/api/v1/service/iris/score",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("x-ms-client-request-id", "e2e-1"),
            ],
            SETOSA,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-ms-client-request-id"), "e2e-1");
    assert_eq!(
        r.headers.get_all("x-ms-client-request-id").iter().count(),
        1
    );
    assert_eq!(r.headers.get_all("x-ms-request-id").iter().count(), 1);
    let rid = r.header("x-ms-request-id");
    assert!(uuid::Uuid::parse_str(rid).is_ok(), "{rid:?}");

    gw.stop().await;
}

// ---------------------------------------------------------------- azmlinfsrv

/// A running azmlinfsrv (gunicorn: a master and one worker). Dropping it kills both: killing only
/// the master (what `kill_on_drop` does) would orphan the worker, which keeps serving the port
/// until gunicorn's worker timeout.
struct AzmlInfSrv {
    child: Child,
    pid: u32,
    port: u16,
    log: PathBuf,
}

impl AzmlInfSrv {
    async fn start(exe: &Path, dir: &Path) -> AzmlInfSrv {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let log = dir.join("azmlinfsrv.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        // gunicorn 27 opens a control socket under $XDG_RUNTIME_DIR (or ~/.gunicorn): keep it in
        // the temp dir, and off.
        let runtime = dir.join("runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        let child = Command::new(exe)
            .args(["--entry_script", "tests/azureml/score.py"])
            .args(["--port", &port.to_string(), "--worker_count", "1"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("GUNICORN_CMD_ARGS", "--no-control-socket")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        let pid = child.id().unwrap();
        let mut srv = AzmlInfSrv {
            child,
            pid,
            port,
            log,
        };
        // azmlinfsrv binds 0.0.0.0; only loopback traffic is sent to it.
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let t0 = Instant::now();
        loop {
            if let Some(status) = srv.child.try_wait().unwrap() {
                panic!(
                    "azmlinfsrv exited ({status}) before it answered\n{}",
                    tail(&srv.log)
                );
            }
            if get_status(addr, "/").await == Some(200) {
                break;
            }
            if t0.elapsed() > BOOT {
                panic!(
                    "azmlinfsrv did not answer GET / within {BOOT:?}\n{}",
                    tail(&srv.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("azmlinfsrv up on port {port} after {:?}", t0.elapsed());
        srv
    }

    /// SIGTERM (gunicorn's graceful stop of master and workers), waiting for it at most 10 s.
    /// Whatever is left is killed on drop.
    async fn stop(mut self) -> bool {
        signal("TERM", &[self.pid]);
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Drop for AzmlInfSrv {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // The master first, so that it cannot start a new worker once the old ones are gone.
        let mut pids = vec![self.pid];
        pids.extend(children(self.pid));
        signal("KILL", &pids);
    }
}

/// Sends a signal with the shell's `kill` (std has no kill for a process that is not our child).
fn signal(sig: &str, pids: &[u32]) {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{sig} {} 2>/dev/null", pids.join(" ")))
        .stdin(Stdio::null())
        .status();
}

/// Direct children of `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// One plain HTTP/1.1 GET; `None` if nothing answered within a second.
async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", addr.to_string())
            .body(Empty::<Bytes>::new())
            .ok()?;
        let resp = send.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Some(status)
    };
    tokio::time::timeout(Duration::from_secs(1), fut)
        .await
        .ok()
        .flatten()
}

/// `POST /score` requests in azmlinfsrv's log (its own line per request, beside gunicorn's).
fn score_hits(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("azmlinfsrv - POST /score "))
        .count()
}

async fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < STEP, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last lines of azmlinfsrv's log, for a failure message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| format!("(no log: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(60);
    format!(
        "--- azmlinfsrv log ({}), last {} lines ---\n{}",
        log.display(),
        lines.len() - from,
        lines[from..].join("\n")
    )
}

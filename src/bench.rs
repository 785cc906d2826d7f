//! `scoregate bench`: the load harness that ships with the gateway.
//!
//! Without `--target` it builds a complete throwaway setup: a CA and `localhost` certificate in a
//! temp dir, a fast built-in backend (one thread, answers `{"result":[0.1,0.9]}` like the peers'
//! nginx backend in `bench/`), and the gateway as a *child process* (`scoregate serve`), so that
//! the gateway's CPU time and memory are read from `/proc/<pid>` apart from the load generator's.
//! With `--target URL` it drives a gateway that is already running (CPU and memory only with
//! `--pid`).
//!
//! Modes: `keepalive` (N HTTP/1.1 connections, one request in flight each), `h2` (N HTTP/2
//! connections × M streams), `handshake` (a new TCP + TLS connection per request, not resumed
//! unless `--resume`), `idle` (K connections opened, one request each, or none with `--idle-fresh`, then
//! held: the gateway's RSS growth per connection). Latency goes into one HDR histogram per task, merged at the end; only
//! requests that complete inside the measured window (after the warm-up) count, and the gateway's
//! CPU is read at the same two instants.
//!
//! Everything is bounded in time: every connect and request has a deadline, and the run ends at
//! warm-up + duration (+ a short grace for requests in flight). The child gateway is killed when
//! the run ends, fails, panics or is interrupted (a `Drop` guard).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The request body of the peer benchmark (`bench/tools/body.json`, 203 bytes), so that numbers
/// compare with nginx and HAProxy driven by wrk.
pub const BODY: &str = r#"{"input_data":{"columns":["sepal_length","sepal_width","petal_length","petal_width"],"index":[0,1],"data":[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3]]},"params":{"model":"iris","version":"1"},"id":"req-000001"}"#;
/// The built-in backend's answer, byte for byte the peers' nginx backend's.
const BACKEND_ANSWER: &str = r#"{"result":[0.1,0.9]}"#;
/// Preset keys of the built-in gateway: the peer benchmark's, so a curl line works in both.
pub const KEY1: &str = "bench-primary-0123456789abcdef0123456789abcdef";
pub const KEY2: &str = "bench-secondary-fedcba9876543210fedcba9876543210";
const SERVICE: &str = "iris";
/// Requests still in flight at the end of the window get this long before they are cut off
/// (they no longer count either way).
const GRACE: Duration = Duration::from_secs(2);
/// After a failed connect, a task waits this long before the next try (no hot loop on a dead
/// target).
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Idle mode: TLS handshakes in flight while opening (like tools/idle_conns.py).
const IDLE_CONCURRENCY: usize = 100;
/// Idle mode: the opening phase as a whole is cut off after this.
const IDLE_OPEN_LIMIT: Duration = Duration::from_secs(120);
/// Built-in gateway: how long it may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Latency histogram range: 1 µs .. 60 s, 3 significant digits.
const HIST_MAX_US: u64 = 60_000_000;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scoring URL of a running gateway, e.g. https://127.0.0.1:8443/api/v1/service/iris/score
    /// (default: start a built-in backend and gateway and drive those).
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    #[arg(long, value_enum, default_value_t = Mode::Keepalive)]
    pub mode: Mode,
    /// Auth mode of the built-in gateway's service (with --target: taken from --key/--token-file).
    #[arg(long, value_enum, default_value_t = AuthKind::Key)]
    pub auth: AuthKind,
    /// Concurrent connections [default: 64; h2: 16].
    #[arg(long, value_name = "N")]
    pub connections: Option<usize>,
    /// Concurrent streams per connection (h2 mode).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub streams: usize,
    /// Measured time (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Load before the measured window, not counted.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Idle mode: connections to open and hold.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    pub idle_conns: usize,
    /// Idle mode: how long the connections are held before the RSS is read.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub idle_hold: Duration,
    /// Idle mode: hold the connections right after the TLS handshake, without a request (the
    /// default sends one request on each first).
    #[arg(long)]
    pub idle_fresh: bool,
    /// Deadline of one connect + handshake, and of one request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// API key for --target (visible in `ps`; prefer --key-file).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// File holding the API key for --target.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// File holding a token (JWT) for --target.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PID of the --target gateway: its CPU time and RSS are then reported.
    #[arg(long)]
    pub pid: Option<u32>,
    /// CA certificate (PEM) to trust for --target (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Do not verify the server certificate.
    #[arg(long)]
    pub insecure: bool,
    /// TLS server name to send (default: the URL's host; built-in: localhost).
    #[arg(long, value_name = "NAME")]
    pub sni: Option<String>,
    /// Handshake mode: resume TLS sessions (default: every handshake is a full one).
    #[arg(long)]
    pub resume: bool,
    /// Built-in gateway: keep its access log on (written to a file in the temp dir).
    #[arg(long)]
    pub access_log: bool,
    /// Built-in gateway: `[runtime] worker_threads` (0: one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub gateway_threads: usize,
    /// Threads of the load generator [default: one per core].
    #[arg(long, value_name = "N")]
    pub client_threads: Option<usize>,
    /// Request body file (default: the peer benchmark's 203-byte JSON).
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1 keep-alive, one request in flight per connection.
    Keepalive,
    /// HTTP/2: --connections × --streams requests in flight.
    H2,
    /// A new TCP + TLS connection per request.
    Handshake,
    /// Memory per idle TLS connection (after one request each).
    Idle,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Keepalive => "keepalive",
            Mode::H2 => "h2",
            Mode::Handshake => "handshake",
            Mode::Idle => "idle",
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    Key,
    Token,
}

/// Runs a benchmark and prints its report (table or JSON) on stdout.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.duration.is_zero() && args.mode != Mode::Idle {
        bail!("--duration must be more than 0s");
    }
    if args.connections == Some(0) || args.streams == 0 || args.idle_conns == 0 {
        bail!("--connections, --streams and --idle-conns must be at least 1");
    }
    let threads = args.client_threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        tokio::select! {
            r = bench(&args, threads) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report.json())?);
    } else {
        report.print();
    }
    Ok(())
}

async fn bench(args: &BenchArgs, client_threads: usize) -> anyhow::Result<Report> {
    let body = match &args.body {
        Some(p) => {
            Bytes::from(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?)
        }
        None => Bytes::from_static(BODY.as_bytes()),
    };
    // `setup` owns the child gateway, the backend and the temp dir: all go when it drops.
    let setup = match &args.target {
        Some(url) => Setup::external(args, url).await?,
        None => Setup::builtin(args).await?,
    };
    let connections = args.connections.unwrap_or(match args.mode {
        Mode::H2 => 16,
        _ => 64,
    });
    let alpn: &[u8] = if args.mode == Mode::H2 {
        b"h2"
    } else {
        b"http/1.1"
    };
    let tls = client_config(
        &setup.verify,
        alpn,
        args.mode != Mode::Handshake || args.resume,
    )?;
    let h2 = args.mode == Mode::H2;
    let req = ReqTemplate {
        h2,
        uri: if h2 {
            Uri::builder()
                .scheme("https")
                .authority(setup.target.authority.clone())
                .path_and_query(setup.target.path.clone())
                .build()?
        } else {
            Uri::builder()
                .path_and_query(setup.target.path.clone())
                .build()?
        },
        host: HeaderValue::from_str(setup.target.authority.as_str())?,
        auth: setup.auth.clone(),
        body,
        close: args.mode == Mode::Handshake,
    };
    let start = Instant::now();
    let warm_end = start + args.warmup;
    let end = warm_end + args.duration;
    let ctx = Arc::new(Ctx {
        addr: setup.target.addr,
        server_name: setup.target.server_name.clone(),
        tls,
        req,
        phase: Phase {
            warm_end,
            end,
            hard_end: end + GRACE,
        },
        timeout: args.timeout,
        streams: args.streams,
        live: Live::default(),
    });
    let mut report = Report {
        mode: args.mode,
        url: setup.target.url.clone(),
        auth: setup.auth_label,
        connections,
        streams: args.streams,
        duration: args.duration,
        warmup: args.warmup,
        resume: args.resume,
        handshakes: 0,
        resumed: 0,
        client_threads,
        gateway: setup.gateway_label.clone(),
        gateway_pid: setup.gateway_pid,
        stats: Stats::new(),
        cpu: None,
        rss_kb: None,
        idle: None,
        notes: vec![],
    };
    if !args.quiet {
        eprintln!(
            "scoregate bench: {} mode, {} auth, {} → {}",
            args.mode.as_str(),
            setup.auth_label,
            setup.gateway_label,
            setup.target.url
        );
    }
    if args.mode == Mode::Idle {
        report.connections = args.idle_conns;
        report.idle = Some(idle_run(&ctx, &setup, args, &mut report.stats).await);
        return Ok(report);
    }

    let mut set = JoinSet::new();
    for _ in 0..connections {
        let c = ctx.clone();
        match args.mode {
            Mode::Keepalive => set.spawn(h1_worker(c)),
            Mode::H2 => set.spawn(h2_worker(c)),
            Mode::Handshake => set.spawn(handshake_worker(c)),
            Mode::Idle => unreachable!(),
        };
    }
    let progress = (!args.quiet).then(|| tokio::spawn(load_progress(ctx.clone(), start)));
    tokio::time::sleep_until(warm_end).await;
    let before = Snapshot::take(&setup);
    tokio::time::sleep_until(end).await;
    let after = Snapshot::take(&setup);
    report.rss_kb = setup.gateway_pid.and_then(rss_kb);
    let limit = ctx.phase.hard_end + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(limit, set.join_next()).await {
            Ok(Some(Ok(s))) => report.stats.merge(s),
            Ok(Some(Err(e))) => report.notes.push(format!("a load task failed: {e}")),
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                report
                    .notes
                    .push("some load tasks did not stop in time and were aborted".into());
                break;
            }
        }
    }
    if let Some(p) = progress {
        p.abort();
        clear_progress();
    }
    report.cpu = Some(CpuUse::between(&before, &after));
    report.handshakes = ctx.live.handshakes.load(Ordering::Relaxed);
    report.resumed = ctx.live.resumed.load(Ordering::Relaxed);
    Ok(report)
}

// ---------------------------------------------------------------- setup

/// Where the load goes.
struct Target {
    url: String,
    addr: SocketAddr,
    authority: http::uri::Authority,
    path: http::uri::PathAndQuery,
    server_name: ServerName<'static>,
}

enum Verify {
    Roots(Arc<rustls::RootCertStore>),
    Insecure,
}

struct Setup {
    target: Target,
    verify: Verify,
    auth: Option<HeaderValue>,
    auth_label: &'static str,
    gateway_label: String,
    gateway_pid: Option<u32>,
    backend_tid: Option<u32>,
    // Dropped in this order: the gateway is killed, then the backend stops, then the files go.
    _child: Option<ChildGuard>,
    _backend: Option<BackendGuard>,
    _dir: Option<TempDir>,
}

impl Setup {
    /// A gateway that is already running.
    async fn external(args: &BenchArgs, url: &str) -> anyhow::Result<Setup> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--target {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("https") {
            bail!("--target must be an https:// URL");
        }
        let authority = uri.authority().context("--target has no host")?.clone();
        let host = authority.host().trim_matches(['[', ']']).to_string();
        let port = authority.port_u16().unwrap_or(443);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let sni = args.sni.clone().unwrap_or(host);
        let server_name = ServerName::try_from(sni.clone())
            .map_err(|_| anyhow!("{sni:?} is not a valid TLS server name"))?;
        let verify = if args.insecure {
            Verify::Insecure
        } else if let Some(ca) = &args.ca {
            Verify::Roots(Arc::new(roots_from_pem(ca)?))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            Verify::Roots(Arc::new(roots))
        };
        let given = [
            args.key.is_some(),
            args.key_file.is_some(),
            args.token_file.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            bail!("give at most one of --key, --key-file, --token-file");
        }
        let (credential, auth_label) = if let Some(k) = &args.key {
            (Some(k.clone()), "key")
        } else if let Some(f) = &args.key_file {
            (Some(read_trimmed(f)?), "key")
        } else if let Some(f) = &args.token_file {
            (Some(read_trimmed(f)?), "token")
        } else {
            (None, "none")
        };
        let gateway_label = match args.pid {
            Some(pid) => {
                if cpu_ticks(pid).is_none() {
                    bail!("--pid {pid}: no such process (or /proc is not readable)");
                }
                format!("gateway pid {pid}")
            }
            None => "running gateway, no --pid: CPU and RSS not measured".into(),
        };
        Ok(Setup {
            target: Target {
                url: url.to_string(),
                addr,
                authority,
                path,
                server_name,
            },
            verify,
            auth: credential.map(|c| bearer(&c)).transpose()?,
            auth_label,
            gateway_label,
            gateway_pid: args.pid,
            backend_tid: None,
            _child: None,
            _backend: None,
            _dir: None,
        })
    }

    /// Throwaway certificate, built-in backend, and the gateway as a child process.
    async fn builtin(args: &BenchArgs) -> anyhow::Result<Setup> {
        let dir = TempDir::new()?;
        let certs = crate::certgen::write_demo_certs(&dir.0.join("certs"), &["localhost"])?;
        let backend = BackendGuard::start()?;
        let (port, admin_port) = free_ports()?;
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let auth = match args.auth {
            AuthKind::Key => "key",
            AuthKind::Token => "token",
        };
        let keys = match args.auth {
            AuthKind::Key => format!("primary_key = \"{KEY1}\"\nsecondary_key = \"{KEY2}\"\n"),
            AuthKind::Token => String::new(),
        };
        let toml = format!(
            r#"# Written by `scoregate bench` for one run; removed with its folder afterwards.
[listen]
address = "127.0.0.1:{port}"

[[tls.certificates]]
cname = "localhost"
cert = "certs/fullchain.pem"
key = "certs/key.pem"

[admin]
address = "{admin_addr}"
token_file = "admin-token"

[state]
dir = "state"

[runtime]
worker_threads = {threads}

[server]
drain_timeout = "1s"

[log]
access = {access}

[[service]]
name = "{SERVICE}"
auth = "{auth}"
backends = ["http://{backend}"]
max_body = "1MiB"
{keys}"#,
            threads = args.gateway_threads,
            access = args.access_log,
            backend = backend.addr,
        );
        let config_path = dir.0.join("scoregate.toml");
        crate::config::Config::parse(&toml, &config_path)
            .map_err(|e| anyhow!("the bench's own gateway config is invalid: {e}"))?;
        std::fs::write(&config_path, &toml)?;
        let log_path = dir.0.join("gateway.log");
        let log = std::fs::File::create(&log_path)?;
        let exe = std::env::current_exe().context("cannot find the scoregate binary")?;
        let child = std::process::Command::new(&exe)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} serve", exe.display()))?;
        let mut child = ChildGuard(child);
        let pid = child.0.id();
        wait_ready(admin_addr, &mut child, &log_path).await?;
        let credential = match args.auth {
            AuthKind::Key => KEY1.to_string(),
            AuthKind::Token => {
                let admin_token = read_trimmed(&dir.0.join("admin-token"))?;
                let (status, body) = admin_http(
                    admin_addr,
                    Method::POST,
                    &format!("/v1/services/{SERVICE}/token"),
                    Some(&admin_token),
                )
                .await?;
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                match v["accessToken"].as_str() {
                    Some(t) if status.is_success() => t.to_string(),
                    _ => bail!(
                        "the gateway's admin API gave no token ({status}): {}",
                        String::from_utf8_lossy(&body)
                    ),
                }
            }
        };
        let threads = if args.gateway_threads == 0 {
            "one worker thread per core".to_string()
        } else {
            format!("{} worker thread(s)", args.gateway_threads)
        };
        let sni = args.sni.clone().unwrap_or_else(|| "localhost".into());
        Ok(Setup {
            target: Target {
                url: format!("https://localhost:{port}/api/v1/service/{SERVICE}/score"),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                authority: format!("localhost:{port}").parse()?,
                path: format!("/api/v1/service/{SERVICE}/score").parse()?,
                server_name: ServerName::try_from(sni.clone())
                    .map_err(|_| anyhow!("{sni:?} is not a valid TLS server name"))?,
            },
            verify: Verify::Roots(Arc::new(roots_from_pem(&certs.ca)?)),
            auth: Some(bearer(&credential)?),
            auth_label: auth,
            gateway_label: format!("built-in gateway pid {pid}, {threads}"),
            gateway_pid: Some(pid),
            backend_tid: backend.tid,
            _child: Some(child),
            _backend: Some(backend),
            _dir: Some(dir),
        })
    }
}

fn bearer(credential: &str) -> anyhow::Result<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {credential}"))
        .context("the credential is not a valid header value")?;
    v.set_sensitive(true);
    Ok(v)
}

fn read_trimmed(p: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(p)
        .with_context(|| format!("cannot read {}", p.display()))?
        .trim()
        .to_string())
}

fn roots_from_pem(p: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let pem = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.with_context(|| format!("{}: bad PEM", p.display()))?)?;
    }
    if roots.is_empty() {
        bail!("{}: no certificate in it", p.display());
    }
    Ok(roots)
}

/// Two distinct free loopback ports (bound together, then released for the child to take).
fn free_ports() -> std::io::Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// Polls the admin API's `/readyz` until 200; fails early if the child exits.
async fn wait_ready(admin: SocketAddr, child: &mut ChildGuard, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.0.try_wait()? {
            bail!(
                "the gateway exited at start ({status}); its log:\n{}",
                log_tail(log)
            );
        }
        if let Ok((s, _)) = admin_http(admin, Method::GET, "/readyz", None).await
            && s == StatusCode::OK
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the gateway was not ready within {}s; its log:\n{}",
                READY_TIMEOUT.as_secs(),
                log_tail(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// One plain-HTTP call to the admin API.
async fn admin_http(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let call = async {
        let tcp = TcpStream::connect(addr).await?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.to_string());
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = sender
            .send_request(b.body(Full::new(Bytes::new()))?)
            .await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(ADMIN_TIMEOUT, call)
        .await
        .map_err(|_| anyhow!("the admin API at {addr} did not answer in time"))?
}

/// The child gateway: killed (and reaped) when dropped, also on error, panic or Ctrl-C.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A temp dir removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let d = std::env::temp_dir().join(format!(
            "scoregate-bench-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&d)?;
        Ok(TempDir(d))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- the built-in backend

/// The fast backend: plain HTTP/1.1 keep-alive on one thread of its own (like the peers'
/// 1-worker nginx), answering every request with `{"result":[0.1,0.9]}` after reading its body.
/// `GET /` answers too, so the gateway's health checks pass.
struct BackendGuard {
    addr: SocketAddr,
    /// Its thread's id, to read its CPU time apart from the load generator's.
    tid: Option<u32>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl BackendGuard {
    fn start() -> anyhow::Result<BackendGuard> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("bench-backend".into())
            .spawn(move || {
                let _ = tid_tx.send(thread_id());
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = stopped => {}
                        _ = backend_serve(l) => {}
                    }
                });
            })?;
        let tid = tid_rx.recv_timeout(Duration::from_secs(5)).ok().flatten();
        Ok(BackendGuard {
            addr,
            tid,
            stop: Some(stop),
        })
    }
}

impl Drop for BackendGuard {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn backend_serve(l: tokio::net::TcpListener) {
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let mut body = req.into_body();
                while let Some(f) = body.frame().await {
                    f?;
                }
                let mut r =
                    http::Response::new(Full::new(Bytes::from_static(BACKEND_ANSWER.as_bytes())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Ok::<_, hyper::Error>(r)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// The calling thread's kernel id (`/proc/thread-self` → `PID/task/TID`).
fn thread_id() -> Option<u32> {
    std::fs::read_link("/proc/thread-self")
        .ok()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------- TLS client

fn client_config(
    verify: &Verify,
    alpn: &[u8],
    resumption: bool,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = crate::crypto::provider().clone();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)?;
    let mut cfg = match verify {
        Verify::Roots(r) => builder.with_root_certificates(r.clone()),
        Verify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider))),
    }
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    if !resumption {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

/// `--insecure`: any certificate, but the handshake signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------- load

struct Phase {
    warm_end: Instant,
    end: Instant,
    /// Nothing runs past this: requests in flight at `end` are cut off here.
    hard_end: Instant,
}

/// Counters for the progress line (everything, warm-up included).
#[derive(Default)]
struct Live {
    ok: AtomicU64,
    errors: AtomicU64,
    handshakes: AtomicU64,
    resumed: AtomicU64,
}

struct Ctx {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    req: ReqTemplate,
    phase: Phase,
    timeout: Duration,
    streams: usize,
    live: Live,
}

impl Ctx {
    fn deadline(&self, from: Instant) -> Instant {
        (from + self.timeout).min(self.phase.hard_end)
    }

    fn running(&self) -> bool {
        Instant::now() < self.phase.end
    }

    async fn backoff(&self) {
        tokio::time::sleep_until((Instant::now() + CONNECT_BACKOFF).min(self.phase.end)).await;
    }
}

struct ReqTemplate {
    h2: bool,
    uri: Uri,
    host: HeaderValue,
    auth: Option<HeaderValue>,
    body: Bytes,
    /// `Connection: close` (handshake mode).
    close: bool,
}

impl ReqTemplate {
    fn build(&self) -> Request<Full<Bytes>> {
        let mut r = Request::new(Full::new(self.body.clone()));
        *r.method_mut() = Method::POST;
        *r.uri_mut() = self.uri.clone();
        let h = r.headers_mut();
        if !self.h2 {
            h.insert(header::HOST, self.host.clone());
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(a) = &self.auth {
            h.insert(header::AUTHORIZATION, a.clone());
        }
        if self.close {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connect,
    Tls,
    Status(u16),
    Timeout,
    Io,
}

/// A failed request or connection attempt.
#[derive(Debug)]
struct Failure {
    kind: Kind,
    msg: String,
    /// The server said `Connection: close` (with a non-2xx answer).
    close: bool,
}

impl Failure {
    fn new(kind: Kind, msg: impl Into<String>) -> Failure {
        Failure {
            kind,
            msg: msg.into(),
            close: false,
        }
    }

    fn hyper(e: hyper::Error) -> Failure {
        let kind = if e.is_timeout() {
            Kind::Timeout
        } else {
            Kind::Io
        };
        Failure::new(kind, chain(&e))
    }

    /// Whether the connection is unusable after this.
    fn reconnect(&self) -> bool {
        !matches!(self.kind, Kind::Status(_)) || self.close
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Counts and latencies of one task (merged at the end).
struct Stats {
    hist: Histogram<u64>,
    ok: u64,
    errors: Errors,
}

#[derive(Default)]
struct Errors {
    connect: u64,
    tls: u64,
    timeout: u64,
    io: u64,
    status: BTreeMap<u16, u64>,
    /// The first message seen of each kind, to say *why*.
    first: BTreeMap<&'static str, String>,
}

impl Errors {
    fn total(&self) -> u64 {
        self.connect + self.tls + self.timeout + self.io + self.status.values().sum::<u64>()
    }

    fn add(&mut self, f: &Failure) {
        let name = match f.kind {
            Kind::Connect => {
                self.connect += 1;
                "connect"
            }
            Kind::Tls => {
                self.tls += 1;
                "tls"
            }
            Kind::Timeout => {
                self.timeout += 1;
                "timeout"
            }
            Kind::Io => {
                self.io += 1;
                "io"
            }
            Kind::Status(c) => {
                *self.status.entry(c).or_default() += 1;
                "status"
            }
        };
        self.first.entry(name).or_insert_with(|| f.msg.clone());
    }

    fn merge(&mut self, o: Errors) {
        self.connect += o.connect;
        self.tls += o.tls;
        self.timeout += o.timeout;
        self.io += o.io;
        for (c, n) in o.status {
            *self.status.entry(c).or_default() += n;
        }
        for (k, v) in o.first {
            self.first.entry(k).or_insert(v);
        }
    }

    fn summary(&self) -> String {
        let mut parts = vec![];
        for (name, n) in [
            ("connect", self.connect),
            ("tls", self.tls),
            ("timeout", self.timeout),
            ("io", self.io),
        ] {
            if n > 0 {
                parts.push(format!("{name} {n}"));
            }
        }
        for (c, n) in &self.status {
            parts.push(format!("status {c}: {n}"));
        }
        parts.join(", ")
    }

    fn json(&self) -> Value {
        json!({
            "total": self.total(),
            "connect": self.connect,
            "tls": self.tls,
            "timeout": self.timeout,
            "io": self.io,
            "status": self.status.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "first": self.first,
        })
    }
}

impl Stats {
    fn new() -> Stats {
        Stats {
            hist: Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds"),
            ok: 0,
            errors: Errors::default(),
        }
    }

    /// Records one outcome that began at `t0`, if it completed inside the measured window.
    fn done<T>(&mut self, ctx: &Ctx, t0: Instant, r: &Result<T, Failure>) {
        let now = Instant::now();
        let live = if r.is_ok() {
            &ctx.live.ok
        } else {
            &ctx.live.errors
        };
        live.fetch_add(1, Ordering::Relaxed);
        if now < ctx.phase.warm_end || now >= ctx.phase.end {
            return;
        }
        match r {
            Ok(_) => {
                self.ok += 1;
                self.hist
                    .saturating_record((now - t0).as_micros().max(1) as u64);
            }
            Err(f) => self.errors.add(f),
        }
    }

    fn merge(&mut self, o: Stats) {
        let _ = self.hist.add(&o.hist);
        self.ok += o.ok;
        self.errors.merge(o.errors);
    }
}

async fn connect(ctx: &Ctx) -> Result<TlsStream<TcpStream>, Failure> {
    let tcp = TcpStream::connect(ctx.addr)
        .await
        .map_err(|e| Failure::new(Kind::Connect, format!("{}: {e}", ctx.addr)))?;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(ctx.tls.clone())
        .connect(ctx.server_name.clone(), tcp)
        .await
        .map_err(|e| Failure::new(Kind::Tls, chain(&e)))?;
    ctx.live.handshakes.fetch_add(1, Ordering::Relaxed);
    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        ctx.live.resumed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(tls)
}

/// Connect + TLS handshake, bounded.
async fn connect_bounded(ctx: &Ctx, t0: Instant) -> Result<TlsStream<TcpStream>, Failure> {
    match tokio::time::timeout_at(ctx.deadline(t0), connect(ctx)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::new(
            Kind::Timeout,
            "connect + TLS handshake timed out",
        )),
    }
}

/// Sends one request and reads the whole answer. `Ok(true)`: the server will close.
async fn exchange<F>(send: F) -> Result<bool, Failure>
where
    F: Future<Output = Result<http::Response<Incoming>, hyper::Error>>,
{
    let resp = send.await.map_err(Failure::hyper)?;
    let status = resp.status();
    let close = resp
        .headers()
        .get(header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let mut body = resp.into_body();
    while let Some(f) = body.frame().await {
        f.map_err(Failure::hyper)?;
    }
    if status.is_success() {
        Ok(close)
    } else {
        Err(Failure {
            kind: Kind::Status(status.as_u16()),
            msg: format!("HTTP {status}"),
            close,
        })
    }
}

async fn request_h1(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    req: &ReqTemplate,
) -> Result<bool, Failure> {
    sender.ready().await.map_err(Failure::hyper)?;
    exchange(sender.send_request(req.build())).await
}

/// Keep-alive: one connection, one request in flight; reconnects when the connection breaks.
async fn h1_worker(ctx: Arc<Ctx>) -> Stats {
    let mut st = Stats::new();
    while ctx.running() {
        let t0 = Instant::now();
        let tls = match connect_bounded(&ctx, t0).await {
            Ok(s) => s,
            Err(f) => {
                st.done::<()>(&ctx, t0, &Err(f));
                ctx.backoff().await;
                continue;
            }
        };
        let (mut sender, conn) = match http1::handshake(TokioIo::new(tls)).await {
            Ok(x) => x,
            Err(e) => {
                st.done::<()>(&ctx, t0, &Err(Failure::hyper(e)));
                continue;
            }
        };
        // The connection is driven in this same task (no cross-task wake-up per request).
        let mut conn = std::pin::pin!(conn);
        let mut conn_done = false;
        while ctx.running() {
            let t = Instant::now();
            let one = tokio::time::timeout_at(ctx.deadline(t), request_h1(&mut sender, &ctx.req));
            let r = with_conn(conn.as_mut(), &mut conn_done, one)
                .await
                .unwrap_or_else(|_| Err(Failure::new(Kind::Timeout, "request timed out")));
            let again = match &r {
                Ok(close) => !close,
                Err(f) => !f.reconnect(),
            };
            st.done(&ctx, t, &r);
            if conn_done || !again {
                break;
            }
        }
    }
    st
}

/// Runs `fut` while driving the connection future `conn` in the same task. The connection may
/// end first (e.g. after `Connection: close`): the request then completes or fails by itself.
async fn with_conn<C: Future, F: Future>(
    mut conn: std::pin::Pin<&mut C>,
    conn_done: &mut bool,
    fut: F,
) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = conn.as_mut(), if !*conn_done => *conn_done = true,
        }
    }
}

/// HTTP/2: one connection, `streams` request loops on it; reconnects when it breaks.
async fn h2_worker(ctx: Arc<Ctx>) -> Stats {
    let mut st = Stats::new();
    while ctx.running() {
        let t0 = Instant::now();
        let tls = match connect_bounded(&ctx, t0).await {
            Ok(s) => s,
            Err(f) => {
                st.done::<()>(&ctx, t0, &Err(f));
                ctx.backoff().await;
                continue;
            }
        };
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            let f = Failure::new(Kind::Tls, "the server did not choose h2 (ALPN)");
            st.done::<()>(&ctx, t0, &Err(f));
            ctx.backoff().await;
            continue;
        }
        let (sender, conn) = match http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await {
            Ok(x) => x,
            Err(e) => {
                st.done::<()>(&ctx, t0, &Err(Failure::hyper(e)));
                continue;
            }
        };
        let conn = tokio::spawn(conn);
        let mut streams = JoinSet::new();
        for _ in 0..ctx.streams {
            streams.spawn(h2_stream(ctx.clone(), sender.clone()));
        }
        drop(sender);
        while let Some(r) = streams.join_next().await {
            if let Ok(s) = r {
                st.merge(s);
            }
        }
        conn.abort();
    }
    st
}

async fn h2_stream(ctx: Arc<Ctx>, mut sender: http2::SendRequest<Full<Bytes>>) -> Stats {
    let mut st = Stats::new();
    while ctx.running() {
        let t = Instant::now();
        let one = async {
            sender.ready().await.map_err(Failure::hyper)?;
            exchange(sender.send_request(ctx.req.build())).await
        };
        let r = tokio::time::timeout_at(ctx.deadline(t), one)
            .await
            .unwrap_or_else(|_| Err(Failure::new(Kind::Timeout, "request timed out")));
        st.done(&ctx, t, &r);
        if sender.is_closed() {
            break;
        }
    }
    st
}

/// A new TCP + TLS connection per request (`Connection: close`); latency includes the handshake.
async fn handshake_worker(ctx: Arc<Ctx>) -> Stats {
    let mut st = Stats::new();
    while ctx.running() {
        let t0 = Instant::now();
        let r = match tokio::time::timeout_at(ctx.deadline(t0), one_connection(&ctx, t0)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::new(
                Kind::Timeout,
                "connection + request timed out",
            )),
        };
        let back_off = matches!(&r, Err(f) if matches!(f.kind, Kind::Connect | Kind::Tls));
        st.done(&ctx, t0, &r);
        if back_off {
            ctx.backoff().await;
        }
    }
    st
}

async fn one_connection(ctx: &Ctx, t0: Instant) -> Result<bool, Failure> {
    let tls = connect_bounded(ctx, t0).await?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .map_err(Failure::hyper)?;
    let mut conn = std::pin::pin!(conn);
    let mut conn_done = false;
    let r = with_conn(
        conn.as_mut(),
        &mut conn_done,
        request_h1(&mut sender, &ctx.req),
    )
    .await;
    drop(sender);
    if !conn_done {
        // Let hyper finish the close that the request asked for.
        let _ = tokio::time::timeout(Duration::from_millis(500), conn).await;
    }
    r
}

async fn load_progress(ctx: Arc<Ctx>, start: Instant) {
    let total = (ctx.phase.end - start).as_secs_f64();
    let mut last = (Instant::now(), 0u64);
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        let now = tick.tick().await;
        let ok = ctx.live.ok.load(Ordering::Relaxed);
        let errors = ctx.live.errors.load(Ordering::Relaxed);
        let rate = (ok - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
        last = (now, ok);
        let phase = if now <= ctx.phase.warm_end {
            "warm-up"
        } else {
            "measuring"
        };
        progress(&format!(
            "{:5.1}s / {total:.1}s  {phase:9}  {rate:9.0} req/s  {errors} errors",
            (now - start).as_secs_f64()
        ));
    }
}

fn progress(line: &str) {
    let mut e = std::io::stderr().lock();
    if e.is_terminal() {
        let _ = write!(e, "\r\x1b[2K{line}");
    } else {
        let _ = writeln!(e, "{line}");
    }
    let _ = e.flush();
}

fn clear_progress() {
    let mut e = std::io::stderr().lock();
    if e.is_terminal() {
        let _ = write!(e, "\r\x1b[2K");
        let _ = e.flush();
    }
}

// ---------------------------------------------------------------- idle

struct IdleReport {
    requested: usize,
    /// Held right after the handshake, without a request.
    fresh: bool,
    opened: usize,
    open_s: f64,
    hold: Duration,
    rss_before_kb: Option<u64>,
    rss_open_kb: Option<u64>,
    rss_after_close_kb: Option<u64>,
    /// Gateway CPU while opening (handshake + one request per connection).
    cpu_open_s: Option<f64>,
}

/// A held connection: the TLS stream itself (fresh), or the sender of the hyper connection whose
/// task drives it (after a request); the task ends when this is dropped.
struct Held {
    _fresh: Option<TlsStream<TcpStream>>,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

async fn open_idle(ctx: Arc<Ctx>, deadline: Instant, fresh: bool) -> Result<Held, Failure> {
    let one = async {
        let tls = connect(&ctx).await?;
        if fresh {
            return Ok(Held {
                _fresh: Some(tls),
                sender: None,
                task: None,
            });
        }
        let (sender, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(Failure::hyper)?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        // Built first, so that a failed request aborts the connection's task too.
        let mut held = Held {
            _fresh: None,
            sender: Some(sender),
            task: Some(task),
        };
        if let Some(sender) = held.sender.as_mut() {
            request_h1(sender, &ctx.req).await?;
        }
        Ok(held)
    };
    tokio::time::timeout_at(deadline, one)
        .await
        .unwrap_or_else(|_| Err(Failure::new(Kind::Timeout, "open timed out")))
}

async fn idle_run(ctx: &Arc<Ctx>, setup: &Setup, args: &BenchArgs, st: &mut Stats) -> IdleReport {
    let pid = setup.gateway_pid;
    let hz = clk_tck();
    let rss_before_kb = pid.and_then(rss_kb);
    let cpu0 = pid.and_then(cpu_ticks);
    let t0 = Instant::now();
    let open_limit = t0 + IDLE_OPEN_LIMIT;
    let sem = Arc::new(tokio::sync::Semaphore::new(IDLE_CONCURRENCY));
    let mut set = JoinSet::new();
    let fresh = args.idle_fresh;
    for _ in 0..args.idle_conns {
        let ctx = ctx.clone();
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let deadline = (Instant::now() + ctx.timeout).min(open_limit);
            open_idle(ctx, deadline, fresh).await
        });
    }
    let progress_task = (!args.quiet).then(|| {
        let ctx = ctx.clone();
        let n = args.idle_conns;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                progress(&format!(
                    "opening idle connections: {} / {n} open, {} errors",
                    ctx.live.ok.load(Ordering::Relaxed),
                    ctx.live.errors.load(Ordering::Relaxed)
                ));
            }
        })
    });
    let mut held = Vec::with_capacity(args.idle_conns);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(h)) => {
                ctx.live.ok.fetch_add(1, Ordering::Relaxed);
                held.push(h);
            }
            Ok(Err(f)) => {
                ctx.live.errors.fetch_add(1, Ordering::Relaxed);
                st.errors.add(&f);
            }
            Err(_) => {}
        }
    }
    st.ok = held.len() as u64;
    let open_s = t0.elapsed().as_secs_f64();
    let cpu1 = pid.and_then(cpu_ticks);
    if let Some(p) = progress_task {
        p.abort();
        clear_progress();
    }
    tokio::time::sleep(args.idle_hold).await;
    let rss_open_kb = pid.and_then(rss_kb);
    let opened = held.len();
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    IdleReport {
        requested: args.idle_conns,
        fresh: args.idle_fresh,
        opened,
        open_s,
        hold: args.idle_hold,
        rss_before_kb,
        rss_open_kb,
        rss_after_close_kb: pid.and_then(rss_kb),
        cpu_open_s: cpu0
            .zip(cpu1)
            .map(|(a, b)| b.saturating_sub(a) as f64 / hz as f64),
    }
}

// ---------------------------------------------------------------- /proc

/// utime + stime of a process (clock ticks), from `/proc/PID/stat`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&format!("/proc/{pid}/stat"))
}

fn stat_ticks(path: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after "(comm) ": [0] is field 3 (state); utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// VmRSS of a process, kB.
fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when that fails).
fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(100)
}

/// CPU counters at one instant.
struct Snapshot {
    at: Instant,
    gateway: Option<u64>,
    /// This process: the load generator, plus the built-in backend's thread.
    own: Option<u64>,
    backend: Option<u64>,
}

impl Snapshot {
    fn take(setup: &Setup) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            gateway: setup.gateway_pid.and_then(cpu_ticks),
            own: stat_ticks("/proc/self/stat"),
            backend: setup
                .backend_tid
                .and_then(|t| stat_ticks(&format!("/proc/self/task/{t}/stat"))),
        }
    }
}

/// CPU seconds used over the measured window.
struct CpuUse {
    wall_s: f64,
    gateway_s: Option<f64>,
    backend_s: Option<f64>,
    loadgen_s: Option<f64>,
}

impl CpuUse {
    fn between(a: &Snapshot, b: &Snapshot) -> CpuUse {
        let hz = clk_tck() as f64;
        let d =
            |x: Option<u64>, y: Option<u64>| x.zip(y).map(|(x, y)| y.saturating_sub(x) as f64 / hz);
        let own = d(a.own, b.own);
        let backend = d(a.backend, b.backend);
        CpuUse {
            wall_s: (b.at - a.at).as_secs_f64(),
            gateway_s: d(a.gateway, b.gateway),
            backend_s: backend,
            loadgen_s: own.map(|o| (o - backend.unwrap_or(0.0)).max(0.0)),
        }
    }
}

// ---------------------------------------------------------------- report

struct Report {
    mode: Mode,
    url: String,
    auth: &'static str,
    connections: usize,
    streams: usize,
    duration: Duration,
    warmup: Duration,
    resume: bool,
    /// TLS handshakes made over the whole run (warm-up included), and how many were resumed.
    handshakes: u64,
    resumed: u64,
    client_threads: usize,
    gateway: String,
    gateway_pid: Option<u32>,
    stats: Stats,
    cpu: Option<CpuUse>,
    rss_kb: Option<u64>,
    idle: Option<IdleReport>,
    notes: Vec<String>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

impl Report {
    fn protocol(&self) -> &'static str {
        if self.mode == Mode::H2 {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        }
    }

    fn rps(&self) -> f64 {
        self.stats.ok as f64 / self.duration.as_secs_f64()
    }

    fn per_req_us(&self, s: Option<f64>) -> Option<f64> {
        s.filter(|_| self.stats.ok > 0)
            .map(|s| s * 1e6 / self.stats.ok as f64)
    }

    fn quantile_ms(&self, q: f64) -> Option<f64> {
        (self.stats.ok > 0).then(|| ms(self.stats.hist.value_at_quantile(q)))
    }

    fn json(&self) -> Value {
        let mut v = json!({
            "mode": self.mode.as_str(),
            "protocol": self.protocol(),
            "auth": self.auth,
            "target": self.url,
            "gateway": self.gateway,
            "gateway_pid": self.gateway_pid,
            "client_threads": self.client_threads,
            "tls_handshakes": self.handshakes,
            "tls_resumed": self.resumed,
            "errors": self.stats.errors.json(),
            "notes": self.notes,
        });
        if let Some(i) = &self.idle {
            let delta = i
                .rss_before_kb
                .zip(i.rss_open_kb)
                .map(|(a, b)| b as i64 - a as i64);
            v["connections"] = json!(i.requested);
            v["idle"] = json!({
                "requested": i.requested,
                "fresh": i.fresh,
                "opened": i.opened,
                "failed": self.stats.errors.total(),
                "open_s": round(i.open_s, 3),
                "hold_s": i.hold.as_secs_f64(),
                "rss_before_kb": i.rss_before_kb,
                "rss_open_kb": i.rss_open_kb,
                "delta_kb": delta,
                "kib_per_conn": delta.filter(|_| i.opened > 0).map(|d| round(d as f64 / i.opened as f64, 2)),
                "rss_after_close_kb": i.rss_after_close_kb,
                "gateway_cpu_s": i.cpu_open_s,
                "gateway_cpu_us_per_conn": i.cpu_open_s.filter(|_| i.opened > 0).map(|s| round(s * 1e6 / i.opened as f64, 1)),
            });
            return v;
        }
        let h = &self.stats.hist;
        let lat = (self.stats.ok > 0).then(|| {
            json!({
                "p50": ms(h.value_at_quantile(0.5)),
                "p90": ms(h.value_at_quantile(0.9)),
                "p99": ms(h.value_at_quantile(0.99)),
                "p999": ms(h.value_at_quantile(0.999)),
                "max": ms(h.max()),
                "mean": round(h.mean() / 1000.0, 3),
            })
        });
        let cpu = self.cpu.as_ref();
        v["connections"] = json!(self.connections);
        if self.mode == Mode::H2 {
            v["streams"] = json!(self.streams);
        }
        if self.mode == Mode::Handshake {
            v["resume"] = json!(self.resume);
        }
        v["duration_s"] = json!(self.duration.as_secs_f64());
        v["warmup_s"] = json!(self.warmup.as_secs_f64());
        v["requests"] = json!(self.stats.ok);
        v["rps"] = json!(round(self.rps(), 1));
        v["latency_ms"] = json!(lat);
        let r1 = |x: Option<f64>| x.map(|x| round(x, 1));
        v["gateway_cpu_s"] = json!(cpu.and_then(|c| c.gateway_s));
        v["gateway_cpu_us_per_req"] = json!(r1(self.per_req_us(cpu.and_then(|c| c.gateway_s))));
        v["gateway_cpu_pct"] = json!(cpu.and_then(|c| {
            c.gateway_s
                .map(|g| round(g * 100.0 / c.wall_s.max(1e-9), 1))
        }));
        v["gateway_rss_kb"] = json!(self.rss_kb);
        v["backend_cpu_us_per_req"] = json!(r1(self.per_req_us(cpu.and_then(|c| c.backend_s))));
        v["loadgen_cpu_us_per_req"] = json!(r1(self.per_req_us(cpu.and_then(|c| c.loadgen_s))));
        v
    }

    fn print(&self) {
        let e = &self.stats.errors;
        println!();
        if let Some(i) = &self.idle {
            let mib = |k: Option<u64>| opt(k.map(|k| k as f64 / 1024.0), 1);
            let delta = i
                .rss_before_kb
                .zip(i.rss_open_kb)
                .map(|(a, b)| b as f64 - a as f64);
            let per = delta.filter(|_| i.opened > 0).map(|d| d / i.opened as f64);
            let cpu = i
                .cpu_open_s
                .filter(|_| i.opened > 0)
                .map(|s| s * 1e6 / i.opened as f64);
            table(
                &[
                    "mode",
                    "auth",
                    "conns",
                    "opened",
                    "open s",
                    "RSS before MiB",
                    "RSS with conns MiB",
                    "KiB/conn",
                    "RSS after close MiB",
                    "errors",
                    "gw CPU µs/conn",
                ],
                &[vec![
                    "idle".into(),
                    self.auth.into(),
                    i.requested.to_string(),
                    i.opened.to_string(),
                    format!("{:.2}", i.open_s),
                    mib(i.rss_before_kb),
                    mib(i.rss_open_kb),
                    opt(per, 1),
                    mib(i.rss_after_close_kb),
                    e.total().to_string(),
                    opt(cpu, 0),
                ]],
            );
            println!(
                "\n{} idle TLS connections (HTTP/1.1, {}) held {}; RSS read from {}.",
                i.opened,
                if i.fresh {
                    "no request, handshake only"
                } else {
                    "one request each"
                },
                humantime::format_duration(i.hold),
                self.gateway
            );
        } else {
            let cpu = self.cpu.as_ref();
            let conns = if self.mode == Mode::H2 {
                format!("{}×{}", self.connections, self.streams)
            } else {
                self.connections.to_string()
            };
            let unit = if self.mode == Mode::Handshake {
                "conn/s"
            } else {
                "req/s"
            };
            table(
                &[
                    "mode",
                    "auth",
                    "conns",
                    unit,
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "p99.9 ms",
                    "errors",
                    "gw CPU µs/req",
                    "gw RSS MiB",
                ],
                &[vec![
                    self.mode.as_str().into(),
                    self.auth.into(),
                    conns,
                    format!("{:.0}", self.rps()),
                    opt(self.quantile_ms(0.5), 2),
                    opt(self.quantile_ms(0.9), 2),
                    opt(self.quantile_ms(0.99), 2),
                    opt(self.quantile_ms(0.999), 2),
                    e.total().to_string(),
                    opt(self.per_req_us(cpu.and_then(|c| c.gateway_s)), 1),
                    opt(self.rss_kb.map(|k| k as f64 / 1024.0), 1),
                ]],
            );
            println!(
                "\n{} requests in {} ({} over TLS{}; {} warm-up not counted), max {} ms.",
                self.stats.ok,
                humantime::format_duration(self.duration),
                self.protocol(),
                match self.mode {
                    Mode::Handshake => format!(
                        ", a new connection per request; {} of {} handshakes resumed",
                        self.resumed, self.handshakes
                    ),
                    _ => ", keep-alive".into(),
                },
                humantime::format_duration(self.warmup),
                opt((self.stats.ok > 0).then(|| ms(self.stats.hist.max())), 2),
            );
            if let Some(c) = cpu {
                println!(
                    "CPU µs/req: gateway {}, backend {}, load generator {} ({} client threads); gateway busy {} % of one core.",
                    opt(self.per_req_us(c.gateway_s), 1),
                    opt(self.per_req_us(c.backend_s), 1),
                    opt(self.per_req_us(c.loadgen_s), 1),
                    self.client_threads,
                    opt(c.gateway_s.map(|g| g * 100.0 / c.wall_s.max(1e-9)), 0),
                );
            }
            println!("Target {} ({}).", self.url, self.gateway);
        }
        if e.total() > 0 {
            println!("Errors: {}.", e.summary());
            for (k, m) in &e.first {
                println!("  first {k} error: {m}");
            }
        }
        for n in &self.notes {
            println!("Note: {n}");
        }
    }
}

/// Prints an aligned table (first column left, the rest right-aligned).
fn table(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = header
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let out: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i].saturating_sub(c.chars().count());
                if i == 0 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect();
        println!("{}", out.join("  ").trim_end());
    };
    line(header.to_vec());
    line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_peer_benchmark_body() {
        assert_eq!(BODY.len(), 203);
        assert!(serde_json::from_str::<Value>(BODY).is_ok());
    }

    #[test]
    fn reads_cpu_and_rss_of_this_process() {
        assert!(stat_ticks("/proc/self/stat").is_some());
        assert!(rss_kb(std::process::id()).unwrap() > 0);
        assert!(thread_id().is_some());
    }

    #[test]
    fn failures_say_whether_to_reconnect() {
        assert!(Failure::new(Kind::Io, "x").reconnect());
        assert!(!Failure::new(Kind::Status(401), "x").reconnect());
        let mut e = Errors::default();
        e.add(&Failure::new(Kind::Status(401), "HTTP 401"));
        e.add(&Failure::new(Kind::Status(401), "HTTP 401"));
        e.add(&Failure::new(Kind::Tls, "bad cert"));
        assert_eq!(e.total(), 3);
        assert_eq!(e.summary(), "tls 1, status 401: 2");
        assert_eq!(e.first["tls"], "bad cert");
    }
}

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
//! unless `--resume`), `idle` (K connections opened, one request each, or none with
//! `--idle-fresh`, then held: the gateway's RSS growth per connection). Latency goes into one HDR
//! histogram per task, merged at the end; only requests that complete inside the measured window
//! (after the warm-up) count, and the gateway's CPU is read at the same two instants.
//!
//! Everything is bounded in time: every connect and request has a deadline, and the run ends at
//! warm-up + duration (+ a short grace for requests in flight). The child gateway is killed when
//! the run ends, fails, panics or is interrupted (a `Drop` guard).
//!
//! The bench is a tool beside the gateway, not part of it: no gateway module uses anything here.
//! It reaches into the gateway's library only from `setup` (certificates, config check, the
//! crypto provider) and through the admin client.
//!
//! This module owns the command line (`BenchArgs`) and the run: set up, start the load, read the
//! CPU counters at the window's edges, collect, report. The parts:
//!
//! - `setup`: the target, its TLS trust, the credential; for the built-in run also the temp
//!   dir, the child gateway and its config.
//! - `backend`: the built-in backend server.
//! - `load`: the request loops (HTTP/1.1 keep-alive, HTTP/2, a handshake per request).
//! - `pace`: `--rate`'s open-loop schedule.
//! - `timeline`: `--timeline`'s line per second.
//! - `idle`: idle mode (open connections, hold them, read the gateway's RSS).
//! - `stats`: per-task counts, errors by kind, the latency histogram.
//! - `procfs`: CPU time and RSS from `/proc`.
//! - `report`: the table, the JSON object and the progress line.
//! - `insecure`: the accept-any-certificate verifier behind `--insecure`.

mod backend;
mod idle;
mod insecure;
mod load;
mod pace;
mod procfs;
mod report;
mod setup;
mod stats;
mod timeline;

pub use procfs::rss_kb;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http::Uri;
use http::header::HeaderValue;
use tokio::task::JoinSet;
use tokio::time::Instant;

use load::{Ctx, Live, Phase, ReqTemplate};
use pace::Pace;
use procfs::{CpuUse, Snapshot};
use report::{MirrorReport, Report};
use setup::Setup;
use stats::Stats;
use timeline::Timeline;

/// The request body of the peer benchmark (`bench/tools/body.json`, 203 bytes), so that numbers
/// compare with nginx and HAProxy driven by wrk.
pub const BODY: &str = r#"{"input_data":{"columns":["sepal_length","sepal_width","petal_length","petal_width"],"index":[0,1],"data":[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3]]},"params":{"model":"iris","version":"1"},"id":"req-000001"}"#;
/// Preset keys of the built-in gateway: the peer benchmark's, so a curl line works in both.
pub const KEY1: &str = "bench-primary-0123456789abcdef0123456789abcdef";
pub const KEY2: &str = "bench-secondary-fedcba9876543210fedcba9876543210";
/// Requests still in flight at the end of the window get this long before they are cut off
/// (they no longer count either way).
const GRACE: Duration = Duration::from_secs(2);

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scoring URL of a running gateway, e.g. https://127.0.0.1:8443/api/v1/service/iris/score
    /// (default: start a built-in backend and gateway and drive those).
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// What to measure.
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
    /// Built-in gateway: give the service a `by = "client"` rate limit that never refuses
    /// (1 000 000 per second, burst 1 000), to measure what the limiter costs.
    #[arg(long)]
    pub rate_limit: bool,
    /// Built-in gateway: `[runtime] worker_threads` (0: one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub gateway_threads: usize,
    /// Threads of the load generator [default: one per core].
    #[arg(long, value_name = "N")]
    pub client_threads: Option<usize>,
    /// Built-in gateway only: keep its state in this Redis (`redis://…` or `rediss://…`) instead
    /// of a file, under a throwaway prefix deleted after the run — to measure what the shared
    /// store costs a request (README, "Running several replicas").
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Built-in gateway: live deployments of the service. 1 is a plain `backends` service; 2 is
    /// blue and green with `traffic = { blue = 50, green = 50 }`, each on its own port of the
    /// built-in backend — to measure what the weighted draw costs a request.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub deployments: u8,
    /// Built-in gateway: mirror this percentage (1-50) of live requests to one more deployment
    /// (`candidate`, on a port of its own), and report the copies sent and their results — to
    /// measure what a mirror costs a live request.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=50))]
    pub mirror: Option<u8>,
    /// Open loop: start requests at this fixed rate (per second, warm-up included) instead of
    /// each task's next as soon as its last is answered; latency then counts from when a
    /// request was due. --connections (× --streams) bounds how many are in flight: give enough
    /// for rate × latency.
    #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Write one JSON line per measured second to FILE: requests, failures, latency p50/p99/max.
    #[arg(long, value_name = "FILE")]
    pub timeline: Option<PathBuf>,
    /// Request body file (default: the peer benchmark's 203-byte JSON).
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "{s:?} is not a positive number of requests per second"
        )),
    }
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

/// Runs a benchmark and prints its report (table or JSON) on stdout; fails when requests failed.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.duration.is_zero() && args.mode != Mode::Idle {
        bail!("--duration must be more than 0s");
    }
    if args.connections == Some(0) || args.streams == 0 || args.idle_conns == 0 {
        bail!("--connections, --streams and --idle-conns must be at least 1");
    }
    if args.mode == Mode::Idle && (args.rate.is_some() || args.timeline.is_some()) {
        bail!("--rate and --timeline are for the timed modes (keepalive, h2, handshake)");
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
    // A run with failed requests measured something other than what was asked: not a success
    // for a script (or CI) that runs it.
    let e = &report.stats.errors;
    if e.total() > 0 {
        let mut msg = format!(
            "{} request{} or connection{} failed ({})",
            e.total(),
            if e.total() == 1 { "" } else { "s" },
            if e.total() == 1 { "" } else { "s" },
            e.summary()
        );
        if let Some(h) = e.hint() {
            msg.push_str("; ");
            msg.push_str(h);
        }
        bail!(msg);
    }
    Ok(())
}

/// A request body file larger than this is refused (the gateway's default `max_body` is 100 MiB).
const MAX_BODY_FILE: u64 = 1 << 30;

async fn bench(args: &BenchArgs, client_threads: usize) -> anyhow::Result<Report> {
    let body = match &args.body {
        Some(p) => Bytes::from(
            crate::files::read_capped(p, MAX_BODY_FILE)
                .with_context(|| format!("cannot read {}", p.display()))?,
        ),
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
    let tls = setup::client_config(
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
        pace: args.rate.map(|r| Pace::new(r, start, end)),
        timeline: args.timeline.as_ref().map(|_| Arc::new(Timeline::new())),
    });
    let (stopped, stopped_rx) = tokio::sync::oneshot::channel();
    let timeline = match (&args.timeline, &ctx.timeline) {
        (Some(path), Some(tl)) => Some(tokio::spawn(
            tl.clone()
                .writer(path, warm_end, end, stopped_rx)
                .with_context(|| format!("--timeline {}", path.display()))?,
        )),
        _ => None,
    };
    let mut report = Report {
        mode: args.mode,
        url: setup.target.url.clone(),
        auth: setup.auth_label,
        connections,
        streams: args.streams,
        duration: args.duration,
        warmup: args.warmup,
        resume: args.resume,
        rate: args.rate,
        handshakes: 0,
        resumed: 0,
        client_threads,
        gateway: setup.gateway_label.clone(),
        gateway_pid: setup.gateway_pid,
        stats: Stats::new(),
        cpu: None,
        rss_kb: None,
        idle: None,
        deployments: if args.target.is_none() {
            Some(args.deployments)
        } else {
            None
        },
        mirror: None,
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
        report.idle = Some(idle::run(&ctx, &setup, args, &mut report.stats).await);
        drop(ctx);
        if let Some(note) = setup.finish().await {
            report.notes.push(note);
        }
        return Ok(report);
    }

    let mut set = JoinSet::new();
    for _ in 0..connections {
        let c = ctx.clone();
        match args.mode {
            Mode::Keepalive => set.spawn(load::h1_worker(c)),
            Mode::H2 => set.spawn(load::h2_worker(c)),
            Mode::Handshake => set.spawn(load::handshake_worker(c)),
            Mode::Idle => unreachable!(),
        };
    }
    let progress = (!args.quiet).then(|| tokio::spawn(load::progress(ctx.clone(), start)));
    tokio::time::sleep_until(warm_end).await;
    let counts = || setup.backend_counts.as_ref().map(|c| c.read());
    let before = Snapshot::take(setup.gateway_pid, setup.backend_tid);
    let counts_before = counts();
    tokio::time::sleep_until(end).await;
    let after = Snapshot::take(setup.gateway_pid, setup.backend_tid);
    let counts_after = counts();
    report.rss_kb = setup.gateway_pid.and_then(procfs::rss_kb);
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
        report::clear_progress();
    }
    let _ = stopped.send(());
    if let Some(w) = timeline {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => report
                .notes
                .push(format!("the timeline was cut short: {e}")),
            Err(e) => report
                .notes
                .push(format!("the timeline writer failed: {e}")),
        }
    }
    report.cpu = Some(CpuUse::between(&before, &after));
    if let (Some(p), Some((live0, copies0)), Some((live1, copies1))) =
        (args.mirror, counts_before, counts_after)
    {
        // Read once the load has stopped, so the scrape costs the window nothing.
        let results = match setup.mirror_results().await {
            Ok(r) => r,
            Err(e) => {
                report
                    .notes
                    .push(format!("the mirror's results could not be read: {e}"));
                vec![]
            }
        };
        report.mirror = Some(MirrorReport {
            percent: p,
            live: live1 - live0,
            copies: copies1 - copies0,
            results,
        });
    }
    report.handshakes = ctx.live.handshakes.load(Ordering::Relaxed);
    report.resumed = ctx.live.resumed.load(Ordering::Relaxed);
    drop(ctx);
    if let Some(note) = setup.finish().await {
        report.notes.push(note);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_peer_benchmark_body() {
        assert_eq!(BODY.len(), 203);
        assert!(serde_json::from_str::<serde_json::Value>(BODY).is_ok());
    }
}

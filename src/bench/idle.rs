//! Idle mode: open `--idle-conns` TLS connections (one request each, or none with
//! `--idle-fresh`), hold them for `--idle-hold`, and read the gateway's RSS before, while held,
//! and after they close: its memory per idle connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use super::BenchArgs;
use super::load::{Ctx, connect, request_h1};
use super::procfs::{clk_tck, cpu_ticks, rss_kb};
use super::report::{self, IdleReport};
use super::setup::Setup;
use super::stats::{Failure, Kind, Stats};

/// Idle mode: TLS handshakes in flight while opening (like tools/idle_conns.py).
const IDLE_CONCURRENCY: usize = 100;
/// Idle mode: the opening phase as a whole is cut off after this.
const IDLE_OPEN_LIMIT: Duration = Duration::from_secs(120);

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

/// Opens the connections (at most `IDLE_CONCURRENCY` handshakes at once), holds them, closes
/// them, and reads the gateway's RSS and CPU around each step.
pub(super) async fn run(
    ctx: &Arc<Ctx>,
    setup: &Setup,
    args: &BenchArgs,
    st: &mut Stats,
) -> IdleReport {
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
                report::progress(&format!(
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
        report::clear_progress();
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

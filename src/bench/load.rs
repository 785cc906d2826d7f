//! The load: the shared context of a run (target, TLS config, request template, time window,
//! live counters) and the request loops of the timed modes — HTTP/1.1 keep-alive, HTTP/2
//! streams, and a new TCP + TLS connection per request — plus the progress line's sampler.
//!
//! Every connect and request is bounded by `--timeout` and by the run's hard end; each task keeps
//! its own `Stats`, merged when the run ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::pace::Pace;
use super::report;
use super::stats::{Failure, Kind, Stats, chain};
use super::timeline::Timeline;

/// After a failed connect, a task waits this long before the next try (no hot loop on a dead
/// target).
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

pub(super) struct Phase {
    pub(super) warm_end: Instant,
    pub(super) end: Instant,
    /// Nothing runs past this: requests in flight at `end` are cut off here.
    pub(super) hard_end: Instant,
}

/// Counters for the progress line (everything, warm-up included).
#[derive(Default)]
pub(super) struct Live {
    pub(super) ok: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) handshakes: AtomicU64,
    pub(super) resumed: AtomicU64,
}

pub(super) struct Ctx {
    pub(super) addr: SocketAddr,
    pub(super) server_name: ServerName<'static>,
    pub(super) tls: Arc<rustls::ClientConfig>,
    pub(super) req: ReqTemplate,
    pub(super) phase: Phase,
    pub(super) timeout: Duration,
    pub(super) streams: usize,
    pub(super) live: Live,
    /// `--rate`: the open-loop schedule (`None`: closed loop).
    pub(super) pace: Option<Pace>,
    /// `--timeline`: the current second's outcomes.
    pub(super) timeline: Option<Arc<Timeline>>,
}

impl Ctx {
    fn deadline(&self, from: Instant) -> Instant {
        (from + self.timeout).min(self.phase.hard_end)
    }

    fn running(&self) -> bool {
        Instant::now() < self.phase.end && !self.pace.as_ref().is_some_and(Pace::exhausted)
    }

    /// When the next request starts, `None` once the run is over: now (closed loop), or the next
    /// slot of the `--rate` schedule, waited for (open loop: its latency counts from the slot).
    async fn next_start(&self) -> Option<Instant> {
        match &self.pace {
            None => self.running().then(Instant::now),
            Some(p) => p.next().await,
        }
    }

    /// The request due at `t` is already past its deadline (a paced run that fell behind by
    /// more than `--timeout`): counted as a timeout without sending it or touching the
    /// connection, so that an overloaded run measures its queue, not a storm of reconnects.
    fn overdue<T>(&self, st: &mut Stats, t: Instant) -> bool {
        if self.pace.is_none() || Instant::now() < self.deadline(t) {
            return false;
        }
        let f = Failure::new(
            Kind::Timeout,
            "fell behind the --rate schedule by --timeout",
        );
        self.record::<T>(st, t, &Err(f));
        true
    }

    async fn backoff(&self) {
        tokio::time::sleep_until((Instant::now() + CONNECT_BACKOFF).min(self.phase.end)).await;
    }

    /// Records one outcome that began at `t0`: always in the live counters, and in `st` if it
    /// completed inside the measured window.
    pub(super) fn record<T>(&self, st: &mut Stats, t0: Instant, r: &Result<T, Failure>) {
        let now = Instant::now();
        let live = if r.is_ok() {
            &self.live.ok
        } else {
            &self.live.errors
        };
        live.fetch_add(1, Ordering::Relaxed);
        if now < self.phase.warm_end || now >= self.phase.end {
            return;
        }
        st.add(now - t0, r);
        if let Some(tl) = &self.timeline {
            tl.add(now - t0, r);
        }
    }
}

pub(super) struct ReqTemplate {
    pub(super) h2: bool,
    pub(super) uri: Uri,
    pub(super) host: HeaderValue,
    pub(super) auth: Option<HeaderValue>,
    pub(super) body: Bytes,
    /// `Connection: close` (handshake mode).
    pub(super) close: bool,
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

pub(super) async fn connect(ctx: &Ctx) -> Result<TlsStream<TcpStream>, Failure> {
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

pub(super) async fn request_h1(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    req: &ReqTemplate,
) -> Result<bool, Failure> {
    sender.ready().await.map_err(Failure::hyper)?;
    exchange(sender.send_request(req.build())).await
}

type H1Connection = http1::Connection<TokioIo<TlsStream<TcpStream>>, Full<Bytes>>;

/// An open HTTP/1.1 client connection; `conn` is driven by the task that uses it.
struct H1Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    conn: std::pin::Pin<Box<H1Connection>>,
    /// The connection future has ended (the server closed it).
    done: bool,
}

async fn open_h1(ctx: &Ctx, t0: Instant) -> Result<H1Conn, Failure> {
    let tls = connect_bounded(ctx, t0).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .map_err(Failure::hyper)?;
    Ok(H1Conn {
        sender,
        conn: Box::pin(conn),
        done: false,
    })
}

/// Keep-alive: one connection, one request in flight; reconnects when the connection breaks.
/// Paced (`--rate`), the connection is driven while the task waits for its next slot, so that a
/// close by the server is seen before the next request rather than failing it.
pub(super) async fn h1_worker(ctx: Arc<Ctx>) -> Stats {
    let mut st = Stats::new();
    let mut open: Option<H1Conn> = None;
    loop {
        let slot = match open.as_mut() {
            Some(c) if !c.done && ctx.pace.is_some() => {
                with_conn(c.conn.as_mut(), &mut c.done, ctx.next_start()).await
            }
            _ => ctx.next_start().await,
        };
        let Some(mut t) = slot else { break };
        if ctx.overdue::<()>(&mut st, t) {
            continue;
        }
        if open.as_ref().is_some_and(|c| c.done) {
            open = None;
        }
        let c = match open.as_mut() {
            Some(c) => c,
            None => match open_h1(&ctx, t).await {
                Ok(c) => {
                    if ctx.pace.is_none() {
                        // Closed loop: the handshake is not part of the request's latency.
                        t = Instant::now();
                    }
                    open.insert(c)
                }
                Err(f) => {
                    ctx.record::<()>(&mut st, t, &Err(f));
                    ctx.backoff().await;
                    continue;
                }
            },
        };
        let one = tokio::time::timeout_at(ctx.deadline(t), request_h1(&mut c.sender, &ctx.req));
        let r = with_conn(c.conn.as_mut(), &mut c.done, one)
            .await
            .unwrap_or_else(|_| Err(Failure::new(Kind::Timeout, "request timed out")));
        let again = match &r {
            Ok(close) => !close,
            Err(f) => !f.reconnect(),
        };
        ctx.record(&mut st, t, &r);
        if c.done || !again {
            open = None;
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
pub(super) async fn h2_worker(ctx: Arc<Ctx>) -> Stats {
    let mut st = Stats::new();
    while ctx.running() {
        let t0 = Instant::now();
        let tls = match connect_bounded(&ctx, t0).await {
            Ok(s) => s,
            Err(f) => {
                ctx.record::<()>(&mut st, t0, &Err(f));
                ctx.backoff().await;
                continue;
            }
        };
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            let f = Failure::new(Kind::Tls, "the server did not choose h2 (ALPN)");
            ctx.record::<()>(&mut st, t0, &Err(f));
            ctx.backoff().await;
            continue;
        }
        let (sender, conn) = match http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await {
            Ok(x) => x,
            Err(e) => {
                ctx.record::<()>(&mut st, t0, &Err(Failure::hyper(e)));
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
    while let Some(t) = ctx.next_start().await {
        if ctx.overdue::<()>(&mut st, t) {
            continue;
        }
        let one = async {
            sender.ready().await.map_err(Failure::hyper)?;
            exchange(sender.send_request(ctx.req.build())).await
        };
        let r = tokio::time::timeout_at(ctx.deadline(t), one)
            .await
            .unwrap_or_else(|_| Err(Failure::new(Kind::Timeout, "request timed out")));
        ctx.record(&mut st, t, &r);
        if sender.is_closed() {
            break;
        }
    }
    st
}

/// A new TCP + TLS connection per request (`Connection: close`); latency includes the handshake.
pub(super) async fn handshake_worker(ctx: Arc<Ctx>) -> Stats {
    let mut st = Stats::new();
    while let Some(t0) = ctx.next_start().await {
        if ctx.overdue::<()>(&mut st, t0) {
            continue;
        }
        let r = match tokio::time::timeout_at(ctx.deadline(t0), one_connection(&ctx, t0)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::new(
                Kind::Timeout,
                "connection + request timed out",
            )),
        };
        let back_off = matches!(&r, Err(f) if matches!(f.kind, Kind::Connect | Kind::Tls));
        ctx.record(&mut st, t0, &r);
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

/// The progress line, once a second until aborted: time, phase, the last second's rate, errors.
pub(super) async fn progress(ctx: Arc<Ctx>, start: Instant) {
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
        report::progress(&format!(
            "{:5.1}s / {total:.1}s  {phase:9}  {rate:9.0} req/s  {errors} errors",
            (now - start).as_secs_f64()
        ));
    }
}

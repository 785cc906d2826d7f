//! HTTP on an established TLS connection: HTTP/1.1 or HTTP/2 by ALPN, hyper's builders
//! configured from the limits, and each request handed to `gateway::handle` under the
//! connection's timers (`timers`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{HttpService, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::park::{self, PARK_AFTER, Parked, Stream};
use super::timers::{Activity, Drive, Expired, Guarded, InUse, Outcome, Tracked};
use super::{Front, Phase, stopping};
use crate::client::ConnIdentity;
use crate::config::Limits;
use crate::gateway;
use crate::state::Shared;

/// HTTP/2 PINGs find dead peers behind NATs that silently dropped the connection.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams the gateway itself may reset on one HTTP/2 connection before it is closed (h2's
/// defence against CVE-2023-44487-style floods, RUSTSEC-2024-0003). On the normal path the
/// gateway resets none: a request body is read to its end even after the answer is sent
/// (`proxy::body`), so this only counts refusals of abusive streams.
const H2_MAX_LOCAL_RESETS: usize = 1024;
/// Streams a client may open and reset before they are accepted (the rapid-reset attack);
/// h2's own default.
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Lingering close (`linger`): how long the client may go without sending before the gateway
/// closes, and how long it may keep sending.
const LINGER_QUIET: Duration = Duration::from_secs(2);
const LINGER_MAX: Duration = Duration::from_secs(10);
/// hyper's smallest allowed read buffer; the header limit may ask for more.
const MIN_READ_BUF: usize = 8 * 1024;
/// hyper's own header-count limit for HTTP/1.1 (`hyper::proto::h1::role::DEFAULT_MAX_HEADERS`).
/// Left unset at this value: hyper then parses into an inline array, where any explicit limit,
/// even the same number, makes it fill a fresh `SmallVec` of that size for every request
/// (about 1 700 instructions, 2 % of a keep-alive request; BENCHMARKS.md).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// hyper connection builders, configured once from the limits.
pub(super) struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Builders {
    pub(super) fn new(limits: &Limits) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            // Our own header-read timer replaces hyper's (see the module comment).
            .header_read_timeout(None)
            .max_header_size(limits.max_header_size)
            .max_buf_size(limits.max_header_size.max(MIN_READ_BUF))
            .keep_alive(true);
        if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            h1.max_headers(limits.max_headers);
        }
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
            .max_header_list_size(limits.max_header_size as u32)
            .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
        Builders { h1, h2 }
    }
}

/// HTTP/1.1 or HTTP/2 (by ALPN) over an established TLS connection, until it closes.
///
/// Future sizes are idle memory: every connection holds its own for its whole life. So what a
/// connection needs only while hyper serves it is boxed (`serve_h2`, `h1_session`), and an HTTP/1.1
/// connection waiting for its first request, or parked, holds none of it; futures are built in
/// `let` statements, because temporaries inside an `.await` statement stay in the state.
pub(super) async fn serve_http(
    front: &Front,
    tls: Box<TlsStream<TcpStream>>,
    conn: ConnIdentity,
    phase: &mut watch::Receiver<Phase>,
) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let act = Arc::new(Activity::new(
        h2,
        front.shared.metrics.requests_cancelled.clone(),
    ));
    let peer = conn.peer;
    // HTTP/1.1 clients often connect ahead of need; hyper allocates its buffers (16 KiB) when
    // it starts, so it starts only once the first request begins to arrive.
    if !h2 && !first_bytes(front, &tls, peer, phase).await {
        return;
    }
    let conn = Arc::new(conn);
    let shared = front.shared.clone();
    let a = act.clone();
    let mut stream = TokioIo::new(Tracked::new(tls, act.clone()));
    if h2 {
        // hyper runs every HTTP/2 stream as a task of its own, and the request's future is moved
        // several times on its way into it (into hyper's stream future, into `tokio::spawn`, into
        // the task's cell): boxed, each move copies a pointer instead of the whole future.
        let svc = service_fn(move |req| {
            Box::pin(serve_request(shared.clone(), conn.clone(), a.clone(), req))
        });
        let serve = Box::pin(serve_h2(front, &act, peer, stream, svc, phase));
        serve.await;
        return;
    }
    let mut svc =
        service_fn(move |req| serve_request(shared.clone(), conn.clone(), a.clone(), req));
    loop {
        let session = Box::pin(h1_session(front, &act, peer, stream, svc, phase));
        (stream, svc) = match session.await {
            Some(parked) => parked,
            None => return,
        };
        if !stream.inner().unread.is_empty() {
            // The start of a pipelined request that hyper had read: it takes the connection
            // again at once.
            continue;
        }
        let mut wait = Parked::new(&mut stream, &front.shared.metrics.connections_parked);
        let run =
            drive(front, &act, peer, None).run(Pin::new(&mut wait), |w| w.close(), |_| {}, phase);
        if run.await != Outcome::Ended || wait.closed() {
            return;
        }
    }
}

/// The connection's timers and signals (`timers::Drive`).
fn drive<'a>(
    front: &'a Front,
    act: &'a Activity,
    peer: SocketAddr,
    park_after: Option<Duration>,
) -> Drive<'a> {
    Drive {
        act,
        park_after,
        limits: &front.limits,
        metrics: &front.shared.metrics,
        peer,
        pressure: front.pressure.subscribe(),
    }
}

async fn serve_h2<S>(
    front: &Front,
    act: &Activity,
    peer: SocketAddr,
    stream: Stream,
    svc: S,
    phase: &mut watch::Receiver<Phase>,
) where
    S: HttpService<Incoming, ResBody = Guarded<gateway::RespBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    let mut conn = pin!(front.builders.h2.serve_connection(stream, svc));
    let run =
        drive(front, act, peer, None).run(conn.as_mut(), |c| c.graceful_shutdown(), |_| {}, phase);
    run.await;
}

/// hyper serving an HTTP/1.1 connection until it closes (`None`), or is parked: then the stream
/// and the service are handed back, and hyper's state and buffers are gone (`park`).
async fn h1_session<S>(
    front: &Front,
    act: &Activity,
    peer: SocketAddr,
    stream: Stream,
    svc: S,
    phase: &mut watch::Receiver<Phase>,
) -> Option<(Stream, S)>
where
    S: HttpService<Incoming, ResBody = Guarded<gateway::RespBody>, Error = Infallible> + Unpin,
{
    let mut hyper = front.builders.h1.serve_connection(stream, svc);
    let run = drive(front, act, peer, Some(PARK_AFTER)).run(
        Pin::new(&mut hyper),
        |c| park::end(act, c, false),
        |c| park::end(act, c, true),
        phase,
    );
    match run.await {
        Outcome::Parked => {}
        end @ (Outcome::Ended | Outcome::Failed) => {
            let linger = linger(hyper.into_parts().io, act, end == Outcome::Failed, phase);
            linger.await;
            return None;
        }
        Outcome::Dropped => return None,
    }
    act.parking.store(false, Ordering::Relaxed);
    let parts = hyper.into_parts();
    let mut stream = parts.io;
    // Bytes hyper read but did not use (a pipelined head cut short) are read again first; an
    // empty buffer is dropped, and hyper's read buffer with it.
    if !parts.read_buf.is_empty() {
        stream.inner_mut().unread = parts.read_buf;
    }
    Some((stream, parts.service))
}

/// After hyper has closed an HTTP/1.1 connection on which the client may still be sending (an
/// answer that left the request's body on the wire, `Activity::body_left`, or a request hyper
/// refused), reads and throws away what still comes, until the client closes or goes quiet for
/// `LINGER_QUIET` (at most `LINGER_MAX`): closing a socket with unread data resets the
/// connection, and a client still writing its body may then lose the answer it was sent. This is
/// nginx's `lingering_close`. Not when the client closed first, nor during a drain.
async fn linger(
    mut stream: Stream,
    act: &Activity,
    failed: bool,
    phase: &mut watch::Receiver<Phase>,
) {
    if stream.inner().eof || !(failed || act.body_left.load(Ordering::Relaxed)) {
        return;
    }
    let deadline = Instant::now() + LINGER_MAX;
    let stopping = stopping(phase);
    let mut stopping = pin!(stopping);
    // hyper has sent TLS close_notify and shut the TCP write side down, unless it ended on an
    // error: the client reads its answer, then the end of the stream.
    if failed {
        let shutdown = tokio::time::timeout(LINGER_QUIET, stream.inner_mut().shutdown());
        if shutdown.await.is_err() {
            return;
        }
    }
    let tcp = &stream.inner().inner.get_ref().0;
    loop {
        let quiet = tokio::time::sleep_until(deadline.min(Instant::now() + LINGER_QUIET));
        tokio::select! {
            r = tcp.readable() => if r.is_err() { return },
            _ = quiet => return,
            _ = &mut stopping => return,
        }
        if !unread_bytes(&stream) {
            return;
        }
    }
}

/// Reads and throws away what the socket holds, up to 64 KiB a call (the worker has other
/// connections to serve); `false` once the client has closed (or the socket failed). A wake-up
/// with nothing to read (readiness left over from hyper's last read) is not the end.
fn unread_bytes(stream: &Stream) -> bool {
    let tcp = &stream.inner().inner.get_ref().0;
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match tcp.try_read(&mut sink) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
    true
}

/// One request: `gateway::handle`, with the request counted as in progress on its connection
/// (for the idle timer) until its response body has been sent.
async fn serve_request(
    shared: Arc<Shared>,
    conn: Arc<ConnIdentity>,
    act: Arc<Activity>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Guarded<gateway::RespBody>>, Infallible> {
    let in_use = InUse::begin(act.clone());
    let resp = gateway::handle(shared, conn, req).await?;
    // The gateway closes after an answer only when the request's body is left on the wire
    // (`gateway::respond::refusal`); a backend's `Connection` header never reaches the client.
    if !resp.status().is_success() && resp.headers().contains_key(http::header::CONNECTION) {
        act.body_left.store(true, Ordering::Relaxed);
    }
    Ok(resp.map(|body| Guarded::new(body, in_use)))
}

/// Waits, under the header-read timer and the drain, until an HTTP/1.1 connection has something
/// to read: bytes on the socket, or plaintext rustls already holds (sent with the handshake's
/// last flight). `false`: the gateway is draining or the client sent nothing in time.
async fn first_bytes(
    front: &Front,
    tls: &TlsStream<TcpStream>,
    peer: SocketAddr,
    phase: &mut watch::Receiver<Phase>,
) -> bool {
    let (tcp, session) = tls.get_ref();
    // rustls decrypts every complete record it has read, so unread data is either plaintext
    // (then it does not want to read) or still in the socket.
    if !session.wants_read() {
        return true;
    }
    // The header-read timer runs from the end of the handshake, which was just now.
    let deadline = Instant::now() + front.limits.header_read_timeout;
    let stopping = stopping(phase);
    tokio::select! {
        // An error is hyper's to find and report.
        _ = tcp.readable() => true,
        _ = stopping => false,
        _ = tokio::time::sleep_until(deadline) => {
            Expired::HeaderRead.count(&front.shared.metrics, peer);
            false
        }
    }
}

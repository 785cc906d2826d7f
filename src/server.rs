//! Listeners and connections, the front of a request's path:
//!
//! ```text
//! accept (listener allow/deny, connection cap) → PROXY v2 header (trusted proxies only)
//!   → TLS (SNI picks the certificate) → HTTP/1.1 or HTTP/2 by ALPN → gateway::handle
//! ```
//!
//! plus the front-side limits and the graceful drain.
//!
//! Limits, all from `[limits]`:
//! - `tls_handshake_timeout` bounds the PROXY header and the TLS handshake together.
//! - `header_read_timeout` (HTTP/1.1): from the end of the TLS handshake, or from the first byte
//!   of a later request on a keep-alive connection, to a complete request head. A slowloris
//!   connection (a head that trickles in, or nothing at all after TLS) is closed when it runs
//!   out, without an answer (the contract allows a closed connection there).
//! - `idle_timeout`: a connection with no request in progress — and, on HTTP/1.1, no byte of a
//!   new one — is closed this long after its last response ended (HTTP/1.1: closed with TLS
//!   `close_notify`; HTTP/2: GOAWAY). The two timers are independent. hyper's own
//!   `header_read_timeout` is turned off because its timer also runs while a keep-alive
//!   connection waits for its next request, which would cap every idle HTTP/1.1 connection at
//!   the (much shorter) header timeout.
//! - `idle_timeout` is also the send timeout: a connection whose writes to the client have been
//!   blocked that long (the client stopped reading its response) is dropped
//!   (`connection_timeouts{reason="send"}`), which frees the backend connection behind it.
//!   HTTP/2 flow control that never opens is not covered (no write blocks; hyper just waits).
//! - `max_header_size`, `max_headers`: hyper answers a larger HTTP/1.1 head with a bare 431 and
//!   closes the connection; on HTTP/2 the header list limit is advertised in SETTINGS and the h2
//!   layer answers a larger list with 431 on that stream (the connection stays).
//! - `max_connections`: counted across all listeners, from accept to close. At the cap a new
//!   connection is accepted and closed at once, before TLS (`connections_refused{reason=
//!   "max_connections"}`): the client learns immediately, instead of waiting unseen in the kernel
//!   backlog, and accepting goes on so a closed connection frees a slot at once.
//! - `h2_max_concurrent_streams`: advertised per HTTP/2 connection.
//! - `max_in_flight`: requests across all connections; `gateway::admit` answers 503 beyond it.
//!
//! Network policy: listener `allow`/`deny` is checked on the TCP peer at accept, before any TLS
//! work. With `listen.proxy_protocol = "v2"`, a peer in `listen.trusted_proxies` must open with a
//! PROXY v2 header (`proxy_protocol`); the policy is then checked on the client the header names,
//! and that client is what policy, logs and `X-Forwarded-For` see (`ConnInfo::client`). A LOCAL
//! header (the proxy's own health check) keeps the proxy as the client and is admitted because the
//! proxy is trusted. A trusted peer that sends no valid header is closed. From any other peer a
//! PROXY header is not read: its bytes reach the TLS layer, which fails the handshake, so a forged
//! header only gets its sender disconnected.
//!
//! Drain (`Server::shutdown`): `/readyz` turns 503; the scoring listeners close (new connections
//! are refused); connections still in their handshake are dropped; idle HTTP/1.1 connections close
//! and busy ones close after their response; HTTP/2 connections get GOAWAY and finish their
//! streams. It ends as soon as the last connection is gone, or at the drain deadline, when the rest
//! are closed. The admin listener stops last, so `/readyz` answers 503 throughout the drain.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{Config, Limits};
use crate::gateway::{self, ConnInfo};
use crate::metrics::Metrics;
use crate::proxy_protocol;
use crate::state::{Gateway, canonical_ip};

/// HTTP/2 PINGs find dead peers behind NATs that silently dropped the connection.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// hyper's smallest allowed read buffer; the header limit may ask for more.
const MIN_READ_BUF: usize = 8 * 1024;
/// A connection closed for idleness gets this long to finish closing by itself (an HTTP/2 GOAWAY
/// and PING round trip, TLS close_notify) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// After the drain deadline, connections are told to close; this bounds the wait for that.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// The admin listener stops after the drain; its open requests (a scrape, a reload) get this long.
const ADMIN_STOP_WAIT: Duration = Duration::from_secs(2);

/// Where the scoring side is in its life; connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Stop accepting; let requests in progress finish.
    Draining,
    /// The drain deadline passed: close what is left.
    Closing,
}

/// A running gateway: its bound addresses and the handle to stop it.
pub struct Server {
    pub gateway: Arc<Gateway>,
    /// Bound scoring listener addresses (useful when the config asked for port 0).
    pub addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    phase: watch::Sender<Phase>,
    admin_stop: watch::Sender<bool>,
    accept_tasks: Vec<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
    watcher: Option<JoinHandle<()>>,
    /// Every connection task holds a clone; when all are gone, `drained` yields `None`.
    open: mpsc::Sender<()>,
    drained: mpsc::Receiver<()>,
}

/// What every connection of every scoring listener shares.
struct Front {
    gw: Arc<Gateway>,
    acceptor: TlsAcceptor,
    limits: Limits,
    builders: Builders,
    proxy_protocol: bool,
    /// `limits.max_connections`, across all listeners.
    slots: Arc<Semaphore>,
}

/// Builds the gateway, binds every listener and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    let admin_cfg = config.admin.clone();
    let addresses = config.listen.addresses.clone();
    let limits = config.limits.clone();
    let proxy_protocol = config.listen.proxy_protocol;
    let watch_files = config.server.watch;
    let gw = Gateway::new(config)?;
    let mut listeners = Vec::new();
    for a in &addresses {
        let l = TcpListener::bind(a)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {a}: {e}"))?;
        listeners.push(l);
    }
    let admin = crate::admin::bind(gw.clone(), &admin_cfg).await?;
    let admin_addr = admin.local_addr;
    let (admin_stop, admin_rx) = watch::channel(false);
    let admin_task = tokio::spawn(admin.serve(admin_rx));

    let front = Arc::new(Front {
        gw: gw.clone(),
        acceptor: TlsAcceptor::from(gw.tls_config.clone()),
        builders: Builders::new(&limits),
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        limits,
        proxy_protocol,
    });
    let (phase, _) = watch::channel(Phase::Serving);
    let (open, drained) = mpsc::channel(1);
    let mut addrs = Vec::new();
    let mut accept_tasks = Vec::new();
    for l in listeners {
        addrs.push(l.local_addr()?);
        accept_tasks.push(tokio::spawn(accept_loop(
            front.clone(),
            l,
            phase.subscribe(),
            open.clone(),
        )));
    }
    let _ = gw.bound.set(addrs.clone());
    let watcher = watch_files.then(|| crate::serve::spawn_watcher(gw.clone()));
    gw.ready.store(true, Ordering::SeqCst);
    for a in &addrs {
        tracing::info!(address = %a, "scoring listener ready");
    }
    Ok(Server {
        gateway: gw,
        addrs,
        admin_addr,
        phase,
        admin_stop,
        accept_tasks,
        admin_task,
        watcher,
        open,
        drained,
    })
}

impl Server {
    /// Graceful stop: not ready, stop accepting, let in-flight requests finish (idle keep-alive
    /// connections close, HTTP/2 clients get GOAWAY), at most `drain_timeout`. Returns as soon as
    /// no connection is left, or at the deadline after closing the rest. The admin listener
    /// (`/readyz` answering 503) stops last.
    pub async fn shutdown(self, drain_timeout: Duration) {
        let Server {
            gateway: gw,
            phase,
            admin_stop,
            accept_tasks,
            admin_task,
            watcher,
            open,
            mut drained,
            ..
        } = self;
        gw.ready.store(false, Ordering::SeqCst);
        let _ = phase.send(Phase::Draining);
        for t in accept_tasks {
            let _ = t.await;
        }
        drop(open);
        let started = Instant::now();
        tracing::info!(
            connections = gw.metrics.connections.get(),
            in_flight = gw.in_flight.load(Ordering::Relaxed),
            drain_timeout = ?drain_timeout,
            "listeners closed; draining"
        );
        if tokio::time::timeout(drain_timeout, drained.recv())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = gw.metrics.connections.get(),
                in_flight = gw.in_flight.load(Ordering::Relaxed),
                "drain timeout reached; closing remaining connections"
            );
            let _ = phase.send(Phase::Closing);
            let _ = tokio::time::timeout(CLOSE_WAIT, drained.recv()).await;
        } else {
            tracing::info!(elapsed = ?started.elapsed(), "drained");
        }
        if let Some(w) = watcher {
            w.abort();
        }
        let _ = admin_stop.send(true);
        let _ = tokio::time::timeout(ADMIN_STOP_WAIT, admin_task).await;
    }
}

fn refuse(metrics: &Metrics, reason: &str) {
    metrics
        .connections_refused
        .with_label_values(&[reason])
        .inc();
}

async fn accept_loop(
    front: Arc<Front>,
    listener: TcpListener,
    mut phase: watch::Receiver<Phase>,
    open: mpsc::Sender<()>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = phase.changed() => break,
        };
        let snap = front.gw.snapshot();
        // Behind a trusted proxy the policy judges the client its PROXY header names.
        let via_proxy = front.proxy_protocol && snap.is_trusted_proxy(peer.ip());
        if !via_proxy && !snap.listener_policy.admits(peer.ip()) {
            refuse(&front.gw.metrics, "policy");
            continue;
        }
        drop(snap);
        let Ok(permit) = front.slots.clone().try_acquire_owned() else {
            refuse(&front.gw.metrics, "max_connections");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(
            front.clone(),
            tcp,
            peer,
            via_proxy,
            permit,
            phase.clone(),
            open.clone(),
        ));
    }
    // Dropping the listener here is what refuses new connections during the drain.
}

/// hyper connection builders, configured once from the limits.
struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &Limits) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            // Our own header-read timer replaces hyper's (see the module comment).
            .header_read_timeout(None)
            .max_headers(limits.max_headers)
            .max_header_size(limits.max_header_size)
            .max_buf_size(limits.max_header_size.max(MIN_READ_BUF))
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(limits.max_header_size as u32)
            .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
        Builders { h1, h2 }
    }
}

/// One client connection, from accept to close.
async fn connection(
    front: Arc<Front>,
    tcp: TcpStream,
    peer: SocketAddr,
    via_proxy: bool,
    _slot: OwnedSemaphorePermit,
    mut phase: watch::Receiver<Phase>,
    _open: mpsc::Sender<()>,
) {
    let metrics = &front.gw.metrics;
    metrics.connections.inc();
    // Boxed: the handshake's state is large and lives only until the handshake ends, so it
    // must not stay part of this task's future for the connection's whole life (idle memory).
    let setup = tokio::time::timeout(
        front.limits.tls_handshake_timeout,
        Box::pin(handshake(&front, tcp, peer, via_proxy)),
    );
    let stopping = stopping(&mut phase);
    // A connection still shaking hands has no request to finish: the drain drops it.
    let established = tokio::select! {
        r = setup => match r {
            Ok(r) => r,
            Err(_) => {
                metrics.tls_handshake_failures.with_label_values(&["timeout"]).inc();
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        },
        _ = stopping => None,
    };
    if let Some((tls, client)) = established {
        serve_http(&front, tls, ConnInfo { client, peer }, &mut phase).await;
    }
    metrics.connections.dec();
}

/// The PROXY header (from a trusted proxy) and the TLS handshake. `None` when the connection was
/// refused or failed; the reason is counted.
async fn handshake(
    front: &Front,
    mut tcp: TcpStream,
    peer: SocketAddr,
    via_proxy: bool,
) -> Option<(Box<TlsStream<TcpStream>>, SocketAddr)> {
    let metrics = &front.gw.metrics;
    let mut client = peer;
    if via_proxy {
        match proxy_protocol::read_header(&mut tcp).await {
            Ok(proxy_protocol::Header::Proxy { source, .. }) => {
                client = SocketAddr::new(canonical_ip(source.ip()), source.port());
                if !front.gw.snapshot().listener_policy.admits(client.ip()) {
                    refuse(metrics, "policy");
                    return None;
                }
            }
            Ok(proxy_protocol::Header::Local) => {}
            Err(e) => {
                refuse(metrics, "proxy_protocol");
                tracing::debug!(%peer, error = %e, "no valid PROXY header from a trusted proxy");
                return None;
            }
        }
    }
    match front.acceptor.accept(tcp).await {
        Ok(tls) => {
            metrics.tls_handshakes.inc();
            // Boxed: rustls' connection state is 1.2 KB, and moving it through the futures that
            // follow would leave a copy's room in each of them.
            Some((Box::new(tls), client))
        }
        Err(e) => {
            let reason = if e.kind() == io::ErrorKind::InvalidData {
                "protocol"
            } else {
                "io"
            };
            metrics
                .tls_handshake_failures
                .with_label_values(&[reason])
                .inc();
            tracing::debug!(%peer, %client, error = %e, "TLS handshake failed");
            None
        }
    }
}

/// Resolves once the scoring side stops serving (a drain begins, or the server is gone).
async fn stopping(phase: &mut watch::Receiver<Phase>) {
    while *phase.borrow_and_update() == Phase::Serving {
        if phase.changed().await.is_err() {
            break;
        }
    }
}

/// HTTP/1.1 or HTTP/2 (by ALPN) over an established TLS connection, until it closes.
async fn serve_http(
    front: &Front,
    tls: Box<TlsStream<TcpStream>>,
    info: ConnInfo,
    phase: &mut watch::Receiver<Phase>,
) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let act = Arc::new(Activity::new(h2));
    // HTTP/1.1 clients often connect ahead of need; hyper allocates its buffers (16 KiB) when
    // it starts, so it starts only once the first request begins to arrive.
    if !h2 && !first_bytes(front, &tls, info.peer, phase).await {
        return;
    }
    let io = TokioIo::new(Tracked {
        inner: tls,
        act: act.clone(),
    });
    let peer = info.peer;
    let info = Arc::new(info);
    let gw = front.gw.clone();
    let a = act.clone();
    let svc = service_fn(move |req| serve_request(gw.clone(), info.clone(), a.clone(), req));
    let ctx = Drive {
        act: &act,
        limits: &front.limits,
        metrics: &front.gw.metrics,
        peer,
    };
    // Future sizes are idle memory: every connection holds its own for its whole life, and hyper
    // holds room for one `serve_request` future. So each protocol's connection is pinned in its
    // own branch (an HTTP/1.1 connection has no room for HTTP/2 state), and futures are built in
    // `let` statements, because temporaries inside an `.await` statement stay in the state.
    if h2 {
        let mut conn = pin!(front.builders.h2.serve_connection(io, svc));
        let run = ctx.run(conn.as_mut(), |c| c.graceful_shutdown(), phase);
        run.await;
    } else {
        let mut conn = pin!(front.builders.h1.serve_connection(io, svc));
        let run = ctx.run(conn.as_mut(), |c| c.graceful_shutdown(), phase);
        run.await;
    }
}

/// One request: `gateway::handle`, with the request counted as in progress on its connection
/// (for the idle timer) until its response body has been sent.
async fn serve_request(
    gw: Arc<Gateway>,
    info: Arc<ConnInfo>,
    act: Arc<Activity>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Guarded<gateway::RespBody>>, Infallible> {
    let in_use = InUse::begin(act);
    let resp = gateway::handle(gw, info, req).await?;
    Ok(resp.map(|body| Guarded {
        body,
        _in_use: in_use,
    }))
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
            Expired::HeaderRead.count(&front.gw.metrics, peer);
            false
        }
    }
}

struct Drive<'a> {
    act: &'a Activity,
    limits: &'a Limits,
    metrics: &'a Metrics,
    peer: SocketAddr,
}

impl Drive<'_> {
    /// Runs a hyper connection to its end, applying the header-read and idle timers and the
    /// drain phases. `graceful` starts hyper's graceful close of that connection.
    async fn run<C>(
        &self,
        mut conn: Pin<&mut C>,
        graceful: impl Fn(Pin<&mut C>),
        phase: &mut watch::Receiver<Phase>,
    ) where
        C: Future<Output = hyper::Result<()>>,
    {
        let mut closing = false;
        let mut phase_open = true;
        // Set when a timer closed the connection: the time it gets to finish closing.
        let mut backstop: Option<Instant> = None;
        if *phase.borrow_and_update() != Phase::Serving {
            graceful(conn.as_mut());
            closing = true;
        }
        // One timer for the connection's life, re-armed only when it fires (`Activity::check`
        // says when to look next), so requests do not touch the timer wheel.
        let timer = tokio::time::sleep_until(Instant::now());
        let mut timer = pin!(timer);
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                changed = phase.changed(), if phase_open => {
                    let now = match changed {
                        Ok(()) => *phase.borrow_and_update(),
                        // The server handle was dropped without a shutdown: stop gracefully.
                        Err(_) => {
                            phase_open = false;
                            Phase::Draining
                        }
                    };
                    match now {
                        Phase::Serving => {}
                        Phase::Draining if !closing => {
                            graceful(conn.as_mut());
                            closing = true;
                        }
                        Phase::Draining => {}
                        Phase::Closing => return,
                    }
                }
                () = timer.as_mut() => {
                    if let Some(at) = backstop {
                        if Instant::now() >= at {
                            return;
                        }
                        timer.as_mut().reset(at);
                        continue;
                    }
                    match self.act.check(self.limits) {
                        Ok(next) => timer.as_mut().reset(next),
                        Err(expired) => {
                            expired.count(self.metrics, self.peer);
                            if expired != Expired::Idle {
                                // A head that never completes, or a response nobody reads,
                                // would hold hyper forever: drop.
                                return;
                            }
                            if !closing {
                                graceful(conn.as_mut());
                                closing = true;
                            }
                            let at = Instant::now() + CLOSE_GRACE;
                            backstop = Some(at);
                            timer.as_mut().reset(at);
                        }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    HeaderRead,
    Idle,
    /// The client stopped reading: a write has been blocked for `idle_timeout`.
    Send,
}

impl Expired {
    fn as_str(self) -> &'static str {
        match self {
            Expired::HeaderRead => "header_read",
            Expired::Idle => "idle",
            Expired::Send => "send",
        }
    }

    /// Counts (and logs) a connection this timer closes.
    fn count(self, metrics: &Metrics, peer: SocketAddr) {
        metrics
            .connection_timeouts
            .with_label_values(&[self.as_str()])
            .inc();
        tracing::debug!(%peer, reason = self.as_str(), "closing connection");
    }
}

/// What the connection's timers need to know: requests in progress, when it last went idle, and
/// (HTTP/1.1) when the first byte of the next request arrived.
///
/// Nothing here wakes the timer: it is re-armed only when it fires, at the time `check` names.
/// For HTTP/1.1 that is never later than `header_read_timeout` from the check, so a first byte
/// that arrives after a check is found by the next one before its own deadline passes; an
/// idle HTTP/1.1 connection's timer fires every `header_read_timeout` (10 s by default).
struct Activity {
    clock: Mutex<Clock>,
    /// Set while an HTTP/1.1 connection is idle and no byte of a new request has come: the next
    /// read records its time. Otherwise a read costs one relaxed load.
    awaiting_byte: AtomicBool,
    /// Set while a write to the client is blocked (the socket is full): the next write that goes
    /// through clears it. Otherwise a write costs one relaxed load.
    write_blocked: AtomicBool,
    h2: bool,
}

struct Clock {
    /// Requests whose response has not been completely sent.
    active: usize,
    /// When the last request ended (the TLS handshake's end before the first).
    idle_since: Instant,
    /// The first byte read since `idle_since` (HTTP/1.1).
    first_byte: Option<Instant>,
    /// Whether any request has started on this connection.
    served: bool,
    /// Since when a write to the client has been blocked.
    blocked_since: Option<Instant>,
}

impl Activity {
    fn new(h2: bool) -> Self {
        Activity {
            clock: Mutex::new(Clock {
                active: 0,
                idle_since: Instant::now(),
                first_byte: None,
                served: false,
                blocked_since: None,
            }),
            awaiting_byte: AtomicBool::new(!h2),
            write_blocked: AtomicBool::new(false),
            h2,
        }
    }

    fn on_read(&self) {
        if self.awaiting_byte.load(Ordering::Relaxed)
            && self.awaiting_byte.swap(false, Ordering::Relaxed)
        {
            let mut c = self.clock.lock().unwrap();
            if c.active == 0 && c.first_byte.is_none() {
                c.first_byte = Some(Instant::now());
            }
        }
    }

    /// A write to the client could not go through (`true`) or went through.
    fn on_write(&self, blocked: bool) {
        if blocked {
            if !self.write_blocked.swap(true, Ordering::Relaxed) {
                self.clock.lock().unwrap().blocked_since = Some(Instant::now());
            }
        } else if self.write_blocked.load(Ordering::Relaxed) {
            self.write_blocked.store(false, Ordering::Relaxed);
            self.clock.lock().unwrap().blocked_since = None;
        }
    }

    /// When to look again, or which timer ran out. Before a connection's first request (and
    /// whenever a head is being read) the time returned is the header-read deadline itself.
    fn check(&self, limits: &Limits) -> Result<Instant, Expired> {
        let now = Instant::now();
        let c = self.clock.lock().unwrap();
        // HTTP/1.1: a first byte may come at any moment after this check.
        let look_again = if self.h2 {
            now + limits.idle_timeout
        } else {
            now + limits.header_read_timeout.min(limits.idle_timeout)
        };
        if let Some(since) = c.blocked_since {
            // A client that stops reading holds its connection (and a backend's) only so long.
            let deadline = since + limits.idle_timeout;
            return if now >= deadline {
                Err(Expired::Send)
            } else {
                Ok(deadline.min(look_again))
            };
        }
        if c.active > 0 {
            // Nothing else can expire while a request runs; its end only moves deadlines later.
            return Ok(look_again);
        }
        let (deadline, what) = if !self.h2 && (!c.served || c.first_byte.is_some()) {
            let from = c.first_byte.unwrap_or(c.idle_since);
            (from + limits.header_read_timeout, Expired::HeaderRead)
        } else {
            (c.idle_since + limits.idle_timeout, Expired::Idle)
        };
        if now >= deadline {
            Err(what)
        } else {
            Ok(deadline.min(look_again))
        }
    }
}

/// One request in progress on a connection: from the service call until its response body has
/// been sent (or dropped).
struct InUse(Arc<Activity>);

impl InUse {
    fn begin(act: Arc<Activity>) -> InUse {
        {
            let mut c = act.clock.lock().unwrap();
            c.active += 1;
            c.served = true;
        }
        act.awaiting_byte.store(false, Ordering::Relaxed);
        InUse(act)
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut c = self.0.clock.lock().unwrap();
        c.active -= 1;
        if c.active == 0 {
            c.idle_since = Instant::now();
            c.first_byte = None;
            self.0.awaiting_byte.store(!self.0.h2, Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request counted as in progress until it is done.
struct Guarded<B> {
    body: B,
    _in_use: InUse,
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The TLS stream, noting when bytes arrive (for the header-read timer) and when writes to the
/// client block (for the send timeout).
struct Tracked<T> {
    inner: T,
    act: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.act.on_read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.act.on_write(r.is_pending());
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.act.on_write(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.act.on_write(r.is_pending());
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

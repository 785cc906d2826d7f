//! The per-connection timers: header read (HTTP/1.1), idle, and send (a client that stopped
//! reading), driven by one timer per connection that is re-armed only when it fires (see the
//! limits in the `server` module comment).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Phase;
use crate::config::Limits;
use crate::metrics::Metrics;

/// A connection closed for idleness gets this long to finish closing by itself (an HTTP/2 GOAWAY
/// and PING round trip, TLS close_notify) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub(super) struct Drive<'a> {
    pub act: &'a Activity,
    pub limits: &'a Limits,
    pub metrics: &'a Metrics,
    pub peer: SocketAddr,
}

impl Drive<'_> {
    /// Runs a hyper connection to its end, applying the header-read and idle timers and the
    /// drain phases. `graceful` starts hyper's graceful close of that connection.
    pub(super) async fn run<C>(
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
pub(super) enum Expired {
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
    pub(super) fn count(self, metrics: &Metrics, peer: SocketAddr) {
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
pub(super) struct Activity {
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
    pub(super) fn new(h2: bool) -> Self {
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
pub(super) struct InUse(Arc<Activity>);

impl InUse {
    pub(super) fn begin(act: Arc<Activity>) -> InUse {
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
pub(super) struct Guarded<B> {
    pub body: B,
    pub _in_use: InUse,
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
pub(super) struct Tracked<T> {
    pub inner: T,
    pub act: Arc<Activity>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        }
    }

    async fn advance(s: u64) {
        tokio::time::advance(Duration::from_secs(s)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_http1_connection_runs_out_of_header_time() {
        let act = Activity::new(false);
        let l = limits();
        assert!(act.check(&l).is_ok());
        advance(9).await;
        assert!(act.check(&l).is_ok());
        advance(1).await;
        assert_eq!(act.check(&l), Err(Expired::HeaderRead));
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_waits_idle_time_then_a_first_byte_starts_the_header_timer() {
        let act = Arc::new(Activity::new(false));
        let l = limits();
        drop(InUse::begin(act.clone()));
        // Idle after a request: only the idle timer runs.
        advance(30).await;
        assert!(act.check(&l).is_ok());
        // A byte of the next request arrives: from now on the head must complete in time.
        act.on_read();
        advance(10).await;
        assert_eq!(act.check(&l), Err(Expired::HeaderRead));
        // Without a byte, the idle timer decides.
        let act = Arc::new(Activity::new(false));
        drop(InUse::begin(act.clone()));
        advance(59).await;
        assert!(act.check(&l).is_ok());
        advance(1).await;
        assert_eq!(act.check(&l), Err(Expired::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_expires_while_a_request_runs_but_a_blocked_write_does() {
        let act = Arc::new(Activity::new(true));
        let l = limits();
        let busy = InUse::begin(act.clone());
        advance(600).await;
        assert!(act.check(&l).is_ok(), "a long request is not idle");
        act.on_write(true);
        advance(59).await;
        assert!(act.check(&l).is_ok());
        act.on_write(false);
        advance(59).await;
        assert!(act.check(&l).is_ok(), "a write that went through resets it");
        act.on_write(true);
        advance(60).await;
        assert_eq!(act.check(&l), Err(Expired::Send));
        drop(busy);
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_look_is_never_past_a_deadline() {
        let act = Activity::new(false);
        let l = limits();
        let next = act.check(&l).unwrap();
        assert!(next <= Instant::now() + l.header_read_timeout);
    }
}

//! The per-connection timers and guards: header read (HTTP/1.1), idle, and send (a client that
//! stopped reading: a blocked socket write, or an HTTP/2 stream whose flow-control window never
//! opens), driven by one timer per connection that is re-armed only when it fires (see the limits
//! in the `server` module comment); and the two reasons a connection is closed early: a client
//! that cancels most of its HTTP/2 streams after they were accepted, and idle connections when
//! the connection cap is near. The guards that report a connection's activity to them are in
//! `guards`.

mod guards;

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::Phase;
use crate::config::Limits;
use crate::metrics::Metrics;
pub(super) use guards::{Guarded, InUse, Tracked};

/// A connection closed for idleness gets this long to finish closing by itself (an HTTP/2 GOAWAY
/// and PING round trip, TLS close_notify) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// An HTTP/2 connection whose client has cancelled at least this many accepted streams, and more
/// than half of all its streams, is closed (GOAWAY): cancelling after acceptance is how a client
/// piles work onto backends without holding anything itself.
pub(super) const CANCELLED_STREAMS_MIN: u64 = 50;

pub(super) struct Drive<'a> {
    pub act: &'a Activity,
    /// HTTP/1.1 served by hyper: park the connection (`Drive::run`'s `park`) once it has been
    /// idle this long (`park`, the module).
    pub park_after: Option<Duration>,
    pub limits: &'a Limits,
    pub metrics: &'a Metrics,
    pub peer: SocketAddr,
    /// Bumped when the connection cap is near: idle connections close to make room.
    pub pressure: watch::Receiver<u64>,
}

impl Drive<'_> {
    /// Closes the connection gracefully for `reason` (counted), and arms the backstop.
    fn close_for(
        &self,
        reason: &'static str,
        closing: &mut bool,
        backstop: &mut Option<Instant>,
        timer: &mut Pin<&mut tokio::time::Sleep>,
        graceful: impl FnOnce(),
    ) {
        self.metrics
            .connections_closed
            .with_label_values(&[reason])
            .inc();
        tracing::debug!(peer = %self.peer, reason, "closing connection");
        graceful();
        *closing = true;
        let at = Instant::now() + CLOSE_GRACE;
        *backstop = Some(at);
        timer.as_mut().reset(at);
    }

    /// Runs a connection to its end, applying the header-read and idle timers and the drain
    /// phases. `graceful` starts the connection's graceful close; `park` (called only with
    /// `park_after` set, once the connection has been idle that long) asks it to end without
    /// closing: `Parked` is then the outcome.
    pub(super) async fn run<C>(
        self,
        mut conn: Pin<&mut C>,
        graceful: impl Fn(Pin<&mut C>),
        park: impl Fn(Pin<&mut C>),
        phase: &mut watch::Receiver<Phase>,
    ) -> Outcome
    where
        C: Future<Output = hyper::Result<()>>,
    {
        let mut closing = false;
        let mut parking = false;
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
        // The other wake-ups are futures kept across the loop's turns and made again only when
        // they complete (a new `changed()` or `notified()` registers a new waiter).
        let phase_change = next_change(phase.clone());
        let mut phase_change = pin!(phase_change);
        let pressure_change = next_change(self.pressure.clone());
        let mut pressure_change = pin!(pressure_change);
        let kicked = self.act.kick.notified();
        let mut kicked = pin!(kicked);
        let mut pressure_open = true;
        // The connection task wakes several times per request, nearly always for hyper; the
        // timer and the three signals are polled only when one of them woke it (`Gate`).
        let gate = Arc::new(Gate::default());
        let gate_waker = Waker::from(gate.clone());
        loop {
            let event = poll_fn(|cx| {
                if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Event::Ended(r));
                }
                if !gate.woken(cx.waker()) {
                    return Poll::Pending;
                }
                let gcx = &mut Context::from_waker(&gate_waker);
                if phase_open && let Poll::Ready((changed, rx)) = phase_change.as_mut().poll(gcx) {
                    return Poll::Ready(Event::Phase(changed, rx));
                }
                if !closing && kicked.as_mut().poll(gcx).is_ready() {
                    return Poll::Ready(Event::Kicked);
                }
                if pressure_open
                    && !closing
                    && let Poll::Ready((changed, rx)) = pressure_change.as_mut().poll(gcx)
                {
                    return Poll::Ready(Event::Pressure(changed, rx));
                }
                if timer.as_mut().poll(gcx).is_ready() {
                    return Poll::Ready(Event::Timer);
                }
                Poll::Pending
            })
            .await;
            // What an event does may reset the timer or make a new signal future: look at all
            // of them on the next turn.
            gate.open();
            match event {
                Event::Ended(r) => {
                    return match r {
                        Ok(()) if parking => Outcome::Parked,
                        Ok(()) => Outcome::Ended,
                        Err(e) => {
                            tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                            Outcome::Failed
                        }
                    };
                }
                Event::Phase(changed, mut rx) => {
                    let now = match changed {
                        Ok(()) => *rx.borrow_and_update(),
                        // The server handle was dropped without a shutdown: stop gracefully.
                        Err(_) => {
                            phase_open = false;
                            Phase::Draining
                        }
                    };
                    phase_change.set(next_change(rx));
                    match now {
                        Phase::Serving => {}
                        Phase::Draining if !closing => {
                            graceful(conn.as_mut());
                            closing = true;
                        }
                        Phase::Draining => {}
                        Phase::Closing => return Outcome::Dropped,
                    }
                }
                Event::Kicked => {
                    // Too many cancelled streams: stop taking new ones, let the rest finish.
                    // (`closing` is set for good, so `kicked` is never polled again.)
                    self.close_for(
                        "cancelled_streams",
                        &mut closing,
                        &mut backstop,
                        &mut timer,
                        || graceful(conn.as_mut()),
                    );
                }
                Event::Pressure(changed, rx) => {
                    pressure_change.set(next_change(rx));
                    if changed.is_err() {
                        pressure_open = false;
                    } else if self.act.is_idle() {
                        self.close_for("pressure", &mut closing, &mut backstop, &mut timer, || {
                            graceful(conn.as_mut())
                        });
                    }
                }
                Event::Timer => {
                    if let Some(at) = backstop {
                        if Instant::now() >= at {
                            return Outcome::Dropped;
                        }
                        timer.as_mut().reset(at);
                        continue;
                    }
                    match self.act.check(self.limits) {
                        Ok(mut next) => {
                            if let Some(after) = self.park_after
                                && !closing
                                && let Some(at) = self.act.park_due(after)
                            {
                                let now = Instant::now();
                                if at <= now {
                                    park(conn.as_mut());
                                    // hyper ends an idle connection at once; the backstop only
                                    // guards against one that does not.
                                    parking = true;
                                    closing = true;
                                    let at = now + CLOSE_GRACE;
                                    backstop = Some(at);
                                    timer.as_mut().reset(at);
                                    continue;
                                }
                                next = next.min(at.max(now));
                            }
                            timer.as_mut().reset(next)
                        }
                        Err(expired) => {
                            expired.count(self.metrics, self.peer);
                            if expired != Expired::Idle {
                                // A head that never completes, or a response nobody reads,
                                // would hold hyper forever: drop.
                                return Outcome::Dropped;
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

/// How `Drive::run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The connection's future ended by itself.
    Ended,
    /// It ended with an error (hyper has not shut the stream down).
    Failed,
    /// A timer or the drain's end gave up on it: drop it.
    Dropped,
    /// It ended while idle, on request, its stream still open (`park`).
    Parked,
}

/// What ended one turn of `Drive::run`'s loop.
enum Event {
    Ended(hyper::Result<()>),
    Phase(Result<(), watch::error::RecvError>, watch::Receiver<Phase>),
    Kicked,
    Pressure(Result<(), watch::error::RecvError>, watch::Receiver<u64>),
    Timer,
}

/// Polls a group of futures only after one of them has woken the task, as `FuturesUnordered`
/// does for each of its futures: they are polled with the gate's waker, which notes the wake
/// and passes it on to the task. Opens (polls everything) on the first turn.
struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl Gate {
    /// Whether the group must be polled now (and closes the gate). Registers the task's waker
    /// first, so a wake between the two is not lost.
    fn woken(&self, task: &Waker) -> bool {
        self.task.register(task);
        self.woken.swap(false, Ordering::AcqRel)
    }

    /// Polls the group on the next turn.
    fn open(&self) {
        self.woken.store(true, Ordering::Release);
    }
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.open();
        self.task.wake();
    }
}

/// A watch receiver's next change, with the receiver handed back to wait for the one after.
/// One future per wait, kept across `Drive::run`'s turns.
async fn next_change<T>(
    mut rx: watch::Receiver<T>,
) -> (Result<(), watch::error::RecvError>, watch::Receiver<T>) {
    let r = rx.changed().await;
    (r, rx)
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
    /// Set while hyper is being ended to park the connection (`server::park`): its shutdown of
    /// the stream is then skipped, so the connection stays open.
    pub(in crate::server) parking: AtomicBool,
    /// Set when an answer closes the connection with the request's body left on the wire (the
    /// gateway's refusal with `Connection: close`): the close lingers (`server::http::linger`).
    pub(in crate::server) body_left: AtomicBool,
    h2: bool,
    /// Woken when the connection should close early (too many cancelled streams).
    kick: Notify,
    /// Requests the client cancelled (metric, per process).
    cancelled_metric: prometheus::IntCounter,
}

/// How far an HTTP/2 response body has come: bumped each time hyper polls it, and whether the
/// last poll was waiting on the backend. A body that hyper has not polled for `idle_timeout`
/// while it had data to give is one the client's flow control holds up.
#[derive(Default)]
pub(super) struct Progress {
    polls: AtomicU64,
    waiting_on_backend: AtomicBool,
}

struct StreamWatch {
    progress: Arc<Progress>,
    seen: u64,
    since: Instant,
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
    /// Requests started, and those the client cancelled before their response ended.
    requests: u64,
    cancelled: u64,
    /// HTTP/2 response bodies being sent.
    streams: Vec<StreamWatch>,
}

impl Activity {
    pub(super) fn new(h2: bool, cancelled_metric: prometheus::IntCounter) -> Self {
        Activity {
            clock: Mutex::new(Clock {
                active: 0,
                idle_since: Instant::now(),
                first_byte: None,
                served: false,
                blocked_since: None,
                requests: 0,
                cancelled: 0,
                streams: Vec::new(),
            }),
            awaiting_byte: AtomicBool::new(!h2),
            write_blocked: AtomicBool::new(false),
            parking: AtomicBool::new(false),
            body_left: AtomicBool::new(false),
            h2,
            kick: Notify::new(),
            cancelled_metric,
        }
    }

    fn is_idle(&self) -> bool {
        self.clock.lock().unwrap().active == 0
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

    /// HTTP/1.1, for parking (`park`): the time from which the connection may be parked if it
    /// is still idle then — `after` from the end of its last request, with no byte of the next
    /// one read and no write to the client blocked. Otherwise (a request or head in progress,
    /// none served yet) the time to look again: `after` from now. `None` on HTTP/2.
    fn park_due(&self, after: Duration) -> Option<Instant> {
        if self.h2 {
            return None;
        }
        let c = self.clock.lock().unwrap();
        let idle = c.active == 0 && c.served && c.first_byte.is_none();
        if idle && c.blocked_since.is_none() {
            Some(c.idle_since + after)
        } else {
            Some(Instant::now() + after)
        }
    }

    /// When to look again, or which timer ran out. Before a connection's first request (and
    /// whenever a head is being read) the time returned is the header-read deadline itself.
    fn check(&self, limits: &Limits) -> Result<Instant, Expired> {
        let now = Instant::now();
        let mut c = self.clock.lock().unwrap();
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
            // An HTTP/2 response body the client's flow control holds up (hyper has not asked it
            // for data for `idle_timeout` although it had some) is a client that stopped reading.
            let mut next = look_again;
            for w in &mut c.streams {
                let polls = w.progress.polls.load(Ordering::Relaxed);
                if polls != w.seen || w.progress.waiting_on_backend.load(Ordering::Relaxed) {
                    w.seen = polls;
                    w.since = now;
                }
                let deadline = w.since + limits.idle_timeout;
                if now >= deadline {
                    return Err(Expired::Send);
                }
                // Look again soon enough to notice a stall within a quarter of the limit.
                next = next.min(now + limits.idle_timeout / 4);
            }
            // Nothing else can expire while a request runs; its end only moves deadlines later.
            return Ok(next);
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

#[cfg(test)]
mod tests;

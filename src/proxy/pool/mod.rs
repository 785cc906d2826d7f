//! Connections to one backend: a stack of idle HTTP/1.1 connections, or one shared HTTP/2 (h2c)
//! connection, each driven by its own task.
//!
//! A request takes the most recently used idle HTTP/1.1 connection (LIFO: the warmest one) or
//! opens a new one. The connection goes back on the stack when the response body has been read to
//! its end (`PooledBody`) and the connection can take a new request: a backend that answered
//! before the whole request body was sent gets it back only once the upload is done, from a task
//! that waits for that. A body dropped before its end leaves the connection out: hyper closes it.
//! Idle connections older than `IDLE_TIMEOUT` are closed by a sweeper task per pool (started with
//! the first connection, ended with the pool), and skipped by requests.
//! This replaces hyper-util's general-purpose pooled client on the hot path: no pool key to hash,
//! no checkout future, no task spawned per request to wait for the connection to be reusable.
//!
//! Two limits protect the gateway from a backend that misbehaves:
//! - before a response head arrives, an HTTP/1.1 connection may deliver at most
//!   `MAX_BYTES_BEFORE_HEAD` (hyper skips 1xx responses without bound, so a backend that sends
//!   `100 Continue` forever would burn a core until the scoring timeout): past it the exchange
//!   fails (502) and the connection is closed;
//! - once the head has arrived, the body must keep coming: a gap longer than the service's
//!   `scoring_timeout` ends it with an error (`BodyStalled`), which frees the slot and both
//!   connections.
//!
//! A pooled connection the backend has closed meanwhile (its keep-alive ran out) is found out
//! either before sending (the sender reports closed) or when hyper gives the request back unsent
//! (`try_send_request`): then the request goes on another connection. A request that was sent is
//! never resent. The h2c connection is opened by one request at a time (the others wait for it),
//! and a request it gives back unsent (the connection was closing) is retried once on a new one.
//!
//! Opening connections (and the byte cap before a head) is in `connect`, the pooled response
//! body in `body`; the pool itself (the stack, the sweeper, the shared h2c connection) here.

mod body;
mod connect;

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::client::conn::{http1, http2};
use tokio::time::Instant;

use super::body::UpstreamBody;
use crate::config::BackendProtocol;
pub use body::{BodyStalled, PooledBody};
pub use connect::{MAX_BYTES_BEFORE_HEAD, NoHead};
use connect::{Meter, connect_h1, connect_h2, unsent_error};

/// Idle connections older than this are closed rather than reused: under azmlinfsrv/gunicorn's
/// keep-alive default would be 2 s, but it closes every connection anyway; other servers keep
/// them longer.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per backend: enough for a burst of 256 concurrent requests to reuse.
const MAX_IDLE: usize = 256;
/// Requests that find a pooled connection closed under them try this many more connections
/// (the last one always new) before giving up.
const MAX_UNSENT_RETRIES: usize = 2;

/// Idle connections a checkout looks through for one of its own thread's (`H1Conn::home`).
const HOME_SCAN: usize = 16;

/// An HTTP/1.1 connection to a backend: its sender and the meter of its reads.
pub struct H1Conn {
    tx: http1::SendRequest<UpstreamBody>,
    meter: Arc<Meter>,
    /// The thread its task was started on (`this_thread`).
    home: usize,
}

/// A number for the calling thread, given at its first call. With one runtime per worker thread
/// (`server::workers`) a connection's task runs on the thread that opened it, and a request on
/// another thread that takes it costs a wake-up across threads each way.
fn this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static THIS: usize = NEXT.fetch_add(1, Ordering::Relaxed));
    THIS.with(|t| *t)
}

/// Why a request got no response from the backend.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect(io::Error),
    /// The request failed on an open connection (it may have been sent).
    Request(hyper::Error),
}

impl SendError {
    /// True when nothing reached the backend because it could not be connected to.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Connect(_) => f.write_str("cannot connect to backend"),
            SendError::Request(_) => f.write_str("backend request failed"),
        }
    }
}

impl StdError for SendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Request(e) => Some(e),
        }
    }
}

struct Idle {
    conn: H1Conn,
    since: Instant,
}

/// The connections to one backend (part of `Backend`, so it carries over reloads).
pub struct Pool {
    /// The backend's `host:port`.
    authority: Authority,
    /// `Host` of HTTP/1.1 requests to it (HTTP/2 carries the authority in the URI).
    host: HeaderValue,
    /// Idle HTTP/1.1 connections; the back is the most recently used.
    h1: Mutex<VecDeque<Idle>>,
    /// The shared HTTP/2 connection, once opened.
    h2: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
    /// Held while an h2c connection is being opened, so that only one is.
    h2_connecting: tokio::sync::Mutex<()>,
    /// Whether the idle-connection sweeper runs.
    sweeping: AtomicBool,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("idle_h1", &self.h1.lock().unwrap().len())
            .finish()
    }
}

impl Pool {
    /// The pool of the backend at `authority` (validated config: `host[:port]`, no user info).
    pub fn new(authority: Authority) -> Self {
        Pool {
            host: HeaderValue::from_str(authority.as_str())
                .expect("an authority is a valid header value"),
            authority,
            h1: Mutex::default(),
            h2: Mutex::default(),
            h2_connecting: tokio::sync::Mutex::default(),
            sweeping: AtomicBool::default(),
        }
    }

    /// Sends `req` to `path` on the backend: origin-form with `Host` over HTTP/1.1, an absolute
    /// URI (`:scheme`, `:authority`) over HTTP/2.
    pub async fn send(
        self: Arc<Self>,
        protocol: BackendProtocol,
        path: PathAndQuery,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let authority = &self.authority;
        match protocol {
            BackendProtocol::Http1 => {
                *req.uri_mut() = Uri::from(path);
                req.headers_mut().insert(header::HOST, self.host.clone());
                self.send_h1(authority, req).await
            }
            BackendProtocol::H2c => {
                *req.uri_mut() = Uri::builder()
                    .scheme(Scheme::HTTP)
                    .authority(authority.clone())
                    .path_and_query(path)
                    .build()
                    .expect("valid parts");
                // Boxed: an HTTP/2 exchange's future is about three times an HTTP/1.1 one's,
                // and every request's exchange is boxed and moved with room for it.
                Box::pin(self.send_h2(authority, req)).await
            }
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        authority: &Authority,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let mut retries = 0;
        loop {
            // The last try always gets a fresh connection.
            let pooled = if retries < MAX_UNSENT_RETRIES {
                self.checkout().await
            } else {
                None
            };
            let mut conn = match pooled {
                Some(c) => c,
                None => {
                    self.start_sweeper();
                    // Boxed: the connect future (TCP, then hyper's handshake) is large, and
                    // `send`'s future, which would otherwise hold room for it, is boxed and
                    // moved whole for every request (`forward::Exchange`), pooled or not.
                    Box::pin(connect_h1(authority)).await?
                }
            };
            conn.meter.arm();
            let sent = conn.tx.try_send_request(req).await;
            conn.meter.disarm();
            match sent {
                Ok(resp) => {
                    return Ok(resp.map(|body| PooledBody::pooled(body, self.clone(), conn)));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection was closed under us. Try another.
                    Some(unsent) if retries < MAX_UNSENT_RETRIES => {
                        tracing::debug!(backend = %authority, error = %e.error(), "pooled connection closed, retrying the request on another");
                        req = unsent;
                        retries += 1;
                    }
                    // Even a new connection closed before taking it: nothing was sent, so it
                    // may go to another backend, like a failed connect.
                    Some(_) => return Err(unsent_error(e.into_error())),
                    None => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection of this thread that is still usable, else the most
    /// recently used one of any thread (a wake-up across threads costs less than a connect).
    async fn checkout(&self) -> Option<H1Conn> {
        let here = this_thread();
        loop {
            let now = Instant::now();
            let idle = {
                let mut stack = self.h1.lock().unwrap();
                let top = stack.len().checked_sub(1)?;
                let own = stack
                    .iter()
                    .rev()
                    .take(HOME_SCAN)
                    .take_while(|i| now.saturating_duration_since(i.since) < IDLE_TIMEOUT)
                    .position(|i| i.conn.home == here);
                stack.remove(top - own.unwrap_or(0))?
            };
            if now.saturating_duration_since(idle.since) >= IDLE_TIMEOUT {
                // Everything below it is older still (the sweeper closes those).
                return None;
            }
            let mut conn = idle.conn;
            // Only ready connections are checked in; this finds one that closed since.
            if conn.tx.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    /// Puts a connection whose exchange is over back on the stack, once it can take a new
    /// request: at once, or (the request body is still being sent) from a task that waits.
    fn checkin(self: Arc<Self>, mut conn: H1Conn) {
        if conn.tx.is_closed() {
            return;
        }
        if conn.tx.is_ready() {
            self.push_idle(conn);
            return;
        }
        tokio::spawn(async move {
            if conn.tx.ready().await.is_ok() {
                self.push_idle(conn);
            }
        });
    }

    fn push_idle(&self, conn: H1Conn) {
        let mut idle = self.h1.lock().unwrap();
        if idle.len() >= MAX_IDLE {
            idle.pop_front();
        }
        idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Starts the task that closes idle connections older than `IDLE_TIMEOUT` (once per pool;
    /// it ends when the pool is gone).
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(IDLE_TIMEOUT / 2);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                pool.sweep();
            }
        });
    }

    /// Closes idle connections that are too old or already closed.
    fn sweep(&self) {
        let stale: Vec<Idle> = {
            let mut idle = self.h1.lock().unwrap();
            let keep = idle
                .iter()
                .position(|i| i.since.elapsed() < IDLE_TIMEOUT)
                .unwrap_or(idle.len());
            let stale = idle.drain(..keep).collect();
            idle.retain(|i| !i.conn.tx.is_closed());
            stale
        };
        // Dropped outside the lock: each drop ends that connection's task.
        drop(stale);
    }

    async fn send_h2(
        &self,
        authority: &Authority,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let mut tx = self.shared_h2(authority).await?;
        match tx.try_send_request(req).await {
            Ok(resp) => Ok(resp.map(PooledBody::unpooled)),
            Err(mut e) => match e.take_message() {
                // The connection was closing (GOAWAY, a restarted backend): once more, on a
                // new one.
                Some(unsent) => {
                    self.forget_h2(&tx);
                    let mut tx = self.shared_h2(authority).await?;
                    match tx.try_send_request(unsent).await {
                        Ok(resp) => Ok(resp.map(PooledBody::unpooled)),
                        Err(mut e) => match e.take_message() {
                            Some(_) => Err(unsent_error(e.into_error())),
                            None => Err(SendError::Request(e.into_error())),
                        },
                    }
                }
                None => Err(SendError::Request(e.into_error())),
            },
        }
    }

    /// The shared h2c connection, opened by one caller at a time when there is none.
    async fn shared_h2(
        &self,
        authority: &Authority,
    ) -> Result<http2::SendRequest<UpstreamBody>, SendError> {
        let open = || {
            self.h2
                .lock()
                .unwrap()
                .as_ref()
                .filter(|tx| !tx.is_closed())
                .cloned()
        };
        if let Some(tx) = open() {
            return Ok(tx);
        }
        let _one = self.h2_connecting.lock().await;
        if let Some(tx) = open() {
            return Ok(tx);
        }
        // Boxed for the same reason as `connect_h1` in `send_h1`.
        let tx = Box::pin(connect_h2(authority)).await?;
        *self.h2.lock().unwrap() = Some(tx.clone());
        Ok(tx)
    }

    /// Drops the shared h2c connection if it is still `tx`.
    fn forget_h2(&self, tx: &http2::SendRequest<UpstreamBody>) {
        let mut slot = self.h2.lock().unwrap();
        if slot
            .as_ref()
            .is_some_and(|cur| cur.is_closed() || tx.is_closed())
        {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkout takes the most recent idle connection of its own thread, even below one of
    /// another thread, and another thread's when none of its own is left.
    #[tokio::test]
    async fn checkout_prefers_a_connection_of_its_own_thread() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        // Holds the backend's ends open; no request is sent.
        let backend = tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let pool = Pool::new(authority.clone());
        let here = this_thread();
        let elsewhere = here.wrapping_add(1);
        for home in [here, here, elsewhere] {
            let mut conn = connect_h1(&authority).await.unwrap();
            conn.home = home;
            pool.push_idle(conn);
        }
        // The stack, bottom to top: here, here, elsewhere.
        assert_eq!(pool.checkout().await.unwrap().home, here);
        assert_eq!(pool.checkout().await.unwrap().home, here);
        assert_eq!(pool.checkout().await.unwrap().home, elsewhere);
        assert!(pool.checkout().await.is_none());
        backend.abort();
    }
}

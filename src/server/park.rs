//! Parking an idle HTTP/1.1 connection: hyper's connection is ended without closing the stream,
//! which frees its read and write buffers (16 KiB), and the connection waits for its next
//! request as a new one does, without hyper; a new hyper connection takes it over when bytes
//! arrive.
//!
//! `Drive::run` parks a connection once it has been idle for `PARK_AFTER` with no byte of a next
//! request read and no write blocked (`Activity::park_due`). hyper ends an idle connection at once
//! when keep-alive is turned off; the stream skips the shutdown hyper then asks of it
//! (`Activity::parking`), and `into_parts` hands back the stream and any bytes hyper had read but
//! not used (a pipelined head cut short), which are read again first (`Tracked::unread`).
//! nginx and HAProxy free their buffers as soon as a connection goes idle; scoregate waits
//! `PARK_AFTER`, so that a client sending request after request never pays for a new hyper
//! connection, and a client that holds a connection open idle does not hold 16 KiB with it.
//!
//! While parked, the connection is under the same timers and signals as one hyper serves: the
//! idle timer and connection-cap pressure close it with TLS `close_notify`, a drain closes it,
//! the drain's end drops it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::timers::{Activity, Tracked};

/// How long an HTTP/1.1 connection is idle before it is parked.
pub(super) const PARK_AFTER: Duration = Duration::from_secs(1);

/// The stream an HTTP/1.1 connection is served on, hyper's or parked.
pub(super) type Stream = TokioIo<Tracked<Box<TlsStream<TcpStream>>>>;

/// Starts hyper's graceful end of an HTTP/1.1 connection: with `park`, one that keeps the
/// stream open (called only while the connection is idle, when hyper ends it at once, and
/// `Activity::parking` makes the stream skip the shutdown hyper then asks of it); without, the
/// ordinary close, which shuts the stream down (even if parking had begun).
pub(super) fn end<S>(act: &Activity, conn: Pin<&mut http1::Connection<Stream, S>>, park: bool)
where
    S: HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    act.parking.store(park, Ordering::Relaxed);
    conn.graceful_shutdown();
}

/// A parked connection waiting for its next request: ends when the client sends something (or
/// closes: hyper finds out), or once asked to close (`close`), when its stream is shut down.
/// Counted in `scoregate_connections_parked` while it exists.
pub(super) struct Parked<'a> {
    stream: &'a mut Stream,
    closing: bool,
    gauge: &'a IntGauge,
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl<'a> Parked<'a> {
    pub(super) fn new(stream: &'a mut Stream, gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Parked {
            stream,
            closing: false,
            gauge,
        }
    }

    pub(super) fn close(mut self: Pin<&mut Self>) {
        self.closing = true;
    }

    /// Whether it ended because it was asked to close.
    pub(super) fn closed(&self) -> bool {
        self.closing
    }
}

impl Future for Parked<'_> {
    type Output = hyper::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        let closing = self.closing;
        let tracked = self.stream.inner_mut();
        if closing {
            // TLS close_notify, then the TCP write side; an error means it is closed anyway.
            return Pin::new(tracked).poll_shutdown(cx).map(|_| Ok(()));
        }
        let (tcp, session) = tracked.inner.get_ref();
        // rustls decrypts every complete record it reads, so unread data is either plaintext it
        // holds (then it does not want to read) or still in the socket.
        if !tracked.unread.is_empty() || !session.wants_read() {
            return Poll::Ready(Ok(()));
        }
        // An error is hyper's to find and report.
        tcp.poll_read_ready(cx).map(|_| Ok(()))
    }
}

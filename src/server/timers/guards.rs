//! What tells the timers a connection is busy: `InUse` (one request, from the service call
//! until its response body is sent or dropped), `Guarded` (the response body carrying it, and an
//! HTTP/2 body's progress) and `Tracked` (the socket, recording reads and blocked writes).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::{Activity, CANCELLED_STREAMS_MIN, Progress, StreamWatch};

/// One request in progress on a connection: from the service call until its response body has
/// been sent (`complete`), or dropped (the client cancelled it).
pub(in crate::server) struct InUse {
    act: Arc<Activity>,
    pub(super) complete: bool,
    pub(super) progress: Option<Arc<Progress>>,
}

impl InUse {
    pub(in crate::server) fn begin(act: Arc<Activity>) -> InUse {
        {
            let mut c = act.clock.lock().unwrap();
            c.active += 1;
            c.served = true;
            c.requests += 1;
        }
        act.awaiting_byte.store(false, Ordering::Relaxed);
        InUse {
            act,
            complete: false,
            progress: None,
        }
    }

    /// The response head is out: on HTTP/2, watch its body for a stalled flow-control window.
    pub(in crate::server) fn responding(mut self) -> InUse {
        if self.act.h2 {
            let progress = Arc::new(Progress::default());
            self.act.clock.lock().unwrap().streams.push(StreamWatch {
                progress: progress.clone(),
                seen: 0,
                since: Instant::now(),
            });
            self.progress = Some(progress);
        }
        self
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        let act = &self.act;
        let mut c = act.clock.lock().unwrap();
        c.active -= 1;
        if let Some(p) = &self.progress {
            c.streams.retain(|w| !Arc::ptr_eq(&w.progress, p));
        }
        if !self.complete {
            c.cancelled += 1;
            act.cancelled_metric.inc();
            if act.h2 && c.cancelled >= CANCELLED_STREAMS_MIN && c.cancelled * 2 > c.requests {
                act.kick.notify_one();
            }
        }
        if c.active == 0 {
            c.idle_since = Instant::now();
            c.first_byte = None;
            act.awaiting_byte.store(!act.h2, Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request counted as in progress until it is done, and tells
/// the connection's timers how it is coming along.
pub(in crate::server) struct Guarded<B> {
    pub body: B,
    pub in_use: InUse,
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(p) = &this.in_use.progress {
            p.polls.fetch_add(1, Ordering::Relaxed);
            p.waiting_on_backend
                .store(r.is_pending(), Ordering::Relaxed);
        }
        match &r {
            Poll::Ready(None) => this.in_use.complete = true,
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.in_use.complete = true,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Guarded<B> {
    pub(in crate::server) fn new(body: B, in_use: InUse) -> Self
    where
        B: Body,
    {
        let mut in_use = in_use.responding();
        // A body that is already complete (no data) will not be polled.
        if body.is_end_stream() {
            in_use.complete = true;
        }
        Guarded { body, in_use }
    }
}

/// The TLS stream, noting when bytes arrive (for the header-read timer) and when writes to the
/// client block (for the send timeout).
pub(in crate::server) struct Tracked<T> {
    pub inner: T,
    pub act: Arc<Activity>,
    /// Bytes hyper had read but not used when its connection was parked (`server::park`): read
    /// again before the stream.
    pub unread: Bytes,
    /// The client closed its side (a read found the end of the stream).
    pub eof: bool,
}

impl<T> Tracked<T> {
    pub(in crate::server) fn new(inner: T, act: Arc<Activity>) -> Self {
        Tracked {
            inner,
            act,
            unread: Bytes::new(),
            eof: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread.split_to(n));
            if self.unread.is_empty() {
                // An empty slice of hyper's read buffer would still hold all of it.
                self.unread = Bytes::new();
            }
            self.act.on_read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.act.on_read();
        } else if matches!(r, Poll::Ready(Ok(()))) && buf.remaining() > 0 {
            self.eof = true;
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
        if self.act.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

//! The request body on its way to a backend (`RequestBody`): the client's `Incoming` body,
//! counted against the service's `max_body`, and reclaimable until first polled.
//!
//! The body waits in a slot shared with the forwarder until the backend connection first polls
//! it, so after a failed connect (nothing sent) the same body can go to another backend, and a
//! request refused before anything was sent gives its body back unread (`Leftover::Unread`) for
//! the gateway to drain. The slot also records whether a body that was polled reached its end,
//! which decides whether an HTTP/1.1 connection can stay open after an error.
//!
//! Two more duties:
//! - a body must keep arriving: its next KiB (or its end) within `body_idle_timeout`, else the
//!   forward fails with `Stalled` (408) and the backend slot is freed — a trickling upload holds
//!   a backend no longer than that;
//! - a body the backend stopped reading before its end (an HTTP/2 client that sends `END_STREAM`
//!   in a frame of its own after the last byte, which an HTTP/1.1 backend with `Content-Length`
//!   never waits for) is read to its end in the background (`discard`), so the stream ends
//!   cleanly instead of being reset — HTTP/2 counts every reset the gateway makes and closes the
//!   connection after 1024 of them.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// A body left unread behind an answer is read in the background up to this much, so the stream
/// ends cleanly; flow control bounds what a client sends before that.
pub const DISCARD_MAX: u64 = 8 * 1024 * 1024;
/// ... and for at most this long.
pub const DISCARD_TIMEOUT: Duration = Duration::from_secs(10);
/// The unit of progress of `body_idle_timeout`: a body must deliver this much more (or its end)
/// within the timeout.
pub const PROGRESS_BYTES: u64 = 1024;

/// What the gateway sends upstream: the client's body, or one held whole (a mirrored copy;
/// empty for health probes).
pub type UpstreamBody = Either<RequestBody, Full<Bytes>>;

/// A copy of a body, taken as it streamed by (contract §8: for a mirror).
#[derive(Debug)]
pub enum Copied {
    /// The whole body, as the frames it came in (shared, not copied).
    Complete(Vec<Bytes>),
    /// It grew past the copy's limit; nothing was kept.
    TooLarge,
}

/// Keeps the frames of a body up to `max` bytes and hands them over when the body ends. A body
/// that never ends (an error, a client gone) drops the sender: the receiver sees that.
pub struct CopyTee {
    max: u64,
    size: u64,
    frames: Vec<Bytes>,
    too_large: bool,
    done: Option<oneshot::Sender<Copied>>,
}

impl CopyTee {
    /// A tee keeping up to `max` bytes, and the receiver of the copy.
    pub fn new(max: u64) -> (CopyTee, oneshot::Receiver<Copied>) {
        let (tx, rx) = oneshot::channel();
        (
            CopyTee {
                max,
                size: 0,
                frames: Vec::new(),
                too_large: false,
                done: Some(tx),
            },
            rx,
        )
    }

    /// A frame went by.
    pub fn data(&mut self, d: &Bytes) {
        if self.too_large {
            return;
        }
        self.size += d.len() as u64;
        if self.size > self.max {
            self.too_large = true;
            self.frames = Vec::new();
        } else if !d.is_empty() {
            self.frames.push(d.clone());
        }
    }

    /// The body ended: hand the copy over.
    pub fn end(&mut self) {
        if let Some(tx) = self.done.take() {
            let copy = if self.too_large {
                Copied::TooLarge
            } else {
                Copied::Complete(std::mem::take(&mut self.frames))
            };
            let _ = tx.send(copy);
        }
    }
}

/// The body grew past `max_body` while it streamed (413).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body over the limit of {0} bytes")]
pub struct TooLarge(pub u64);

/// The body stopped arriving: no KiB (nor its end) within `body_idle_timeout` (408).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body stalled for {0:?}")]
pub struct Stalled(pub Duration);

/// Reads and throws away up to `max` bytes of a body within `timeout`. True if it ended.
pub async fn discard(mut body: Incoming, max: u64, timeout: Duration) -> bool {
    let read_all = async {
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    seen += f.data_ref().map_or(0, |d| d.len() as u64);
                    if seen > max {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    };
    tokio::time::timeout(timeout, read_all)
        .await
        .unwrap_or(false)
}

/// What is left of a request body after a failed forward.
pub enum Leftover {
    /// Never polled: all of it is still on the wire (or in the client's stream).
    Unread(Incoming),
    /// Partly read: the rest (if any) is still on the wire.
    Partial,
    /// Read to its end.
    Complete,
}

/// The slot a `RequestBody` shares with its forwarder.
#[derive(Clone)]
pub struct BodySlot(Arc<SlotInner>);

struct SlotInner {
    body: Mutex<Option<Incoming>>,
    ended: AtomicBool,
    limit: u64,
    idle: Duration,
    /// A copy of the body for a mirror, when one was asked for.
    copy: Option<Mutex<CopyTee>>,
}

impl BodySlot {
    /// A slot holding `body`, to be sent under `limit` bytes, each KiB within `idle`.
    pub fn new(body: Incoming, limit: u64, idle: Duration) -> BodySlot {
        Self::with_copy(body, limit, idle, None).0
    }

    /// `new`, also keeping a copy of the body up to `copy` bytes (for a mirror): the receiver
    /// gets it once the body has been read to its end.
    pub fn with_copy(
        body: Incoming,
        limit: u64,
        idle: Duration,
        copy: Option<u64>,
    ) -> (BodySlot, Option<oneshot::Receiver<Copied>>) {
        let ended = body.is_end_stream();
        let (tee, rx) = match copy {
            Some(max) => {
                let (mut tee, rx) = CopyTee::new(max);
                if ended {
                    tee.end();
                }
                (Some(Mutex::new(tee)), Some(rx))
            }
            None => (None, None),
        };
        let slot = BodySlot(Arc::new(SlotInner {
            body: Mutex::new(Some(body)),
            ended: AtomicBool::new(ended),
            limit,
            idle,
            copy: tee,
        }));
        (slot, rx)
    }

    /// A body to send: the first one polled takes what is in the slot.
    pub fn body(&self) -> RequestBody {
        let hint = self
            .0
            .body
            .lock()
            .unwrap()
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default();
        RequestBody {
            slot: self.0.clone(),
            body: None,
            seen: 0,
            hint,
            credited: 0,
            credited_at: None,
            stall: None,
        }
    }

    /// Whether the body is still unread (a retry elsewhere can send it).
    pub fn available(&self) -> bool {
        self.0.body.lock().unwrap().is_some()
    }

    /// What is left of the body now.
    pub fn leftover(&self) -> Leftover {
        match self.0.body.lock().unwrap().take() {
            Some(b) => Leftover::Unread(b),
            None if self.0.ended.load(Ordering::Relaxed) => Leftover::Complete,
            None => Leftover::Partial,
        }
    }
}

/// The request body as a backend connection reads it.
pub struct RequestBody {
    slot: Arc<SlotInner>,
    body: Option<Incoming>,
    seen: u64,
    hint: SizeHint,
    /// Bytes counted as progress, and when the last `PROGRESS_BYTES` of them came.
    credited: u64,
    credited_at: Option<Instant>,
    /// The stall timer, made the first time the body has to wait.
    stall: Option<Pin<Box<Sleep>>>,
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // Whatever the backend did not read is read to its end in the background (see the
        // module comment); an unread HTTP/1.1 body of known length is already complete.
        if let Some(body) = self.body.take()
            && !body.is_end_stream()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            tokio::spawn(discard(body, DISCARD_MAX, DISCARD_TIMEOUT));
        }
    }
}

impl RequestBody {
    /// Another `PROGRESS_BYTES` arrived: the stall deadline moves on.
    fn credit(&mut self) {
        self.credited = self.seen;
        let now = Instant::now();
        self.credited_at = Some(now);
        if let Some(s) = &mut self.stall {
            s.as_mut().reset(now + self.slot.idle);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.body.is_none() {
            match this.slot.body.lock().unwrap().take() {
                Some(b) => this.body = Some(b),
                None => return Poll::Ready(None),
            }
        }
        let body = this.body.as_mut().expect("taken above");
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    if this.seen > this.slot.limit {
                        return Poll::Ready(Some(Err(Box::new(TooLarge(this.slot.limit)))));
                    }
                    if this.seen - this.credited >= PROGRESS_BYTES {
                        this.credit();
                    }
                    if let Some(c) = &this.slot.copy {
                        c.lock().unwrap().data(d);
                    }
                }
                if this.body.as_ref().is_some_and(|b| b.is_end_stream()) {
                    this.slot.ended.store(true, Ordering::Relaxed);
                    if let Some(c) = &this.slot.copy {
                        c.lock().unwrap().end();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.slot.ended.store(true, Ordering::Relaxed);
                if let Some(c) = &this.slot.copy {
                    c.lock().unwrap().end();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Pending => {
                let idle = this.slot.idle;
                let since = *this.credited_at.get_or_insert_with(Instant::now);
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(since + idle)));
                if stall.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Box::new(Stalled(idle)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(b) => b.is_end_stream(),
            None => self.slot.ended.load(Ordering::Relaxed),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}

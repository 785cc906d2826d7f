//! The request body on its way to a backend (`RequestBody`): the client's `Incoming` body,
//! counted against the service's `max_body`, and reclaimable until first polled.
//!
//! The body waits in a slot shared with the forwarder until the backend connection first polls
//! it, so after a failed connect (nothing sent) the same body can go to another backend, and a
//! request refused before anything was sent gives its body back unread (`Leftover::Unread`) for
//! the gateway to drain. The slot also records whether a body that was polled reached its end,
//! which decides whether an HTTP/1.1 connection can stay open after an error.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// What the gateway sends upstream: the client's body, or nothing (health probes).
pub type UpstreamBody = Either<RequestBody, Empty<Bytes>>;

/// The body grew past `max_body` while it streamed (413).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body over the limit of {0} bytes")]
pub struct TooLarge(pub u64);

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
}

impl BodySlot {
    /// A slot holding `body`, to be sent under `limit` bytes.
    pub fn new(body: Incoming, limit: u64) -> BodySlot {
        let ended = body.is_end_stream();
        BodySlot(Arc::new(SlotInner {
            body: Mutex::new(Some(body)),
            ended: AtomicBool::new(ended),
            limit,
        }))
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
                }
                if this.body.as_ref().is_some_and(|b| b.is_end_stream()) {
                    this.slot.ended.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.slot.ended.store(true, Ordering::Relaxed);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Pending => Poll::Pending,
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

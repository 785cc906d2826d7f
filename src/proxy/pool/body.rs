//! `PooledBody`: a backend's response body, which gives its HTTP/1.1 connection back to the
//! pool once read to its end, and fails (`BodyStalled`) when the backend pauses too long.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;

use super::{H1Conn, Pool};
use crate::proxy::deadline::Deadline;

/// A backend's response body that puts its HTTP/1.1 connection back in the pool once read to
/// the end, and fails (`BodyStalled`) when the backend pauses longer than its idle limit.
pub struct PooledBody {
    body: Incoming,
    back: Option<(Arc<Pool>, H1Conn)>,
    /// The longest gap between frames, and the request's backend timer (`Deadline`, handed
    /// over by the exchange), set to the end of the current gap the first time the body waits
    /// and after each frame.
    idle: Option<Idle>,
}

struct Idle {
    limit: Duration,
    timer: Deadline,
    /// Whether `timer` stands for this body's current gap (not yet: it still holds the
    /// exchange's deadline for the response head).
    armed: bool,
}

/// The backend paused its response body for longer than the service's `scoring_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the backend's response body stalled for {0:?}")]
pub struct BodyStalled(pub Duration);

impl PooledBody {
    /// A body whose connection goes back to `pool` once it has been read to its end.
    pub(super) fn pooled(body: Incoming, pool: Arc<Pool>, conn: H1Conn) -> Self {
        PooledBody {
            body,
            back: Some((pool, conn)),
            idle: None,
        }
    }

    /// A body whose connection is not pooled (HTTP/2: the connection is shared, not taken).
    pub(super) fn unpooled(body: Incoming) -> Self {
        PooledBody {
            body,
            back: None,
            idle: None,
        }
    }

    /// The body fails when the backend pauses longer than `limit` between frames, timed by
    /// `timer` (the exchange's, moved on).
    pub fn with_idle_limit(mut self, limit: Duration, timer: Deadline) -> Self {
        self.idle = Some(Idle {
            limit,
            timer,
            armed: false,
        });
        self
    }

    fn done(&mut self) {
        if let Some((pool, conn)) = self.back.take() {
            Pool::checkin(pool, conn);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.done();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.back = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(f))) => {
                if let Some(idle) = &mut this.idle
                    && idle.armed
                {
                    idle.timer.reset(Instant::now() + idle.limit);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Pending => {
                if let Some(idle) = &mut this.idle {
                    if !idle.armed {
                        idle.armed = true;
                        idle.timer.reset(Instant::now() + idle.limit);
                    }
                    if idle.timer.expired(cx) {
                        this.back = None;
                        return Poll::Ready(Some(Err(Box::new(BodyStalled(idle.limit)))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended; only an unfinished one is lost.
        if self.body.is_end_stream() {
            self.done();
        }
    }
}

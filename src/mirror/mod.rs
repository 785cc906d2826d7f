//! Mirrored traffic (contract §8): a copy of a share of a service's live requests goes to its
//! mirror deployment, the copy's answer is thrown away, and it is compared with the live one.
//!
//! Nothing here touches the live request's answer or timing. The gateway draws whether a
//! request is mirrored (`state::Routing`); for a drawn request it asks the forward for a copy
//! of the request body as it streams by (`proxy::body::CopyTee`: the frames are shared, not
//! copied), wraps the live response body in a `Tee` that keeps its frames too, and submits a
//! `Job` once the live response head has arrived. The job runs in a task of its own:
//!
//! ```text
//! request body read to its end?  (over mirror_max_body: skipped_too_large; never: skipped_live_failed)
//!   → a place among mirror_max_in_flight (waiting among at most mirror_queue; else skipped_busy)
//!   → a free backend slot of the mirror deployment now (else skipped_busy; none up: error)
//!   → send, head and body within its scoring_timeout (else error)
//!   → the live body (its client gone: skipped_live_failed)
//!   → compare: same, different_status, different_body, unchecked_too_large
//! ```
//!
//! A copy never waits for a backend slot, never counts in the gateway's in-flight count (so
//! neither `limits.max_in_flight` nor the drain waits for it), and carries only the headers of
//! `CopyRequest::from` — never the credential or cookies. Queued copies are cancelled when a
//! reload (or a traffic change) removes the mirror, and when the gateway drains (`Queue::cancel`);
//! a cancelled copy still counts once: `skipped_busy` if it was not sent yet, `error` if it was
//! (the contract has no result of its own for it). Every drawn copy is thus counted exactly once.
//! The copy's connect failures and successes feed the mirror backend's passive health like a
//! live request's (a mirror that refuses connections shows as down in the admin API and
//! `scoregate_backend_up`); the live answer never depends on it, since a mirror deployment has
//! no live weight.
//!
//! `compare` is the comparison, pure: two answers and a tolerance in, a verdict out.

pub mod compare;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use crate::config::MirrorConfig;
use crate::error::DisplayChain;
use crate::metrics::{MirrorMetrics, MirrorResult};
use crate::proxy::ForwardSettings;
use crate::proxy::body::{Copied, CopyTee};
use crate::proxy::headers::{
    AZUREML_MODEL_DEPLOYMENT, X_MS_CLIENT_REQUEST_ID, X_MS_REQUEST_ID, X_SCOREGATE_MIRROR,
};
use crate::proxy::upstream::{InFlight, Refusal, Upstream};
pub use compare::is_json_media_type;
use compare::{Answer, Verdict, compare};

/// The request headers every copy carries when the client sent them (contract §8), besides
/// `mirror_headers`.
const COPIED: [HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::ACCEPT,
    X_MS_REQUEST_ID,
    X_MS_CLIENT_REQUEST_ID,
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];
/// How long a copy waits for the live response body to end (a slow client reading a large
/// answer); past it the copy is not compared (`skipped_live_failed`).
const LIVE_BODY_WAIT: Duration = Duration::from_secs(300);
/// At most one difference line per service per this long (contract §8).
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The places of one mirror, shared by every snapshot that keeps it (a reload that keeps the
/// mirror keeps its copies in flight and in the queue): the in-flight permits, the count of
/// copies waiting for one, the cancellation, and the difference log's rate limit.
pub struct Queue {
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    queued: AtomicUsize,
    cancelled: AtomicBool,
    cancel: Notify,
    /// When the last difference line was logged, and how many were suppressed since.
    log: Mutex<(Option<Instant>, u64)>,
}

impl Queue {
    pub fn new(max_in_flight: usize) -> Arc<Queue> {
        Arc::new(Queue {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            queued: AtomicUsize::new(0),
            cancelled: AtomicBool::new(false),
            cancel: Notify::new(),
            log: Mutex::new((None, 0)),
        })
    }

    /// Whether this queue serves `max_in_flight` places (a changed setting gets a new queue).
    pub fn fits(&self, max_in_flight: usize) -> bool {
        self.max_in_flight == max_in_flight && !self.is_cancelled()
    }

    /// Cancels every copy not yet sent, now and later.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once the queue is cancelled.
    async fn cancelled(&self) {
        loop {
            let n = self.cancel.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            n.await;
        }
    }

    /// Copies waiting for a place right now.
    pub fn waiting(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// A service's mirror deployment, as one snapshot has it.
pub struct Mirror {
    pub service: String,
    pub deployment: String,
    header: HeaderValue,
    upstream: Arc<Upstream>,
    forward: ForwardSettings,
    pub settings: MirrorConfig,
    pub queue: Arc<Queue>,
    metrics: MirrorMetrics,
}

/// What the copy of a request carries besides its body.
pub struct CopyRequest {
    query: Option<String>,
    headers: HeaderMap,
}

impl CopyRequest {
    /// The copy's headers: the fixed list and `extra` (`mirror_headers`) from the request as
    /// forwarded, `x-scoregate-mirror: 1` and the mirror deployment's name. Nothing else.
    pub fn from(parts: &http::request::Parts, mirror: &Mirror) -> CopyRequest {
        let mut headers = HeaderMap::new();
        let extra = mirror
            .settings
            .headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok());
        for name in COPIED.into_iter().chain(extra) {
            for v in parts.headers.get_all(&name) {
                headers.append(name.clone(), v.clone());
            }
        }
        headers.insert(X_SCOREGATE_MIRROR, HeaderValue::from_static("1"));
        headers.insert(AZUREML_MODEL_DEPLOYMENT, mirror.header.clone());
        CopyRequest {
            query: parts.uri.query().map(str::to_string),
            headers,
        }
    }
}

/// The live answer a copy is compared with.
pub struct Live {
    pub status: u16,
    pub json: bool,
    /// The live backend's time to its response head.
    pub head: Duration,
    /// The live response body, once the client has been sent all of it.
    pub body: oneshot::Receiver<Copied>,
}

/// One mirrored request.
pub struct Job {
    pub request: CopyRequest,
    /// The request body, once it has been read to its end.
    pub body: oneshot::Receiver<Copied>,
    pub live: Live,
    pub request_id: HeaderValue,
}

impl Mirror {
    pub fn new(
        service: &str,
        deployment: &str,
        upstream: Arc<Upstream>,
        forward: ForwardSettings,
        settings: MirrorConfig,
        queue: Arc<Queue>,
        metrics: MirrorMetrics,
    ) -> Mirror {
        Mirror {
            service: service.into(),
            deployment: deployment.into(),
            header: HeaderValue::from_str(deployment).expect("a deployment name is a header value"),
            upstream,
            forward,
            settings,
            queue,
            metrics,
        }
    }

    /// Runs a copy in a task of its own; every submitted copy is counted under one result.
    pub fn submit(self: &Arc<Self>, job: Job) {
        let me = self.clone();
        tokio::spawn(async move {
            let r = me.run(job).await;
            me.metrics.count(r);
        });
    }

    /// The copy's three phases. A cancellation (a reload that removes the mirror, the drain)
    /// stops the first two, and the copy is counted by how far it got — the contract has no
    /// result of its own for a cancelled copy: one not yet sent had no place (`skipped_busy`),
    /// one sent got no answer (`error`). The comparison, which no longer touches the mirror
    /// deployment, is not cancelled.
    async fn run(&self, job: Job) -> MirrorResult {
        let Job {
            request,
            body,
            live,
            request_id,
        } = job;
        let q = &self.queue;
        // 1. The request body, a place among mirror_max_in_flight, a backend slot.
        // Biased, cancellation first: a copy woken by both the cancellation and a freed place
        // must not go on to send.
        let ready = tokio::select! {
            biased;
            _ = q.cancelled() => return MirrorResult::SkippedBusy,
            r = self.prepare(body) => r,
        };
        let (body, _permit, slot) = match ready {
            Ok(x) => x,
            Err(r) => return r,
        };
        // 2. Sent: its answer, head and body.
        let answer = tokio::select! {
            biased;
            _ = q.cancelled() => return MirrorResult::Error,
            r = self.exchange(request, body, slot, live.head) => r,
        };
        let (status, json, mirror_body) = match answer {
            Ok(a) => a,
            Err(r) => return r,
        };
        // 3. The comparison with the live answer.
        self.judge(live, &request_id, status, json, mirror_body)
            .await
    }

    /// Everything before the copy is sent: its body read to the end, a place among
    /// mirror_max_in_flight (waiting among at most mirror_queue), a free slot of the mirror
    /// deployment now or never.
    async fn prepare(
        &self,
        body: oneshot::Receiver<Copied>,
    ) -> Result<(Bytes, OwnedSemaphorePermit, InFlight), MirrorResult> {
        let body = match body.await {
            Ok(Copied::Complete(frames)) => concat(frames),
            Ok(Copied::TooLarge) => return Err(MirrorResult::SkippedTooLarge),
            Err(_) => return Err(MirrorResult::SkippedLiveFailed),
        };
        let permit = match self.queue.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let q = &self.queue.queued;
                if q.fetch_add(1, Ordering::Relaxed) >= self.settings.queue {
                    q.fetch_sub(1, Ordering::Relaxed);
                    return Err(MirrorResult::SkippedBusy);
                }
                // Counted out of the queue however the wait ends (also when cancelled).
                let _waiting = Decrement(q);
                match self.queue.permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return Err(MirrorResult::SkippedBusy),
                }
            }
        };
        let slot = match self.upstream.try_acquire(self.forward.limit) {
            Ok(s) => s,
            Err(Refusal::NoBackend) => return Err(MirrorResult::Error),
            Err(_) => return Err(MirrorResult::SkippedBusy),
        };
        Ok((body, permit, slot))
    }

    /// Sends the copy and reads its answer (status, JSON media type, body or `None` when over
    /// mirror_max_body), all within the mirror deployment's scoring_timeout. Connect failures
    /// and successes feed the backend's passive health like a live request's, so a mirror
    /// target that refuses connections shows as down (admin API, `scoregate_backend_up`); the
    /// copy is not counted in `scoregate_backend_requests_total` (copies appear only in
    /// `scoregate_mirror_*`, contract §8).
    async fn exchange(
        &self,
        request: CopyRequest,
        body: Bytes,
        slot: InFlight,
        live_head: Duration,
    ) -> Result<(u16, bool, Option<Bytes>), MirrorResult> {
        let backend = slot.backend().clone();
        let mut req = Request::new(Either::Right(Full::new(body)));
        *req.method_mut() = Method::POST;
        *req.headers_mut() = request.headers;
        let path = match &request.query {
            Some(q) => PathAndQuery::try_from(format!("{}?{q}", self.forward.score_path.path()))
                .expect("a validated score_path and a parsed query"),
            None => self.forward.score_path.clone(),
        };
        let sent = Instant::now();
        let deadline = sent + self.forward.scoring_timeout;
        let resp = match tokio::time::timeout_at(
            deadline,
            backend.pool.clone().send(self.upstream.protocol, path, req),
        )
        .await
        {
            Ok(Ok(r)) => {
                backend.connect_succeeded();
                r
            }
            Ok(Err(e)) => {
                if e.is_connect() {
                    backend.connect_failed();
                } else {
                    backend.connect_succeeded();
                }
                backend.record_error(format!("mirrored copy: {}", DisplayChain(&e)));
                return Err(MirrorResult::Error);
            }
            Err(_) => {
                backend.record_error(format!(
                    "mirrored copy: no response head within scoring_timeout ({})",
                    humantime::format_duration(self.forward.scoring_timeout)
                ));
                return Err(MirrorResult::Error);
            }
        };
        let head = sent.elapsed();
        if !live_head.is_zero() {
            self.metrics
                .latency_ratio
                .observe(head.as_secs_f64() / live_head.as_secs_f64());
        }
        let status = resp.status().as_u16();
        let json = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_media_type);
        let mut mirror_body = BytesMut::new();
        let mut rb = resp.into_body();
        loop {
            match tokio::time::timeout_at(deadline, rb.frame()).await {
                Ok(Some(Ok(f))) => {
                    if let Some(d) = f.data_ref() {
                        if mirror_body.len() + d.len() > self.settings.max_body as usize {
                            return Ok((status, json, None));
                        }
                        mirror_body.extend_from_slice(d);
                    }
                }
                Ok(None) => break,
                Ok(Some(Err(_))) | Err(_) => return Err(MirrorResult::Error),
            }
        }
        drop(rb);
        drop(slot);
        Ok((status, json, Some(mirror_body.freeze())))
    }

    /// Waits for the live body and compares the two answers.
    async fn judge(
        &self,
        live: Live,
        request_id: &HeaderValue,
        status: u16,
        json: bool,
        mirror_body: Option<Bytes>,
    ) -> MirrorResult {
        let live_body = match tokio::time::timeout(LIVE_BODY_WAIT, live.body).await {
            Ok(Ok(c)) => c,
            _ => return MirrorResult::SkippedLiveFailed,
        };
        let live_body = match live_body {
            Copied::Complete(frames) => Some(concat(frames)),
            Copied::TooLarge => None,
        };
        let (live_body, mirror_body) = match (live_body, mirror_body) {
            (Some(l), Some(m)) => (l, m),
            _ if status == live.status => return MirrorResult::UncheckedTooLarge,
            _ => {
                self.log_difference(request_id, live.status, status, None);
                return MirrorResult::DifferentStatus;
            }
        };
        let verdict = compare(
            &Answer {
                status: live.status,
                json: live.json,
                body: &live_body,
            },
            &Answer {
                status,
                json,
                body: &mirror_body,
            },
            self.settings.tolerance,
        );
        match verdict {
            Verdict::Same => MirrorResult::Same,
            Verdict::DifferentStatus => {
                self.log_difference(request_id, live.status, status, None);
                MirrorResult::DifferentStatus
            }
            Verdict::DifferentBody { path } => {
                self.log_difference(request_id, live.status, status, Some(path));
                MirrorResult::DifferentBody
            }
        }
    }

    /// One line per difference, at most one per second per service (with the count of lines
    /// suppressed since the last): the request id, both statuses, the first differing JSON
    /// path. Never a body value.
    fn log_difference(
        &self,
        request_id: &HeaderValue,
        live: u16,
        mirror: u16,
        path: Option<Option<String>>,
    ) {
        let suppressed = {
            let mut l = self.queue.log.lock().unwrap();
            let now = Instant::now();
            if l.0.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
                l.1 += 1;
                return;
            }
            l.0 = Some(now);
            std::mem::take(&mut l.1)
        };
        let path = match &path {
            Some(Some(p)) => p.as_str(),
            Some(None) => "(bytes)",
            None => "-",
        };
        tracing::warn!(
            target: "mirror",
            service = %self.service,
            deployment = %self.deployment,
            request_id = request_id.to_str().unwrap_or("-"),
            live_status = live,
            mirror_status = mirror,
            path,
            suppressed,
            "the mirrored answer differs from the live one"
        );
    }

    /// Counts a drawn copy that was never made (the live forward failed).
    pub fn count(&self, r: MirrorResult) {
        self.metrics.count(r);
    }
}

/// Takes one off a count when dropped.
struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn concat(frames: Vec<Bytes>) -> Bytes {
    match frames.len() {
        0 => Bytes::new(),
        1 => frames.into_iter().next().expect("one frame"),
        _ => {
            let mut b = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
            for f in frames {
                b.extend_from_slice(&f);
            }
            b.freeze()
        }
    }
}

/// A drawn copy before its job exists: dropped without being `take`n (the live forward failed,
/// or the client left before the live head), it counts `skipped_live_failed`.
pub struct Drawn(Option<Arc<Mirror>>);

impl Drawn {
    pub fn new(m: Arc<Mirror>) -> Drawn {
        Drawn(Some(m))
    }

    pub fn mirror(&self) -> &Arc<Mirror> {
        self.0.as_ref().expect("not taken")
    }

    pub fn take(mut self) -> Arc<Mirror> {
        self.0.take().expect("not taken")
    }
}

impl Drop for Drawn {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            m.count(MirrorResult::SkippedLiveFailed);
        }
    }
}

/// A response body that keeps a copy of its frames for a mirror's comparison (`None`: an
/// ordinary response, which pays one branch per frame).
pub struct Tee<B> {
    inner: B,
    copy: Option<Box<CopyTee>>,
}

impl<B> Tee<B> {
    pub fn plain(inner: B) -> Tee<B> {
        Tee { inner, copy: None }
    }

    /// A tee keeping up to `max` bytes, and the receiver of the copy (sent when the body ends;
    /// dropped unsent when it fails or the client goes).
    pub fn copying(inner: B, max: u64) -> (Tee<B>, oneshot::Receiver<Copied>)
    where
        B: Body,
    {
        let (mut tee, rx) = CopyTee::new(max);
        if inner.is_end_stream() {
            // Nothing will poll an empty body.
            tee.end();
        }
        (
            Tee {
                inner,
                copy: Some(Box::new(tee)),
            },
            rx,
        )
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(c) = &mut this.copy {
            match &r {
                Poll::Ready(Some(Ok(f))) => {
                    if let Some(d) = f.data_ref() {
                        c.data(d);
                    }
                    if this.inner.is_end_stream() {
                        c.end();
                    }
                }
                Poll::Ready(None) => c.end(),
                _ => {}
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendProtocol;
    use crate::proxy::upstream::Backend;

    /// A backend that accepts connections and reads requests but never answers.
    async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        (addr, task)
    }

    fn job(body: oneshot::Receiver<Copied>, live_body: oneshot::Receiver<Copied>) -> Job {
        Job {
            request: CopyRequest {
                query: None,
                headers: HeaderMap::new(),
            },
            body,
            live: Live {
                status: 200,
                json: true,
                head: Duration::from_millis(1),
                body: live_body,
            },
            request_id: HeaderValue::from_static("req-1"),
        }
    }

    /// A cancelled copy is counted by how far it got: sent and waiting for its answer,
    /// `error`; waiting in the queue or for its request body, `skipped_busy`. The queue's
    /// waiting count comes back to 0.
    #[tokio::test]
    async fn a_cancelled_copy_is_counted_once_by_how_far_it_got() {
        let (addr, hole) = black_hole().await;
        let uri: http::Uri = format!("http://{addr}").parse().unwrap();
        let backend = Arc::new(Backend::new(&uri));
        let upstream = Arc::new(Upstream::new(vec![backend.clone()], BackendProtocol::Http1));
        let metrics = crate::metrics::Metrics::new().for_mirror("iris", "green");
        let queue = Queue::new(1);
        let mirror = Arc::new(Mirror::new(
            "iris",
            "green",
            upstream,
            ForwardSettings {
                score_path: PathAndQuery::from_static("/score"),
                scoring_timeout: Duration::from_secs(60),
                max_body: 1 << 20,
                limit: 0,
                max_wait: Duration::from_millis(500),
                body_idle: Duration::from_secs(60),
            },
            MirrorConfig {
                max_in_flight: 1,
                queue: 8,
                ..MirrorConfig::default()
            },
            queue.clone(),
            metrics.clone(),
        ));
        let mut keep = Vec::new();
        // Three copies with their bodies: one is sent (and never answered), two wait in the
        // queue; a fourth waits for its request body.
        for _ in 0..3 {
            let (tx, rx) = oneshot::channel();
            tx.send(Copied::Complete(vec![Bytes::from_static(b"{}")]))
                .unwrap();
            let (live_tx, live_rx) = oneshot::channel();
            keep.push(live_tx);
            mirror.submit(job(rx, live_rx));
        }
        let (body_tx, rx) = oneshot::channel();
        let (live_tx, live_rx) = oneshot::channel();
        keep.push(live_tx);
        mirror.submit(job(rx, live_rx));
        let t = Instant::now();
        while !(backend.in_flight() == 1 && queue.waiting() == 2) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the copies did not start"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Give the sent copy time to reach the backend.
        tokio::time::sleep(Duration::from_millis(100)).await;
        queue.cancel();
        let t = Instant::now();
        while metrics.counted(MirrorResult::Error) + metrics.counted(MirrorResult::SkippedBusy) < 4
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "error {}, skipped_busy {}",
                metrics.counted(MirrorResult::Error),
                metrics.counted(MirrorResult::SkippedBusy)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(metrics.counted(MirrorResult::Error), 1);
        assert_eq!(metrics.counted(MirrorResult::SkippedBusy), 3);
        assert_eq!(queue.waiting(), 0);
        let t = Instant::now();
        while backend.in_flight() != 0 {
            assert!(t.elapsed() < Duration::from_secs(10), "the slot was kept");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop((body_tx, keep));
        hole.abort();
    }
}

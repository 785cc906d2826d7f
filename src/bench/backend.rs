//! The built-in run's backend: a fast HTTP/1.1 server of the bench's own, on a thread of its own,
//! so that its CPU time is read apart from the load generator's. It stands in for the peers'
//! 1-worker nginx backend in `bench/` and answers byte for byte the same.
//!
//! It listens on one port per deployment of the built-in service (`--deployments`, and the
//! candidate of `--mirror`), all served by the same thread, and counts the scoring requests it
//! got: live ones, and mirrored copies (`x-scoregate-mirror: 1`), so a run can report how many
//! copies really went out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::procfs::thread_id;

/// The built-in backend's answer, byte for byte the peers' nginx backend's.
const BACKEND_ANSWER: &str = r#"{"result":[0.1,0.9]}"#;
/// The header the gateway marks mirrored copies with (contract §8).
const MIRROR_HEADER: http::HeaderName = http::HeaderName::from_static("x-scoregate-mirror");

/// Scoring requests the backend got so far, over all its ports.
#[derive(Default)]
pub(super) struct Counts {
    /// Requests without `x-scoregate-mirror` (live traffic).
    pub(super) live: AtomicU64,
    /// Mirrored copies (`x-scoregate-mirror: 1`).
    pub(super) copies: AtomicU64,
}

impl Counts {
    /// (live, copies) now.
    pub(super) fn read(&self) -> (u64, u64) {
        (
            self.live.load(Ordering::Relaxed),
            self.copies.load(Ordering::Relaxed),
        )
    }
}

/// The fast backend: plain HTTP/1.1 keep-alive on one thread of its own (like the peers'
/// 1-worker nginx), answering every request with `{"result":[0.1,0.9]}` after reading its body.
/// `GET /` answers too, so the gateway's health checks pass.
pub(super) struct BackendGuard {
    /// One address per port, in the order asked for.
    pub(super) addrs: Vec<SocketAddr>,
    /// Its thread's id, to read its CPU time apart from the load generator's.
    pub(super) tid: Option<u32>,
    pub(super) counts: Arc<Counts>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl BackendGuard {
    /// Listens on `ports` loopback ports (at least one), served by one thread.
    pub(super) fn start(ports: usize) -> anyhow::Result<BackendGuard> {
        let mut listeners = Vec::with_capacity(ports);
        let mut addrs = Vec::with_capacity(ports);
        for _ in 0..ports.max(1) {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            addrs.push(l.local_addr()?);
            listeners.push(l);
        }
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("bench-backend".into())
            .spawn(move || {
                let _ = tid_tx.send(thread_id());
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let mut serving = tokio::task::JoinSet::new();
                    for l in listeners {
                        let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                            return;
                        };
                        serving.spawn(backend_serve(l, c.clone()));
                    }
                    let _ = stopped.await;
                    serving.abort_all();
                });
            })?;
        let tid = tid_rx.recv_timeout(Duration::from_secs(5)).ok().flatten();
        Ok(BackendGuard {
            addrs,
            tid,
            counts,
            stop: Some(stop),
        })
    }
}

impl Drop for BackendGuard {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn backend_serve(l: tokio::net::TcpListener, counts: Arc<Counts>) {
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let counts = counts.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| {
                let counts = counts.clone();
                async move {
                    if req.method() == http::Method::POST {
                        let n = if req.headers().contains_key(MIRROR_HEADER) {
                            &counts.copies
                        } else {
                            &counts.live
                        };
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut body = req.into_body();
                    while let Some(f) = body.frame().await {
                        f?;
                    }
                    let mut r = http::Response::new(Full::new(Bytes::from_static(
                        BACKEND_ANSWER.as_bytes(),
                    )));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, hyper::Error>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

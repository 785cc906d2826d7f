//! The built-in run's backend: a fast HTTP/1.1 server of the bench's own, on a thread of its own,
//! so that its CPU time is read apart from the load generator's. It stands in for the peers'
//! 1-worker nginx backend in `bench/` and answers byte for byte the same.

use std::net::SocketAddr;
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

/// The fast backend: plain HTTP/1.1 keep-alive on one thread of its own (like the peers'
/// 1-worker nginx), answering every request with `{"result":[0.1,0.9]}` after reading its body.
/// `GET /` answers too, so the gateway's health checks pass.
pub(super) struct BackendGuard {
    pub(super) addr: SocketAddr,
    /// Its thread's id, to read its CPU time apart from the load generator's.
    pub(super) tid: Option<u32>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl BackendGuard {
    pub(super) fn start() -> anyhow::Result<BackendGuard> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
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
                    let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = stopped => {}
                        _ = backend_serve(l) => {}
                    }
                });
            })?;
        let tid = tid_rx.recv_timeout(Duration::from_secs(5)).ok().flatten();
        Ok(BackendGuard {
            addr,
            tid,
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

async fn backend_serve(l: tokio::net::TcpListener) {
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let mut body = req.into_body();
                while let Some(f) = body.frame().await {
                    f?;
                }
                let mut r =
                    http::Response::new(Full::new(Bytes::from_static(BACKEND_ANSWER.as_bytes())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Ok::<_, hyper::Error>(r)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

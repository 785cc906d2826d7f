//! The admin listener (contract §2): plain HTTP for operators, loopback by default.
//!
//! `/healthz`, `/readyz` and `/metrics` are open; everything under `/v1` needs the admin token
//! (`Authorization: Bearer <token>`, compared in constant time), see `api`. The token is read
//! from `admin.token_file`, or generated there (0600) when the file is missing.
//!
//! The listener is bound before the gateway's state is built (`bind`), and serves once it is
//! (`Bound::start`), so a taken port fails the start before anything is written.

pub mod api;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::config::AdminConfig;
use crate::state::Shared;

/// Admin connections open at once: operators, a metrics scraper and probes need a handful; a
/// flood of them must not take file descriptors from the scoring side.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// How long the admin accept loop pauses after a failed `accept` (EMFILE) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// An admin request head must arrive within this (a slow client holds one of few slots).
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound admin listener, not yet serving.
pub struct Bound {
    listener: TcpListener,
}

/// The state the admin API answers from: empty while the gateway is still starting (a replica
/// waiting for its shared store), when only `/healthz` (200) and `/readyz` (503) answer.
pub type StateCell = Arc<arc_swap::ArcSwapOption<Shared>>;

pub struct AdminListener {
    shared: StateCell,
    listener: TcpListener,
    token: Arc<String>,
    pub local_addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin token file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin token file {} is empty", .path.display())]
    Empty { path: PathBuf },
    #[error("cannot write a new admin token to {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads the admin token. A missing file gets a new token (0600) when `generate` is set.
/// Blocking.
pub fn load_token(path: &Path, generate: bool) -> Result<String, TokenError> {
    match crate::files::read_text_capped(path, crate::files::MAX_SMALL_FILE) {
        Ok(t) => {
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(TokenError::Empty { path: path.into() });
            }
            Ok(t)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => {
            let write = |source| TokenError::Write {
                path: path.into(),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(write)?;
            }
            let t = crate::crypto::generate_key();
            crate::files::write_atomically(path, format!("{t}\n").as_bytes()).map_err(write)?;
            tracing::info!(path = %path.display(), "generated a new admin token");
            Ok(t)
        }
        Err(source) => Err(TokenError::Read {
            path: path.into(),
            source,
        }),
    }
}

/// Binds the admin address.
pub async fn bind(cfg: &AdminConfig) -> anyhow::Result<Bound> {
    let listener = TcpListener::bind(cfg.address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on admin address {}: {e}", cfg.address))?;
    Ok(Bound { listener })
}

impl Bound {
    /// Loads the admin token (made when missing if `generate`: with a shared store it must come
    /// from a file, e.g. a Secret, and is never generated); the listener is then ready to serve
    /// from `shared` (which may still be empty).
    pub async fn start(
        self,
        shared: StateCell,
        cfg: &AdminConfig,
        generate: bool,
    ) -> anyhow::Result<AdminListener> {
        let path = cfg.token_file.clone();
        let token = tokio::task::spawn_blocking(move || load_token(&path, generate))
            .await?
            .map_err(|e| match e {
                TokenError::Read { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
                    anyhow::anyhow!(
                        "admin token file {} does not exist: with a shared store it is never generated (every replica needs the same one, e.g. from a Secret)",
                        path.display()
                    )
                }
                // The message already holds its cause: no chain to print twice.
                e => anyhow::anyhow!("{e}"),
            })?;
        let local_addr = self.listener.local_addr()?;
        tracing::info!(address = %local_addr, token_file = %cfg.token_file.display(), "admin listener ready");
        Ok(AdminListener {
            shared,
            listener: self.listener,
            token: Arc::new(token),
            local_addr,
        })
    }
}

impl AdminListener {
    pub async fn serve(self, mut stop: watch::Receiver<bool>) {
        let graceful = GracefulShutdown::new();
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(ADMIN_HEADER_TIMEOUT);
        let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
        loop {
            let (tcp, _) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
                _ = stop.changed() => break,
            };
            // At the cap a new connection is closed at once.
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let cell = self.shared.clone();
            let token = self.token.clone();
            let svc = service_fn(move |req| {
                let shared = cell.load_full();
                let token = token.clone();
                async move {
                    Ok::<_, Infallible>(match shared {
                        Some(shared) => api::route(&shared, &token, req).await,
                        None => api::starting(&req),
                    })
                }
            });
            let conn = graceful.watch(builder.serve_connection(TokioIo::new(tcp), svc));
            tokio::spawn(async move {
                let _ = conn.await;
                drop(permit);
            });
        }
        graceful.shutdown().await;
    }
}

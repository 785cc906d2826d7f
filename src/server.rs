//! Listeners and connections: accept (listener allow/deny, connection cap) → TLS handshake
//! (SNI picks the certificate, bounded in time) → HTTP/1.1 or HTTP/2 by ALPN (hyper, with explicit
//! header limits and timeouts) → `gateway::handle` per request. Also start-up and graceful drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, Limits};
use crate::gateway::{self, ConnInfo};
use crate::state::Gateway;

/// HTTP/2 PINGs find dead peers behind NATs that silently dropped the connection.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// hyper's minimum read buffer; the header limit may ask for more.
const MIN_READ_BUF: usize = 8 * 1024;

/// A running gateway: its bound addresses and the handle to stop it.
pub struct Server {
    pub gateway: Arc<Gateway>,
    /// Bound scoring listener addresses (useful when the config asked for port 0).
    pub addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Builds the gateway, binds every listener and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    let admin_cfg = config.admin.clone();
    let addresses = config.listen.addresses.clone();
    let limits = config.limits.clone();
    let gw = Gateway::new(config)?;
    let (shutdown, _) = watch::channel(false);
    let mut listeners = Vec::new();
    for a in &addresses {
        let l = TcpListener::bind(a)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {a}: {e}"))?;
        listeners.push(l);
    }
    let admin = crate::admin::bind(gw.clone(), &admin_cfg).await?;
    let admin_addr = admin.local_addr;
    let mut tasks = vec![tokio::spawn(admin.serve(shutdown.subscribe()))];
    let mut addrs = Vec::new();
    let conn_slots = Arc::new(Semaphore::new(limits.max_connections));
    for l in listeners {
        addrs.push(l.local_addr()?);
        tasks.push(tokio::spawn(accept_loop(
            gw.clone(),
            l,
            limits.clone(),
            conn_slots.clone(),
            shutdown.subscribe(),
        )));
    }
    let _ = gw.bound.set(addrs.clone());
    gw.ready.store(true, Ordering::SeqCst);
    for a in &addrs {
        tracing::info!(address = %a, "scoring listener ready");
    }
    Ok(Server {
        gateway: gw,
        addrs,
        admin_addr,
        shutdown,
        tasks,
    })
}

impl Server {
    /// Graceful stop: not ready, stop accepting, let in-flight requests finish (idle keep-alive
    /// connections close, HTTP/2 clients get GOAWAY), at most `drain_timeout`. Returns as soon as
    /// nothing is left, or at the deadline.
    pub async fn shutdown(self, drain_timeout: Duration) {
        self.gateway.ready.store(false, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        let all = futures_join_all(self.tasks);
        if tokio::time::timeout(drain_timeout, all).await.is_err() {
            tracing::warn!(
                in_flight = self.gateway.in_flight.load(Ordering::Relaxed),
                "drain timeout reached; closing remaining connections"
            );
        }
    }
}

async fn futures_join_all(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

async fn accept_loop(
    gw: Arc<Gateway>,
    listener: TcpListener,
    limits: Limits,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(gw.tls_config.clone());
    let graceful = GracefulShutdown::new();
    let builders = Arc::new(Builders::new(&limits));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        // Listener allow/deny: before any TLS work.
        if !gw.snapshot().listener_policy.admits(peer.ip()) {
            gw.metrics
                .connections_refused
                .with_label_values(&["policy"])
                .inc();
            drop(tcp);
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            gw.metrics
                .connections_refused
                .with_label_values(&["max_connections"])
                .inc();
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let watcher = graceful.watcher();
        let gw = gw.clone();
        let acceptor = acceptor.clone();
        let builders = builders.clone();
        let hs_timeout = limits.tls_handshake_timeout;
        tokio::spawn(async move {
            gw.metrics.connections.inc();
            serve_connection(&gw, acceptor, tcp, peer, hs_timeout, &builders, watcher).await;
            gw.metrics.connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// hyper connection builders, configured once per listener from the limits.
struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &Limits) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_headers(limits.max_headers)
            .max_header_size(limits.max_header_size)
            .max_buf_size(limits.max_header_size.max(MIN_READ_BUF))
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(limits.max_header_size as u32)
            .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
        Builders { h1, h2 }
    }
}

async fn serve_connection(
    gw: &Arc<Gateway>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    hs_timeout: Duration,
    builders: &Builders,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let tls = match tokio::time::timeout(hs_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = if e.kind() == std::io::ErrorKind::InvalidData {
                "protocol"
            } else {
                "io"
            };
            gw.metrics
                .tls_handshake_failures
                .with_label_values(&[reason])
                .inc();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            gw.metrics
                .tls_handshake_failures
                .with_label_values(&["timeout"])
                .inc();
            return;
        }
    };
    gw.metrics.tls_handshakes.inc();
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let conn = Arc::new(ConnInfo { client: peer, peer });
    let gw2 = gw.clone();
    let svc = service_fn(move |req| gateway::handle(gw2.clone(), conn.clone(), req));
    let io = TokioIo::new(tls);
    let result = if h2 {
        watcher.watch(builders.h2.serve_connection(io, svc)).await
    } else {
        watcher.watch(builders.h1.serve_connection(io, svc)).await
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

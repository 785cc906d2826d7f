//! Listeners and connections, the front of a request's path:
//!
//! ```text
//! accept (listener allow/deny, connection cap) → PROXY v2 header (trusted proxies only)
//!   → TLS (SNI picks the certificate) → HTTP/1.1 or HTTP/2 by ALPN → gateway::handle
//! ```
//!
//! `accept` owns the listeners and each connection up to an established TLS stream; `http`
//! serves HTTP on it; `park` lets an idle HTTP/1.1 connection wait without hyper's buffers;
//! `timers` holds the per-connection timers (header read, idle, send). This
//! module starts and stops the whole: `start` binds the listeners and builds the state, `run`
//! serves until a stop signal (reloading on SIGHUP), and `Server::shutdown` drains. `announce`
//! logs what a start serves (and how to get its credentials); `pid_file` is `--pid-file`.
//!
//! Limits, all from `[limits]`:
//! - `tls_handshake_timeout` bounds the PROXY header and the TLS handshake together.
//! - `header_read_timeout` (HTTP/1.1): from the end of the TLS handshake, or from the first byte
//!   of a later request on a keep-alive connection, to a complete request head. A slowloris
//!   connection (a head that trickles in, or nothing at all after TLS) is closed when it runs
//!   out, without an answer (the contract allows a closed connection there).
//! - `idle_timeout`: a connection with no request in progress — and, on HTTP/1.1, no byte of a
//!   new one — is closed this long after its last response ended (HTTP/1.1: closed with TLS
//!   `close_notify`; HTTP/2: GOAWAY). The two timers are independent. hyper's own
//!   `header_read_timeout` is turned off because its timer also runs while a keep-alive
//!   connection waits for its next request, which would cap every idle HTTP/1.1 connection at
//!   the (much shorter) header timeout.
//! - `idle_timeout` is also the send timeout: a connection whose writes to the client have been
//!   blocked that long (the client stopped reading its response) is dropped
//!   (`connection_timeouts{reason="send"}`), which frees the backend connection behind it.
//! - `max_header_size`, `max_headers`: hyper answers a larger HTTP/1.1 head with a bare 431 and
//!   closes the connection; on HTTP/2 the header list limit is advertised in SETTINGS and the h2
//!   layer answers a larger list with 431 on that stream (the connection stays).
//! - `max_connections`: counted across all listeners, from accept to close. At the cap a new
//!   connection is accepted and closed at once, before TLS (`connections_refused{reason=
//!   "max_connections"}`): the client learns immediately, instead of waiting unseen in the kernel
//!   backlog, and accepting goes on so a closed connection frees a slot at once.
//! - Not a setting: an HTTP/1.1 connection idle for a second is parked (`park`), and one the
//!   gateway closes while the client is still sending gets a lingering close (`http::linger`).
//! - `h2_max_concurrent_streams`: advertised per HTTP/2 connection.
//! - `max_in_flight`: requests across all connections; `gateway::admit` answers 503 beyond it.
//!
//! Network policy: listener `allow`/`deny` is checked at accept, before any TLS work, on the
//! client as `client::Trust` sees it (the TCP peer, or the source of a PROXY v2 header from a
//! trusted proxy). A LOCAL header (the proxy's own health check) keeps the proxy as the client
//! and is admitted because the proxy is trusted. A trusted peer that sends no valid header is
//! closed. From any other peer a PROXY header is not read: its bytes reach the TLS layer, which
//! fails the handshake, so a forged header only gets its sender disconnected.
//!
//! Drain (`Server::shutdown`): `/readyz` turns 503; the scoring listeners close (new connections
//! are refused); connections still in their handshake are dropped; idle HTTP/1.1 connections close
//! and busy ones close after their response; HTTP/2 connections get GOAWAY and finish their
//! streams. It ends as soon as the last connection is gone, or at the drain deadline, when the rest
//! are closed. Then the key-usage counts are written (`state::usage`), and the admin listener
//! stops last, so `/readyz` answers 503 throughout the drain.

mod accept;
pub mod announce;
mod http;
mod park;
mod pid_file;
mod timers;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, Limits, StoreConfig};
use crate::state::Shared;
use crate::store::StoreError;

/// What every connection of every scoring listener shares.
struct Front {
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    limits: Limits,
    builders: http::Builders,
    /// `limits.max_connections`, across all listeners.
    slots: Arc<Semaphore>,
    /// Connections per client address (`limits.max_connections_per_client`).
    per_client: Arc<accept::PerClient>,
    /// Bumped when the connection cap is near, so idle connections close first.
    pressure: watch::Sender<u64>,
}

/// After the drain deadline, connections are told to close; this bounds the wait for that.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// The admin listener stops after the drain; its open requests (a scrape, a reload) get this long.
const ADMIN_STOP_WAIT: Duration = Duration::from_secs(2);

/// Where the scoring side is in its life; connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Stop accepting; let requests in progress finish.
    Draining,
    /// The drain deadline passed: close what is left.
    Closing,
}

/// A running gateway: its bound addresses and the handle to stop it.
pub struct Server {
    pub shared: Arc<Shared>,
    /// Bound scoring listener addresses (useful when the config asked for port 0).
    pub addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    phase: watch::Sender<Phase>,
    admin_stop: watch::Sender<bool>,
    accept_tasks: Vec<JoinHandle<()>>,
    /// The worker threads that run the accept loops and connections (`worker_threads` > 1).
    workers: Option<workers::Workers>,
    admin_task: JoinHandle<()>,
    watcher: Option<JoinHandle<()>>,
    /// Writes the key-usage counts every few seconds (`state::usage`).
    usage_writer: JoinHandle<()>,
    /// Every connection task holds a clone; when all are gone, `drained` yields `None`.
    open: mpsc::Sender<()>,
    drained: mpsc::Receiver<()>,
}

/// How long a replica waits between attempts to reach a shared store it cannot start without,
/// at first and at most.
const START_RETRY_MIN: Duration = Duration::from_secs(1);
const START_RETRY_MAX: Duration = Duration::from_secs(30);

async fn bind_all(addresses: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for a in addresses {
        let l = TcpListener::bind(a)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {a}: {e}"))?;
        listeners.push(l);
    }
    Ok(listeners)
}

/// Binds the listeners, builds the state and starts serving.
///
/// With the file store every listener is bound first, so nothing is written to the state dir
/// when a port is taken. With a shared store the admin listener comes first (`/healthz` 200,
/// `/readyz` 503 meanwhile) and the state is retried with back-off until the store (or this
/// replica's cache of it) gives one; only then are the scoring listeners bound (contract §6).
pub async fn start(config: Config) -> anyhow::Result<Server> {
    let admin_cfg = config.admin.clone();
    let limits = config.limits.clone();
    let watch_files = config.server.watch;
    let file_store = matches!(config.store, StoreConfig::File);
    let addresses = config.listen.addresses.clone();
    let worker_count = workers::resolve(config.worker_threads);
    let mut listeners = Vec::new();
    if file_store {
        listeners = bind_all(&addresses).await?;
    }
    let cell: crate::admin::StateCell = Default::default();
    let admin = crate::admin::bind(&admin_cfg).await?;
    let admin = admin.start(cell.clone(), &admin_cfg, file_store).await?;
    let admin_addr = admin.local_addr;
    let (admin_stop, admin_rx) = watch::channel(false);
    let admin_task = tokio::spawn(admin.serve(admin_rx));
    let shared = if file_store {
        Shared::start(config).await?
    } else {
        let mut wait = START_RETRY_MIN;
        loop {
            match Shared::start(config.clone()).await {
                Ok(s) => break s,
                Err(crate::state::BuildError::Store(e))
                    if matches!(e, StoreError::NotReady(_) | StoreError::Unavailable(_)) =>
                {
                    tracing::error!(error = %e, retry_in = ?wait, "not ready: no state to serve yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(START_RETRY_MAX);
                }
                Err(e) => {
                    let _ = admin_stop.send(true);
                    return Err(e.into());
                }
            }
        }
    };
    cell.store(Some(shared.clone()));
    shared.restore_key_usage().await;
    let usage_writer = crate::state::usage::spawn_writer(shared.clone());
    if !file_store {
        listeners = bind_all(&addresses).await?;
    }

    let front = Arc::new(Front {
        shared: shared.clone(),
        acceptor: TlsAcceptor::from(shared.tls_config.clone()),
        builders: http::Builders::new(&limits),
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        per_client: Arc::new(accept::PerClient::new(limits.max_connections_per_client)),
        pressure: watch::channel(0).0,
        limits,
    });
    let (phase, _) = watch::channel(Phase::Serving);
    let (open, drained) = mpsc::channel(1);
    let workers = if worker_count > 1 {
        Some(workers::Workers::start(worker_count)?)
    } else {
        None
    };
    let mut addrs = Vec::new();
    let mut accept_tasks = Vec::new();
    for l in listeners {
        addrs.push(l.local_addr()?);
        let Some(workers) = &workers else {
            accept_tasks.push(tokio::spawn(accept::accept_loop(
                front.clone(),
                l,
                phase.subscribe(),
                open.clone(),
            )));
            continue;
        };
        // One accept loop per worker, each on a duplicate of the socket, registered with that
        // worker's runtime.
        let l = l.into_std()?;
        for worker in workers.handles() {
            let dup = {
                let _on_worker = worker.enter();
                TcpListener::from_std(l.try_clone()?)?
            };
            accept_tasks.push(worker.spawn(accept::accept_loop(
                front.clone(),
                dup,
                phase.subscribe(),
                open.clone(),
            )));
        }
    }
    let _ = shared.bound.set(addrs.clone());
    let watcher = watch_files.then(|| crate::reload::watch::spawn(shared.clone()));
    shared.ready.store(true, Ordering::SeqCst);
    for a in &addrs {
        tracing::info!(address = %a, "scoring listener ready");
    }
    Ok(Server {
        shared,
        addrs,
        admin_addr,
        phase,
        admin_stop,
        accept_tasks,
        workers,
        admin_task,
        watcher,
        usage_writer,
        open,
        drained,
    })
}

/// What `scoregate serve` adds to a start.
#[derive(Debug, Default, Clone)]
pub struct ServeOptions {
    /// Written once the listeners are bound, removed on a clean exit.
    pub pid_file: Option<std::path::PathBuf>,
}

/// `scoregate serve`: runs until SIGTERM/SIGINT, reloading on SIGHUP, then drains.
pub async fn run(config: Config, opts: ServeOptions) -> anyhow::Result<()> {
    announce::starting(&config);
    let mut signals = crate::signals::Signals::install()?;
    // A replica waiting for its shared store can still be stopped.
    let server = tokio::select! {
        s = start(config) => s?,
        () = signals.recv_stop() => return Ok(()),
    };
    let shared = server.shared.clone();
    announce::served(&shared);
    // Dropped (the file removed) when `run` returns, after the drain.
    let _pid_file = match &opts.pid_file {
        Some(path) => {
            let path = path.clone();
            match tokio::task::spawn_blocking(move || pid_file::PidFile::write(&path))
                .await
                .expect("writing the PID file does not panic")
            {
                Ok(f) => Some(f),
                Err(e) => {
                    server.shutdown(Duration::ZERO).await;
                    return Err(e);
                }
            }
        }
        None => None,
    };
    if let Some(mut hup) = signals.hangup.take() {
        let s = shared.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                let _ = crate::reload::reload(&s).await;
            }
        });
    }
    signals.wait_for_stop().await;
    // Read now, not at start: a reload may have changed it.
    let drain = shared.snapshot().config.server.drain_timeout;
    server.shutdown(drain).await;
    Ok(())
}

impl Server {
    /// Graceful stop: not ready, stop accepting, let in-flight requests finish (idle keep-alive
    /// connections close, HTTP/2 clients get GOAWAY), at most `drain_timeout`. Returns as soon as
    /// no connection is left, or at the deadline after closing the rest. The admin listener
    /// (`/readyz` answering 503) stops last.
    pub async fn shutdown(self, drain_timeout: Duration) {
        let Server {
            shared,
            phase,
            admin_stop,
            accept_tasks,
            workers,
            admin_task,
            watcher,
            usage_writer,
            open,
            mut drained,
            ..
        } = self;
        shared.ready.store(false, Ordering::SeqCst);
        // Mirrored copies are neither waited for nor counted in flight (contract §8).
        shared.cancel_mirrors();
        let _ = phase.send(Phase::Draining);
        for t in accept_tasks {
            let _ = t.await;
        }
        drop(open);
        let started = Instant::now();
        tracing::info!(
            connections = shared.metrics.connections.get(),
            in_flight = shared.in_flight.load(Ordering::Relaxed),
            drain_timeout = ?drain_timeout,
            "listeners closed; draining"
        );
        if tokio::time::timeout(drain_timeout, drained.recv())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = shared.metrics.connections.get(),
                in_flight = shared.in_flight.load(Ordering::Relaxed),
                "drain timeout reached; closing remaining connections"
            );
            let _ = phase.send(Phase::Closing);
            let _ = tokio::time::timeout(CLOSE_WAIT, drained.recv()).await;
        } else {
            tracing::info!(elapsed = ?started.elapsed(), "drained");
        }
        if let Some(w) = watcher {
            w.abort();
        }
        // The requests are done: their counts are final.
        usage_writer.abort();
        shared.flush_key_usage().await;
        let _ = admin_stop.send(true);
        let _ = tokio::time::timeout(ADMIN_STOP_WAIT, admin_task).await;
        if let Some(w) = workers {
            w.stop().await;
        }
    }
}

/// Resolves once the scoring side stops serving (a drain begins, or the server is gone).
async fn stopping(phase: &mut watch::Receiver<Phase>) {
    while *phase.borrow_and_update() == Phase::Serving {
        if phase.changed().await.is_err() {
            break;
        }
    }
}

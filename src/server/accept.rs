//! Accepting connections: the listener policy and the connection cap at accept, then the PROXY
//! v2 header (from trusted proxies) and the TLS handshake, under `tls_handshake_timeout`. An
//! established connection goes on to `http`. A connection whose first byte (after the PROXY
//! header) is not a TLS handshake record is plain HTTP sent to the HTTPS port: it gets a 400 that
//! says to use https, and is closed.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::http::serve_http;
use super::{Front, Phase, stopping};
use crate::client::ConnIdentity;
use crate::metrics::Metrics;
use crate::proxy_protocol;

/// How long the accept loop pauses after a failed `accept` (EMFILE and friends) instead of
/// spinning on it.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// When fewer than this share of `max_connections` is left, idle connections are asked to close
/// (as HAProxy and nginx reclaim keep-alive connections under pressure)...
const PRESSURE_FREE_SHARE: usize = 10;
/// ...at most this often.
const PRESSURE_EVERY: Duration = Duration::from_millis(100);

/// The first byte a TLS client sends: the content type of a handshake record (RFC 8446 §5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// After answering plain HTTP, how long the rest of the request is read before the close (a
/// close with unread bytes resets the connection, and the client may lose the answer)...
const PLAIN_HTTP_LINGER: Duration = Duration::from_secs(1);
/// ...and at most how much of it.
const PLAIN_HTTP_DRAIN: usize = 64 * 1024;

/// Open connections by client address, capped per address.
pub(super) struct PerClient {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerClient {
    pub(super) fn new(max: usize) -> Self {
        PerClient {
            max,
            counts: Mutex::default(),
        }
    }

    /// A place for one more connection from `ip`, or `None` at the cap.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut counts = self.counts.lock().unwrap();
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot(self.clone(), ip))
    }
}

/// One connection counted against its client address until dropped.
pub(super) struct ClientSlot(Arc<PerClient>, IpAddr);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.0.counts.lock().unwrap();
        if let Some(n) = counts.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.1);
            }
        }
    }
}

/// The connection's next byte, without consuming it; `None` at end of stream.
async fn first_byte(tcp: &TcpStream) -> io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    Ok(match tcp.peek(&mut b).await? {
        0 => None,
        _ => Some(b[0]),
    })
}

/// Answers a plain-HTTP request on the TLS port with a 400 in the contract's error shape, then
/// closes the connection.
async fn refuse_plain_http(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = r#"{"error":{"code":"BadRequest","message":"This port speaks HTTPS, and a plain HTTP request was sent to it. Use https:// in the URL."}}"#;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-ms-request-id: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len(),
        uuid::Uuid::new_v4()
    );
    if tcp.write_all(answer.as_bytes()).await.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(PLAIN_HTTP_LINGER, async {
        let mut sink = [0u8; 4096];
        let mut read = 0;
        while read < PLAIN_HTTP_DRAIN {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

fn refuse(metrics: &Metrics, reason: &str) {
    metrics
        .connections_refused
        .with_label_values(&[reason])
        .inc();
}

pub(super) async fn accept_loop(
    front: Arc<Front>,
    listener: TcpListener,
    mut phase: watch::Receiver<Phase>,
    open: mpsc::Sender<()>,
) {
    let mut last_pressure = Instant::now() - PRESSURE_EVERY;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = phase.changed() => break,
        };
        let snap = front.shared.snapshot();
        let conn = snap.trust.at_accept(peer);
        // Behind a trusted proxy the policy judges the client its PROXY header names.
        if !conn.expects_proxy_header() && !snap.listener_policy.admits(conn.client.ip()) {
            refuse(&front.shared.metrics, "policy");
            continue;
        }
        drop(snap);
        let Ok(permit) = front.slots.clone().try_acquire_owned() else {
            refuse(&front.shared.metrics, "max_connections");
            continue;
        };
        // Clients behind a trusted proxy are counted once their PROXY header names them; an
        // HTTP proxy's clients share its address and are not limited per address.
        let client_slot = if conn.expects_proxy_header() || conn.http_proxy {
            None
        } else {
            match front.per_client.clone().take(conn.client.ip()) {
                Some(s) => Some(s),
                None => {
                    refuse(&front.shared.metrics, "max_connections_per_client");
                    continue;
                }
            }
        };
        if front.slots.available_permits() < front.limits.max_connections / PRESSURE_FREE_SHARE
            && last_pressure.elapsed() >= PRESSURE_EVERY
        {
            last_pressure = Instant::now();
            front.pressure.send_modify(|g| *g += 1);
        }
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(
            front.clone(),
            tcp,
            conn,
            (permit, client_slot),
            phase.clone(),
            open.clone(),
        ));
        // Established connections first. Without this the loop accepts every connection waiting
        // in the backlog in one go, and their handshakes (~50-150 µs of CPU each) all join the
        // run queue ahead of any request that becomes readable after them: on one busy worker,
        // a request on an open connection waited behind dozens of handshakes (BENCHMARKS.md,
        // "Re-run at `184d05e`"). Yielding after each accept lets one new connection in per pass
        // of the run queue; the rest wait in the kernel's backlog, as they do in nginx.
        tokio::task::yield_now().await;
    }
    // Dropping the listener here is what refuses new connections during the drain.
}

/// Counts a connection in `scoregate_connections_open` for as long as it lives.
struct Counted<'a>(&'a Metrics);

impl<'a> Counted<'a> {
    fn new(m: &'a Metrics) -> Self {
        m.connections.inc();
        Counted(m)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// One client connection, from accept to close.
async fn connection(
    front: Arc<Front>,
    tcp: TcpStream,
    conn: ConnIdentity,
    slots: (OwnedSemaphorePermit, Option<ClientSlot>),
    mut phase: watch::Receiver<Phase>,
    _open: mpsc::Sender<()>,
) {
    let (_global, mut client_slot) = slots;
    let metrics = &front.shared.metrics;
    let _counted = Counted::new(metrics);
    let peer = conn.peer;
    // Boxed: the handshake's state is large and lives only until the handshake ends, so it
    // must not stay part of this task's future for the connection's whole life (idle memory).
    let setup = tokio::time::timeout(
        front.limits.tls_handshake_timeout,
        Box::pin(handshake(&front, tcp, conn, &mut client_slot)),
    );
    let stopping = stopping(&mut phase);
    // A connection still shaking hands has no request to finish: the drain drops it.
    let established = tokio::select! {
        r = setup => match r {
            Ok(r) => r,
            Err(_) => {
                metrics.tls_handshake_failures.with_label_values(&["timeout"]).inc();
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        },
        _ = stopping => None,
    };
    if let Some((tls, conn)) = established {
        serve_http(&front, tls, conn, &mut phase).await;
    }
}

/// The PROXY header (from a trusted proxy) and the TLS handshake. `None` when the connection was
/// refused or failed; the reason is counted.
async fn handshake(
    front: &Front,
    mut tcp: TcpStream,
    mut conn: ConnIdentity,
    client_slot: &mut Option<ClientSlot>,
) -> Option<(Box<TlsStream<TcpStream>>, ConnIdentity)> {
    let metrics = &front.shared.metrics;
    let peer = conn.peer;
    if conn.expects_proxy_header() {
        match proxy_protocol::read_header(&mut tcp).await {
            Ok(proxy_protocol::Header::Proxy { source, .. }) => {
                conn = conn.with_proxy_source(Some(source));
                if !front
                    .shared
                    .snapshot()
                    .listener_policy
                    .admits(conn.client.ip())
                {
                    refuse(metrics, "policy");
                    return None;
                }
                match front.per_client.clone().take(conn.client.ip()) {
                    Some(s) => *client_slot = Some(s),
                    None => {
                        refuse(metrics, "max_connections_per_client");
                        return None;
                    }
                }
            }
            Ok(proxy_protocol::Header::Local) => conn = conn.with_proxy_source(None),
            Err(e) => {
                refuse(metrics, "proxy_protocol");
                tracing::debug!(%peer, error = %e, "no valid PROXY header from a trusted proxy");
                return None;
            }
        }
    }
    // Plain HTTP sent to this port (`http://` instead of `https://`) gets an answer that says
    // so, as nginx gives, instead of a failed handshake the client reports as garbage.
    if let Ok(Some(first)) = first_byte(&tcp).await
        && first != TLS_HANDSHAKE_RECORD
    {
        metrics
            .tls_handshake_failures
            .with_label_values(&["plain_http"])
            .inc();
        tracing::debug!(%peer, "plain HTTP on the TLS port: answered 400");
        refuse_plain_http(tcp).await;
        return None;
    }
    match front.acceptor.accept(tcp).await {
        Ok(tls) => {
            metrics.tls_handshakes.inc();
            // Boxed: rustls' connection state is 1.2 KB, and moving it through the futures that
            // follow would leave a copy's room in each of them.
            Some((Box::new(tls), conn))
        }
        Err(e) => {
            let reason = if e.kind() == io::ErrorKind::InvalidData {
                "protocol"
            } else {
                "io"
            };
            metrics
                .tls_handshake_failures
                .with_label_values(&[reason])
                .inc();
            let client: SocketAddr = conn.client;
            tracing::debug!(%peer, %client, error = %e, "TLS handshake failed");
            None
        }
    }
}

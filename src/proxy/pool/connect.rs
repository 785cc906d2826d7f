//! Opening a backend connection: TCP under `CONNECT_TIMEOUT`, the HTTP/1.1 or HTTP/2 (h2c)
//! handshake, the task that drives it, and the meter that fails an HTTP/1.1 exchange whose
//! backend sends more than `MAX_BYTES_BEFORE_HEAD` before a response head.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{H1Conn, SendError};
use crate::proxy::body::UpstreamBody;

/// Connecting to a backend on the same network takes well under a second; a SYN that gets no
/// answer in 5 s means the backend is gone, and the request can go elsewhere.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What an HTTP/1.1 backend may send before its response head (1xx responses included): a head
/// is at most a few KiB; hyper may read some body along with it, up to its read buffer
/// (~400 KiB).
pub const MAX_BYTES_BEFORE_HEAD: usize = 1024 * 1024;

/// Counts what an HTTP/1.1 backend connection reads while an exchange awaits its head.
#[derive(Debug, Default)]
pub struct Meter {
    read: AtomicUsize,
    armed: AtomicBool,
}

impl Meter {
    pub(super) fn arm(&self) {
        self.read.store(0, Ordering::Relaxed);
        self.armed.store(true, Ordering::Relaxed);
    }

    pub(super) fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
    }
}

/// The backend's TCP stream, failing reads once `MAX_BYTES_BEFORE_HEAD` came without a head.
struct Metered {
    tcp: TcpStream,
    meter: Arc<Meter>,
}

/// The backend sent more than `MAX_BYTES_BEFORE_HEAD` without a final response head.
#[derive(Debug, thiserror::Error)]
#[error(
    "the backend sent over {MAX_BYTES_BEFORE_HEAD} bytes without a response head (endless 1xx responses?)"
)]
pub struct NoHead;

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if self.meter.armed.load(Ordering::Relaxed) {
            let n = buf.filled().len() - before;
            if self.meter.read.fetch_add(n, Ordering::Relaxed) + n > MAX_BYTES_BEFORE_HEAD {
                return Poll::Ready(Err(io::Error::other(NoHead)));
            }
        }
        r
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A request a connection gave back unsent even though it was new: classed with connect
/// failures, since nothing reached the backend.
pub(super) fn unsent_error(e: hyper::Error) -> SendError {
    SendError::Connect(io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("the backend closed a new connection before the request was sent: {e}"),
    ))
}

async fn connect_tcp(authority: &Authority) -> Result<TcpStream, SendError> {
    // `Authority::host` keeps an IPv6 address's brackets; the resolver wants it bare.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port))).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(SendError::Connect(e)),
        Err(_) => {
            return Err(SendError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()),
            )));
        }
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

pub(super) async fn connect_h1(authority: &Authority) -> Result<H1Conn, SendError> {
    let tcp = connect_tcp(authority).await?;
    let meter = Arc::new(Meter::default());
    let io = Metered {
        tcp,
        meter: meter.clone(),
    };
    let (tx, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(SendError::Request)?;
    drive(authority, conn);
    Ok(H1Conn {
        tx,
        meter,
        home: super::this_thread(),
    })
}

pub(super) async fn connect_h2(
    authority: &Authority,
) -> Result<http2::SendRequest<UpstreamBody>, SendError> {
    let tcp = connect_tcp(authority).await?;
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(SendError::Request)?;
    drive(authority, conn);
    Ok(tx)
}

/// Runs a backend connection in its own task until it closes.
fn drive(authority: &Authority, conn: impl Future<Output = hyper::Result<()>> + Send + 'static) {
    let backend = authority.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%backend, error = %e, "backend connection ended with an error");
        }
    });
}

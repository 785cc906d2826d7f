//! The one HTTP client for the admin API, used by the CLI (`service`, `keys`, `token`), by
//! `scoregate bench` (readiness and a token for its own gateway) and by the integration tests.
//!
//! Deliberately small: plain `http://` only (the admin listener never speaks TLS), HTTP/1.1, one
//! connection per call, and every call — connect, request and the whole answer — bounded by one
//! timeout. It is a tool for operators and tests, not part of the request path; no gateway module
//! uses it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How long one admin call may take, connect included, unless the caller sets another bound: an
/// admin answer takes milliseconds; a reload that loads many certificates can take seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for one admin API (`http://host:port`), with or without the admin token.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// The base URL as given (without a trailing `/`): the prefix of every call's path, and the
    /// name used in error messages.
    base: String,
    authority: Authority,
    token: Option<String>,
    timeout: Duration,
}

/// An answer as received: status, headers and the whole body.
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    /// The body as JSON, or, when it is not JSON, as a JSON string holding its text.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into()))
    }
}

impl AdminClient {
    /// A client for the admin API at `base` (e.g. `http://127.0.0.1:9090`); `token` goes in
    /// `Authorization: Bearer` on every call.
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<AdminClient> {
        let base = base.trim_end_matches('/').to_string();
        let uri: Uri = base.parse().context("bad admin URL")?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "the admin API speaks plain http://"
        );
        let authority = uri
            .authority()
            .context("admin URL needs host:port")?
            .clone();
        Ok(AdminClient {
            base,
            authority,
            token,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// A client for an admin listener at a known address.
    pub fn for_addr(addr: SocketAddr, token: Option<String>) -> AdminClient {
        AdminClient::new(&format!("http://{addr}"), token)
            .expect("an http:// URL of a socket address is valid")
    }

    /// The same client with another bound on each call.
    pub fn with_timeout(mut self, timeout: Duration) -> AdminClient {
        self.timeout = timeout;
        self
    }

    /// The base URL, as error messages name it.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A call with an optional JSON body; the answer's body as JSON (or, when it is not JSON, as
    /// a JSON string holding its text). Any status is an answer, not an error: the caller decides
    /// what a non-2xx means.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let r = self.send(method, path, bytes).await?;
        Ok((r.status, r.json()))
    }

    /// A call with a raw body (sent as `application/json` when not empty), answered with status,
    /// headers and bytes: for text such as `/metrics`, and for tests that send malformed bodies.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<RawResponse> {
        tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| anyhow!("the admin API at {} did not answer in time", self.base))?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<RawResponse> {
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .context("bad admin URL")?;
        let mut b = Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(header::HOST, self.authority.as_str());
        if let Some(t) = &self.token {
            let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                .context("the admin token is not a valid header value")?;
            v.set_sensitive(true);
            b = b.header(header::AUTHORIZATION, v);
        }
        if !body.is_empty() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        let req = b.body(Full::new(body))?;

        // `[::1]` is how a URL writes an IPv6 host; the resolver wants it bare.
        let host = self.authority.host().trim_matches(['[', ']']);
        let port = self.authority.port_u16().unwrap_or(80);
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .with_context(|| format!("cannot connect to the admin API at {}", self.base))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        // The connection is driven here, in this task, so that a timeout or an error drops it
        // with the call instead of leaving a task behind.
        let answer = async {
            let resp = sender.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(RawResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let mut answer = std::pin::pin!(answer);
        let mut conn = std::pin::pin!(conn);
        let mut conn_done = false;
        loop {
            tokio::select! {
                r = &mut answer => return r,
                // When the connection ends first (the server closed it), the answer completes or
                // fails by itself.
                _ = conn.as_mut(), if !conn_done => conn_done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_host() {
        assert!(AdminClient::new("http://127.0.0.1:9090/", None).is_ok());
        assert_eq!(
            AdminClient::new("http://127.0.0.1:9090/", None)
                .unwrap()
                .base(),
            "http://127.0.0.1:9090"
        );
        let e = AdminClient::new("https://127.0.0.1:9090", None).unwrap_err();
        assert_eq!(e.to_string(), "the admin API speaks plain http://");
        assert!(AdminClient::new("not a url", None).is_err());
    }

    #[tokio::test]
    async fn a_closed_port_is_a_clear_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = AdminClient::for_addr(addr, None);
        let e = c.call(Method::GET, "/healthz", None).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot connect to the admin API at http://{addr}")
        );
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // Accepts, then never answers.
        let _held = tokio::spawn(async move {
            let mut conns = vec![];
            while let Ok((c, _)) = l.accept().await {
                conns.push(c);
            }
        });
        let c = AdminClient::for_addr(addr, None).with_timeout(Duration::from_millis(200));
        let e = c.call(Method::GET, "/healthz", None).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the admin API at http://{addr} did not answer in time")
        );
    }
}

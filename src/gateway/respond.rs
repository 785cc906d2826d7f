//! The respond phase: the backend's answer with the response header rules applied, or the
//! gateway's own error answer — and, for an error, what becomes of the request body the client
//! may still be sending. `close_after` is the one place that decides whether an HTTP/1.1
//! connection must close after a response.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};

use super::record::Record;
use crate::error::GatewayError;
use crate::mirror::Tee;
use crate::proxy::body::{DISCARD_MAX, DISCARD_TIMEOUT, Leftover, discard};
use crate::proxy::headers::{self, X_MS_CLIENT_REQUEST_ID};
use crate::proxy::pool::PooledBody;

/// The body of a response before observation: the backend's streamed body, or one the gateway
/// made.
pub type Answer = Response<Either<Tee<PooledBody>, Full<Bytes>>>;

/// A refused request's body is read and thrown away up to this size so the connection can be
/// reused; anything larger (or of unknown size) closes the connection instead.
const DRAIN_MAX: u64 = 64 * 1024;
/// How long draining may take before the gateway gives up and closes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The backend's answer, passed through with the response header rules applied.
pub fn backend(resp: Response<Tee<PooledBody>>, rec: &Record) -> Answer {
    let (mut parts, body) = resp.into_parts();
    headers::rewrite_response(
        &mut parts.headers,
        rec.request_id.clone(),
        rec.client_request_id.clone(),
    );
    rec.rate_limit_headers(&mut parts.headers);
    rec.deployment_header(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
}

/// What a request that the gateway refuses leaves behind on its connection.
pub struct Refused {
    pub error: GatewayError,
    pub body: Leftover,
    pub version: Version,
    /// The client sent `Expect: 100-continue` (its body waits for our go-ahead).
    pub expects_continue: bool,
}

/// Whether an HTTP/1.x connection must close after a refusal, given what is left of the request
/// body once the gateway has drained what it could: a body still on the wire would be read as
/// the next request. HTTP/2 never closes the connection for one stream's body.
fn close_after(version: Version, left: &Leftover) -> bool {
    version < Version::HTTP_2 && matches!(left, Leftover::Partial | Leftover::Unread(_))
}

/// The gateway's own answer to a refused request, without leaving its body behind: drained (or
/// the connection closed) on HTTP/1.x, read in the background on HTTP/2 so the client reads the
/// JSON error rather than a stream reset.
pub async fn refusal(r: Refused, rec: &Record) -> Answer {
    let mut resp = r.error.to_response().map(Either::Right);
    let h = resp.headers_mut();
    h.insert(headers::X_MS_REQUEST_ID, rec.request_id.clone());
    if let Some(c) = &rec.client_request_id {
        h.insert(X_MS_CLIENT_REQUEST_ID, c.clone());
    }
    rec.rate_limit_headers(h);
    rec.deployment_header(h);
    let left = match r.body {
        Leftover::Unread(body) if body.is_end_stream() => Leftover::Complete,
        Leftover::Unread(body) if r.version >= Version::HTTP_2 => {
            // Answer now, and keep reading the body in the background: a stream reset while the
            // client is still sending makes clients like curl drop the answer (curl error 92).
            tokio::spawn(discard(body, DISCARD_MAX, DISCARD_TIMEOUT));
            Leftover::Complete
        }
        Leftover::Unread(body) => {
            if drain(r.expects_continue, body).await {
                Leftover::Complete
            } else {
                Leftover::Partial
            }
        }
        other => other,
    };
    if close_after(r.version, &left) {
        close(&mut resp);
    }
    resp
}

fn close<B>(resp: &mut Response<B>) {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// Reads and discards a small request body so an HTTP/1.1 connection stays usable. False when
/// the body is too large, of unknown size, awaits `100-continue`, or does not arrive in time.
async fn drain(expects_continue: bool, body: Incoming) -> bool {
    let declared = body.size_hint().exact();
    if expects_continue || declared.is_none_or(|n| n > DRAIN_MAX) {
        return false;
    }
    discard(body, DRAIN_MAX, DRAIN_TIMEOUT).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http1_closes_and_only_for_a_body_left_on_the_wire() {
        for v in [Version::HTTP_10, Version::HTTP_11] {
            assert!(!close_after(v, &Leftover::Complete));
            assert!(close_after(v, &Leftover::Partial));
        }
        assert!(!close_after(Version::HTTP_2, &Leftover::Partial));
    }
}

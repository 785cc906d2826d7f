//! Header rules for forwarding (contract §1): what the backend sees and what the client gets back.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const X_MS_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");
pub const X_MS_CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The rate-limit headers (contract §7): the gateway's own, never a backend's.
/// The deployment a request pins, what the backend is told it was sent to, and what every
/// response after the choice says (contract §8): the gateway's own on the way back.
pub const AZUREML_MODEL_DEPLOYMENT: HeaderName =
    HeaderName::from_static("azureml-model-deployment");
/// Marks a mirrored copy (contract §8).
pub const X_SCOREGATE_MIRROR: HeaderName = HeaderName::from_static("x-scoregate-mirror");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy `Keep-Alive`/`Proxy-Connection`):
/// they describe one connection and are never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers and every header that `Connection` names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
}

/// `x-ms-client-request-id`: up to 100 characters of `A-Z a-z 0-9 - _ . :`.
pub fn valid_client_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=100).contains(&b.len())
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// A `Host` worth passing on as `X-Forwarded-Host`: `host[:port]`, with no user info and
/// nothing a URI authority cannot hold.
pub fn valid_host(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && !b.contains(&b'@')
        && http::uri::Authority::try_from(b).is_ok_and(|a| !a.host().is_empty())
}

/// Who the request came from, as the forwarded headers should tell it (`client::ClientIdentity`
/// decides both fields).
pub struct ForwardedFor<'a> {
    /// The address this hop appends to `X-Forwarded-For`: whoever connected to the gateway.
    pub hop: IpAddr,
    /// The peer is a trusted HTTP proxy: keep its `X-Forwarded-*` and append to them.
    pub trusted_peer: bool,
    /// What the client asked for (`Host` on HTTP/1.1, `:authority` on HTTP/2).
    pub host: Option<&'a HeaderValue>,
}

/// Turns the client's request headers into the backend's: hop-by-hop headers, `Authorization`
/// and `Host` removed (the client sets the backend's own `Host`), forwarded headers set, the
/// gateway's request id added.
pub fn rewrite_request(h: &mut HeaderMap, fwd: &ForwardedFor<'_>, request_id: &HeaderValue) {
    strip_hop_by_hop(h);
    h.remove(header::AUTHORIZATION);
    let host = fwd.host.cloned().or_else(|| h.get(header::HOST).cloned());
    h.remove(header::HOST);
    let ip = HeaderValue::from_str(&fwd.hop.to_string()).expect("an IP is a valid header value");
    let xff = if fwd.trusted_peer {
        match h.get(&X_FORWARDED_FOR) {
            Some(prev) => {
                let mut v = Vec::with_capacity(prev.len() + 2 + ip.len());
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
                v.extend_from_slice(ip.as_bytes());
                HeaderValue::from_bytes(&v).unwrap_or(ip)
            }
            None => ip,
        }
    } else {
        // Claims a client makes about where it comes from are not believed.
        h.remove(FORWARDED);
        ip
    };
    h.insert(X_FORWARDED_FOR, xff);
    if !(fwd.trusted_peer && h.contains_key(&X_FORWARDED_PROTO)) {
        h.insert(X_FORWARDED_PROTO, HTTPS);
    }
    if !(fwd.trusted_peer && h.contains_key(&X_FORWARDED_HOST)) {
        match host.filter(valid_host) {
            Some(host) => {
                h.insert(X_FORWARDED_HOST, host);
            }
            None => {
                h.remove(X_FORWARDED_HOST);
            }
        }
    }
    h.insert(X_MS_REQUEST_ID, request_id.clone());
}

/// Turns the backend's response headers into the client's: hop-by-hop headers removed (a
/// response with both `Transfer-Encoding` and `Content-Length` loses the length, RFC 9112 §6.3),
/// exactly one `x-ms-request-id` (the gateway's), the client's request id echoed (and no other),
/// and no rate-limit or deployment headers (the gateway adds its own).
pub fn rewrite_response(
    h: &mut HeaderMap,
    request_id: HeaderValue,
    client_request_id: Option<HeaderValue>,
) {
    if h.contains_key(header::TRANSFER_ENCODING) {
        h.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(h);
    h.remove(RATELIMIT);
    h.remove(RATELIMIT_POLICY);
    h.remove(AZUREML_MODEL_DEPLOYMENT);
    h.insert(X_MS_REQUEST_ID, request_id);
    // Only the client's own id is echoed: azmlinfsrv answers the (deprecated) `x-ms-request-id`
    // we forward by echoing it as `x-ms-client-request-id`, which the client never sent.
    match client_request_id {
        Some(c) => h.insert(X_MS_CLIENT_REQUEST_ID, c),
        None => h.remove(X_MS_CLIENT_REQUEST_ID),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn request_rules() {
        let mut h = map(&[
            ("authorization", "Bearer secret"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("host", "scoring.example.com"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-ms-request-id", "spoofed"),
            ("x-ms-client-request-id", "abc"),
            ("content-type", "application/json"),
        ]);
        let rid = HeaderValue::from_static("11111111-2222-3333-4444-555555555555");
        let fwd = ForwardedFor {
            hop: "10.1.2.3".parse().unwrap(),
            trusted_peer: false,
            host: None,
        };
        rewrite_request(&mut h, &fwd, &rid);
        for gone in [
            "authorization",
            "connection",
            "x-private",
            "keep-alive",
            "te",
            "upgrade",
            "host",
            "forwarded",
        ] {
            assert!(!h.contains_key(gone), "{gone} must not be forwarded");
        }
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "scoring.example.com");
        assert_eq!(h.get_all("x-ms-request-id").iter().count(), 1);
        assert_eq!(h["x-ms-request-id"], rid);
        assert_eq!(h["x-ms-client-request-id"], "abc");
        assert_eq!(h["content-type"], "application/json");
    }

    #[test]
    fn trusted_proxy_chain_is_appended() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ]);
        let fwd = ForwardedFor {
            hop: "10.0.0.5".parse().unwrap(),
            trusted_peer: true,
            host: None,
        };
        rewrite_request(&mut h, &fwd, &HeaderValue::from_static("r"));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.0.0.5");
    }

    #[test]
    fn forwarded_host_never_carries_user_info_or_junk() {
        for (host, kept) in [
            ("scoring.example.com", true),
            ("scoring.example.com:8443", true),
            ("[::1]:8443", true),
            ("user:pw@scoring.example.com", false),
            ("a b", false),
            ("", false),
        ] {
            let mut h = HeaderMap::new();
            let v = HeaderValue::from_str(host).unwrap();
            let fwd = ForwardedFor {
                hop: "10.0.0.5".parse().unwrap(),
                trusted_peer: false,
                host: Some(&v),
            };
            rewrite_request(&mut h, &fwd, &HeaderValue::from_static("r"));
            assert_eq!(h.contains_key("x-forwarded-host"), kept, "{host}");
        }
    }

    #[test]
    fn response_rules() {
        let mut h = map(&[
            ("x-ms-request-id", "backend-id"),
            ("x-ms-request-id", "another"),
            ("transfer-encoding", "chunked"),
            ("content-length", "10"),
            ("connection", "close"),
            ("x-ms-run-function-failed", "True"),
            ("ratelimit", "\"backend\";r=1;t=0"),
            ("ratelimit-policy", "\"backend\";q=1;w=1"),
        ]);
        rewrite_response(
            &mut h,
            HeaderValue::from_static("gw"),
            Some(HeaderValue::from_static("c1")),
        );
        assert_eq!(
            h.get_all("x-ms-request-id").iter().collect::<Vec<_>>(),
            vec!["gw"]
        );
        assert_eq!(h["x-ms-client-request-id"], "c1");
        assert!(!h.contains_key("content-length") && !h.contains_key("transfer-encoding"));
        assert!(!h.contains_key("connection"));
        assert_eq!(h["x-ms-run-function-failed"], "True");
        assert!(!h.contains_key("ratelimit") && !h.contains_key("ratelimit-policy"));
        // A backend's echo of an id the client never sent is dropped.
        let mut h = map(&[("x-ms-client-request-id", "gw-forwarded-id")]);
        rewrite_response(&mut h, HeaderValue::from_static("gw"), None);
        assert!(!h.contains_key("x-ms-client-request-id"));
    }

    #[test]
    fn client_request_id_rules() {
        assert!(valid_client_request_id(&HeaderValue::from_static(
            "abc-DEF_0.9:x"
        )));
        assert!(valid_client_request_id(
            &HeaderValue::from_str(&"a".repeat(100)).unwrap()
        ));
        assert!(!valid_client_request_id(
            &HeaderValue::from_str(&"a".repeat(101)).unwrap()
        ));
        assert!(!valid_client_request_id(&HeaderValue::from_static("a b")));
        assert!(!valid_client_request_id(&HeaderValue::from_static("a/b")));
        assert!(!valid_client_request_id(&HeaderValue::from_static("")));
    }
}

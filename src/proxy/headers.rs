//! Header rules for forwarding (contract §1): what the backend sees and what the client gets back.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const X_MS_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");
pub const X_MS_CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The deployment a request pins, what the backend is told it was sent to, and what every
/// response after the choice says (contract §8): the gateway's own on the way back.
pub const AZUREML_MODEL_DEPLOYMENT: HeaderName =
    HeaderName::from_static("azureml-model-deployment");
/// Marks a mirrored copy (contract §8).
pub const X_SCOREGATE_MIRROR: HeaderName = HeaderName::from_static("x-scoregate-mirror");
/// The rate-limit headers (contract §7): the gateway's own, never a backend's.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy `Keep-Alive`/`Proxy-Connection`):
/// they describe one connection and are never forwarded. The list, followed by `$extra`: each
/// rewrite's names start with it (`strip_hop_by_hop` relies on that order, `Connection` first).
macro_rules! hop_by_hop_and {
    ($($extra:expr),* $(,)?) => {
        [
            header::CONNECTION,
            KEEP_ALIVE,
            PROXY_CONNECTION,
            header::TE,
            header::TRAILER,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
            header::PROXY_AUTHORIZATION,
            $($extra),*
        ]
    };
}
/// How many names `hop_by_hop_and!` puts first (the tests' `[HeaderName; 8] = hop_by_hop_and!()`
/// fails to compile if that changes).
const HOP_BY_HOP_COUNT: usize = 8;

/// Which of `names` the map holds, as bits (bit `i`: `names[i]`), found in one pass over the
/// map's names. Comparing names hashes nothing (a standard name is an enum tag), where a
/// `remove` or `contains_key` hashes its name even when it is absent, and most of the names a
/// rewrite removes are absent from most requests.
fn present(h: &HeaderMap, names: &[HeaderName]) -> u32 {
    debug_assert!(names.len() <= 32);
    let mut bits = 0;
    for k in h.keys() {
        if let Some(i) = names.iter().position(|n| n == k) {
            bits |= 1 << i;
        }
    }
    bits
}

/// Bit `i` of a `present` result.
fn has(bits: u32, i: usize) -> bool {
    bits & (1 << i) != 0
}

/// Removes every header that `Connection` names and the hop-by-hop headers. `names` starts
/// with the hop-by-hop names (`hop_by_hop_and!`, so bit 0 is `Connection`) and `bits` is `present(h, names)`; returns
/// which of `names` remain afterwards (the hop-by-hop bits cleared).
fn strip_hop_by_hop(h: &mut HeaderMap, names: &[HeaderName], mut bits: u32) -> u32 {
    if has(bits, 0) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
        // `Connection` may have named any header, the gateway's own ones included.
        bits = present(h, names);
    }
    for (i, n) in names[..HOP_BY_HOP_COUNT].iter().enumerate() {
        if has(bits, i) {
            h.remove(n);
        }
    }
    bits & !((1 << HOP_BY_HOP_COUNT) - 1)
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
    if plain_host(b) {
        return true;
    }
    !b.is_empty()
        && !b.contains(&b'@')
        && http::uri::Authority::try_from(b).is_ok_and(|a| !a.host().is_empty())
}

/// The common shape, checked without parsing an `Authority`: a DNS name or IPv4 address
/// (letters, digits, `.`, `-`) and an optional port of 1 to 5 digits. Every value it accepts
/// the full check accepts too (a property test holds it to that).
fn plain_host(b: &[u8]) -> bool {
    let (name, port) = match b.iter().position(|&c| c == b':') {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    };
    !name.is_empty()
        && name
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-')
        && port.is_none_or(|p| (1..=5).contains(&p.len()) && p.iter().all(u8::is_ascii_digit))
}

/// Who the request came from, as the forwarded headers should tell it (`client::ConnIdentity`
/// decides both fields).
pub struct ForwardedFor<'a> {
    /// The address this hop appends to `X-Forwarded-For` (whoever connected to the gateway), as
    /// a header value made once per connection.
    pub hop: &'a HeaderValue,
    /// The peer is a trusted HTTP proxy: keep its `X-Forwarded-*` and append to them.
    pub trusted_peer: bool,
    /// What the client asked for when the URI says it (`:authority` on HTTP/2, an absolute
    /// URI); `None`: the request's `Host` header, which the rewrite removes anyway.
    pub host: Option<&'a HeaderValue>,
}

/// The request headers `rewrite_request` removes or looks at: the hop-by-hop names, then these.
static REQUEST_NAMES: [HeaderName; 14] = hop_by_hop_and![
    header::AUTHORIZATION,
    header::HOST,
    FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
];
const RQ_AUTHORIZATION: usize = HOP_BY_HOP_COUNT;
const RQ_HOST: usize = HOP_BY_HOP_COUNT + 1;
const RQ_FORWARDED: usize = HOP_BY_HOP_COUNT + 2;
const RQ_XFF: usize = HOP_BY_HOP_COUNT + 3;
const RQ_XFP: usize = HOP_BY_HOP_COUNT + 4;
const RQ_XFH: usize = HOP_BY_HOP_COUNT + 5;

/// Turns the client's request headers into the backend's: hop-by-hop headers, `Authorization`
/// and `Host` removed (the client sets the backend's own `Host`), forwarded headers set, the
/// gateway's request id added. Each name is looked up only if one pass over the request's
/// names found it (`present`).
pub fn rewrite_request(h: &mut HeaderMap, fwd: &ForwardedFor<'_>, request_id: &HeaderValue) {
    let found = present(h, &REQUEST_NAMES);
    let found = strip_hop_by_hop(h, &REQUEST_NAMES, found);
    if has(found, RQ_AUTHORIZATION) {
        h.remove(header::AUTHORIZATION);
    }
    let own_host = if has(found, RQ_HOST) {
        h.remove(header::HOST)
    } else {
        None
    };
    let host = fwd.host.cloned().or(own_host);
    let trusted = fwd.trusted_peer;
    let prev = if trusted && has(found, RQ_XFF) {
        h.get(&X_FORWARDED_FOR)
    } else {
        None
    };
    let xff = match prev {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + fwd.hop.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(fwd.hop.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| fwd.hop.clone())
        }
        None => fwd.hop.clone(),
    };
    if !trusted && has(found, RQ_FORWARDED) {
        // Claims a client makes about where it comes from are not believed.
        h.remove(FORWARDED);
    }
    h.insert(X_FORWARDED_FOR, xff);
    if !(trusted && has(found, RQ_XFP)) {
        h.insert(X_FORWARDED_PROTO, HTTPS);
    }
    if !(trusted && has(found, RQ_XFH)) {
        match host.filter(valid_host) {
            Some(host) => {
                h.insert(X_FORWARDED_HOST, host);
            }
            None if has(found, RQ_XFH) => {
                h.remove(X_FORWARDED_HOST);
            }
            None => {}
        }
    }
    h.insert(X_MS_REQUEST_ID, request_id.clone());
}

/// The response headers `rewrite_response` removes or looks at: the hop-by-hop names, then these.
static RESPONSE_NAMES: [HeaderName; 13] = hop_by_hop_and![
    header::CONTENT_LENGTH,
    RATELIMIT,
    RATELIMIT_POLICY,
    AZUREML_MODEL_DEPLOYMENT,
    X_MS_CLIENT_REQUEST_ID,
];
/// `Transfer-Encoding`'s place among the hop-by-hop names.
const RS_TRANSFER_ENCODING: usize = 5;
const RS_CONTENT_LENGTH: usize = HOP_BY_HOP_COUNT;
const RS_RATELIMIT: usize = HOP_BY_HOP_COUNT + 1;
const RS_RATELIMIT_POLICY: usize = HOP_BY_HOP_COUNT + 2;
const RS_DEPLOYMENT: usize = HOP_BY_HOP_COUNT + 3;
const RS_CLIENT_REQUEST_ID: usize = HOP_BY_HOP_COUNT + 4;

/// Turns the backend's response headers into the client's: hop-by-hop headers removed (a
/// response with both `Transfer-Encoding` and `Content-Length` loses the length, RFC 9112 §6.3),
/// exactly one `x-ms-request-id` (the gateway's), the client's request id echoed (and no other),
/// and no rate-limit or deployment headers (the gateway adds its own).
pub fn rewrite_response(
    h: &mut HeaderMap,
    request_id: HeaderValue,
    client_request_id: Option<HeaderValue>,
) {
    let found = present(h, &RESPONSE_NAMES);
    if has(found, RS_TRANSFER_ENCODING) && has(found, RS_CONTENT_LENGTH) {
        h.remove(header::CONTENT_LENGTH);
    }
    let found = strip_hop_by_hop(h, &RESPONSE_NAMES, found);
    for (i, n) in [
        (RS_RATELIMIT, RATELIMIT),
        (RS_RATELIMIT_POLICY, RATELIMIT_POLICY),
        (RS_DEPLOYMENT, AZUREML_MODEL_DEPLOYMENT),
    ] {
        if has(found, i) {
            h.remove(n);
        }
    }
    h.insert(X_MS_REQUEST_ID, request_id);
    // Only the client's own id is echoed: azmlinfsrv answers the (deprecated) `x-ms-request-id`
    // we forward by echoing it as `x-ms-client-request-id`, which the client never sent.
    match client_request_id {
        Some(c) => {
            h.insert(X_MS_CLIENT_REQUEST_ID, c);
        }
        None if has(found, RS_CLIENT_REQUEST_ID) => {
            h.remove(X_MS_CLIENT_REQUEST_ID);
        }
        None => {}
    }
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
            hop: &HeaderValue::from_static("10.1.2.3"),
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
            hop: &HeaderValue::from_static("10.0.0.5"),
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
                hop: &HeaderValue::from_static("10.0.0.5"),
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

    #[test]
    fn each_index_names_its_header() {
        for (i, n) in [
            (RQ_AUTHORIZATION, header::AUTHORIZATION),
            (RQ_HOST, header::HOST),
            (RQ_FORWARDED, FORWARDED),
            (RQ_XFF, X_FORWARDED_FOR),
            (RQ_XFP, X_FORWARDED_PROTO),
            (RQ_XFH, X_FORWARDED_HOST),
        ] {
            assert_eq!(REQUEST_NAMES[i], n);
        }
        for (i, n) in [
            (RS_TRANSFER_ENCODING, header::TRANSFER_ENCODING),
            (RS_CONTENT_LENGTH, header::CONTENT_LENGTH),
            (RS_RATELIMIT, RATELIMIT),
            (RS_RATELIMIT_POLICY, RATELIMIT_POLICY),
            (RS_DEPLOYMENT, AZUREML_MODEL_DEPLOYMENT),
            (RS_CLIENT_REQUEST_ID, X_MS_CLIENT_REQUEST_ID),
        ] {
            assert_eq!(RESPONSE_NAMES[i], n);
        }
    }

    /// The rewrites as they were before the one-pass scan (`present`): one `remove` per name.
    /// The property tests below hold the faster code to exactly the same results.
    mod reference {
        use super::super::*;

        const HOP: [HeaderName; 8] = hop_by_hop_and!();

        fn strip(h: &mut HeaderMap) {
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
            for n in &HOP {
                h.remove(n);
            }
        }

        pub fn valid_host(v: &HeaderValue) -> bool {
            let b = v.as_bytes();
            !b.is_empty()
                && !b.contains(&b'@')
                && http::uri::Authority::try_from(b).is_ok_and(|a| !a.host().is_empty())
        }

        pub fn request(h: &mut HeaderMap, fwd: &ForwardedFor<'_>, request_id: &HeaderValue) {
            strip(h);
            h.remove(header::AUTHORIZATION);
            let host = fwd.host.cloned().or_else(|| h.get(header::HOST).cloned());
            h.remove(header::HOST);
            let ip = fwd.hop.clone();
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

        pub fn response(h: &mut HeaderMap, rid: HeaderValue, crid: Option<HeaderValue>) {
            if h.contains_key(header::TRANSFER_ENCODING) {
                h.remove(header::CONTENT_LENGTH);
            }
            strip(h);
            h.remove(RATELIMIT);
            h.remove(RATELIMIT_POLICY);
            h.remove(AZUREML_MODEL_DEPLOYMENT);
            h.insert(X_MS_REQUEST_ID, rid);
            match crid {
                Some(c) => h.insert(X_MS_CLIENT_REQUEST_ID, c),
                None => h.remove(X_MS_CLIENT_REQUEST_ID),
            };
        }
    }

    /// Names the rewrites care about, and two they do not.
    const NAMES: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "authorization",
        "host",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "content-length",
        "ratelimit",
        "ratelimit-policy",
        "azureml-model-deployment",
        "x-ms-client-request-id",
        "x-ms-request-id",
        "content-type",
        "x-private",
    ];
    const VALUES: &[&str] = &[
        "keep-alive",
        "close, x-private",
        "authorization, x-forwarded-host",
        "x-forwarded-for,host , transfer-encoding",
        "scoring.example.com:8443",
        "user@h",
        "203.0.113.9",
        "[::1]",
        "",
        "chunked",
    ];

    fn header_map() -> impl proptest::strategy::Strategy<Value = HeaderMap> {
        use proptest::prelude::*;
        proptest::collection::vec((0..NAMES.len(), 0..VALUES.len()), 0..12).prop_map(|v| {
            let mut h = HeaderMap::new();
            for (n, val) in v {
                h.append(NAMES[n], HeaderValue::from_static(VALUES[val]));
            }
            h
        })
    }

    /// Every header with its values in order, for comparing two maps.
    fn flat(h: &HeaderMap) -> Vec<(String, Vec<HeaderValue>)> {
        let mut v: Vec<_> = h
            .keys()
            .map(|k| (k.to_string(), h.get_all(k).iter().cloned().collect()))
            .collect();
        v.sort();
        v
    }

    proptest::proptest! {
        #[test]
        fn the_request_rewrite_matches_one_remove_per_name(
            h in header_map(),
            trusted in proptest::bool::ANY,
            host in proptest::option::of(0..VALUES.len()),
        ) {
            let host = host.map(|i| HeaderValue::from_static(VALUES[i]));
            let hop = HeaderValue::from_static("10.0.0.5");
            let fwd = ForwardedFor { hop: &hop, trusted_peer: trusted, host: host.as_ref() };
            let rid = HeaderValue::from_static("rid");
            let (mut fast, mut slow) = (h.clone(), h);
            rewrite_request(&mut fast, &fwd, &rid);
            reference::request(&mut slow, &fwd, &rid);
            proptest::prop_assert_eq!(flat(&fast), flat(&slow));
        }

        #[test]
        fn the_response_rewrite_matches_one_remove_per_name(
            h in header_map(),
            crid in proptest::option::of(0..VALUES.len()),
        ) {
            let crid = crid.map(|i| HeaderValue::from_static(VALUES[i]));
            let rid = HeaderValue::from_static("rid");
            let (mut fast, mut slow) = (h.clone(), h);
            rewrite_response(&mut fast, rid.clone(), crid.clone());
            reference::response(&mut slow, rid, crid);
            proptest::prop_assert_eq!(flat(&fast), flat(&slow));
        }

        /// The fast path never accepts a host the full check refuses, and agrees with it on
        /// every `host[:port]` made of the usual characters.
        #[test]
        fn a_plain_host_is_a_valid_host(v in "[a-zA-Z0-9.:@\\[\\]-]{0,12}") {
            if let Ok(v) = HeaderValue::from_str(&v) {
                proptest::prop_assert_eq!(valid_host(&v), reference::valid_host(&v), "{:?}", v);
            }
        }
    }
}

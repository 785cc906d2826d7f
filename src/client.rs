//! Who a request comes from: the one place that decides which peers are trusted and what the
//! client's address is.
//!
//! The client's address is learned one of three ways (`Learned`):
//! - `Direct`: the TCP peer;
//! - `ProxyProtocol`: the source a PROXY v2 header names, read (at accept, before TLS) only from
//!   a peer in `listen.trusted_proxies` when `listen.proxy_protocol = "v2"`;
//! - `ForwardedFor`: the last address in `X-Forwarded-For`, believed only from a trusted peer
//!   when PROXY protocol is off (an HTTP proxy in front, which terminates nothing of ours but
//!   appends the client it saw).
//!
//! `ClientIdentity` is resolved once per connection (`Trust::at_accept`, then
//! `ConnIdentity::with_proxy_source`) and once per request (`ConnIdentity::for_request`) and
//! carried along: policy, logs, rate limits and the forwarded headers all read it.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;

use crate::proxy::headers::X_FORWARDED_FOR;

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, from dual-stack sockets) count as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Client address rules: deny wins over allow; an empty allow list admits everyone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AddressPolicy {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

/// Which peers are believed about the client's address, and how.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trust {
    pub trusted_proxies: Vec<IpNet>,
    /// `listen.proxy_protocol = "v2"`: trusted peers speak PROXY protocol (an L4 balancer that
    /// sees nothing inside TLS), so forwarded headers are never believed from anyone.
    pub proxy_protocol: bool,
}

impl Trust {
    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// What a new connection from `peer` is: one that must open with a PROXY v2 header (a
    /// trusted L4 balancer), or a client (or HTTP proxy) speaking for itself.
    pub fn at_accept(&self, peer: SocketAddr) -> ConnIdentity {
        let via_proxy_protocol = self.proxy_protocol && self.trusts(peer.ip());
        let client = SocketAddr::new(canonical_ip(peer.ip()), peer.port());
        ConnIdentity {
            client,
            peer,
            learned: if via_proxy_protocol {
                Learned::ProxyProtocol
            } else {
                Learned::Direct
            },
            http_proxy: !self.proxy_protocol && self.trusts(peer.ip()),
            // Either way the peer's address until a PROXY header names another client.
            forwarded_for: ip_value(client.ip()),
        }
    }
}

/// How the client's address was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    Direct,
    ProxyProtocol,
    ForwardedFor,
}

impl Learned {
    pub fn as_str(self) -> &'static str {
        match self {
            Learned::Direct => "direct",
            Learned::ProxyProtocol => "proxy_protocol",
            Learned::ForwardedFor => "forwarded_for",
        }
    }
}

/// The client as a connection knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnIdentity {
    /// The client: the TCP peer, or the source of the PROXY header.
    pub client: SocketAddr,
    /// The TCP peer (the load balancer or HTTP proxy when there is one).
    pub peer: SocketAddr,
    pub learned: Learned,
    /// The peer is a trusted HTTP proxy: its `X-Forwarded-*` headers are believed.
    pub http_proxy: bool,
    /// What this hop appends to `X-Forwarded-For` (`forwarded_for`: the same for every request
    /// of a connection), made once instead of per request.
    forwarded_for: HeaderValue,
}

/// An address as a header value.
fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value")
}

impl ConnIdentity {
    /// This hop's `X-Forwarded-For` entry for every request on the connection: the TCP peer
    /// behind a trusted HTTP proxy (the client is already in the list), else the client.
    pub fn forwarded_for(&self) -> &HeaderValue {
        &self.forwarded_for
    }

    /// `learned` is `ProxyProtocol`: this connection must start with a PROXY v2 header.
    pub fn expects_proxy_header(&self) -> bool {
        self.learned == Learned::ProxyProtocol
    }

    /// The client a PROXY header names (`None`: a LOCAL header, the balancer's own health
    /// check, which keeps the balancer as the client).
    pub fn with_proxy_source(mut self, source: Option<SocketAddr>) -> Self {
        if let Some(s) = source {
            self.client = SocketAddr::new(canonical_ip(s.ip()), s.port());
            // A PROXY header comes only from a trusted L4 balancer, never an HTTP proxy, so
            // the appended hop is the client it names.
            self.forwarded_for = ip_value(self.client.ip());
        }
        self
    }

    /// The client of one request on this connection: behind a trusted HTTP proxy, the last
    /// address in `X-Forwarded-For` (the one that proxy appended), else the connection's client.
    pub fn for_request(&self, headers: &HeaderMap) -> ClientIdentity {
        if self.http_proxy {
            let last = headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|s| s.trim().parse::<IpAddr>().ok());
            if let Some(ip) = last {
                return ClientIdentity {
                    ip: canonical_ip(ip),
                    peer: self.peer,
                    learned: Learned::ForwardedFor,
                    http_proxy: true,
                };
            }
        }
        ClientIdentity {
            ip: self.client.ip(),
            peer: self.peer,
            learned: self.learned,
            http_proxy: self.http_proxy,
        }
    }
}

/// The client of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The client's address (canonical: IPv4-mapped IPv6 as IPv4).
    pub ip: IpAddr,
    /// The TCP peer.
    pub peer: SocketAddr,
    pub learned: Learned,
    /// The peer is a trusted HTTP proxy (its forwarded headers are kept and appended to).
    pub http_proxy: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trust(proxy_protocol: bool) -> Trust {
        Trust {
            trusted_proxies: vec!["10.0.0.5/32".parse().unwrap()],
            proxy_protocol,
        }
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn deny_wins_over_allow() {
        let p = AddressPolicy {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            deny: vec!["127.0.0.3/32".parse().unwrap()],
        };
        assert!(p.admits("127.0.0.2".parse().unwrap()));
        assert!(!p.admits("127.0.0.3".parse().unwrap()));
        assert!(!p.admits("10.0.0.1".parse().unwrap()));
        assert!(p.admits("::ffff:127.0.0.2".parse().unwrap()));
        assert!(AddressPolicy::default().admits("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_trusted_http_proxy_names_the_client_and_is_the_appended_hop() {
        let conn = trust(false).at_accept("10.0.0.5:4000".parse().unwrap());
        assert!(!conn.expects_proxy_header());
        let id = conn.for_request(&xff("203.0.113.1, 198.51.100.7"));
        assert_eq!(id.ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(id.learned, Learned::ForwardedFor);
        // The appended hop is the proxy: the client is already in the list.
        assert_eq!(conn.forwarded_for(), "10.0.0.5");
        // Without the header the proxy itself is the client.
        let id = conn.for_request(&HeaderMap::new());
        assert_eq!(id.ip, "10.0.0.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn untrusted_peers_and_proxy_protocol_never_believe_forwarded_headers() {
        let conn = trust(false).at_accept("192.0.2.9:4000".parse().unwrap());
        let id = conn.for_request(&xff("203.0.113.1"));
        assert_eq!(
            (id.ip, id.learned),
            ("192.0.2.9".parse().unwrap(), Learned::Direct)
        );
        assert_eq!(conn.forwarded_for(), "192.0.2.9");

        let conn = trust(true).at_accept("10.0.0.5:4000".parse().unwrap());
        assert!(conn.expects_proxy_header());
        let conn = conn.with_proxy_source(Some("203.0.113.1:555".parse().unwrap()));
        let id = conn.for_request(&xff("6.6.6.6"));
        assert_eq!(id.ip, "203.0.113.1".parse::<IpAddr>().unwrap());
        assert_eq!(id.learned, Learned::ProxyProtocol);
        // A PROXY header's balancer is not an HTTP hop: the client it names is appended.
        assert_eq!(conn.forwarded_for(), "203.0.113.1");
        // A LOCAL header keeps the balancer as the client.
        let conn = trust(true)
            .at_accept("10.0.0.5:4000".parse().unwrap())
            .with_proxy_source(None);
        assert_eq!(conn.client.ip(), "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(conn.forwarded_for(), "10.0.0.5");
    }

    #[test]
    fn mapped_ipv6_counts_as_ipv4() {
        let conn = Trust::default().at_accept("[::ffff:127.0.0.2]:1".parse().unwrap());
        assert_eq!(conn.client.ip(), "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(conn.forwarded_for(), "127.0.0.2");
    }
}

//! PROXY protocol version 2 (haproxy's `proxy-protocol.txt`, section 2.2): the binary header an
//! L4 load balancer (AWS NLB, haproxy in TCP mode, GCP, Envoy) writes in front of a TCP
//! connection so that the server learns the client's address.
//!
//! scoregate reads it only from `listen.trusted_proxies` when `listen.proxy_protocol = "v2"`, and
//! before TLS. It reads exactly the header's bytes (16 + the declared length), so nothing of the
//! TLS ClientHello behind it is consumed. Anything that is not a well-formed v2 header closes the
//! connection: a receiver must never guess (the spec's rule). The text format (v1) is not accepted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport and the 2-byte length.
pub const PREFIX_LEN: usize = 16;
/// Upper bound on what may follow the prefix (addresses and TLVs). The largest address block is
/// 216 bytes (AF_UNIX); load balancers add TLVs of a few dozen (AWS VPC endpoint id, GCP PSC) to
/// a few hundred bytes (haproxy's SSL details). 2 KiB leaves room and bounds a hostile peer.
pub const MAX_BODY_LEN: usize = 2048;

const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;
const AF_UNSPEC: u8 = 0x0;
const AF_INET: u8 = 0x1;
const AF_INET6: u8 = 0x2;
const AF_UNIX: u8 = 0x3;
const PROTO_STREAM: u8 = 0x1;
const INET_LEN: usize = 12;
const INET6_LEN: usize = 36;
const UNIX_LEN: usize = 216;

/// What a valid header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied TCP connection: `source` is the client.
    Proxy {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The proxy speaking for itself (LOCAL, e.g. its health check), or an address family that
    /// carries no IP (UNSPEC, UNIX): the connection's own addresses stand.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol v2 header (bad signature)")]
    Signature,
    #[error("PROXY protocol version {0} is not supported (only 2)")]
    Version(u8),
    #[error("unknown PROXY protocol command {0:#x}")]
    Command(u8),
    #[error("unknown PROXY protocol address family/transport {0:#04x}")]
    Family(u8),
    #[error("PROXY header declares {0} bytes, more than the {MAX_BODY_LEN} accepted")]
    TooLong(usize),
    #[error("PROXY header address block is {got} bytes, its family needs {need}")]
    Short { got: usize, need: usize },
    #[error("reading the PROXY header: {0}")]
    Io(String),
}

/// Checks the fixed 16-byte prefix and returns how many bytes follow it.
pub fn parse_prefix(p: &[u8; PREFIX_LEN]) -> Result<usize, ProxyError> {
    if p[..12] != SIGNATURE {
        return Err(ProxyError::Signature);
    }
    let version = p[12] >> 4;
    if version != 2 {
        return Err(ProxyError::Version(version));
    }
    let command = p[12] & 0x0f;
    if command != CMD_LOCAL && command != CMD_PROXY {
        return Err(ProxyError::Command(command));
    }
    let len = u16::from_be_bytes([p[14], p[15]]) as usize;
    if len > MAX_BODY_LEN {
        return Err(ProxyError::TooLong(len));
    }
    Ok(len)
}

/// Interprets the bytes after the prefix (`body`, exactly the declared length). TLVs after the
/// address block are skipped: scoregate uses none of them.
pub fn parse_body(prefix: &[u8; PREFIX_LEN], body: &[u8]) -> Result<Header, ProxyError> {
    let command = prefix[12] & 0x0f;
    let family = prefix[13] >> 4;
    let transport = prefix[13] & 0x0f;
    let need = match family {
        AF_UNSPEC => 0,
        AF_INET => INET_LEN,
        AF_INET6 => INET6_LEN,
        AF_UNIX => UNIX_LEN,
        _ => return Err(ProxyError::Family(prefix[13])),
    };
    if transport > 0x2 {
        return Err(ProxyError::Family(prefix[13]));
    }
    if body.len() < need {
        return Err(ProxyError::Short {
            got: body.len(),
            need,
        });
    }
    // LOCAL: "the receiver must accept this connection as valid and must use the real connection
    // endpoints and discard the protocol block including the family".
    if command == CMD_LOCAL || family == AF_UNSPEC || family == AF_UNIX {
        return Ok(Header::Local);
    }
    // A datagram (or unspecified) transport on a TCP listener is not something a proxy sends.
    if transport != PROTO_STREAM {
        return Err(ProxyError::Family(prefix[13]));
    }
    let (source, destination) = if family == AF_INET {
        let ip = |o: usize| {
            IpAddr::V4(Ipv4Addr::new(
                body[o],
                body[o + 1],
                body[o + 2],
                body[o + 3],
            ))
        };
        let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
        (
            SocketAddr::new(ip(0), port(8)),
            SocketAddr::new(ip(4), port(10)),
        )
    } else {
        let ip = |o: usize| {
            let mut b = [0u8; 16];
            b.copy_from_slice(&body[o..o + 16]);
            IpAddr::V6(Ipv6Addr::from(b))
        };
        let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
        (
            SocketAddr::new(ip(0), port(32)),
            SocketAddr::new(ip(16), port(34)),
        )
    };
    Ok(Header::Proxy {
        source,
        destination,
    })
}

/// Parses a complete header held in memory; returns it and its length in bytes.
pub fn parse(buf: &[u8]) -> Result<(Header, usize), ProxyError> {
    let prefix: &[u8; PREFIX_LEN] = buf
        .get(..PREFIX_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or(ProxyError::Signature)?;
    let len = parse_prefix(prefix)?;
    let body = buf
        .get(PREFIX_LEN..PREFIX_LEN + len)
        .ok_or_else(|| ProxyError::Io("header is cut short".into()))?;
    Ok((parse_body(prefix, body)?, PREFIX_LEN + len))
}

/// Reads one header from the stream, consuming exactly its bytes. The caller bounds the time.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, ProxyError> {
    let io = |e: std::io::Error| ProxyError::Io(e.to_string());
    let mut prefix = [0u8; PREFIX_LEN];
    r.read_exact(&mut prefix).await.map_err(io)?;
    let len = parse_prefix(&prefix)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(io)?;
    parse_body(&prefix, &body)
}

/// Encodes a PROXY (TCP) header for `source` → `destination`, as a load balancer would. Both
/// must be of one IP family. For tests and tools.
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut v = SIGNATURE.to_vec();
    v.push(0x20 | CMD_PROXY);
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            v.push((AF_INET << 4) | PROTO_STREAM);
            v.extend_from_slice(&(INET_LEN as u16).to_be_bytes());
            v.extend_from_slice(&s.ip().octets());
            v.extend_from_slice(&d.ip().octets());
            v.extend_from_slice(&s.port().to_be_bytes());
            v.extend_from_slice(&d.port().to_be_bytes());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            v.push((AF_INET6 << 4) | PROTO_STREAM);
            v.extend_from_slice(&(INET6_LEN as u16).to_be_bytes());
            v.extend_from_slice(&s.ip().octets());
            v.extend_from_slice(&d.ip().octets());
            v.extend_from_slice(&s.port().to_be_bytes());
            v.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => panic!("PROXY header addresses must be of one family"),
    }
    v
}

/// A LOCAL header (what a proxy sends for its own health checks).
pub fn encode_local() -> Vec<u8> {
    let mut v = SIGNATURE.to_vec();
    v.push(0x20 | CMD_LOCAL);
    v.push(0x00);
    v.extend_from_slice(&0u16.to_be_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_and_ipv6_round_trip() {
        for (s, d) in [
            ("203.0.113.7:5555", "10.0.0.1:8443"),
            ("[2001:db8::1]:40000", "[2001:db8::2]:443"),
        ] {
            let h = encode(sa(s), sa(d));
            let (parsed, used) = parse(&h).unwrap();
            assert_eq!(used, h.len());
            assert_eq!(
                parsed,
                Header::Proxy {
                    source: sa(s),
                    destination: sa(d)
                }
            );
        }
    }

    #[test]
    fn the_spec_example_bytes_parse() {
        // PROXY TCP4 192.168.0.1:56324 -> 192.168.0.11:443, as haproxy writes it.
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        h.extend_from_slice(&[192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb]);
        assert_eq!(
            parse(&h).unwrap().0,
            Header::Proxy {
                source: sa("192.168.0.1:56324"),
                destination: sa("192.168.0.11:443")
            }
        );
    }

    #[test]
    fn tlvs_are_skipped_and_bytes_behind_the_header_are_not_consumed() {
        let mut h = encode(sa("198.51.100.2:1"), sa("10.0.0.1:2"));
        // One TLV (type 0x04 NOOP, 3 bytes), declared in the length.
        h[15] += 6;
        h.extend_from_slice(&[0x04, 0x00, 0x03, 1, 2, 3]);
        let header_len = h.len();
        h.extend_from_slice(b"\x16\x03\x01 ClientHello...");
        let (parsed, used) = parse(&h).unwrap();
        assert_eq!(used, header_len);
        assert!(matches!(parsed, Header::Proxy { source, .. } if source == sa("198.51.100.2:1")));
    }

    #[test]
    fn local_unspec_and_unix_keep_the_connection_addresses() {
        assert_eq!(parse(&encode_local()).unwrap().0, Header::Local);
        let mut unix = SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0x00, 216]);
        unix.extend_from_slice(&[0u8; 216]);
        assert_eq!(parse(&unix).unwrap().0, Header::Local);
        // LOCAL with an address block: the block is discarded.
        let mut local4 = encode(sa("1.2.3.4:5"), sa("5.6.7.8:9"));
        local4[12] = 0x20;
        assert_eq!(parse(&local4).unwrap().0, Header::Local);
    }

    #[test]
    fn malformed_headers_are_refused() {
        let good = encode(sa("1.2.3.4:5"), sa("5.6.7.8:9"));
        let mut bad_sig = good.clone();
        bad_sig[3] = b'X';
        assert_eq!(parse(&bad_sig).unwrap_err(), ProxyError::Signature);
        let mut v1 = good.clone();
        v1[12] = 0x11;
        assert_eq!(parse(&v1).unwrap_err(), ProxyError::Version(1));
        let mut cmd = good.clone();
        cmd[12] = 0x22;
        assert_eq!(parse(&cmd).unwrap_err(), ProxyError::Command(2));
        let mut fam = good.clone();
        fam[13] = 0x41;
        assert!(matches!(parse(&fam), Err(ProxyError::Family(_))));
        let mut udp = good.clone();
        udp[13] = 0x12;
        assert!(matches!(parse(&udp), Err(ProxyError::Family(_))));
        let mut short = good.clone();
        short[15] = 8;
        short.truncate(16 + 8);
        assert!(matches!(parse(&short), Err(ProxyError::Short { .. })));
        let mut six_short = good.clone();
        six_short[13] = 0x21; // claims IPv6 with a 12-byte block
        assert!(matches!(parse(&six_short), Err(ProxyError::Short { .. })));
        let mut huge = good.clone();
        huge[14] = 0xff;
        assert!(matches!(parse(&huge), Err(ProxyError::TooLong(_))));
        // PROXY v1 text is not v2.
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").unwrap_err(),
            ProxyError::Signature
        );
        assert!(parse(&good[..10]).is_err());
        assert!(parse(&good[..20]).is_err());
    }

    proptest::proptest! {
        /// Any address pair survives encode → parse, and the bytes after the header are not
        /// consumed.
        #[test]
        fn encode_then_parse_round_trips(
            v6 in proptest::bool::ANY,
            a in proptest::array::uniform16(proptest::num::u8::ANY),
            b in proptest::array::uniform16(proptest::num::u8::ANY),
            sp in proptest::num::u16::ANY,
            dp in proptest::num::u16::ANY,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..32),
        ) {
            let (src, dst) = if v6 {
                (SocketAddr::new(Ipv6Addr::from(a).into(), sp), SocketAddr::new(Ipv6Addr::from(b).into(), dp))
            } else {
                let a4 = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                let b4 = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                (SocketAddr::new(a4.into(), sp), SocketAddr::new(b4.into(), dp))
            };
            let mut buf = encode(src, dst);
            let len = buf.len();
            buf.extend_from_slice(&tail);
            let (h, used) = parse(&buf).unwrap();
            proptest::prop_assert_eq!(used, len);
            proptest::prop_assert_eq!(h, Header::Proxy { source: src, destination: dst });
        }

        /// Arbitrary bytes, and valid headers with bytes flipped, never panic; whatever parses
        /// says how much it used, and parsing exactly that much gives the same answer.
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 0..4),
            from_valid in proptest::bool::ANY,
        ) {
            let mut buf = if from_valid {
                let mut b = encode(sa("1.2.3.4:5"), sa("5.6.7.8:9"));
                b.extend_from_slice(&bytes);
                b
            } else {
                let mut b = SIGNATURE.to_vec();
                b.extend_from_slice(&bytes);
                b
            };
            for (at, v) in flips {
                let n = buf.len();
                buf[at % n] = v;
            }
            if let Ok((h, used)) = parse(&buf) {
                proptest::prop_assert!(used <= buf.len());
                proptest::prop_assert_eq!(parse(&buf[..used]).unwrap().0, h);
            }
        }
    }

    #[tokio::test]
    async fn reading_consumes_exactly_the_header() {
        let mut data = encode(sa("203.0.113.9:1234"), sa("10.0.0.1:443"));
        data.extend_from_slice(b"rest");
        let mut r = &data[..];
        let h = read_header(&mut r).await.unwrap();
        assert!(matches!(h, Header::Proxy { .. }));
        assert_eq!(r, b"rest");
        let mut cut = &data[..20];
        assert!(matches!(
            read_header(&mut cut).await,
            Err(ProxyError::Io(_))
        ));
    }
}

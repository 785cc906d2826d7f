//! What one load task counts: completed requests, their latencies (an HDR histogram) and
//! failures by kind (connect, TLS, timeout, I/O, HTTP status), with the first message of each
//! kind to say why. Tasks merge theirs at the end of the run.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Latency histogram range: 1 µs .. 60 s, 3 significant digits.
const HIST_MAX_US: u64 = 60_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Connect,
    Tls,
    Status(u16),
    Timeout,
    Io,
}

/// A failed request or connection attempt.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) kind: Kind,
    pub(super) msg: String,
    /// The server said `Connection: close` (with a non-2xx answer).
    pub(super) close: bool,
}

impl Failure {
    pub(super) fn new(kind: Kind, msg: impl Into<String>) -> Failure {
        Failure {
            kind,
            msg: msg.into(),
            close: false,
        }
    }

    pub(super) fn hyper(e: hyper::Error) -> Failure {
        let kind = if e.is_timeout() {
            Kind::Timeout
        } else {
            Kind::Io
        };
        Failure::new(kind, chain(&e))
    }

    /// Whether the connection is unusable after this.
    pub(super) fn reconnect(&self) -> bool {
        !matches!(self.kind, Kind::Status(_)) || self.close
    }
}

pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Counts and latencies of one task (merged at the end).
pub(super) struct Stats {
    pub(super) hist: Histogram<u64>,
    pub(super) ok: u64,
    pub(super) errors: Errors,
}

#[derive(Default)]
pub(super) struct Errors {
    connect: u64,
    tls: u64,
    timeout: u64,
    io: u64,
    status: BTreeMap<u16, u64>,
    /// The first message seen of each kind, to say *why*.
    pub(super) first: BTreeMap<&'static str, String>,
}

impl Errors {
    pub(super) fn total(&self) -> u64 {
        self.connect + self.tls + self.timeout + self.io + self.status.values().sum::<u64>()
    }

    pub(super) fn add(&mut self, f: &Failure) {
        let name = match f.kind {
            Kind::Connect => {
                self.connect += 1;
                "connect"
            }
            Kind::Tls => {
                self.tls += 1;
                "tls"
            }
            Kind::Timeout => {
                self.timeout += 1;
                "timeout"
            }
            Kind::Io => {
                self.io += 1;
                "io"
            }
            Kind::Status(c) => {
                *self.status.entry(c).or_default() += 1;
                "status"
            }
        };
        self.first.entry(name).or_insert_with(|| f.msg.clone());
    }

    pub(super) fn merge(&mut self, o: Errors) {
        self.connect += o.connect;
        self.tls += o.tls;
        self.timeout += o.timeout;
        self.io += o.io;
        for (c, n) in o.status {
            *self.status.entry(c).or_default() += n;
        }
        for (k, v) in o.first {
            self.first.entry(k).or_insert(v);
        }
    }

    /// What to do about the failures, when the first TLS error says it: a certificate signed by
    /// a CA the load generator does not trust (a private CA, `make-certs.sh`, the demo's).
    pub(super) fn hint(&self) -> Option<&'static str> {
        self.first
            .get("tls")
            .filter(|m| m.contains("UnknownIssuer"))
            .map(|_| {
                "the gateway's certificate is signed by a CA this client does not trust: pass --ca FILE (the CA certificate), or --insecure to skip verification"
            })
    }

    pub(super) fn summary(&self) -> String {
        let mut parts = vec![];
        for (name, n) in [
            ("connect", self.connect),
            ("tls", self.tls),
            ("timeout", self.timeout),
            ("io", self.io),
        ] {
            if n > 0 {
                parts.push(format!("{name} {n}"));
            }
        }
        for (c, n) in &self.status {
            parts.push(format!("status {c}: {n}"));
        }
        parts.join(", ")
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "total": self.total(),
            "connect": self.connect,
            "tls": self.tls,
            "timeout": self.timeout,
            "io": self.io,
            "status": self.status.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "first": self.first,
        })
    }
}

impl Stats {
    pub(super) fn new() -> Stats {
        Stats {
            hist: Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds"),
            ok: 0,
            errors: Errors::default(),
        }
    }

    /// Adds one outcome that took `took` (the caller decides whether it counts: `Ctx::record`).
    pub(super) fn add<T>(&mut self, took: Duration, r: &Result<T, Failure>) {
        match r {
            Ok(_) => {
                self.ok += 1;
                self.hist.saturating_record(took.as_micros().max(1) as u64);
            }
            Err(f) => self.errors.add(f),
        }
    }

    pub(super) fn merge(&mut self, o: Stats) {
        let _ = self.hist.add(&o.hist);
        self.ok += o.ok;
        self.errors.merge(o.errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_say_whether_to_reconnect() {
        assert!(Failure::new(Kind::Io, "x").reconnect());
        assert!(!Failure::new(Kind::Status(401), "x").reconnect());
        let mut e = Errors::default();
        e.add(&Failure::new(Kind::Status(401), "HTTP 401"));
        e.add(&Failure::new(Kind::Status(401), "HTTP 401"));
        e.add(&Failure::new(Kind::Tls, "bad cert"));
        assert_eq!(e.total(), 3);
        assert_eq!(e.summary(), "tls 1, status 401: 2");
        assert_eq!(e.first["tls"], "bad cert");
        assert_eq!(e.hint(), None);
        let mut u = Errors::default();
        u.add(&Failure::new(
            Kind::Tls,
            "invalid peer certificate: UnknownIssuer",
        ));
        assert!(u.hint().unwrap().contains("--ca"));
    }
}

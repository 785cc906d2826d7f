//! The `RateLimit` and `RateLimit-Policy` response headers (draft-ietf-httpapi-ratelimit-headers,
//! contract §7):
//!
//! ```text
//! RateLimit-Policy: "<name>";q=<requests>;w=<per in seconds>
//! RateLimit: "<name>";r=<tokens left>;t=<seconds until one more request passes, 0 when r ≥ 1>
//! ```
//!
//! Policy names are validated to characters that need no escaping in a structured-field string.
//! `RateLimit-Policy` is fixed per policy and made once; `RateLimit` values are made on first
//! use and kept (for up to `CACHED` token counts and waits), so a request clones a shared value
//! instead of formatting and allocating one.

use std::sync::OnceLock;

use http::HeaderValue;

/// Values of `r` (with `t=0`) and of `t` (with `r=0`) kept per policy: 1 025 slots each at most.
const CACHED: u64 = 1024;

pub struct Rendered {
    name: Box<str>,
    policy: HeaderValue,
    /// Index `r` (≥ 1), `t` = 0.
    ready: Box<[OnceLock<HeaderValue>]>,
    /// Index `t` (≥ 1), `r` = 0.
    waiting: Box<[OnceLock<HeaderValue>]>,
}

impl Rendered {
    /// `max_wait_s`: the longest `t` this policy can show (one emission interval, rounded up).
    pub fn new(name: &str, requests: u64, per_s: u64, burst: u64, max_wait_s: u64) -> Rendered {
        let slots = |n: u64| (0..=n.min(CACHED)).map(|_| OnceLock::new()).collect();
        Rendered {
            name: name.into(),
            policy: value(format!("\"{name}\";q={requests};w={per_s}")),
            ready: slots(burst),
            waiting: slots(max_wait_s),
        }
    }

    pub fn policy(&self) -> HeaderValue {
        self.policy.clone()
    }

    pub fn ratelimit(&self, remaining: u64, reset: u64) -> HeaderValue {
        let slot = match (remaining, reset) {
            (r, 0) => self.ready.get(r as usize),
            (0, t) => self.waiting.get(t as usize),
            _ => None,
        };
        let make = || value(format!("\"{}\";r={remaining};t={reset}", self.name));
        match slot {
            Some(s) => s.get_or_init(make).clone(),
            None => make(),
        }
    }
}

fn value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).expect("policy names are validated header-safe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_their_cache_agree() {
        let r = Rendered::new("per-client", 100, 60, 3, 1);
        assert_eq!(r.policy(), "\"per-client\";q=100;w=60");
        for _ in 0..2 {
            assert_eq!(r.ratelimit(3, 0), "\"per-client\";r=3;t=0");
            assert_eq!(r.ratelimit(0, 1), "\"per-client\";r=0;t=1");
            // Outside the cache: made each time, the same text.
            assert_eq!(r.ratelimit(7, 0), "\"per-client\";r=7;t=0");
            assert_eq!(r.ratelimit(0, 9), "\"per-client\";r=0;t=9");
        }
    }
}

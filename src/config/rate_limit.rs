//! `[[service.rate_limit]]` (contract §7): the policies as written, their checks (each problem
//! names its key, e.g. `service[0].rate_limit[1].per`), and the typed result.

use std::time::Duration;

use serde::Serialize;

use super::raw::RawRateLimit;
use super::types::AuthMode;
use super::validate::Validator;

/// What a policy counts by: which bucket a request takes its token from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitBy {
    /// One bucket per client address (IPv6 by /64).
    Client,
    /// One per key slot, or per token (`iss`, `sub`).
    Credential,
    /// One for the whole service.
    Service,
}

impl RateLimitBy {
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitBy::Client => "client",
            RateLimitBy::Credential => "credential",
            RateLimitBy::Service => "service",
        }
    }
}

/// One policy: a token bucket refilled at `requests` per `per`, `burst` deep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimitConfig {
    /// Unique within the service; the name in headers and metrics.
    pub name: String,
    pub by: RateLimitBy,
    pub requests: u64,
    /// Whole seconds, at least 1 s.
    #[serde(serialize_with = "super::view::duration")]
    pub per: Duration,
    pub burst: u64,
}

impl RateLimitConfig {
    pub fn new(name: &str, by: RateLimitBy, requests: u64, per: Duration, burst: u64) -> Self {
        RateLimitConfig {
            name: name.into(),
            by,
            requests,
            per,
            burst,
        }
    }
}

impl std::fmt::Display for RateLimitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "\"{}\" by {}: {} per {}s, burst {}",
            self.name,
            self.by.as_str(),
            self.requests,
            self.per.as_secs(),
            self.burst
        )
    }
}

/// Largest `requests` and `burst`: far beyond any real limit, and small enough that the
/// bucket arithmetic (nanoseconds in a u64) cannot overflow.
pub const MAX_REQUESTS: u64 = 1_000_000_000;
/// Longest `per`: a year (daily and monthly quotas fit).
pub const MAX_PER: Duration = Duration::from_secs(366 * 86_400);
/// Longest time an empty bucket may take to fill (`burst × per / requests`): 100 years.
pub const MAX_REFILL_S: u128 = 100 * 366 * 86_400;

/// A policy name goes into a quoted header parameter and a metric label: 1 to 64 of
/// `A-Z a-z 0-9 - _ .`.
fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

impl Validator {
    pub(super) fn rate_limits(
        &mut self,
        key: &str,
        auth: AuthMode,
        raw: Vec<RawRateLimit>,
    ) -> Vec<RateLimitConfig> {
        let mut out: Vec<RateLimitConfig> = Vec::with_capacity(raw.len());
        for (i, r) in raw.into_iter().enumerate() {
            let key = format!("{key}.rate_limit[{i}]");
            let by = match r.by.as_deref() {
                Some("client") => RateLimitBy::Client,
                Some("credential") => RateLimitBy::Credential,
                Some("service") => RateLimitBy::Service,
                Some(other) => {
                    self.problem(
                        &format!("{key}.by"),
                        format!("{other:?} is not one of \"client\", \"credential\", \"service\""),
                    );
                    RateLimitBy::Client
                }
                None => {
                    self.problem(
                        &format!("{key}.by"),
                        "required: \"client\", \"credential\" or \"service\"",
                    );
                    RateLimitBy::Client
                }
            };
            if by == RateLimitBy::Credential && auth == AuthMode::None {
                self.problem(
                    &format!("{key}.by"),
                    "\"credential\" needs auth = \"key\" or \"token\" (this service has auth = \"none\")",
                );
            }
            let mut count = |field: &str, v: Option<i64>, default: Option<u64>| -> u64 {
                match v {
                    None => default.unwrap_or_else(|| {
                        self.problem(&format!("{key}.{field}"), "required: a whole number ≥ 1");
                        1
                    }),
                    Some(n) if n < 1 || n as u64 > MAX_REQUESTS => {
                        self.problem(
                            &format!("{key}.{field}"),
                            format!("{n} must be a whole number from 1 to {MAX_REQUESTS}"),
                        );
                        1
                    }
                    Some(n) => n as u64,
                }
            };
            let requests = count("requests", r.requests, None);
            let burst = count("burst", r.burst, Some(requests));
            let per = match r.per.as_deref() {
                None => {
                    self.problem(
                        &format!("{key}.per"),
                        "required: a duration like \"1s\" or \"1m\"",
                    );
                    Duration::from_secs(1)
                }
                Some(s) => {
                    let d = self.duration(&format!("{key}.per"), Some(s), Duration::from_secs(1));
                    if d < Duration::from_secs(1) || d.subsec_nanos() != 0 || d > MAX_PER {
                        self.problem(
                            &format!("{key}.per"),
                            format!("{s:?} must be whole seconds, from 1s to 366d"),
                        );
                        Duration::from_secs(1)
                    } else {
                        d
                    }
                }
            };
            if u128::from(burst) * u128::from(per.as_secs()) / u128::from(requests) > MAX_REFILL_S {
                self.problem(
                    &format!("{key}.burst"),
                    "an empty bucket would take over 100 years to fill (burst × per / requests)",
                );
            }
            let name = r.name.unwrap_or_else(|| by.as_str().to_string());
            if !valid_name(&name) {
                self.problem(
                    &format!("{key}.name"),
                    format!("{name:?} must be 1 to 64 characters of A-Z a-z 0-9 - _ ."),
                );
            } else if let Some(j) = out.iter().position(|o| o.name == name) {
                self.problem(
                    &format!("{key}.name"),
                    format!(
                        "{name:?} is already the name of rate_limit[{j}] (the name defaults to the `by` value: give each policy its own)"
                    ),
                );
            }
            out.push(RateLimitConfig {
                name,
                by,
                requests,
                per,
                burst,
            });
        }
        out
    }
}

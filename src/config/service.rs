//! Validation of one `[[service]]` entry: its name, auth mode and presets, backends, timeouts,
//! limits and health checks, each problem naming its key.

use super::defaults::*;
use super::raw::RawService;
use super::types::*;
use super::validate::{Validator, validate_key_value};
use crate::crypto::Secret;
use crate::route::valid_service_name;

impl Validator {
    pub(super) fn service(
        &mut self,
        key: &str,
        raw: RawService,
        tokens: &TokensConfig,
    ) -> ServiceConfig {
        if !valid_service_name(&raw.name) {
            self.problem(
                &format!("{key}.name"),
                format!(
                    "{:?} is not a valid service name (3 to 32 characters of a-z 0-9 -, starting with a letter, not ending with -)",
                    raw.name
                ),
            );
        }
        let auth = match raw.auth.as_deref() {
            None | Some("key") => AuthMode::Key,
            Some("token") => AuthMode::Token,
            Some("none") => AuthMode::None,
            Some(other) => {
                self.problem(
                    &format!("{key}.auth"),
                    format!("{other:?} is not one of \"key\", \"token\", \"none\" (key and token auth cannot both be on)"),
                );
                AuthMode::Key
            }
        };
        if auth != AuthMode::Key && (raw.primary_key.is_some() || raw.secondary_key.is_some()) {
            self.problem(
                &format!("{key}.primary_key"),
                format!(
                    "preset keys need auth = \"key\" (this service has auth = {:?}; key and token auth are never both on)",
                    auth.as_str()
                ),
            );
        }
        for (k, v) in [
            ("primary_key", &raw.primary_key),
            ("secondary_key", &raw.secondary_key),
        ] {
            if let Some(v) = v
                && let Err(why) = validate_key_value(v)
            {
                self.problem(&format!("{key}.{k}"), why);
            }
        }
        if raw.primary_key.is_some() && raw.primary_key == raw.secondary_key {
            self.problem(
                &format!("{key}.secondary_key"),
                "must differ from primary_key",
            );
        }
        if let Some(list) = &raw.trusted_issuers {
            if auth != AuthMode::Token {
                self.problem(
                    &format!("{key}.trusted_issuers"),
                    "only applies to auth = \"token\"",
                );
            }
            for (i, iss) in list.iter().enumerate() {
                if !tokens.trusted_issuers.iter().any(|t| &t.issuer == iss) {
                    self.problem(
                        &format!("{key}.trusted_issuers[{i}]"),
                        format!("{iss:?} is not among [[tokens.trusted_issuers]]"),
                    );
                }
            }
        }
        if raw.backends.is_empty() && raw.deployment.is_empty() {
            self.problem(
                &format!("{key}.backends"),
                "needs at least one backend URL (or [[service.deployment]] entries)",
            );
        }
        if !raw.backends.is_empty() && !raw.deployment.is_empty() {
            self.problem(
                &format!("{key}.deployment"),
                "a service has either backends (one deployment, \"default\") or [[service.deployment]] entries, not both",
            );
        }
        let backends = self.backend_list(&format!("{key}.backends"), &raw.backends);
        let backend_protocol = self
            .backend_protocol(key, raw.backend_protocol.as_deref())
            .unwrap_or(BackendProtocol::Http1);
        let score_path = raw.score_path.unwrap_or_else(|| DEFAULT_SCORE_PATH.into());
        self.score_path(key, &score_path);
        let scoring_timeout = self.duration(
            &format!("{key}.scoring_timeout"),
            raw.scoring_timeout.as_deref(),
            DEFAULT_SCORING_TIMEOUT,
        );
        if scoring_timeout.is_zero() {
            self.problem(&format!("{key}.scoring_timeout"), "must be more than 0s");
        }
        let max_body = self.size(
            &format!("{key}.max_body"),
            raw.max_body.as_deref(),
            DEFAULT_MAX_BODY,
        );
        let max_request_wait_time = self.duration(
            &format!("{key}.max_request_wait_time"),
            raw.max_request_wait_time.as_deref(),
            DEFAULT_MAX_REQUEST_WAIT,
        );
        let h = raw.health.unwrap_or_default();
        let hd = HealthConfig::default();
        let health = HealthConfig {
            path: h.path.unwrap_or(hd.path),
            period: self.duration(
                &format!("{key}.health.period"),
                h.period.as_deref(),
                hd.period,
            ),
            timeout: self.duration(
                &format!("{key}.health.timeout"),
                h.timeout.as_deref(),
                hd.timeout,
            ),
            failure_threshold: h.failure_threshold.unwrap_or(hd.failure_threshold),
            success_threshold: h.success_threshold.unwrap_or(hd.success_threshold),
            initial_delay: self.duration(
                &format!("{key}.health.initial_delay"),
                h.initial_delay.as_deref(),
                hd.initial_delay,
            ),
        };
        self.check_health(key, &health);
        let rate_limits = self.rate_limits(key, auth, raw.rate_limit);
        let shape = super::deployment::RawShape {
            deployments: raw.deployment,
            traffic: raw.traffic,
            mirror_traffic: raw.mirror_traffic,
            mirror_max_body: raw.mirror_max_body,
            mirror_tolerance: raw.mirror_tolerance,
            mirror_max_in_flight: raw.mirror_max_in_flight,
            mirror_queue: raw.mirror_queue,
            mirror_headers: raw.mirror_headers,
        };
        let mut svc = ServiceConfig {
            name: raw.name,
            auth,
            backends,
            backend_protocol,
            score_path,
            scoring_timeout,
            max_body,
            max_concurrent_requests_per_backend: raw
                .max_concurrent_requests_per_backend
                .unwrap_or(DEFAULT_MAX_CONCURRENT_PER_BACKEND),
            max_request_wait_time,
            allow: self.cidrs(&format!("{key}.allow"), &raw.allow),
            deny: self.cidrs(&format!("{key}.deny"), &raw.deny),
            trusted_issuers: raw.trusted_issuers,
            primary_key: raw.primary_key.map(Secret::new),
            secondary_key: raw.secondary_key.map(Secret::new),
            health,
            rate_limits,
            deployments: vec![],
            traffic: Traffic::new(),
            mirror_traffic: Traffic::new(),
            mirror: MirrorConfig::default(),
        };
        self.deployments(key, &mut svc, shape);
        svc
    }

    /// A list of backend URLs, each checked (`key[i]` names a bad one).
    pub(super) fn backend_list(&mut self, key: &str, raw: &[String]) -> Vec<http::Uri> {
        let mut backends = Vec::with_capacity(raw.len());
        for (i, b) in raw.iter().enumerate() {
            match parse_backend(b) {
                Ok(u) => backends.push(u),
                Err(why) => self.problem(&format!("{key}[{i}]"), why),
            }
        }
        backends
    }

    /// `backend_protocol` under `key` (`None`: unset, or wrong and reported).
    pub(super) fn backend_protocol(
        &mut self,
        key: &str,
        v: Option<&str>,
    ) -> Option<BackendProtocol> {
        match v {
            None => None,
            Some("http1") => Some(BackendProtocol::Http1),
            Some("h2c") => Some(BackendProtocol::H2c),
            Some(other) => {
                self.problem(
                    &format!("{key}.backend_protocol"),
                    format!("{other:?} is not one of \"http1\", \"h2c\""),
                );
                None
            }
        }
    }

    pub(super) fn score_path(&mut self, key: &str, p: &str) {
        if !request_path(p) {
            self.problem(
                &format!("{key}.score_path"),
                format!("{p:?} must be a path starting with / (no query; only characters a URL path may hold)"),
            );
        }
    }

    /// The rules of a health check in force (`key.health`).
    pub(super) fn check_health(&mut self, key: &str, health: &HealthConfig) {
        if !request_path(&health.path) {
            self.problem(
                &format!("{key}.health.path"),
                format!("{:?} must be a path starting with / (no query; only characters a URL path may hold)", health.path),
            );
        }
        if health.period.is_zero() || health.timeout.is_zero() {
            self.problem(
                &format!("{key}.health"),
                "period and timeout must be more than 0s",
            );
        }
        if health.failure_threshold == 0 || health.success_threshold == 0 {
            self.problem(&format!("{key}.health"), "thresholds must be at least 1");
        }
    }
}

/// A path the gateway can put in a request line: checked with the parser that will consume it
/// (`http::uri::PathAndQuery`), starting with `/`, without a query or fragment.
pub fn request_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains(['?', '#'])
        && http::uri::PathAndQuery::try_from(p).is_ok_and(|pq| pq.as_str() == p)
}

/// A backend is `http://host:port` with no path: the gateway appends the route's path.
pub fn parse_backend(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL ({e})"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{s:?} must start with http:// (backends are plain HTTP/1.1 or h2c on a private network)"
        ));
    }
    if uri.host().is_none() {
        return Err(format!("{s:?} has no host"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!(
            "{s:?} must not carry user info (it would be sent in the Host header)"
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{s:?} must not have a path or query (use score_path)"
        ));
    }
    Ok(uri)
}

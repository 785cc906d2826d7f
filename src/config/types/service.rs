//! The checked, typed config of one service (`[[service]]`): its auth mode, backends and
//! deployments (and each deployment resolved against the service), traffic split, health check,
//! mirror and rate limits. Built by `config::service` and `config::deployment`.

use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use crate::config::defaults::*;
use crate::config::view;
use crate::crypto::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    None,
    Key,
    Token,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Key => "key",
            AuthMode::Token => "token",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendProtocol {
    Http1,
    H2c,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceConfig {
    pub name: String,
    pub auth: AuthMode,
    #[serde(serialize_with = "view::display_list")]
    pub backends: Vec<http::Uri>,
    pub backend_protocol: BackendProtocol,
    pub score_path: String,
    #[serde(serialize_with = "view::duration")]
    pub scoring_timeout: Duration,
    pub max_body: u64,
    pub max_concurrent_requests_per_backend: usize,
    #[serde(serialize_with = "view::duration")]
    pub max_request_wait_time: Duration,
    #[serde(serialize_with = "view::display_list")]
    pub allow: Vec<IpNet>,
    #[serde(serialize_with = "view::display_list")]
    pub deny: Vec<IpNet>,
    pub trusted_issuers: Option<Vec<String>>,
    #[serde(serialize_with = "view::redacted_option")]
    pub primary_key: Option<Secret>,
    #[serde(serialize_with = "view::redacted_option")]
    pub secondary_key: Option<Secret>,
    pub health: HealthConfig,
    /// `[[service.rate_limit]]`, in config order.
    pub rate_limits: Vec<crate::config::RateLimitConfig>,
    /// `[[service.deployment]]`, in config order; empty for a service with `backends` (one
    /// deployment, `default`, with the service's settings: see `resolved_deployments`).
    pub deployments: Vec<DeploymentConfig>,
    /// The live split with defaults applied: every deployment with its weight (whole
    /// percentages summing to 100, or all 0).
    pub traffic: Traffic,
    /// `mirror_traffic`: at most one deployment with a non-zero share (zero shares dropped).
    pub mirror_traffic: Traffic,
    /// The `mirror_*` keys.
    pub mirror: MirrorConfig,
}

/// Deployment name → weight in percent.
pub type Traffic = std::collections::BTreeMap<String, u8>;

/// `traffic` as one canonical string (`blue=90,green=10`): what the state store remembers of
/// an applied config value.
pub fn traffic_string(t: &Traffic) -> String {
    let mut s = String::new();
    for (i, (k, v)) in t.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(&v.to_string());
    }
    s
}

/// One `[[service.deployment]]` as written: what it sets, each unset key taking the service's
/// value (`ServiceConfig::resolved_deployments`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentConfig {
    pub name: String,
    #[serde(serialize_with = "view::display_list")]
    pub backends: Vec<http::Uri>,
    pub backend_protocol: Option<BackendProtocol>,
    pub score_path: Option<String>,
    #[serde(serialize_with = "view::duration_option")]
    pub scoring_timeout: Option<Duration>,
    pub max_concurrent_requests_per_backend: Option<usize>,
    #[serde(serialize_with = "view::duration_option")]
    pub max_request_wait_time: Option<Duration>,
    pub health: HealthOverrides,
    pub pinnable: bool,
}

impl DeploymentConfig {
    /// A deployment that sets nothing but its backends (configs built in code).
    pub fn new(name: &str, backends: Vec<http::Uri>) -> Self {
        DeploymentConfig {
            name: name.into(),
            backends,
            backend_protocol: None,
            score_path: None,
            scoring_timeout: None,
            max_concurrent_requests_per_backend: None,
            max_request_wait_time: None,
            health: HealthOverrides::default(),
            pinnable: true,
        }
    }
}

/// `[service.deployment.health]`: the keys a deployment sets over the service's health check.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct HealthOverrides {
    pub path: Option<String>,
    #[serde(serialize_with = "view::duration_option")]
    pub period: Option<Duration>,
    #[serde(serialize_with = "view::duration_option")]
    pub timeout: Option<Duration>,
    pub failure_threshold: Option<u32>,
    pub success_threshold: Option<u32>,
    #[serde(serialize_with = "view::duration_option")]
    pub initial_delay: Option<Duration>,
}

impl HealthOverrides {
    /// These keys over `base`.
    pub fn over(&self, base: &HealthConfig) -> HealthConfig {
        HealthConfig {
            path: self.path.clone().unwrap_or_else(|| base.path.clone()),
            period: self.period.unwrap_or(base.period),
            timeout: self.timeout.unwrap_or(base.timeout),
            failure_threshold: self.failure_threshold.unwrap_or(base.failure_threshold),
            success_threshold: self.success_threshold.unwrap_or(base.success_threshold),
            initial_delay: self.initial_delay.unwrap_or(base.initial_delay),
        }
    }
}

/// A deployment with every backend setting resolved (its own, else the service's, else the
/// default).
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedDeployment {
    pub name: String,
    pub backends: Vec<http::Uri>,
    pub backend_protocol: BackendProtocol,
    pub score_path: String,
    pub scoring_timeout: Duration,
    pub max_concurrent_requests_per_backend: usize,
    pub max_request_wait_time: Duration,
    pub health: HealthConfig,
    pub pinnable: bool,
}

/// The `mirror_*` keys of a service (contract §8).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MirrorConfig {
    /// A request body over this is not copied (`skipped_too_large`); a response over it is not
    /// compared (`unchecked_too_large`).
    pub max_body: u64,
    /// Relative tolerance of the JSON number comparison.
    pub tolerance: f64,
    /// Copies in flight at once, per service.
    pub max_in_flight: usize,
    /// Copies that may wait for one of those places.
    pub queue: usize,
    /// Request headers copied beyond the fixed list, lower-case.
    pub headers: Vec<String>,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            max_body: DEFAULT_MIRROR_MAX_BODY,
            tolerance: DEFAULT_MIRROR_TOLERANCE,
            max_in_flight: DEFAULT_MIRROR_MAX_IN_FLIGHT,
            queue: DEFAULT_MIRROR_QUEUE,
            headers: vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthConfig {
    pub path: String,
    #[serde(serialize_with = "view::duration")]
    pub period: Duration,
    #[serde(serialize_with = "view::duration")]
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    #[serde(serialize_with = "view::duration")]
    pub initial_delay: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: DEFAULT_HEALTH_PATH.into(),
            period: DEFAULT_HEALTH_PERIOD,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            failure_threshold: DEFAULT_HEALTH_FAILURES,
            success_threshold: DEFAULT_HEALTH_SUCCESSES,
            initial_delay: DEFAULT_HEALTH_INITIAL_DELAY,
        }
    }
}

impl ServiceConfig {
    /// A service with every default, for configs built in code (demo, tests).
    pub fn new(name: &str, auth: AuthMode, backends: Vec<http::Uri>) -> Self {
        ServiceConfig {
            name: name.into(),
            auth,
            backends,
            backend_protocol: BackendProtocol::Http1,
            score_path: DEFAULT_SCORE_PATH.into(),
            scoring_timeout: DEFAULT_SCORING_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
            max_concurrent_requests_per_backend: 0,
            max_request_wait_time: DEFAULT_MAX_REQUEST_WAIT,
            allow: vec![],
            deny: vec![],
            trusted_issuers: None,
            primary_key: None,
            secondary_key: None,
            health: HealthConfig::default(),
            rate_limits: vec![],
            deployments: vec![],
            traffic: [(DEFAULT_DEPLOYMENT.to_string(), 100)].into(),
            mirror_traffic: Traffic::new(),
            mirror: MirrorConfig::default(),
        }
    }

    /// The deployments as the gateway runs them: `[[service.deployment]]` entries with each
    /// unset key taken from the service, or for a service with `backends` the one deployment
    /// `default`.
    pub fn resolved_deployments(&self) -> Vec<ResolvedDeployment> {
        if self.deployments.is_empty() {
            return vec![ResolvedDeployment {
                name: DEFAULT_DEPLOYMENT.into(),
                backends: self.backends.clone(),
                backend_protocol: self.backend_protocol,
                score_path: self.score_path.clone(),
                scoring_timeout: self.scoring_timeout,
                max_concurrent_requests_per_backend: self.max_concurrent_requests_per_backend,
                max_request_wait_time: self.max_request_wait_time,
                health: self.health.clone(),
                pinnable: true,
            }];
        }
        self.deployments
            .iter()
            .map(|d| ResolvedDeployment {
                name: d.name.clone(),
                backends: d.backends.clone(),
                backend_protocol: d.backend_protocol.unwrap_or(self.backend_protocol),
                score_path: d
                    .score_path
                    .clone()
                    .unwrap_or_else(|| self.score_path.clone()),
                scoring_timeout: d.scoring_timeout.unwrap_or(self.scoring_timeout),
                max_concurrent_requests_per_backend: d
                    .max_concurrent_requests_per_backend
                    .unwrap_or(self.max_concurrent_requests_per_backend),
                max_request_wait_time: d
                    .max_request_wait_time
                    .unwrap_or(self.max_request_wait_time),
                health: d.health.over(&self.health),
                pinnable: d.pinnable,
            })
            .collect()
    }

    /// The backends for a log line or `check`: `http://a,http://b`, or per deployment with its
    /// weight and mirror share: `blue=90%[http://a] green=10%,mirror=0%[http://b]`.
    pub fn backends_summary(&self) -> String {
        let urls = |b: &[http::Uri]| {
            b.iter()
                .map(|u| u.to_string().trim_end_matches('/').to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        if self.deployments.is_empty() {
            return urls(&self.backends);
        }
        self.deployments
            .iter()
            .map(|d| {
                let mirror = match self.mirror_traffic.get(&d.name) {
                    Some(p) => format!(",mirror={p}%"),
                    None => String::new(),
                };
                format!(
                    "{}={}%{mirror}[{}]",
                    d.name,
                    self.traffic.get(&d.name).copied().unwrap_or(0),
                    urls(&d.backends)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The names of the deployments, in config order.
    pub fn deployment_names(&self) -> Vec<&str> {
        if self.deployments.is_empty() {
            vec![DEFAULT_DEPLOYMENT]
        } else {
            self.deployments.iter().map(|d| d.name.as_str()).collect()
        }
    }

    /// A service of several deployments (configs built in code): the live split `traffic`,
    /// every deployment not named in it at 0.
    pub fn with_deployments(
        mut self,
        deployments: Vec<DeploymentConfig>,
        traffic: &[(&str, u8)],
    ) -> Self {
        self.backends.clear();
        self.traffic = deployments.iter().map(|d| (d.name.clone(), 0)).collect();
        for (n, w) in traffic {
            self.traffic.insert((*n).into(), *w);
        }
        self.deployments = deployments;
        self
    }
}

//! The TOML file as written: serde structs that mirror it key for key.
//!
//! Every struct denies unknown fields, so a typo is an error rather than a silently ignored
//! setting. Values stay strings here (durations, sizes, CIDRs, URLs); `config::validate` turns them
//! into checked types and reports each problem with its key.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub tokens: RawTokens,
    #[serde(default)]
    pub service: Vec<RawService>,
}

/// A key that takes one value or a list of them (`address = "..."` or `address = ["...", "..."]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub address: Option<OneOrMany>,
    pub public_url: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub proxy_protocol: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    #[serde(default)]
    pub strict: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cname: String,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub dir: Option<String>,
    pub store: Option<String>,
    pub redis: Option<RawRedis>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: Option<String>,
    pub url_file: Option<String>,
    pub prefix: Option<String>,
    pub secret_key_file: Option<String>,
    pub previous_secret_key_file: Option<String>,
    #[serde(default)]
    pub allow_plaintext_secrets: bool,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub timeout: Option<String>,
    pub resync: Option<String>,
    pub max_staleness: Option<String>,
    pub rate_limit_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub drain_timeout: Option<String>,
    pub watch: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub header_read_timeout: Option<String>,
    pub max_header_size: Option<String>,
    pub max_headers: Option<usize>,
    pub idle_timeout: Option<String>,
    pub tls_handshake_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub h2_max_concurrent_streams: Option<u32>,
    pub max_in_flight: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub body_idle_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub access: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    pub algorithm: Option<String>,
    pub lifetime: Option<String>,
    pub refresh_after: Option<String>,
    pub leeway: Option<String>,
    #[serde(default)]
    pub trusted_issuers: Vec<RawTrustedIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrustedIssuer {
    pub issuer: String,
    pub audience: String,
    pub algorithm: String,
    pub jwks: String,
    #[serde(default)]
    pub allow_insecure_jwks: bool,
    pub max_token_lifetime: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    pub auth: Option<String>,
    #[serde(default)]
    pub backends: Vec<String>,
    pub backend_protocol: Option<String>,
    pub score_path: Option<String>,
    pub scoring_timeout: Option<String>,
    pub max_body: Option<String>,
    pub max_concurrent_requests_per_backend: Option<usize>,
    pub max_request_wait_time: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    pub trusted_issuers: Option<Vec<String>>,
    pub primary_key: Option<String>,
    pub secondary_key: Option<String>,
    pub health: Option<RawHealth>,
    #[serde(default)]
    pub rate_limit: Vec<RawRateLimit>,
    /// `traffic = { blue = 90, green = 10 }` (contract §8; checked in `config::deployment`).
    pub traffic: Option<std::collections::BTreeMap<String, toml::Value>>,
    pub mirror_traffic: Option<std::collections::BTreeMap<String, toml::Value>>,
    pub mirror_max_body: Option<String>,
    pub mirror_tolerance: Option<f64>,
    pub mirror_max_in_flight: Option<usize>,
    pub mirror_queue: Option<usize>,
    pub mirror_headers: Option<Vec<String>>,
    #[serde(default)]
    pub deployment: Vec<RawDeployment>,
}

/// `[[service.deployment]]` (contract §8): a deployment's backends and the backend settings it
/// sets over the service's, key by key. The service-only keys are listed so that setting one
/// here is reported as such rather than as an unknown key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    pub name: String,
    #[serde(default)]
    pub backends: Vec<String>,
    pub backend_protocol: Option<String>,
    pub score_path: Option<String>,
    pub scoring_timeout: Option<String>,
    pub max_concurrent_requests_per_backend: Option<usize>,
    pub max_request_wait_time: Option<String>,
    pub health: Option<RawHealth>,
    pub pinnable: Option<bool>,
    pub max_body: Option<toml::Value>,
    pub allow: Option<toml::Value>,
    pub deny: Option<toml::Value>,
    pub auth: Option<toml::Value>,
    pub primary_key: Option<toml::Value>,
    pub secondary_key: Option<toml::Value>,
    pub trusted_issuers: Option<toml::Value>,
    pub rate_limit: Option<toml::Value>,
    pub traffic: Option<toml::Value>,
    pub mirror_traffic: Option<toml::Value>,
    pub mirror_max_body: Option<toml::Value>,
    pub mirror_tolerance: Option<toml::Value>,
    pub mirror_max_in_flight: Option<toml::Value>,
    pub mirror_queue: Option<toml::Value>,
    pub mirror_headers: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<String>,
    pub period: Option<String>,
    pub timeout: Option<String>,
    pub failure_threshold: Option<u32>,
    pub success_threshold: Option<u32>,
    pub initial_delay: Option<String>,
}

/// `[[service.rate_limit]]` (contract §7; checked in `config::rate_limit`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub requests: Option<i64>,
    pub per: Option<String>,
    pub by: Option<String>,
    pub burst: Option<i64>,
    pub name: Option<String>,
}

//! The checked, typed config: what the gateway runs on. Built from the TOML by `validate`;
//! compared field by field (`PartialEq`) by reload to tell what changed; serialized for
//! `GET /v1/config` (`view`). Key material is held in `Secret`, so `Debug` never prints it, and
//! `Secret` has no `Serialize`: each secret field names `view::redacted`, so the JSON view
//! cannot show one.
//!
//! A service's typed config is in `service`; the process-wide sections here.

mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use super::defaults::*;
use super::view;
use crate::crypto::Secret;
pub use service::*;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The file this came from (absolute), or a label for configs built in code (demo, tests).
    pub source: PathBuf,
    /// The config file to reload from; `None` for configs built in code.
    pub file: Option<PathBuf>,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub admin: AdminConfig,
    pub state_dir: PathBuf,
    /// Where the shared state lives (`[state] store`).
    pub store: StoreConfig,
    pub worker_threads: usize,
    pub server: ServerSettings,
    pub limits: Limits,
    pub log: LogConfig,
    pub tokens: TokensConfig,
    pub services: Vec<ServiceConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenConfig {
    pub addresses: Vec<SocketAddr>,
    pub public_url: Option<String>,
    #[serde(serialize_with = "view::display_list")]
    pub allow: Vec<IpNet>,
    #[serde(serialize_with = "view::display_list")]
    pub deny: Vec<IpNet>,
    #[serde(serialize_with = "view::display_list")]
    pub trusted_proxies: Vec<IpNet>,
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TlsConfig {
    pub certificates: Vec<CertificateConfig>,
    pub strict: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertificateConfig {
    pub cname: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminConfig {
    pub address: SocketAddr,
    pub token_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerSettings {
    #[serde(serialize_with = "view::duration")]
    pub drain_timeout: Duration,
    pub watch: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    #[serde(serialize_with = "view::duration")]
    pub header_read_timeout: Duration,
    pub max_header_size: usize,
    pub max_headers: usize,
    #[serde(serialize_with = "view::duration")]
    pub idle_timeout: Duration,
    #[serde(serialize_with = "view::duration")]
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
    pub max_in_flight: usize,
    pub max_connections_per_client: usize,
    #[serde(serialize_with = "view::duration")]
    pub body_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_size: DEFAULT_MAX_HEADER_SIZE as usize,
            max_headers: DEFAULT_MAX_HEADERS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_STREAMS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogConfig {
    pub format: LogFormat,
    pub access: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TokenAlgorithm {
    ES256,
    RS256,
    HS256,
}

impl TokenAlgorithm {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ES256" => Some(Self::ES256),
            "RS256" => Some(Self::RS256),
            "HS256" => Some(Self::HS256),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
            Self::HS256 => "HS256",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokensConfig {
    pub algorithm: TokenAlgorithm,
    #[serde(serialize_with = "view::duration")]
    pub lifetime: Duration,
    #[serde(serialize_with = "view::duration")]
    pub refresh_after: Duration,
    #[serde(serialize_with = "view::duration")]
    pub leeway: Duration,
    pub trusted_issuers: Vec<TrustedIssuerConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrustedIssuerConfig {
    pub issuer: String,
    pub audience: String,
    pub algorithm: jsonwebtoken::Algorithm,
    pub jwks: JwksSource,
    /// Tokens whose `exp` lies further ahead than this (from now, or from their `iat`) are
    /// refused, so that a token minted for year 9999 is not accepted (and cached) forever.
    #[serde(serialize_with = "view::duration")]
    pub max_token_lifetime: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JwksSource {
    File(PathBuf),
    Url(#[serde(serialize_with = "view::without_credentials")] String),
}

impl Config {
    /// A config with every default and no services, for configs built in code (demo, tests).
    pub fn new_in_code(
        label: &str,
        listen: SocketAddr,
        certificates: Vec<CertificateConfig>,
        state_dir: PathBuf,
    ) -> Self {
        Config {
            source: PathBuf::from(label),
            file: None,
            listen: ListenConfig {
                addresses: vec![listen],
                public_url: None,
                allow: vec![],
                deny: vec![],
                trusted_proxies: vec![],
                proxy_protocol: false,
            },
            tls: TlsConfig {
                certificates,
                strict: false,
            },
            admin: AdminConfig {
                address: "127.0.0.1:0".parse().unwrap(),
                token_file: state_dir.join("admin-token"),
            },
            state_dir,
            store: StoreConfig::File,
            worker_threads: 0,
            server: ServerSettings {
                drain_timeout: DEFAULT_DRAIN_TIMEOUT,
                watch: false,
            },
            limits: Limits::default(),
            log: LogConfig {
                format: LogFormat::Text,
                access: true,
            },
            tokens: TokensConfig {
                algorithm: TokenAlgorithm::ES256,
                lifetime: DEFAULT_TOKEN_LIFETIME,
                refresh_after: default_refresh_after(DEFAULT_TOKEN_LIFETIME),
                leeway: DEFAULT_TOKEN_LEEWAY,
                trusted_issuers: vec![],
            },
            services: vec![],
        }
    }
}

/// `[state] store`: the file store in `state.dir` (one process), or Redis (a fleet).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "store", rename_all = "lowercase")]
pub enum StoreConfig {
    File,
    Redis(Box<RedisConfig>),
}

/// `[state.redis]` (contract §6).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RedisConfig {
    /// The whole URL, credentials included (never printed).
    #[serde(serialize_with = "view::redacted")]
    pub url: Secret,
    /// The URL without credentials, for logs, `check` and the cache's `source`.
    pub display_url: String,
    pub prefix: String,
    /// The 32-byte sealing key (raw or base64), from `secret_key_file`.
    #[serde(serialize_with = "view::redacted_option")]
    pub secret_key: Option<Secret>,
    #[serde(serialize_with = "view::redacted_option")]
    pub previous_secret_key: Option<Secret>,
    pub allow_plaintext_secrets: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    #[serde(serialize_with = "view::duration")]
    pub timeout: Duration,
    #[serde(serialize_with = "view::duration")]
    pub resync: Duration,
    #[serde(serialize_with = "view::duration")]
    pub max_staleness: Duration,
    #[serde(serialize_with = "view::duration")]
    pub rate_limit_timeout: Duration,
}

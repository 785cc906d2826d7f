//! Configuration: the TOML file (`raw`) turned into checked, typed values (`Config`).
//!
//! Loading never half-succeeds: `Config::load` either returns a complete, validated config or an
//! error listing every problem found, each naming the file, the key and what is wrong. Each default
//! below is a named constant with the reason for its value.

pub mod raw;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::route::valid_service_name;
use raw::*;

/// Default path of the config file, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/scoregate.toml";
/// Public HTTPS port of the examples; any unprivileged port works.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
/// The admin API is for operators on the host: loopback only unless told otherwise.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
/// Relative to the config file, like every path in it.
pub const DEFAULT_ADMIN_TOKEN_FILE: &str = "admin-token";
/// Next to the config folder (not inside it), so a read-only config mount keeps working.
pub const DEFAULT_STATE_DIR: &str = "../state";
/// 0 = one tokio worker per core (tokio's own default).
pub const DEFAULT_WORKER_THREADS: usize = 0;
/// 0 = no per-backend cap, as Azure ML's own front end without `replica_max_concurrent_requests`;
/// set it to the number of requests a model replica can score at once (azmlinfsrv: its workers).
pub const DEFAULT_MAX_CONCURRENT_PER_BACKEND: usize = 0;
/// Probe from the start: azmlinfsrv answers `GET /` as soon as it listens.
pub const DEFAULT_HEALTH_INITIAL_DELAY: Duration = Duration::ZERO;
/// Azure ML's default scoring timeout.
pub const DEFAULT_SCORING_TIMEOUT: Duration = Duration::from_secs(60);
/// Azure ML's request body limit.
pub const DEFAULT_MAX_BODY: u64 = 100 * 1024 * 1024;
/// Azure ML's default queue wait before it answers 503.
pub const DEFAULT_MAX_REQUEST_WAIT: Duration = Duration::from_millis(500);
/// azmlinfsrv's scoring route.
pub const DEFAULT_SCORE_PATH: &str = "/score";
/// Long enough for a slow client on a mobile link, short enough that slowloris cannot pin sockets.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// nginx's large_client_header_buffers is 4×8 KiB; 16 KiB fits any sane header block incl. JWTs.
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 16 * 1024;
/// Browsers send ~15 headers; 100 matches hyper's own default and leaves room for proxies' extras.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Idle keep-alive connections cost memory (~24 KiB each, BENCHMARKS.md); clients reconnect cheaply with resumption.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A full TLS handshake takes a few RTTs; 10 s covers bad mobile links and stops half-open floods.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounded by file descriptors (ulimit) and ~24 KiB per idle connection: 10k ≈ 240 MiB.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Enough parallel scoring calls per client connection; h2's own default (unbounded) invites abuse.
pub const DEFAULT_H2_MAX_STREAMS: u32 = 128;
/// Requests in flight across all services, beyond which new ones get 503 at once (0: no cap).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// In-flight requests get this long to finish on SIGTERM (Kubernetes' default grace is 30 s).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(25);
/// Token defaults: short-lived tokens, refreshed well before expiry (Azure ML: 1 h lifetime).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
pub const DEFAULT_TOKEN_REFRESH_AFTER: Duration = Duration::from_secs(45 * 60);
/// Clock skew tolerated on `exp`/`nbf`; jsonwebtoken's 60 s is more than NTP-synced hosts need.
pub const DEFAULT_TOKEN_LEEWAY: Duration = Duration::from_secs(30);
/// Health-check defaults follow Azure ML's liveness probe settings.
pub const DEFAULT_HEALTH_PATH: &str = "/";
pub const DEFAULT_HEALTH_PERIOD: Duration = Duration::from_secs(10);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_FAILURES: u32 = 3;
pub const DEFAULT_HEALTH_SUCCESSES: u32 = 1;

/// Everything wrong with a config file, one line per problem.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.len() == 1 {
            write!(f, "{}: {}", self.file.display(), self.problems[0])
        } else {
            write!(
                f,
                "{}: {} problems:",
                self.file.display(),
                self.problems.len()
            )?;
            for p in &self.problems {
                write!(f, "\n  - {p}")?;
            }
            Ok(())
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from (absolute), or a label for configs built in code (demo, tests).
    pub source: PathBuf,
    /// The config file to reload from; `None` for configs built in code.
    pub file: Option<PathBuf>,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub admin: AdminConfig,
    pub state_dir: PathBuf,
    pub worker_threads: usize,
    pub server: ServerSettings,
    pub limits: Limits,
    pub log: LogConfig,
    pub tokens: TokensConfig,
    pub services: Vec<ServiceConfig>,
}

#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub addresses: Vec<SocketAddr>,
    pub public_url: Option<String>,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub certificates: Vec<CertificateConfig>,
    pub strict: bool,
}

#[derive(Debug, Clone)]
pub struct CertificateConfig {
    pub cname: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: SocketAddr,
    pub token_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub drain_timeout: Duration,
    pub watch: bool,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_size: usize,
    pub max_headers: usize,
    pub idle_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
    pub max_in_flight: usize,
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
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub access: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAlgorithm {
    ES256,
    RS256,
    HS256,
}

impl TokenAlgorithm {
    fn parse(s: &str) -> Option<Self> {
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

#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub algorithm: TokenAlgorithm,
    pub lifetime: Duration,
    pub refresh_after: Duration,
    pub leeway: Duration,
    pub trusted_issuers: Vec<TrustedIssuerConfig>,
}

#[derive(Debug, Clone)]
pub struct TrustedIssuerConfig {
    pub issuer: String,
    pub audience: String,
    pub algorithm: jsonwebtoken::Algorithm,
    pub jwks: JwksSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendProtocol {
    Http1,
    H2c,
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub auth: AuthMode,
    pub backends: Vec<http::Uri>,
    pub backend_protocol: BackendProtocol,
    pub score_path: String,
    pub scoring_timeout: Duration,
    pub max_body: u64,
    pub max_concurrent_requests_per_backend: usize,
    pub max_request_wait_time: Duration,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub trusted_issuers: Option<Vec<String>>,
    pub primary_key: Option<String>,
    pub secondary_key: Option<String>,
    pub health: HealthConfig,
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub path: String,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
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
        }
    }
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
                refresh_after: DEFAULT_TOKEN_REFRESH_AFTER,
                leeway: DEFAULT_TOKEN_LEEWAY,
                trusted_issuers: vec![],
            },
            services: vec![],
        }
    }

    /// Reads and validates a config file. Certificates are checked separately (`tls::load`).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let err = |p: String| ConfigError {
            file: abs.clone(),
            problems: vec![p],
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Self::parse(&text, &abs)
    }

    /// Validates config text as if read from `file` (relative paths resolve against its folder).
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            problems: vec![e.to_string().trim_end().to_string()],
        })?;
        let base = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut v = Validator {
            base,
            problems: vec![],
        };
        let config = v.config(raw, file);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                file: file.to_path_buf(),
                problems: v.problems,
            })
        }
    }

    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Collects problems while building the typed config, so one run reports all of them.
struct Validator {
    base: PathBuf,
    problems: Vec<String>,
}

impl Validator {
    fn problem(&mut self, key: &str, what: impl fmt::Display) {
        self.problems.push(format!("{key}: {what}"));
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn duration(&mut self, key: &str, v: Option<&str>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) => d,
                Err(e) => {
                    self.problem(
                        key,
                        format!("{s:?} is not a duration like \"500ms\", \"30s\" or \"1h\" ({e})"),
                    );
                    default
                }
            },
        }
    }

    fn size(&mut self, key: &str, v: Option<&str>, default: u64) -> u64 {
        match v {
            None => default,
            Some(s) => match s.parse::<bytesize::ByteSize>() {
                Ok(b) => b.as_u64(),
                Err(e) => {
                    self.problem(
                        key,
                        format!("{s:?} is not a size like \"64KiB\" or \"5MiB\" ({e})"),
                    );
                    default
                }
            },
        }
    }

    fn addr(&mut self, key: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    key,
                    format!("{s:?} is not an address like \"127.0.0.1:8443\" or \"[::1]:8443\""),
                );
                None
            }
        }
    }

    fn cidrs(&mut self, key: &str, v: &[String]) -> Vec<IpNet> {
        let mut out = Vec::with_capacity(v.len());
        for (i, s) in v.iter().enumerate() {
            // A bare address means that one host.
            let parsed = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(n) => out.push(n.trunc()),
                Err(_) => self.problem(
                    &format!("{key}[{i}]"),
                    format!("{s:?} is not a CIDR like \"10.0.0.0/8\""),
                ),
            }
        }
        out
    }

    fn config(&mut self, raw: RawConfig, file: &Path) -> Config {
        let listen = self.listen(raw.listen);
        let tls = self.tls(raw.tls);
        let admin = AdminConfig {
            address: self
                .addr(
                    "admin.address",
                    raw.admin.address.as_deref().unwrap_or(DEFAULT_ADMIN),
                )
                .unwrap_or_else(|| DEFAULT_ADMIN.parse().unwrap()),
            token_file: self.path(
                raw.admin
                    .token_file
                    .as_deref()
                    .unwrap_or(DEFAULT_ADMIN_TOKEN_FILE),
            ),
        };
        let state_dir = self.path(raw.state.dir.as_deref().unwrap_or(DEFAULT_STATE_DIR));
        let server = ServerSettings {
            drain_timeout: self.duration(
                "server.drain_timeout",
                raw.server.drain_timeout.as_deref(),
                DEFAULT_DRAIN_TIMEOUT,
            ),
            watch: raw.server.watch.unwrap_or(false),
        };
        let limits = self.limits(raw.limits);
        let log = LogConfig {
            format: match raw.log.format.as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    self.problem(
                        "log.format",
                        format!("{other:?} is not one of \"text\", \"json\""),
                    );
                    LogFormat::Text
                }
            },
            access: raw.log.access.unwrap_or(true),
        };
        let tokens = self.tokens(raw.tokens);
        let mut services: Vec<ServiceConfig> = Vec::with_capacity(raw.service.len());
        for (i, s) in raw.service.into_iter().enumerate() {
            let key = format!("service[{i}]");
            if services.iter().any(|o| o.name == s.name) {
                self.problem(
                    &format!("{key}.name"),
                    format!("{:?} is defined twice", s.name),
                );
            }
            services.push(self.service(&key, s, &tokens));
        }
        Config {
            source: file.to_path_buf(),
            file: Some(file.to_path_buf()),
            listen,
            tls,
            admin,
            state_dir,
            worker_threads: raw.runtime.worker_threads.unwrap_or(DEFAULT_WORKER_THREADS),
            server,
            limits,
            log,
            tokens,
            services,
        }
    }

    fn listen(&mut self, raw: RawListen) -> ListenConfig {
        let addrs = raw
            .address
            .map(OneOrMany::into_vec)
            .unwrap_or_else(|| vec![DEFAULT_LISTEN.into()]);
        if addrs.is_empty() {
            self.problem("listen.address", "needs at least one address");
        }
        let addresses = addrs
            .iter()
            .enumerate()
            .filter_map(|(i, a)| self.addr(&format!("listen.address[{i}]"), a))
            .collect();
        if let Some(u) = &raw.public_url {
            match u.parse::<http::Uri>() {
                Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
                _ => self.problem("listen.public_url", format!("{u:?} is not an https:// URL")),
            }
        }
        let proxy_protocol = match raw.proxy_protocol.as_deref() {
            None | Some("off") => false,
            Some("v2") => true,
            Some(other) => {
                self.problem(
                    "listen.proxy_protocol",
                    format!("{other:?} is not one of \"off\", \"v2\""),
                );
                false
            }
        };
        let trusted_proxies = self.cidrs("listen.trusted_proxies", &raw.trusted_proxies);
        if proxy_protocol && trusted_proxies.is_empty() {
            self.problem(
                "listen.proxy_protocol",
                "\"v2\" needs listen.trusted_proxies: PROXY headers are believed only from them",
            );
        }
        ListenConfig {
            addresses,
            public_url: raw.public_url.map(|u| u.trim_end_matches('/').to_string()),
            allow: self.cidrs("listen.allow", &raw.allow),
            deny: self.cidrs("listen.deny", &raw.deny),
            trusted_proxies,
            proxy_protocol,
        }
    }

    fn tls(&mut self, raw: RawTls) -> TlsConfig {
        if raw.certificates.is_empty() {
            self.problem(
                "tls.certificates",
                "at least one [[tls.certificates]] entry is needed",
            );
        }
        let certificates = raw
            .certificates
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let cname = c.cname.trim().to_ascii_lowercase();
                if cname.is_empty() {
                    self.problem(&format!("tls.certificates[{i}].cname"), "must not be empty");
                }
                CertificateConfig {
                    cname,
                    cert: self.path(&c.cert),
                    key: self.path(&c.key),
                }
            })
            .collect();
        TlsConfig {
            certificates,
            strict: raw.strict,
        }
    }

    fn limits(&mut self, raw: RawLimits) -> Limits {
        let d = Limits::default();
        let max_header_size = self.size(
            "limits.max_header_size",
            raw.max_header_size.as_deref(),
            d.max_header_size as u64,
        ) as usize;
        // A header block under 1 KiB would refuse ordinary requests (the read buffer itself is
        // never under hyper's 8 KiB minimum, see `server`).
        if max_header_size < 1024 {
            self.problem("limits.max_header_size", "must be at least 1KiB");
        }
        let limits = Limits {
            header_read_timeout: self.duration(
                "limits.header_read_timeout",
                raw.header_read_timeout.as_deref(),
                d.header_read_timeout,
            ),
            max_header_size,
            max_headers: raw.max_headers.unwrap_or(d.max_headers),
            idle_timeout: self.duration(
                "limits.idle_timeout",
                raw.idle_timeout.as_deref(),
                d.idle_timeout,
            ),
            tls_handshake_timeout: self.duration(
                "limits.tls_handshake_timeout",
                raw.tls_handshake_timeout.as_deref(),
                d.tls_handshake_timeout,
            ),
            max_connections: raw.max_connections.unwrap_or(d.max_connections),
            h2_max_concurrent_streams: raw
                .h2_max_concurrent_streams
                .unwrap_or(d.h2_max_concurrent_streams),
            max_in_flight: raw.max_in_flight.unwrap_or(d.max_in_flight),
        };
        if limits.max_headers == 0 {
            self.problem("limits.max_headers", "must be at least 1");
        }
        if limits.max_connections == 0 {
            self.problem("limits.max_connections", "must be at least 1");
        }
        if limits.h2_max_concurrent_streams == 0 {
            self.problem("limits.h2_max_concurrent_streams", "must be at least 1");
        }
        for (k, v) in [
            ("limits.header_read_timeout", limits.header_read_timeout),
            ("limits.idle_timeout", limits.idle_timeout),
            ("limits.tls_handshake_timeout", limits.tls_handshake_timeout),
        ] {
            if v.is_zero() {
                self.problem(k, "must be more than 0s");
            }
        }
        limits
    }

    fn tokens(&mut self, raw: RawTokens) -> TokensConfig {
        let algorithm = match raw.algorithm.as_deref() {
            None => TokenAlgorithm::ES256,
            Some(s) => TokenAlgorithm::parse(s).unwrap_or_else(|| {
                self.problem(
                    "tokens.algorithm",
                    format!("{s:?} is not one of \"ES256\", \"RS256\", \"HS256\""),
                );
                TokenAlgorithm::ES256
            }),
        };
        let lifetime = self.duration(
            "tokens.lifetime",
            raw.lifetime.as_deref(),
            DEFAULT_TOKEN_LIFETIME,
        );
        let refresh_after = self.duration(
            "tokens.refresh_after",
            raw.refresh_after.as_deref(),
            // Without an explicit value, refresh at three quarters of the lifetime.
            lifetime * 3 / 4,
        );
        if lifetime.is_zero() {
            self.problem("tokens.lifetime", "must be more than 0s");
        }
        if refresh_after > lifetime {
            self.problem(
                "tokens.refresh_after",
                "must not be later than tokens.lifetime",
            );
        }
        let leeway = self.duration("tokens.leeway", raw.leeway.as_deref(), DEFAULT_TOKEN_LEEWAY);
        let mut trusted_issuers: Vec<TrustedIssuerConfig> = Vec::new();
        for (i, t) in raw.trusted_issuers.into_iter().enumerate() {
            let key = format!("tokens.trusted_issuers[{i}]");
            if t.issuer.is_empty() {
                self.problem(&format!("{key}.issuer"), "must not be empty");
            }
            if trusted_issuers.iter().any(|o| o.issuer == t.issuer) {
                self.problem(
                    &format!("{key}.issuer"),
                    format!("{:?} is listed twice", t.issuer),
                );
            }
            if t.audience.is_empty() {
                self.problem(&format!("{key}.audience"), "must not be empty");
            }
            use jsonwebtoken::Algorithm as A;
            let algorithm = match t.algorithm.as_str() {
                "RS256" => A::RS256,
                "RS384" => A::RS384,
                "RS512" => A::RS512,
                "PS256" => A::PS256,
                "ES256" => A::ES256,
                "ES384" => A::ES384,
                "EdDSA" => A::EdDSA,
                other => {
                    self.problem(
                        &format!("{key}.algorithm"),
                        format!("{other:?} is not an asymmetric JWS algorithm (RS256, RS384, RS512, PS256, ES256, ES384, EdDSA)"),
                    );
                    A::RS256
                }
            };
            let jwks = if t.jwks.starts_with("https://") || t.jwks.starts_with("http://") {
                JwksSource::Url(t.jwks)
            } else {
                JwksSource::File(self.path(&t.jwks))
            };
            trusted_issuers.push(TrustedIssuerConfig {
                issuer: t.issuer,
                audience: t.audience,
                algorithm,
                jwks,
            });
        }
        TokensConfig {
            algorithm,
            lifetime,
            refresh_after,
            leeway,
            trusted_issuers,
        }
    }

    fn service(&mut self, key: &str, raw: RawService, tokens: &TokensConfig) -> ServiceConfig {
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
                && let Err(why) = crate::auth::keys::validate_key_value(v)
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
        if raw.backends.is_empty() {
            self.problem(&format!("{key}.backends"), "needs at least one backend URL");
        }
        let mut backends = Vec::with_capacity(raw.backends.len());
        for (i, b) in raw.backends.iter().enumerate() {
            match parse_backend(b) {
                Ok(u) => backends.push(u),
                Err(why) => self.problem(&format!("{key}.backends[{i}]"), why),
            }
        }
        let backend_protocol = match raw.backend_protocol.as_deref() {
            None | Some("http1") => BackendProtocol::Http1,
            Some("h2c") => BackendProtocol::H2c,
            Some(other) => {
                self.problem(
                    &format!("{key}.backend_protocol"),
                    format!("{other:?} is not one of \"http1\", \"h2c\""),
                );
                BackendProtocol::Http1
            }
        };
        let score_path = raw.score_path.unwrap_or_else(|| DEFAULT_SCORE_PATH.into());
        if !score_path.starts_with('/') || score_path.contains(['?', '#', ' ']) {
            self.problem(
                &format!("{key}.score_path"),
                format!("{score_path:?} must be a path starting with / (no query)"),
            );
        }
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
        if !health.path.starts_with('/') {
            self.problem(&format!("{key}.health.path"), "must start with /");
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
        ServiceConfig {
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
            primary_key: raw.primary_key,
            secondary_key: raw.secondary_key,
            health,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls_with_user_info_are_refused() {
        let e = parse_backend("http://user:secret@10.0.0.5:5001").unwrap_err();
        assert!(e.contains("user info"), "{e}");
        assert!(parse_backend("http://10.0.0.5:5001").is_ok());
    }

    const MINIMAL: &str = r#"
[[tls.certificates]]
cname = "scoring.example.com"
cert = "certs/fullchain.pem"
key = "certs/key.pem"

[[service]]
name = "iris"
backends = ["http://127.0.0.1:5001"]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/scoregate/scoregate.toml"))
    }

    fn problems(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(
            c.listen.addresses,
            vec!["0.0.0.0:8443".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            c.admin.address,
            "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            c.tls.certificates[0].cert,
            Path::new("/etc/scoregate/certs/fullchain.pem")
        );
        assert_eq!(c.state_dir, Path::new("/etc/scoregate/../state"));
        let s = &c.services[0];
        assert_eq!(s.auth, AuthMode::Key);
        assert_eq!(s.score_path, "/score");
        assert_eq!(s.scoring_timeout, Duration::from_secs(60));
        assert_eq!(s.max_body, 100 * 1024 * 1024);
        assert_eq!(s.max_request_wait_time, Duration::from_millis(500));
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let e = problems(&format!("{MINIMAL}\n[limits]\nmax_conections = 5\n"));
        assert!(e.contains("max_conections"), "{e}");
        assert!(e.contains("/etc/scoregate/scoregate.toml"), "{e}");
        let e = problems(&MINIMAL.replace("name = \"iris\"", "name = \"iris\"\nbackend = \"x\""));
        assert!(e.contains("unknown field") && e.contains("backend"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_reason() {
        let cases = [
            ("name = \"iris\"", "name = \"Iris\"", "service[0].name"),
            ("name = \"iris\"", "name = \"ab\"", "service[0].name"),
            ("name = \"iris\"", "name = \"iris-\"", "service[0].name"),
            (
                "name = \"iris\"",
                "name = \"iris\"\nauth = \"both\"",
                "service[0].auth",
            ),
            (
                "name = \"iris\"",
                "name = \"iris\"\nscoring_timeout = \"soon\"",
                "service[0].scoring_timeout",
            ),
            (
                "name = \"iris\"",
                "name = \"iris\"\nmax_body = \"lots\"",
                "service[0].max_body",
            ),
            (
                "name = \"iris\"",
                "name = \"iris\"\nallow = [\"10.0.0.0/33\"]",
                "service[0].allow[0]",
            ),
            (
                "name = \"iris\"",
                "name = \"iris\"\nprimary_key = \"short\"",
                "service[0].primary_key",
            ),
            (
                "name = \"iris\"",
                "name = \"iris\"\nauth = \"token\"\nprimary_key = \"0123456789012345678901234567890123\"",
                "service[0].primary_key",
            ),
            (
                "\"http://127.0.0.1:5001\"",
                "\"ftp://x\"",
                "service[0].backends[0]",
            ),
            (
                "\"http://127.0.0.1:5001\"",
                "\"http://x:1/score\"",
                "service[0].backends[0]",
            ),
        ];
        for (from, to, key) in cases {
            let e = problems(&MINIMAL.replace(from, to));
            assert!(e.contains(key), "expected {key} in: {e}");
        }
    }

    #[test]
    fn duplicate_services_and_missing_certs_are_errors() {
        let text = format!(
            "{MINIMAL}\n[[service]]\nname = \"iris\"\nbackends = [\"http://127.0.0.1:5002\"]\n"
        );
        assert!(problems(&text).contains("defined twice"));
        let no_certs = MINIMAL.replace("[[tls.certificates]]", "[tlsx]");
        assert!(parse(&no_certs).is_err());
    }

    #[test]
    fn listen_takes_one_address_or_a_list() {
        let text = format!("[listen]\naddress = [\"127.0.0.1:1\", \"[::1]:2\"]\n{MINIMAL}");
        assert_eq!(parse(&text).unwrap().listen.addresses.len(), 2);
        let text = format!("[listen]\naddress = \"localhost:1\"\n{MINIMAL}");
        assert!(problems(&text).contains("listen.address[0]"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = MINIMAL.replace(
            "name = \"iris\"",
            "name = \"I\"\nscoring_timeout = \"x\"\nmax_body = \"y\"",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.problems.len(), 3, "{e}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scoregate.toml");
        Config::load(&path).unwrap();
    }
}

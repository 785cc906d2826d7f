//! From the raw TOML structs to the typed config: every value parsed and checked, every problem
//! collected (one run reports all of them), each naming its key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::defaults::*;
use super::raw::*;
use super::types::*;

/// Contract: a key (preset or `keyValue`) is 32 to 128 characters of `A-Z a-z 0-9 - _`.
pub const MIN_KEY_LEN: usize = 32;
pub const MAX_KEY_LEN: usize = 128;

/// Checks a preset or `keyValue` against the contract's length and alphabet.
pub fn validate_key_value(v: &str) -> Result<(), String> {
    if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&v.len()) {
        return Err(format!(
            "a key must be {MIN_KEY_LEN} to {MAX_KEY_LEN} characters long (this one has {})",
            v.len()
        ));
    }
    if !v
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err("a key may only contain A-Z a-z 0-9 - _".into());
    }
    Ok(())
}

/// Collects problems while building the typed config, so one run reports all of them.
pub(super) struct Validator {
    pub(super) base: PathBuf,
    pub(super) problems: Vec<String>,
}

impl Validator {
    pub(super) fn problem(&mut self, key: &str, what: impl fmt::Display) {
        self.problems.push(format!("{key}: {what}"));
    }

    pub(super) fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    pub(super) fn duration(&mut self, key: &str, v: Option<&str>, default: Duration) -> Duration {
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

    pub(super) fn size(&mut self, key: &str, v: Option<&str>, default: u64) -> u64 {
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

    pub(super) fn addr(&mut self, key: &str, s: &str) -> Option<SocketAddr> {
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

    pub(super) fn cidrs(&mut self, key: &str, v: &[String]) -> Vec<IpNet> {
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

    pub(super) fn config(&mut self, raw: RawConfig, file: &Path) -> Config {
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
        let store = self.store(&raw.state);
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
            store,
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
            max_connections_per_client: raw
                .max_connections_per_client
                .unwrap_or(d.max_connections_per_client),
            body_idle_timeout: self.duration(
                "limits.body_idle_timeout",
                raw.body_idle_timeout.as_deref(),
                d.body_idle_timeout,
            ),
        };
        if limits.max_header_size as u64 > MAX_HEADER_SIZE_LIMIT {
            self.problem(
                "limits.max_header_size",
                format!(
                    "must be at most {}",
                    bytesize::ByteSize(MAX_HEADER_SIZE_LIMIT)
                ),
            );
        }
        if limits.max_connections_per_client == 0 {
            self.problem("limits.max_connections_per_client", "must be at least 1");
        }
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
            ("limits.body_idle_timeout", limits.body_idle_timeout),
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
            default_refresh_after(lifetime),
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
            let jwks = if t.jwks.starts_with("https://") {
                JwksSource::Url(t.jwks)
            } else if t.jwks.starts_with("http://") {
                if !t.allow_insecure_jwks {
                    self.problem(
                        &format!("{key}.jwks"),
                        "an http:// JWKS URL lets anyone on the network path supply signing keys; use https://, or set allow_insecure_jwks = true on a network you trust",
                    );
                }
                JwksSource::Url(t.jwks)
            } else {
                JwksSource::File(self.path(&t.jwks))
            };
            let max_token_lifetime = self.duration(
                &format!("{key}.max_token_lifetime"),
                t.max_token_lifetime.as_deref(),
                DEFAULT_MAX_TOKEN_LIFETIME,
            );
            if max_token_lifetime.is_zero() {
                self.problem(&format!("{key}.max_token_lifetime"), "must be more than 0s");
            }
            trusted_issuers.push(TrustedIssuerConfig {
                issuer: t.issuer,
                audience: t.audience,
                algorithm,
                jwks,
                max_token_lifetime,
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
}

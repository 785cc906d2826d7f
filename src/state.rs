//! Shared state: the immutable `Snapshot` the hot path reads, and the long-lived `Gateway` that
//! owns it, swaps it on reload, and holds what outlives snapshots (certificate resolver, key
//! store, backend runtime state and connection pools, metrics).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::auth::ServiceAuth;
use crate::auth::keys::{KeyStore, SharedKeys};
use crate::auth::tokens::{ServiceTokens, Signer, TrustedIssuer};
use crate::config::{AuthMode, Config, JwksSource, ServiceConfig};
use crate::metrics::{Metrics, ServiceMetrics};
use crate::proxy::upstream::{Backend, Upstream};
use crate::tls::{CertStore, SniResolver};

/// Client address rules: deny wins over allow; an empty allow list admits everyone.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, from dual-stack sockets) count as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// One configured service, ready for the hot path.
pub struct Service {
    pub config: ServiceConfig,
    pub auth: ServiceAuth,
    pub policy: AddressPolicy,
    pub upstream: Upstream,
    pub metrics: ServiceMetrics,
}

/// Everything a request needs, immutable once built. A reload builds a new one and swaps it in.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub services: HashMap<String, Arc<Service>>,
    pub listener_policy: AddressPolicy,
    /// Trusted token issuers in force (reused by the next reload when unchanged, so a JWKS URL
    /// keeps its keys and background refresh).
    pub issuers: Vec<Arc<TrustedIssuer>>,
    pub trusted_proxies: Vec<IpNet>,
}

impl Snapshot {
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// Why the gateway could not start (or a reload could not be applied).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    State(String),
}

/// The process-wide gateway.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    pub certs: Arc<SniResolver>,
    pub tls_config: Arc<rustls::ServerConfig>,
    pub keystore: KeyStore,
    /// Signing keys of the tokens this gateway issues.
    pub signer: Signer,
    pub metrics: Metrics,
    /// Runtime state of backends by URL, shared by every snapshot that names them.
    backends: Mutex<HashMap<String, Weak<Backend>>>,
    /// False until started, and again while draining (`/readyz`).
    pub ready: AtomicBool,
    /// Requests in flight across all services (global cap, drain).
    pub in_flight: AtomicUsize,
    /// Where reloads read the config from (`None`: built in code, nothing to reload).
    pub config_path: Option<std::path::PathBuf>,
    /// The scoring listeners' bound addresses (differ from the config's when it asks for port 0).
    pub bound: std::sync::OnceLock<Vec<std::net::SocketAddr>>,
}

impl Gateway {
    /// Loads certificates and the key store and builds the first snapshot.
    pub fn new(config: Config) -> Result<Arc<Gateway>, BuildError> {
        let store = crate::tls::load_all(&config.tls).map_err(BuildError::Tls)?;
        let keystore =
            KeyStore::open(&config.state_dir).map_err(|e| BuildError::State(e.to_string()))?;
        let signer = Signer::open(
            &config.state_dir,
            config.tokens.algorithm,
            config.tokens.lifetime + config.tokens.leeway,
        )
        .map_err(|e| BuildError::State(e.to_string()))?;
        let metrics = Metrics::new();
        publish_cert_metrics(&metrics, &store);
        let certs = Arc::new(SniResolver::new(store));
        let tls_config = crate::tls::server_config(certs.clone());
        let gw = Gateway {
            snapshot: ArcSwap::from_pointee(Snapshot {
                config: Arc::new(config.clone()),
                services: HashMap::new(),
                listener_policy: AddressPolicy::default(),
                trusted_proxies: vec![],
                issuers: vec![],
            }),
            certs,
            tls_config,
            keystore,
            signer,
            metrics,
            backends: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            config_path: config.file.clone(),
            bound: std::sync::OnceLock::new(),
        };
        let keys = gw
            .keystore
            .reconcile(&config)
            .map_err(|e| BuildError::State(e.to_string()))?;
        let snap = gw.build_snapshot(config, &keys)?;
        gw.snapshot.store(Arc::new(snap));
        Ok(Arc::new(gw))
    }

    /// The snapshot in force. Cheap: one atomic load and a reference count.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Publishes a new snapshot (reload).
    pub fn publish(&self, snap: Snapshot) {
        self.snapshot.store(Arc::new(snap));
    }

    /// The backend for `uri`, shared with every snapshot that names it (its in-flight count,
    /// health and checker carry over reloads); a new one gets its active health checker here.
    /// Probe settings come from the last service built that names it.
    fn backend(&self, uri: &http::Uri, sc: &ServiceConfig) -> Arc<Backend> {
        let fresh = Backend::new(uri);
        let mut map = self.backends.lock().unwrap();
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(b) = map.get(&fresh.url).and_then(Weak::upgrade) {
            b.set_probe_settings(&sc.health, sc.backend_protocol);
            return b;
        }
        fresh.set_probe_settings(&sc.health, sc.backend_protocol);
        let b = Arc::new(fresh);
        map.insert(b.url.clone(), Arc::downgrade(&b));
        crate::proxy::health::spawn_checker(&b);
        b
    }

    /// Builds a snapshot from a validated config and the live keys.
    pub fn build_snapshot(
        &self,
        config: Config,
        keys: &BTreeMap<String, SharedKeys>,
    ) -> Result<Snapshot, BuildError> {
        // Token keys: the signing algorithm may have changed (a new kid; old keys keep verifying).
        self.signer
            .ensure(
                config.tokens.algorithm,
                config.tokens.lifetime + config.tokens.leeway,
            )
            .map_err(|e| BuildError::State(e.to_string()))?;
        let own_keys = Arc::new(self.signer.verify_keys().map_err(BuildError::State)?);
        let issuers = self.trusted_issuers(&config)?;
        let mut services = HashMap::with_capacity(config.services.len());
        for sc in &config.services {
            let auth = match sc.auth {
                AuthMode::None => ServiceAuth::None,
                AuthMode::Key => {
                    ServiceAuth::Key(keys.get(&sc.name).cloned().ok_or_else(|| {
                        BuildError::State(format!("no keys for service {:?}", sc.name))
                    })?)
                }
                AuthMode::Token => {
                    let accepted = issuers
                        .iter()
                        .filter(|i| {
                            sc.trusted_issuers
                                .as_ref()
                                .is_none_or(|names| names.contains(&i.config.issuer))
                        })
                        .cloned()
                        .collect();
                    ServiceAuth::Token(ServiceTokens::new(
                        &sc.name,
                        own_keys.clone(),
                        accepted,
                        config.tokens.leeway,
                    ))
                }
            };
            let backends = sc.backends.iter().map(|u| self.backend(u, sc)).collect();
            let svc = Service {
                config: sc.clone(),
                auth,
                policy: AddressPolicy {
                    allow: sc.allow.clone(),
                    deny: sc.deny.clone(),
                },
                upstream: Upstream::new(backends, sc.backend_protocol),
                metrics: self.metrics.for_service(&sc.name),
            };
            services.insert(sc.name.clone(), Arc::new(svc));
        }
        Ok(Snapshot {
            listener_policy: AddressPolicy {
                allow: config.listen.allow.clone(),
                deny: config.listen.deny.clone(),
            },
            trusted_proxies: config.listen.trusted_proxies.clone(),
            config: Arc::new(config),
            services,
            issuers,
        })
    }

    /// The trusted issuers for a config: JWKS files are read now (an error fails the build);
    /// a JWKS URL issuer whose settings did not change is carried over with its keys.
    fn trusted_issuers(&self, config: &Config) -> Result<Vec<Arc<TrustedIssuer>>, BuildError> {
        let old = self.snapshot.load();
        config
            .tokens
            .trusted_issuers
            .iter()
            .map(|ti| {
                let reuse = old.issuers.iter().find(|o| {
                    matches!(o.config.jwks, JwksSource::Url(_))
                        && format!("{:?}", o.config) == format!("{ti:?}")
                });
                match reuse {
                    Some(o) => Ok(o.clone()),
                    None => TrustedIssuer::load(ti).map_err(BuildError::Config),
                }
            })
            .collect()
    }
}

/// Sets the certificate-expiry gauges to exactly the served certificates.
pub fn publish_cert_metrics(metrics: &Metrics, store: &CertStore) {
    metrics.cert_expiry.reset();
    for c in &store.certs {
        let secs = c
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        metrics.cert_expiry.with_label_values(&[&c.cname]).set(secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_over_allow() {
        let p = AddressPolicy {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            deny: vec!["127.0.0.3/32".parse().unwrap()],
        };
        assert!(p.admits("127.0.0.2".parse().unwrap()));
        assert!(!p.admits("127.0.0.3".parse().unwrap()));
        assert!(!p.admits("10.0.0.1".parse().unwrap()));
        assert!(p.admits("::ffff:127.0.0.2".parse().unwrap()));
        assert!(AddressPolicy::default().admits("10.0.0.1".parse().unwrap()));
    }
}

//! Shared state: the immutable `Snapshot` the hot path reads, and `Shared`, which owns it, swaps
//! it on reload, and holds what outlives snapshots: the certificate resolver, the state store
//! and the state last read from it, the live key cells and signing keys, backend runtime state
//! and connection pools, and the metrics.
//!
//! Changing the state goes in two steps: `build` makes everything a new state needs off to the
//! side and may fail without a trace; `publish` puts a built state in force and cannot fail.
//! Reload (`reload`) and the admin API's writes persist to the store between the two.
//! `store_sync` starts the state from the store, keeps it in step with a shared store (changes
//! other replicas make, data loss, outages) and makes the admin API's writes. `usage` keeps each
//! key's use counts across restarts.

mod backend_metrics;
mod limits;
pub mod routing;
mod store_sync;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;

use crate::auth::ServiceAuth;
use crate::auth::issuers::TrustedIssuer;
use crate::auth::keys::{KeyCell, KeyPair, KeySlot, SharedKeys};
use crate::auth::signer::{Signer, SignerError, SigningSet};
use crate::auth::tokens::ServiceTokens;
use crate::client::{AddressPolicy, Trust};
use crate::config::{AuthMode, Config, ConfigError, JwksSource, ServiceConfig};
use crate::metrics::{Metrics, ServiceMetrics};
use crate::proxy::upstream::{Backend, ProbeSettings, Upstream};
use crate::proxy::{ForwardSettings, health};
use crate::store::plan::PlanError;
use crate::store::{ServiceRecord, Store, StoreError, StoreState};
use crate::tls::{CertStore, SniResolver, TlsError};
pub use routing::{Deployment, Routing};

pub use crate::config::DEFAULT_DEPLOYMENT;

/// One configured service, ready for the hot path.
pub struct Service {
    pub config: ServiceConfig,
    pub auth: ServiceAuth,
    pub policy: AddressPolicy,
    /// Its deployments, in config order (index `i` counts under metrics deployment `i + 1`).
    pub deployments: Vec<Deployment>,
    /// The live split and mirror in force (the config's, or the admin API's).
    pub routing: Routing,
    /// The mirror deployment's copy engine, when the split has a mirror.
    pub mirror: Option<Arc<crate::mirror::Mirror>>,
    pub metrics: ServiceMetrics,
    /// `[[service.rate_limit]]`: the policies and the buckets behind them.
    pub limits: crate::limit::ServiceLimits,
}

impl Service {
    /// The admin API's `state` (contract §2, §8): `Unhealthy` while a deployment with live
    /// weight has no available backend (with all weights 0: while no deployment has one),
    /// `Degraded` while some backend is down, else `Succeeded`.
    pub fn state(&self) -> &'static str {
        let states: Vec<(&'static str, bool)> = self
            .deployments
            .iter()
            .map(|d| {
                let live = self.routing.traffic.get(&d.name).is_some_and(|w| *w > 0);
                (d.state(), live)
            })
            .collect();
        let unhealthy = if self.routing.has_live_traffic() {
            states.iter().any(|(s, live)| *live && *s == "Unhealthy")
        } else {
            states.iter().all(|(s, _)| *s == "Unhealthy")
        };
        if unhealthy {
            "Unhealthy"
        } else if states.iter().any(|(s, _)| *s != "Succeeded") {
            "Degraded"
        } else {
            "Succeeded"
        }
    }
}

/// Everything a request needs, immutable once built. A reload builds a new one and swaps it in.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub services: HashMap<String, Arc<Service>>,
    pub listener_policy: AddressPolicy,
    pub trust: Trust,
    /// Trusted token issuers in force (reused by the next reload when unchanged, so a JWKS URL
    /// keeps its keys and background refresh).
    pub issuers: Vec<Arc<TrustedIssuer>>,
}

impl Snapshot {
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }
}

/// Why a state could not be built (start, reload).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("tokens.trusted_issuers[{index}] ({issuer}): {why}")]
    Jwks {
        index: usize,
        issuer: String,
        why: String,
    },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Signer(#[from] SignerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("service {0:?} has no keys in the state store")]
    MissingKeys(String),
}

impl BuildError {
    /// The operator's input is at fault (a bad config, certificate or JWKS file), rather than
    /// the gateway's own state: reload answers 400 `InvalidConfig` instead of 500.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            BuildError::Config(_)
                | BuildError::Tls(_)
                | BuildError::Jwks { .. }
                | BuildError::Plan(_)
        )
    }
}

/// Everything `publish` puts in force, made by `build` without changing anything.
pub struct Built {
    pub snapshot: Snapshot,
    /// The store state the snapshot was built on.
    pub state: StoreState,
    /// Each key-mode service's cell and the pair to store in it.
    keys: BTreeMap<String, (SharedKeys, KeyPair)>,
    signing: SigningSet,
    /// Backends with the probe settings the new snapshot gives them; `true` for new ones.
    backends: Vec<(Arc<Backend>, ProbeSettings, bool)>,
    new_issuers: Vec<Arc<TrustedIssuer>>,
    limits: crate::limit::Pending,
    /// The mirror queues the snapshot uses, by (service, deployment).
    mirrors: MirrorQueues,
}

/// Mirror queues by (service, mirror deployment).
type MirrorQueues = HashMap<(String, String), Arc<crate::mirror::Queue>>;

/// What a failed admin write reports.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("service {0:?} does not exist")]
    UnknownService(String),
    #[error("service {0:?} is not in key mode")]
    NotKeyMode(String),
    #[error("{0}")]
    Invalid(&'static str),
    /// A traffic split or mirror that breaks a rule of contract §8 (400 `InvalidTraffic`).
    #[error("{0}")]
    InvalidTraffic(crate::config::TrafficError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored change did not build into a state (it stays stored; a reload retries).
    #[error("{0}")]
    Build(String),
}

/// The process-wide state.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    pub certs: Arc<SniResolver>,
    pub tls_config: Arc<rustls::ServerConfig>,
    pub store: Arc<Store>,
    /// The store state in force (admin reads and writes, reload; never the hot path).
    state: Mutex<StoreState>,
    /// The live key cell of each key-mode service.
    keyring: Mutex<BTreeMap<String, SharedKeys>>,
    pub signer: Arc<Signer>,
    pub metrics: Metrics,
    /// Runtime state of backends by URL, shared by every snapshot that names them.
    backends: Mutex<HashMap<String, Weak<Backend>>>,
    /// Rate-limit buckets by policy, shared by every snapshot that keeps the policy.
    pub limits: crate::limit::Registry,
    /// Mirror queues in force, shared by every snapshot that keeps the mirror; one that a new
    /// snapshot drops is cancelled when it is published.
    mirrors: Mutex<MirrorQueues>,
    /// Serialises everything that writes the store: reloads and admin writes.
    pub writes: tokio::sync::Mutex<()>,
    /// False until started, and again while draining (`/readyz`).
    pub ready: AtomicBool,
    /// False while a shared store refuses this replica (a newer format, a sealing key it does
    /// not hold): not ready, and nothing is written.
    store_ready: AtomicBool,
    /// When a shared store was last read in full (`max_staleness`).
    last_sync: Mutex<Option<tokio::time::Instant>>,
    /// When this process started (the registry).
    started_at: String,
    /// Requests in flight across all services (global cap, drain).
    pub in_flight: AtomicUsize,
    /// Where reloads read the config from (`None`: built in code, nothing to reload).
    pub config_path: Option<std::path::PathBuf>,
    /// The scoring listeners' bound addresses (differ from the config's when it asks for port 0).
    pub bound: std::sync::OnceLock<Vec<std::net::SocketAddr>>,
}

impl Shared {
    /// The snapshot in force. Cheap: one atomic load and a reference count.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The store state in force.
    pub fn state(&self) -> StoreState {
        self.state.lock().unwrap().clone()
    }

    /// One service's record.
    pub fn record(&self, name: &str) -> Option<ServiceRecord> {
        self.state.lock().unwrap().services.get(name).cloned()
    }

    /// The keys in force for a key-mode service.
    pub fn keys(&self, name: &str) -> Result<KeyPair, WriteError> {
        match self.keyring.lock().unwrap().get(name) {
            Some(cell) => Ok((**cell.load()).clone()),
            None if self.record(name).is_some() => Err(WriteError::NotKeyMode(name.into())),
            None => Err(WriteError::UnknownService(name.into())),
        }
    }

    /// Builds a complete new state for `config` on the store state `state`, without changing
    /// anything in force.
    pub fn build(
        &self,
        config: Config,
        state: StoreState,
        issuers: Vec<Arc<TrustedIssuer>>,
    ) -> Result<Built, BuildError> {
        let signing = SigningSet::build(&state.signing.keys)?;
        let old_issuers = self.snapshot.load().issuers.clone();
        let new_issuers = issuers
            .iter()
            .filter(|i| !old_issuers.iter().any(|o| Arc::ptr_eq(o, i)))
            .cloned()
            .collect();
        let keyring = self.keyring.lock().unwrap().clone();
        let registry = self.backends.lock().unwrap().clone();
        let mut keys = BTreeMap::new();
        let mut backends: Vec<(Arc<Backend>, ProbeSettings, bool)> = Vec::new();
        let mut services = HashMap::with_capacity(config.services.len());
        let mut limits = crate::limit::Pending::default();
        let mirrors = self.mirrors.lock().unwrap().clone();
        let mut mirrors_used = HashMap::new();
        for sc in &config.services {
            let auth = match sc.auth {
                AuthMode::None => ServiceAuth::None,
                AuthMode::Key => {
                    let rec = state.services.get(&sc.name);
                    let pair = rec.and_then(|r| {
                        Some(KeyPair {
                            primary: r.key(KeySlot::Primary)?.clone(),
                            secondary: r.key(KeySlot::Secondary)?.clone(),
                        })
                    });
                    match pair {
                        Some(pair) => {
                            let cell = keyring
                                .get(&sc.name)
                                .cloned()
                                .unwrap_or_else(|| Arc::new(KeyCell::new(pair.clone())));
                            keys.insert(sc.name.clone(), (cell.clone(), pair));
                            ServiceAuth::Key(cell)
                        }
                        // Started from a cache that does not know the service: 503 until the
                        // shared store answers.
                        None if self.store.redis().is_some() => ServiceAuth::Unavailable,
                        None => return Err(BuildError::MissingKeys(sc.name.clone())),
                    }
                }
                AuthMode::Token
                    if self.store.redis().is_some() && state.signing.keys.is_empty() =>
                {
                    ServiceAuth::Unavailable
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
                        self.signer.clone(),
                        accepted,
                        config.tokens.leeway,
                    ))
                }
            };
            let resolved = sc.resolved_deployments();
            let mut deployments = Vec::with_capacity(resolved.len());
            for d in resolved {
                let probe = ProbeSettings {
                    health: d.health.clone(),
                    protocol: d.backend_protocol,
                };
                let mut ups = Vec::with_capacity(d.backends.len());
                for uri in &d.backends {
                    let fresh = Backend::new(uri);
                    let b = match backends.iter().find(|(b, ..)| b.url == fresh.url) {
                        Some((b, ..)) => b.clone(),
                        None => match registry.get(&fresh.url).and_then(Weak::upgrade) {
                            Some(b) => {
                                backends.push((b.clone(), probe.clone(), false));
                                b
                            }
                            None => {
                                let b = Arc::new(fresh);
                                backends.push((b.clone(), probe.clone(), true));
                                b
                            }
                        },
                    };
                    ups.push(b);
                }
                deployments.push(Deployment {
                    header: http::HeaderValue::from_str(&d.name)
                        .expect("a validated deployment name is a header value"),
                    forward: ForwardSettings {
                        score_path: d
                            .score_path
                            .parse()
                            .expect("a validated score_path is a path"),
                        scoring_timeout: d.scoring_timeout,
                        max_body: sc.max_body,
                        limit: d.max_concurrent_requests_per_backend,
                        max_wait: d.max_request_wait_time,
                        body_idle: config.limits.body_idle_timeout,
                    },
                    upstream: Arc::new(Upstream::new(ups, d.backend_protocol)),
                    pinnable: d.pinnable,
                    name: d.name,
                });
            }
            let names = sc.deployment_names();
            let rec = state.services.get(&sc.name);
            let (traffic, mirror) = crate::config::deployment::effective(
                sc,
                rec.and_then(|r| r.traffic.as_ref()),
                rec.and_then(|r| r.mirror_traffic.as_ref()),
            )
            .unwrap_or_else(|_| (sc.traffic.clone(), sc.mirror_traffic.clone()));
            let routing = Routing::new(&names, &traffic, &mirror);
            let mirror = routing.mirror.map(|(i, _)| {
                let d: &Deployment = &deployments[i];
                let key = (sc.name.clone(), d.name.clone());
                let queue = match mirrors.get(&key) {
                    Some(q) if q.fits(sc.mirror.max_in_flight) => q.clone(),
                    _ => crate::mirror::Queue::new(sc.mirror.max_in_flight),
                };
                mirrors_used.insert(key, queue.clone());
                Arc::new(crate::mirror::Mirror::new(
                    &sc.name,
                    &d.name,
                    d.upstream.clone(),
                    d.forward.clone(),
                    sc.mirror.clone(),
                    queue,
                    self.metrics.for_mirror(&sc.name, &d.name),
                ))
            });
            let svc = Service {
                mirror,
                config: sc.clone(),
                auth,
                policy: AddressPolicy {
                    allow: sc.allow.clone(),
                    deny: sc.deny.clone(),
                },
                routing,
                deployments,
                metrics: self.metrics.for_service(&sc.name, &names),
                limits: self.limits.build(sc, &mut limits),
            };
            services.insert(sc.name.clone(), Arc::new(svc));
        }
        Ok(Built {
            snapshot: Snapshot {
                listener_policy: AddressPolicy {
                    allow: config.listen.allow.clone(),
                    deny: config.listen.deny.clone(),
                },
                trust: Trust {
                    trusted_proxies: config.listen.trusted_proxies.clone(),
                    proxy_protocol: config.listen.proxy_protocol,
                },
                config: Arc::new(config),
                services,
                issuers,
            },
            state,
            keys,
            signing,
            backends,
            new_issuers,
            limits,
            mirrors: mirrors_used,
        })
    }

    /// Puts a built state in force: key cells, signing keys, backend probe settings (and health
    /// checkers for new backends), then the snapshot. Cannot fail.
    pub fn publish(&self, built: Built) {
        let Built {
            snapshot,
            state,
            keys,
            signing,
            backends,
            new_issuers,
            limits,
            mirrors,
        } = built;
        {
            let mut ring = BTreeMap::new();
            for (name, (cell, pair)) in keys {
                if **cell.load() != pair {
                    cell.store(pair);
                }
                ring.insert(name, cell);
            }
            *self.keyring.lock().unwrap() = ring;
        }
        self.signer.publish(signing);
        {
            let mut registry = self.backends.lock().unwrap();
            registry.retain(|_, w| w.strong_count() > 0);
            for (b, probe, new) in &backends {
                b.set_probe_settings(&probe.health, probe.protocol);
                if *new {
                    registry.insert(b.url.clone(), Arc::downgrade(b));
                    health::spawn_checker(b);
                }
            }
        }
        for i in &new_issuers {
            i.start_refresh();
        }
        self.limits.publish(limits);
        {
            let mut old = self.mirrors.lock().unwrap();
            for (key, q) in old.iter() {
                if mirrors.get(key).is_none_or(|n| !Arc::ptr_eq(n, q)) {
                    q.cancel();
                }
            }
            *old = mirrors;
        }
        *self.state.lock().unwrap() = state;
        self.snapshot.store(Arc::new(snapshot));
    }
}

impl Shared {
    /// Cancels every mirrored copy not yet sent (the drain: copies are neither waited for nor
    /// counted in flight).
    pub fn cancel_mirrors(&self) {
        for q in self.mirrors.lock().unwrap().values() {
            q.cancel();
        }
    }
}

/// The trusted issuers for a config: JWKS files are read now (blocking; an error fails the
/// build); a JWKS URL issuer whose settings did not change is carried over from `old` with its
/// keys and refresh.
pub fn load_issuers(
    old: &[Arc<TrustedIssuer>],
    config: &Config,
) -> Result<Vec<Arc<TrustedIssuer>>, BuildError> {
    config
        .tokens
        .trusted_issuers
        .iter()
        .enumerate()
        .map(|(index, ti)| {
            let reuse = old
                .iter()
                .find(|o| matches!(o.config.jwks, JwksSource::Url(_)) && o.config == *ti);
            match reuse {
                Some(o) => Ok(o.clone()),
                None => TrustedIssuer::load(ti).map_err(|why| BuildError::Jwks {
                    index,
                    issuer: ti.issuer.clone(),
                    why,
                }),
            }
        })
        .collect()
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

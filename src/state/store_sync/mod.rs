//! The state and the store, over time: starting from the store (or, when a shared store is
//! unreachable, from this replica's cache), applying a config to it (`reconcile`), taking in what
//! other replicas change (`apply_read`, fed by `store::redis::sync`), writing back after the
//! store lost its data, and the admin API's writes (`regenerate_key`).
//!
//! Every write is planned on the store's current content and committed with a compare-and-set
//! per record; a lost race (`Conflict`) reads again and plans again, at most `WRITE_ATTEMPTS`
//! times. While a shared store is unreachable nothing is written: config-driven writes wait for
//! it to come back (a reload that needs one is refused whole), admin writes answer 503.
//!
//! Starting and applying a config are here; `follow` takes in the other replicas' changes and
//! writes back after data loss; `admin` holds the admin API's writes.

mod admin;
mod follow;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::{BuildError, Shared, Snapshot, load_issuers, publish_cert_metrics};
use crate::auth::signer::{Signer, SigningSet};
use crate::client::{AddressPolicy, Trust};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::plan::{PlanCtx, plan};
use crate::store::redis::ReplicaInfo;
use crate::store::{Store, StoreError, StoreState};
use crate::tls::SniResolver;

/// A write that loses the race to another replica this many times in a row gives up.
pub const WRITE_ATTEMPTS: usize = 5;

/// `plan` in the context of `store`: its fingerprints, its signing-key activation delay, and
/// which services other live replicas serve.
fn plan_for(
    store: &Store,
    base: &StoreState,
    config: &Config,
) -> Result<(StoreState, Vec<String>), crate::store::plan::PlanError> {
    let fingerprint = |v: &str| store.fingerprint(v);
    let others = |s: &str, m| store.others_serve(s, m);
    let ctx = PlanCtx {
        now: SystemTime::now(),
        fingerprint: &fingerprint,
        activation_delay: store.activation_delay(),
        others_serve: &others,
    };
    plan(base, config, &ctx)
}

/// The digest of a config, for the registry (which replicas run the same config).
fn config_digest(config: &Config) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(format!("{config:?}").as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Shared {
    /// Opens the store (a shared one: or this replica's cache of it), loads certificates and
    /// JWKS files (off the runtime), applies the config to the store, builds and publishes the
    /// first snapshot, and starts following a shared store.
    pub async fn start(config: Config) -> Result<Arc<Shared>, BuildError> {
        let metrics = Metrics::new();
        let opened = Store::open(&config, metrics.store.clone()).await?;
        let cfg = config.clone();
        let (certs, issuers) = tokio::task::spawn_blocking(move || {
            let certs = crate::tls::load_all(&cfg.tls)?;
            let issuers = load_issuers(&[], &cfg)?;
            Ok::<_, BuildError>((certs, issuers))
        })
        .await
        .expect("start-up loading does not panic")?;
        publish_cert_metrics(&metrics, &certs);
        let limits = crate::limit::Registry::new(&metrics.registry);
        if let (Some(redis), crate::config::StoreConfig::Redis(rc)) =
            (opened.store.redis(), &config.store)
        {
            limits.share(redis.clone(), rc.rate_limit_timeout);
        }
        let certs = Arc::new(SniResolver::new(certs));
        let tls_config = crate::tls::server_config(certs.clone());
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot {
                config: Arc::new(config.clone()),
                services: Default::default(),
                listener_policy: AddressPolicy::default(),
                trust: Trust::default(),
                issuers: vec![],
            }),
            certs,
            tls_config,
            store: opened.store.clone(),
            state: std::sync::Mutex::new(opened.state.clone()),
            keyring: std::sync::Mutex::default(),
            signer: Arc::new(Signer::new(SigningSet::build(&opened.state.signing.keys)?)),
            metrics,
            backends: std::sync::Mutex::default(),
            limits,
            mirrors: std::sync::Mutex::default(),
            writes: tokio::sync::Mutex::new(()),
            ready: Default::default(),
            store_ready: std::sync::atomic::AtomicBool::new(true),
            last_sync: std::sync::Mutex::new(Some(tokio::time::Instant::now())),
            started_at: crate::store::plan::rfc3339(SystemTime::now()),
            in_flight: Default::default(),
            config_path: config.file.clone(),
            bound: std::sync::OnceLock::new(),
        });
        shared
            .metrics
            .registry
            .register(Box::new(super::backend_metrics::BackendCollector::new(
                Arc::downgrade(&shared),
            )))
            .expect("backend metric names are unique");
        if let Some(redis) = shared.store.redis() {
            if opened.from_cache {
                shared.store_ready.store(true, Ordering::Relaxed);
            } else {
                shared
                    .metrics
                    .store
                    .last_sync
                    .set(crate::store::plan::unix_now(SystemTime::now()) as f64);
                redis.register(&shared.replica_info()).await.ok();
                if opened.meta_missing {
                    shared.write_back(&opened.state).await;
                }
                redis.ensure_meta().await?;
            }
        }
        let _w = shared.writes.lock().await;
        shared.apply_config(config, issuers, true).await?;
        drop(_w);
        if shared.store.redis().is_some() && shared.store.is_up() {
            shared.write_cache().await;
        }
        if let Some(redis) = shared.store.redis() {
            let me = Arc::downgrade(&shared);
            let info = Arc::new(move || {
                me.upgrade()
                    .map(|s| s.replica_info())
                    .unwrap_or_else(|| ReplicaInfo {
                        id: String::new(),
                        version: String::new(),
                        config_digest: String::new(),
                        services: BTreeMap::new(),
                        started_at: String::new(),
                    })
            });
            let rx = crate::store::redis::sync::spawn(
                redis.clone(),
                info,
                shared.signer.unknown_kid.clone(),
            );
            tokio::spawn(follow::follow(Arc::downgrade(&shared), rx));
        }
        Ok(shared)
    }

    /// This replica as the registry shows it.
    pub fn replica_info(&self) -> ReplicaInfo {
        let snap = self.snapshot();
        ReplicaInfo {
            id: self
                .store
                .redis()
                .map(|r| r.replica_id.clone())
                .unwrap_or_else(|| "local".into()),
            version: env!("CARGO_PKG_VERSION").into(),
            config_digest: config_digest(&snap.config),
            services: snap
                .config
                .services
                .iter()
                .map(|s| (s.name.clone(), s.auth.as_str().to_string()))
                .collect(),
            started_at: self.started_at.clone(),
        }
    }

    /// Applies a config in the order that leaves nothing changed when any step fails: plan on
    /// the store's current content, build the state on the plan, persist the plan, publish the
    /// state. A lost race re-reads and starts over. With a shared store out of reach, a config
    /// that needs a store write is refused whole (`Unavailable`) — unless `start_anyway` (a
    /// replica starting from its cache serves what it knows and writes once the store is back).
    /// Call with `writes` held.
    pub async fn apply_config(
        &self,
        config: Config,
        issuers: Vec<Arc<crate::auth::issuers::TrustedIssuer>>,
        start_anyway: bool,
    ) -> Result<(), BuildError> {
        for attempt in 1..=WRITE_ATTEMPTS {
            let up = self.store.is_up();
            let base = if up {
                self.store.read().await?
            } else {
                self.state()
            };
            let (next, warnings) = {
                let (store, base, config) = (self.store.clone(), base.clone(), config.clone());
                tokio::task::spawn_blocking(move || plan_for(&store, &base, &config))
                    .await
                    .expect("planning does not panic")?
            };
            let writes = next != base;
            let state = if writes && !up && start_anyway {
                tracing::warn!(
                    "config-driven writes (new services, presets, signing keys) wait until the shared store answers"
                );
                base.clone()
            } else {
                next.clone()
            };
            let built = self.build(config.clone(), state, issuers.clone())?;
            if writes && up {
                match self.store.commit(&base, &next).await {
                    Ok(()) => {}
                    Err(StoreError::Conflict) if attempt < WRITE_ATTEMPTS => continue,
                    Err(e) => return Err(e.into()),
                }
            } else if writes && !start_anyway {
                return Err(StoreError::Unavailable(
                    "the shared store is unreachable and this config needs a store write (a new key- or token-mode service, a changed preset or algorithm): nothing was applied".into(),
                )
                .into());
            }
            for w in warnings {
                tracing::warn!("{w}");
            }
            self.publish(built);
            return Ok(());
        }
        unreachable!("the loop returns")
    }

    /// Applies `config` to the store: plans on the store's current content, writes what
    /// changed, and returns the resulting state (not yet in force). Call with `writes` held.
    pub async fn reconcile(&self, config: &Config) -> Result<StoreState, BuildError> {
        for attempt in 1..=WRITE_ATTEMPTS {
            let base = self.store.read().await?;
            let (next, warnings) = {
                let (store, base, config) = (self.store.clone(), base.clone(), config.clone());
                tokio::task::spawn_blocking(move || plan_for(&store, &base, &config))
                    .await
                    .expect("planning does not panic")?
            };
            for w in warnings {
                tracing::warn!("{w}");
            }
            if next == base {
                return Ok(next);
            }
            match self.store.commit(&base, &next).await {
                Ok(()) => return Ok(next),
                Err(StoreError::Conflict) if attempt < WRITE_ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns")
    }

    /// Whether the state is fit to serve (`/readyz`): started, not draining, and (with a shared
    /// store) not refused by it and not staler than `max_staleness`.
    pub fn is_ready(&self) -> bool {
        if !self.ready.load(Ordering::SeqCst) || !self.store_ready.load(Ordering::Relaxed) {
            return false;
        }
        match self.store.redis() {
            Some(r) if !r.max_staleness.is_zero() => self
                .last_sync
                .lock()
                .unwrap()
                .is_some_and(|t| t.elapsed() <= r.max_staleness),
            _ => true,
        }
    }
}

//! The state and the store, over time: starting from the store (or, when a shared store is
//! unreachable, from this replica's cache), applying a config to it (`reconcile`), taking in what
//! other replicas change (`apply_read`, fed by `store::redis::sync`), writing back after the
//! store lost its data, and the admin API's writes (`regenerate_key`).
//!
//! Every write is planned on the store's current content and committed with a compare-and-set
//! per record; a lost race (`Conflict`) reads again and plans again, at most `WRITE_ATTEMPTS`
//! times. While a shared store is unreachable nothing is written: config-driven writes wait for
//! it to come back (a reload that needs one is refused whole), admin writes answer 503.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use super::{BuildError, Shared, Snapshot, WriteError, load_issuers, publish_cert_metrics};
use crate::auth::keys::{KeyPair, KeySlot};
use crate::auth::signer::{Signer, SigningSet};
use crate::client::{AddressPolicy, Trust};
use crate::config::Config;
use crate::crypto::Secret;
use crate::metrics::Metrics;
use crate::store::plan::{PlanCtx, plan};
use crate::store::redis::ReplicaInfo;
use crate::store::redis::sync::StoreEvent;
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
            tokio::spawn(follow(Arc::downgrade(&shared), rx));
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

    /// `regenerateKeys`: replaces one key of a key-mode service (with `value`, or a random key),
    /// persists it, then puts it in force. On any error nothing changes here.
    pub async fn regenerate_key(
        &self,
        name: &str,
        slot: KeySlot,
        value: Option<Secret>,
    ) -> Result<KeyPair, WriteError> {
        let _w = self.writes.lock().await;
        let Some(cell) = self.keyring.lock().unwrap().get(name).cloned() else {
            return Err(if self.snapshot().service(name).is_some() {
                WriteError::NotKeyMode(name.into())
            } else {
                WriteError::UnknownService(name.into())
            });
        };
        for attempt in 1..=WRITE_ATTEMPTS {
            let base = self.store.read().await?;
            // A store that lost its data (and has not been written back yet) lacks the record:
            // write this replica's copy, changed, if it is still absent (create-if-absent).
            let known = self.record(name);
            let Some(rec) = base.services.get(name).or(known.as_ref()) else {
                return Err(WriteError::UnknownService(name.into()));
            };
            let next_rec =
                crate::store::plan::regenerate(rec, slot, value.clone(), SystemTime::now())
                    .map_err(WriteError::Invalid)?;
            let mut next = base.clone();
            next.services.insert(name.into(), next_rec.clone());
            match self.store.commit(&base, &next).await {
                Ok(()) => {
                    let pair = KeyPair {
                        primary: next_rec
                            .primary_key
                            .clone()
                            .expect("a key-mode record has keys"),
                        secondary: next_rec
                            .secondary_key
                            .clone()
                            .expect("a key-mode record has keys"),
                    };
                    self.state
                        .lock()
                        .unwrap()
                        .services
                        .insert(name.into(), next_rec);
                    cell.store(pair.clone());
                    return Ok(pair);
                }
                Err(StoreError::Conflict) if attempt < WRITE_ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns")
    }

    /// `PUT /v1/services/NAME/traffic` (contract §8): replaces the live split (`traffic`: every
    /// deployment it omits gets 0) and/or the mirror (`mirror`: `{}` clears it); a member not
    /// given keeps its value. Checked, persisted (fleet-wide with a shared store; `updatedAt`
    /// bumped), then put in force. Returns both in force. On any error nothing changes.
    pub async fn set_traffic(
        &self,
        name: &str,
        traffic: Option<&BTreeMap<String, u32>>,
        mirror: Option<&BTreeMap<String, u32>>,
    ) -> Result<(crate::config::Traffic, crate::config::Traffic), WriteError> {
        use crate::config::deployment::{check_traffic, full_traffic, mirror_only};
        use crate::store::plan::traffic_fingerprint;
        use crate::store::records::record_applied;
        let _w = self.writes.lock().await;
        let snap = self.snapshot();
        let svc = snap
            .service(name)
            .ok_or_else(|| WriteError::UnknownService(name.into()))?;
        let names = svc.config.deployment_names();
        let widen = |t: &crate::config::Traffic| -> BTreeMap<String, u32> {
            t.iter().map(|(n, w)| (n.clone(), u32::from(*w))).collect()
        };
        let t = traffic
            .cloned()
            .unwrap_or_else(|| widen(&svc.routing.traffic));
        let m = mirror
            .cloned()
            .unwrap_or_else(|| widen(&svc.routing.mirror_traffic));
        check_traffic(&names, &t, &m).map_err(WriteError::InvalidTraffic)?;
        let (t, m) = (full_traffic(&names, &t), mirror_only(&m));
        for attempt in 1..=WRITE_ATTEMPTS {
            let base = self.store.read().await?;
            let known = self.record(name);
            let Some(rec) = base.services.get(name).or(known.as_ref()) else {
                return Err(WriteError::UnknownService(name.into()));
            };
            let mut next_rec = rec.clone();
            next_rec.traffic = Some(t.clone());
            next_rec.mirror_traffic = Some(m.clone());
            // Against the config the latest action wins: this value stays until the config's
            // own value changes.
            record_applied(
                &mut next_rec.applied,
                "traffic",
                traffic_fingerprint(&svc.config.traffic),
            );
            record_applied(
                &mut next_rec.applied,
                "mirror_traffic",
                traffic_fingerprint(&svc.config.mirror_traffic),
            );
            if base.services.get(name) == Some(&next_rec) {
                return Ok((t, m));
            }
            next_rec.revision = rec.revision + 1;
            next_rec.updated_at = crate::store::plan::rfc3339(SystemTime::now());
            let mut next = base.clone();
            next.services.insert(name.into(), next_rec);
            match self.store.commit(&base, &next).await {
                Ok(()) => {
                    // Other records as this replica knows them; this one as written.
                    let mut state = self.state();
                    state
                        .services
                        .insert(name.into(), next.services[name].clone());
                    let built = self
                        .build((*snap.config).clone(), state, snap.issuers.clone())
                        .map_err(|e| WriteError::Build(e.to_string()))?;
                    self.publish(built);
                    tracing::info!(service = name, traffic = %crate::config::traffic_string(&t), mirror = %traffic_fingerprint(&m), "traffic split changed");
                    return Ok((t, m));
                }
                Err(StoreError::Conflict) if attempt < WRITE_ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns")
    }

    /// Writes back what this replica knows to a store that lost its data: each record only
    /// while the store lacks it or holds a lower revision (the newest copy any replica holds
    /// wins; keys are never regenerated for it, a revoked key never comes back over a newer one).
    async fn write_back(&self, state: &StoreState) {
        let Some(redis) = self.store.redis() else {
            return;
        };
        let mut written = 0;
        for (name, rec) in &state.services {
            match redis.write_back_service(name, rec).await {
                Ok(true) => written += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(service = %name, error = %e, "write-back failed"),
            }
        }
        if !state.signing.keys.is_empty() {
            match redis.write_back_signing(&state.signing).await {
                Ok(true) => written += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "write-back of the signing keys failed"),
            }
        }
        if written > 0 {
            tracing::warn!(records = written, store = %redis.url, "the shared store had lost its data: wrote back what this replica knows");
        }
    }

    /// Takes in a full read of the shared store: records that did not unseal keep their last
    /// known copy; what changed goes in force (key cells, signing keys, and a new snapshot
    /// when a service's record appears or its auth mode changes); the cache is written; the
    /// config's own writes are re-applied when the store had been out of reach or lost data.
    async fn apply_read(self: &Arc<Self>, read: crate::store::redis::ReadAll) {
        let Some(redis) = self.store.redis().cloned() else {
            return;
        };
        self.store_ready.store(true, Ordering::Relaxed);
        *self.last_sync.lock().unwrap() = Some(tokio::time::Instant::now());
        self.metrics
            .store
            .last_sync
            .set(crate::store::plan::unix_now(SystemTime::now()) as f64);
        let old = self.state();
        if read.meta_missing {
            self.write_back(&old).await;
            if let Err(e) = redis.ensure_meta().await {
                tracing::error!(error = %e, "cannot re-create the shared store's meta record");
            }
        }
        let mut new = read.state;
        // The store's revisions only grow, unless it lost data: a record this replica holds at
        // a higher revision than the store (same service id) is a write the store acknowledged
        // and then lost — another replica may since have written back its older copy. Ours goes
        // back (the script keeps the highest revision) and stays in force: a regenerated key
        // must never come back.
        for (name, mine) in &old.services {
            let Some(theirs) = new.services.get(name) else {
                continue;
            };
            if theirs.id == mine.id && theirs.revision < mine.revision {
                if let Err(e) = redis.write_back_service(name, mine).await {
                    tracing::warn!(service = %name, error = %e, "write-back of a newer record failed; retried at the next sync");
                }
                tracing::warn!(service = %name, store_revision = theirs.revision, revision = mine.revision,
                    "the shared store had an older copy of this record (it lost data): wrote back this replica's");
                new.services.insert(name.clone(), mine.clone());
            }
        }
        if !old.signing.keys.is_empty() && new.signing.revision < old.signing.revision {
            if let Err(e) = redis.write_back_signing(&old.signing).await {
                tracing::warn!(error = %e, "write-back of the newer signing keys failed; retried at the next sync");
            }
            new.signing = old.signing.clone();
        }
        for name in &read.unsealable {
            if name == "signing" {
                new.signing = old.signing.clone();
            } else if let Some(r) = old.services.get(name) {
                new.services.insert(name.clone(), r.clone());
            }
        }
        // The config's writes (a new service, presets, a signing key, clean-ups) whenever what
        // the store holds is not what the config asks.
        let config = self.snapshot().config.clone();
        let wanted = {
            let (store, base, config) = (self.store.clone(), new.clone(), (*config).clone());
            tokio::task::spawn_blocking(move || plan_for(&store, &base, &config))
                .await
                .expect("planning does not panic")
        };
        if wanted.as_ref().is_ok_and(|(w, _)| *w != new) && read.unsealable.is_empty() {
            let _w = self.writes.lock().await;
            match self.reconcile(&config).await {
                Ok(s) => new = s,
                Err(e) => {
                    tracing::warn!(error = %e, "applying the config to the shared store failed; retried at the next sync")
                }
            }
        }
        if new != old {
            self.take_in(new.clone());
        }
        self.write_cache().await;
    }

    /// Writes this replica's cache of the shared store (the state in force), off the runtime.
    async fn write_cache(&self) {
        let Some(redis) = self.store.redis().cloned() else {
            return;
        };
        let (dir, state) = (self.snapshot().config.state_dir.clone(), self.state());
        let cached =
            tokio::task::spawn_blocking(move || crate::store::cache::write(&dir, &redis, &state))
                .await
                .expect("writing the cache does not panic");
        if let Err(e) = cached {
            tracing::warn!(error = %e, "cannot write this replica's cache of the shared store");
        }
    }

    /// Puts a store state from elsewhere in force: in place where it can be (key cells, the
    /// signing set), with a new snapshot where it must (a service gained or lost its record).
    fn take_in(self: &Arc<Self>, new: StoreState) {
        let snap = self.snapshot();
        let needs_rebuild = snap.config.services.iter().any(|s| {
            let state = self.state.lock().unwrap();
            let (old_rec, new_rec) = (state.services.get(&s.name), new.services.get(&s.name));
            let had = old_rec.is_some_and(|r| r.primary_key.is_some());
            let has = new_rec.is_some_and(|r| r.primary_key.is_some());
            // A traffic split or mirror set through another replica's admin API.
            let routing = |r: Option<&crate::store::ServiceRecord>| {
                r.map(|r| (r.traffic.clone(), r.mirror_traffic.clone()))
            };
            had != has || routing(old_rec) != routing(new_rec)
        });
        if needs_rebuild {
            match self.build((*snap.config).clone(), new.clone(), snap.issuers.clone()) {
                Ok(built) => {
                    self.publish(built);
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the shared store's new state does not build; keeping the old one");
                    return;
                }
            }
        }
        match SigningSet::build(&new.signing.keys) {
            Ok(set) => self.signer.publish(set),
            Err(e) => {
                tracing::error!(error = %e, "a signing key from the shared store does not decode; keeping the old ones");
                return;
            }
        }
        {
            let ring = self.keyring.lock().unwrap();
            for (name, cell) in ring.iter() {
                let Some(rec) = new.services.get(name) else {
                    continue;
                };
                if let (Some(p), Some(s)) = (&rec.primary_key, &rec.secondary_key) {
                    let pair = KeyPair {
                        primary: p.clone(),
                        secondary: s.clone(),
                    };
                    if **cell.load() != pair {
                        tracing::info!(service = %name, revision = rec.revision, "keys changed in the shared store: in force");
                        cell.store(pair);
                    }
                }
            }
        }
        *self.state.lock().unwrap() = new;
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

/// Follows the shared store's events until the state is gone.
async fn follow(shared: std::sync::Weak<Shared>, mut rx: mpsc::Receiver<StoreEvent>) {
    while let Some(ev) = rx.recv().await {
        let Some(s) = shared.upgrade() else { return };
        match ev {
            StoreEvent::Read(r) => s.apply_read(*r).await,
            StoreEvent::NotReady(why) => {
                if s.store_ready.swap(false, Ordering::Relaxed) {
                    tracing::error!(error = %why, "this replica must not use the shared store: not ready, writing nothing");
                }
            }
            StoreEvent::Replicas(_) => {}
        }
    }
}

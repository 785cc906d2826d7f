//! The state store: what operators change at run time and what must survive a restart — each
//! service's id, timestamps and key pair, and the token signing keys.
//!
//! Two backends behind one interface (`Store`): the file store (`state.json` in `state.dir`,
//! the default: one process) and Redis (`state.store = "redis"`: a fleet sharing one state,
//! contract §6). `plan` computes, without side effects, what a config asks of the store; `commit`
//! writes a planned state — for Redis, one compare-and-set per record that changed, which fails
//! with `Conflict` when another replica changed that record first (the caller reads again and
//! re-plans). The hot path never reads the store: the state in force lives in memory (key cells
//! and the signer, see `state`). `usage` is a file of its own beside it, per replica: how much
//! each key was used.

pub mod admin;
pub mod cache;
pub mod file;
pub mod metrics;
pub mod plan;
pub mod records;
pub mod redis;
pub mod usage;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use records::{KeySlot, ServiceRecord, SigningKeyRecord, SigningRecord, StoreState};

use crate::config::{AuthMode, Config, StoreConfig};
pub use metrics::StoreMetrics;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state store {}: unreadable: {why}", .path.display())]
    Corrupt { path: PathBuf, why: String },
    /// The shared store cannot be reached or did not answer in time (503 `StoreUnavailable`).
    #[error("{0}")]
    Unavailable(String),
    /// Another replica changed the record first: read again, plan again.
    #[error("the record changed in the shared store meanwhile")]
    Conflict,
    /// This replica must not use the store (a newer format, a sealing key it does not hold).
    #[error("{0}")]
    NotReady(String),
    /// A setting of `[state.redis]` is wrong (URL, credentials, TLS files, sealing key).
    #[error("{0}")]
    Config(String),
    /// An operation the store's content forbids (`store import` into a store that knows the
    /// services).
    #[error("{0}")]
    Refused(String),
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The file store: the file, and the state it last read or wrote.
#[derive(Debug)]
pub struct FileBacked {
    file: file::FileStore,
    last: Mutex<StoreState>,
}

/// Where the shared state is kept.
#[derive(Debug)]
pub enum Store {
    File(FileBacked),
    Redis(Arc<redis::RedisStore>),
}

/// What opening a store found.
pub struct Opened {
    pub store: Arc<Store>,
    pub state: StoreState,
    /// The state came from this replica's cache (the shared store was unreachable).
    pub from_cache: bool,
    /// Records the store holds that did not unseal (never treated as missing).
    pub unsealable: Vec<String>,
    /// The store had no meta record: empty, or it lost its data.
    pub meta_missing: bool,
}

impl Store {
    /// Opens the store the config names and reads its state. For Redis: connects, reads it
    /// all; when the store is unreachable, reads this replica's cache instead; without a usable
    /// cache, `NotReady` (the caller retries with back-off, not ready meanwhile).
    pub async fn open(config: &Config, metrics: StoreMetrics) -> Result<Opened, StoreError> {
        match &config.store {
            StoreConfig::File => {
                let dir = config.state_dir.clone();
                let (f, state) = tokio::task::spawn_blocking(move || file::FileStore::open(&dir))
                    .await
                    .expect("opening the file store does not panic")?;
                metrics.up.set(1);
                Ok(Opened {
                    store: Arc::new(Store::File(FileBacked {
                        file: f,
                        last: Mutex::new(state.clone()),
                    })),
                    state,
                    from_cache: false,
                    unsealable: Vec::new(),
                    meta_missing: false,
                })
            }
            StoreConfig::Redis(rc) => {
                let rc = rc.clone();
                let redis =
                    tokio::task::spawn_blocking(move || redis::RedisStore::new(&rc, metrics))
                        .await
                        .expect("building the store client does not panic")?;
                let redis = Arc::new(redis);
                let store = Arc::new(Store::Redis(redis.clone()));
                let connected = redis.connect().await;
                let read = match connected {
                    Ok(()) => redis.read_all().await,
                    Err(e) => Err(e),
                };
                match read {
                    Ok(r) => Ok(Opened {
                        store,
                        state: r.state,
                        from_cache: false,
                        unsealable: r.unsealable,
                        meta_missing: r.meta_missing,
                    }),
                    Err(e) if e.is_unavailable() => {
                        let dir = config.state_dir.clone();
                        let r2 = redis.clone();
                        let cached = tokio::task::spawn_blocking(move || cache::read(&dir, &r2))
                            .await
                            .expect("reading the cache does not panic")?;
                        match cached {
                            Some((state, synced)) => {
                                tracing::warn!(store = %redis.url, error = %e, synced_at = %synced, "shared store unreachable: starting from this replica's cache");
                                Ok(Opened {
                                    store,
                                    state,
                                    from_cache: true,
                                    unsealable: Vec::new(),
                                    meta_missing: false,
                                })
                            }
                            None => Err(StoreError::NotReady(format!(
                                "{e}, and there is no cache of it in {}: not ready until it answers",
                                config.state_dir.display()
                            ))),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// What `scoregate check` reports of a file store, without changing it. Blocking.
    pub fn inspect(config: &Config) -> Result<String, StoreError> {
        let what = file::FileStore::inspect(&config.state_dir)?;
        Ok(format!("file {}: {what}", config.state_dir.display()))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Store::File(_) => "file",
            Store::Redis(_) => "redis",
        }
    }

    pub fn redis(&self) -> Option<&Arc<redis::RedisStore>> {
        match self {
            Store::Redis(r) => Some(r),
            Store::File(_) => None,
        }
    }

    /// Whether writes can go through now (the file store always; Redis while reachable).
    pub fn is_up(&self) -> bool {
        match self {
            Store::File(_) => true,
            Store::Redis(r) => r.is_up(),
        }
    }

    /// How this store fingerprints config values it applied.
    pub fn fingerprint(&self, value: &str) -> String {
        match self {
            Store::File(_) => plan::sha256_fingerprint(value),
            Store::Redis(r) => r.sealer.fingerprint(value),
        }
    }

    /// How long a new signing key waits before it signs: until every replica has read it.
    pub fn activation_delay(&self) -> Duration {
        match self {
            Store::File(_) => Duration::ZERO,
            Store::Redis(r) => r.resync,
        }
    }

    /// Whether another live replica serves `service` (in `mode`, or in any mode).
    pub fn others_serve(&self, service: &str, mode: Option<AuthMode>) -> bool {
        match self {
            Store::File(_) => false,
            Store::Redis(r) => r.others_serve(service, mode.map(AuthMode::as_str)),
        }
    }

    /// The store's state to plan a write on: the file store's last state; the shared store's
    /// current content (one read).
    pub async fn read(&self) -> Result<StoreState, StoreError> {
        match self {
            Store::File(f) => Ok(f.last.lock().unwrap().clone()),
            Store::Redis(r) => {
                let all = r.read_all().await?;
                if !all.unsealable.is_empty() {
                    return Err(StoreError::Refused(format!(
                        "records in the shared store do not unseal ({}): nothing is written over them; check state.redis.secret_key_file",
                        all.unsealable.join(", ")
                    )));
                }
                Ok(all.state)
            }
        }
    }

    /// Makes `next` the stored state, starting from `base` (what it was planned on). The file
    /// store writes it whole, atomically; Redis writes each record that changed with a
    /// compare-and-set on its revision in `base` (`Conflict` when one moved on meanwhile).
    pub async fn commit(
        self: &Arc<Self>,
        base: &StoreState,
        next: &StoreState,
    ) -> Result<(), StoreError> {
        match &**self {
            Store::File(f) => {
                let me = self.clone();
                let state = next.clone();
                tokio::task::spawn_blocking(move || match &*me {
                    Store::File(f) => f.file.write(&state),
                    Store::Redis(_) => unreachable!(),
                })
                .await
                .expect("the store write does not panic")?;
                *f.last.lock().unwrap() = next.clone();
                Ok(())
            }
            Store::Redis(r) => {
                for (name, rec) in &next.services {
                    let old = base.services.get(name);
                    if old != Some(rec) {
                        r.cas_service(name, old.map_or(0, |o| o.revision), Some(rec))
                            .await?;
                    }
                }
                for (name, old) in &base.services {
                    if !next.services.contains_key(name) {
                        r.cas_service(name, old.revision, None).await?;
                    }
                }
                if next.signing != base.signing {
                    r.cas_signing(base.signing.revision, &next.signing).await?;
                }
                Ok(())
            }
        }
    }
}

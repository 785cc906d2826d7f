//! The connection to the store and its reachability: the clients built from `[state.redis]`
//! (TLS for `rediss://`), connecting, and `op`, which runs every command under the timeout and
//! decides when the store counts as unreachable and when it is back (contract §6).

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;

use super::{RedisStore, scripts};
use crate::config::RedisConfig;
use crate::crypto::seal::Sealer;
use crate::store::{StoreError, StoreMetrics};

/// Failed commands in a row that make the store unreachable.
const FAILURES_DOWN: u32 = 3;
/// Time without a successful command that makes the store unreachable.
const SILENCE_DOWN: Duration = Duration::from_secs(2);
/// The fred client's own reconnect back-off (the store being down is handled above it).
const RECONNECT_MIN_MS: u32 = 100;
const RECONNECT_MAX_MS: u32 = 2_000;
/// What `op`'s own bound adds to the commands' timeouts (see there: fred's timeout ends them).
const OUTER_GRACE: Duration = Duration::from_millis(100);

/// Reachability of the store, as the request path and the admin API see it.
#[derive(Debug)]
pub(super) struct Health {
    up: AtomicBool,
    failures: AtomicU32,
    last_success: Mutex<tokio::time::Instant>,
}

/// The rustls client config for `rediss://`: the system roots or `ca_file`, client
/// certificates when set, the one crypto provider.
fn tls_config(c: &RedisConfig) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &c.ca_file {
        Some(p) => {
            let pem = crate::files::read_capped(p, crate::files::MAX_PEM_FILE)
                .map_err(|e| format!("state.redis.ca_file {}: {e}", p.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("state.redis.ca_file: bad PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("state.redis.ca_file: {e}"))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let b = rustls::ClientConfig::builder_with_provider(crate::crypto::provider().clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match (&c.client_cert, &c.client_key) {
        (Some(cert), Some(key)) => {
            let chain = crate::files::read_capped(cert, crate::files::MAX_PEM_FILE)
                .map_err(|e| format!("state.redis.client_cert {}: {e}", cert.display()))?;
            let chain: Vec<_> = CertificateDer::pem_slice_iter(&chain)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("state.redis.client_cert: bad PEM: {e}"))?;
            let key = crate::files::read_capped(key, crate::files::MAX_PEM_FILE)
                .map_err(|e| format!("state.redis.client_key {}: {e}", key.display()))?;
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|e| format!("state.redis.client_key: {e}"))?;
            b.with_client_auth_cert(chain, key)
                .map_err(|e| format!("state.redis.client_cert: {e}"))
        }
        _ => Ok(b.with_no_client_auth()),
    }
}

fn replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "scoregate".into());
    format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

impl RedisStore {
    /// Builds the clients (not connected yet) from `[state.redis]`. Blocking file reads (CA,
    /// client certificate): callers off the runtime.
    pub fn new(c: &RedisConfig, metrics: StoreMetrics) -> Result<RedisStore, StoreError> {
        let bad = |why: String| StoreError::Config(why);
        let mut config = Config::from_url(c.url.expose())
            .map_err(|_| bad("state.redis.url: not a Redis URL this client accepts".into()))?;
        if c.url.expose().starts_with("rediss://") {
            let tls = tls_config(c).map_err(bad)?;
            config.tls = Some(fred::types::config::TlsConnector::from(tls).into());
        }
        config.fail_fast = true;
        let builder = |config: Config| {
            Builder::from_config(config)
                .with_connection_config(|cc| {
                    cc.connection_timeout = c.timeout.max(Duration::from_secs(1));
                    cc.internal_command_timeout = c.timeout.max(Duration::from_secs(1));
                    cc.max_command_attempts = 1;
                    cc.unresponsive.max_timeout = Some(c.timeout.max(Duration::from_secs(1)) * 4);
                    cc.unresponsive.interval = Duration::from_millis(500);
                })
                .with_performance_config(|p| p.default_command_timeout = c.timeout)
                .set_policy(ReconnectPolicy::new_exponential(
                    0,
                    RECONNECT_MIN_MS,
                    RECONNECT_MAX_MS,
                    2,
                ))
                .build()
                .map_err(|e| bad(format!("state.redis: {e}")))
        };
        let client = builder(config.clone())?;
        let subscriber = builder(config)?;
        let sealer = Sealer::new(
            &c.prefix,
            c.secret_key.as_ref().map(|k| k.expose().as_bytes()),
            c.previous_secret_key
                .as_ref()
                .map(|k| k.expose().as_bytes()),
        )
        .map_err(|e| bad(format!("state.redis.secret_key_file: {e}")))?;
        metrics.up.set(0);
        Ok(RedisStore {
            client,
            subscriber,
            prefix: c.prefix.clone(),
            sealer,
            url: c.display_url.clone(),
            timeout: c.timeout,
            resync: c.resync,
            max_staleness: c.max_staleness,
            health: Health {
                up: AtomicBool::new(false),
                failures: AtomicU32::new(0),
                last_success: Mutex::new(tokio::time::Instant::now()),
            },
            metrics,
            meta_key_id: Mutex::new(None),
            replicas: Mutex::new(Vec::new()),
            replica_id: replica_id(),
            connections: Mutex::new([None, None]),
            cas: Script::from_lua(scripts::CAS),
            write_back: Script::from_lua(scripts::WRITE_BACK),
            read_all: Script::from_lua(scripts::READ_ALL),
            ensure_meta: Script::from_lua(scripts::ENSURE_META),
            register: Script::from_lua(scripts::REGISTER),
        })
    }

    /// Connects both clients (bounded by the command timeout, at least 1 s); the fred clients
    /// keep reconnecting in the background afterwards.
    pub async fn connect(&self) -> Result<(), StoreError> {
        let wait = self.timeout.max(Duration::from_secs(1));
        for (i, c) in [&self.client, &self.subscriber].into_iter().enumerate() {
            if c.is_connected() {
                continue;
            }
            self.start_connection(i);
            // Watched rather than `wait_for_connect`, which only sees a result announced after
            // it subscribed: a first connection that failed fast (wrong credentials) ended
            // unseen, and was taken for an unreachable store.
            let deadline = tokio::time::Instant::now() + wait;
            while !c.is_connected() {
                let ended = {
                    let mut tasks = self.connections.lock().unwrap();
                    if tasks[i].as_ref().is_some_and(|t| t.is_finished()) {
                        tasks[i].take()
                    } else {
                        None
                    }
                };
                if let Some(task) = ended {
                    return Err(match task.await {
                        Ok(Err(e)) => classify(&e),
                        _ => StoreError::Unavailable(format!("no connection to {}", self.url)),
                    });
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(StoreError::Unavailable(format!(
                        "no connection to {} within {wait:?}",
                        self.url
                    )));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        self.succeeded();
        Ok(())
    }

    /// Starts the connection task of `client` (0) or `subscriber` (1) unless one is running.
    fn start_connection(&self, i: usize) {
        let c = [&self.client, &self.subscriber][i];
        let mut tasks = self.connections.lock().unwrap();
        if tasks[i].as_ref().is_none_or(|t| t.is_finished()) {
            tasks[i] = Some(c.connect());
        }
    }

    /// Whether the store is reachable.
    pub fn is_up(&self) -> bool {
        self.health.up.load(Ordering::Relaxed)
    }

    fn succeeded(&self) {
        self.health.failures.store(0, Ordering::Relaxed);
        *self.health.last_success.lock().unwrap() = tokio::time::Instant::now();
        if !self.health.up.swap(true, Ordering::Relaxed) {
            tracing::info!(store = %self.url, "shared store reachable");
            self.metrics.up.set(1);
        }
    }

    fn failed(&self, why: &str) {
        let n = self.health.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let silent = self.health.last_success.lock().unwrap().elapsed() >= SILENCE_DOWN;
        if (n >= FAILURES_DOWN || silent) && self.health.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(store = %self.url, error = why, "shared store unreachable: serving from memory; admin writes answer 503");
            self.metrics.up.set(0);
        }
    }

    /// Runs one store operation under the timeout, counting it and tracking reachability.
    pub(crate) async fn op<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, StoreError> {
        if !self.is_up() && op != "ping" {
            return Err(StoreError::Unavailable(format!(
                "the shared store at {} is unreachable",
                self.url
            )));
        }
        // fred's own per-command timeout (`default_command_timeout`, the same `timeout`) is the
        // one that ends a command: it marks the command abandoned, and fred never writes an
        // abandoned command it still holds (one queued while it reconnects), so nothing runs
        // in the store after its caller gave up: no rate-limit token taken for a request
        // decided long before, no admin write landing after it answered 503. Dropping fred's
        // future instead, as a timeout of the same length around it did whenever its timer
        // fired first, skips that mark. This bound is only a safety net, over the most commands
        // one operation sends (EVALSHA, SCRIPT LOAD after NOSCRIPT, EVALSHA).
        let fred_timed_out = |e: &fred::error::Error| *e.kind() == fred::error::ErrorKind::Timeout;
        match tokio::time::timeout(self.timeout * 3 + OUTER_GRACE, f).await {
            Ok(Err(e)) if fred_timed_out(&e) => {
                self.metrics.op(op, "timeout");
                self.failed("timeout");
                Err(StoreError::Unavailable(format!(
                    "the shared store at {} did not answer within {:?}",
                    self.url, self.timeout
                )))
            }
            Ok(Ok(v)) => {
                self.metrics.op(op, "ok");
                self.succeeded();
                Ok(v)
            }
            Ok(Err(e)) => {
                let err = classify(&e);
                if matches!(err, StoreError::Unavailable(_)) {
                    self.metrics.op(op, "error");
                    self.failed(&e.to_string());
                } else {
                    // The store answered (with an error of ours): it is reachable.
                    self.metrics.op(op, "error");
                    self.succeeded();
                }
                Err(err)
            }
            Err(_) => {
                self.metrics.op(op, "timeout");
                self.failed("timeout");
                Err(StoreError::Unavailable(format!(
                    "the shared store at {} did not answer within {:?}",
                    self.url, self.timeout
                )))
            }
        }
    }

    /// One PING, sent even while unreachable (the way back up). A client whose first
    /// connection failed (a start from the cache) connects again first.
    pub async fn ping(&self) -> bool {
        for i in 0..2 {
            self.start_connection(i);
        }
        self.op("ping", self.client.ping::<String>(None))
            .await
            .is_ok()
    }

    /// `INFO server` and `INFO cluster` facts for `check`: the server version and whether it is
    /// a Redis Cluster (not supported: the scripts touch several keys).
    pub async fn server_facts(&self) -> Result<(String, bool), StoreError> {
        let info: String = self.op("read", self.client.info::<String>(None)).await?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        let cluster = info.lines().any(|l| l.trim() == "cluster_enabled:1");
        Ok((version, cluster))
    }
}

/// Whether a client error means the store is out of reach (as opposed to an answer).
fn classify(e: &fred::error::Error) -> StoreError {
    use fred::error::ErrorKind as K;
    match e.kind() {
        K::Auth => StoreError::Config(
            "the shared store refused the credentials (state.redis.url: user or password)".into(),
        ),
        K::Tls => StoreError::Config(format!("TLS with the shared store failed: {}", e.details())),
        K::IO | K::Timeout | K::Canceled | K::Backpressure | K::Unknown | K::NotFound => {
            StoreError::Unavailable(format!("shared store: {}", e.details()))
        }
        _ => StoreError::Unavailable(format!("shared store: {e}")),
    }
}

//! The shared store on Redis (or Valkey), `state.store = "redis"` (contract §6).
//!
//! Key layout (every key and the channel start with `state.redis.prefix`, shown as `P`):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `Pmeta` | hash | `version` (format), `keyId` (the sealing key's id, never the key), `created` |
//! | `Pservices` | set | the names of the service records |
//! | `Psvc:NAME` | hash | `rev`, `data`: one service (id, times, auth mode, sealed keys, applied values) |
//! | `Psigning` | hash | `rev`, `data`: the token signing keys (private halves sealed) |
//! | `Preplicas` | sorted set | live replica ids, by expiry |
//! | `Preplica:ID` | string | one replica's registration (expires after 15 s) |
//! | `Pchanges` | channel | `svc:NAME` or `signing` when a record changed |
//! | `Prl:SERVICE:POLICY:BY:BUCKET` | string | one rate-limit bucket (`ratelimit`; expires when full) |
//!
//! Every write is one compare-and-set script on the record's revision (`scripts::CAS`); a
//! creation expects revision 0 (create-if-absent). Commands run under `state.redis.timeout`.
//! Reachability follows the contract: unreachable after 3 failed commands in a row or 2 s without
//! a success; reachable again after one answered PING (tried every second by `sync`). While
//! unreachable nothing is sent: writes fail at once (`StoreError::Unavailable`) and the request
//! path never waits.

pub mod ratelimit;
pub mod scripts;
pub mod sync;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use fred::prelude::*;
use fred::types::scripts::Script;

use super::StoreError;
use super::records::{ServiceRecord, SigningRecord, StoreState};
use crate::config::RedisConfig;
use crate::crypto::Secret;
use crate::crypto::seal::{Binding, SealError, Sealer};
use crate::store::StoreMetrics;

/// The format of the records this build reads and writes (`Pmeta.version`).
pub const FORMAT_VERSION: u32 = 1;
/// Failed commands in a row that make the store unreachable.
const FAILURES_DOWN: u32 = 3;
/// Time without a successful command that makes the store unreachable.
const SILENCE_DOWN: Duration = Duration::from_secs(2);
/// How long a replica's registration lives without renewal (renewed every 5 s).
pub const REPLICA_TTL: Duration = Duration::from_secs(15);
/// The fred client's own reconnect back-off (the store being down is handled above it).
const RECONNECT_MIN_MS: u32 = 100;
const RECONNECT_MAX_MS: u32 = 2_000;

/// A replica's registration (`GET /v1/replicas`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaInfo {
    pub id: String,
    pub version: String,
    pub config_digest: String,
    /// Each service it serves and its auth mode.
    pub services: BTreeMap<String, String>,
    pub started_at: String,
}

/// What one full read found.
#[derive(Debug, Default)]
pub struct ReadAll {
    pub state: StoreState,
    /// The meta record was missing: a store that lost its data (or was never written).
    pub meta_missing: bool,
    /// Records present in the store whose secrets did not unseal (kept out of `state`).
    pub unsealable: Vec<String>,
}

/// Reachability of the store, as the request path and the admin API see it.
#[derive(Debug)]
struct Health {
    up: AtomicBool,
    failures: AtomicU32,
    last_success: Mutex<tokio::time::Instant>,
}

pub struct RedisStore {
    client: Client,
    pub(super) subscriber: Client,
    pub prefix: String,
    pub sealer: Sealer,
    /// The URL without credentials.
    pub url: String,
    pub timeout: std::time::Duration,
    pub resync: std::time::Duration,
    pub max_staleness: std::time::Duration,
    health: Health,
    metrics: StoreMetrics,
    /// The sealing key id the store's meta names (records are sealed with it).
    meta_key_id: Mutex<Option<String>>,
    /// The live replicas as last read, and this replica's id.
    replicas: Mutex<Vec<ReplicaInfo>>,
    pub replica_id: String,
    /// The connection tasks of `client` and `subscriber`. With `fail_fast`, a first connection
    /// that fails ends its task (fred reconnects only a connection that once worked): `ping`
    /// starts a new one. Aborted when the store is dropped, so that a store given up (a failed
    /// start) leaves no connection behind.
    connections: Mutex<[Option<fred::types::ConnectHandle>; 2]>,
    cas: Script,
    write_back: Script,
    read_all: Script,
    ensure_meta: Script,
    register: Script,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        for t in self.connections.get_mut().unwrap().iter().flatten() {
            t.abort();
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish()
    }
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

    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn channel(&self) -> String {
        self.key("changes")
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
        match tokio::time::timeout(self.timeout, f).await {
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

    /// The sealing key id to seal with: the one the store's meta names.
    fn seal_with(&self) -> Option<String> {
        self.meta_key_id.lock().unwrap().clone()
    }

    pub(crate) fn seal_service(&self, name: &str, rec: &ServiceRecord) -> ServiceRecord {
        let with = self.seal_with();
        let mut out = rec.clone();
        for (slot, v) in [
            ("primary", &mut out.primary_key),
            ("secondary", &mut out.secondary_key),
        ] {
            if let Some(k) = v {
                *k = Secret::new(self.sealer.seal(
                    k,
                    &Binding {
                        kind: "svc",
                        name,
                        slot,
                        revision: rec.revision,
                    },
                    with.as_deref(),
                ));
            }
        }
        out
    }

    pub(crate) fn unseal_service(
        &self,
        name: &str,
        mut rec: ServiceRecord,
    ) -> Result<ServiceRecord, SealError> {
        let revision = rec.revision;
        for (slot, v) in [
            ("primary", &mut rec.primary_key),
            ("secondary", &mut rec.secondary_key),
        ] {
            if let Some(k) = v {
                *k = self.sealer.unseal(
                    k.expose(),
                    &Binding {
                        kind: "svc",
                        name,
                        slot,
                        revision,
                    },
                )?;
            }
        }
        Ok(rec)
    }

    pub(crate) fn seal_signing(&self, rec: &SigningRecord) -> SigningRecord {
        let with = self.seal_with();
        let mut out = rec.clone();
        for k in &mut out.keys {
            k.private = Secret::new(self.sealer.seal(
                &k.private,
                &Binding {
                    kind: "signing",
                    name: &k.kid,
                    slot: "private",
                    revision: rec.revision,
                },
                with.as_deref(),
            ));
        }
        out
    }

    pub(crate) fn unseal_signing(
        &self,
        mut rec: SigningRecord,
    ) -> Result<SigningRecord, SealError> {
        let revision = rec.revision;
        for k in &mut rec.keys {
            k.private = self.sealer.unseal(
                k.private.expose(),
                &Binding {
                    kind: "signing",
                    name: &k.kid,
                    slot: "private",
                    revision,
                },
            )?;
        }
        Ok(rec)
    }

    /// Checks the meta record against this build and this replica's keys.
    fn check_meta(&self, meta: &BTreeMap<String, String>) -> Result<(), StoreError> {
        let version: u32 = meta
            .get("version")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if version > FORMAT_VERSION {
            return Err(StoreError::NotReady(format!(
                "the shared store's format version {version} is newer than this build's {FORMAT_VERSION}: upgrade this replica"
            )));
        }
        let id = meta.get("keyId").cloned().unwrap_or_default();
        let ok = match self.sealer.key_id() {
            None => id == "plain",
            Some(_) => self.sealer.key_ids().contains(&id.as_str()),
        };
        if !ok {
            return Err(StoreError::NotReady(if id == "plain" {
                "the shared store holds plaintext secrets but this replica has a sealing key".into()
            } else if self.sealer.key_id().is_none() {
                format!(
                    "the shared store's secrets are sealed (key {id}) and this replica has no state.redis.secret_key_file"
                )
            } else {
                format!(
                    "the shared store's secrets are sealed with key {id}, which is neither this replica's state.redis.secret_key_file nor its previous_secret_key_file"
                )
            }));
        }
        *self.meta_key_id.lock().unwrap() = (id != "plain").then_some(id);
        Ok(())
    }

    /// Creates the meta record when it is missing (an empty or emptied store), then checks it.
    pub async fn ensure_meta(&self) -> Result<bool, StoreError> {
        let key_id = self.sealer.key_id().unwrap_or("plain").to_string();
        let (meta, created): (BTreeMap<String, String>, i64) = self
            .op(
                "script",
                self.ensure_meta.evalsha_with_reload(
                    &self.client,
                    vec![self.key("meta")],
                    vec![
                        FORMAT_VERSION.to_string(),
                        key_id,
                        super::plan::rfc3339(SystemTime::now()),
                    ],
                ),
            )
            .await?;
        self.check_meta(&meta)?;
        Ok(created == 1)
    }

    /// The whole state, one consistent read.
    pub async fn read_all(&self) -> Result<ReadAll, StoreError> {
        let raw: Vec<Value> = self
            .op(
                "read",
                self.read_all.evalsha_with_reload(
                    &self.client,
                    vec![self.key("meta"), self.key("services"), self.key("signing")],
                    vec![self.key("svc:")],
                ),
            )
            .await?;
        let mut it = raw.into_iter();
        let meta: BTreeMap<String, String> = it
            .next()
            .map(|v| v.convert().unwrap_or_default())
            .unwrap_or_default();
        let signing: Vec<Option<String>> = it
            .next()
            .map(|v| v.convert().unwrap_or_default())
            .unwrap_or_default();
        let mut out = ReadAll {
            meta_missing: meta.is_empty(),
            ..ReadAll::default()
        };
        if !out.meta_missing {
            self.check_meta(&meta)?;
        }
        if let Some(Some(data)) = signing.get(1) {
            match serde_json::from_str::<SigningRecord>(data)
                .map_err(|e| e.to_string())
                .and_then(|r| self.unseal_signing(r).map_err(|e| e.to_string()))
            {
                Ok(r) => out.state.signing = r,
                Err(why) => {
                    self.metrics.unseal_failures.inc();
                    tracing::error!(record = "signing", error = %why, "shared-store record refused; the last known signing keys stay in force");
                    out.unsealable.push("signing".into());
                }
            }
        }
        let rest: Vec<Value> = it.collect();
        for triple in rest.chunks(3) {
            let [name, _rev, data] = triple else { continue };
            let Some(name) = name.as_string() else {
                continue;
            };
            let Some(data) = data.as_string() else {
                continue;
            };
            match serde_json::from_str::<ServiceRecord>(&data)
                .map_err(|e| e.to_string())
                .and_then(|r| self.unseal_service(&name, r).map_err(|e| e.to_string()))
            {
                Ok(r) => {
                    out.state.services.insert(name, r);
                }
                Err(why) => {
                    self.metrics.unseal_failures.inc();
                    tracing::error!(record = %name, error = %why, "shared-store record refused; the last known copy stays in force");
                    out.unsealable.push(name);
                }
            }
        }
        Ok(out)
    }

    /// Compare-and-set of a service record: `expected` is the revision it was planned on (0:
    /// create-if-absent), `next` `None` deletes it.
    pub async fn cas_service(
        &self,
        name: &str,
        expected: u64,
        next: Option<&ServiceRecord>,
    ) -> Result<(), StoreError> {
        let (data, rev) = match next {
            Some(r) => (
                serde_json::to_string(&self.seal_service(name, r)).expect("serialises"),
                r.revision,
            ),
            None => (String::new(), expected),
        };
        self.cas(
            vec![self.key(&format!("svc:{name}")), self.key("services")],
            expected,
            data,
            rev,
            name,
            &format!("svc:{name}"),
        )
        .await
    }

    /// Compare-and-set of the signing record.
    pub async fn cas_signing(&self, expected: u64, next: &SigningRecord) -> Result<(), StoreError> {
        let data = serde_json::to_string(&self.seal_signing(next)).expect("serialises");
        self.cas(
            vec![self.key("signing")],
            expected,
            data,
            next.revision,
            "",
            "signing",
        )
        .await
    }

    async fn cas(
        &self,
        keys: Vec<String>,
        expected: u64,
        data: String,
        rev: u64,
        member: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let (applied, current): (i64, String) = self
            .op(
                "script",
                self.cas.evalsha_with_reload(
                    &self.client,
                    keys,
                    vec![
                        expected.to_string(),
                        data,
                        rev.to_string(),
                        self.channel(),
                        member.to_string(),
                        message.to_string(),
                    ],
                ),
            )
            .await?;
        if applied == 1 {
            Ok(())
        } else {
            tracing::debug!(record = message, expected, current = %current, "store write lost a race; re-reading");
            Err(StoreError::Conflict)
        }
    }

    /// Writes a record back after data loss, only while its revision is the highest.
    pub async fn write_back_service(
        &self,
        name: &str,
        rec: &ServiceRecord,
    ) -> Result<bool, StoreError> {
        let data = serde_json::to_string(&self.seal_service(name, rec)).expect("serialises");
        let done: i64 = self
            .op(
                "script",
                self.write_back.evalsha_with_reload(
                    &self.client,
                    vec![self.key(&format!("svc:{name}")), self.key("services")],
                    vec![
                        rec.revision.to_string(),
                        data,
                        self.channel(),
                        name.to_string(),
                        format!("svc:{name}"),
                    ],
                ),
            )
            .await?;
        Ok(done == 1)
    }

    pub async fn write_back_signing(&self, rec: &SigningRecord) -> Result<bool, StoreError> {
        let data = serde_json::to_string(&self.seal_signing(rec)).expect("serialises");
        let done: i64 = self
            .op(
                "script",
                self.write_back.evalsha_with_reload(
                    &self.client,
                    vec![self.key("signing")],
                    vec![
                        rec.revision.to_string(),
                        data,
                        self.channel(),
                        String::new(),
                        "signing".to_string(),
                    ],
                ),
            )
            .await?;
        Ok(done == 1)
    }

    /// Registers this replica and reads the live ones.
    pub async fn register(&self, me: &ReplicaInfo) -> Result<Vec<ReplicaInfo>, StoreError> {
        let raw: Vec<String> = self
            .op(
                "script",
                self.register.evalsha_with_reload(
                    &self.client,
                    vec![self.key("replicas")],
                    vec![
                        self.key("replica:"),
                        me.id.clone(),
                        serde_json::to_string(me).expect("serialises"),
                        REPLICA_TTL.as_secs().to_string(),
                    ],
                ),
            )
            .await?;
        let list: Vec<ReplicaInfo> = raw
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect();
        self.metrics.replicas.set(list.len() as i64);
        *self.replicas.lock().unwrap() = list.clone();
        Ok(list)
    }

    /// Names `id` as the sealing key in the meta record (after a `reseal`).
    pub async fn set_meta_key_id(&self, id: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .op("write", self.client.hset(self.key("meta"), ("keyId", id)))
            .await?;
        *self.meta_key_id.lock().unwrap() = Some(id.to_string());
        Ok(())
    }

    /// The live replicas, read now without registering (`check`, `GET /v1/replicas`).
    pub async fn live_replicas(&self) -> Result<Vec<ReplicaInfo>, StoreError> {
        let ids: Vec<String> = self
            .op(
                "read",
                self.client.zrangebyscore(
                    self.key("replicas"),
                    crate::store::plan::unix_now(SystemTime::now()) as f64,
                    "+inf",
                    false,
                    None,
                ),
            )
            .await?;
        let mut out = Vec::new();
        for id in ids {
            let r: Option<String> = self
                .op("read", self.client.get(self.key(&format!("replica:{id}"))))
                .await?;
            if let Some(info) = r.and_then(|r| serde_json::from_str(&r).ok()) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// The live replicas as last read.
    pub fn replicas(&self) -> Vec<ReplicaInfo> {
        self.replicas.lock().unwrap().clone()
    }

    /// Whether another live replica serves `service` (in `mode`, or in any mode).
    pub fn others_serve(&self, service: &str, mode: Option<&str>) -> bool {
        self.replicas.lock().unwrap().iter().any(|r| {
            r.id != self.replica_id
                && r.services
                    .get(service)
                    .is_some_and(|m| mode.is_none_or(|want| m == want))
        })
    }

    /// Deletes every key under the prefix (SCAN + UNLINK, a page at a time); returns how many.
    /// For throwaway prefixes (`scoregate bench --store`), never for a fleet's own.
    pub async fn purge(&self) -> Result<u64, StoreError> {
        use fred::types::scan::Scanner;
        use futures_util::TryStreamExt;
        // The prefix is matched literally: glob characters in it are escaped.
        let mut pattern = String::with_capacity(self.prefix.len() + 1);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        let mut pages = std::pin::pin!(self.client.scan(pattern, Some(500), None));
        let mut removed = 0u64;
        while let Some(mut page) = self.op("read", pages.try_next()).await? {
            if let Some(keys) = page.take_results()
                && !keys.is_empty()
            {
                let n: u64 = self.op("write", self.client.unlink(keys)).await?;
                removed += n;
            }
        }
        Ok(removed)
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

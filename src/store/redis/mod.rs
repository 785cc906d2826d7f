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

//!
//! The store's code is split by concern: `connection` (clients, reachability, `op`), `seal`
//! (secrets in and out), `reads`, `writes`, `replicas` (the registry), `scripts` (the Lua),
//! `sync` (with the other replicas) and `ratelimit` (the rate-limit buckets' script).

mod connection;
pub mod ratelimit;
mod reads;
mod replicas;
pub mod scripts;
mod seal;
pub mod sync;
mod writes;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;

use super::records::StoreState;
use crate::crypto::seal::Sealer;
use crate::store::StoreMetrics;
use connection::Health;

/// The format of the records this build reads and writes (`Pmeta.version`).
pub const FORMAT_VERSION: u32 = 1;
/// How long a replica's registration lives without renewal (renewed every 5 s).
pub const REPLICA_TTL: Duration = Duration::from_secs(15);

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

impl RedisStore {
    /// The key `name` under the prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn channel(&self) -> String {
        self.key("changes")
    }
}

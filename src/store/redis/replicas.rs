//! The replica registry: this replica's registration (renewed by `sync`), the live replicas as
//! last read, and whether another replica serves a service.

use std::time::SystemTime;

use fred::prelude::*;

use super::{REPLICA_TTL, RedisStore, ReplicaInfo};
use crate::store::StoreError;

impl RedisStore {
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
}

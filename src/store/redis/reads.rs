//! Reading the store: the meta record (created when missing, then checked against this build
//! and this replica's sealing keys) and the whole state in one consistent read.

use std::collections::BTreeMap;
use std::time::SystemTime;

use fred::prelude::*;

use super::{FORMAT_VERSION, ReadAll, RedisStore};
use crate::store::StoreError;
use crate::store::records::{ServiceRecord, SigningRecord};

impl RedisStore {
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
                        crate::store::plan::rfc3339(SystemTime::now()),
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
}

//! The admin API's writes to the store: `regenerateKeys` (one key of a service replaced) and a
//! service's traffic split. Each is planned on the store's content, committed with a
//! compare-and-set (retried on a lost race, at most `WRITE_ATTEMPTS` times), then put in force;
//! on any error nothing changes here.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::WRITE_ATTEMPTS;
use crate::auth::keys::{KeyPair, KeySlot};
use crate::crypto::Secret;
use crate::state::{Shared, WriteError};
use crate::store::StoreError;

impl Shared {
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
}

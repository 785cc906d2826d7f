//! Keeping in step with a shared store: each full read another replica's change (or the resync)
//! brings is taken in (`apply_read`), a store that lost its data gets this replica's records
//! back (`write_back`), and the cache is written after each change.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::plan_for;
use crate::auth::keys::KeyPair;
use crate::auth::signer::SigningSet;
use crate::state::Shared;
use crate::store::StoreState;
use crate::store::redis::ReadAll;
use crate::store::redis::sync::StoreEvent;

impl Shared {
    /// Writes back what this replica knows to a store that lost its data: each record only
    /// while the store lacks it or holds a lower revision (the newest copy any replica holds
    /// wins; keys are never regenerated for it, a revoked key never comes back over a newer one).
    pub(super) async fn write_back(&self, state: &StoreState) {
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
    async fn apply_read(self: &Arc<Self>, read: ReadAll) {
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
    pub(super) async fn write_cache(&self) {
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
}

/// Follows the shared store's events until the state is gone.
pub(super) async fn follow(shared: Weak<Shared>, mut rx: mpsc::Receiver<StoreEvent>) {
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

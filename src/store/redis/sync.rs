//! Keeping a replica's memory in step with the shared store, in the background:
//! - change notifications (`Pchanges`): each names a record; a burst of them is answered with one
//!   full read (a spoofed notification costs a read, nothing more);
//! - a full read every `resync`, because pub/sub is at-most-once and a dropped subscriber
//!   connection loses messages; and one after every reconnect;
//! - the registry: this replica's registration renewed every `REGISTER_EVERY`;
//! - while the store is unreachable, a PING every second; the first answered one brings it back
//!   (and a full read).
//!
//! What it reads goes to the owner of the state (`state::Shared`) as `StoreEvent`s: this module
//! knows nothing of snapshots.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, MissedTickBehavior};

use super::{ReadAll, RedisStore, ReplicaInfo};
use crate::store::StoreError;

/// How often a replica renews its registration (it expires after `REPLICA_TTL`).
pub const REGISTER_EVERY: Duration = Duration::from_secs(5);
/// While unreachable, the store is pinged this often.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Notifications that arrive within this of each other are answered with one read.
const COALESCE: Duration = Duration::from_millis(20);
/// An unknown `kid` re-reads the signing keys at most this often.
pub const KID_REREAD_EVERY: Duration = Duration::from_secs(5);

/// What the sync task tells the state's owner.
#[derive(Debug)]
pub enum StoreEvent {
    /// A full read of the store.
    Read(Box<ReadAll>),
    /// A full read failed because this replica must not use the store (a newer format, a
    /// sealing key it does not hold).
    NotReady(String),
    /// The live replicas changed.
    Replicas(Vec<ReplicaInfo>),
}

/// Starts the sync task. `me` describes this replica for the registry (read at each renewal);
/// `kid_wanted` is notified when a token carries an unknown own `kid`.
pub fn spawn(
    store: Arc<RedisStore>,
    me: Arc<dyn Fn() -> ReplicaInfo + Send + Sync>,
    kid_wanted: Arc<Notify>,
) -> mpsc::Receiver<StoreEvent> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(run(store, me, kid_wanted, tx));
    rx
}

async fn subscribe(store: &RedisStore) -> Result<(), StoreError> {
    store
        .op("subscribe", store.subscriber.subscribe(store.channel()))
        .await
}

async fn read(store: &RedisStore, tx: &mpsc::Sender<StoreEvent>) -> bool {
    match store.read_all().await {
        Ok(r) => tx.send(StoreEvent::Read(Box::new(r))).await.is_ok(),
        Err(StoreError::NotReady(why)) => tx.send(StoreEvent::NotReady(why)).await.is_ok(),
        Err(e) => {
            tracing::debug!(error = %e, "shared-store read failed");
            true
        }
    }
}

async fn run(
    store: Arc<RedisStore>,
    me: Arc<dyn Fn() -> ReplicaInfo + Send + Sync>,
    kid_wanted: Arc<Notify>,
    tx: mpsc::Sender<StoreEvent>,
) {
    let mut messages = store.subscriber.message_rx();
    let mut reconnects = store.subscriber.reconnect_rx();
    let mut client_reconnects = store.client.reconnect_rx();
    if store.is_up() && subscribe(&store).await.is_err() {
        tracing::debug!("shared-store subscription failed; resync covers it");
    }
    let mut resync = tokio::time::interval(store.resync);
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    resync.tick().await;
    let mut register = tokio::time::interval(REGISTER_EVERY);
    register.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_kid_read = Instant::now() - KID_REREAD_EVERY;
    let mut was_up = store.is_up();
    loop {
        let mut need_read = false;
        tokio::select! {
            m = messages.recv() => {
                match m {
                    Ok(_) => {
                        // Coalesce a burst of notifications into one read.
                        tokio::time::sleep(COALESCE).await;
                        while messages.try_recv().is_ok() {}
                        need_read = true;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => need_read = true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
            r = reconnects.recv() => {
                if r.is_err() && tx.is_closed() { return; }
                // A new subscriber connection: subscribe again, and read what was missed.
                let _ = subscribe(&store).await;
                need_read = true;
            }
            r = client_reconnects.recv() => {
                if r.is_err() && tx.is_closed() { return; }
                need_read = true;
            }
            _ = resync.tick() => need_read = true,
            _ = kid_wanted.notified() => {
                if last_kid_read.elapsed() >= KID_REREAD_EVERY {
                    last_kid_read = Instant::now();
                    need_read = true;
                }
            }
            _ = register.tick() => {
                if store.is_up() {
                    match store.register(&me()).await {
                        Ok(list) => {
                            if tx.send(StoreEvent::Replicas(list)).await.is_err() { return; }
                        }
                        Err(e) => tracing::debug!(error = %e, "registration failed"),
                    }
                }
            }
            _ = ping.tick() => {
                if !store.is_up() && store.ping().await {
                    let _ = subscribe(&store).await;
                    need_read = true;
                }
            }
        }
        let up = store.is_up();
        if up && !was_up {
            need_read = true;
        }
        was_up = up;
        if need_read && up && !read(&store, &tx).await {
            return;
        }
        if tx.is_closed() {
            return;
        }
    }
}

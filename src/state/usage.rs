//! Key usage across restarts: the counts each key cell keeps (`auth::keys::KeyUsage`) are
//! written to `<state.dir>/key-usage.json` (`store::usage`) every `USAGE_WRITE_PERIOD` when they
//! changed, and once more after the drain; a start adds back what the file holds for keys still
//! in force. The hot path only bumps atomics; reading the cells and writing the file happen here,
//! off it. With `store = "redis"` every replica keeps its own file and answers with its own
//! counts.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::Shared;
use crate::auth::keys::{KeySlot, Usage};
use crate::store::usage::{self, UsageRecord, UsageRecords};

/// How often changed counts are written: a crash loses at most this much of them (a clean stop
/// loses nothing).
pub const USAGE_WRITE_PERIOD: Duration = Duration::from_secs(10);

const SLOTS: [KeySlot; 2] = [KeySlot::Primary, KeySlot::Secondary];

impl Shared {
    /// A key-mode service's usage, primary then secondary; `None` for any other service.
    pub fn key_usage(&self, name: &str) -> Option<[Usage; 2]> {
        let cell = self.keyring.lock().unwrap().get(name).cloned()?;
        Some(SLOTS.map(|s| cell.usage.slot(s).get()))
    }

    /// Every key-mode service's counts, each naming the key it counted.
    fn usage_records(&self) -> UsageRecords {
        let ring = self.keyring.lock().unwrap().clone();
        let mut all = UsageRecords::new();
        for (name, cell) in ring {
            let pair = cell.load_full();
            let slots = all.entry(name).or_default();
            for slot in SLOTS {
                let u = cell.usage.slot(slot).get();
                slots.insert(
                    slot.as_str().to_string(),
                    UsageRecord {
                        key: usage::fingerprint(pair.get(slot).expose()),
                        requests: u.requests,
                        last_used: u.last_used,
                        since: u.since,
                    },
                );
            }
        }
        all
    }

    /// At start: adds back what an earlier run counted for the keys still in force (a key
    /// replaced meanwhile starts from zero). A file that cannot be read is logged and ignored:
    /// usage is for information, never a reason not to serve.
    pub async fn restore_key_usage(&self) {
        let dir = self.snapshot().config.state_dir.clone();
        let read = tokio::task::spawn_blocking(move || usage::read(&dir))
            .await
            .expect("reading key usage does not panic");
        let records = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, file = usage::USAGE_FILE, "key usage not restored; counting from zero");
                return;
            }
        };
        let ring = self.keyring.lock().unwrap().clone();
        for (name, cell) in ring {
            let (Some(kept), pair) = (records.get(&name), cell.load_full()) else {
                continue;
            };
            for slot in SLOTS {
                match kept.get(slot.as_str()) {
                    Some(r) if r.key == usage::fingerprint(pair.get(slot).expose()) => {
                        cell.usage.slot(slot).restore(Usage {
                            requests: r.requests,
                            last_used: r.last_used,
                            since: r.since,
                        })
                    }
                    _ => {}
                }
            }
        }
    }

    /// Writes the counts when they differ from `last` (what was written before), off the
    /// runtime. Returns whether the write failed, for the caller to log once.
    async fn write_key_usage(&self, last: &mut Option<UsageRecords>) -> Result<(), String> {
        let records = self.usage_records();
        if last.as_ref() == Some(&records) {
            return Ok(());
        }
        let dir = self.snapshot().config.state_dir.clone();
        let r = records.clone();
        tokio::task::spawn_blocking(move || usage::write(&dir, &r))
            .await
            .expect("writing key usage does not panic")
            .map_err(|e| e.to_string())?;
        *last = Some(records);
        Ok(())
    }

    /// The last write, after the drain.
    pub async fn flush_key_usage(&self) {
        if let Err(e) = self.write_key_usage(&mut None).await {
            tracing::warn!(error = %e, file = usage::USAGE_FILE, "key usage not written");
        }
    }
}

/// Writes changed counts every `USAGE_WRITE_PERIOD` until aborted. A failed write is logged once
/// until a write succeeds again.
pub fn spawn_writer(shared: Arc<Shared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = None;
        let mut failing = false;
        let mut tick = tokio::time::interval(USAGE_WRITE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match shared.write_key_usage(&mut last).await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, file = usage::USAGE_FILE, "key usage not written; retrying");
                }
                Err(_) => {}
            }
        }
    })
}

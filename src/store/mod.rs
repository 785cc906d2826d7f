//! The state store: what operators change at run time and what must survive a restart — each
//! service's id, timestamps and key pair, and the token signing keys.
//!
//! `plan` computes, without side effects, what a config asks of the store; `Store::commit` writes
//! a planned state. The hot path never reads the store: the state in force lives in memory (key
//! cells and the signer, see `state`), and only admin writes and reloads go through here.
//!
//! `Store` is an enum rather than a trait object: one variant per backend (`file` today), each
//! with the same operations.

pub mod file;
pub mod plan;
pub mod records;

use std::path::PathBuf;

pub use records::{KeySlot, ServiceRecord, SigningKeyRecord, StoreState};

use crate::config::Config;

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
}

/// Where the shared state is kept.
#[derive(Debug)]
pub enum Store {
    File(file::FileStore),
}

impl Store {
    /// Opens the store the config names and reads its state. Blocking.
    pub fn open(config: &Config) -> Result<(Store, StoreState), StoreError> {
        let (f, state) = file::FileStore::open(&config.state_dir)?;
        Ok((Store::File(f), state))
    }

    /// What `scoregate check` reports of the store the config names, without changing it.
    /// Blocking.
    pub fn inspect(config: &Config) -> Result<String, StoreError> {
        let what = file::FileStore::inspect(&config.state_dir)?;
        Ok(format!("file {}: {what}", config.state_dir.display()))
    }

    /// How this store fingerprints config values it applied (presets).
    pub fn fingerprint(&self, value: &str) -> String {
        match self {
            Store::File(_) => plan::sha256_fingerprint(value),
        }
    }

    /// Makes `next` the stored state. Either all of it lands or none of it does. Runs blocking
    /// file work off the runtime.
    pub async fn commit(self: &std::sync::Arc<Self>, next: &StoreState) -> Result<(), StoreError> {
        match &**self {
            Store::File(_) => {
                let me = self.clone();
                let next = next.clone();
                tokio::task::spawn_blocking(move || match &*me {
                    Store::File(f) => f.write(&next),
                })
                .await
                .expect("the store write does not panic")
            }
        }
    }
}

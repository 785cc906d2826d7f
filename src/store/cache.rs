//! A replica's cache of the shared store (contract §6, "Start while the store is unreachable"):
//! the file store's own format (`state.json` in `state.dir`) with a `source` block — the store's
//! URL without credentials, its prefix, and when it was last read in full — written atomically
//! (mode 0600) after each successful full read, with every secret sealed as in the store. A
//! replica that cannot reach the store at start serves from it; a cache from another URL or
//! prefix is ignored.

use std::path::Path;
use std::time::SystemTime;

use super::StoreError;
use super::file::{CacheSource, FORMAT_VERSION, STATE_FILE, StateFile, read_json};
use super::records::{ServiceRecord, SigningRecord, StoreState};
use super::redis::RedisStore;

/// Writes the cache. Blocking.
pub fn write(dir: &Path, store: &RedisStore, state: &StoreState) -> Result<(), StoreError> {
    let file = StateFile {
        version: FORMAT_VERSION,
        source: Some(CacheSource {
            url: store.url.clone(),
            prefix: store.prefix.clone(),
            synced_at: super::plan::rfc3339(SystemTime::now()),
        }),
        services: state
            .services
            .iter()
            .map(|(n, r)| (n.clone(), store.seal_service(n, r)))
            .collect(),
        signing: store.seal_signing(&state.signing),
        signing_keys: Vec::new(),
    };
    let bytes = serde_json::to_vec_pretty(&file).expect("the cache serialises");
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(STATE_FILE);
    crate::files::write_atomically(&path, &bytes).map_err(|source| StoreError::Io { path, source })
}

/// Reads the cache, if there is one for this store (same URL and prefix). Records that do not
/// unseal are left out (and counted by the caller). Blocking.
pub fn read(dir: &Path, store: &RedisStore) -> Result<Option<(StoreState, String)>, StoreError> {
    let path = dir.join(STATE_FILE);
    let Some(file) = read_json::<StateFile>(&path)? else {
        return Ok(None);
    };
    let Some(source) = &file.source else {
        tracing::warn!(file = %path.display(), "state.json is a file store, not a cache of the shared store: ignored (scoregate store import copies a file store into the shared store)");
        return Ok(None);
    };
    if source.url != store.url || source.prefix != store.prefix {
        tracing::warn!(file = %path.display(), cached_url = %source.url, cached_prefix = %source.prefix, "the cache is of another store or prefix: ignored");
        return Ok(None);
    }
    let synced = source.synced_at.clone();
    let mut state = StoreState::default();
    for (name, rec) in file.services {
        match store.unseal_service(&name, rec) {
            Ok(r) => {
                state.services.insert(name, r);
            }
            Err(e) => {
                tracing::error!(record = %name, error = %e, "cached record does not unseal: left out")
            }
        }
    }
    match store.unseal_signing(file.signing) {
        Ok(s) => state.signing = s,
        Err(e) => {
            tracing::error!(error = %e, "cached signing keys do not unseal: left out");
            state.signing = SigningRecord::default();
        }
    }
    Ok(Some((state, synced)))
}

/// For `store import`: the plain file store in `dir`, if there is one (not a cache). Blocking.
pub fn read_file_store(dir: &Path) -> Result<Option<StoreState>, StoreError> {
    let path = dir.join(STATE_FILE);
    match read_json::<StateFile>(&path)? {
        Some(f) if f.source.is_none() => Ok(Some(StoreState {
            services: f.services,
            signing: if f.signing.keys.is_empty() {
                SigningRecord {
                    keys: f.signing_keys,
                    ..SigningRecord::default()
                }
            } else {
                f.signing
            },
        })),
        _ => Ok(None),
    }
}

/// The services whose records differ between two states (for the log when a file store meets
/// the shared store).
pub fn differing(a: &StoreState, b: &StoreState) -> Vec<String> {
    let names: std::collections::BTreeSet<&String> =
        a.services.keys().chain(b.services.keys()).collect();
    names
        .into_iter()
        .filter(|n| {
            let key = |r: Option<&ServiceRecord>| {
                r.map(|r| {
                    (
                        r.primary_key.clone(),
                        r.secondary_key.clone(),
                        r.auth.clone(),
                    )
                })
            };
            key(a.services.get(*n)) != key(b.services.get(*n))
        })
        .cloned()
        .collect()
}

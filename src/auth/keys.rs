//! Service keys: the primary/secondary pair of key-mode services, and the store that keeps them
//! (with each service's id and timestamps) in the state directory.
//!
//! The store is one JSON file, `services.json`, mode 0600, replaced atomically (temp file, fsync,
//! rename, fsync of the folder): a crash never leaves it half-written, and a failed write leaves
//! both the file and the keys in force unchanged. Writers are serialised by a mutex so that two
//! concurrent regenerations both land.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthMode, Config};

pub const STORE_FILE: &str = "services.json";
/// Contract: a key (preset or `keyValue`) is 32 to 128 characters of `A-Z a-z 0-9 - _`.
pub const MIN_KEY_LEN: usize = 32;
pub const MAX_KEY_LEN: usize = 128;

/// Which of the two keys a request used (the `key` label of the key-use metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Primary,
    Secondary,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Primary => "primary",
            KeyType::Secondary => "secondary",
        }
    }
}

/// The two keys in force for one service. Immutable: a regeneration publishes a new pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub primary: String,
    pub secondary: String,
}

impl KeyPair {
    /// Compares the credential with both keys in constant time (both comparisons always run, so
    /// timing tells nothing about which key, if any, matched).
    pub fn check(&self, credential: &[u8]) -> Option<KeyType> {
        let p = self.primary.as_bytes().ct_eq(credential);
        let s = self.secondary.as_bytes().ct_eq(credential);
        if bool::from(p) {
            Some(KeyType::Primary)
        } else if bool::from(s) {
            Some(KeyType::Secondary)
        } else {
            None
        }
    }
}

/// A key shared between the snapshot the hot path reads and the store that regenerates it.
pub type SharedKeys = Arc<ArcSwap<KeyPair>>;

/// 32 random bytes from the TLS provider's CSPRNG, URL-safe base64 without padding (43 chars).
pub fn generate_key() -> String {
    let mut buf = [0u8; 32];
    crate::tls::provider()
        .secure_random
        .fill(&mut buf)
        .expect("the system random generator failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Checks a preset or `keyValue` against the contract's length and alphabet.
pub fn validate_key_value(v: &str) -> Result<(), String> {
    if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&v.len()) {
        return Err(format!(
            "a key must be {MIN_KEY_LEN} to {MAX_KEY_LEN} characters long (this one has {})",
            v.len()
        ));
    }
    if !v
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err("a key may only contain A-Z a-z 0-9 - _".into());
    }
    Ok(())
}

/// What the store keeps for one service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<String>,
    /// SHA-256 of the config preset last applied, so that an unchanged preset does not undo a
    /// later `regenerateKeys`, while a changed preset replaces the stored key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_preset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_preset: Option<String>,
    /// The auth mode the record was made under; a record for the same name in another mode is a
    /// different service as far as keys go.
    #[serde(default)]
    pub auth: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    services: BTreeMap<String, ServiceRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key store {path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("{0}")]
    Invalid(String),
    #[error("service {0:?} not found")]
    UnknownService(String),
    #[error("service {0:?} is not in key mode")]
    NotKeyMode(String),
}

/// The persisted state of services, and the live key pairs handed to snapshots.
pub struct KeyStore {
    path: PathBuf,
    inner: Mutex<StoreInner>,
}

struct StoreInner {
    file: StoreFile,
    live: BTreeMap<String, SharedKeys>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl KeyStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<KeyStore, StoreError> {
        let io = |why: String| StoreError::Io {
            path: dir.join(STORE_FILE),
            why,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| io(format!("cannot create the state dir: {e}")))?;
        let path = dir.join(STORE_FILE);
        let file = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| io(format!("unreadable: {e}")))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoreFile {
                version: 1,
                services: BTreeMap::new(),
            },
            Err(e) => return Err(io(format!("cannot read: {e}"))),
        };
        Ok(KeyStore {
            path,
            inner: Mutex::new(StoreInner {
                file,
                live: BTreeMap::new(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Brings the store in line with a config: records for new services, presets applied by the
    /// contract's "latest action wins" rule, removed services dropped. Writes the file if anything
    /// changed, and only then updates the live keys. Returns each key-mode service's live keys.
    pub fn reconcile(&self, config: &Config) -> Result<BTreeMap<String, SharedKeys>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let mut next = BTreeMap::new();
        for svc in &config.services {
            let mode = svc.auth.as_str().to_string();
            let old = inner.file.services.get(&svc.name);
            let mut rec = match old {
                Some(r) => r.clone(),
                None => {
                    let now = now_rfc3339();
                    ServiceRecord {
                        id: uuid::Uuid::new_v4().to_string(),
                        created_at: now.clone(),
                        updated_at: now,
                        primary_key: None,
                        secondary_key: None,
                        primary_preset: None,
                        secondary_preset: None,
                        auth: mode.clone(),
                    }
                }
            };
            if rec.auth != mode {
                // Keys never carry over from another auth mode: switching back to key mode must
                // not bring old, possibly leaked, keys back to life.
                rec.primary_key = None;
                rec.secondary_key = None;
                rec.primary_preset = None;
                rec.secondary_preset = None;
                rec.auth = mode;
                rec.updated_at = now_rfc3339();
            }
            if svc.auth == AuthMode::Key {
                apply_preset(
                    &mut rec.primary_key,
                    &mut rec.primary_preset,
                    svc.primary_key.as_deref(),
                );
                apply_preset(
                    &mut rec.secondary_key,
                    &mut rec.secondary_preset,
                    svc.secondary_key.as_deref(),
                );
                if rec.primary_key.is_none() {
                    rec.primary_key = Some(generate_key());
                }
                if rec.secondary_key.is_none() {
                    rec.secondary_key = Some(generate_key());
                }
                if rec.primary_key == rec.secondary_key {
                    return Err(StoreError::Invalid(format!(
                        "service {:?}: the primary and secondary keys would be equal",
                        svc.name
                    )));
                }
            }
            if old != Some(&rec) && old.is_some() {
                rec.updated_at = now_rfc3339();
            }
            next.insert(svc.name.clone(), rec);
        }
        let changed = next != inner.file.services;
        if changed {
            let file = StoreFile {
                version: 1,
                services: next,
            };
            write_atomically(&self.path, &serde_json::to_vec_pretty(&file).unwrap())?;
            inner.file = file;
        }
        // Publish: reuse the live cell of a service that keeps its keys, so established snapshots
        // and the new one share it.
        let mut live = BTreeMap::new();
        for (name, rec) in &inner.file.services {
            let (Some(p), Some(s)) = (&rec.primary_key, &rec.secondary_key) else {
                continue;
            };
            let pair = KeyPair {
                primary: p.clone(),
                secondary: s.clone(),
            };
            let cell = match inner.live.get(name) {
                Some(cell) => {
                    if **cell.load() != pair {
                        cell.store(Arc::new(pair));
                    }
                    cell.clone()
                }
                None => Arc::new(ArcSwap::from_pointee(pair)),
            };
            live.insert(name.clone(), cell);
        }
        inner.live = live.clone();
        Ok(live)
    }

    pub fn record(&self, name: &str) -> Option<ServiceRecord> {
        self.inner.lock().unwrap().file.services.get(name).cloned()
    }

    pub fn keys(&self, name: &str) -> Result<KeyPair, StoreError> {
        let inner = self.inner.lock().unwrap();
        match inner.live.get(name) {
            Some(cell) => Ok((**cell.load()).clone()),
            None if inner.file.services.contains_key(name) => {
                Err(StoreError::NotKeyMode(name.into()))
            }
            None => Err(StoreError::UnknownService(name.into())),
        }
    }

    /// Replaces one key (with `value`, or a fresh random one), writes the store, then makes the new
    /// pair visible to the hot path. On a failed write nothing changes.
    pub fn regenerate(
        &self,
        name: &str,
        which: KeyType,
        value: Option<&str>,
    ) -> Result<KeyPair, StoreError> {
        if let Some(v) = value {
            validate_key_value(v).map_err(StoreError::Invalid)?;
        }
        let mut inner = self.inner.lock().unwrap();
        let Some(cell) = inner.live.get(name).cloned() else {
            return Err(if inner.file.services.contains_key(name) {
                StoreError::NotKeyMode(name.into())
            } else {
                StoreError::UnknownService(name.into())
            });
        };
        let mut pair = (**cell.load()).clone();
        let new = value.map(str::to_string).unwrap_or_else(generate_key);
        let other = match which {
            KeyType::Primary => &pair.secondary,
            KeyType::Secondary => &pair.primary,
        };
        if &new == other {
            return Err(StoreError::Invalid(
                "keyValue must differ from the other key, or both would be the same key".into(),
            ));
        }
        match which {
            KeyType::Primary => pair.primary = new.clone(),
            KeyType::Secondary => pair.secondary = new.clone(),
        }
        let mut services = inner.file.services.clone();
        let rec = services.get_mut(name).expect("live keys have a record");
        match which {
            KeyType::Primary => rec.primary_key = Some(new),
            KeyType::Secondary => rec.secondary_key = Some(new),
        }
        rec.updated_at = now_rfc3339();
        let file = StoreFile {
            version: 1,
            services,
        };
        write_atomically(&self.path, &serde_json::to_vec_pretty(&file).unwrap())?;
        inner.file = file;
        cell.store(Arc::new(pair.clone()));
        Ok(pair)
    }
}

/// Applies the contract's preset rule to one key: a preset that differs from the one last applied
/// replaces the stored key; an unchanged preset keeps whatever is stored (a later regeneration
/// wins); no preset keeps the stored key.
fn apply_preset(key: &mut Option<String>, applied: &mut Option<String>, preset: Option<&str>) {
    match preset {
        Some(p) => {
            let h = sha256_hex(p);
            if applied.as_deref() != Some(h.as_str()) {
                *key = Some(p.to_string());
                *applied = Some(h);
            }
        }
        None => *applied = None,
    }
}

/// Writes `bytes` to `path` so that readers see either the old or the new file, never a mix:
/// temp file in the same folder (mode 0600), fsync, rename over, fsync the folder.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |why: String| StoreError::Io {
        path: path.to_path_buf(),
        why,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("store"),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(format!("cannot write: {e}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceConfig;

    fn config(dir: &Path, services: Vec<ServiceConfig>) -> Config {
        let mut c = Config::new_in_code(
            "test",
            "127.0.0.1:0".parse().unwrap(),
            vec![],
            dir.to_path_buf(),
        );
        c.services = services;
        c
    }

    fn svc(name: &str, auth: AuthMode) -> ServiceConfig {
        ServiceConfig::new(name, auth, vec!["http://127.0.0.1:1".parse().unwrap()])
    }

    fn tempdir() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("scoregate-keys-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn keys_are_generated_persisted_and_reused() {
        let dir = tempdir();
        let c = config(
            &dir,
            vec![svc("iris", AuthMode::Key), svc("open", AuthMode::None)],
        );
        let live = KeyStore::open(&dir).unwrap().reconcile(&c).unwrap();
        let first = (**live["iris"].load()).clone();
        assert_eq!(first.primary.len(), 43);
        assert_ne!(first.primary, first.secondary);
        assert!(!live.contains_key("open"));
        // A second process start finds the same keys and ids.
        let store = KeyStore::open(&dir).unwrap();
        let id = store.record("iris").unwrap().id;
        let again = store.reconcile(&c).unwrap();
        assert_eq!(**again["iris"].load(), first);
        assert_eq!(store.record("iris").unwrap().id, id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(STORE_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn presets_follow_latest_action_wins() {
        let dir = tempdir();
        let preset = "p".repeat(40);
        let mut s = svc("iris", AuthMode::Key);
        s.primary_key = Some(preset.clone());
        let c = config(&dir, vec![s.clone()]);
        let store = KeyStore::open(&dir).unwrap();
        let live = store.reconcile(&c).unwrap();
        assert_eq!(live["iris"].load().primary, preset);
        // Regenerate replaces the preset, and a reload with the same preset keeps the new key.
        let regen = store.regenerate("iris", KeyType::Primary, None).unwrap();
        assert_ne!(regen.primary, preset);
        store.reconcile(&c).unwrap();
        assert_eq!(live["iris"].load().primary, regen.primary);
        // A changed preset replaces it.
        let preset2 = "q".repeat(40);
        s.primary_key = Some(preset2.clone());
        store.reconcile(&config(&dir, vec![s.clone()])).unwrap();
        assert_eq!(live["iris"].load().primary, preset2);
        // Removing the preset keeps the stored key.
        s.primary_key = None;
        store.reconcile(&config(&dir, vec![s])).unwrap();
        assert_eq!(live["iris"].load().primary, preset2);
        // Removing the service drops its keys.
        store.reconcile(&config(&dir, vec![])).unwrap();
        assert!(store.record("iris").is_none());
    }

    #[test]
    fn key_values_are_validated() {
        assert!(validate_key_value(&"a".repeat(31)).is_err());
        assert!(validate_key_value(&"a".repeat(32)).is_ok());
        assert!(validate_key_value(&"a".repeat(128)).is_ok());
        assert!(validate_key_value(&"a".repeat(129)).is_err());
        assert!(validate_key_value(&format!("{}+", "a".repeat(40))).is_err());
        assert!(validate_key_value(&format!("{}=", "a".repeat(40))).is_err());
        assert!(validate_key_value(&format!("{}-_", "a".repeat(40))).is_ok());
    }

    #[test]
    fn check_matches_either_key_only() {
        let kp = KeyPair {
            primary: "a".repeat(43),
            secondary: "b".repeat(43),
        };
        assert_eq!(kp.check("a".repeat(43).as_bytes()), Some(KeyType::Primary));
        assert_eq!(
            kp.check("b".repeat(43).as_bytes()),
            Some(KeyType::Secondary)
        );
        assert_eq!(kp.check("a".repeat(42).as_bytes()), None);
        assert_eq!(kp.check(b""), None);
    }

    #[test]
    fn failed_write_keeps_old_keys() {
        let dir = tempdir();
        let c = config(&dir, vec![svc("iris", AuthMode::Key)]);
        let store = KeyStore::open(&dir).unwrap();
        let live = store.reconcile(&c).unwrap();
        let before = (**live["iris"].load()).clone();
        // Make the folder unwritable by replacing it with a file-less path: point the store at a
        // folder that no longer exists.
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(store.regenerate("iris", KeyType::Primary, None).is_err());
        assert_eq!(**live["iris"].load(), before);
    }
}

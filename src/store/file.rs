//! The file store (`state.store = "file"`, the default): the whole state in one JSON file,
//! `<state.dir>/state.json`, mode 0600, replaced atomically (`files::write_atomically`), so a
//! crash never leaves it half-written and a failed write leaves both the file and the state in
//! force unchanged.
//!
//! Earlier versions kept two files, `services.json` (service records and keys) and
//! `token-keys.json` (signing keys); a state dir that has them and no `state.json` is read from
//! them once and written in the new format (the old files are left in place, renamed with a
//! `.migrated` suffix).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::records::{ServiceRecord, SigningKeyRecord, SigningRecord, StoreState};
use crate::files;

pub const STATE_FILE: &str = "state.json";
const LEGACY_SERVICES: &str = "services.json";
const LEGACY_KEYS: &str = "token-keys.json";
/// The file format this build reads and writes.
pub const FORMAT_VERSION: u32 = 3;

/// The file as written. With `source` set it is a replica's cache of the shared store (its
/// secrets then hold sealed blobs, see `store::cache`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StateFile {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<CacheSource>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceRecord>,
    #[serde(default)]
    pub signing: SigningRecord,
    /// Format 2 kept the signing keys as a bare list.
    #[serde(default, skip_serializing)]
    pub signing_keys: Vec<SigningKeyRecord>,
}

impl StateFile {
    fn into_state(mut self) -> StoreState {
        if self.signing.keys.is_empty() && !self.signing_keys.is_empty() {
            self.signing.keys = std::mem::take(&mut self.signing_keys);
        }
        StoreState {
            services: self.services,
            signing: self.signing,
        }
    }
}

/// Where a cache came from: the shared store's address (without credentials) and prefix, and
/// when it was last read in full.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CacheSource {
    pub url: String,
    pub prefix: String,
    pub synced_at: String,
}

#[derive(Deserialize)]
struct LegacyServices {
    #[serde(default)]
    services: BTreeMap<String, ServiceRecord>,
}

#[derive(Deserialize)]
struct LegacyKeys {
    #[serde(default)]
    keys: Vec<SigningKeyRecord>,
}

/// The state dir's store file.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// Opens the store in `dir` (created when missing): removes temp files a crash left behind
    /// and reads the state (empty when there is none yet). Blocking.
    pub fn open(dir: &Path) -> Result<(FileStore, StoreState), StoreError> {
        let io_err = |source: io::Error| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let orphans = files::remove_orphaned_temp_files(dir);
        if orphans > 0 {
            tracing::warn!(dir = %dir.display(), files = orphans, "removed temp files left by an earlier crash");
        }
        let store = FileStore {
            path: dir.join(STATE_FILE),
        };
        let state = match read_json::<StateFile>(&store.path)? {
            Some(f) if f.version > FORMAT_VERSION => {
                return Err(StoreError::Corrupt {
                    path: store.path.clone(),
                    why: format!(
                        "format version {} is newer than this build's {FORMAT_VERSION}",
                        f.version
                    ),
                });
            }
            Some(f) if f.source.is_some() => {
                return Err(StoreError::Corrupt {
                    path: store.path.clone(),
                    why: "this is a replica's cache of a shared store (it has a \"source\" block), not a file store: use state.store = \"redis\", or move it away".into(),
                });
            }
            Some(f) => f.into_state(),
            None => store.migrate(dir)?,
        };
        Ok((store, state))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `scoregate check` says of the store in `dir`, without changing it: the state file
    /// parses (when there is one) and the folder can be written (or made). Returns a summary
    /// (how many services and signing keys it holds).
    pub fn inspect(dir: &Path) -> Result<String, StoreError> {
        let path = dir.join(STATE_FILE);
        let summary = match read_json::<StateFile>(&path)? {
            Some(f) if f.version > FORMAT_VERSION => {
                return Err(StoreError::Corrupt {
                    path,
                    why: format!(
                        "format version {} is newer than this build's {FORMAT_VERSION}",
                        f.version
                    ),
                });
            }
            Some(f) => format!(
                "{} service(s), {} signing key(s)",
                f.services.len(),
                f.signing_keys.len()
            ),
            None => "empty (made at start)".into(),
        };
        writable(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(summary)
    }

    /// Reads the legacy files, if any, into the new format.
    fn migrate(&self, dir: &Path) -> Result<StoreState, StoreError> {
        let services = read_json::<LegacyServices>(&dir.join(LEGACY_SERVICES))?;
        let keys = read_json::<LegacyKeys>(&dir.join(LEGACY_KEYS))?;
        if services.is_none() && keys.is_none() {
            return Ok(StoreState::default());
        }
        let state = StoreState {
            services: services.map(|s| s.services).unwrap_or_default(),
            signing: SigningRecord {
                keys: keys.map(|k| k.keys).unwrap_or_default(),
                ..SigningRecord::default()
            },
        };
        self.write(&state)?;
        for f in [LEGACY_SERVICES, LEGACY_KEYS] {
            let p = dir.join(f);
            if p.exists() {
                let _ = std::fs::rename(&p, dir.join(format!("{f}.migrated")));
            }
        }
        tracing::info!(file = %self.path.display(), "state migrated from services.json and token-keys.json");
        Ok(state)
    }

    /// Replaces the stored state with `state`, atomically. Blocking.
    pub fn write(&self, state: &StoreState) -> Result<(), StoreError> {
        let file = StateFile {
            version: FORMAT_VERSION,
            source: None,
            services: state.services.clone(),
            signing: state.signing.clone(),
            signing_keys: Vec::new(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("the state serialises");
        files::write_atomically(&self.path, &bytes).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Whether files can be written in `dir` (or in the nearest folder above it that exists, which
/// would hold it): a temp file is made and removed.
fn writable(dir: &Path) -> io::Result<()> {
    let mut d = dir;
    while !d.exists() {
        d = d.parent().unwrap_or(Path::new("/"));
    }
    if !d.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a folder", d.display()),
        ));
    }
    let probe = d.join(format!(".scoregate-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write in {}: {e}", d.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// A JSON file, or `None` when it does not exist.
pub(super) fn read_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
) -> Result<Option<T>, StoreError> {
    match files::read_capped(path, files::MAX_STORE_FILE) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: path.to_path_buf(),
                why: e.to_string(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Secret;

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("sg-store-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn state_round_trips_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir();
        let (store, empty) = FileStore::open(&dir).unwrap();
        assert_eq!(empty, StoreState::default());
        let mut st = StoreState::default();
        st.services.insert(
            "iris".into(),
            ServiceRecord {
                id: "id".into(),
                created_at: "t".into(),
                updated_at: "t".into(),
                revision: 3,
                auth: "key".into(),
                primary_key: Some(Secret::new("a".repeat(43))),
                secondary_key: Some(Secret::new("b".repeat(43))),
                applied: Default::default(),
                primary_preset: None,
                secondary_preset: None,
                traffic: None,
                mirror_traffic: None,
            },
        );
        store.write(&st).unwrap();
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(FileStore::open(&dir).unwrap().1, st);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn legacy_files_are_migrated() {
        let dir = tempdir();
        std::fs::write(
            dir.join(LEGACY_SERVICES),
            r#"{"version":1,"services":{"iris":{"id":"i","createdAt":"c","updatedAt":"u","primaryKey":"p","secondaryKey":"s","auth":"key"}}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join(LEGACY_KEYS),
            r#"{"keys":[{"kid":"k","alg":"HS256","created":1,"private":"x"}]}"#,
        )
        .unwrap();
        let (_, st) = FileStore::open(&dir).unwrap();
        assert_eq!(
            st.services["iris"].primary_key.as_ref().unwrap().expose(),
            "p"
        );
        assert_eq!(st.signing.keys[0].kid, "k");
        assert!(dir.join(STATE_FILE).exists());
        assert!(!dir.join(LEGACY_SERVICES).exists());
        assert_eq!(FileStore::open(&dir).unwrap().1, st);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_newer_format_is_refused_not_overwritten() {
        let dir = tempdir();
        std::fs::write(dir.join(STATE_FILE), r#"{"version":99}"#).unwrap();
        assert!(matches!(
            FileStore::open(&dir),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

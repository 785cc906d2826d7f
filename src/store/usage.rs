//! `<state.dir>/key-usage.json`: how much each service key was used on this replica (requests,
//! last use, since when), written in batches by `state::usage` and read back at start.
//!
//! Always this replica's own file, with either store: usage is counted where requests arrive,
//! and writing it to a shared store on every batch would cost more than it tells. Each entry
//! names its key by a fingerprint (the first 16 hex digits of its SHA-256; keys are 32 random
//! bytes or 32+ character presets, so this reveals nothing usable), so counts are never carried
//! over to a key that replaced the one they counted while the gateway was stopped.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files;

pub const USAGE_FILE: &str = "key-usage.json";
const FORMAT_VERSION: u32 = 1;
/// A few hundred bytes per service.
const MAX_USAGE_FILE: u64 = 16 * 1024 * 1024;

/// One key's use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageRecord {
    /// Which key was counted: `fingerprint(key)`.
    pub key: String,
    pub requests: u64,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<u64>,
    /// Unix seconds.
    pub since: u64,
}

/// Per service, per slot (`primary`, `secondary`).
pub type UsageRecords = BTreeMap<String, BTreeMap<String, UsageRecord>>;

#[derive(Debug, Serialize, Deserialize)]
struct UsageFile {
    version: u32,
    services: UsageRecords,
}

/// The fingerprint a record names its key by.
pub fn fingerprint(key: &str) -> String {
    let mut f = super::plan::sha256_fingerprint(key);
    f.truncate(16);
    f
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(USAGE_FILE)
}

/// The records kept in `dir`; none when there is no file yet. Blocking.
pub fn read(dir: &Path) -> io::Result<UsageRecords> {
    let p = path(dir);
    let bytes = match files::read_capped(&p, MAX_USAGE_FILE) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(UsageRecords::new()),
        r => r?,
    };
    let file: UsageFile = serde_json::from_slice(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if file.version != FORMAT_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                file.version
            ),
        ));
    }
    Ok(file.services)
}

/// Replaces the file atomically. Blocking.
pub fn write(dir: &Path, services: &UsageRecords) -> io::Result<()> {
    let file = UsageFile {
        version: FORMAT_VERSION,
        services: services.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&file).expect("usage records serialize");
    files::write_atomically(&path(dir), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_missing_file_is_empty() {
        let dir = std::env::temp_dir().join(format!("scoregate-usage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read(&dir).unwrap(), UsageRecords::new());
        let mut r = UsageRecords::new();
        r.entry("iris".into()).or_default().insert(
            "primary".into(),
            UsageRecord {
                key: fingerprint("k".repeat(43).as_str()),
                requests: 7,
                last_used: Some(1_700_000_000),
                since: 1_600_000_000,
            },
        );
        write(&dir, &r).unwrap();
        assert_eq!(read(&dir).unwrap(), r);
        let text =
            String::from_utf8(crate::files::read_capped(&path(&dir), 1 << 20).unwrap()).unwrap();
        assert!(!text.contains(&"k".repeat(43)), "no key in the file");
        assert_eq!(fingerprint("abc").len(), 16);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Watch mode (`[server] watch = true`): a reload whenever the config, a certificate or key, or a
//! JWKS file changes.
//!
//! It polls instead of using inotify: it costs a few `stat` calls per period, needs no
//! extra dependency, and sees through symlinks. A Kubernetes Secret or ConfigMap volume updates by
//! writing a new `..2026_...` directory and atomically renaming a fresh `..data` symlink over the
//! old one, so `tls.crt -> ..data/tls.crt` keeps its path while what it reaches (inode, mtime)
//! changes; following the links, as `metadata` does, catches exactly that.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::state::Shared;

/// How often watch mode looks at the files.
const WATCH_PERIOD: Duration = Duration::from_millis(500);
/// A change must be followed by this much quiet before reloading (editors and `kubectl` write
/// several files in a burst).
const WATCH_DEBOUNCE: Duration = Duration::from_millis(1000);

/// Starts watch mode (`[server] watch = true`); the server stops it on shutdown.
pub fn spawn(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(watch_files(shared))
}

/// A file as reached through any symlinks: (mtime, inode, size), or `None` when unreadable.
type Fingerprint = Vec<Option<(SystemTime, u64, u64)>>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| {
                (
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.ino(),
                    m.len(),
                )
            })
        })
        .collect()
}

/// `fingerprint` off the runtime: a `stat` on a hung network filesystem must not stall requests.
async fn fingerprint_off_runtime(paths: &[PathBuf]) -> Fingerprint {
    let paths = paths.to_vec();
    tokio::task::spawn_blocking(move || fingerprint(&paths))
        .await
        .unwrap_or_default()
}

fn watched_paths(gw: &Shared) -> Vec<PathBuf> {
    let snap = gw.snapshot();
    let mut v: Vec<PathBuf> = gw.config_path.iter().cloned().collect();
    for c in &snap.config.tls.certificates {
        v.push(c.cert.clone());
        v.push(c.key.clone());
    }
    for t in &snap.config.tokens.trusted_issuers {
        if let crate::config::JwksSource::File(p) = &t.jwks {
            v.push(p.clone());
        }
    }
    v
}

/// Polls the config, certificate, key and JWKS files; reloads after a debounced change. A failed
/// reload keeps the old state (as for SIGHUP) and is not retried until the files change again.
async fn watch_files(gw: Arc<Shared>) {
    let mut paths = watched_paths(&gw);
    let mut last = fingerprint_off_runtime(&paths).await;
    loop {
        tokio::time::sleep(WATCH_PERIOD).await;
        let now = fingerprint_off_runtime(&paths).await;
        if now == last {
            continue;
        }
        // Debounce: wait until the files stop changing.
        let mut settled = now;
        loop {
            tokio::time::sleep(WATCH_DEBOUNCE).await;
            let again = fingerprint_off_runtime(&paths).await;
            if again == settled {
                break;
            }
            settled = again;
        }
        tracing::info!("watched file changed: reloading");
        let _ = crate::reload::reload(&gw).await;
        paths = watched_paths(&gw);
        last = fingerprint_off_runtime(&paths).await;
    }
}

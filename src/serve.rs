//! `scoregate serve`: run until SIGTERM/SIGINT, reloading on SIGHUP and (in watch mode) when a
//! watched file changes.
//!
//! Watch mode polls instead of using inotify: it costs a few `stat` calls per period, needs no
//! extra dependency, and sees through symlinks. A Kubernetes Secret or ConfigMap volume updates by
//! writing a new `..2026_...` directory and atomically renaming a fresh `..data` symlink over the
//! old one, so `tls.crt -> ..data/tls.crt` keeps its path while what it reaches (inode, mtime)
//! changes; following the links, as `metadata` does, catches exactly that.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::state::Gateway;

/// How often watch mode looks at the files.
const WATCH_PERIOD: Duration = Duration::from_millis(500);
/// A change must be followed by this much quiet before reloading (editors and `kubectl` write
/// several files in a burst).
const WATCH_DEBOUNCE: Duration = Duration::from_millis(1000);

pub async fn run(_path: PathBuf, config: Config) -> anyhow::Result<()> {
    let mut signals = crate::signals::Signals::install()?;
    let server = crate::server::start(config).await?;
    let gw = server.gateway.clone();
    if let Some(mut hup) = signals.hangup.take() {
        let g = gw.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                let _ = crate::reload::reload(&g).await;
            }
        });
    }
    signals.wait_for_stop().await;
    // Read now, not at start: a reload may have changed it.
    let drain = gw.snapshot().config.server.drain_timeout;
    server.shutdown(drain).await;
    Ok(())
}

/// Starts watch mode (`[server] watch = true`); the server stops it on shutdown.
pub(crate) fn spawn_watcher(gw: Arc<Gateway>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(watch_files(gw))
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

fn watched_paths(gw: &Gateway) -> Vec<PathBuf> {
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
async fn watch_files(gw: Arc<Gateway>) {
    let mut paths = watched_paths(&gw);
    let mut last = fingerprint(&paths);
    loop {
        tokio::time::sleep(WATCH_PERIOD).await;
        let now = fingerprint(&paths);
        if now == last {
            continue;
        }
        // Debounce: wait until the files stop changing.
        let mut settled = now;
        loop {
            tokio::time::sleep(WATCH_DEBOUNCE).await;
            let again = fingerprint(&paths);
            if again == settled {
                break;
            }
            settled = again;
        }
        tracing::info!("watched file changed: reloading");
        let _ = crate::reload::reload(&gw).await;
        paths = watched_paths(&gw);
        last = fingerprint(&paths);
    }
}

//! `scoregate serve`: run until SIGTERM/SIGINT, reloading on SIGHUP and (in watch mode) when a
//! watched file changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::state::Gateway;

/// How often watch mode looks at the files.
const WATCH_PERIOD: Duration = Duration::from_millis(500);
/// A change must be followed by this much quiet before reloading (editors and `kubectl` write
/// several files in a burst).
const WATCH_DEBOUNCE: Duration = Duration::from_millis(1000);

pub async fn run(_path: PathBuf, config: Config) -> anyhow::Result<()> {
    let drain = config.server.drain_timeout;
    let watch = config.server.watch;
    let server = crate::server::start(config).await?;
    let gw = server.gateway.clone();
    let mut hup = signal(SignalKind::hangup())?;
    let g = gw.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            let _ = crate::reload::reload(&g).await;
        }
    });
    if watch {
        tokio::spawn(watch_files(gw.clone()));
    }
    crate::signals::wait_for_stop().await;
    server.shutdown(drain).await;
    Ok(())
}

/// Identity of a file as reached through any symlinks: a Kubernetes Secret update swaps the
/// `..data` symlink, which changes the target's inode and mtime even when the path stays.
fn fingerprint(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64, u64)>> {
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

/// Polls the config, certificate, key and JWKS files; reloads after a debounced change.
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

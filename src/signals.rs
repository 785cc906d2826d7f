//! Process signals: SIGTERM/SIGINT stop gracefully (a second one exits at once); SIGHUP reloads.

use tokio::signal::unix::{SignalKind, signal};

/// Waits for the first SIGINT or SIGTERM. After it, a second one ends the process at once.
pub async fn wait_for_stop() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(1);
    });
}

//! Process signals: SIGTERM/SIGINT stop gracefully (a second one exits at once); SIGHUP reloads.
//!
//! The handlers are installed before the gateway starts serving, so a signal that arrives right
//! after `/readyz` first answers 200 is handled, not fatal.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Exit status after a second SIGTERM/SIGINT during the drain (the first one exits 0).
pub const FORCED_EXIT_CODE: i32 = 1;

pub struct Signals {
    term: Signal,
    int: Signal,
    /// SIGHUP; taken by the reload task.
    pub hangup: Option<Signal>,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hangup: Some(signal(SignalKind::hangup())?),
        })
    }

    /// Waits for the first SIGINT or SIGTERM (for a start that can be given up).
    pub async fn recv_stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: draining"),
            _ = self.int.recv() => tracing::info!("SIGINT: draining"),
        }
    }

    /// Waits for the first SIGINT or SIGTERM. After it, a second one ends the process at once.
    pub async fn wait_for_stop(mut self) {
        self.recv_stop().await;
        tokio::spawn(async move {
            tokio::select! {
                _ = self.term.recv() => {},
                _ = self.int.recv() => {},
            }
            tracing::warn!("second signal: exiting now");
            std::process::exit(FORCED_EXIT_CODE);
        });
    }
}

/// Installs the stop handlers and waits for the first SIGINT or SIGTERM (see
/// `Signals::wait_for_stop`). For callers that start serving before they wait (`demo`).
pub async fn wait_for_stop() {
    Signals::install()
        .expect("signal handlers")
        .wait_for_stop()
        .await
}

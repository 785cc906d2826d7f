//! What a start tells the operator, at INFO: the process (PID, version, config, worker threads),
//! the certificates served (serial, notAfter), and for each service its scoring URI, auth mode,
//! backends and the command that gets its credential — so that a first run shows where to go
//! next.

use crate::config::AuthMode;
use crate::state::Shared;

/// How to run this binary again, for commands printed to be pasted: its name when it was found
/// on `PATH`, else its absolute path (`cargo run` and `target/release/scoregate` alike).
pub fn program() -> String {
    let arg0 = std::env::args().next().unwrap_or_default();
    if !arg0.is_empty() && !arg0.contains('/') {
        return arg0;
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| std::fs::canonicalize(p).ok())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "scoregate".into())
}

/// Quotes a word for a POSIX shell when it needs it (paths with spaces), so printed commands
/// paste as they are.
pub fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The process line, first of all.
pub fn starting(config: &crate::config::Config) {
    tracing::info!(
        pid = std::process::id(),
        version = env!("CARGO_PKG_VERSION"),
        config = %config.source.display(),
        workers = super::workers::resolve(config.worker_threads),
        "starting scoregate"
    );
}

/// The lines after a successful start: certificates, then one per service.
pub fn served(shared: &Shared) {
    crate::tls::log_certificates(&shared.certs.current(), "serving certificate");
    let snap = shared.snapshot();
    let base = crate::admin::api::scoring_base(shared, &snap);
    let config_arg = snap
        .config
        .file
        .as_ref()
        .map(|f| format!(" --config {}", shell_word(&f.display().to_string())))
        .unwrap_or_default();
    let program = program();
    for s in &snap.config.services {
        let credential = match s.auth {
            AuthMode::Key => format!("{program} keys list {}{config_arg}", s.name),
            AuthMode::Token => format!("{program} token {}{config_arg}", s.name),
            AuthMode::None => "none needed (auth = \"none\")".into(),
        };
        tracing::info!(
            service = %s.name,
            scoring_uri = %format!("{base}/api/v1/service/{}/score", s.name),
            auth = %s.auth.as_str(),
            backends = %s.backends_summary(),
            credential = %credential,
            "service ready"
        );
    }
    if snap.config.services.is_empty() {
        tracing::warn!("no [[service]] in the config: every scoring request gets 404");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_quote_only_when_needed() {
        assert_eq!(
            shell_word("/etc/scoregate/scoregate.toml"),
            "/etc/scoregate/scoregate.toml"
        );
        assert_eq!(shell_word("/tmp/my dir/x"), "'/tmp/my dir/x'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}

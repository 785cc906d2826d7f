//! `serve --pid-file PATH`: the process id, written atomically once the listeners are bound (so
//! a PID file that exists names a gateway that accepts connections), removed on a clean exit —
//! for `kill -HUP $(cat PATH)` and init systems, as nginx's `pid` directive.

use std::path::{Path, PathBuf};

/// The written PID file; removed when dropped, if it still names this process.
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes this process's id (and a newline) to `path`, atomically. Blocking: a small file.
    pub fn write(path: &Path) -> anyhow::Result<PidFile> {
        let pid = std::process::id();
        crate::files::write_atomically(path, format!("{pid}\n").as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write the PID file {}: {e}", path.display()))?;
        // Readable by all, as PID files are (monitoring reads them); nothing secret in it.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
        tracing::info!(path = %path.display(), pid, "wrote the PID file");
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Another process may have taken the path over since (a second gateway started with the
        // same file): its file is not ours to remove.
        let ours = crate::files::read_text_capped(&self.path, crate::files::MAX_SMALL_FILE)
            .is_ok_and(|t| t.trim() == self.pid.to_string());
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the PID file");
        }
    }
}

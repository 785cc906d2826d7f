//! Reading the operator's files (config, certificates, keys, JWKS, tokens, the state store):
//! regular files only, with a size cap.
//!
//! A path that is a FIFO would block the reader until a writer shows up, and one that reaches a
//! device (`/dev/zero`) would grow the process without bound, so both are refused before they
//! are opened. Callers on the runtime run these reads through `spawn_blocking` (a hung network
//! filesystem must not freeze request handling).

use std::io::{self, Read};
use std::path::Path;

/// Config files, JWKS documents and token files are small; 4 MiB is far past any real one.
pub const MAX_SMALL_FILE: u64 = 4 * 1024 * 1024;
/// A certificate chain or key file: a long chain of RSA-4096 certificates is a few dozen KiB.
pub const MAX_PEM_FILE: u64 = 1024 * 1024;
/// The state store file: about 1 KiB per service and signing key.
pub const MAX_STORE_FILE: u64 = 64 * 1024 * 1024;

/// Reads a regular file of at most `max` bytes. Anything else (a FIFO, a device, a directory, a
/// larger file) is an error that says what was found.
pub fn read_capped(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", kind(&meta)),
        ));
    }
    if meta.len() > max {
        return Err(too_large(max));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut buf)?;
    // The file may have grown between the check and the read.
    if buf.len() as u64 > max {
        return Err(too_large(max));
    }
    Ok(buf)
}

/// `read_capped` as UTF-8 text.
pub fn read_text_capped(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_capped(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn too_large(max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("larger than the {max}-byte limit for this kind of file"),
    )
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Writes `bytes` to `path` so that readers see either the old or the new file, never a mix:
/// a temp file in the same folder, created with mode 0600 before anything is written to it,
/// fsync, rename over, fsync the folder. On error the temp file is removed and `path` is
/// untouched. Blocking.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}{TMP_MARK}{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| -> io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
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
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Marks the temp files of `write_atomically`: `.<name>.tmp-<pid>-<uuid>`.
const TMP_MARK: &str = ".tmp-";

/// Removes temp files that a crash left behind in `dir` (each may hold a full copy of the keys).
/// Returns how many were removed.
pub fn remove_orphaned_temp_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.')
            && name.contains(TMP_MARK)
            && std::fs::remove_file(e.path()).is_ok()
        {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_directories_and_large_files_are_refused() {
        let e = read_capped(Path::new("/dev/zero"), MAX_PEM_FILE).unwrap_err();
        assert!(e.to_string().contains("device"), "{e}");
        let e = read_capped(Path::new("/tmp"), MAX_PEM_FILE).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let dir = std::env::temp_dir().join(format!("sg-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; 100]).unwrap();
        assert!(read_capped(&big, 99).is_err());
        assert_eq!(read_capped(&big, 100).unwrap().len(), 100);
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            // Must return at once, not block waiting for a writer.
            let e = read_capped(&fifo, MAX_SMALL_FILE).unwrap_err();
            assert!(e.to_string().contains("FIFO"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn atomic_writes_are_0600_and_orphans_are_cleaned() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sg-atomic-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("state.json");
        write_atomically(&p, b"{}").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.join(".state.json.tmp-1-abc"), b"keys").unwrap();
        std::fs::write(dir.join("keep.json"), b"x").unwrap();
        assert_eq!(remove_orphaned_temp_files(&dir), 1);
        assert!(dir.join("keep.json").exists() && p.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

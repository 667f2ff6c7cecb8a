//! The IPC listening socket (spec/daemon.md §2.1): a stale socket file is
//! removed, a live one (another daemon answers) or a non-socket file is
//! refused, the new socket is made owner-only (0600), and it is removed
//! again on exit — only if the file is still ours.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mio::net::UnixListener;

use super::DaemonRunError;

/// The bound IPC socket; unlinks its file when dropped.
#[derive(Debug)]
pub struct IpcSocket {
    /// The listener (registered with the event loop by the caller).
    pub listener: UnixListener,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

fn err(path: &Path, reason: String) -> DaemonRunError {
    DaemonRunError::Socket {
        path: path.to_path_buf(),
        reason,
    }
}

impl IpcSocket {
    /// Binds `path` as described in the module documentation.
    pub fn bind(path: &Path) -> Result<IpcSocket, DaemonRunError> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(err(
                        path,
                        "another daemon is listening on it (stop it, or use --socket)".into(),
                    ));
                }
                fs::remove_file(path)
                    .map_err(|e| err(path, format!("cannot remove stale socket: {e}")))?;
                tracing::info!(socket = %path.display(), "removed stale socket file");
            }
            Ok(_) => {
                return Err(err(
                    path,
                    "exists and is not a socket; refusing to replace it".into(),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(path, e.to_string())),
        }
        let listener = UnixListener::bind(path).map_err(|e| err(path, e.to_string()))?;
        let cleanup = |reason: String| {
            let _ = fs::remove_file(path);
            err(path, reason)
        };
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| cleanup(format!("chmod 0600 failed: {e}")))?;
        let meta = fs::symlink_metadata(path).map_err(|e| cleanup(e.to_string()))?;
        Ok(IpcSocket {
            listener,
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for IpcSocket {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_removed_live_and_regular_refused_unlinked_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        // A stale socket file (its listener is gone).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let s = IpcSocket::bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Live: refused, and the live socket stays.
        assert!(IpcSocket::bind(&path).is_err());
        assert!(path.exists());
        drop(s);
        assert!(!path.exists());
        // A regular file is never removed.
        fs::write(&path, b"precious").unwrap();
        assert!(IpcSocket::bind(&path).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }
}

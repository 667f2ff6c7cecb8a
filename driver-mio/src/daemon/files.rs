//! The daemon's state directory: the identity file (spec/daemon.md §5.1),
//! `trust.json` (services.md §5.6), and the `received/` and `inbox/`
//! directories of the data-exchange service (services.md §7.4).
//!
//! Files holding secrets or peer data are created with mode 0600 in
//! directories created with mode 0700. Rewrites are atomic (temp file,
//! fsync, rename, fsync of the directory). Saved files never leave their
//! directory: a name must be one plain path component, and both
//! directories have a byte quota.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pilot_proto::crypto::identity::{IDENTITY_FILE_MAX, Identity};
use pilot_proto::crypto::provider::CryptoProvider;
use pilot_proto::services::handshake::TrustFile;
use rand_core::{CryptoRng, RngCore};

use super::DaemonRunError;

/// Largest `trust.json` read at start (a full store is far smaller).
pub const TRUST_FILE_MAX: u64 = 16 << 20;
/// Byte quota of `received/` (services.md §7.2, later generation: 2 GiB).
pub const RECEIVED_QUOTA: u64 = 2 << 30;
/// Byte quota of `inbox/` (services.md §7.2, later generation: 256 MiB).
pub const INBOX_QUOTA: u64 = 256 << 20;
/// Longest saved file name, in bytes (a common file-system limit).
pub const MAX_NAME: usize = 255;
/// Tries to find a free name (`name-1.ext`, `name-2.ext`, …) before
/// giving up on a save.
const NAME_TRIES: u32 = 1000;

/// The node profile file in the state directory: hostname, visibility and
/// tags as last applied, so that they survive a restart.
pub const PROFILE_FILE: &str = "profile.json";

/// The index of received files next to `received/`: one JSON line per
/// saved file, `{"bytes","from","name","received_at"}`, so `pilotctl
/// received` can say who sent what (the file system keeps no sender).
pub const RECEIVED_INDEX: &str = "received.jsonl";
/// Size at which [`RECEIVED_INDEX`] is rotated to `received.jsonl.1`
/// (the previous `.1` is dropped): the index stays under twice this.
pub const RECEIVED_INDEX_MAX: u64 = 1 << 20;

/// Appends the record of a file just saved at `path` (inside `received/`)
/// to [`RECEIVED_INDEX`] in the state directory, mode 0600, rotating it at
/// [`RECEIVED_INDEX_MAX`]. Best effort: a failure is logged, the file
/// itself is already safe.
pub fn record_received(path: &Path, bytes: usize, from: pilot_proto::addr::Addr) {
    let (Some(name), Some(state)) = (
        path.file_name().and_then(|n| n.to_str()),
        path.parent().and_then(Path::parent),
    ) else {
        return;
    };
    let index = state.join(RECEIVED_INDEX);
    let line = serde_json::json!({
        "bytes": bytes,
        "from": from.to_string(),
        "name": name,
        "received_at": jiff::Zoned::now().strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
    });
    let result = (|| -> io::Result<()> {
        if fs::metadata(&index).is_ok_and(|m| m.len() >= RECEIVED_INDEX_MAX) {
            fs::rename(&index, state.join(format!("{RECEIVED_INDEX}.1")))?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&index)?;
        f.write_all(format!("{line}\n").as_bytes())
    })();
    if let Err(e) = result {
        tracing::warn!(path = %index.display(), error = %e, "received-file index not updated");
    }
}

/// The node profile (`profile.json`).
#[derive(Debug, Default, serde::Deserialize)]
pub struct Profile {
    /// Hostname (empty = none).
    #[serde(default)]
    pub hostname: String,
    /// Public visibility.
    #[serde(default)]
    pub public: bool,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Task execution enabled (`pilotctl enable-tasks`).
    #[serde(default)]
    pub task_exec: bool,
    /// Webhook URL last set through IPC (`""`: none or cleared).
    #[serde(default)]
    pub webhook: String,
}

/// Reads the node profile; a missing file is `None`, an unreadable one is
/// logged and ignored (the daemon starts with its flags).
pub fn load_profile(path: &Path) -> Option<Profile> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "node profile unreadable; ignored");
            return None;
        }
    };
    match serde_json::from_slice(&text) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "node profile corrupt; ignored");
            None
        }
    }
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{:o}", meta.mode() & 0o777),
            "state directory is accessible by other users");
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically: a temporary file (mode 0600)
/// in the same directory is written and fsynced, renamed over `path`,
/// and the directory is fsynced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{}: no file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads at most `max` bytes of `path`; `Ok(None)` if it does not exist.
fn read_bounded(path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(Some(out))
}

/// Loads the identity at `path`, or generates one and saves it (mode
/// 0600, parent directory 0700) on first start. A file that cannot be
/// parsed, whose keys disagree, or that other users can read is refused:
/// the daemon never silently replaces an identity.
pub fn load_or_create_identity<P: CryptoProvider, R: RngCore + CryptoRng>(
    path: &Path,
    provider: &P,
    rng: &mut R,
) -> Result<(Identity, bool), DaemonRunError> {
    let err = |reason: String| DaemonRunError::Identity {
        path: path.to_path_buf(),
        reason,
    };
    if let Ok(meta) = fs::metadata(path) {
        if meta.mode() & 0o077 != 0 {
            return Err(err(format!(
                "loose permissions (mode {:o}); run: chmod 600 {}",
                meta.mode() & 0o777,
                path.display()
            )));
        }
    }
    match read_bounded(path, IDENTITY_FILE_MAX as u64) {
        Ok(Some(bytes)) => {
            let id = Identity::decode_file(provider, &bytes).map_err(|e| {
                err(format!(
                    "{e}; refusing to start (move the file away to create a new identity)"
                ))
            })?;
            Ok((id, false))
        }
        Ok(None) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                create_private_dir(parent).map_err(|e| err(e.to_string()))?;
            }
            let id = Identity::generate(provider, rng);
            let mut buf = [0u8; IDENTITY_FILE_MAX];
            let n = id.encode_file(&mut buf).map_err(|e| err(e.to_string()))?;
            let text = buf.get(..n).unwrap_or_default();
            write_atomic(path, text).map_err(|e| err(e.to_string()))?;
            Ok((id, true))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Where a key rotation keeps its new key until the identity file is
/// replaced: `<identity>.next` (`spec/daemon.md` §2.9).
pub fn next_identity_path(identity: &Path) -> PathBuf {
    let mut s = identity.as_os_str().to_owned();
    s.push(".next");
    PathBuf::from(s)
}

/// Writes `id` as an identity file at `path` atomically (mode 0600).
pub fn save_identity(path: &Path, id: &Identity) -> io::Result<()> {
    let mut buf = [0u8; IDENTITY_FILE_MAX];
    let n = id
        .encode_file(&mut buf)
        .map_err(|e| io::Error::other(e.to_string()))?;
    write_atomic(path, buf.get(..n).unwrap_or_default())
}

/// Removes `path` (absent is fine) and syncs its directory.
pub fn remove_durably(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// The identity in `<identity>.next`, if one is there and valid (an
/// unreadable one is logged and ignored: it was written atomically, so it
/// is not a half-finished rotation).
pub fn load_next_identity<P: CryptoProvider>(identity: &Path, provider: &P) -> Option<Identity> {
    let next = next_identity_path(identity);
    match read_bounded(&next, IDENTITY_FILE_MAX as u64) {
        Ok(Some(bytes)) => match Identity::decode_file(provider, &bytes) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(path = %next.display(), error = %e, "ignoring an unreadable .next identity");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(path = %next.display(), error = %e, "ignoring an unreadable .next identity");
            None
        }
    }
}

/// Loads `trust.json`; `Ok(None)` when it does not exist yet. A corrupt
/// file is refused (starting with an empty store would silently drop
/// every trust relation).
pub fn load_trust(path: &Path) -> Result<Option<TrustFile>, DaemonRunError> {
    let err = |reason: String| DaemonRunError::Trust {
        path: path.to_path_buf(),
        reason,
    };
    match read_bounded(path, TRUST_FILE_MAX) {
        Ok(Some(bytes)) => TrustFile::from_json(&bytes)
            .map(Some)
            .map_err(|e| err(format!("{e}; fix or move the file away"))),
        Ok(None) => Ok(None),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Why a received file or inbox message was not saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The name is not one plain path component.
    #[error("refused file name {0:?}")]
    BadName(String),
    /// The directory's quota would be exceeded.
    #[error("quota of {quota} bytes for {dir} exceeded")]
    Quota {
        /// The directory.
        dir: PathBuf,
        /// Its quota.
        quota: u64,
    },
    /// No free name was found.
    #[error("no free name for {0:?}")]
    NoFreeName(String),
    /// Writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A quota-bounded directory files are saved into (`received/`, `inbox/`).
#[derive(Debug)]
pub struct SaveDir {
    dir: PathBuf,
    quota: u64,
    used: u64,
}

/// Whether `name` is acceptable as a saved file name: one plain
/// component, no separators or NUL, not hidden, not too long.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

impl SaveDir {
    /// Opens (creating, mode 0700) `dir` and counts the bytes already
    /// stored in it.
    pub fn open(dir: PathBuf, quota: u64) -> io::Result<SaveDir> {
        create_private_dir(&dir)?;
        let mut used = 0u64;
        for entry in fs::read_dir(&dir)? {
            if let Ok(meta) = entry.and_then(|e| e.metadata()) {
                if meta.is_file() {
                    used = used.saturating_add(meta.len());
                }
            }
        }
        Ok(SaveDir { dir, quota, used })
    }

    /// Bytes stored.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Saves `data` under `name` (or `stem-N.ext` if taken), mode 0600,
    /// fsynced. Returns the path written.
    pub fn save(&mut self, name: &str, data: &[u8]) -> Result<PathBuf, SaveError> {
        if !plain_name(name) {
            return Err(SaveError::BadName(name.to_string()));
        }
        let len = data.len() as u64;
        if self.used.saturating_add(len) > self.quota {
            return Err(SaveError::Quota {
                dir: self.dir.clone(),
                quota: self.quota,
            });
        }
        let (stem, ext) = match name.rfind('.') {
            Some(i) if i > 0 => name.split_at(i),
            _ => (name, ""),
        };
        for n in 0..NAME_TRIES {
            let candidate = if n == 0 {
                name.to_string()
            } else {
                format!("{stem}-{n}{ext}")
            };
            if candidate.len() > MAX_NAME {
                break;
            }
            let path = self.dir.join(&candidate);
            let mut f = match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.into()),
            };
            let written = f.write_all(data).and_then(|()| f.sync_all());
            if let Err(e) = written {
                drop(f);
                let _ = fs::remove_file(&path);
                return Err(e.into());
            }
            // Keep mode 0600 even under an unusual umask.
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));
            self.used = self.used.saturating_add(len);
            return Ok(path);
        }
        Err(SaveError::NoFreeName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pilot_proto::crypto::provider::RustCrypto;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn identity_created_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/identity.json");
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (a, created) = load_or_create_identity(&path, &RustCrypto, &mut rng).unwrap();
        assert!(created);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let dmeta = fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(dmeta.mode() & 0o777, 0o700);
        let (b, created) = load_or_create_identity(&path, &RustCrypto, &mut rng).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        let text = fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["private_key"].is_string() && v["public_key"].is_string());
    }

    #[test]
    fn corrupt_or_loose_identity_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.json");
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        write_atomic(&path, b"{\"private_key\":\"AAAA\",\"public_key\":\"AAAA\"}").unwrap();
        let e = load_or_create_identity(&path, &RustCrypto, &mut rng).unwrap_err();
        assert!(e.to_string().contains("refusing"), "{e}");
        // The corrupt file is left alone.
        assert!(fs::read_to_string(&path).unwrap().contains("AAAA"));
        let (id, _) =
            load_or_create_identity(&dir.path().join("ok.json"), &RustCrypto, &mut rng).unwrap();
        let mut buf = [0u8; 512];
        let n = id.encode_file(&mut buf).unwrap();
        write_atomic(&path, &buf[..n]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_identity(&path, &RustCrypto, &mut rng).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn trust_missing_valid_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trust.json");
        assert!(load_trust(&path).unwrap().is_none());
        write_atomic(&path, br#"{"trusted":null,"pending":[]}"#).unwrap();
        let t = load_trust(&path).unwrap().unwrap();
        assert!(t.trusted.is_none());
        write_atomic(&path, b"{not json").unwrap();
        assert!(load_trust(&path).is_err());
    }

    #[test]
    fn save_dir_names_and_quota() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = SaveDir::open(dir.path().join("received"), 10).unwrap();
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "a\0b", "a\nb"] {
            assert!(
                matches!(d.save(bad, b"x"), Err(SaveError::BadName(_))),
                "{bad:?}"
            );
        }
        let p1 = d.save("a.txt", b"1234").unwrap();
        let p2 = d.save("a.txt", b"5678").unwrap();
        assert_eq!(p1.file_name().unwrap(), "a.txt");
        assert_eq!(p2.file_name().unwrap(), "a-1.txt");
        assert_eq!(fs::read(&p2).unwrap(), b"5678");
        assert_eq!(fs::metadata(&p2).unwrap().mode() & 0o777, 0o600);
        assert!(matches!(d.save("b", b"xyz"), Err(SaveError::Quota { .. })));
        // Reopening counts what is stored.
        let d2 = SaveDir::open(dir.path().join("received"), 10).unwrap();
        assert_eq!(d2.used(), 8);
        assert_eq!(
            fs::read_dir(dir.path().join("received")).unwrap().count(),
            2
        );
    }
}

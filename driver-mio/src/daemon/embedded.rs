//! The default registry: with no `--registry`, the daemon uses the
//! rendezvous already listening on 127.0.0.1:9000, or starts one
//! in-process there (registry TCP 127.0.0.1:9000, beacon UDP
//! 127.0.0.1:9001, store `rendezvous.redb` in the state directory), on its
//! own thread running the ordinary [`Server`] loop.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::rendezvous::server::{Server, ServerConfig, ServerError, StopHandle};

use super::DaemonRunError;
use super::args::{DEFAULT_BEACON, DEFAULT_REGISTRY};

/// How long the probe of an existing registry may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A rendezvous server running on a thread of this process; stopped (its
/// pending changes committed) when dropped.
#[derive(Debug)]
pub struct EmbeddedRendezvous {
    stop: StopHandle,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
    /// The registry (TCP) address it serves.
    pub registry: SocketAddr,
    /// The beacon (UDP) address it serves.
    pub beacon: SocketAddr,
}

impl Drop for EmbeddedRendezvous {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "embedded rendezvous failed"),
                Err(_) => tracing::warn!("embedded rendezvous thread panicked"),
            }
        }
    }
}

/// Whether something accepts TCP connections at `addr`.
pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok()
}

/// Makes a rendezvous store file private (mode 0600): it holds every
/// node's key, address and trust pairs.
pub fn restrict_store(store: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(store, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(store = %store.display(), error = %e, "cannot make the store private");
    }
}

/// Starts a rendezvous server on a thread, bound to `registry` and
/// `beacon`, storing into `store`.
pub fn start_embedded(
    registry: SocketAddr,
    beacon: SocketAddr,
    store: &Path,
) -> Result<EmbeddedRendezvous, ServerError> {
    let mut cfg = ServerConfig::new(store.to_path_buf());
    cfg.registry_addr = registry;
    cfg.beacon_addr = beacon;
    cfg.handle_signals = false;
    let server = Server::bind(cfg)?;
    restrict_store(store);
    let registry = server.registry_addr()?;
    let beacon = server.beacon_addr()?;
    let stop = server.stop_handle();
    let thread = std::thread::Builder::new()
        .name("rendezvous".into())
        .spawn(move || server.run())?;
    Ok(EmbeddedRendezvous {
        stop,
        thread: Some(thread),
        registry,
        beacon,
    })
}

/// The registry to use when none is configured: the one at
/// 127.0.0.1:9000 if it accepts, else a new embedded one (which also
/// serves the default beacon). If another process wins the race to bind
/// the port, its server is used.
pub fn default_registry(
    dir: &Path,
) -> Result<(SocketAddr, Option<EmbeddedRendezvous>), DaemonRunError> {
    if accepts(DEFAULT_REGISTRY) {
        tracing::info!(registry = %DEFAULT_REGISTRY, "using the rendezvous already listening");
        return Ok((DEFAULT_REGISTRY, None));
    }
    let store = dir.join("rendezvous.redb");
    match start_embedded(DEFAULT_REGISTRY, DEFAULT_BEACON, &store) {
        Ok(rv) => {
            tracing::info!(registry = %rv.registry, beacon = %rv.beacon,
                store = %store.display(), "started an embedded rendezvous");
            Ok((rv.registry, Some(rv)))
        }
        Err(e) => {
            if accepts(DEFAULT_REGISTRY) {
                return Ok((DEFAULT_REGISTRY, None));
            }
            Err(DaemonRunError::Rendezvous(format!(
                "no registry configured, none listening on {DEFAULT_REGISTRY}, and starting one \
                 failed: {e} (pass --registry HOST:PORT)"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn embedded_server_answers_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let rv = start_embedded(any, any, &dir.path().join("rv.redb")).unwrap();
        let mut s = TcpStream::connect_timeout(&rv.registry, Duration::from_secs(10)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let body = br#"{"type":"lookup","node_id":12345}"#;
        s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut reply).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(v["type"], "error", "{v}");
        let addr = rv.registry;
        drop(rv);
        // Stopped: the store was released and the port closed.
        assert!(!accepts(addr));
        assert!(dir.path().join("rv.redb").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("rv.redb"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the store is private");
    }
}

//! TLS for the registry's TCP listener (`--tls-cert`, `--tls-key`), with
//! `rustls` on the `ring` provider: loading the certificate chain and key,
//! and moving bytes between a non-blocking socket and a
//! [`rustls::ServerConnection`] for the event loop (`spec/registry.md`
//! §1.2). The framing inside the TLS stream is unchanged.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConnection;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Builds the server configuration from PEM files: `cert` holds the chain
/// (leaf first), `key` one PKCS#8, PKCS#1 or SEC1 private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate", cert.display()));
    }
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("certificate/key: {e}"))?;
    Ok(Arc::new(cfg))
}

/// A new server-side session.
pub fn accept(cfg: &Arc<rustls::ServerConfig>) -> io::Result<Box<ServerConnection>> {
    ServerConnection::new(cfg.clone())
        .map(Box::new)
        .map_err(io::Error::other)
}

/// Reads plaintext into `buf`: decrypted bytes already buffered first,
/// else more TLS records from `sock`. `Ok(0)` is the end of the stream;
/// `WouldBlock` means no plaintext yet (the handshake may have produced
/// records to send: the caller flushes with [`write_out`]).
pub fn read_plain(
    tls: &mut ServerConnection,
    sock: &mut impl Read,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        match tls.read_tls(sock)? {
            0 => return Ok(0),
            _ => {
                tls.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
        }
    }
}

/// Hands `plain` to the session and writes out what it can; returns how
/// many plaintext bytes were taken. Records that did not fit in the socket
/// stay in the session until the next call.
pub fn write_out(
    tls: &mut ServerConnection,
    sock: &mut impl Write,
    plain: &[u8],
) -> io::Result<usize> {
    let taken = if plain.is_empty() {
        0
    } else {
        tls.writer().write(plain)?
    };
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(taken)
}

//! The secure channel (port 443, `spec/services.md` §11) over any tokio
//! byte stream, usually a Pilot [`Stream`](crate::Stream): an anonymous
//! X25519 key exchange, then AES-256-GCM records. The cryptography and the
//! record format are `pilot_proto::services::secure`; this module does the
//! I/O.
//!
//! ```no_run
//! # async fn f(node: pilot_driver_tokio::Node, peer: pilot_driver_tokio::Addr) -> std::io::Result<()> {
//! use pilot_driver_tokio::secure::SecureStream;
//! use pilot_driver_tokio::WireProfile;
//! let stream = node.connect(peer, 443).await.map_err(std::io::Error::other)?;
//! let mut s = SecureStream::client(stream, WireProfile::Current).await?;
//! s.send(b"hello").await?;
//! let reply = s.recv().await?;
//! # Ok(()) }
//! ```

use std::io;

use pilot_proto::services::secure::{
    Channel, HANDSHAKE_TIMEOUT, MAX_PLAINTEXT, PUBLIC_KEY_LEN, Role, public_key,
};
use pilot_proto::wire::WireProfile;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How much is read from the inner stream at a time.
const READ_CHUNK: usize = 64 * 1024;

/// One end of a secure channel over `S`.
pub struct SecureStream<S> {
    inner: S,
    chan: Channel,
    /// Received bytes not yet forming a whole record.
    rbuf: Vec<u8>,
}

impl<S> std::fmt::Debug for SecureStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureStream")
            .field("chan", &self.chan)
            .finish_non_exhaustive()
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &mut S,
    role: Role,
) -> io::Result<([u8; 32], [u8; 32])> {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| io::Error::other(e.to_string()))?;
    let ours = public_key(&secret);
    let mut theirs = [0u8; PUBLIC_KEY_LEN];
    let run = async {
        if role == Role::Client {
            inner.write_all(&ours).await?;
            inner.flush().await?;
            inner.read_exact(&mut theirs).await?;
        } else {
            inner.read_exact(&mut theirs).await?;
            inner.write_all(&ours).await?;
            inner.flush().await?;
        }
        Ok::<_, io::Error>(())
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, run)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "secure handshake timed out"))??;
    Ok((secret, theirs))
}

impl<S: AsyncRead + AsyncWrite + Unpin> SecureStream<S> {
    async fn handshake(mut inner: S, profile: WireProfile, role: Role) -> io::Result<Self> {
        let (secret, theirs) = exchange(&mut inner, role).await?;
        let chan = Channel::new(profile, role, &secret, &theirs).map_err(invalid)?;
        Ok(SecureStream {
            inner,
            chan,
            rbuf: Vec::new(),
        })
    }

    /// The dialling side: sends its key first (10 s deadline).
    pub async fn client(inner: S, profile: WireProfile) -> io::Result<Self> {
        Self::handshake(inner, profile, Role::Client).await
    }

    /// The accepting side (10 s deadline).
    pub async fn server(inner: S, profile: WireProfile) -> io::Result<Self> {
        Self::handshake(inner, profile, Role::Server).await
    }

    /// Sends `data` as one record (several if it is larger than one record
    /// may be).
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(data.len().min(MAX_PLAINTEXT) + 64);
        for chunk in data.chunks(MAX_PLAINTEXT) {
            out.clear();
            self.chan.seal(chunk, &mut out).map_err(invalid)?;
            self.inner.write_all(&out).await?;
        }
        if data.is_empty() {
            self.chan.seal(&[], &mut out).map_err(invalid)?;
            self.inner.write_all(&out).await?;
        }
        self.inner.flush().await
    }

    /// The next record's plaintext; `None` at a clean end of stream. A
    /// record that fails authentication (or any other check) is an
    /// `InvalidData` error, and the channel should be dropped.
    pub async fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some((plain, used)) = self.chan.open(&self.rbuf).map_err(invalid)? {
                self.rbuf.drain(..used);
                return Ok(Some(plain));
            }
            let start = self.rbuf.len();
            self.rbuf.resize(start + READ_CHUNK, 0);
            let n = self.inner.read(&mut self.rbuf[start..]).await?;
            self.rbuf.truncate(start + n);
            if n == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stream ended inside a record",
                    ))
                };
            }
        }
    }

    /// Ends our side (the inner stream's shutdown).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

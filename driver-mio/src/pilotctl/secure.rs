//! `pilotctl connect --secure`: one message and one reply over the secure
//! channel (`spec/services.md` §11) on a stream opened through the daemon.
//! The cryptography is `pilot_proto::services::secure`; this is the
//! blocking I/O around it.

use std::time::{Duration, Instant};

use pilot_proto::addr::Addr;
use pilot_proto::services::secure::{Channel, HANDSHAKE_TIMEOUT, PUBLIC_KEY_LEN, Role, public_key};
use pilot_proto::wire::WireProfile;

use super::util::{CliError, CliResult, dial_error};
use crate::ipc_client::{IpcClient, IpcClientError};

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn ipc(e: IpcClientError, addr: Addr, port: u16, timeout: Duration) -> CliError {
    match e {
        IpcClientError::Timeout(_) => CliError::new(
            "timeout",
            format!(
                "no secure response from {addr}:{port} within {}s",
                timeout.as_secs_f64()
            ),
        ),
        IpcClientError::Daemon(m) => dial_error(addr, port, &m),
        other => CliError::ipc(other, "connection_failed"),
    }
}

/// Opens a stream to `addr:port`, runs the client handshake, sends `data`
/// as one record and returns the plaintext of the first record back.
pub fn exchange(
    c: &IpcClient,
    addr: Addr,
    port: u16,
    data: &[u8],
    timeout: Duration,
    profile: WireProfile,
) -> CliResult<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let conn = c
        .dial_timeout(addr, port, left(deadline))
        .map_err(|e| ipc(e, addr, port, timeout))?;
    let r = run(c, conn, data, deadline, profile).map_err(|e| match e {
        Step::Ipc(e) => ipc(e, addr, port, timeout),
        Step::Cli(e) => e,
    });
    let _ = c.close(conn);
    r
}

enum Step {
    Ipc(IpcClientError),
    Cli(CliError),
}

impl From<IpcClientError> for Step {
    fn from(e: IpcClientError) -> Self {
        Step::Ipc(e)
    }
}

fn run(
    c: &IpcClient,
    conn: u32,
    data: &[u8],
    deadline: Instant,
    profile: WireProfile,
) -> Result<Vec<u8>, Step> {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret)
        .map_err(|e| Step::Cli(CliError::new("internal", format!("randomness: {e}"))))?;
    c.send(conn, &public_key(&secret))?;
    let mut theirs = [0u8; PUBLIC_KEY_LEN];
    let hs = left(deadline).min(HANDSHAKE_TIMEOUT);
    let n = c.recv_exact_or_eof(conn, &mut theirs, hs)?;
    if n != PUBLIC_KEY_LEN {
        return Err(Step::Cli(CliError::new(
            "connection_failed",
            "the peer closed the stream during the secure handshake (is a secure-channel server listening on that port?)",
        )));
    }
    let bad = |e: pilot_proto::services::secure::SecureError| {
        Step::Cli(CliError::new(
            "connection_failed",
            format!("secure channel: {e}"),
        ))
    };
    let mut chan = Channel::new(profile, Role::Client, &secret, &theirs).map_err(bad)?;
    let mut rec = Vec::new();
    chan.seal(data, &mut rec).map_err(bad)?;
    c.send(conn, &rec)?;
    let mut buf = Vec::new();
    loop {
        if let Some((plain, _)) = chan.open(&buf).map_err(bad)? {
            return Ok(plain);
        }
        match c.recv(conn, left(deadline))? {
            Some(chunk) => buf.extend_from_slice(&chunk),
            None => {
                return Err(Step::Cli(CliError::new(
                    "connection_failed",
                    "the peer closed the stream before replying",
                )));
            }
        }
    }
}

//! One IPC client session of the daemon (`spec/daemon.md` §2): the bounded
//! reassembly buffer of received bytes, the output buffer the driver
//! drains, and what the client owns (ports, connections, requests in
//! progress).

use std::collections::BTreeSet;

use crate::node::ConnId;
use crate::wire::ipc::{EncodeError, IpcMessage, encode_error_frame, encode_frame};

/// Identifier of an IPC client, chosen by the daemon in
/// [`super::Daemon::ipc_open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

/// State of one IPC client.
#[derive(Debug, Default)]
pub(crate) struct Client {
    /// Received bytes not yet consumed; `in_start` marks the front.
    pub inbuf: Vec<u8>,
    pub in_start: usize,
    /// Bytes for the driver to write; `out_start` marks the front.
    pub out: Vec<u8>,
    pub out_start: usize,
    /// A protocol error happened: flush the output, then close.
    pub should_close: bool,
    /// The frame at the front of the input is a `Send` whose first
    /// `.1` data bytes were accepted by connection `.0`, which is full.
    pub blocked: Option<(ConnId, usize)>,
    /// Requests whose reply is still to come.
    pub inflight: usize,
    /// Ports this client bound.
    pub ports: BTreeSet<u16>,
    /// Overlay connections this client owns (dialing ones included).
    pub conns: BTreeSet<ConnId>,
    /// Connections whose reading waits for this client's output to drain.
    pub paused: BTreeSet<ConnId>,
}

impl Client {
    /// Bytes waiting for the driver.
    pub fn out_len(&self) -> usize {
        self.out.len().saturating_sub(self.out_start)
    }

    /// Unprocessed input bytes.
    pub fn in_len(&self) -> usize {
        self.inbuf.len().saturating_sub(self.in_start)
    }

    /// Appends one encoded frame to the output.
    pub fn push(&mut self, msg: &IpcMessage<'_>) -> Result<(), EncodeError> {
        let old = self.out.len();
        let len = msg.encoded_len();
        self.out.resize(old + len, 0);
        let res = match self.out.get_mut(old..) {
            Some(tail) => encode_frame(msg, tail).map(|_| ()),
            None => Ok(()),
        };
        if res.is_err() {
            self.out.truncate(old);
        }
        res
    }

    /// Appends an `Error` frame with `reason`.
    pub fn push_error(&mut self, reason: &dyn core::fmt::Display) {
        let old = self.out.len();
        // An error text is short; 64 KiB is ample (a longer one is cut).
        self.out.resize(old + 65_536, 0);
        let n = match self.out.get_mut(old..) {
            Some(tail) => encode_error_frame(reason, tail).unwrap_or(0),
            None => 0,
        };
        self.out.truncate(old + n);
    }

    /// The driver wrote `n` bytes of the output.
    pub fn consumed(&mut self, n: usize) {
        self.out_start = self.out_start.saturating_add(n).min(self.out.len());
        if self.out_start == self.out.len() {
            self.out.clear();
            self.out_start = 0;
        } else if self.out_start >= COMPACT_AT {
            self.out.drain(..self.out_start);
            self.out_start = 0;
        }
    }

    /// Drops `n` processed input bytes from the front.
    pub fn input_consumed(&mut self, n: usize) {
        self.in_start = self.in_start.saturating_add(n).min(self.inbuf.len());
        if self.in_start == self.inbuf.len() {
            self.inbuf.clear();
            self.in_start = 0;
        } else if self.in_start >= COMPACT_AT {
            self.inbuf.drain(..self.in_start);
            self.in_start = 0;
        }
    }
}

/// Front offset beyond which a buffer is compacted.
const COMPACT_AT: usize = 256 * 1024;

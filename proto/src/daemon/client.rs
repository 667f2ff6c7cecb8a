//! One IPC client session of the daemon (`spec/daemon.md` §2): the bounded
//! reassembly buffer of received bytes, the output buffer handed to the
//! driver, and what the client owns (ports, requests in progress); its
//! connections are in the daemon's connection table (`conns.rs`).

use std::collections::BTreeSet;

use crate::node::ConnId;
use crate::wire::ipc::{
    EncodeError, IpcMessage, LENGTH_PREFIX_LEN, MAX_FRAME_LEN, encode_error_frame, encode_frame,
};

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
    /// Bytes not yet handed to the driver.
    pub out: Vec<u8>,
    /// Bytes handed to the driver ([`super::Output::Ipc`]) that it has not
    /// reported written yet: they still count against the output bound.
    pub handed: usize,
    /// A protocol error happened: flush the output, then close.
    pub should_close: bool,
    /// [`super::Output::CloseClient`] was given.
    pub close_given: bool,
    /// The frame at the front of the input is a `Send` whose first
    /// `.1` data bytes were accepted by connection `.0`, which is full
    /// (with [`Client::sending`] set: the front is that `Send`'s data and
    /// `.1` is unused).
    pub blocked: Option<(ConnId, usize)>,
    /// The input is inside a `Send` frame whose header was consumed: its
    /// data goes to the connection as it arrives (`spec/daemon.md` §7).
    pub sending: Option<Sending>,
    /// Requests whose reply is still to come.
    pub inflight: usize,
    /// Ports this client bound.
    pub ports: BTreeSet<u16>,
    /// Connections whose reading waits for this client's output to drain.
    pub paused: BTreeSet<ConnId>,
}

/// The rest of a `Send` frame being written through as it arrives.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sending {
    /// Where its data goes; `None`: discarded (unknown or foreign
    /// connection, or the connection ended; counted as a send failure
    /// once).
    pub conn: Option<ConnId>,
    /// Data bytes of the frame still to come.
    pub left: usize,
}

impl Client {
    /// Connection `cid` can never take the `Send` at the front of the
    /// input (it ended): the rest of that `Send` is dropped. Returns
    /// whether the client was waiting on `cid` (its input should be
    /// processed again).
    pub fn abandon_send(&mut self, cid: ConnId) -> bool {
        if let Some(s) = self.sending.as_mut().filter(|s| s.conn == Some(cid)) {
            s.conn = None;
            let was = self.blocked.is_some_and(|(b, _)| b == cid);
            if was {
                self.blocked = None;
            }
            return was;
        }
        if self.blocked.is_none_or(|(b, _)| b != cid) {
            return false;
        }
        self.blocked = None;
        if let Ok(Some((_, used))) =
            crate::wire::ipc::parse_frame(self.inbuf.get(self.in_start..).unwrap_or(&[]))
        {
            self.input_consumed(used);
        }
        true
    }

    /// Bytes not yet written by the driver (queued here or handed over).
    pub fn out_len(&self) -> usize {
        self.out.len().saturating_add(self.handed)
    }

    /// Hands the queued output to the driver.
    pub fn take_out(&mut self) -> Vec<u8> {
        let data = core::mem::take(&mut self.out);
        self.handed = self.handed.saturating_add(data.len());
        data
    }

    /// The client is to be closed and everything it was sent is written.
    pub fn close_due(&self) -> bool {
        self.should_close && !self.close_given && self.out_len() == 0
    }

    /// Unprocessed input bytes.
    pub fn in_len(&self) -> usize {
        self.inbuf.len().saturating_sub(self.in_start)
    }

    /// Appends one encoded frame to the output.
    ///
    /// A message that cannot be framed (a reply longer than the 1 MiB body
    /// limit) is never dropped silently: an `Error` frame naming the reply
    /// and the reason goes out in its place, so the client is answered at
    /// once instead of waiting for its timeout.
    pub fn push(&mut self, msg: &IpcMessage<'_>) -> Result<(), EncodeError> {
        let old = self.out.len();
        let res = match msg.encoded_len() {
            len if len > MAX_FRAME_LEN => Err(EncodeError::TooLarge {
                len: len.saturating_sub(LENGTH_PREFIX_LEN),
            }),
            len => {
                self.out.resize(old + len, 0);
                match self.out.get_mut(old..) {
                    Some(tail) => encode_frame(msg, tail).map(|_| ()),
                    None => Ok(()),
                }
            }
        };
        if let Err(e) = &res {
            self.out.truncate(old);
            let name = msg.command().name();
            self.push_error(&format_args!("{name} not sent: {e}"));
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

    /// The driver wrote `n` bytes of what it was handed.
    pub fn consumed(&mut self, n: usize) {
        self.handed = self.handed.saturating_sub(n);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipc::{MAX_BODY_LEN, parse_frame};

    #[test]
    fn an_oversized_reply_becomes_an_error_frame() {
        let mut c = Client::default();
        let big = "x".repeat(MAX_BODY_LEN + 10);
        assert!(matches!(
            c.push(&IpcMessage::InfoOk(&big)),
            Err(EncodeError::TooLarge { .. })
        ));
        let (body, used) = parse_frame(&c.out).unwrap().unwrap();
        assert_eq!(used, c.out.len(), "exactly one frame, the error");
        let Ok(IpcMessage::Error { message, .. }) = IpcMessage::decode(body) else {
            panic!("not an error frame")
        };
        assert!(
            message.starts_with("info_ok not sent: frame body of 1048587 bytes exceeds"),
            "{message}"
        );
        // A reply that fits goes out as it is.
        let mut c = Client::default();
        c.push(&IpcMessage::InfoOk("{}")).unwrap();
        let (body, _) = parse_frame(&c.out).unwrap().unwrap();
        assert_eq!(IpcMessage::decode(body), Ok(IpcMessage::InfoOk("{}")));
    }
}

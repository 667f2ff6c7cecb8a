//! Built-in services that ride on Pilot streams (`spec/services.md`):
//! frame codecs and the protocol logic of echo, data exchange, event
//! stream, the trust handshake and the nameserver.
//!
//! Everything here is sans-IO. Stream-framed services offer an incremental
//! parser over the caller's receive buffer; service logic is a state machine
//! that takes decoded messages plus the current time and returns replies and
//! effects (store this, send that) for the daemon to carry out. Port 1000
//! (stdio) has no protocol beyond its port number,
//! [`crate::addr::ports::STDIO`] (`spec/services.md` §4).

pub mod dataexchange;
pub mod echo;
pub mod eventstream;
pub mod handshake;
pub mod host;
pub mod nameserver;
pub mod secure;
pub mod tasks;
pub mod walltime;

/// Why a service encoder refused to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The output buffer is smaller than the encoding.
    #[error("buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall {
        /// Bytes the encoding needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// A field is longer than its length prefix (or the service limit) allows.
    #[error("field of {len} bytes exceeds the limit of {max}")]
    FieldTooLong {
        /// Field length.
        len: usize,
        /// Largest allowed length.
        max: usize,
    },
}

/// Returns `out[..needed]` or [`EncodeError::BufferTooSmall`].
pub(crate) fn take_out(out: &mut [u8], needed: usize) -> Result<&mut [u8], EncodeError> {
    let available = out.len();
    out.get_mut(..needed)
        .ok_or(EncodeError::BufferTooSmall { needed, available })
}

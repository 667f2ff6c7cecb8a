//! Wire codecs: the packet header, tunnel frames, beacon messages and the
//! IPC framing (`spec/wire.md`, `spec/ipc.md`).
//!
//! Every decoder borrows from its input, never allocates and returns a typed
//! error; every encoder writes into a caller-owned buffer and returns the
//! number of bytes written. The one switch between the two wire profiles
//! is [`WireProfile`].

pub mod beacon;
pub mod ipc;
pub mod packet;
pub mod tunnel;

/// Which generation of the protocol to speak (`spec/wire.md` §5).
///
/// `Current` is the newest behaviour and the default; `Legacy` is the
/// February 2026 ("v1.8") behaviour, selected explicitly for compatibility.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum WireProfile {
    /// Newest rules (default).
    #[default]
    Current,
    /// February 2026 rules.
    Legacy,
}

/// Stream segment size the current profile sends (`spec/wire.md` §5).
pub const SEGMENT_SIZE_CURRENT: usize = 1152;
/// Stream segment size the legacy profile sends (`spec/wire.md` §5).
pub const SEGMENT_SIZE_LEGACY: usize = 4096;
/// Largest stream segment accepted by receivers of either profile
/// (`spec/wire.md` §5).
pub const MAX_RECEIVED_SEGMENT: usize = 4096;

impl WireProfile {
    /// Whether the packet decoder rejects a version nibble other than 1
    /// (`spec/wire.md` §2.4, §5).
    pub const fn checks_version(self) -> bool {
        matches!(self, WireProfile::Current)
    }

    /// Payload size of the stream segments this profile sends
    /// (`spec/wire.md` §5).
    pub const fn segment_size(self) -> usize {
        match self {
            WireProfile::Current => SEGMENT_SIZE_CURRENT,
            WireProfile::Legacy => SEGMENT_SIZE_LEGACY,
        }
    }
}

/// One UDP datagram a state machine wrote into the caller's buffer
/// (`Node::poll_transmit`, the beacon client and server): `len` bytes at the
/// start of the buffer, for UDP endpoint `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination UDP endpoint.
    pub dst: std::net::SocketAddr,
    /// Bytes written.
    pub len: usize,
}

/// Why an encoder refused to write.
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
    /// A packet payload is longer than 65535 bytes.
    #[error("payload of {len} bytes exceeds 65535")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
    },
    /// The header's payload length disagrees with the payload given.
    #[error("header says {header} payload bytes, payload has {actual}")]
    PayloadLenMismatch {
        /// Length in the header.
        header: u16,
        /// Actual payload length.
        actual: usize,
    },
    /// The header version does not fit in 4 bits.
    #[error("version {version} does not fit in 4 bits")]
    VersionTooLarge {
        /// The offending version.
        version: u8,
    },
    /// A PILT frame must carry at least a full packet header.
    #[error("PILT packet of {len} bytes is shorter than a header")]
    PacketTooShort {
        /// Length given.
        len: usize,
    },
    /// A PILS frame's sealed part must hold at least the 16-byte tag.
    #[error("PILS sealed part of {len} bytes is shorter than the tag")]
    SealedTooShort {
        /// Length given.
        len: usize,
    },
    /// A relayed inner frame must be at least 4 bytes.
    #[error("relayed inner frame of {len} bytes is shorter than 4")]
    InnerFrameTooShort {
        /// Length given.
        len: usize,
    },
}

/// Copies `bytes` to the start of `out`, or reports the shortfall.
pub(crate) fn put(out: &mut [u8], bytes: &[u8]) -> Result<usize, EncodeError> {
    let available = out.len();
    match out.get_mut(..bytes.len()) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            Ok(bytes.len())
        }
        None => Err(EncodeError::BufferTooSmall {
            needed: bytes.len(),
            available,
        }),
    }
}

/// A bounds-checked cursor for writing encodings into a caller's buffer.
pub(crate) struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl<'b> Writer<'b> {
    /// Starts writing at the beginning of `buf`, after checking that
    /// `needed` bytes fit, so later writes cannot fail half-way.
    pub(crate) fn new(buf: &'b mut [u8], needed: usize) -> Result<Self, EncodeError> {
        if buf.len() < needed {
            return Err(EncodeError::BufferTooSmall {
                needed,
                available: buf.len(),
            });
        }
        Ok(Writer { buf, pos: 0 })
    }

    /// Appends bytes.
    pub(crate) fn bytes(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let rest = self.buf.get_mut(self.pos..).unwrap_or_default();
        self.pos += put(rest, bytes)?;
        Ok(())
    }

    /// Appends one byte.
    pub(crate) fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        self.bytes(&[v])
    }

    /// Appends a big-endian `u16`.
    pub(crate) fn u16(&mut self, v: u16) -> Result<(), EncodeError> {
        self.bytes(&v.to_be_bytes())
    }

    /// Appends a big-endian `u32`.
    pub(crate) fn u32(&mut self, v: u32) -> Result<(), EncodeError> {
        self.bytes(&v.to_be_bytes())
    }

    /// Appends a big-endian `u64`.
    pub(crate) fn u64(&mut self, v: u64) -> Result<(), EncodeError> {
        self.bytes(&v.to_be_bytes())
    }

    /// Bytes written so far.
    pub(crate) fn finish(self) -> usize {
        self.pos
    }
}

/// A bounds-checked cursor over input bytes; every read is `None` when the
/// input runs out.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from the start of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { rest: buf }
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        self.rest = tail;
        Some(head)
    }

    /// Takes the next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// Reads one byte.
    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(u8::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u16`.
    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u32`.
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u64`.
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }

    /// Everything not yet read.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

//! Data exchange on port 1001 (`spec/services.md` §5): the typed frame,
//! an incremental reader over a stream buffer, the FILE, TRACE and
//! FILESTREAM payloads, file-name sanitising, the receiving service's
//! decisions and the on-disk inbox format.

use core::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::walltime::WallTime;
use super::{EncodeError, take_out};
use crate::addr::Addr;
use crate::wire::WireProfile;

/// Bytes of the frame header: `u32 type`, `u32 length` (`spec/services.md` §5.1).
pub const HEADER_LEN: usize = 8;
/// Largest payload the legacy profile accepts: 16 MiB (`spec/services.md` §5.1).
pub const MAX_PAYLOAD_LEGACY: u32 = 16 << 20;
/// Largest payload the current profile accepts by default: 64 MiB
/// (`spec/services.md` §5.1).
pub const MAX_PAYLOAD_CURRENT: u32 = 64 << 20;
/// Longest FILE name accepted, in bytes (`spec/services.md` §5.3).
pub const MAX_FILE_NAME: usize = 255;

/// The payload limit of a profile (`spec/services.md` §5.1).
pub const fn max_payload(profile: WireProfile) -> u32 {
    match profile {
        WireProfile::Current => MAX_PAYLOAD_CURRENT,
        WireProfile::Legacy => MAX_PAYLOAD_LEGACY,
    }
}

/// The type word of a frame (`spec/services.md` §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub enum FrameType {
    /// 1: UTF-8 text.
    Text,
    /// 2: raw bytes.
    Binary,
    /// 3: a JSON document (not validated).
    Json,
    /// 4: a named file, payload [`FileBody`].
    File,
    /// 5: a timed wrapper, payload [`TracePayload`].
    Trace,
    /// 7: chunked transfer, payload [`FileStreamMsg`].
    FileStream,
    /// Any other value (including the reserved 6); never one of the above.
    Other(u32),
}

impl FrameType {
    /// The type for a wire value.
    pub const fn from_u32(v: u32) -> FrameType {
        match v {
            1 => FrameType::Text,
            2 => FrameType::Binary,
            3 => FrameType::Json,
            4 => FrameType::File,
            5 => FrameType::Trace,
            7 => FrameType::FileStream,
            other => FrameType::Other(other),
        }
    }

    /// The wire value.
    pub const fn to_u32(self) -> u32 {
        match self {
            FrameType::Text => 1,
            FrameType::Binary => 2,
            FrameType::Json => 3,
            FrameType::File => 4,
            FrameType::Trace => 5,
            FrameType::FileStream => 7,
            FrameType::Other(v) => v,
        }
    }
}

impl fmt::Display for FrameType {
    /// The name used in ACKs and inbox records: `TEXT`, `BINARY`, `JSON`,
    /// `FILE`, `TRACE`, `FILESTREAM`, or `UNKNOWN(<n>)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameType::Text => f.write_str("TEXT"),
            FrameType::Binary => f.write_str("BINARY"),
            FrameType::Json => f.write_str("JSON"),
            FrameType::File => f.write_str("FILE"),
            FrameType::Trace => f.write_str("TRACE"),
            FrameType::FileStream => f.write_str("FILESTREAM"),
            FrameType::Other(v) => write!(f, "UNKNOWN({v})"),
        }
    }
}

/// Why a data-exchange frame or payload did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends before the structure does.
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The declared payload length is over the limit; the connection must close.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared length.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// Bytes follow a structure that must fill its input exactly.
    #[error("{extra} trailing bytes")]
    TrailingBytes {
        /// Number of extra bytes.
        extra: usize,
    },
    /// A FILESTREAM message has a kind byte this codec does not know.
    #[error("unknown FILESTREAM kind {0:#04x}")]
    UnknownKind(u8),
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
fn truncated(needed: usize, b: &[u8]) -> DecodeError {
    DecodeError::Truncated {
        needed,
        available: b.len(),
    }
}

/// One frame, borrowing its payload (`spec/services.md` §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The type word.
    pub frame_type: FrameType,
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Bytes of the encoding.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Writes header and payload into `out`; returns the length written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let len = u32::try_from(self.payload.len()).map_err(|_| EncodeError::FieldTooLong {
            len: self.payload.len(),
            max: u32::MAX as usize,
        })?;
        let n = self.encoded_len();
        let o = take_out(out, n)?;
        let (head, body) = o.split_at_mut(HEADER_LEN);
        head[..4].copy_from_slice(&self.frame_type.to_u32().to_be_bytes());
        head[4..].copy_from_slice(&len.to_be_bytes());
        body.copy_from_slice(self.payload);
        Ok(n)
    }

    /// Incremental parse from the front of a stream receive buffer:
    /// `Ok(None)` when more bytes are needed, `Ok(Some((frame, consumed)))`
    /// for a whole frame. A declared length over `max` is an error as soon as
    /// the header is complete, so the caller never buffers an oversized frame.
    pub fn parse(buf: &'a [u8], max: u32) -> Result<Option<(Frame<'a>, usize)>, DecodeError> {
        let (Some(t), Some(len)) = (be_u32(buf, 0), be_u32(buf, 4)) else {
            return Ok(None);
        };
        if len > max {
            return Err(DecodeError::TooLarge { len, max });
        }
        let end = HEADER_LEN.saturating_add(len as usize);
        match buf.get(HEADER_LEN..end) {
            Some(payload) => Ok(Some((
                Frame {
                    frame_type: FrameType::from_u32(t),
                    payload,
                },
                end,
            ))),
            None => Ok(None),
        }
    }

    /// Decodes exactly one frame that fills `buf`.
    pub fn decode(buf: &'a [u8], max: u32) -> Result<Frame<'a>, DecodeError> {
        match Frame::parse(buf, max)? {
            Some((f, n)) if n == buf.len() => Ok(f),
            Some((_, n)) => Err(DecodeError::TrailingBytes {
                extra: buf.len() - n,
            }),
            None => {
                let needed =
                    be_u32(buf, 4).map_or(HEADER_LEN, |l| HEADER_LEN.saturating_add(l as usize));
                Err(truncated(needed, buf))
            }
        }
    }
}

/// The payload of a FILE frame (`spec/services.md` §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileBody<'a> {
    /// `[u16 name_len][name][data]` with a name that fits.
    Named {
        /// Raw name bytes (not yet sanitised).
        name: &'a [u8],
        /// File content.
        data: &'a [u8],
    },
    /// The payload is shorter than its name header claims (or than 2
    /// bytes): all of it is data and the name is empty.
    Unnamed(&'a [u8]),
}

impl<'a> FileBody<'a> {
    /// Splits a FILE payload; never fails (malformed headers give
    /// [`FileBody::Unnamed`]).
    pub fn decode(payload: &'a [u8]) -> FileBody<'a> {
        let Some(name_len) = be_u16(payload, 0) else {
            return FileBody::Unnamed(payload);
        };
        match payload
            .get(2..)
            .and_then(|r| r.split_at_checked(name_len as usize))
        {
            Some((name, data)) => FileBody::Named { name, data },
            None => FileBody::Unnamed(payload),
        }
    }

    /// The name (empty for [`FileBody::Unnamed`]).
    pub fn name(&self) -> &'a [u8] {
        match self {
            FileBody::Named { name, .. } => name,
            FileBody::Unnamed(_) => &[],
        }
    }

    /// The file content.
    pub fn data(&self) -> &'a [u8] {
        match self {
            FileBody::Named { data, .. } => data,
            FileBody::Unnamed(d) => d,
        }
    }

    /// Bytes of the encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            FileBody::Named { name, data } => 2 + name.len() + data.len(),
            FileBody::Unnamed(d) => d.len(),
        }
    }

    /// Writes the payload into `out`. `Unnamed` writes its bytes verbatim.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let n = self.encoded_len();
        match self {
            FileBody::Named { name, data } => {
                let nl = u16::try_from(name.len()).map_err(|_| EncodeError::FieldTooLong {
                    len: name.len(),
                    max: u16::MAX as usize,
                })?;
                let o = take_out(out, n)?;
                o[..2].copy_from_slice(&nl.to_be_bytes());
                o[2..2 + name.len()].copy_from_slice(name);
                o[2 + name.len()..].copy_from_slice(data);
            }
            FileBody::Unnamed(d) => take_out(out, n)?.copy_from_slice(d),
        }
        Ok(n)
    }
}

/// The payload of a TRACE frame: `[u32 inner_type][u64 sent_at_ns][inner]`
/// (`spec/services.md` §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracePayload<'a> {
    /// Type of the wrapped message.
    pub inner_type: FrameType,
    /// Sender's clock when sending, ns since the Unix epoch.
    pub sent_at_ns: u64,
    /// The wrapped payload.
    pub inner: &'a [u8],
}

/// Bytes of the TRACE header.
pub const TRACE_HEADER_LEN: usize = 12;

impl<'a> TracePayload<'a> {
    /// Decodes a TRACE payload.
    pub fn decode(p: &'a [u8]) -> Result<TracePayload<'a>, DecodeError> {
        let (Some(t), Some(ns), Some(inner)) = (be_u32(p, 0), be_u64(p, 4), p.get(12..)) else {
            return Err(truncated(TRACE_HEADER_LEN, p));
        };
        Ok(TracePayload {
            inner_type: FrameType::from_u32(t),
            sent_at_ns: ns,
            inner,
        })
    }

    /// Writes the payload into `out`.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let n = TRACE_HEADER_LEN + self.inner.len();
        let o = take_out(out, n)?;
        o[..4].copy_from_slice(&self.inner_type.to_u32().to_be_bytes());
        o[4..12].copy_from_slice(&self.sent_at_ns.to_be_bytes());
        o[12..].copy_from_slice(self.inner);
        Ok(n)
    }
}

/// FILESTREAM chunk size the sender uses: 48 KiB (`spec/services.md` §5.5).
pub const FILESTREAM_CHUNK: u32 = 48 << 10;
/// FILESTREAM window in chunks (`spec/services.md` §5.5).
pub const FILESTREAM_WINDOW: u32 = 16;
/// Bytes of the FILESTREAM transfer ID (`spec/services.md` §5.5).
pub const TRANSFER_ID_LEN: usize = 16;

/// Body of one FILESTREAM message, by kind (`spec/services.md` §5.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileStreamBody<'a> {
    /// 0x01: announce a transfer.
    Init {
        /// File size in bytes.
        size: u64,
        /// SHA-256 of the whole file.
        sha256: [u8; 32],
        /// Chunk size the sender will use.
        chunk_size: u32,
        /// Raw file name.
        name: &'a [u8],
    },
    /// 0x02: file bytes at `offset`.
    Chunk {
        /// Offset of `data` in the file.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
    },
    /// 0x03: receiver's highest contiguous offset.
    Ack(u64),
    /// 0x04: sender finished.
    Done,
    /// 0x05: receiver accepts and names the offset to resume from.
    InitAck(u64),
    /// 0x06: final status; layout not pinned down, kept opaque.
    Complete(&'a [u8]),
    /// 0x07: abort with a reason; layout not pinned down, kept opaque.
    Abort(&'a [u8]),
}

/// One FILESTREAM message: `[u8 kind][16-byte transfer id][body]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStreamMsg<'a> {
    /// First 16 bytes of SHA-256 of the file content.
    pub transfer_id: [u8; TRANSFER_ID_LEN],
    /// The kind-specific body.
    pub body: FileStreamBody<'a>,
}

impl<'a> FileStreamMsg<'a> {
    /// The kind byte of this message.
    pub fn kind(&self) -> u8 {
        match self.body {
            FileStreamBody::Init { .. } => 0x01,
            FileStreamBody::Chunk { .. } => 0x02,
            FileStreamBody::Ack(_) => 0x03,
            FileStreamBody::Done => 0x04,
            FileStreamBody::InitAck(_) => 0x05,
            FileStreamBody::Complete(_) => 0x06,
            FileStreamBody::Abort(_) => 0x07,
        }
    }

    /// Decodes a type-7 payload. Fixed-layout bodies must fill the payload exactly.
    pub fn decode(p: &'a [u8]) -> Result<FileStreamMsg<'a>, DecodeError> {
        const PREFIX: usize = 1 + TRANSFER_ID_LEN;
        let (Some(&kind), Some(id), Some(body)) = (p.first(), p.get(1..PREFIX), p.get(PREFIX..))
        else {
            return Err(truncated(PREFIX, p));
        };
        let mut transfer_id = [0u8; TRANSFER_ID_LEN];
        transfer_id.copy_from_slice(id);
        let exact = |need: usize| -> Result<(), DecodeError> {
            match body.len().cmp(&need) {
                core::cmp::Ordering::Less => Err(truncated(PREFIX + need, p)),
                core::cmp::Ordering::Greater => Err(DecodeError::TrailingBytes {
                    extra: body.len() - need,
                }),
                core::cmp::Ordering::Equal => Ok(()),
            }
        };
        let u64_at = |at: usize| be_u64(body, at).ok_or(truncated(PREFIX + at + 8, p));
        let body = match kind {
            0x01 => {
                let nl = be_u16(body, 44).ok_or(truncated(PREFIX + 46, p))? as usize;
                exact(46 + nl)?;
                let mut sha256 = [0u8; 32];
                sha256.copy_from_slice(body.get(8..40).ok_or(truncated(PREFIX + 40, p))?);
                FileStreamBody::Init {
                    size: u64_at(0)?,
                    sha256,
                    chunk_size: be_u32(body, 40).ok_or(truncated(PREFIX + 44, p))?,
                    name: body.get(46..).unwrap_or_default(),
                }
            }
            0x02 => FileStreamBody::Chunk {
                offset: u64_at(0)?,
                data: body.get(8..).unwrap_or_default(),
            },
            0x03 => {
                exact(8)?;
                FileStreamBody::Ack(u64_at(0)?)
            }
            0x04 => {
                exact(0)?;
                FileStreamBody::Done
            }
            0x05 => {
                exact(8)?;
                FileStreamBody::InitAck(u64_at(0)?)
            }
            0x06 => FileStreamBody::Complete(body),
            0x07 => FileStreamBody::Abort(body),
            k => return Err(DecodeError::UnknownKind(k)),
        };
        Ok(FileStreamMsg { transfer_id, body })
    }

    /// Bytes of the encoding.
    pub fn encoded_len(&self) -> usize {
        1 + TRANSFER_ID_LEN
            + match self.body {
                FileStreamBody::Init { name, .. } => 46 + name.len(),
                FileStreamBody::Chunk { data, .. } => 8 + data.len(),
                FileStreamBody::Ack(_) | FileStreamBody::InitAck(_) => 8,
                FileStreamBody::Done => 0,
                FileStreamBody::Complete(b) | FileStreamBody::Abort(b) => b.len(),
            }
    }

    /// Writes the payload into `out`.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        if let FileStreamBody::Init { name, .. } = self.body {
            if name.len() > u16::MAX as usize {
                return Err(EncodeError::FieldTooLong {
                    len: name.len(),
                    max: u16::MAX as usize,
                });
            }
        }
        let n = self.encoded_len();
        let o = take_out(out, n)?;
        o[0] = self.kind();
        o[1..17].copy_from_slice(&self.transfer_id);
        let b = &mut o[17..];
        match self.body {
            FileStreamBody::Init {
                size,
                sha256,
                chunk_size,
                name,
            } => {
                b[..8].copy_from_slice(&size.to_be_bytes());
                b[8..40].copy_from_slice(&sha256);
                b[40..44].copy_from_slice(&chunk_size.to_be_bytes());
                b[44..46].copy_from_slice(&(name.len() as u16).to_be_bytes());
                b[46..].copy_from_slice(name);
            }
            FileStreamBody::Chunk { offset, data } => {
                b[..8].copy_from_slice(&offset.to_be_bytes());
                b[8..].copy_from_slice(data);
            }
            FileStreamBody::Ack(v) | FileStreamBody::InitAck(v) => {
                b.copy_from_slice(&v.to_be_bytes())
            }
            FileStreamBody::Done => {}
            FileStreamBody::Complete(x) | FileStreamBody::Abort(x) => b.copy_from_slice(x),
        }
        Ok(n)
    }
}

/// Why a received file name was refused (`spec/services.md` §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileNameError {
    /// The name is empty.
    #[error("empty file name")]
    Empty,
    /// The name is longer than [`MAX_FILE_NAME`] bytes.
    #[error("file name of {0} bytes is too long")]
    TooLong(usize),
    /// The name is not valid UTF-8.
    #[error("file name is not UTF-8")]
    NotUtf8,
    /// The name is `.` or `..`.
    #[error("file name is a dot entry")]
    DotEntry,
    /// The name contains `/`, `\`, `:`, NUL or another control character.
    #[error("file name contains a forbidden character")]
    ForbiddenChar,
}

/// Checks a peer-supplied file name so it can only name a plain file
/// directly inside the receive directory (`spec/services.md` §5.3).
pub fn sanitize_file_name(name: &[u8]) -> Result<&str, FileNameError> {
    if name.is_empty() {
        return Err(FileNameError::Empty);
    }
    if name.len() > MAX_FILE_NAME {
        return Err(FileNameError::TooLong(name.len()));
    }
    let s = core::str::from_utf8(name).map_err(|_| FileNameError::NotUtf8)?;
    if s == "." || s == ".." {
        return Err(FileNameError::DotEntry);
    }
    if s.chars()
        .any(|c| matches!(c, '/' | '\\' | ':') || c.is_control())
    {
        return Err(FileNameError::ForbiddenChar);
    }
    Ok(s)
}

/// Name under which a received file is stored:
/// `<stem>-<YYYYMMDD-HHMMSS.mmm>[-<seq:06>]<ext>`, where `<ext>` starts at
/// the last `.` of the sanitised name (`spec/services.md` §5.4).
pub fn received_file_name(safe_name: &str, at: WallTime, seq: Option<u32>) -> String {
    let (stem, ext) = match safe_name.rfind('.') {
        Some(i) => safe_name.split_at(i),
        None => (safe_name, ""),
    };
    let stamp = at.file_stamp();
    match seq {
        Some(n) => format!("{stem}-{stamp}-{:06}{ext}", n % 1_000_000),
        None => format!("{stem}-{stamp}{ext}"),
    }
}

/// Name under which an inbox message is stored:
/// `<TYPE>-<YYYYMMDD-HHMMSS.mmm>[-<seq:06>].json` (`spec/services.md` §5.4).
pub fn inbox_file_name(t: FrameType, at: WallTime, seq: Option<u32>) -> String {
    let stamp = at.file_stamp();
    match seq {
        Some(n) => format!("{t}-{stamp}-{:06}.json", n % 1_000_000),
        None => format!("{t}-{stamp}.json"),
    }
}

/// One inbox record, keys in sorted order (`spec/services.md` §5.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxMessage {
    /// Payload length in bytes.
    pub bytes: u64,
    /// The payload as text (legacy: always, lossily; current: when UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The payload in standard base64 (current profile, non-UTF-8 or BINARY).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
    /// `utf8` or `base64` (current profile only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_encoding: Option<String>,
    /// Sender address, `N:XXXX.XXXX.XXXX`.
    pub from: String,
    /// RFC 3339 reception time.
    pub received_at: String,
    /// `TEXT`, `JSON` or `BINARY`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// Why an inbox record did not decode.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// The document is not a valid inbox record.
    #[error("bad inbox JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl InboxMessage {
    /// Builds the record for a payload. The legacy profile stores the
    /// payload as lossy text, as v1.8 did; the current profile keeps bytes
    /// exact, base64-encoding BINARY and non-UTF-8 payloads.
    pub fn new(
        kind: FrameType,
        from: Addr,
        payload: &[u8],
        at: WallTime,
        profile: WireProfile,
    ) -> InboxMessage {
        let text = core::str::from_utf8(payload).ok();
        let (data, data_b64, data_encoding) = match profile {
            WireProfile::Legacy => (
                Some(String::from_utf8_lossy(payload).into_owned()),
                None,
                None,
            ),
            WireProfile::Current => match text {
                Some(t) if kind != FrameType::Binary => {
                    (Some(t.to_owned()), None, Some("utf8".to_owned()))
                }
                _ => (None, Some(B64.encode(payload)), Some("base64".to_owned())),
            },
        };
        InboxMessage {
            bytes: payload.len() as u64,
            data,
            data_b64,
            data_encoding,
            from: from.to_string(),
            received_at: at.rfc3339().to_string(),
            kind: kind.to_string(),
        }
    }

    /// The compact JSON document written to disk.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a stored record.
    pub fn from_json(text: &str) -> Result<InboxMessage, InboxError> {
        Ok(serde_json::from_str(text)?)
    }

    /// The payload bytes, when the record holds them exactly (base64, or
    /// text from the current profile).
    pub fn payload(&self) -> Option<Vec<u8>> {
        match (&self.data_b64, &self.data, self.data_encoding.as_deref()) {
            (Some(b), _, Some("base64")) => B64.decode(b).ok(),
            (_, Some(t), Some("utf8")) => Some(t.as_bytes().to_vec()),
            _ => None,
        }
    }
}

/// What the daemon must store for one received frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Store<'a> {
    /// Write `data` to a new file `file_name` in the received-files directory.
    File {
        /// File name (already sanitised; no directory part).
        file_name: String,
        /// The sanitised original name, for the `file.received` event.
        original: String,
        /// Content.
        data: &'a [u8],
    },
    /// Write `json` to a new file `file_name` in the inbox directory.
    Inbox {
        /// File name (no directory part).
        file_name: String,
        /// Document to write.
        json: String,
    },
}

/// The service's decision for one frame: what to store and how to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reception<'a> {
    /// The frame's type, named in the reply.
    pub frame_type: FrameType,
    /// Bytes the reply reports (file data only, for FILE).
    pub size: usize,
    /// What to store, if anything.
    pub store: Option<Store<'a>>,
    /// A refusal decided before storing (e.g. a bad file name).
    pub refused: Option<FileNameError>,
    /// Set when the frame was a TRACE wrapper (current profile): the
    /// sender's `sent_at_ns`. The reply is then a JSON [`TraceAck`] frame
    /// whose `inner_ack` is [`Reception::reply_text`].
    pub trace_sent_at_ns: Option<u64>,
}

/// The JSON acknowledgement of a TRACE frame, keys sorted
/// (`spec/services.md` §5.3). Times are ns since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceAck {
    /// When the daemon started writing this acknowledgement.
    pub ack_sent_at_ns: u64,
    /// When the inner message had been stored.
    pub inbox_written_at_ns: u64,
    /// The reply text the inner message alone would have got.
    pub inner_ack: String,
    /// When the frame was read.
    pub received_at_ns: u64,
    /// The sender's `sent_at_ns`, echoed.
    pub sent_at_ns: u64,
}

impl TraceAck {
    /// The compact JSON payload of the reply frame (type `JSON`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a reply payload.
    pub fn from_json(bytes: &[u8]) -> Result<TraceAck, InboxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

impl Reception<'_> {
    /// Text of the TEXT reply frame, given the outcome of the store
    /// (`Ok` when nothing had to be stored): `ACK <TYPE> <n> bytes` or
    /// `ERR <TYPE> save failed: <error>`.
    pub fn reply_text(&self, store_result: Result<(), &dyn fmt::Display>) -> String {
        let t = self.frame_type;
        if let Some(e) = self.refused {
            return format!("ERR {t} save failed: {e}");
        }
        match store_result {
            Ok(()) => format!("ACK {t} {} bytes", self.size),
            Err(e) => format!("ERR {t} save failed: {e}"),
        }
    }
}

/// The receiving side of port 1001 (`spec/services.md` §5.3). Holds only
/// the profile and a sequence counter for unique file names.
#[derive(Clone, Debug, Default)]
pub struct DataExchangeService {
    profile: WireProfile,
    seq: u32,
}

impl DataExchangeService {
    /// A service speaking `profile`.
    pub fn new(profile: WireProfile) -> Self {
        DataExchangeService { profile, seq: 0 }
    }

    /// The payload limit the connection reader must enforce.
    pub fn max_payload(&self) -> u32 {
        max_payload(self.profile)
    }

    fn next_seq(&mut self) -> Option<u32> {
        match self.profile {
            WireProfile::Legacy => None,
            WireProfile::Current => {
                let s = self.seq;
                self.seq = (self.seq + 1) % 1_000_000;
                Some(s)
            }
        }
    }

    /// Decides what to do with one frame from `from`, received at `at`.
    /// The current profile unwraps TRACE frames (one level) and decides for
    /// the inner message; a TRACE payload too short to unwrap, or any TRACE
    /// under the legacy profile, is acknowledged without storing.
    pub fn on_frame<'a>(&mut self, frame: Frame<'a>, from: Addr, at: WallTime) -> Reception<'a> {
        if let (WireProfile::Current, FrameType::Trace) = (self.profile, frame.frame_type) {
            if let Ok(tp) = TracePayload::decode(frame.payload) {
                if tp.inner_type != FrameType::Trace {
                    let inner = Frame {
                        frame_type: tp.inner_type,
                        payload: tp.inner,
                    };
                    let mut r = self.on_plain(inner, from, at);
                    r.trace_sent_at_ns = Some(tp.sent_at_ns);
                    return r;
                }
            }
        }
        self.on_plain(frame, from, at)
    }

    fn on_plain<'a>(&mut self, frame: Frame<'a>, from: Addr, at: WallTime) -> Reception<'a> {
        let t = frame.frame_type;
        match t {
            FrameType::File => {
                let body = FileBody::decode(frame.payload);
                let data = body.data();
                let mut r = Reception {
                    frame_type: t,
                    size: data.len(),
                    store: None,
                    refused: None,
                    trace_sent_at_ns: None,
                };
                if body.name().is_empty() {
                    return r;
                }
                match sanitize_file_name(body.name()) {
                    Ok(safe) => {
                        // Ours: the file keeps its (sanitised) name; the
                        // driver appends `-1`, `-2`, … before the extension
                        // when it collides (`spec/services.md` §5.4).
                        let _ = self.next_seq();
                        r.store = Some(Store::File {
                            file_name: safe.to_owned(),
                            original: safe.to_owned(),
                            data,
                        });
                    }
                    Err(e) => r.refused = Some(e),
                }
                r
            }
            FrameType::Text | FrameType::Json | FrameType::Binary => {
                let seq = self.next_seq();
                let msg = InboxMessage::new(t, from, frame.payload, at, self.profile);
                Reception {
                    frame_type: t,
                    size: frame.payload.len(),
                    store: Some(Store::Inbox {
                        file_name: inbox_file_name(t, at, seq),
                        json: msg.to_json(),
                    }),
                    refused: None,
                    trace_sent_at_ns: None,
                }
            }
            _ => Reception {
                frame_type: t,
                size: frame.payload.len(),
                store: None,
                refused: None,
                trace_sent_at_ns: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(f: Frame<'_>) -> Vec<u8> {
        let mut out = vec![0u8; f.encoded_len()];
        assert_eq!(f.encode(&mut out), Ok(out.len()));
        out
    }

    #[test]
    fn reference_examples() {
        let text = Frame {
            frame_type: FrameType::Text,
            payload: b"hello",
        };
        assert_eq!(hex::encode(enc(text)), "000000010000000568656c6c6f");
        let mut file = vec![0u8; 9];
        FileBody::Named {
            name: b"a.txt",
            data: b"hi",
        }
        .encode(&mut file)
        .unwrap();
        let f = Frame {
            frame_type: FrameType::File,
            payload: &file,
        };
        assert_eq!(
            hex::encode(enc(f)),
            "0000000400000009000561 2e747874 6869".replace(' ', "")
        );
    }

    #[test]
    fn parse_is_incremental_and_bounded() {
        let bytes = enc(Frame {
            frame_type: FrameType::Json,
            payload: b"{\"x\":1}",
        });
        for cut in 0..bytes.len() {
            assert_eq!(Frame::parse(&bytes[..cut], MAX_PAYLOAD_LEGACY), Ok(None));
        }
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        let (f, n) = Frame::parse(&two, MAX_PAYLOAD_LEGACY).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(f.payload, b"{\"x\":1}");
        // The limit applies as soon as the header is in.
        let huge = [0, 0, 0, 1, 0x01, 0, 0, 1];
        assert_eq!(
            Frame::parse(&huge, MAX_PAYLOAD_LEGACY),
            Err(DecodeError::TooLarge {
                len: (16 << 20) + 1,
                max: MAX_PAYLOAD_LEGACY
            })
        );
        assert!(Frame::parse(&huge, MAX_PAYLOAD_CURRENT).unwrap().is_none());
        assert_eq!(
            Frame::decode(&two, MAX_PAYLOAD_LEGACY),
            Err(DecodeError::TrailingBytes { extra: bytes.len() })
        );
    }

    #[test]
    fn type_names() {
        assert_eq!(FrameType::from_u32(6).to_string(), "UNKNOWN(6)");
        assert_eq!(FrameType::from_u32(7).to_string(), "FILESTREAM");
        assert_eq!(FrameType::from_u32(2).to_string(), "BINARY");
    }

    #[test]
    fn file_body_with_oversized_name_is_all_data() {
        let p = [0x00, 0x09, b'a', b'b'];
        assert_eq!(FileBody::decode(&p), FileBody::Unnamed(&p));
        assert_eq!(FileBody::decode(&[7]), FileBody::Unnamed(&[7]));
        assert_eq!(FileBody::decode(&p).name(), b"");
    }

    #[test]
    fn file_names_cannot_escape_the_directory() {
        use FileNameError::*;
        let cases: &[(&[u8], FileNameError)] = &[
            (b"", Empty),
            (b".", DotEntry),
            (b"..", DotEntry),
            (b"../etc/passwd", ForbiddenChar),
            (b"/etc/passwd", ForbiddenChar),
            (b"a/b", ForbiddenChar),
            (b"..\\win.ini", ForbiddenChar),
            (b"C:evil", ForbiddenChar),
            (b"a\0b", ForbiddenChar),
            (b"line\nbreak", ForbiddenChar),
            (b"\xff\xfe", NotUtf8),
        ];
        for (name, err) in cases {
            assert_eq!(sanitize_file_name(name), Err(*err), "{name:?}");
        }
        assert_eq!(sanitize_file_name(&[b'a'; 256]), Err(TooLong(256)));
        assert_eq!(sanitize_file_name(&[b'a'; 255]).map(str::len), Ok(255));
        assert_eq!(sanitize_file_name(b"..hidden"), Ok("..hidden"));
        assert_eq!(
            sanitize_file_name("résumé.pdf".as_bytes()),
            Ok("résumé.pdf")
        );
    }

    #[test]
    fn received_names() {
        let at = WallTime {
            unix_secs: 1_772_197_424,
            millis: 123,
            offset_secs: 7200,
        };
        assert_eq!(
            received_file_name("a.txt", at, None),
            "a-20260227-150344.123.txt"
        );
        assert_eq!(
            received_file_name("a.tar.gz", at, Some(7)),
            "a.tar-20260227-150344.123-000007.gz"
        );
        assert_eq!(
            received_file_name("README", at, None),
            "README-20260227-150344.123"
        );
        assert_eq!(
            inbox_file_name(FrameType::Text, at, None),
            "TEXT-20260227-150344.123.json"
        );
    }

    #[test]
    fn service_stores_and_acks() {
        let at = WallTime::new(1_772_197_424, 7200);
        let from = Addr::new(0, 1);
        let mut svc = DataExchangeService::new(WireProfile::Legacy);
        let r = svc.on_frame(
            Frame {
                frame_type: FrameType::Text,
                payload: b"hello",
            },
            from,
            at,
        );
        assert_eq!(r.reply_text(Ok(())), "ACK TEXT 5 bytes");
        let Some(Store::Inbox { file_name, json }) = &r.store else {
            panic!("{r:?}")
        };
        assert_eq!(file_name, "TEXT-20260227-150344.000.json");
        assert_eq!(
            json,
            r#"{"bytes":5,"data":"hello","from":"0:0000.0000.0001","received_at":"2026-02-27T15:03:44+02:00","type":"TEXT"}"#
        );

        let payload = [0, 5, b'a', b'.', b't', b'x', b't', b'h', b'i'];
        let r = svc.on_frame(
            Frame {
                frame_type: FrameType::File,
                payload: &payload,
            },
            from,
            at,
        );
        assert_eq!(r.reply_text(Ok(())), "ACK FILE 2 bytes");
        assert!(matches!(&r.store, Some(Store::File { data, .. }) if *data == b"hi"));
        assert_eq!(
            r.reply_text(Err(&"disk full")),
            "ERR FILE save failed: disk full"
        );

        let bad = [0, 2, b'.', b'.', b'x'];
        let r = svc.on_frame(
            Frame {
                frame_type: FrameType::File,
                payload: &bad,
            },
            from,
            at,
        );
        assert_eq!(r.store, None);
        assert_eq!(
            r.reply_text(Ok(())),
            "ERR FILE save failed: file name is a dot entry"
        );

        let r = svc.on_frame(
            Frame {
                frame_type: FrameType::Other(9),
                payload: b"abc",
            },
            from,
            at,
        );
        assert_eq!(r.store, None);
        assert_eq!(r.reply_text(Ok(())), "ACK UNKNOWN(9) 3 bytes");
    }

    #[test]
    fn current_profile_keeps_binary_exact() {
        let at = WallTime::new(0, 0);
        let mut svc = DataExchangeService::new(WireProfile::Current);
        let r = svc.on_frame(
            Frame {
                frame_type: FrameType::Binary,
                payload: &[0xff, 0x00],
            },
            Addr::new(0, 2),
            at,
        );
        let Some(Store::Inbox { file_name, json }) = r.store else {
            panic!()
        };
        assert_eq!(file_name, "BINARY-19700101-000000.000-000000.json");
        let m = InboxMessage::from_json(&json).unwrap();
        assert_eq!(m.data_encoding.as_deref(), Some("base64"));
        assert_eq!(m.payload(), Some(vec![0xff, 0x00]));
        // Legacy keeps the v1.8 lossy text.
        let legacy = InboxMessage::new(
            FrameType::Binary,
            Addr::new(0, 2),
            &[0xff],
            at,
            WireProfile::Legacy,
        );
        assert_eq!(legacy.data.as_deref(), Some("\u{fffd}"));
        assert_eq!(legacy.payload(), None);
    }

    #[test]
    fn current_profile_unwraps_trace() {
        let at = WallTime::new(0, 0);
        let tp = TracePayload {
            inner_type: FrameType::Text,
            sent_at_ns: 42,
            inner: b"hello",
        };
        let mut payload = vec![0u8; TRACE_HEADER_LEN + 5];
        tp.encode(&mut payload).unwrap();
        let frame = Frame {
            frame_type: FrameType::Trace,
            payload: &payload,
        };
        let mut cur = DataExchangeService::new(WireProfile::Current);
        let r = cur.on_frame(frame, Addr::new(0, 1), at);
        assert_eq!(r.trace_sent_at_ns, Some(42));
        assert!(matches!(r.store, Some(Store::Inbox { .. })));
        let ack = TraceAck {
            ack_sent_at_ns: 4,
            inbox_written_at_ns: 3,
            inner_ack: r.reply_text(Ok(())),
            received_at_ns: 2,
            sent_at_ns: 42,
        };
        assert_eq!(
            ack.to_json(),
            r#"{"ack_sent_at_ns":4,"inbox_written_at_ns":3,"inner_ack":"ACK TEXT 5 bytes","received_at_ns":2,"sent_at_ns":42}"#
        );
        assert_eq!(TraceAck::from_json(ack.to_json().as_bytes()).unwrap(), ack);
        let mut legacy = DataExchangeService::new(WireProfile::Legacy);
        let r = legacy.on_frame(frame, Addr::new(0, 1), at);
        assert_eq!((r.trace_sent_at_ns, &r.store), (None, &None));
        assert_eq!(r.reply_text(Ok(())), "ACK TRACE 17 bytes");
        // Too short to unwrap: plain ACK, nothing stored.
        let short = Frame {
            frame_type: FrameType::Trace,
            payload: &payload[..5],
        };
        let r = cur.on_frame(short, Addr::new(0, 1), at);
        assert_eq!((r.trace_sent_at_ns, &r.store), (None, &None));
    }

    #[test]
    fn filestream_rejects_wrong_lengths() {
        let mut p = vec![0x03];
        p.extend_from_slice(&[9; 16]);
        p.extend_from_slice(&5u64.to_be_bytes());
        let m = FileStreamMsg::decode(&p).unwrap();
        assert_eq!(m.body, FileStreamBody::Ack(5));
        p.push(0);
        assert_eq!(
            FileStreamMsg::decode(&p),
            Err(DecodeError::TrailingBytes { extra: 1 })
        );
        p[0] = 0x09;
        assert_eq!(FileStreamMsg::decode(&p), Err(DecodeError::UnknownKind(9)));
        assert!(matches!(
            FileStreamMsg::decode(&p[..10]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    fn arb_body() -> impl Strategy<Value = (u8, Vec<u8>, u64, [u8; 32], u32)> {
        (
            1u8..=7,
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<u32>(),
        )
    }

    proptest! {
        #[test]
        fn frame_round_trip(t in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let f = Frame { frame_type: FrameType::from_u32(t), payload: &payload };
            let bytes = enc(f);
            prop_assert_eq!(Frame::decode(&bytes, MAX_PAYLOAD_LEGACY), Ok(f));
            prop_assert_eq!(f.frame_type.to_u32(), t);
        }

        #[test]
        fn frame_bytes_reencode(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(f) = Frame::decode(&bytes, 64) {
                prop_assert_eq!(enc(f), bytes);
            }
        }

        #[test]
        fn file_body_bytes_reencode(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let b = FileBody::decode(&bytes);
            let mut out = vec![0u8; b.encoded_len()];
            prop_assert_eq!(b.encode(&mut out), Ok(bytes.len()));
            prop_assert_eq!(out, bytes);
        }

        #[test]
        fn trace_round_trip(t in any::<u32>(), ns in any::<u64>(), inner in proptest::collection::vec(any::<u8>(), 0..20)) {
            let p = TracePayload { inner_type: FrameType::from_u32(t), sent_at_ns: ns, inner: &inner };
            let mut out = vec![0u8; TRACE_HEADER_LEN + inner.len()];
            p.encode(&mut out).unwrap();
            prop_assert_eq!(TracePayload::decode(&out), Ok(p));
        }

        #[test]
        fn filestream_round_trip((kind, data, v, sha, cs) in arb_body(), id in any::<[u8; 16]>()) {
            let body = match kind {
                1 => FileStreamBody::Init { size: v, sha256: sha, chunk_size: cs, name: &data },
                2 => FileStreamBody::Chunk { offset: v, data: &data },
                3 => FileStreamBody::Ack(v),
                4 => FileStreamBody::Done,
                5 => FileStreamBody::InitAck(v),
                6 => FileStreamBody::Complete(&data),
                _ => FileStreamBody::Abort(&data),
            };
            let m = FileStreamMsg { transfer_id: id, body };
            let mut out = vec![0u8; m.encoded_len()];
            prop_assert_eq!(m.encode(&mut out), Ok(out.len()));
            prop_assert_eq!(FileStreamMsg::decode(&out), Ok(m));
        }

        #[test]
        fn filestream_bytes_reencode(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(m) = FileStreamMsg::decode(&bytes) {
                let mut out = vec![0u8; m.encoded_len()];
                m.encode(&mut out).unwrap();
                prop_assert_eq!(out, bytes);
            }
        }

        #[test]
        fn sanitised_names_are_single_components(name in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(s) = sanitize_file_name(&name) {
                prop_assert!(!s.contains(['/', '\\', '\0']) && s != ".." && s != ".");
                let p = std::path::Path::new(s);
                prop_assert_eq!(p.components().count(), 1);
                prop_assert!(matches!(p.components().next(), Some(std::path::Component::Normal(_))));
            }
        }

        #[test]
        fn trace_ack_round_trip(a in any::<u64>(), b in any::<u64>(), c in any::<u64>(), d in any::<u64>(), text in ".{0,30}") {
            let ack = TraceAck { ack_sent_at_ns: a, inbox_written_at_ns: b, inner_ack: text, received_at_ns: c, sent_at_ns: d };
            prop_assert_eq!(TraceAck::from_json(ack.to_json().as_bytes()).unwrap(), ack);
        }

        #[test]
        fn inbox_round_trip(t in 1u32..=3, payload in proptest::collection::vec(any::<u8>(), 0..20), secs in 0i64..4_000_000_000) {
            let m = InboxMessage::new(FrameType::from_u32(t), Addr::new(1, 7), &payload, WallTime::new(secs, 3600), WireProfile::Current);
            prop_assert_eq!(InboxMessage::from_json(&m.to_json()).unwrap(), m.clone());
            prop_assert_eq!(m.payload(), Some(payload));
        }
    }
}

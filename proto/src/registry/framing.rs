//! Registry framing for both ends of the TCP connection, in one place
//! (`spec/registry.md` §1: `[u32 length][JSON]`): the client side lives in
//! [`super::client::RegistryClient::handle_bytes`] and
//! [`super::client::RegistryClient::poll_bytes`] on top of
//! [`ResponseReader`]; a server driver frames with [`next_request`],
//! [`reply_frame`], [`error_frame`] and [`push_frame`]. Drivers move bytes
//! and never decode registry messages themselves.

use super::codec::{
    self, CodecError, FrameError, PUSH_HANDSHAKE, PUSH_TRUST_REVOKED, Request, Response,
};
use super::limits::MAX_FRAME_LEN;

/// The reply sent when a response cannot be encoded (never expected).
const FALLBACK_ERROR: &[u8] = br#"{"error":"request failed","type":"error"}"#;

/// Why a byte stream from the registry is unusable; the connection must
/// be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// A length prefix beyond the maximum.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame that is not a registry response.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Reassembles the registry's responses from TCP bytes in any split. Holds
/// at most one incomplete frame (≤ [`MAX_FRAME_LEN`]) plus the bytes of the
/// last read.
#[derive(Debug, Default)]
pub struct ResponseReader {
    buf: Vec<u8>,
}

impl ResponseReader {
    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete response, if any. After an error the buffer is
    /// cleared; the caller closes the connection.
    pub fn next_response(&mut self) -> Result<Option<Response>, StreamError> {
        let res = match codec::decode_frame(&self.buf, MAX_FRAME_LEN) {
            Ok(None) => return Ok(None),
            Ok(Some((payload, used))) => codec::decode_response(payload)
                .map(|r| (r, used))
                .map_err(StreamError::from),
            Err(e) => Err(e.into()),
        };
        match res {
            Ok((r, used)) => {
                self.buf.drain(..used.min(self.buf.len()));
                Ok(Some(r))
            }
            Err(e) => {
                self.buf.clear();
                Err(e)
            }
        }
    }

    /// Forgets partial input (a new connection).
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

/// A request frame's payload: the request, or why it does not decode.
pub type DecodedRequest = Result<Request, CodecError>;

/// One request frame at the start of `buf` (server side): `Ok(None)` when
/// more bytes are needed; otherwise the decoded request (or why it does
/// not decode) and the bytes to drop. A length prefix beyond the maximum
/// is an error (close the connection).
pub fn next_request(buf: &[u8]) -> Result<Option<(DecodedRequest, usize)>, FrameError> {
    Ok(codec::decode_frame(buf, MAX_FRAME_LEN)?
        .map(|(payload, used)| (codec::decode_request(payload), used)))
}

/// Ours: the keys `register` requests bring, from the complete request
/// frames at the start of `buf`, appended to `out` (a driver checks them
/// on several threads before handling the frames, see
/// `Registry::key_checked`). Found by a byte scan for the
/// `"public_key":"…"` member, without decoding the JSON: a key missed here
/// is checked by the registry itself, and a key found in another request
/// is only checked once too often. Stops at an incomplete or oversized
/// frame.
pub fn register_keys(mut buf: &[u8], out: &mut Vec<super::auth::PublicKey>) {
    const TYPE: &[u8] = br#""register""#;
    const NEEDLE: &[u8] = br#""public_key":""#;
    while let Ok(Some((payload, used))) = codec::decode_frame(buf, MAX_FRAME_LEN) {
        buf = &buf[used..];
        if !payload.windows(TYPE.len()).any(|w| w == TYPE) {
            continue;
        }
        let Some(at) = payload.windows(NEEDLE.len()).position(|w| w == NEEDLE) else {
            continue;
        };
        let rest = &payload[at + NEEDLE.len()..];
        let Some(end) = rest.iter().position(|b| *b == b'"') else {
            continue;
        };
        if let Some(key) = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|b64| super::auth::decode_key_bytes(b64).ok())
        {
            out.push(key);
        }
    }
}

/// A request as one frame (client side).
pub fn request_frame(req: &Request) -> Option<Vec<u8>> {
    codec::encode_request(req)
        .ok()
        .and_then(|p| codec::frame_vec(&p).ok())
}

/// A `lookup` request for `node_id` as one frame (a one-shot client such
/// as `pilotctl lookup`, `spec/registry.md` §3.2).
pub fn lookup_frame(node_id: u32) -> Option<Vec<u8>> {
    request_frame(&Request::Lookup(codec::Lookup { node_id }))
}

/// A response as the JSON object the registry sent (`type` included),
/// for tools that print it.
pub fn response_value(resp: &Response) -> serde_json::Value {
    codec::encode_response(resp)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// A response as one frame (server side).
pub fn reply_frame(resp: &Response) -> Vec<u8> {
    let json = codec::encode_response(resp).unwrap_or_else(|_| FALLBACK_ERROR.to_vec());
    codec::frame_vec(&json).unwrap_or_default()
}

/// A framed `{"type":"error"}` reply with `msg`.
pub fn error_frame(msg: &str) -> Vec<u8> {
    reply_frame(&Response::Error {
        error: msg.to_owned(),
    })
}

/// What a push announces (`spec/registry.md`, push connections).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushKind {
    /// A handshake request or response waits in the inbox.
    Handshake,
    /// A peer revoked its trust in the receiver.
    TrustRevoked,
}

/// A framed push message from node `from`.
pub fn push_frame(kind: PushKind, from: u32) -> Vec<u8> {
    let kind = match kind {
        PushKind::Handshake => PUSH_HANDSHAKE,
        PushKind::TrustRevoked => PUSH_TRUST_REVOKED,
    };
    reply_frame(&Response::Push {
        kind: kind.to_owned(),
        from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::codec::Lookup;

    /// The keys of complete `register` frames are found as the request
    /// encoder writes them; other requests, an incomplete tail and a key
    /// that is not 32 bytes of base64 are skipped.
    #[test]
    fn register_keys_come_from_complete_register_frames() {
        use crate::registry::auth::Identity;
        use crate::registry::codec::{Register, RotateKey};
        let key = |s: u8| Identity::from_seed(&[s; 32]).public_key();
        let reg = |s: u8| {
            request_frame(&Request::Register(Register {
                listen_addr: "1.2.3.4:5".into(),
                public_key: Identity::from_seed(&[s; 32]).public_key_b64(),
                ..Default::default()
            }))
            .unwrap()
        };
        let rotate = request_frame(&Request::RotateKey(RotateKey {
            node_id: 1,
            new_public_key: Identity::from_seed(&[9; 32]).public_key_b64(),
            ..Default::default()
        }))
        .unwrap();
        let bad = codec::frame_vec(br#"{"type":"register","public_key":"AAAA"}"#).unwrap();
        let third = reg(3);
        let buf = [
            reg(1),
            lookup_frame(4).unwrap(),
            rotate,
            bad,
            reg(2),
            third[..third.len() - 1].to_vec(),
        ]
        .concat();
        let mut out = Vec::new();
        register_keys(&buf, &mut out);
        assert_eq!(out, vec![key(1), key(2)]);
        out.clear();
        register_keys(&u32::MAX.to_be_bytes(), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn responses_reassemble_from_any_split_and_bad_input_is_an_error() {
        let a = reply_frame(&Response::error("one"));
        let b = push_frame(PushKind::TrustRevoked, 7);
        let all = [a.clone(), b].concat();
        for cut in 0..all.len() {
            let mut r = ResponseReader::default();
            let mut got = Vec::new();
            for part in [&all[..cut], &all[cut..]] {
                r.push(part);
                while let Some(x) = r.next_response().unwrap() {
                    got.push(x);
                }
            }
            assert_eq!(got.len(), 2, "split at {cut}");
            assert_eq!(got[0], Response::error("one"));
            assert!(
                matches!(&got[1], Response::Push { kind, from: 7 } if kind == PUSH_TRUST_REVOKED)
            );
        }
        // Oversized prefix and non-JSON payloads are errors, and clear.
        let mut r = ResponseReader::default();
        r.push(&u32::MAX.to_be_bytes());
        assert!(matches!(r.next_response(), Err(StreamError::Frame(_))));
        assert_eq!(r.next_response(), Ok(None));
        r.push(&codec::frame_vec(b"not json").unwrap());
        assert!(matches!(r.next_response(), Err(StreamError::Codec(_))));
    }

    #[test]
    fn a_request_frame_reads_back_on_the_server_side() {
        let req = Request::Lookup(Lookup { node_id: 42 });
        let f = request_frame(&req).unwrap();
        assert_eq!(next_request(&f[..f.len() - 1]), Ok(None));
        let (got, used) = next_request(&f).unwrap().unwrap();
        assert_eq!((got, used), (Ok(req), f.len()));
        assert!(next_request(&u32::MAX.to_be_bytes()).is_err());
    }
}

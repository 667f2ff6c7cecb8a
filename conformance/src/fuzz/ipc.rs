//! Fuzz body for the IPC codec (`spec/ipc.md`): parse `data` as a stream of
//! frames, decode every body, re-encode what decodes and require the exact
//! input bytes back; then treat the whole input as one body; then build a
//! structured message from the bytes (`arbitrary`) and require that, if it
//! encodes, it decodes back to itself.

use arbitrary::{Arbitrary, Unstructured};
use pilot_proto::wire::ipc::{
    EncodeError, IpcError, IpcMessage, LENGTH_PREFIX_LEN, MAX_BODY_LEN, ManagedRequest,
    encode_error_frame, encode_frame, parse_frame,
};

/// Runs the IPC round-trip checks over arbitrary bytes.
pub fn run(data: &[u8]) {
    let mut rest = data;
    loop {
        match parse_frame(rest) {
            Ok(None) => {
                // Only an incomplete frame may remain.
                if let Some(prefix) = rest.first_chunk::<LENGTH_PREFIX_LEN>() {
                    let len = u32::from_be_bytes(*prefix) as usize;
                    assert!(len <= MAX_BODY_LEN && rest.len() < LENGTH_PREFIX_LEN + len);
                }
                break;
            }
            Err(IpcError::TooLarge { len }) => {
                let prefix = rest.first_chunk::<LENGTH_PREFIX_LEN>();
                assert_eq!(prefix.map(|p| u32::from_be_bytes(*p)), Some(len));
                assert!(len as usize > MAX_BODY_LEN);
                break;
            }
            Err(other) => panic!("parse_frame returned a message error: {other:?}"),
            Ok(Some((body, used))) => {
                assert_eq!(used, LENGTH_PREFIX_LEN + body.len());
                let frame = rest.get(..used).expect("consumed more than the input");
                check_body(body, Some(frame));
                rest = rest.get(used..).expect("consumed more than the input");
            }
        }
    }
    check_body(data, None);
    check_structured(data);
}

fn check_structured(data: &[u8]) {
    let Ok(msg) = IpcMessage::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let mut out = vec![0u8; msg.encoded_len()];
    match encode_frame(&msg, &mut out) {
        Ok(n) => {
            assert_eq!(n, out.len());
            let (body, used) = parse_frame(&out)
                .ok()
                .flatten()
                .expect("an encoded frame parses");
            assert_eq!(used, n);
            assert_eq!(IpcMessage::decode(body), Ok(msg));
        }
        Err(EncodeError::TooLarge { .. } | EncodeError::FieldTooLong { .. }) => {
            assert!(msg.body_len() > MAX_BODY_LEN || matches!(msg, IpcMessage::Broadcast { .. }));
        }
        Err(EncodeError::EmptyField { .. }) => {
            assert!(matches!(
                msg,
                IpcMessage::ResolveHostname("")
                    | IpcMessage::Managed(
                        ManagedRequest::Policy { set: Some(""), .. }
                            | ManagedRequest::MemberTags { set: Some(""), .. }
                    )
            ));
        }
        Err(e @ EncodeError::BufferTooSmall { .. }) => {
            panic!("encoded_len() was too small for {msg:?}: {e}")
        }
    }
}

fn check_body(body: &[u8], frame: Option<&[u8]>) {
    match IpcMessage::decode(body) {
        Ok(msg) => {
            assert_eq!(msg.body_len(), body.len());
            let mut out = vec![0u8; body.len()];
            assert_eq!(msg.encode_body(&mut out), Ok(body.len()));
            assert_eq!(out, body, "encode(decode(body)) != body for {msg:?}");
            assert_eq!(IpcMessage::decode(&out), Ok(msg));
            if let Some(frame) = frame {
                let mut full = vec![0u8; msg.encoded_len()];
                assert_eq!(encode_frame(&msg, &mut full), Ok(frame.len()));
                assert_eq!(full, frame);
            }
        }
        Err(err) => {
            assert!(!err.is_fatal(), "decode returned a frame error");
            assert_eq!(err == IpcError::EmptyBody, body.is_empty());
            // The daemon's reply to this error must encode and decode back.
            let mut out = [0u8; 256];
            let n = encode_error_frame(&err, &mut out).expect("error reply fits 256 bytes");
            let (reply, _) = parse_frame(out.get(..n).unwrap_or_default())
                .ok()
                .flatten()
                .expect("error reply is one frame");
            match IpcMessage::decode(reply) {
                Ok(IpcMessage::Error { code: 1, message }) => {
                    assert_eq!(message, err.to_string());
                }
                other => panic!("error reply decodes to {other:?}"),
            }
        }
    }
}

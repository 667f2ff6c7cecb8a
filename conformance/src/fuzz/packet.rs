//! Fuzz body for the packet codec (`spec/wire.md` §2).

use pilot_proto::wire::WireProfile;
use pilot_proto::wire::packet::{HEADER_LEN, Packet};

/// Decodes `data` with both profiles; whatever decodes must re-encode to the
/// covered prefix, and the current profile must accept only what legacy
/// accepts, with the same result.
pub fn run(data: &[u8]) {
    let legacy = Packet::decode_with(data, WireProfile::Legacy);
    let current = Packet::decode(data);
    if let Ok(p) = current {
        assert_eq!(legacy, Ok(p), "current decodes but legacy differs");
        assert_eq!(p.header.version, 1);
    }
    if let Ok(p) = legacy {
        let mut out = vec![0u8; p.encoded_len()];
        assert_eq!(p.encode(&mut out), Ok(out.len()));
        assert!(out.len() >= HEADER_LEN && out.len() <= data.len());
        assert_eq!(out.as_slice(), &data[..out.len()], "re-encode differs");
    }
}

//! Fuzz body for tunnel-frame dispatch (`spec/wire.md` §3).

use pilot_proto::wire::beacon::BeaconMsg;
use pilot_proto::wire::tunnel::Frame;

/// Decodes `data` as a datagram on the tunnel socket; a decoded frame must
/// re-encode to the covered prefix. Packets inside PILT and frames inside
/// relay messages are run through their own bodies as well.
pub fn run(data: &[u8]) {
    let Ok(frame) = Frame::decode(data) else {
        return;
    };
    let mut out = vec![0u8; frame.encoded_len()];
    assert_eq!(frame.encode(&mut out), Ok(out.len()));
    assert!(out.len() <= data.len());
    assert_eq!(out.as_slice(), &data[..out.len()], "re-encode differs");
    assert_eq!(Frame::decode(&out), Ok(frame));
    match frame {
        Frame::Pilt { packet } => {
            assert_eq!(out.len(), data.len(), "PILT keeps every byte");
            super::packet::run(packet);
        }
        Frame::Pils { .. } => assert_eq!(out.len(), data.len(), "PILS keeps every byte"),
        Frame::Beacon(
            BeaconMsg::Relay { inner, .. }
            | BeaconMsg::RelayDeliver { inner, .. }
            | BeaconMsg::RelayDeliverTo { inner, .. },
        ) => {
            // Check one level of nesting only, so the body's work stays
            // bounded by the input however deeply frames are nested.
            if let Ok(f) = Frame::decode(inner) {
                let mut again = vec![0u8; f.encoded_len()];
                assert_eq!(f.encode(&mut again), Ok(again.len()));
                assert_eq!(again.as_slice(), &inner[..again.len()]);
            }
        }
        _ => {}
    }
}

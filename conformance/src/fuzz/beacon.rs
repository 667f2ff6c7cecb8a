//! Fuzz body for beacon messages (`spec/wire.md` §4).

use pilot_proto::wire::beacon::BeaconMsg;

/// Decodes `data`; a decoded message must re-encode to the covered prefix
/// and decode again to itself.
pub fn run(data: &[u8]) {
    if let Ok(msg) = BeaconMsg::decode(data) {
        let mut out = vec![0u8; msg.encoded_len()];
        assert_eq!(msg.encode(&mut out), Ok(out.len()));
        assert!(out.len() <= data.len());
        assert_eq!(out.as_slice(), &data[..out.len()], "re-encode differs");
        assert_eq!(BeaconMsg::decode(&out), Ok(msg));
    }
}

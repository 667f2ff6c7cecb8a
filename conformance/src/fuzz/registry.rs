//! Fuzz body for the registry codec and state machine (`spec/registry.md`
//! §1–§3).

use pilot_proto::registry::codec::{
    Request, decode_frame, decode_request, decode_response, encode_request, encode_response,
    frame_vec,
};
use pilot_proto::registry::limits::MAX_FRAME_LEN;
use pilot_proto::registry::server::{Config, Registry};
use pilot_proto::time::UnixTime;

/// Treats `data` as a frame, as a request payload and as a response
/// payload: whatever decodes must re-encode and decode to the same value,
/// and a fresh registry must answer any decoded request with an encodable
/// reply.
pub fn run(data: &[u8]) {
    if let Ok(Some((payload, used))) = decode_frame(data, MAX_FRAME_LEN) {
        assert_eq!(used, 4 + payload.len());
        assert_eq!(frame_vec(payload).ok().as_deref(), data.get(..used));
    }
    if let Ok(req) = decode_request(data) {
        if !matches!(req, Request::Unknown(_)) {
            let bytes = encode_request(&req).expect("known requests encode");
            assert_eq!(
                decode_request(&bytes),
                Ok(req.clone()),
                "request round trip"
            );
        }
        let now = UnixTime::from_nanos(1_767_225_600_000_000_000);
        let mut reg = Registry::new(Config::default(), now);
        let reply = reg.handle(now, ([127, 0, 0, 1], 9).into(), req);
        let bytes = encode_response(&reply.response).expect("replies encode");
        assert_eq!(decode_response(&bytes), Ok(reply.response));
    }
    if let Ok(resp) = decode_response(data) {
        let bytes = encode_response(&resp).expect("responses encode");
        assert_eq!(decode_response(&bytes), Ok(resp), "response round trip");
    }
}

//! Fuzz body for address text and binary forms (`spec/wire.md` §1).

use pilot_proto::addr::{ADDR_LEN, Addr, PilotSockAddr};

/// Parses `data` (as UTF-8) as an address and as a socket address; what
/// parses must format canonically and parse back to the same value. The
/// first 6 bytes, if present, must round-trip through the binary form.
pub fn run(data: &[u8]) {
    match Addr::from_bytes(data) {
        Ok(a) => assert_eq!(a.to_bytes().as_slice(), &data[..ADDR_LEN]),
        Err(_) => assert!(data.len() < ADDR_LEN),
    }
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    if let Ok(a) = text.parse::<Addr>() {
        let canon = a.to_string();
        assert_eq!(canon.parse::<Addr>(), Ok(a));
        // Canonical text differs from the input only in case and in
        // leading zeros of the network number.
        let trimmed = text.trim_start_matches('0');
        let canon_tail = canon.trim_start_matches('0');
        assert!(
            trimmed.eq_ignore_ascii_case(canon_tail),
            "{text:?} vs {canon:?}"
        );
    }
    if let Ok(s) = text.parse::<PilotSockAddr>() {
        assert_eq!(s.to_string().parse::<PilotSockAddr>(), Ok(s));
    }
}

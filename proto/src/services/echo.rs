//! Echo on port 7 and the measurements `pilotctl` makes with it
//! (`spec/services.md` §2). Echo has no framing: the server writes back
//! every byte it reads until the peer closes, so the only protocol facts
//! are the port and the payloads the measuring client sends.

pub use crate::addr::ports::ECHO as PORT;

/// Prefix of the ping payload; the payload is `ping-<seq>` (`spec/services.md` §2.2).
pub const PING_PREFIX: &str = "ping-";
/// Prefix of the traceroute payloads `trace-<i>` (`spec/services.md` §2.2).
pub const TRACE_PREFIX: &str = "trace-";
/// Largest single read the ping client makes (`spec/services.md` §2.2).
pub const PING_READ_MAX: usize = 1024;
/// Round trips per traceroute (`spec/services.md` §2.2).
pub const TRACE_ROUNDS: u32 = 3;
/// Bench write size (`spec/services.md` §2.2).
pub const BENCH_CHUNK: usize = 4096;

/// The ping payload for sequence number `seq`.
pub fn ping_payload(seq: u32) -> String {
    format!("{PING_PREFIX}{seq}")
}

/// Fills `chunk` with the bench pattern: byte `k` of the stream is
/// `k mod 256`, where `offset` is the stream offset of `chunk[0]`.
pub fn fill_bench_chunk(offset: u64, chunk: &mut [u8]) {
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = (offset.wrapping_add(i as u64) & 0xFF) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_payload_matches_reference_example() {
        assert_eq!(ping_payload(0), "ping-0");
        assert_eq!(ping_payload(12), "ping-12");
    }

    #[test]
    fn bench_pattern_continues_across_chunks() {
        let mut a = [0u8; BENCH_CHUNK];
        fill_bench_chunk(0, &mut a);
        assert_eq!(a[255], 255);
        assert_eq!(a[256], 0);
        let mut b = [0u8; 3];
        fill_bench_chunk(BENCH_CHUNK as u64 + 254, &mut b);
        assert_eq!(b, [254, 255, 0]);
    }
}

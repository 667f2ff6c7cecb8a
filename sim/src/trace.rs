//! The trace hash: a running SHA-256 over everything observable in a run.
//!
//! Every delivered datagram (time, source, destination, bytes) and every
//! node event (time, node, the event's [`Hash`] encoding) is fed in, in the
//! order it happens. Two runs with the same seed and configuration must end
//! with the same digest; that is what the determinism check compares.
//! Records are tagged and length-prefixed so different sequences cannot
//! produce the same byte stream.

use core::fmt;
use core::hash::{Hash, Hasher};
use std::net::SocketAddr;

use pilot_proto::time::Instant;
use sha2::{Digest, Sha256};

use crate::node::NodeId;

/// Running hash of a simulation trace.
#[derive(Clone, Debug, Default)]
pub struct TraceHash {
    hasher: Sha256,
    records: u64,
}

/// The final value of a [`TraceHash`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceDigest(pub [u8; 32]);

impl fmt::Display for TraceDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TraceDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceDigest({self})")
    }
}

/// Feeds `Hash` output into SHA-256. `finish` is never used by us.
struct ShaHasher<'a>(&'a mut Sha256);

impl Hasher for ShaHasher<'_> {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Longest encoding of one endpoint: tag, 16 address bytes, port.
const ADDR_MAX: usize = 1 + 16 + 2;

/// Appends the encoding of `a` (tag 4 or 6, address octets, port BE) to
/// `out` at `at`; returns the new cursor.
fn put_addr(out: &mut [u8], at: usize, a: SocketAddr) -> usize {
    let mut tmp = [0u8; ADDR_MAX];
    let n = match a {
        SocketAddr::V4(v4) => {
            tmp[0] = 4;
            tmp[1..5].copy_from_slice(&v4.ip().octets());
            tmp[5..7].copy_from_slice(&a.port().to_be_bytes());
            7
        }
        SocketAddr::V6(v6) => {
            tmp[0] = 6;
            tmp[1..17].copy_from_slice(&v6.ip().octets());
            tmp[17..19].copy_from_slice(&a.port().to_be_bytes());
            19
        }
    };
    match out.get_mut(at..at + n) {
        Some(dst) => {
            dst.copy_from_slice(&tmp[..n]);
            at + n
        }
        None => at,
    }
}

impl TraceHash {
    /// An empty trace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a datagram handed to a node.
    pub fn record_delivery(&mut self, at: Instant, src: SocketAddr, dst: SocketAddr, bytes: &[u8]) {
        // One update for the fixed-size header, one for the payload.
        let mut head = [0u8; 1 + 8 + 2 * ADDR_MAX + 8];
        head[0] = b'D';
        head[1..9].copy_from_slice(&at.as_nanos().to_le_bytes());
        let mut n = put_addr(&mut head, 9, src);
        n = put_addr(&mut head, n, dst);
        head[n..n + 8].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.hasher.update(&head[..n + 8]);
        self.hasher.update(bytes);
        self.records += 1;
    }

    /// Records an event reported by `node`.
    pub fn record_event<E: Hash>(&mut self, at: Instant, node: NodeId, event: &E) {
        self.hasher.update(b"E");
        self.hasher.update(at.as_nanos().to_le_bytes());
        self.hasher.update((node.0 as u64).to_le_bytes());
        event.hash(&mut ShaHasher(&mut self.hasher));
        self.records += 1;
    }

    /// How many records went in.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The digest of everything recorded so far (the hash keeps running).
    pub fn digest(&self) -> TraceDigest {
        let mut h = self.hasher.clone();
        h.update(self.records.to_le_bytes());
        TraceDigest(h.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::node_addr;

    #[test]
    fn same_records_same_digest_and_order_matters() {
        let t = Instant::from_millis(3);
        let (a, b) = (node_addr(0), node_addr(1));
        let mut x = TraceHash::new();
        let mut y = TraceHash::new();
        for h in [&mut x, &mut y] {
            h.record_delivery(t, a, b, b"hello");
            h.record_event(t, NodeId(1), &("got", 5u32));
        }
        assert_eq!(x.digest(), y.digest());
        assert_eq!(x.records(), 2);

        let mut z = TraceHash::new();
        z.record_event(t, NodeId(1), &("got", 5u32));
        z.record_delivery(t, a, b, b"hello");
        assert_ne!(x.digest(), z.digest());
    }

    #[test]
    fn every_field_counts() {
        let t = Instant::from_millis(3);
        let (a, b) = (node_addr(0), node_addr(1));
        let base = {
            let mut h = TraceHash::new();
            h.record_delivery(t, a, b, b"x");
            h.digest()
        };
        let variants = [
            (Instant::from_millis(4), a, b, &b"x"[..]),
            (t, b, b, &b"x"[..]),
            (t, a, a, &b"x"[..]),
            (t, a, b, &b"y"[..]),
            (t, a, b, &b""[..]),
        ];
        for (t2, s, d, bytes) in variants {
            let mut h = TraceHash::new();
            h.record_delivery(t2, s, d, bytes);
            assert_ne!(h.digest(), base);
        }
    }

    #[test]
    fn digest_renders_as_hex() {
        let s = TraceHash::new().digest().to_string();
        assert_eq!(s.len(), 64);
        assert!(s.chars().all(|c| c.is_ascii_hexdigit()));
    }
}

//! A small, fast, *stable* non-cryptographic hasher for the engine's hot
//! maps (per-link fault state, address lookup, checker bookkeeping).
//!
//! The standard `HashMap` hasher is randomly keyed and comparatively slow;
//! the simulator hashes several small keys per datagram and never iterates
//! these maps, so a multiply-rotate word hasher (the FxHash construction)
//! is enough. It is not DoS-resistant, which does not matter here: all
//! keys come from the simulation itself.

use core::hash::{BuildHasherDefault, Hasher};
use std::collections::HashMap;
use std::net::SocketAddr;

const K: u64 = 0x517c_c1b7_2722_0a95;

/// Word-at-a-time multiply-rotate hasher.
#[derive(Clone, Copy, Debug, Default)]
pub struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w.get_mut(..rest.len())
                .map(|d| d.copy_from_slice(rest))
                .unwrap_or(());
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// A `HashMap` using [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A compact, exact key for one endpoint: IPv4 endpoints pack into 64 bits;
/// IPv6 endpoints keep all their bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointKey {
    /// `1 << 48 | ip << 16 | port`.
    V4(u64),
    /// Address bits and port.
    V6(u128, u16),
}

impl EndpointKey {
    /// The key of `a`.
    #[inline]
    pub fn of(a: &SocketAddr) -> Self {
        match a {
            SocketAddr::V4(v4) => EndpointKey::V4(
                (1u64 << 48) | (u64::from(v4.ip().to_bits()) << 16) | u64::from(v4.port()),
            ),
            SocketAddr::V6(v6) => EndpointKey::V6(v6.ip().to_bits(), v6.port()),
        }
    }
}

/// Key of a directed link (source, destination) for per-link state maps.
pub type LinkKey = (EndpointKey, EndpointKey);

/// The [`LinkKey`] of `src → dst`.
#[inline]
pub fn link_key(src: &SocketAddr, dst: &SocketAddr) -> LinkKey {
    (EndpointKey::of(src), EndpointKey::of(dst))
}

/// A 64-bit digest of a byte string (length included).
pub fn digest(bytes: &[u8]) -> u64 {
    let mut h = FastHasher::default();
    h.write_usize(bytes.len());
    h.write(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_stable_and_sensitive() {
        assert_eq!(digest(b"hello world"), digest(b"hello world"));
        assert_ne!(digest(b"hello world"), digest(b"hello worle"));
        assert_ne!(digest(b""), digest(b"\0"));
        assert_ne!(digest(b"\0"), digest(b"\0\0"));
        // Every single-bit flip in a 32-byte buffer changes the digest.
        let base = [7u8; 32];
        let d = digest(&base);
        for i in 0..32 {
            for bit in 0..8 {
                let mut b = base;
                b[i] ^= 1 << bit;
                assert_ne!(digest(&b), d, "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn link_keys_are_exact_and_directed() {
        use crate::node::node_addr;
        let a = node_addr(0);
        let b = node_addr(1);
        assert_ne!(link_key(&a, &b), link_key(&b, &a));
        let p1: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let p2: SocketAddr = "10.0.0.1:2".parse().unwrap();
        let v6: SocketAddr = "[::a00:1]:1".parse().unwrap();
        let keys: std::collections::HashSet<_> =
            [a, b, p1, p2, v6].iter().map(EndpointKey::of).collect();
        assert_eq!(keys.len(), 5);
    }

    #[test]
    fn map_works_with_socket_addr_keys() {
        let mut m: FastMap<(std::net::SocketAddr, std::net::SocketAddr), u32> = FastMap::default();
        for i in 0..1000 {
            m.insert(
                (crate::node::node_addr(i), crate::node::node_addr(i + 1)),
                i as u32,
            );
        }
        for i in 0..1000 {
            assert_eq!(
                m.get(&(crate::node::node_addr(i), crate::node::node_addr(i + 1))),
                Some(&(i as u32))
            );
        }
    }
}

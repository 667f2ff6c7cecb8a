//! Buffers for received stream payloads, reused (owned by the node).
//!
//! Every data segment needs an owned copy of its payload until the
//! application reads it. Allocating one per segment and freeing them in
//! bursts when the reader drains its queue made the C allocator return
//! the top of its heap to the kernel and fault it back in on the next
//! burst: about a tenth of an embedded receiver's CPU under bulk
//! transfer. The node keeps the buffers the reader emptied
//! ([`PayloadPool::put`]) and copies the next payloads into them
//! ([`PayloadPool::copy`]); at most [`POOL_BUFFERS`] are kept, and a pool
//! unused for a whole sweep period is freed ([`PayloadPool::sweep`]), so
//! an idle node holds none.

use bytes::Bytes;

/// Most buffers kept.
pub(crate) const POOL_BUFFERS: usize = 256;
/// Payloads shorter than this (SACK records, small writes) are not pooled.
const MIN_POOLED: usize = 512;

/// The node's payload buffers.
#[derive(Debug, Default)]
pub(crate) struct PayloadPool {
    free: Vec<Vec<u8>>,
    used: bool,
}

impl PayloadPool {
    /// An owned copy of `data`, in a reused buffer when one fits.
    pub(crate) fn copy(&mut self, data: &[u8]) -> Bytes {
        if data.len() < MIN_POOLED {
            return Bytes::copy_from_slice(data);
        }
        self.used = true;
        match self.free.pop() {
            // Exactly the size: a `Bytes` made from a full vector needs no
            // further allocation, and keeps the buffer reclaimable.
            Some(mut v) if v.capacity() == data.len() => {
                v.clear();
                v.extend_from_slice(data);
                Bytes::from(v)
            }
            _ => Bytes::copy_from_slice(data),
        }
    }

    /// Takes back a payload the application has read, if it can be reused.
    pub(crate) fn put(&mut self, b: Bytes) {
        if self.free.len() >= POOL_BUFFERS || !b.is_empty() || !b.is_unique() {
            return;
        }
        let v = Vec::from(b);
        if v.capacity() >= MIN_POOLED {
            self.free.push(v);
        }
    }

    /// Frees the buffers if the pool was not used since the last sweep.
    pub(crate) fn sweep(&mut self) {
        if !core::mem::take(&mut self.used) {
            self.free = Vec::new();
        }
    }

    /// Buffers held.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    #[test]
    fn read_payloads_are_reused_and_an_unused_pool_is_freed() {
        let mut p = PayloadPool::default();
        let mut a = p.copy(&[1u8; 4096]);
        let addr = a.as_ptr();
        a.advance(4096);
        p.put(a);
        assert_eq!(p.held(), 1);
        let b = p.copy(&[2u8; 4096]);
        assert_eq!(b.as_ptr(), addr, "the emptied buffer was reused");
        assert_eq!(&b[..], &[2u8; 4096][..]);
        assert_eq!(p.held(), 0);
        // Small payloads, unread ones and shared ones are not taken.
        let s = p.copy(b"sack");
        assert_eq!(&s[..], b"sack");
        p.put(s);
        p.put(b.clone());
        let mut c = b.clone();
        c.advance(4096);
        p.put(c);
        assert_eq!(p.held(), 0);
        drop(b);
        // A used pool survives one sweep; an unused one is freed.
        let mut d = p.copy(&[3u8; 1000]);
        d.advance(1000);
        p.put(d);
        p.sweep();
        assert_eq!(p.held(), 1);
        p.sweep();
        assert_eq!(p.held(), 0);
    }

    #[test]
    fn the_pool_is_bounded() {
        let mut p = PayloadPool::default();
        for _ in 0..POOL_BUFFERS + 10 {
            let mut b = Bytes::from(vec![0u8; 1000]);
            b.advance(1000);
            p.put(b);
        }
        assert_eq!(p.held(), POOL_BUFFERS);
    }
}

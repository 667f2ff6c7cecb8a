//! The port table of a node (`spec/node.md` §4): which ports the
//! application has bound, and the ephemeral allocator (a bitmap over
//! 49152–65535 with a round-robin cursor, `spec/node.md` §4.2).

use std::collections::BTreeSet;

use crate::addr::ports::{EPHEMERAL, EPHEMERAL_COUNT};

/// Why a port operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The port is already bound.
    #[error("port {0} already bound")]
    AlreadyBound(u16),
    /// The port is not bound.
    #[error("port {0} not bound")]
    NotBound(u16),
    /// Every ephemeral port is in use.
    #[error("ephemeral ports exhausted")]
    Exhausted,
    /// Port 0 is the control port and cannot be bound.
    #[error("port 0 is reserved for the control protocol")]
    Reserved,
}

const WORDS: usize = (EPHEMERAL_COUNT as usize).div_ceil(64);

/// Bound ports plus the ephemeral allocator.
#[derive(Clone, Debug)]
pub struct PortTable {
    bound: BTreeSet<u16>,
    used: [u64; WORDS],
    cursor: u32,
}

impl Default for PortTable {
    fn default() -> Self {
        PortTable {
            bound: BTreeSet::new(),
            used: [0; WORDS],
            cursor: 0,
        }
    }
}

fn index(port: u16) -> Option<u32> {
    port.checked_sub(*EPHEMERAL.start()).map(u32::from)
}

impl PortTable {
    /// An empty table, cursor at 49152.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `port` for the application (any port but 0, ephemeral ones
    /// included).
    pub fn bind(&mut self, port: u16) -> Result<(), PortError> {
        if port == 0 {
            return Err(PortError::Reserved);
        }
        if !self.bound.insert(port) {
            return Err(PortError::AlreadyBound(port));
        }
        Ok(())
    }

    /// Unbinds `port`.
    pub fn unbind(&mut self, port: u16) -> Result<(), PortError> {
        if self.bound.remove(&port) {
            Ok(())
        } else {
            Err(PortError::NotBound(port))
        }
    }

    /// Whether `port` is bound.
    pub fn is_bound(&self, port: u16) -> bool {
        self.bound.contains(&port)
    }

    fn is_used(&self, i: u32) -> bool {
        self.used
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    fn set_used(&mut self, i: u32, on: bool) {
        if let Some(w) = self.used.get_mut((i / 64) as usize) {
            if on {
                *w |= 1u64 << (i % 64);
            } else {
                *w &= !(1u64 << (i % 64));
            }
        }
    }

    /// Allocates the first free ephemeral port at or after the cursor
    /// (wrapping) that is neither allocated nor bound, and moves the cursor
    /// just past it.
    pub fn alloc_ephemeral(&mut self) -> Result<u16, PortError> {
        for step in 0..EPHEMERAL_COUNT {
            let i = (self.cursor + step) % EPHEMERAL_COUNT;
            let port = u16::try_from(i + u32::from(*EPHEMERAL.start()))
                .map_err(|_| PortError::Exhausted)?;
            if !self.is_used(i) && !self.bound.contains(&port) {
                self.set_used(i, true);
                self.cursor = (i + 1) % EPHEMERAL_COUNT;
                return Ok(port);
            }
        }
        Err(PortError::Exhausted)
    }

    /// Releases an ephemeral port (no effect on other ports).
    pub fn free_ephemeral(&mut self, port: u16) {
        if let Some(i) = index(port) {
            self.set_used(i, false);
        }
    }

    /// Whether an ephemeral port is allocated.
    pub fn is_allocated(&self, port: u16) -> bool {
        index(port).is_some_and(|i| self.is_used(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_twice_fails_and_unbind_frees() {
        let mut p = PortTable::new();
        p.bind(1000).unwrap();
        assert_eq!(p.bind(1000), Err(PortError::AlreadyBound(1000)));
        assert!(p.is_bound(1000));
        p.unbind(1000).unwrap();
        assert_eq!(p.unbind(1000), Err(PortError::NotBound(1000)));
        assert_eq!(p.bind(0), Err(PortError::Reserved));
        p.bind(60000).unwrap();
    }

    #[test]
    fn ephemeral_is_round_robin_and_skips_used_and_bound() {
        let mut p = PortTable::new();
        assert_eq!(p.alloc_ephemeral(), Ok(49152));
        assert_eq!(p.alloc_ephemeral(), Ok(49153));
        p.free_ephemeral(49152);
        // The cursor moved on: a freed port is not reused at once.
        assert_eq!(p.alloc_ephemeral(), Ok(49154));
        p.bind(49155).unwrap();
        assert_eq!(p.alloc_ephemeral(), Ok(49156));
        assert!(p.is_allocated(49156));
        assert!(!p.is_allocated(49152));
    }

    #[test]
    fn ephemeral_wraps_and_exhausts() {
        let mut p = PortTable::new();
        for _ in 0..EPHEMERAL_COUNT {
            p.alloc_ephemeral().unwrap();
        }
        assert_eq!(p.alloc_ephemeral(), Err(PortError::Exhausted));
        p.free_ephemeral(50000);
        assert_eq!(p.alloc_ephemeral(), Ok(50000));
        p.free_ephemeral(49152);
        assert_eq!(p.alloc_ephemeral(), Ok(49152));
    }
}

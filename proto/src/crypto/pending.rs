//! Plaintexts waiting for a session (`spec/crypto.md` §6.3): per peer FIFO
//! of at most [`PENDING_PER_PEER`] packets, at most [`PENDING_PEERS`] peers,
//! and a total byte budget. When full, the *new* packet is refused so the
//! oldest (SYN, first data) survive.

use std::collections::{BTreeMap, VecDeque};

use super::params::{PENDING_PEERS, PENDING_PER_PEER};

/// Default total byte budget of all pending queues (our addition, so that
/// memory does not grow to 256 × 64 × 64 KiB).
pub const PENDING_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Why a packet was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PendingError {
    /// The peer already has the maximum number of queued packets.
    #[error("pending queue of the peer is full")]
    PeerFull,
    /// The maximum number of peers already have a queue.
    #[error("too many peers with pending packets")]
    TooManyPeers,
    /// The total byte budget is used up.
    #[error("pending byte budget exhausted")]
    NoMemory,
}

/// Limits of a [`PendingQueues`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimits {
    /// Packets per peer.
    pub per_peer: usize,
    /// Peers with a queue.
    pub peers: usize,
    /// Total bytes over all queues.
    pub bytes: usize,
}

impl Default for PendingLimits {
    fn default() -> Self {
        PendingLimits {
            per_peer: PENDING_PER_PEER,
            peers: PENDING_PEERS,
            bytes: PENDING_MAX_BYTES,
        }
    }
}

/// The pending queues of all peers.
#[derive(Debug, Default)]
pub struct PendingQueues {
    limits: PendingLimits,
    queues: BTreeMap<u32, VecDeque<Vec<u8>>>,
    bytes: usize,
}

impl PendingQueues {
    /// Empty queues with `limits`.
    pub fn new(limits: PendingLimits) -> Self {
        PendingQueues {
            limits,
            queues: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// Queues a copy of `packet` for `peer`.
    pub fn push(&mut self, peer: u32, packet: &[u8]) -> Result<(), PendingError> {
        if self.bytes.saturating_add(packet.len()) > self.limits.bytes {
            return Err(PendingError::NoMemory);
        }
        let n_peers = self.queues.len();
        let q = match self.queues.get_mut(&peer) {
            Some(q) => q,
            None if n_peers >= self.limits.peers => return Err(PendingError::TooManyPeers),
            None => self.queues.entry(peer).or_default(),
        };
        if q.len() >= self.limits.per_peer {
            return Err(PendingError::PeerFull);
        }
        q.push_back(packet.to_vec());
        self.bytes += packet.len();
        Ok(())
    }

    /// Removes and returns `peer`'s queue (FIFO order).
    pub fn take(&mut self, peer: u32) -> VecDeque<Vec<u8>> {
        let q = self.queues.remove(&peer).unwrap_or_default();
        self.bytes -= q.iter().map(Vec::len).sum::<usize>();
        q
    }

    /// Number of packets queued for `peer`.
    pub fn len(&self, peer: u32) -> usize {
        self.queues.get(&peer).map_or(0, VecDeque::len)
    }

    /// Total bytes queued.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_newest_and_bounds() {
        let mut q = PendingQueues::new(PendingLimits {
            per_peer: 2,
            peers: 2,
            bytes: 10,
        });
        q.push(1, b"syn").unwrap();
        q.push(1, b"d1").unwrap();
        assert_eq!(q.push(1, b"d2"), Err(PendingError::PeerFull));
        q.push(2, b"x").unwrap();
        assert_eq!(q.push(3, b"y"), Err(PendingError::TooManyPeers));
        assert_eq!(q.push(2, b"123456"), Err(PendingError::NoMemory));
        assert_eq!(q.bytes(), 6);
        let taken: Vec<_> = q.take(1).into_iter().collect();
        assert_eq!(taken, vec![b"syn".to_vec(), b"d1".to_vec()]);
        assert_eq!(q.bytes(), 1);
        assert_eq!(q.len(1), 0);
        q.push(3, b"y").unwrap();
        assert!(q.take(9).is_empty());
    }
}

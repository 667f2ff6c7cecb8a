//! A TEST-ONLY toy node shared by the integration tests: it sends numbered
//! datagrams to every peer at a fixed interval and reports what it receives.
//! Never exported, never registered as a scenario.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use pilot_proto::time::Instant;
use pilot_sim::{SimNode, Transmit};

/// What the toy node reports.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ev {
    /// Datagram number `seq` from `from` arrived.
    Got {
        /// Who sent it (as the receiver sees it).
        from: SocketAddr,
        /// Its number.
        seq: u64,
    },
}

/// Sends `rounds` numbered datagrams (payload: seq as 8 bytes BE, then
/// padding up to `size`) to each peer, one round every `interval`.
pub struct Toy {
    /// Where each round goes.
    pub peers: Vec<SocketAddr>,
    /// Time between rounds.
    pub interval: Duration,
    /// Datagram size (at least 8).
    pub size: usize,
    /// Rounds to send in total.
    pub rounds: u64,
    /// Rounds sent so far.
    pub sent_rounds: u64,
    /// When the next round is due.
    pub next: Option<Instant>,
    /// Datagrams waiting for `poll_transmit`.
    pub out: VecDeque<(SocketAddr, u64)>,
    /// Events waiting for `poll_event`.
    pub events: VecDeque<Ev>,
    /// Every datagram received: (time, from, seq).
    pub received: Vec<(Instant, SocketAddr, u64)>,
    /// Every `handle_timeout` call.
    pub timeouts: Vec<Instant>,
    /// If set, echo every datagram back to its sender once (seq + 1_000_000).
    pub echo: bool,
}

impl Toy {
    /// A node that starts sending at `start`.
    pub fn new(peers: Vec<SocketAddr>, start: Instant, interval: Duration, rounds: u64) -> Self {
        Toy {
            peers,
            interval,
            size: 64,
            rounds,
            sent_rounds: 0,
            next: (rounds > 0).then_some(start),
            out: VecDeque::new(),
            events: VecDeque::new(),
            received: Vec::new(),
            timeouts: Vec::new(),
            echo: false,
        }
    }

    /// Sequence number of round `r` to peer `p`.
    pub fn seq(round: u64, peer_index: usize) -> u64 {
        round * 1000 + peer_index as u64
    }
}

impl SimNode for Toy {
    type Event = Ev;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let seq = u64::from_be_bytes(bytes[..8].try_into().unwrap());
        self.received.push((now, from, seq));
        self.events.push_back(Ev::Got { from, seq });
        if self.echo && seq < 1_000_000 {
            self.out.push_back((from, seq + 1_000_000));
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.timeouts.push(now);
        let Some(due) = self.next else { return };
        if now < due {
            return;
        }
        for (i, p) in self.peers.iter().enumerate() {
            self.out.push_back((*p, Toy::seq(self.sent_rounds, i)));
        }
        self.sent_rounds += 1;
        self.next = (self.sent_rounds < self.rounds).then(|| due + self.interval);
    }

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let (dst, seq) = self.out.pop_front()?;
        buf[..8].copy_from_slice(&seq.to_be_bytes());
        buf[8..self.size].fill(0xab);
        Some(Transmit {
            dst,
            len: self.size,
        })
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    fn poll_event(&mut self) -> Option<Ev> {
        self.events.pop_front()
    }
}

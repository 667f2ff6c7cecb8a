//! The 256-counter replay window of one session (`spec/crypto.md` §5.1).
//!
//! [`ReplayWindow::check`] is pure and runs before decryption;
//! [`ReplayWindow::record`] runs only after the frame authenticated, so a
//! forged frame can never move the window.

use super::params::REPLAY_WINDOW;

/// The window's verdict on a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before and not too old.
    Accept,
    /// Inside the window and already seen.
    Replay,
    /// At least 256 behind the highest counter seen (or the invalid 0).
    Outside,
}

/// Highest counter seen plus a 256-bit bitmap indexed by `counter mod 256`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    max: u64,
    bits: [u64; 4],
}

impl ReplayWindow {
    /// An empty window (nothing received yet).
    pub const fn new() -> Self {
        ReplayWindow {
            max: 0,
            bits: [0; 4],
        }
    }

    /// Highest counter recorded so far (0 = none).
    pub const fn max(&self) -> u64 {
        self.max
    }

    fn slot(c: u64) -> (usize, u64) {
        let i = (c % REPLAY_WINDOW) as usize;
        (i / 64, 1u64 << (i % 64))
    }

    fn is_set(&self, c: u64) -> bool {
        let (w, m) = Self::slot(c);
        self.bits.get(w).is_some_and(|word| word & m != 0)
    }

    fn set(&mut self, c: u64, on: bool) {
        let (w, m) = Self::slot(c);
        if let Some(word) = self.bits.get_mut(w) {
            if on {
                *word |= m;
            } else {
                *word &= !m;
            }
        }
    }

    /// Judges `c` without changing anything.
    ///
    /// Counter 0 is never produced by a correct sender and is always
    /// refused (the Go code would accept it repeatedly on a fresh window).
    pub fn check(&self, c: u64) -> Verdict {
        if c == 0 {
            return Verdict::Outside;
        }
        if self.max == 0 || c > self.max {
            return Verdict::Accept;
        }
        if self.max - c >= REPLAY_WINDOW {
            return Verdict::Outside;
        }
        if self.is_set(c) {
            Verdict::Replay
        } else {
            Verdict::Accept
        }
    }

    /// Records `c` if [`check`](Self::check) accepts it and returns the
    /// verdict. Call only after the frame carrying `c` authenticated.
    pub fn record(&mut self, c: u64) -> Verdict {
        let v = self.check(c);
        if v != Verdict::Accept {
            return v;
        }
        if self.max == 0 {
            self.max = c;
        } else if c > self.max {
            let shift = c - self.max;
            if shift >= REPLAY_WINDOW {
                self.bits = [0; 4];
            } else {
                // Forget the slots that now stand for max+1 ..= c.
                for s in 0..shift {
                    self.set(c - s, false);
                }
            }
            self.max = c;
        }
        self.set(c, true);
        Verdict::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// spec/crypto.md §5.2
    #[test]
    fn spec_sequence() {
        use Verdict::*;
        let seq = [
            (1, Accept, 1),
            (2, Accept, 2),
            (3, Accept, 3),
            (3, Replay, 3),
            (300, Accept, 300),
            (44, Outside, 300),
            (45, Accept, 300),
            (43, Outside, 300),
            (2, Outside, 300),
            (301, Accept, 301),
            (45, Outside, 301),
            (46, Accept, 301),
        ];
        let mut w = ReplayWindow::new();
        for (c, v, max) in seq {
            assert_eq!(w.record(c), v, "counter {c}");
            assert_eq!(w.max(), max);
        }
    }

    #[test]
    fn check_does_not_modify() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(5), Verdict::Accept);
        assert_eq!(w, ReplayWindow::new());
        w.record(5);
        let before = w.clone();
        assert_eq!(w.check(5), Verdict::Replay);
        assert_eq!(w.check(6), Verdict::Accept);
        assert_eq!(w, before);
    }

    #[test]
    fn zero_is_never_accepted() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.record(0), Verdict::Outside);
        assert_eq!(w.record(0), Verdict::Outside);
        assert_eq!(w.max(), 0);
    }

    /// Obviously correct model: the set of every counter ever accepted.
    #[derive(Default)]
    struct Model {
        seen: std::collections::BTreeSet<u64>,
        max: u64,
    }

    impl Model {
        fn record(&mut self, c: u64) -> Verdict {
            if c == 0 || (self.max >= REPLAY_WINDOW && c <= self.max - REPLAY_WINDOW) {
                return Verdict::Outside;
            }
            if !self.seen.insert(c) {
                return Verdict::Replay;
            }
            self.max = self.max.max(c);
            Verdict::Accept
        }
    }

    fn counters() -> impl Strategy<Value = Vec<u64>> {
        // A walk of small steps, big jumps and huge jumps around a base that
        // may sit anywhere in u64, so the window wraps its bitmap often.
        (
            any::<u64>(),
            proptest::collection::vec(
                prop_oneof![
                    4 => -300i64..300,
                    1 => -2000i64..2000,
                    1 => any::<i64>(),
                ],
                1..400,
            ),
        )
            .prop_map(|(base, steps)| {
                let mut c = base / 2;
                steps
                    .into_iter()
                    .map(|s| {
                        c = c.wrapping_add_signed(s) % (u64::MAX - 1) + 1;
                        c
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn matches_reference_model(seq in counters()) {
            let mut w = ReplayWindow::new();
            let mut m = Model::default();
            for c in seq {
                let expect = m.record(c);
                prop_assert_eq!(w.check(c), expect, "check {}", c);
                prop_assert_eq!(w.record(c), expect, "record {}", c);
                prop_assert_eq!(w.max(), m.max);
            }
        }

        #[test]
        fn dense_small_counters_match_model(seq in proptest::collection::vec(0u64..1200, 1..600)) {
            let mut w = ReplayWindow::new();
            let mut m = Model::default();
            for c in seq {
                prop_assert_eq!(w.record(c), m.record(c), "counter {}", c);
            }
        }
    }
}

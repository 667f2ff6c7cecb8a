//! 32-bit stream sequence numbers with serial-number arithmetic
//! (`spec/transport.md` §3).
//!
//! Sequence numbers wrap. `a` is *after* `b` when `a - b`, taken as a signed
//! 32-bit value, is positive. This is only a meaningful order for values
//! less than 2^31 apart, which every window of this transport is.

use core::fmt;

/// A stream sequence number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seq(pub u32);

impl Seq {
    /// `self + n`, wrapping.
    #[must_use]
    pub const fn add(self, n: u32) -> Seq {
        Seq(self.0.wrapping_add(n))
    }

    /// `self + n` for a byte count, wrapping (counts above `u32::MAX` wrap too).
    #[must_use]
    pub const fn add_len(self, n: usize) -> Seq {
        Seq(self.0.wrapping_add(n as u32))
    }

    /// Distance from `earlier` to `self`, wrapping (`self - earlier`).
    #[must_use]
    pub const fn since(self, earlier: Seq) -> u32 {
        self.0.wrapping_sub(earlier.0)
    }

    /// Signed serial difference `self - other`.
    const fn diff(self, other: Seq) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }

    /// `self` strictly after `other`.
    #[must_use]
    pub const fn after(self, other: Seq) -> bool {
        self.diff(other) > 0
    }

    /// `self` strictly before `other`.
    #[must_use]
    pub const fn before(self, other: Seq) -> bool {
        self.diff(other) < 0
    }

    /// `self` after or equal to `other`.
    #[must_use]
    pub const fn after_eq(self, other: Seq) -> bool {
        self.diff(other) >= 0
    }

    /// `self` before or equal to `other`.
    #[must_use]
    pub const fn before_eq(self, other: Seq) -> bool {
        self.diff(other) <= 0
    }

    /// The later of two sequence numbers.
    #[must_use]
    pub const fn max(self, other: Seq) -> Seq {
        if self.after(other) { self } else { other }
    }

    /// The earlier of two sequence numbers.
    #[must_use]
    pub const fn min(self, other: Seq) -> Seq {
        if self.before(other) { self } else { other }
    }

    /// `lo <= self < hi` in serial order.
    #[must_use]
    pub const fn in_range(self, lo: Seq, hi: Seq) -> bool {
        self.after_eq(lo) && self.before(hi)
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.0)
    }
}

impl From<u32> for Seq {
    fn from(v: u32) -> Seq {
        Seq(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_across_wrap() {
        let a = Seq(u32::MAX - 1);
        let b = a.add(4);
        assert_eq!(b, Seq(2));
        assert!(b.after(a));
        assert!(a.before(b));
        assert!(!a.after(b));
        assert_eq!(b.since(a), 4);
        assert!(a.after_eq(a) && a.before_eq(a));
        assert_eq!(a.max(b), b);
        assert_eq!(a.min(b), a);
        assert!(Seq(0).in_range(a, b));
        assert!(!b.in_range(a, b));
    }

    #[test]
    fn zero_is_an_ordinary_value() {
        assert!(Seq(0).after(Seq(u32::MAX)));
        assert!(Seq(1).after(Seq(0)));
        assert_eq!(Seq(0).add_len(5), Seq(5));
    }
}

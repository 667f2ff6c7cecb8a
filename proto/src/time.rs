//! Time as a value. `proto` never reads a clock: drivers and the simulator
//! pass the current [`Instant`] into every call. An `Instant` is a count of
//! nanoseconds since an arbitrary epoch chosen by the caller, so the
//! simulator and the fuzzer can create any time they like.
//!
//! The registry is the one part that hands out **wall-clock** values
//! (heartbeat `time`, inbox timestamps, snapshot dates, signature
//! windows). Its time is a [`UnixTime`], a different type, so a node's
//! monotonic [`Instant`] can never be passed where Unix time is meant (or
//! the other way round) without an explicit conversion.

use core::time::Duration;

/// A point in time, in nanoseconds since a caller-chosen epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The epoch itself.
    pub const ZERO: Instant = Instant(0);

    /// An instant `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant(nanos)
    }

    /// An instant `millis` milliseconds after the epoch (saturating).
    pub const fn from_millis(millis: u64) -> Self {
        Instant(millis.saturating_mul(1_000_000))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at the far future instead of overflowing.
    pub fn saturating_add(self, d: Duration) -> Instant {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(nanos))
    }

    /// `self - d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Instant {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_sub(nanos))
    }
}

impl core::ops::Add<Duration> for Instant {
    type Output = Instant;
    /// Saturating addition (never panics).
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

/// A wall-clock time: nanoseconds since the Unix epoch (1970-01-01T00:00:00Z).
///
/// The registry's clock (`crate::registry`). Drivers read it from the
/// system clock, the simulator derives it from its virtual time; it is never
/// an [`Instant`] (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(u64);

impl UnixTime {
    /// The Unix epoch itself.
    pub const ZERO: UnixTime = UnixTime(0);

    /// `nanos` nanoseconds after the Unix epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        UnixTime(nanos)
    }

    /// `millis` milliseconds after the Unix epoch (saturating).
    pub const fn from_millis(millis: u64) -> Self {
        UnixTime(millis.saturating_mul(1_000_000))
    }

    /// `secs` seconds after the Unix epoch (saturating).
    pub const fn from_secs(secs: u64) -> Self {
        UnixTime(secs.saturating_mul(1_000_000_000))
    }

    /// Nanoseconds since the Unix epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }

    /// Whole seconds since the Unix epoch.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1_000_000_000
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: UnixTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at the far future instead of overflowing.
    pub fn saturating_add(self, d: Duration) -> UnixTime {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        UnixTime(self.0.saturating_add(nanos))
    }

    /// `self - d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> UnixTime {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        UnixTime(self.0.saturating_sub(nanos))
    }

    /// The wall-clock time of the monotonic instant `now`, for a clock whose
    /// [`Instant::ZERO`] was at Unix time `epoch` (the one place the two
    /// kinds of time meet: a node signing a timestamped registry request).
    pub fn of_instant(epoch: UnixTime, now: Instant) -> UnixTime {
        epoch.saturating_add(now.saturating_duration_since(Instant::ZERO))
    }
}

impl core::ops::Add<Duration> for UnixTime {
    type Output = UnixTime;
    /// Saturating addition (never panics).
    fn add(self, d: Duration) -> UnixTime {
        self.saturating_add(d)
    }
}

/// Proleptic Gregorian calendar arithmetic on day counts since 1970-01-01,
/// shared by the modules that read and write wall-clock timestamps
/// (registry JSON, service payloads). Pure integer math, no clock.
pub(crate) mod civil {
    /// Days since 1970-01-01 of a proleptic Gregorian date.
    pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = i64::from(m);
        let mp = if m > 2 { m - 3 } else { m + 9 };
        let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
    pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_millis(5);
        assert_eq!(t.as_nanos(), 5_000_000);
        assert_eq!(
            (t + Duration::from_millis(3)).saturating_duration_since(t),
            Duration::from_millis(3)
        );
        assert_eq!(
            t.saturating_duration_since(t + Duration::from_secs(1)),
            Duration::ZERO
        );
        assert_eq!(
            Instant::from_nanos(u64::MAX) + Duration::from_secs(1),
            Instant::from_nanos(u64::MAX)
        );
        assert_eq!(t.saturating_sub(Duration::from_secs(1)), Instant::ZERO);
    }

    #[test]
    fn unix_time_units_and_the_instant_bridge() {
        let u = UnixTime::from_secs(1_767_225_600);
        assert_eq!(u.as_millis(), 1_767_225_600_000);
        assert_eq!(u.as_secs(), 1_767_225_600);
        assert_eq!(UnixTime::from_millis(1_500).as_nanos(), 1_500_000_000);
        assert_eq!(
            (u + Duration::from_millis(7)).saturating_duration_since(u),
            Duration::from_millis(7)
        );
        assert_eq!(
            u.saturating_duration_since(u + Duration::from_secs(1)),
            Duration::ZERO
        );
        assert_eq!(
            UnixTime::from_nanos(u64::MAX) + Duration::from_secs(1),
            UnixTime::from_nanos(u64::MAX)
        );
        assert_eq!(
            UnixTime::from_secs(1).saturating_sub(Duration::from_secs(2)),
            UnixTime::ZERO
        );
        // A node whose clock started at `u`: 2.5 s later it is u + 2.5 s.
        let later = UnixTime::of_instant(u, Instant::from_millis(2_500));
        assert_eq!(
            later.saturating_duration_since(u),
            Duration::from_millis(2_500)
        );
    }
}

//! Wall-clock helpers. Registry instants are nanoseconds since the Unix
//! epoch (see the module docs of [`crate::registry`]); this module turns
//! them into Unix seconds and RFC 3339 text and back, without a clock and
//! without a date library.

use crate::time::UnixTime;
use crate::time::civil::{civil_from_days, days_from_civil};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Whole Unix seconds of a registry instant.
pub fn unix_secs(t: UnixTime) -> u64 {
    t.as_nanos() / NANOS_PER_SEC
}

/// Formats an instant as RFC 3339 in UTC (`2026-01-01T00:00:00Z`), with the
/// fraction of a second only when it is non-zero (trailing zeros trimmed).
pub fn to_rfc3339(t: UnixTime) -> String {
    let secs = t.as_nanos() / NANOS_PER_SEC;
    let nanos = t.as_nanos() % NANOS_PER_SEC;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, mo, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Why an RFC 3339 timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeParseError {
    /// The text does not have the RFC 3339 shape.
    #[error("malformed RFC 3339 timestamp")]
    Malformed,
    /// The timestamp is before 1970 or too far in the future.
    #[error("timestamp out of range")]
    OutOfRange,
}

fn digits(s: &str) -> Result<u32, TimeParseError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TimeParseError::Malformed);
    }
    s.parse().map_err(|_| TimeParseError::Malformed)
}

/// Parses RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`) into an instant.
pub fn parse_rfc3339(s: &str) -> Result<UnixTime, TimeParseError> {
    let (date, rest) = s
        .split_once(['T', 't', ' '])
        .ok_or(TimeParseError::Malformed)?;
    let mut dp = date.split('-');
    let (Some(y), Some(mo), Some(d), None) = (dp.next(), dp.next(), dp.next(), dp.next()) else {
        return Err(TimeParseError::Malformed);
    };
    if y.len() != 4 || mo.len() != 2 || d.len() != 2 {
        return Err(TimeParseError::Malformed);
    }
    let (y, mo, d) = (digits(y)?, digits(mo)?, digits(d)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return Err(TimeParseError::Malformed);
    }
    // Split the offset off the time of day.
    let (clock, offset_secs): (&str, i64) =
        if let Some(c) = rest.strip_suffix('Z').or_else(|| rest.strip_suffix('z')) {
            (c, 0)
        } else {
            let pos = rest.rfind(['+', '-']).ok_or(TimeParseError::Malformed)?;
            let (c, off) = rest
                .split_at_checked(pos)
                .ok_or(TimeParseError::Malformed)?;
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let (oh, om) = off
                .get(1..)
                .and_then(|o| o.split_once(':'))
                .ok_or(TimeParseError::Malformed)?;
            if oh.len() != 2 || om.len() != 2 {
                return Err(TimeParseError::Malformed);
            }
            let (oh, om) = (digits(oh)?, digits(om)?);
            if oh > 23 || om > 59 {
                return Err(TimeParseError::Malformed);
            }
            (c, sign * i64::from(oh * 3600 + om * 60))
        };
    let (hms, frac) = match clock.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (clock, None),
    };
    let mut tp = hms.split(':');
    let (Some(h), Some(mi), Some(sec), None) = (tp.next(), tp.next(), tp.next(), tp.next()) else {
        return Err(TimeParseError::Malformed);
    };
    if h.len() != 2 || mi.len() != 2 || sec.len() != 2 {
        return Err(TimeParseError::Malformed);
    }
    let (h, mi, sec) = (digits(h)?, digits(mi)?, digits(sec)?);
    if h > 23 || mi > 59 || sec > 60 {
        return Err(TimeParseError::Malformed);
    }
    let nanos: u64 = match frac {
        None => 0,
        Some(f) => {
            if f.is_empty() || f.len() > 9 {
                return Err(TimeParseError::Malformed);
            }
            u64::from(digits(f)?) * 10u64.pow(9 - f.len() as u32)
        }
    };
    let days = days_from_civil(i64::from(y), mo, d);
    let total = days * 86_400 + i64::from(h * 3600 + mi * 60 + sec) - offset_secs;
    let total = u64::try_from(total).map_err(|_| TimeParseError::OutOfRange)?;
    total
        .checked_mul(NANOS_PER_SEC)
        .and_then(|n| n.checked_add(nanos))
        .map(UnixTime::from_nanos)
        .ok_or(TimeParseError::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let t = UnixTime::from_nanos(1_767_225_600 * NANOS_PER_SEC);
        assert_eq!(to_rfc3339(t), "2026-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00Z"), Ok(t));
        assert_eq!(unix_secs(t), 1_767_225_600);
        assert_eq!(to_rfc3339(UnixTime::ZERO), "1970-01-01T00:00:00Z");
        // 2024 is a leap year.
        let leap = parse_rfc3339("2024-02-29T12:34:56Z").map(unix_secs);
        assert_eq!(leap, Ok(1_709_210_096));
    }

    #[test]
    fn offsets_and_fractions() {
        let a = parse_rfc3339("2026-02-27T15:03:44+02:00");
        let b = parse_rfc3339("2026-02-27T13:03:44Z");
        assert_eq!(a, b);
        let n = parse_rfc3339("2026-02-27T15:03:44.123456789+02:00")
            .map(|t| t.as_nanos() % NANOS_PER_SEC);
        assert_eq!(n, Ok(123_456_789));
        let t = UnixTime::from_nanos(1_767_225_600 * NANOS_PER_SEC + 500_000_000);
        assert_eq!(to_rfc3339(t), "2026-01-01T00:00:00.5Z");
        assert_eq!(parse_rfc3339(&to_rfc3339(t)), Ok(t));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "2026-01-01",
            "2026-13-01T00:00:00Z",
            "2026-01-01T25:00:00Z",
            "1969-12-31T23:59:59Z",
            "2026-01-01T00:00:00.Z",
            "x026-01-01T00:00:00Z",
            "2026-01-01T00:00:00+0200",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trip_many() {
        let mut t = 0u64;
        for _ in 0..2000 {
            t = t
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                % (4_000_000_000 * NANOS_PER_SEC);
            let i = UnixTime::from_nanos(t);
            assert_eq!(parse_rfc3339(&to_rfc3339(i)), Ok(i));
        }
    }
}

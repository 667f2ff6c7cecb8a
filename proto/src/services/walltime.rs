//! Calendar time as the services write it to disk (`spec/services.md` §8):
//! RFC 3339 timestamps with a UTC offset and the compact
//! `YYYYMMDD-HHMMSS.mmm` stamp of file names. `proto` reads no clock; the
//! daemon passes a [`WallTime`] in.

use core::fmt;

use crate::time::civil::{civil_from_days, days_from_civil};

/// A wall-clock instant plus the local UTC offset it is displayed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, arbitrary::Arbitrary)]
pub struct WallTime {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub unix_secs: i64,
    /// Milliseconds within the second (0..=999; larger values are clamped
    /// when formatting).
    pub millis: u16,
    /// Local offset from UTC in seconds (east positive).
    pub offset_secs: i32,
}

/// Why an RFC 3339 timestamp did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeParseError {
    /// The text is not `YYYY-MM-DDTHH:MM:SS(Z|±HH:MM)`.
    #[error("not an RFC 3339 timestamp with second precision")]
    Syntax,
    /// A field is out of range (month 13, hour 24, ...).
    #[error("timestamp field out of range")]
    Range,
}

/// Broken-down local time.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl WallTime {
    /// A time with zero milliseconds.
    pub const fn new(unix_secs: i64, offset_secs: i32) -> WallTime {
        WallTime {
            unix_secs,
            millis: 0,
            offset_secs,
        }
    }

    fn local(&self) -> Civil {
        let local = self.unix_secs.saturating_add(i64::from(self.offset_secs));
        let days = local.div_euclid(86_400);
        let secs = local.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: secs / 3600,
            minute: secs / 60 % 60,
            second: secs % 60,
        }
    }

    /// RFC 3339 with second precision in the local offset, e.g.
    /// `2026-02-27T15:03:44+02:00` (`Z` for a zero offset).
    pub fn rfc3339(&self) -> Rfc3339 {
        Rfc3339(*self)
    }

    /// The compact local stamp `YYYYMMDD-HHMMSS.mmm` used in file names.
    pub fn file_stamp(&self) -> String {
        let c = self.local();
        format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}.{:03}",
            c.year,
            c.month,
            c.day,
            c.hour,
            c.minute,
            c.second,
            self.millis.min(999)
        )
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]` followed by `Z` or `±HH:MM`.
    /// A fraction of 1 to 9 digits is accepted and kept to milliseconds.
    pub fn parse_rfc3339(s: &str) -> Result<WallTime, TimeParseError> {
        let b = s.as_bytes();
        let num = |range: core::ops::Range<usize>| -> Result<u32, TimeParseError> {
            let part = b.get(range).ok_or(TimeParseError::Syntax)?;
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(TimeParseError::Syntax);
            }
            Ok(part
                .iter()
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
        };
        let sep = |i: usize, c: u8| -> Result<(), TimeParseError> {
            (b.get(i) == Some(&c))
                .then_some(())
                .ok_or(TimeParseError::Syntax)
        };
        let year = num(0..4)?;
        sep(4, b'-')?;
        let month = num(5..7)?;
        sep(7, b'-')?;
        let day = num(8..10)?;
        sep(10, b'T')?;
        let hour = num(11..13)?;
        sep(13, b':')?;
        let minute = num(14..16)?;
        sep(16, b':')?;
        let second = num(17..19)?;
        // Optional fraction: digits after '.', the first three kept as ms.
        let mut rest = 19;
        let mut millis = 0u16;
        if b.get(19) == Some(&b'.') {
            let digits = b
                .get(20..)
                .unwrap_or_default()
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            if digits == 0 || digits > 9 {
                return Err(TimeParseError::Syntax);
            }
            for i in 0..3 {
                let d = if i < digits { num(20 + i..21 + i)? } else { 0 };
                millis = millis * 10 + d as u16;
            }
            rest = 20 + digits;
        }
        let offset_secs: i32 = match b.get(rest..) {
            Some(b"Z") => 0,
            Some([sign @ (b'+' | b'-'), _, _, b':', _, _]) => {
                let oh = num(rest + 1..rest + 3)?;
                let om = num(rest + 4..rest + 6)?;
                if oh > 23 || om > 59 {
                    return Err(TimeParseError::Range);
                }
                let v = (oh * 3600 + om * 60) as i32;
                if *sign == b'-' { -v } else { v }
            }
            _ => return Err(TimeParseError::Syntax),
        };
        let days_in_month = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
            2 => 28,
            _ => return Err(TimeParseError::Range),
        };
        if day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
            return Err(TimeParseError::Range);
        }
        let days = days_from_civil(i64::from(year), month, day);
        let local = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
        Ok(WallTime {
            unix_secs: local - i64::from(offset_secs),
            millis,
            offset_secs,
        })
    }
}

/// Display adapter returned by [`WallTime::rfc3339`].
#[derive(Clone, Copy, Debug)]
pub struct Rfc3339(WallTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0.local();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            c.year, c.month, c.day, c.hour, c.minute, c.second
        )?;
        let off = self.0.offset_secs;
        if off == 0 {
            return f.write_str("Z");
        }
        let sign = if off < 0 { '-' } else { '+' };
        let abs = off.unsigned_abs() / 60;
        write!(f, "{sign}{:02}:{:02}", abs / 60, abs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reference_example_parses_and_formats() {
        let t = WallTime::parse_rfc3339("2026-02-27T15:03:44+02:00").unwrap();
        assert_eq!(t.unix_secs, 1_772_197_424);
        assert_eq!(t.offset_secs, 7200);
        assert_eq!(t.rfc3339().to_string(), "2026-02-27T15:03:44+02:00");
        let utc = WallTime::new(1_767_225_600, 0);
        assert_eq!(utc.rfc3339().to_string(), "2026-01-01T00:00:00Z");
        let with_ms = WallTime {
            unix_secs: 1_772_197_424,
            millis: 7,
            offset_secs: 7200,
        };
        assert_eq!(with_ms.file_stamp(), "20260227-150344.007");
        let frac = WallTime::parse_rfc3339("2026-02-27T15:03:44.0071239+02:00").unwrap();
        assert_eq!(frac, with_ms);
    }

    #[test]
    fn rejects_bad_text() {
        for s in [
            "",
            "2026-02-27",
            "2026-02-27T15:03:44",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-02-27T24:00:00Z",
            "2026-02-27T15:03:44.Z",
            "2026-02-27T15:03:44.1234567890Z",
            "2026-02-27T15:03:44+0200",
            "+026-02-27T15:03:44Z",
        ] {
            assert!(WallTime::parse_rfc3339(s).is_err(), "{s}");
        }
    }

    proptest! {
        #[test]
        fn rfc3339_round_trips(secs in -62_135_596_800i64..253_402_300_799 - 86_400,
                               off_min in -1439i32..=1439) {
            let t = WallTime::new(secs, off_min * 60);
            let text = t.rfc3339().to_string();
            prop_assert_eq!(WallTime::parse_rfc3339(&text), Ok(t));
        }
    }
}

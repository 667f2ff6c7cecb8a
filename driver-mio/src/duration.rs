//! The one duration syntax of every binary here (`pilotctl`, `pilot-daemon`,
//! their config files): `humantime` (`30s`, `2m`, `250ms`, `1m30s`,
//! `1h 30m`) or a plain number of seconds (`12`, `0.5`, `0`).

use std::time::Duration;

/// Parses a duration; the error says what is accepted.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("invalid duration {text:?}: seconds must be 0 or more"));
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("invalid duration {text:?} ({e}); use e.g. 30s, 2m, 500ms, 1m30s or seconds")
    })
}

/// Formats a duration the way [`parse`] reads it (`1m 30s`, `250ms`).
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_syntax() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("12"), Ok(Duration::from_secs(12)));
        assert_eq!(parse("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        for bad in ["ten", "5x", "-1s", "-1", "s", ""] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("invalid duration"), "{bad}: {e}");
        }
        assert_eq!(format(Duration::from_secs(90)), "1m 30s");
        assert_eq!(
            parse(&format(Duration::from_millis(1500))),
            Ok(Duration::from_millis(1500))
        );
    }
}

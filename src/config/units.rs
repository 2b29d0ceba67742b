//! Numbers, sizes and durations as the command line writes them: `30`, `16k`, `250ms`,
//! `1.5s`, `2m`. Pure functions; exact arithmetic (durations to the nanosecond, no floating
//! point).

use std::time::Duration;

/// Nanoseconds in a millisecond, a second, a minute, an hour and a day: the units of
/// [`parse_duration`], and of the bounds the duration options are checked against.
pub(crate) const MILLISECONDS: u64 = 1_000_000;
pub(crate) const SECONDS: u64 = 1000 * MILLISECONDS;
pub(crate) const MINUTES: u64 = 60 * SECONDS;
pub(crate) const HOUR: u64 = 60 * MINUTES;
pub(crate) const DAY: u64 = 24 * HOUR;

/// A duration written as a number with a unit (`250ms`, `3s`, `1.5s`, `2m`, `1h`) or a bare
/// number in `bare_unit` nanoseconds. Decimals are allowed (`.5s`), signs, exponents, spaces
/// and upper case are not. Exact to the nanosecond (no floating point).
pub fn parse_duration(text: &str, bare_unit: u64) -> Option<Duration> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    let unit = u128::from(match unit {
        "" => bare_unit,
        "ms" => MILLISECONDS,
        "s" => SECONDS,
        "m" => MINUTES,
        "h" => HOUR,
        _ => return None,
    });
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + fraction.len() == 0 || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole.checked_mul(unit)?;
    let mut place = unit;
    for digit in fraction.bytes() {
        place /= 10; // digits below a nanosecond count for nothing
        nanos += u128::from(digit - b'0') * place;
    }
    let secs = u64::try_from(nanos / u128::from(SECONDS)).ok()?;
    Some(Duration::new(secs, (nanos % u128::from(SECONDS)) as u32))
}

/// `nanos` in the largest unit [`parse_duration`] reads that shows it exactly: `10ms`, `24h`.
pub(crate) fn show_duration(nanos: u64) -> String {
    if nanos == 0 {
        return "0".to_string();
    }
    let unit = [
        (HOUR, "h"),
        (MINUTES, "m"),
        (SECONDS, "s"),
        (MILLISECONDS, "ms"),
    ]
    .into_iter()
    .find(|(unit, _)| nanos % unit == 0);
    match unit {
        Some((unit, name)) => format!("{}{name}", nanos / unit),
        None => format!("{}s", nanos as f64 / SECONDS as f64),
    }
}

/// A decimal whole number in `min..=max`.
pub fn parse_number(text: &str, min: u64, max: u64) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok().filter(|n| (min..=max).contains(n))
}

/// A byte count with an optional `k`/`m` suffix (powers of 1024).
pub fn parse_size(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let (digits, unit) = match lower.trim_end_matches("ib").trim_end_matches('b') {
        s if s.ends_with('k') => (&s[..s.len() - 1], 1024),
        s if s.ends_with('m') => (&s[..s.len() - 1], 1024 * 1024),
        s => (s, 1),
    };
    let n = parse_number(digits, 0, u64::from(u32::MAX))? as usize;
    n.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = |n: u64| Some(Duration::from_millis(n));
        assert_eq!(parse_duration("250ms", SECONDS), ms(250));
        assert_eq!(parse_duration("3s", MILLISECONDS), ms(3000));
        assert_eq!(parse_duration("1.5s", SECONDS), ms(1500));
        assert_eq!(parse_duration("2m", SECONDS), ms(120_000));
        assert_eq!(parse_duration("1h", SECONDS), ms(3_600_000));
        assert_eq!(parse_duration("0.25", SECONDS), ms(250));
        assert_eq!(parse_duration(".5", SECONDS), ms(500));
        assert_eq!(parse_duration("30", SECONDS), ms(30_000));
        assert_eq!(parse_duration("30", MILLISECONDS), ms(30));
        assert_eq!(parse_duration("1.", SECONDS), ms(1000));
        assert_eq!(parse_duration("0", SECONDS), ms(0));
        assert_eq!(
            parse_duration("0.1234567891s", SECONDS),
            Some(Duration::from_nanos(123_456_789))
        );
        assert_eq!(
            parse_duration("0.1ms", SECONDS),
            Some(Duration::from_micros(100))
        );
        for bad in [
            "",
            ".",
            "s",
            ".s",
            "1.2.3",
            "-1",
            "+1",
            "1e3",
            "inf",
            "NaN",
            " 1",
            "1 s",
            "1S",
            "1sec",
            "1d",
            "1ms5",
            "5m30s",
            "1,5",
            "99999999999999999999999999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad, SECONDS), None, "{bad:?}");
        }
        assert_eq!(show_duration(0), "0");
        assert_eq!(show_duration(10 * MILLISECONDS), "10ms");
        assert_eq!(show_duration(DAY), "24h");
        assert_eq!(show_duration(90 * SECONDS), "90s");
        assert_eq!(show_duration(1500 * MILLISECONDS), "1500ms");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16k"), Some(16384));
        assert_eq!(parse_size("16KiB"), Some(16384));
        assert_eq!(parse_size("1m"), Some(1 << 20));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("k"), None);
        assert_eq!(parse_size("1.5k"), None);
    }
}

//! Durations: one parser for ISO-8601 (`P7D`, `PT8H`, `P1DT12H`) and the
//! CLI's short forms (`30s`, `5m`, `1h`, `7d`, `2w`, `1h30m`).
//!
//! Used for allowlist TTLs in packs, runtime grants (`enforcer allow --ttl`)
//! and `--policy-refresh`. Years and months are refused because their
//! length varies; write days instead (`P30D`).

use std::fmt;
use std::time::Duration;

/// The longest duration accepted anywhere (100 years), so that adding it to
/// any instant this program sees cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("duration `{input}`: {problem}")]
pub struct DurationError {
    /// The text as given.
    pub input: String,
    /// What is wrong with it, and how to write it instead.
    pub problem: &'static str,
}

fn err(input: &str, problem: &'static str) -> DurationError {
    DurationError {
        input: input.to_owned(),
        problem,
    }
}

/// Parse a duration in ISO-8601 form (`P7D`, `PT8H`, `P1W`, `P1DT2H30M`,
/// `PT45S`) or short form (`30s`, `5m`, `1h`, `7d`, `2w`, `1h30m`).
/// Whole numbers only; zero and more than 100 years are refused.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(err(input, "empty; write e.g. `1h`, `7d` or `PT1H`"));
    }
    let secs = if input.starts_with(['P', 'p']) {
        parse_iso(input)?
    } else {
        parse_short(input)?
    };
    if secs == 0 {
        return Err(err(input, "must be greater than zero"));
    }
    let d = Duration::from_secs(secs);
    if d > MAX_DURATION {
        return Err(err(input, "longer than 100 years"));
    }
    Ok(d)
}

/// Read a run of ASCII digits at the start of `s`; returns (value, rest).
fn take_number<'a>(input: &str, s: &'a str) -> Result<(u64, &'a str), DurationError> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return Err(err(input, "expected a number before each unit"));
    }
    let (digits, rest) = s.split_at(end);
    if rest.starts_with(['.', ',']) {
        return Err(err(
            input,
            "fractions are not supported; use a smaller unit",
        ));
    }
    let n = digits
        .parse::<u64>()
        .map_err(|_| err(input, "number too large"))?;
    Ok((n, rest))
}

fn add(input: &str, total: u64, n: u64, unit_secs: u64) -> Result<u64, DurationError> {
    n.checked_mul(unit_secs)
        .and_then(|v| v.checked_add(total))
        .ok_or_else(|| err(input, "longer than 100 years"))
}

fn parse_iso(input: &str) -> Result<u64, DurationError> {
    let upper = input.to_ascii_uppercase();
    let mut s = &upper[1..];
    let mut total = 0u64;
    let mut any = false;
    let mut in_time = false;
    // Units allowed next, in order; each may appear once.
    let date_units: [(char, u64); 2] = [('W', 7 * 86_400), ('D', 86_400)];
    let time_units: [(char, u64); 3] = [('H', 3600), ('M', 60), ('S', 1)];
    let mut next_unit = 0usize;
    while !s.is_empty() {
        if let Some(rest) = s.strip_prefix('T') {
            if in_time {
                return Err(err(input, "`T` may appear only once"));
            }
            if rest.is_empty() {
                return Err(err(
                    input,
                    "`T` must be followed by hours, minutes or seconds",
                ));
            }
            in_time = true;
            next_unit = 0;
            s = rest;
            continue;
        }
        let (n, rest) = take_number(input, s)?;
        let unit = rest
            .chars()
            .next()
            .ok_or_else(|| err(input, "a number needs a unit (W, D, or after T: H, M, S)"))?;
        let units: &[(char, u64)] = if in_time { &time_units } else { &date_units };
        if !in_time && (unit == 'Y' || unit == 'M') {
            return Err(err(
                input,
                "years and months vary in length; write days instead (e.g. `P30D`)",
            ));
        }
        let pos = units.iter().position(|(u, _)| *u == unit).ok_or_else(|| {
            err(
                input,
                if in_time {
                    "unknown unit after `T`; use H, M or S (e.g. `PT8H`)"
                } else {
                    "unknown unit; use W or D, and T before hours/minutes/seconds (e.g. `P1DT8H`)"
                },
            )
        })?;
        if pos < next_unit {
            return Err(err(input, "units must appear once each, largest first"));
        }
        next_unit = pos + 1;
        total = add(input, total, n, units[pos].1)?;
        any = true;
        s = &rest[unit.len_utf8()..];
    }
    if !any {
        return Err(err(input, "no amount; write e.g. `P7D` or `PT8H`"));
    }
    Ok(total)
}

fn parse_short(input: &str) -> Result<u64, DurationError> {
    let units: [(char, u64); 5] = [
        ('w', 7 * 86_400),
        ('d', 86_400),
        ('h', 3600),
        ('m', 60),
        ('s', 1),
    ];
    let mut s = input;
    let mut total = 0u64;
    let mut next_unit = 0usize;
    while !s.is_empty() {
        let (n, rest) = take_number(input, s)?;
        let unit = rest.chars().next().ok_or_else(|| {
            err(
                input,
                "a number needs a unit: s, m, h, d or w (e.g. `3600s`, `1h`)",
            )
        })?;
        let pos = units
            .iter()
            .position(|(u, _)| *u == unit.to_ascii_lowercase())
            .ok_or_else(|| {
                err(
                    input,
                    "unknown unit; use s, m, h, d, w or ISO-8601 (`PT1H`)",
                )
            })?;
        if pos < next_unit {
            return Err(err(
                input,
                "units must appear once each, largest first (e.g. `1h30m`)",
            ));
        }
        next_unit = pos + 1;
        total = add(input, total, n, units[pos].1)?;
        s = &rest[unit.len_utf8()..];
    }
    Ok(total)
}

/// A duration in the short form the parser accepts (`7d`, `8h`, `1h30m`,
/// `45s`); sub-second parts are dropped.
pub fn format_duration(d: Duration) -> String {
    DisplayDuration(d).to_string()
}

/// Displays a duration in short form (see [`format_duration`]).
#[derive(Debug, Clone, Copy)]
pub struct DisplayDuration(pub Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.0.as_secs();
        if s == 0 {
            return f.write_str("0s");
        }
        for (unit, len) in [('d', 86_400u64), ('h', 3600), ('m', 60), ('s', 1)] {
            if s >= len {
                write!(f, "{}{unit}", s / len)?;
                s %= len;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: &str) -> u64 {
        parse_duration(s).unwrap().as_secs()
    }

    #[test]
    fn iso_forms() {
        assert_eq!(secs("P7D"), 7 * 86_400);
        assert_eq!(secs("PT8H"), 8 * 3600);
        assert_eq!(secs("PT5M"), 300);
        assert_eq!(secs("PT45S"), 45);
        assert_eq!(secs("P1W"), 7 * 86_400);
        assert_eq!(secs("P1DT2H30M15S"), 86_400 + 2 * 3600 + 30 * 60 + 15);
        assert_eq!(secs("pt1h"), 3600);
    }

    #[test]
    fn short_forms() {
        assert_eq!(secs("30s"), 30);
        assert_eq!(secs("5m"), 300);
        assert_eq!(secs("1h"), 3600);
        assert_eq!(secs("7d"), 7 * 86_400);
        assert_eq!(secs("2w"), 14 * 86_400);
        assert_eq!(secs("1h30m"), 5400);
        assert_eq!(secs("1H"), 3600);
    }

    #[test]
    fn refusals_say_why() {
        let cases = [
            ("", "empty"),
            ("P", "no amount"),
            ("PT", "`T` must be followed"),
            ("P1Y", "years and months"),
            ("P1M", "years and months"),
            ("PT1.5H", "fractions"),
            ("P1H", "unknown unit"),
            ("PT1D", "unknown unit after `T`"),
            ("P1DT1H1H", "once each"),
            ("3600", "needs a unit"),
            ("1x", "unknown unit"),
            ("30m1h", "largest first"),
            ("0s", "greater than zero"),
            ("PT0S", "greater than zero"),
            ("h", "expected a number"),
            ("99999999999999999999s", "too large"),
            ("36500000d", "100 years"),
            ("-1h", "expected a number"),
            (" 1h", "expected a number"),
        ];
        for (input, want) in cases {
            let e = parse_duration(input).unwrap_err();
            assert!(e.to_string().contains(want), "{input}: {e}");
            assert!(e.to_string().contains(&format!("`{input}`")), "{e}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(0)), "0s");
    }

    proptest! {
        #[test]
        fn format_round_trips(s in 1u64..MAX_DURATION.as_secs()) {
            let d = Duration::from_secs(s);
            prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }

        #[test]
        fn iso_and_short_agree(d in 0u64..1000, h in 0u64..24, m in 0u64..60, sec in 0u64..60) {
            prop_assume!(d + h + m + sec > 0);
            let iso = format!("P{d}DT{h}H{m}M{sec}S");
            let short = format!("{d}d{h}h{m}m{sec}s");
            prop_assert_eq!(parse_duration(&iso).unwrap(), parse_duration(&short).unwrap());
        }
    }
}

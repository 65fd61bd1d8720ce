//! RFC 3339 timestamps (`2025-10-21T00:00:00Z`) as used by `issuedAt` and
//! by the grant store, converted to and from [`SystemTime`].

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timestamp `{input}` is not RFC 3339 (write it like `2025-10-21T00:00:00Z`)")]
pub struct TimestampError {
    /// The text as given.
    pub input: String,
}

/// Parse an RFC 3339 timestamp with an offset (`Z` or `+02:00`).
pub fn parse_timestamp(input: &str) -> Result<SystemTime, TimestampError> {
    OffsetDateTime::parse(input, &Rfc3339)
        .map(SystemTime::from)
        .map_err(|_| TimestampError {
            input: input.to_owned(),
        })
}

/// Format an instant as RFC 3339 in UTC with whole seconds
/// (`2025-10-21T00:00:00Z`).
pub fn format_timestamp(t: SystemTime) -> String {
    let dt = OffsetDateTime::from(t);
    let dt = dt.replace_nanosecond(0).unwrap_or(dt);
    dt.format(&Rfc3339)
        .unwrap_or_else(|_| format!("{}s since the Unix epoch", dt.unix_timestamp()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn round_trip() {
        let t = parse_timestamp("2025-10-21T00:00:00Z").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_761_004_800));
        assert_eq!(format_timestamp(t), "2025-10-21T00:00:00Z");
        let t2 = parse_timestamp("2025-10-21T02:00:00+02:00").unwrap();
        assert_eq!(t, t2);
        assert!(parse_timestamp("2025-10-21").is_err());
        assert!(
            parse_timestamp("yesterday")
                .unwrap_err()
                .to_string()
                .contains("`yesterday`")
        );
    }
}

//! Pack versions and their ordering (rollback protection).
//!
//! A version is 1..=64 characters from `A-Z a-z 0-9 . - _ + ~`. Two versions
//! compare like `sort -V`: the text is split into runs of digits and runs of
//! other characters; runs are compared left to right, digit runs as numbers
//! (leading zeros ignored), other runs byte by byte, and a digit run sorts
//! before a non-digit run. A version that is a prefix of another is older.
//! So `2025-10-21.9 < 2025-10-21.10 < 2025-10-22.1` and `1.9 < 1.10 < 2`.
//! Versions that compare equal (`1.01` and `1.1`) are the same version.

use std::cmp::Ordering;
use std::fmt;

/// Longest accepted version text.
pub const MAX_VERSION_LEN: usize = 64;

/// Why a version string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "version `{input}` is invalid: use 1 to 64 characters from letters, digits and `.-_+~` (e.g. `2025-10-21.1`)"
)]
pub struct VersionError {
    /// The text as given.
    pub input: String,
}

/// A pack version with the ordering described in the module docs.
#[derive(Debug, Clone)]
pub struct Version {
    text: String,
}

impl Version {
    /// Parse and check a version string.
    pub fn parse(input: &str) -> Result<Self, VersionError> {
        let ok = !input.is_empty()
            && input.len() <= MAX_VERSION_LEN
            && input.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+' | b'~')
            });
        if ok {
            Ok(Version {
                text: input.to_owned(),
            })
        } else {
            Err(VersionError {
                input: input.to_owned(),
            })
        }
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The next version after this one: its last run of digits plus one
    /// (`2025-10-21.3` -> `2025-10-21.4`, `1.9` -> `1.10`), or `.1`
    /// appended when it does not end in a digit (`beta` -> `beta.1`).
    /// `None` when the result would be longer than [`MAX_VERSION_LEN`].
    pub fn bumped(&self) -> Option<Version> {
        let digits = self
            .text
            .bytes()
            .rev()
            .take_while(u8::is_ascii_digit)
            .count();
        let text = if digits == 0 {
            format!("{}.1", self.text)
        } else {
            let (head, number) = self.text.split_at(self.text.len() - digits);
            format!("{head}{}", increment_decimal(number))
        };
        Version::parse(&text).ok()
    }
}

/// `number` (ASCII digits) plus one, as decimal text of any length; a carry
/// out of the first digit adds one (`099` -> `100`, `99` -> `100`).
fn increment_decimal(number: &str) -> String {
    let mut digits: Vec<u8> = number.bytes().collect();
    for digit in digits.iter_mut().rev() {
        if *digit == b'9' {
            *digit = b'0';
        } else {
            *digit += 1;
            return String::from_utf8_lossy(&digits).into_owned();
        }
    }
    format!("1{}", String::from_utf8_lossy(&digits))
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Split into runs: (is_digit_run, run).
fn runs(s: &str) -> impl Iterator<Item = (bool, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= b.len() {
            return None;
        }
        let digit = b[i].is_ascii_digit();
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() == digit {
            i += 1;
        }
        Some((digit, &s[start..i]))
    })
}

fn cmp_numeric(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let mut a = runs(&self.text);
        let mut b = runs(&other.text);
        loop {
            match (a.next(), b.next()) {
                (None, None) => return Ordering::Equal,
                (None, Some(_)) => return Ordering::Less,
                (Some(_), None) => return Ordering::Greater,
                (Some((da, ra)), Some((db, rb))) => {
                    let ord = match (da, db) {
                        (true, true) => cmp_numeric(ra, rb),
                        (false, false) => ra.cmp(rb),
                        (true, false) => Ordering::Less,
                        (false, true) => Ordering::Greater,
                    };
                    if ord != Ordering::Equal {
                        return ord;
                    }
                }
            }
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn ordering_examples() {
        let ordered = [
            "1",
            "1.0",
            "1.1",
            "1.9",
            "1.10",
            "2",
            "2025-10-21",
            "2025-10-21.1",
            "2025-10-21.9",
            "2025-10-21.10",
            "2025-10-22.1",
            "2026-01-01",
        ];
        for w in ordered.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
        }
        assert_eq!(v("1.01"), v("1.1"));
        assert!(v("99999999999999999999999.1") > v("9999999999999999999999.1"));
    }

    #[test]
    fn bumped_is_the_next_newer_version() {
        for (from, to) in [
            ("2025-10-21.3", "2025-10-21.4"),
            ("1.9", "1.10"),
            ("1.09", "1.10"),
            ("99", "100"),
            ("beta", "beta.1"),
            ("1.0-rc", "1.0-rc.1"),
        ] {
            let next = v(from).bumped().unwrap();
            assert_eq!(next.as_str(), to);
            assert!(next > v(from), "{to} > {from}");
        }
        assert_eq!(v(&"a".repeat(63)).bumped(), None, "too long");
    }

    #[test]
    fn invalid_versions() {
        for s in ["", "1 2", "1/2", "ü", &"1".repeat(65)] {
            let e = Version::parse(s).unwrap_err();
            assert!(e.to_string().contains("is invalid"));
        }
    }

    proptest! {
        #[test]
        fn total_order(a in "[0-9a-z.-]{1,12}", b in "[0-9a-z.-]{1,12}", c in "[0-9a-z.-]{1,12}") {
            let (a, b, c) = (v(&a), v(&b), v(&c));
            prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
            if a <= b && b <= c {
                prop_assert!(a <= c);
            }
        }

        #[test]
        fn bumped_is_always_newer(a in "[0-9a-zA-Z._+~-]{1,40}") {
            let a = v(&a);
            let next = a.bumped().unwrap();
            prop_assert!(next > a, "{} > {}", next, a);
        }

        #[test]
        fn bumping_the_last_number_is_newer(base in "[0-9]{4}-[0-9]{2}-[0-9]{2}", n in 0u32..10_000) {
            let (a, b) = (v(&format!("{base}.{n}")), v(&format!("{base}.{}", n + 1)));
            prop_assert!(a < b);
        }
    }
}

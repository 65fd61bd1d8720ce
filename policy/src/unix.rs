//! `egress.unix` entries: which unix sockets a process in the enforced
//! cgroup may connect or send to.
//!
//! An entry is an absolute path or an abstract name (`@name`). A path may
//! hold one `*`, matching any bytes within one segment (never a `/`), or
//! end in `/**`, matching everything below a directory. Nothing else is a
//! glob. The kernel compares the address bytes the caller passed (at most
//! [`SUN_PATH_MAX`]), lexically: `..` segments are never allowed.

use std::fmt;

/// `sizeof(sockaddr_un.sun_path)`: the most address bytes the kernel takes.
pub const SUN_PATH_MAX: usize = 108;
/// The longest literal text allowed after a `*` (the kernel's suffix slot).
pub const SUFFIX_MAX: usize = 64;

/// How an entry matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UnixMatch {
    /// Exactly these address bytes.
    Exact,
    /// These bytes, then anything (`/dir/**`, stored as `/dir/`).
    Prefix,
    /// These bytes, then one segment's worth of non-`/` bytes, then `suffix`.
    SegmentGlob {
        /// The literal text after the `*`.
        suffix: Vec<u8>,
    },
}

/// A checked `egress.unix` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnixSocketPattern {
    /// The entry as written.
    pub text: String,
    /// The literal leading address bytes as the kernel sees them: the path,
    /// or a NUL followed by the abstract name.
    pub prefix: Vec<u8>,
    /// How the bytes after `prefix` match.
    pub matching: UnixMatch,
}

/// Why an `egress.unix` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnixPatternError {
    /// Neither `/path` nor `@name`.
    #[error("{0:?} is neither an absolute path (/run/foo.sock) nor an abstract name (@name)")]
    NotAbsolute(String),
    /// An empty abstract name.
    #[error("{0:?}: the abstract name after @ is empty")]
    EmptyAbstract(String),
    /// NUL or control characters.
    #[error("{0:?} contains a NUL or control character")]
    ControlCharacter(String),
    /// Too long for `sun_path`.
    #[error("{text:?} is {len} bytes; a unix socket address holds at most {max}")]
    TooLong {
        /// The entry.
        text: String,
        /// Its address length.
        len: usize,
        /// [`SUN_PATH_MAX`].
        max: usize,
    },
    /// A `..` segment.
    #[error("{0:?} has a `..` segment; write the path without it")]
    DotDot(String),
    /// Globs outside the supported forms.
    #[error(
        "{0:?}: only one `*` (within one segment) or a final `/**` is supported; abstract names are exact"
    )]
    UnsupportedGlob(String),
    /// Too much text after the `*`.
    #[error("{text:?}: at most {max} bytes may follow the `*`")]
    SuffixTooLong {
        /// The entry.
        text: String,
        /// [`SUFFIX_MAX`].
        max: usize,
    },
}

impl UnixSocketPattern {
    /// Parses and checks one entry.
    pub fn parse(text: &str) -> Result<Self, UnixPatternError> {
        let owned = || text.to_owned();
        if text.chars().any(char::is_control) {
            return Err(UnixPatternError::ControlCharacter(owned()));
        }
        if let Some(name) = text.strip_prefix('@') {
            if name.is_empty() {
                return Err(UnixPatternError::EmptyAbstract(owned()));
            }
            if name.contains('*') {
                return Err(UnixPatternError::UnsupportedGlob(owned()));
            }
            let mut prefix = vec![0u8];
            prefix.extend_from_slice(name.as_bytes());
            check_len(text, prefix.len())?;
            return Ok(Self {
                text: owned(),
                prefix,
                matching: UnixMatch::Exact,
            });
        }
        if !text.starts_with('/') {
            return Err(UnixPatternError::NotAbsolute(owned()));
        }
        if text.split('/').any(|segment| segment == "..") {
            return Err(UnixPatternError::DotDot(owned()));
        }
        check_len(text, text.len())?;
        if let Some(dir) = text.strip_suffix("/**") {
            if dir.contains('*') {
                return Err(UnixPatternError::UnsupportedGlob(owned()));
            }
            return Ok(Self {
                text: owned(),
                prefix: format!("{dir}/").into_bytes(),
                matching: UnixMatch::Prefix,
            });
        }
        let stars = text.matches('*').count();
        match stars {
            0 => Ok(Self {
                text: owned(),
                prefix: text.as_bytes().to_vec(),
                matching: UnixMatch::Exact,
            }),
            1 => {
                let (before, after) = text.split_once('*').unwrap_or((text, ""));
                if after.len() > SUFFIX_MAX {
                    return Err(UnixPatternError::SuffixTooLong {
                        text: owned(),
                        max: SUFFIX_MAX,
                    });
                }
                Ok(Self {
                    text: owned(),
                    prefix: before.as_bytes().to_vec(),
                    matching: UnixMatch::SegmentGlob {
                        suffix: after.as_bytes().to_vec(),
                    },
                })
            }
            _ => Err(UnixPatternError::UnsupportedGlob(owned())),
        }
    }

    /// Whether `address` (the bytes of `sun_path` the caller passed, a
    /// leading NUL for abstract names) matches: the same rule the kernel
    /// program applies.
    pub fn matches(&self, address: &[u8]) -> bool {
        let Some(rest) = address.strip_prefix(self.prefix.as_slice()) else {
            return false;
        };
        match &self.matching {
            UnixMatch::Exact => rest.is_empty(),
            UnixMatch::Prefix => true,
            UnixMatch::SegmentGlob { suffix } => {
                rest.len() >= suffix.len()
                    && rest.ends_with(suffix)
                    && !rest[..rest.len() - suffix.len()].contains(&b'/')
            }
        }
    }
}

fn check_len(text: &str, len: usize) -> Result<(), UnixPatternError> {
    if len > SUN_PATH_MAX {
        return Err(UnixPatternError::TooLong {
            text: text.to_owned(),
            len,
            max: SUN_PATH_MAX,
        });
    }
    Ok(())
}

impl fmt::Display for UnixSocketPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> UnixSocketPattern {
        UnixSocketPattern::parse(text).unwrap()
    }

    #[test]
    fn exact_path_matches_only_itself() {
        let p = pattern("/run/foo.sock");
        assert!(p.matches(b"/run/foo.sock"));
        assert!(!p.matches(b"/run/foo.sock2"));
        assert!(!p.matches(b"/run/foo.soc"));
    }

    #[test]
    fn star_stays_within_one_segment() {
        let p = pattern("/tmp/agent-*/x.sock");
        assert!(p.matches(b"/tmp/agent-1/x.sock"));
        assert!(p.matches(b"/tmp/agent-/x.sock"));
        assert!(!p.matches(b"/tmp/agent-1/2/x.sock"));
        assert!(!p.matches(b"/tmp/agent-1/y.sock"));
    }

    #[test]
    fn double_star_is_a_subtree() {
        let p = pattern("/run/user/1000/app/**");
        assert_eq!(p.prefix, b"/run/user/1000/app/");
        assert!(p.matches(b"/run/user/1000/app/a/b.sock"));
        assert!(!p.matches(b"/run/user/1000/apps.sock"));
    }

    #[test]
    fn abstract_names_are_exact() {
        let p = pattern("@my-agent");
        assert_eq!(p.prefix, b"\0my-agent");
        assert!(p.matches(b"\0my-agent"));
        assert!(!p.matches(b"\0my-agent2"));
    }

    #[test]
    fn refused_entries() {
        for text in [
            "run/foo.sock",
            "@",
            "/a/../b",
            "/a/*/b/*",
            "/a/**/b",
            "@a*",
            "/a\u{7}",
        ] {
            assert!(UnixSocketPattern::parse(text).is_err(), "{text}");
        }
        let long = format!("/{}", "a".repeat(SUN_PATH_MAX));
        assert!(matches!(
            UnixSocketPattern::parse(&long),
            Err(UnixPatternError::TooLong { .. })
        ));
    }
}

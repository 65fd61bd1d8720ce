//! Host names, IP literals and `host:port` patterns, with the one
//! normalisation every component uses.
//!
//! The proxy (CONNECT host and SNI), the allowlist, the DNS filter, the
//! resolver override map and the map writer all call [`normalize_host`], so a
//! name means the same thing everywhere:
//!
//! * IDNA (UTS #46, as browsers do) to lowercase ASCII / punycode,
//! * one trailing dot removed (`example.com.` is `example.com`),
//! * labels of 1..=63 characters from `a-z 0-9 - _`, at most 253 in total,
//! * anything that looks numeric is an IP literal, in every spelling a
//!   C library or a browser accepts: dotted (`127.0.0.1`), short (`127.1`),
//!   hex (`0x7f.0.0.1`), octal (`0177.0.0.1`), plain decimal (`2130706433`),
//!   IPv6 bare or bracketed, v4-mapped (`[::ffff:127.0.0.1]`), with a zone
//!   id (`fe80::1%eth0`, `[fe80::1%25eth0]`). A name whose last label is
//!   numeric but which is not a valid address (`1.2.3.999`) is an error,
//!   never a domain name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use idna::AsciiDenyList;

/// The port a pattern or host:port means when it names none.
pub const DEFAULT_PORT: u16 = 443;

/// Longest accepted domain name (RFC 1035), without the trailing dot.
const MAX_NAME_LEN: usize = 253;
/// Longest accepted label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// Why a host name, pattern or `host:port` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Nothing to parse.
    #[error("host is empty")]
    Empty,
    /// IDNA mapping failed (disallowed code point, bad punycode, ...).
    #[error("host `{input}` is not a valid internationalised domain name")]
    Idna {
        /// The input as given.
        input: String,
    },
    /// A label is empty (`a..b`, leading dot, two trailing dots).
    #[error("host `{input}` has an empty label")]
    EmptyLabel {
        /// The input as given.
        input: String,
    },
    /// A label holds a character outside `a-z 0-9 - _` after IDNA.
    #[error("host `{input}` contains `{ch}`; names may only use letters, digits, `-` and `_`")]
    BadCharacter {
        /// The input as given.
        input: String,
        /// The first offending character.
        ch: char,
    },
    /// A label is longer than 63 bytes.
    #[error("host `{input}` has a label longer than 63 characters")]
    LabelTooLong {
        /// The input as given.
        input: String,
    },
    /// The name is longer than 253 bytes.
    #[error("host `{input}` is longer than 253 characters")]
    TooLong {
        /// The input as given.
        input: String,
    },
    /// The last label is numeric, so the host must be an IPv4 address, and it is not one.
    #[error("host `{input}` looks like an IPv4 address but is not a valid one")]
    BadIpv4 {
        /// The input as given.
        input: String,
    },
    /// The host contains `:` or brackets but is not a valid IPv6 address.
    #[error("host `{input}` is not a valid IPv6 address")]
    BadIpv6 {
        /// The input as given.
        input: String,
    },
    /// The zone id after `%` is empty or has characters outside `A-Za-z0-9_.-`.
    #[error("host `{input}` has an invalid IPv6 zone id")]
    BadZone {
        /// The input as given.
        input: String,
    },
    /// The port is not a number in 1..=65535.
    #[error("port `{port}` in `{input}` is not a number from 1 to 65535")]
    BadPort {
        /// The whole `host:port` as given.
        input: String,
        /// The port text.
        port: String,
    },
    /// A `*` somewhere other than a leading `*.` label.
    #[error(
        "pattern `{input}`: only a leading `*.` wildcard is supported (as in `*.example.com:443`)"
    )]
    BadWildcard {
        /// The pattern as given.
        input: String,
    },
    /// `*.com`-style pattern: a wildcard over a single label.
    #[error(
        "pattern `{input}` is too broad: a wildcard needs at least two labels after `*.` (as in `*.example.com`)"
    )]
    WildcardTooBroad {
        /// The pattern as given.
        input: String,
    },
    /// A wildcard where only one exact host is allowed.
    #[error("`{input}`: a wildcard is not allowed here; name one host")]
    WildcardNotAllowed {
        /// The input as given.
        input: String,
    },
}

// === impl DomainName ===

/// A normalised domain name: lowercase ASCII (punycode for IDNs), no
/// trailing dot, valid label lengths. Never an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    /// The normalised name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Number of labels (`api.example.com` has 3).
    pub fn label_count(&self) -> usize {
        self.0.split('.').count()
    }

    /// Whether `self` is a strict subdomain of `parent` (`a.example.com` of
    /// `example.com`; `example.com` is not a subdomain of itself).
    pub fn is_strict_subdomain_of(&self, parent: &DomainName) -> bool {
        let (me, p) = (self.0.as_bytes(), parent.0.as_bytes());
        me.len() > p.len() + 1 && me.ends_with(p) && me[me.len() - p.len() - 1] == b'.'
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl IpLiteral ===

/// An IP address written as a host, with its IPv6 zone id if any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpLiteral {
    /// The address as written (a v4-mapped IPv6 address stays IPv6 here).
    pub addr: IpAddr,
    /// The IPv6 zone id (`eth0` in `fe80::1%eth0`), if any.
    pub zone: Option<String>,
}

impl IpLiteral {
    /// The address with v4-mapped IPv6 (`::ffff:a.b.c.d`) turned into IPv4,
    /// which is how the kernel programs and the proxy judge it.
    pub fn canonical(&self) -> IpAddr {
        self.addr.to_canonical()
    }
}

impl fmt::Display for IpLiteral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.addr, &self.zone) {
            (IpAddr::V4(a), _) => write!(f, "{a}"),
            (IpAddr::V6(a), None) => write!(f, "[{a}]"),
            (IpAddr::V6(a), Some(z)) => write!(f, "[{a}%{z}]"),
        }
    }
}

// === impl Host ===

/// A normalised host: a domain name or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A domain name.
    Domain(DomainName),
    /// An IP address in any spelling.
    Ip(IpLiteral),
}

impl Host {
    /// The IP address if this host is an IP literal (v4-mapped turned into IPv4).
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(lit) => Some(lit.canonical()),
            Host::Domain(_) => None,
        }
    }

    /// The domain name if this host is one.
    pub fn domain(&self) -> Option<&DomainName> {
        match self {
            Host::Domain(d) => Some(d),
            Host::Ip(_) => None,
        }
    }
}

impl fmt::Display for Host {
    /// Canonical text: the name, dotted IPv4, or bracketed IPv6.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => d.fmt(f),
            Host::Ip(ip) => ip.fmt(f),
        }
    }
}

impl FromStr for Host {
    type Err = HostError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        normalize_host(s)
    }
}

/// Normalise a host as a client, a pack or an operator wrote it. This is
/// the one normalisation used everywhere (CONNECT host, SNI, allowlist
/// patterns, `--resolve`, DNS filter).
///
/// Returns [`Host::Ip`] for every IP spelling (see the module docs) and an
/// error for numeric-looking names that are not valid addresses, so callers
/// that block IP literals can never be fooled into treating one as a name.
pub fn normalize_host(input: &str) -> Result<Host, HostError> {
    if input.is_empty() {
        return Err(HostError::Empty);
    }
    if let Some(inner) = input.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(|| HostError::BadIpv6 {
            input: input.to_owned(),
        })?;
        return parse_ipv6_with_zone(inner, input).map(Host::Ip);
    }
    if input.contains(':') || input.contains(']') {
        return parse_ipv6_with_zone(input, input).map(Host::Ip);
    }
    let ascii = idna::domain_to_ascii_cow(input.as_bytes(), AsciiDenyList::URL).map_err(|_| {
        HostError::Idna {
            input: input.to_owned(),
        }
    })?;
    let name = match ascii.strip_suffix('.') {
        Some(rest) => rest,
        None => &ascii,
    };
    if name.is_empty() {
        return Err(if input.chars().all(|c| c == '.') && input.len() == 1 {
            HostError::Empty
        } else {
            HostError::EmptyLabel {
                input: input.to_owned(),
            }
        });
    }
    if ends_in_number(name) {
        return parse_ipv4_any(name)
            .map(|a| {
                Host::Ip(IpLiteral {
                    addr: IpAddr::V4(a),
                    zone: None,
                })
            })
            .ok_or_else(|| HostError::BadIpv4 {
                input: input.to_owned(),
            });
    }
    check_domain(name, input)?;
    Ok(Host::Domain(DomainName(name.to_owned())))
}

/// The IP address a host names, if it is a valid IP literal in any spelling
/// (v4-mapped IPv6 is returned as IPv4). Returns `None` for domain names and
/// for malformed input; a caller that must *block* IP literals should call
/// [`normalize_host`] and refuse its errors too (`1.2.3.999` is neither).
pub fn ip_literal(input: &str) -> Option<IpAddr> {
    normalize_host(input).ok().and_then(|h| h.ip())
}

/// Normalise a name that must be a domain name (not an IP literal).
pub fn normalize_domain(input: &str) -> Result<Option<DomainName>, HostError> {
    Ok(normalize_host(input)?.domain().cloned())
}

fn check_domain(name: &str, input: &str) -> Result<(), HostError> {
    if name.len() > MAX_NAME_LEN {
        return Err(HostError::TooLong {
            input: input.to_owned(),
        });
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel {
                input: input.to_owned(),
            });
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostError::LabelTooLong {
                input: input.to_owned(),
            });
        }
        if let Some(ch) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(HostError::BadCharacter {
                input: input.to_owned(),
                ch,
            });
        }
    }
    Ok(())
}

/// WHATWG URL "ends in a number": the last label is all digits, or `0x`
/// followed by hex digits.
fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let hex = last.strip_prefix("0x").or_else(|| last.strip_prefix("0X"));
    matches!(hex, Some(h) if h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parse one IPv4 part: `0x..` hex, `0..` octal, else decimal (inet_aton / WHATWG).
fn parse_ipv4_part(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(h) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (h, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        // `0x` alone is 0 per WHATWG.
        return Some(0);
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Long runs of leading zeros are harmless; an overflowing value is not.
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(trimmed, radix).ok()
}

/// Parse an IPv4 address in any spelling `inet_aton` accepts: 1 to 4 parts,
/// each decimal, octal or hex; the last part fills the remaining bytes.
fn parse_ipv4_any(name: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for p in &parts {
        values.push(parse_ipv4_part(p)?);
    }
    let (last, init) = values.split_last()?;
    if init.iter().any(|v| *v > 255) {
        return None;
    }
    let last_bits = 8 * (5 - values.len() as u32);
    if *last >= (1u64 << last_bits) {
        return None;
    }
    let mut addr: u64 = 0;
    for (i, v) in init.iter().enumerate() {
        addr |= v << (8 * (3 - i as u32));
    }
    addr |= *last;
    u32::try_from(addr).ok().map(Ipv4Addr::from)
}

fn parse_ipv6_with_zone(text: &str, input: &str) -> Result<IpLiteral, HostError> {
    let (addr_text, zone) = match text.split_once('%') {
        Some((a, z)) => {
            // `%25` is the URL encoding of `%` (RFC 6874).
            let z = match z.strip_prefix("25") {
                Some(rest) if !rest.is_empty() => rest,
                _ => z,
            };
            let ok = !z.is_empty()
                && z.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(HostError::BadZone {
                    input: input.to_owned(),
                });
            }
            (a, Some(z.to_owned()))
        }
        None => (text, None),
    };
    let addr = Ipv6Addr::from_str(addr_text).map_err(|_| HostError::BadIpv6 {
        input: input.to_owned(),
    })?;
    Ok(IpLiteral {
        addr: IpAddr::V6(addr),
        zone,
    })
}

// === impl HostPort ===

/// Split `host[:port]` into host text and optional port. IPv6 with a port
/// needs brackets (`[::1]:443`); a bare IPv6 address has no port.
pub fn split_host_port(input: &str) -> Result<(&str, Option<u16>), HostError> {
    if input.is_empty() {
        return Err(HostError::Empty);
    }
    let (host, port) = if input.starts_with('[') {
        let close = input.find(']').ok_or_else(|| HostError::BadIpv6 {
            input: input.to_owned(),
        })?;
        let (h, rest) = input.split_at(close + 1);
        match rest {
            "" => (h, None),
            _ => match rest.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => {
                    return Err(HostError::BadIpv6 {
                        input: input.to_owned(),
                    });
                }
            },
        }
    } else if input.matches(':').count() >= 2 {
        (input, None)
    } else {
        match input.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (input, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p).ok_or_else(|| HostError::BadPort {
            input: input.to_owned(),
            port: p.to_owned(),
        })?),
    };
    Ok((host, port))
}

/// Parse a port: ASCII digits only, 1..=65535.
pub fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|p| *p != 0)
}

/// One exact host and port (no wildcard), e.g. a direct egress entry or a
/// runtime grant target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The normalised host.
    pub host: Host,
    /// The port (443 when not written).
    pub port: u16,
}

impl HostPort {
    /// Parse `host[:port]`, normalising the host; the port defaults to 443.
    pub fn parse(input: &str) -> Result<Self, HostError> {
        let (host, port) = split_host_port(input)?;
        if host.contains('*') {
            return Err(HostError::WildcardNotAllowed {
                input: input.to_owned(),
            });
        }
        Ok(HostPort {
            host: normalize_host(host)?,
            port: port.unwrap_or(DEFAULT_PORT),
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpLiteral {
                addr: IpAddr::V6(a),
                zone: None,
            }) => write!(f, "[{a}]:{}", self.port),
            h => write!(f, "{h}:{}", self.port),
        }
    }
}

impl FromStr for HostPort {
    type Err = HostError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostPort::parse(s)
    }
}

// === impl HostPattern ===

/// The host half of an allowlist pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this name.
    Exact(DomainName),
    /// `*.example.com`: strict subdomains of this name, never the name itself.
    Subdomains(DomainName),
    /// Exactly this address (v4-mapped stored as IPv4).
    Ip(IpAddr),
}

impl HostPattern {
    /// Whether a normalised host matches this pattern.
    pub fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (HostPattern::Exact(d), Host::Domain(h)) => d == h,
            (HostPattern::Subdomains(d), Host::Domain(h)) => h.is_strict_subdomain_of(d),
            (HostPattern::Ip(a), Host::Ip(lit)) => *a == lit.canonical(),
            _ => false,
        }
    }

    /// Whether this pattern names an IP address.
    pub fn is_ip(&self) -> bool {
        matches!(self, HostPattern::Ip(_))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(d) => d.fmt(f),
            HostPattern::Subdomains(d) => write!(f, "*.{d}"),
            HostPattern::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            HostPattern::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// An allowlist pattern: `host:port`, `*.example.com:443`, or a host alone
/// (port 443).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPortPattern {
    /// The host half.
    pub host: HostPattern,
    /// The port (443 when not written).
    pub port: u16,
}

impl HostPortPattern {
    /// Parse a pattern. Only a leading `*.` wildcard over at least two
    /// labels is accepted; the port defaults to 443.
    pub fn parse(input: &str) -> Result<Self, HostError> {
        let (host, port) = split_host_port(input)?;
        let port = port.unwrap_or(DEFAULT_PORT);
        let pattern = if let Some(rest) = host.strip_prefix("*.") {
            if rest.contains('*') {
                return Err(HostError::BadWildcard {
                    input: input.to_owned(),
                });
            }
            match normalize_host(rest)? {
                Host::Domain(d) if d.label_count() >= 2 => HostPattern::Subdomains(d),
                Host::Domain(_) => {
                    return Err(HostError::WildcardTooBroad {
                        input: input.to_owned(),
                    });
                }
                Host::Ip(_) => {
                    return Err(HostError::BadWildcard {
                        input: input.to_owned(),
                    });
                }
            }
        } else if host.contains('*') {
            return Err(HostError::BadWildcard {
                input: input.to_owned(),
            });
        } else {
            match normalize_host(host)? {
                Host::Domain(d) => HostPattern::Exact(d),
                Host::Ip(lit) => HostPattern::Ip(lit.canonical()),
            }
        };
        Ok(HostPortPattern {
            host: pattern,
            port,
        })
    }

    /// Whether a normalised host and port match.
    pub fn matches(&self, host: &Host, port: u16) -> bool {
        self.port == port && self.host.matches(host)
    }
}

impl fmt::Display for HostPortPattern {
    /// Canonical text, always with the port: `*.example.com:443`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl FromStr for HostPortPattern {
    type Err = HostError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostPortPattern::parse(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn names_are_lowercased_and_trailing_dot_dropped() {
        assert_eq!(
            normalize_host("API.Example.COM.").unwrap().to_string(),
            "api.example.com"
        );
    }

    #[test]
    fn idn_becomes_punycode() {
        assert_eq!(
            normalize_host("Bücher.example").unwrap().to_string(),
            "xn--bcher-kva.example"
        );
        // Already punycode stays as is.
        assert_eq!(
            normalize_host("xn--bcher-kva.example").unwrap().to_string(),
            "xn--bcher-kva.example"
        );
        // Fullwidth letters and the ideographic full stop map to ASCII.
        assert_eq!(
            normalize_host("ｅｘａｍｐｌｅ。com").unwrap().to_string(),
            "example.com"
        );
    }

    #[test]
    fn every_ipv4_spelling_is_an_ip_literal() {
        for s in [
            "127.0.0.1",
            "127.1",
            "127.0.1",
            "0x7f.0.0.1",
            "0x7F.1",
            "0177.0.0.1",
            "0177.0.0.01",
            "2130706433",
            "0x7f000001",
            "017700000001",
            "127.0.0.1.",
            "１２７.０.０.１",
        ] {
            assert_eq!(ip_literal(s), Some(ip("127.0.0.1")), "{s}");
        }
        assert_eq!(ip_literal("0"), Some(ip("0.0.0.0")));
        assert_eq!(ip_literal("169.254.169.254"), Some(ip("169.254.169.254")));
    }

    #[test]
    fn numeric_garbage_is_an_error_not_a_name() {
        for s in [
            "1.2.3.999",
            "256.1.1.1",
            "1.2.3.4.5",
            "08.1.1.1",
            "4294967296",
            "example.123",
            "1.2.3.0x",
        ] {
            // "1.2.3.0x" parses as 1.2.3.0 per WHATWG; everything else must fail.
            if s == "1.2.3.0x" {
                assert_eq!(ip_literal(s), Some(ip("1.2.3.0")));
                continue;
            }
            assert!(
                matches!(normalize_host(s), Err(HostError::BadIpv4 { .. })),
                "{s}: {:?}",
                normalize_host(s)
            );
        }
    }

    #[test]
    fn ipv6_spellings() {
        assert_eq!(ip_literal("[::1]"), Some(ip("::1")));
        assert_eq!(ip_literal("::1"), Some(ip("::1")));
        assert_eq!(ip_literal("[0:0:0:0:0:0:0:1]"), Some(ip("::1")));
        assert_eq!(ip_literal("[::ffff:127.0.0.1]"), Some(ip("127.0.0.1")));
        assert_eq!(ip_literal("[::FFFF:7f00:1]"), Some(ip("127.0.0.1")));
        let h = normalize_host("[fe80::1%25eth0]").unwrap();
        assert_eq!(
            h,
            Host::Ip(IpLiteral {
                addr: ip("fe80::1"),
                zone: Some("eth0".into())
            })
        );
        let h = normalize_host("fe80::1%eth0").unwrap();
        assert_eq!(h.ip(), Some(ip("fe80::1")));
        assert!(matches!(
            normalize_host("[fe80::1%]"),
            Err(HostError::BadZone { .. })
        ));
        assert!(matches!(
            normalize_host("[fe80::1%a/b]"),
            Err(HostError::BadZone { .. })
        ));
        assert!(matches!(
            normalize_host("[127.0.0.1]"),
            Err(HostError::BadIpv6 { .. })
        ));
        assert!(matches!(
            normalize_host("[::1"),
            Err(HostError::BadIpv6 { .. })
        ));
        assert!(matches!(
            normalize_host("a:b"),
            Err(HostError::BadIpv6 { .. })
        ));
    }

    #[test]
    fn bad_names() {
        assert_eq!(normalize_host(""), Err(HostError::Empty));
        assert_eq!(normalize_host("."), Err(HostError::Empty));
        assert!(matches!(
            normalize_host("a..b"),
            Err(HostError::EmptyLabel { .. })
        ));
        assert!(matches!(
            normalize_host(".a"),
            Err(HostError::EmptyLabel { .. })
        ));
        assert!(matches!(
            normalize_host("a.b.."),
            Err(HostError::EmptyLabel { .. })
        ));
        assert!(normalize_host("a b.com").is_err());
        assert!(normalize_host("a/b.com").is_err());
        assert!(normalize_host("user@host.com").is_err());
        assert!(normalize_host("*.example.com").is_err());
        assert!(matches!(
            normalize_host(&"a".repeat(64)),
            Err(HostError::LabelTooLong { .. })
        ));
        let long = vec!["a".repeat(60); 5].join(".");
        assert!(matches!(
            normalize_host(&long),
            Err(HostError::TooLong { .. })
        ));
        assert_eq!(
            normalize_host("_dmarc.example.com").unwrap().to_string(),
            "_dmarc.example.com"
        );
    }

    #[test]
    fn host_port_parsing() {
        let hp = HostPort::parse("GitHub.com:22").unwrap();
        assert_eq!(hp.to_string(), "github.com:22");
        assert_eq!(HostPort::parse("github.com").unwrap().port, 443);
        assert_eq!(
            HostPort::parse("[::1]:8443").unwrap().to_string(),
            "[::1]:8443"
        );
        assert_eq!(HostPort::parse("::1").unwrap().port, 443);
        for bad in [
            "a.com:0",
            "a.com:65536",
            "a.com:",
            "a.com:+1",
            "a.com:1x",
            "[::1]x",
            "*.a.com:1",
        ] {
            assert!(HostPort::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcard_is_strict_subdomains_only() {
        let p = HostPortPattern::parse("*.Example.com").unwrap();
        assert_eq!(p.to_string(), "*.example.com:443");
        let m = |h: &str, port| p.matches(&normalize_host(h).unwrap(), port);
        assert!(m("a.example.com", 443));
        assert!(m("a.b.example.com", 443));
        assert!(!m("example.com", 443));
        assert!(!m("badexample.com", 443));
        assert!(!m("a.example.com", 444));
        assert!(!m("example.com.evil.net", 443));
        assert!(matches!(
            HostPortPattern::parse("*.com"),
            Err(HostError::WildcardTooBroad { .. })
        ));
        for bad in ["*", "a.*.com", "*a.com", "*.*.a.com", "*.127.0.0.1"] {
            assert!(HostPortPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ip_patterns_match_every_spelling() {
        let p = HostPortPattern::parse("127.0.0.1:80").unwrap();
        for h in ["127.1", "0x7f.0.0.1", "[::ffff:127.0.0.1]", "2130706433"] {
            assert!(p.matches(&normalize_host(h).unwrap(), 80), "{h}");
        }
        let p6 = HostPortPattern::parse("[::ffff:10.0.0.1]:80").unwrap();
        assert_eq!(p6.to_string(), "10.0.0.1:80");
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?"
    }

    fn domain() -> impl Strategy<Value = String> {
        prop::collection::vec(label(), 2..5).prop_map(|v| v.join("."))
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent(s in "[A-Za-z0-9.\\-_]{1,40}") {
            if let Ok(h) = normalize_host(&s) {
                let again = normalize_host(&h.to_string()).unwrap();
                prop_assert_eq!(again, h);
            }
        }

        #[test]
        fn case_and_trailing_dot_do_not_matter(d in domain()) {
            let a = normalize_host(&d).unwrap();
            let b = normalize_host(&format!("{}.", d.to_uppercase())).unwrap();
            prop_assert_eq!(a, b);
        }

        #[test]
        fn every_ipv4_spelling_detected(n in any::<u32>()) {
            let a = Ipv4Addr::from(n);
            let [b0, b1, b2, b3] = a.octets();
            let spellings = [
                a.to_string(),
                n.to_string(),
                format!("0x{n:x}"),
                format!("0{n:o}"),
                format!("{b0}.{}", (u32::from(b1) << 16) | (u32::from(b2) << 8) | u32::from(b3)),
                format!("{b0}.{b1}.{}", (u32::from(b2) << 8) | u32::from(b3)),
                format!("0x{b0:x}.0x{b1:X}.0{b2:o}.{b3}"),
                format!("{a}."),
                format!("[::ffff:{a}]"),
            ];
            for s in spellings {
                prop_assert_eq!(ip_literal(&s), Some(IpAddr::V4(a)), "{}", s);
            }
        }

        #[test]
        fn every_ipv6_spelling_detected(n in any::<u128>(), zone in "[a-z0-9]{1,6}") {
            let a = Ipv6Addr::from(n);
            let want = IpAddr::V6(a).to_canonical();
            for s in [a.to_string(), format!("[{a}]"), format!("[{a}%25{zone}]"), format!("{a}%{zone}")] {
                prop_assert_eq!(ip_literal(&s), Some(want), "{}", s);
            }
        }

        #[test]
        fn wildcard_never_matches_apex(d in domain(), l in label()) {
            let p = HostPortPattern::parse(&format!("*.{d}:443")).unwrap();
            prop_assert!(!p.matches(&normalize_host(&d).unwrap(), 443));
            let sub = normalize_host(&format!("{l}.{d}")).unwrap();
            prop_assert!(p.matches(&sub, 443));
            let sibling = normalize_host(&format!("{l}{d}")).unwrap();
            prop_assert!(!p.matches(&sibling, 443));
        }

        #[test]
        fn names_never_parse_as_ips(d in domain()) {
            // A name whose last label starts with a letter is never an IP.
            prop_assert!(matches!(normalize_host(&d), Ok(Host::Domain(_))));
        }
    }
}

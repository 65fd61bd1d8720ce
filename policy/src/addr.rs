//! Address classes and CIDR ranges: which resolved addresses the proxy may
//! dial, and which private ranges a pack may open (`allowPrivateRanges`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// What kind of address an IP is, for the proxy's resolve-and-dial check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// Cloud metadata endpoints (`169.254.169.254`, `fd00:ec2::254`, `100.100.100.200`).
    Metadata,
    /// `224.0.0.0/4`, `255.255.255.255`, `ff00::/8`.
    Multicast,
    /// RFC 1918, `100.64.0.0/10` (CGNAT) and `fc00::/7` (ULA): openable with `allowPrivateRanges`.
    Private,
    /// Reserved or documentation ranges that are never a real destination
    /// (`240.0.0.0/4`, `192.0.2.0/24`, `198.18.0.0/15`, `2001:db8::/32`, ...).
    Reserved,
    /// Anything else.
    Public,
}

impl AddressClass {
    /// Short machine-readable name (`loopback`, `private`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Unspecified => "unspecified",
            AddressClass::Loopback => "loopback",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Metadata => "metadata",
            AddressClass::Multicast => "multicast",
            AddressClass::Private => "private",
            AddressClass::Reserved => "reserved",
            AddressClass::Public => "public",
        }
    }
}

/// Classify an address; v4-mapped and v4-compatible IPv6 are judged as IPv4.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip.to_canonical() {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => {
            let seg = a.segments();
            // ::a.b.c.d (deprecated v4-compatible) and 64:ff9b::/96 (NAT64) carry an IPv4 address.
            if seg[..6] == [0; 6] && !a.is_unspecified() && !a.is_loopback() {
                return classify_v4(v4_from_tail(a));
            }
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return classify_v4(v4_from_tail(a));
            }
            classify_v6(a)
        }
    }
}

fn v4_from_tail(a: Ipv6Addr) -> Ipv4Addr {
    let o = a.octets();
    Ipv4Addr::new(o[12], o[13], o[14], o[15])
}

fn classify_v4(a: Ipv4Addr) -> AddressClass {
    let o = a.octets();
    if a == Ipv4Addr::new(169, 254, 169, 254) || a == Ipv4Addr::new(100, 100, 100, 200) {
        AddressClass::Metadata
    } else if o[0] == 0 {
        AddressClass::Unspecified
    } else if a.is_loopback() {
        AddressClass::Loopback
    } else if a.is_link_local() {
        AddressClass::LinkLocal
    } else if a.is_multicast() || a.is_broadcast() {
        AddressClass::Multicast
    } else if a.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        AddressClass::Private
    } else if o[0] >= 240
        || a.is_documentation()
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn classify_v6(a: Ipv6Addr) -> AddressClass {
    let seg = a.segments();
    if a == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        AddressClass::Metadata
    } else if a.is_unspecified() {
        AddressClass::Unspecified
    } else if a.is_loopback() {
        AddressClass::Loopback
    } else if (seg[0] & 0xffc0) == 0xfe80 {
        AddressClass::LinkLocal
    } else if a.is_multicast() {
        AddressClass::Multicast
    } else if (seg[0] & 0xfe00) == 0xfc00 {
        AddressClass::Private
    } else if seg[0] == 0x2001 && seg[1] == 0x0db8 || (seg[0] & 0xffc0) == 0xfec0 {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

/// Why a CIDR range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not `address/prefix`.
    #[error("`{input}` is not a CIDR range (write it like `10.20.0.0/16` or `fd00::/8`)")]
    Syntax {
        /// The text as given.
        input: String,
    },
    /// Prefix longer than the address.
    #[error("`{input}`: prefix length must be at most {max}")]
    Prefix {
        /// The text as given.
        input: String,
        /// 32 or 128.
        max: u8,
    },
    /// Bits set after the prefix (`10.0.0.1/8`).
    #[error("`{input}` has host bits set; did you mean `{suggest}`?")]
    HostBits {
        /// The text as given.
        input: String,
        /// The network address with host bits cleared.
        suggest: String,
    },
}

/// An IPv4 or IPv6 network (`10.0.0.0/8`); v4-mapped addresses match IPv4 ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether the range holds `ip` (judged after v4-mapped -> IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => mask32(u32::from(a), self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => mask128(u128::from(a), self.prefix) == u128::from(n),
            _ => false,
        }
    }

    /// Whether every address in this range is in `outer`.
    pub fn is_within(&self, outer: &Cidr) -> bool {
        self.prefix >= outer.prefix && outer.contains(self.addr)
    }
}

fn mask32(v: u32, prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        v & (u32::MAX << (32 - u32::from(prefix)))
    }
}

fn mask128(v: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        v & (u128::MAX << (128 - u32::from(prefix)))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax {
            input: input.to_owned(),
        };
        let (a, p) = input.split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = a.parse().map_err(|_| syntax())?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 3 {
            return Err(syntax());
        }
        let prefix: u8 = p.parse().map_err(|_| syntax())?;
        let (max, masked) = match addr {
            IpAddr::V4(v) => (
                32,
                IpAddr::V4(Ipv4Addr::from(mask32(u32::from(v), prefix.min(32)))),
            ),
            IpAddr::V6(v) => (
                128,
                IpAddr::V6(Ipv6Addr::from(mask128(u128::from(v), prefix.min(128)))),
            ),
        };
        if prefix > max {
            return Err(CidrError::Prefix {
                input: input.to_owned(),
                max,
            });
        }
        if masked != addr {
            return Err(CidrError::HostBits {
                input: input.to_owned(),
                suggest: format!("{masked}/{prefix}"),
            });
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The private ranges a pack may open with `allowPrivateRanges`.
pub fn private_ranges() -> [Cidr; 5] {
    let v4 = |a, b, c, d, prefix| Cidr {
        addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        prefix,
    };
    [
        v4(10, 0, 0, 0, 8),
        v4(172, 16, 0, 0, 12),
        v4(192, 168, 0, 0, 16),
        v4(100, 64, 0, 0, 10),
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0)),
            prefix: 7,
        },
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn class(s: &str) -> AddressClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn classes() {
        assert_eq!(class("127.0.0.1"), AddressClass::Loopback);
        assert_eq!(class("::1"), AddressClass::Loopback);
        assert_eq!(class("::ffff:127.0.0.1"), AddressClass::Loopback);
        assert_eq!(class("::127.0.0.1"), AddressClass::Loopback);
        assert_eq!(class("64:ff9b::7f00:1"), AddressClass::Loopback);
        assert_eq!(class("0.0.0.0"), AddressClass::Unspecified);
        assert_eq!(class("::"), AddressClass::Unspecified);
        assert_eq!(class("169.254.169.254"), AddressClass::Metadata);
        assert_eq!(class("::ffff:169.254.169.254"), AddressClass::Metadata);
        assert_eq!(class("fd00:ec2::254"), AddressClass::Metadata);
        assert_eq!(class("169.254.1.1"), AddressClass::LinkLocal);
        assert_eq!(class("fe80::1"), AddressClass::LinkLocal);
        assert_eq!(class("224.0.0.1"), AddressClass::Multicast);
        assert_eq!(class("ff02::1"), AddressClass::Multicast);
        assert_eq!(class("10.1.2.3"), AddressClass::Private);
        assert_eq!(class("100.64.0.1"), AddressClass::Private);
        assert_eq!(class("fd12::1"), AddressClass::Private);
        assert_eq!(class("192.0.2.1"), AddressClass::Reserved);
        assert_eq!(class("8.8.8.8"), AddressClass::Public);
        assert_eq!(class("2606:4700::1"), AddressClass::Public);
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c: Cidr = "10.20.0.0/16".parse().unwrap();
        assert!(c.contains("10.20.3.4".parse().unwrap()));
        assert!(c.contains("::ffff:10.20.3.4".parse().unwrap()));
        assert!(!c.contains("10.21.0.1".parse().unwrap()));
        assert!(c.is_within(&private_ranges()[0]));
        let e = "10.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert!(e.to_string().contains("`10.0.0.0/8`"), "{e}");
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix { .. })
        ));
        assert!(matches!(
            "10.0.0.0".parse::<Cidr>(),
            Err(CidrError::Syntax { .. })
        ));
        assert!(matches!(
            "10.0.0.0/-1".parse::<Cidr>(),
            Err(CidrError::Syntax { .. })
        ));
        let c6: Cidr = "fd00::/8".parse().unwrap();
        assert!(c6.contains("fd00::5".parse().unwrap()));
        assert!(!c6.contains("10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
    }
}

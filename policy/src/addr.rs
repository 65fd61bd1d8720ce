//! CIDR ranges: which private ranges a pack may open
//! (`allowPrivateRanges`). Which resolved addresses may be dialled is the
//! proxy's address-class check (`proxy::net::addr_class`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

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

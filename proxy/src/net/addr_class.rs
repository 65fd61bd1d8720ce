//! Address classes for resolved upstream addresses: which ones the proxy
//! refuses to dial.
//!
//! A name that is allowlisted can still resolve to somewhere an agent must
//! not reach: loopback (the host's own services), link-local and cloud
//! metadata endpoints (credentials), this host's other addresses, private
//! networks. DNS answers are checked here (DNS rebinding: an allowed name
//! answering `127.0.0.1` or `169.254.169.254`); addresses the operator pinned
//! with `--resolve` are not (see [`select_addresses`]).
//!
//! IPv6 forms that carry an IPv4 address are judged by that address too:
//! v4-mapped (`::ffff:a.b.c.d`), v4-compatible (`::a.b.c.d`), NAT64
//! (`64:ff9b::/96`; `64:ff9b:1::/48` at every RFC 6052 prefix length),
//! 6to4 (`2002::/16`) and Teredo (`2001::/32`, server and de-obfuscated
//! client address). Pure code except [`LocalAddrs::from_system`].

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use policy::Fronting;
use serde::Serialize;

use super::resolve::{AddrSource, Resolved};

/// The class of an address, most specific first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressClass {
    /// A routable public address: dialled.
    Public,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// A cloud metadata or host-agent endpoint (`169.254.169.254`,
    /// `fd00:ec2::254`, Azure's `168.63.129.16`, Alibaba's `100.100.100.200`, …).
    Metadata,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// `224.0.0.0/4`, `255.255.255.255`, `ff00::/8`.
    Multicast,
    /// Reserved or documentation ranges that are never a real upstream
    /// (`240.0.0.0/4`, `192.0.0.0/24`, `192.0.2.0/24`, `198.51.100.0/24`,
    /// `203.0.113.0/24`, benchmarking `198.18.0.0/15`, `2001:db8::/32`,
    /// `100::/64`, deprecated site-local `fec0::/10`).
    Reserved,
    /// One of this host's own interface addresses.
    ThisHost,
    /// Carrier-grade NAT / shared address space `100.64.0.0/10`.
    Cgnat,
    /// Private networks: `10/8`, `172.16/12`, `192.168/16`, `fc00::/7`,
    /// local-use NAT64 `64:ff9b:1::/48`.
    Private,
}

impl AddressClass {
    /// The stable machine-readable name (audit records).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Metadata => "metadata",
            Self::LinkLocal => "link_local",
            Self::Multicast => "multicast",
            Self::Reserved => "reserved",
            Self::ThisHost => "this_host",
            Self::Cgnat => "cgnat",
            Self::Private => "private",
        }
    }

    /// Whether the policy's private-range allowance lets this class through.
    /// Private ranges and CGNAT (used by overlay VPNs) are; loopback,
    /// link-local, metadata and the rest never are.
    pub fn allowed_with_private(self) -> bool {
        matches!(self, Self::Private | Self::Cgnat)
    }

    /// How bad a class is, to report the worst of several embeddings.
    fn severity(self) -> u8 {
        match self {
            Self::Public => 0,
            Self::Private => 1,
            Self::Cgnat => 2,
            Self::Reserved => 3,
            Self::Multicast => 4,
            Self::ThisHost => 5,
            Self::LinkLocal => 6,
            Self::Unspecified => 7,
            Self::Loopback => 8,
            Self::Metadata => 9,
        }
    }
}

impl std::fmt::Display for AddressClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl LocalAddrs ===

/// [`LocalAddrs`] read at most once per `ttl` (interfaces change rarely;
/// reading them on every dial or answer would cost a syscall walk). When
/// a read fails the previous set is kept (empty before the first).
#[derive(Debug)]
pub struct LocalAddrsCache {
    ttl: Duration,
    cached: Mutex<Option<(Instant, Arc<LocalAddrs>)>>,
}

impl LocalAddrsCache {
    /// A cache that reads the interfaces again after `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            cached: Mutex::new(None),
        }
    }

    /// This host's interface addresses, at most `ttl` old.
    pub fn get(&self) -> Arc<LocalAddrs> {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, addrs)) = cached.as_ref()
            && at.elapsed() < self.ttl
        {
            return addrs.clone();
        }
        let addrs = match LocalAddrs::from_system() {
            Ok(addrs) => Arc::new(addrs),
            Err(error) => {
                tracing::warn!(error = %error, "getifaddrs failed; keeping the previous interface addresses");
                cached
                    .as_ref()
                    .map_or_else(|| Arc::new(LocalAddrs::default()), |(_, a)| a.clone())
            }
        };
        *cached = Some((Instant::now(), addrs.clone()));
        addrs
    }
}

/// This host's own interface addresses (a snapshot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalAddrs {
    addrs: HashSet<IpAddr>,
}

impl LocalAddrs {
    /// A set made of the given addresses (tests; or a daemon that knows them).
    pub fn new(addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            addrs: addrs.into_iter().map(canonical).collect(),
        }
    }

    /// Reads every IPv4/IPv6 interface address with `getifaddrs(3)`.
    pub fn from_system() -> io::Result<Self> {
        let addrs = nix::ifaddrs::getifaddrs()?
            .filter_map(|interface| interface.address)
            .filter_map(|address| {
                if let Some(sin) = address.as_sockaddr_in() {
                    Some(IpAddr::V4(sin.ip()))
                } else {
                    address.as_sockaddr_in6().map(|sin6| IpAddr::V6(sin6.ip()))
                }
            })
            .collect();
        Ok(Self { addrs })
    }

    /// Whether `ip` is one of this host's addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.addrs.contains(&canonical(ip))
    }

    /// How many addresses the snapshot holds.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether the snapshot is empty.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

/// IPv4-mapped IPv6 as IPv4, everything else unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

// === classification ===

/// Classifies `ip`: the worst class of the address itself and of every IPv4
/// address embedded in it.
pub fn classify(ip: IpAddr, local: &LocalAddrs) -> AddressClass {
    let mut worst = classify_one(ip, local);
    if let IpAddr::V6(v6) = ip {
        for embedded in embedded_ipv4(v6) {
            let class = classify_one(IpAddr::V4(embedded), local);
            if class.severity() > worst.severity() {
                worst = class;
            }
        }
    }
    worst
}

/// Whether the proxy may dial `ip`: `Ok`, or the worst refused class.
///
/// The address itself and every IPv4 address embedded in it must each be
/// public, or private/CGNAT and opened by `private_allowed` (the policy's
/// `allowPrivateRanges`), which is asked about that very address.
pub fn check(
    ip: IpAddr,
    private_allowed: impl Fn(IpAddr) -> bool,
    local: &LocalAddrs,
) -> Result<(), AddressClass> {
    let mut candidates = vec![ip];
    if let IpAddr::V6(v6) = ip {
        candidates.extend(embedded_ipv4(v6).into_iter().map(IpAddr::V4));
    }
    let mut worst: Option<AddressClass> = None;
    for candidate in candidates {
        let class = classify_one(candidate, local);
        let ok = class == AddressClass::Public
            || (class.allowed_with_private() && private_allowed(candidate));
        if !ok && worst.is_none_or(|w| class.severity() > w.severity()) {
            worst = Some(class);
        }
    }
    worst.map_or(Ok(()), Err)
}

// === selection ===

/// A resolution none of whose addresses may be dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The first refused address.
    pub addr: IpAddr,
    /// Its (worst) class.
    pub class: AddressClass,
}

/// The addresses to dial, in order. DNS answers in a refused class
/// are dropped (dialling only what passed); if none is left, the first
/// refused one is reported. Pinned addresses are the operator's decision
/// and pass unchecked.
pub fn select_addresses(
    resolved: &Resolved,
    fronting: &Fronting,
    local: &LocalAddrs,
) -> Result<Vec<IpAddr>, Refused> {
    if resolved.source == AddrSource::Pinned {
        return Ok(resolved.addrs.clone());
    }
    let mut first_refused = None;
    let mut allowed = Vec::new();
    for &addr in &resolved.addrs {
        match check(addr, |ip| fronting.private_address_allowed(ip), local) {
            Ok(()) => allowed.push(addr),
            Err(class) => {
                first_refused.get_or_insert(Refused { addr, class });
            }
        }
    }
    match (allowed.is_empty(), first_refused) {
        (false, _) => Ok(allowed),
        (true, Some(refused)) => Err(refused),
        // No addresses at all is a resolver failure, reported as such upstream;
        // refusing here keeps the function total.
        (true, None) => Err(Refused {
            addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            class: AddressClass::Unspecified,
        }),
    }
}

fn classify_one(ip: IpAddr, local: &LocalAddrs) -> AddressClass {
    let base = match canonical(ip) {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    };
    if base.severity() < AddressClass::ThisHost.severity() && local.contains(ip) {
        AddressClass::ThisHost
    } else {
        base
    }
}

/// Metadata and host-agent endpoints of the big clouds (IPv4).
const METADATA_V4: [Ipv4Addr; 6] = [
    Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure, OCI, DigitalOcean, …
    Ipv4Addr::new(169, 254, 169, 253), // AWS DNS
    Ipv4Addr::new(169, 254, 169, 123), // AWS time sync
    Ipv4Addr::new(169, 254, 170, 2),   // AWS ECS task metadata
    Ipv4Addr::new(168, 63, 129, 16),   // Azure WireServer / host agent
    Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
];

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use AddressClass as C;
    if METADATA_V4.contains(&ip) {
        return C::Metadata;
    }
    let table: [([u8; 4], u32, AddressClass); 15] = [
        ([0, 0, 0, 0], 8, C::Unspecified),
        ([127, 0, 0, 0], 8, C::Loopback),
        ([169, 254, 0, 0], 16, C::LinkLocal),
        ([255, 255, 255, 255], 32, C::Multicast),
        ([224, 0, 0, 0], 4, C::Multicast),
        ([240, 0, 0, 0], 4, C::Reserved),
        ([192, 0, 0, 0], 24, C::Reserved),
        ([192, 0, 2, 0], 24, C::Reserved),
        ([198, 51, 100, 0], 24, C::Reserved),
        ([203, 0, 113, 0], 24, C::Reserved),
        ([100, 64, 0, 0], 10, C::Cgnat),
        ([10, 0, 0, 0], 8, C::Private),
        ([172, 16, 0, 0], 12, C::Private),
        ([192, 168, 0, 0], 16, C::Private),
        ([198, 18, 0, 0], 15, C::Reserved),
    ];
    table
        .into_iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map_or(C::Public, |(_, _, class)| class)
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    (u128::from(ip) & mask) == (u128::from(Ipv6Addr::from(net)) & mask)
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use AddressClass as C;
    if ip.is_unspecified() {
        return C::Unspecified;
    }
    if ip.is_loopback() {
        return C::Loopback;
    }
    let table: [([u16; 8], u32, AddressClass); 10] = [
        ([0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0], 32, C::Metadata), // AWS IMDS/DNS/NTP over IPv6
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, C::LinkLocal),
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, C::Multicast),
        ([0x2001, 0x0db8, 0, 0, 0, 0, 0, 0], 32, C::Reserved),
        ([0x0100, 0, 0, 0, 0, 0, 0, 0], 64, C::Reserved),
        ([0, 0, 0, 0, 0, 0, 0, 0], 96, C::Reserved), // v4-compatible (judged by the v4 too)
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, C::Private),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, C::Reserved),
        ([0x0064, 0xff9b, 0x0001, 0, 0, 0, 0, 0], 48, C::Private),
        ([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, C::Reserved), // unreachable: mapped is canonicalised
    ];
    table
        .into_iter()
        .find(|(net, prefix, _)| in_v6(ip, *net, *prefix))
        .map_or(C::Public, |(_, _, class)| class)
}

/// Every IPv4 address an IPv6 address may carry (see the module doc).
pub fn embedded_ipv4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = u128::from(ip);
    let o = ip.octets();
    let v4_at = |start: usize| Ipv4Addr::new(o[start], o[start + 1], o[start + 2], o[start + 3]);
    let mut out = Vec::new();
    if let Some(mapped) = ip.to_ipv4_mapped() {
        out.push(mapped);
    }
    // v4-compatible ::a.b.c.d (not :: and ::1, which are classified as such).
    if bits >> 32 == 0 && bits > 1 {
        out.push(v4_at(12));
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if in_v6(ip, [0x0064, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        out.push(v4_at(12));
    }
    // Local-use NAT64 64:ff9b:1::/48: the operator picks the prefix length
    // (RFC 6052 §2.2: /48, /56, /64 or /96 inside it). A layout fits when its
    // `u` octet (bits 64-71) and its suffix are zero; judge every layout that
    // fits, and an address no layout fits by the unspecified address.
    if in_v6(ip, [0x0064, 0xff9b, 0x0001, 0, 0, 0, 0, 0], 48) {
        let zero = |range: std::ops::Range<usize>| o[range].iter().all(|&b| b == 0);
        let before = out.len();
        if o[8] == 0 && zero(11..16) {
            out.push(Ipv4Addr::new(o[6], o[7], o[9], o[10])); // /48
        }
        if o[8] == 0 && zero(12..16) {
            out.push(Ipv4Addr::new(o[7], o[9], o[10], o[11])); // /56
        }
        if o[8] == 0 && zero(13..16) {
            out.push(Ipv4Addr::new(o[9], o[10], o[11], o[12])); // /64
        }
        if zero(8..12) {
            out.push(v4_at(12)); // /96
        }
        if out.len() == before {
            out.push(Ipv4Addr::UNSPECIFIED);
        }
    }
    // 6to4 2002:AABB:CCDD::/48.
    if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        out.push(v4_at(2));
    }
    // Teredo 2001:0000:SSSS:SSSS:flags:port:CCCC:CCCC (client obfuscated).
    if in_v6(ip, [0x2001, 0, 0, 0, 0, 0, 0, 0], 32) {
        out.push(v4_at(4));
        let client = v4_at(12);
        out.push(Ipv4Addr::from(!u32::from(client)));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn class(s: &str) -> AddressClass {
        classify(s.parse().unwrap(), &LocalAddrs::default())
    }

    #[test]
    fn ipv4_classes() {
        let cases = [
            ("0.0.0.0", AddressClass::Unspecified),
            ("0.1.2.3", AddressClass::Unspecified),
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.0.9", AddressClass::Loopback),
            ("169.254.169.254", AddressClass::Metadata),
            ("169.254.170.2", AddressClass::Metadata),
            ("168.63.129.16", AddressClass::Metadata),
            ("100.100.100.200", AddressClass::Metadata),
            ("169.254.1.1", AddressClass::LinkLocal),
            ("224.0.0.251", AddressClass::Multicast),
            ("239.255.255.250", AddressClass::Multicast),
            ("255.255.255.255", AddressClass::Multicast),
            ("240.0.0.1", AddressClass::Reserved),
            ("192.0.2.7", AddressClass::Reserved),
            ("100.64.0.1", AddressClass::Cgnat),
            ("100.127.255.255", AddressClass::Cgnat),
            ("100.128.0.1", AddressClass::Public),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("172.32.0.1", AddressClass::Public),
            ("192.168.1.1", AddressClass::Private),
            ("198.18.0.1", AddressClass::Reserved),
            ("1.1.1.1", AddressClass::Public),
            ("93.184.216.34", AddressClass::Public),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv6_classes() {
        let cases = [
            ("::", AddressClass::Unspecified),
            ("::1", AddressClass::Loopback),
            ("fe80::1", AddressClass::LinkLocal),
            ("febf::1", AddressClass::LinkLocal),
            ("fd00:ec2::254", AddressClass::Metadata),
            ("ff02::1", AddressClass::Multicast),
            ("fd12:3456::1", AddressClass::Private),
            ("fc00::1", AddressClass::Private),
            ("2001:db8::1", AddressClass::Reserved),
            ("2606:4700::1111", AddressClass::Public),
            ("2a00:1450:4001::200e", AddressClass::Public),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn embedded_ipv4_is_judged() {
        let cases = [
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("::ffff:169.254.169.254", AddressClass::Metadata),
            ("::ffff:1.1.1.1", AddressClass::Public),
            ("::127.0.0.1", AddressClass::Loopback),
            ("64:ff9b::7f00:1", AddressClass::Loopback),
            ("64:ff9b::a9fe:a9fe", AddressClass::Metadata),
            ("64:ff9b::1.1.1.1", AddressClass::Public),
            ("2002:7f00:1::1", AddressClass::Loopback),
            ("2002:a9fe:a9fe::", AddressClass::Metadata),
            ("2002:0101:0101::1", AddressClass::Public),
            // Teredo: server 65.54.227.120, client 127.0.0.1 obfuscated (0x80ff_fffe).
            (
                "2001:0:4136:e378:8000:63bf:80ff:fffe",
                AddressClass::Loopback,
            ),
            // Teredo with a loopback server.
            ("2001:0:7f00:1::", AddressClass::Loopback),
            // Local-use NAT64, /96 layout carrying 169.254.169.254.
            ("64:ff9b:1::a9fe:a9fe", AddressClass::Metadata),
            // Local-use NAT64, /48 layout carrying 127.0.0.1 (bits 48-63, u octet, 72-87).
            ("64:ff9b:1:7f00:0:100::", AddressClass::Loopback),
            // Local-use NAT64 that fits no RFC 6052 layout.
            ("64:ff9b:1:1:ff01:1:1:1", AddressClass::Unspecified),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), want, "{ip}");
        }
        // The local-use NAT64 block itself is private even when its payload is public.
        assert_eq!(class("64:ff9b:1::101:101"), AddressClass::Private);
    }

    #[test]
    fn this_host_addresses_are_refused_including_embedded_and_mapped() {
        let local = LocalAddrs::new([
            "203.0.114.9".parse().unwrap(),
            "2a01:db9::5".parse().unwrap(),
        ]);
        let c = |s: &str| classify(s.parse().unwrap(), &local);
        assert_eq!(c("203.0.114.9"), AddressClass::ThisHost);
        assert_eq!(c("::ffff:203.0.114.9"), AddressClass::ThisHost);
        assert_eq!(c("64:ff9b::cb00:7209"), AddressClass::ThisHost);
        assert_eq!(c("2a01:db9::5"), AddressClass::ThisHost);
        assert_eq!(c("203.0.114.10"), AddressClass::Public);
        // Loopback stays loopback even when listed.
        let with_lo = LocalAddrs::new(["127.0.0.1".parse().unwrap()]);
        assert_eq!(
            classify("127.0.0.1".parse().unwrap(), &with_lo),
            AddressClass::Loopback
        );
    }

    #[test]
    fn system_interface_addresses_include_loopback() {
        let local = LocalAddrs::from_system().unwrap();
        assert!(local.contains("127.0.0.1".parse().unwrap()), "{local:?}");
    }

    #[test]
    fn private_allowance_opens_only_private_and_cgnat_it_names() {
        let none = LocalAddrs::default();
        let all = |_: IpAddr| true;
        let nothing = |_: IpAddr| false;
        let ten_only = |ip: IpAddr| matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 10);
        let check_s =
            |s: &str, allow: &dyn Fn(IpAddr) -> bool| check(s.parse().unwrap(), allow, &none);
        assert_eq!(check_s("10.0.0.1", &nothing), Err(AddressClass::Private));
        assert_eq!(check_s("10.0.0.1", &all), Ok(()));
        assert_eq!(check_s("10.0.0.1", &ten_only), Ok(()));
        assert_eq!(
            check_s("192.168.0.1", &ten_only),
            Err(AddressClass::Private)
        );
        assert_eq!(check_s("100.64.1.1", &all), Ok(()));
        assert_eq!(check_s("fd12::1", &all), Ok(()));
        assert_eq!(check_s("127.0.0.1", &all), Err(AddressClass::Loopback));
        assert_eq!(
            check_s("169.254.169.254", &all),
            Err(AddressClass::Metadata)
        );
        assert_eq!(check_s("fd00:ec2::254", &all), Err(AddressClass::Metadata));
        assert_eq!(
            check_s("100.100.100.200", &all),
            Err(AddressClass::Metadata)
        );
        assert_eq!(check_s("198.18.0.1", &all), Err(AddressClass::Reserved));
        // Embedded private IPv4 is asked about as itself.
        assert_eq!(
            check_s("64:ff9b::a00:1", &nothing),
            Err(AddressClass::Private)
        );
        assert_eq!(check_s("64:ff9b::a00:1", &ten_only), Ok(()));
        assert_eq!(check_s("2002:a00:1::1", &ten_only), Ok(()));
        assert_eq!(
            check_s("2002:c0a8:1::1", &ten_only),
            Err(AddressClass::Private)
        );
        assert_eq!(check_s("8.8.8.8", &nothing), Ok(()));
        let local = LocalAddrs::new(["10.9.9.9".parse().unwrap()]);
        assert_eq!(
            check("10.9.9.9".parse().unwrap(), all, &local),
            Err(AddressClass::ThisHost)
        );
    }
}

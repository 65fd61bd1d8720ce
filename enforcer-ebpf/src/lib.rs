//! Types shared between enforcer's kernel programs and userspace.
//!
//! Every map value and key the programs use is defined here once, as
//! `#[repr(C)]` plain data, so the BPF object and the loader agree on layout.
//! Addresses are stored in network byte order as 16 bytes; IPv4 addresses
//! appear as IPv4-mapped IPv6 (`::ffff:a.b.c.d`) wherever one key type serves
//! both families. Ports are in host byte order.
#![no_std]
#![deny(missing_docs)]

/// Names of the maps in the BPF object, used by the loader to find and pin them.
pub mod map_names {
    /// Array of [`crate::Endpoint`]: the enforcer's own listeners.
    pub const CONFIG: &str = "CONFIG";
    /// Hash of [`crate::Allow4Key`] to [`crate::AllowValue`]: direct IPv4 allow entries.
    pub const ALLOW4: &str = "ALLOW4";
    /// Hash of [`crate::SocketKey`] to [`crate::AllowValue`]: direct IPv6 allow entries.
    pub const ALLOW6: &str = "ALLOW6";
    /// BTF socket-storage map of [`crate::SockTag`]: every socket created in
    /// the cgroup (tagged at `sock_create`) and the daemon's own listeners
    /// (tagged from userspace by fd).
    pub const SOCK_TAGS: &str = "SOCK_TAGS";
    /// Ring buffer of [`crate::DenyEvent`].
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU array of u64 counters, indexed by [`crate::stat`].
    pub const STATS: &str = "STATS";
    /// Array of the last [`crate::RECENT_DENIES`] [`crate::DenyEvent`]s, for `status` without a daemon.
    pub const RECENT: &str = "RECENT";
    /// One-slot array holding the number of denies ever written to `RECENT`.
    pub const RECENT_HEAD: &str = "RECENT_HEAD";

    /// Every map that is pinned (by name) so enforcement state outlives the loader.
    pub const PINNED: [&str; 8] = [
        CONFIG,
        ALLOW4,
        ALLOW6,
        SOCK_TAGS,
        EVENTS,
        STATS,
        RECENT,
        RECENT_HEAD,
    ];
}

/// Slots in the `CONFIG` endpoint array.
pub const MAX_ENDPOINTS: u32 = 16;
/// Capacity of each direct allow map.
pub const MAX_ALLOW_ENTRIES: u32 = 131_072;
/// Slots in the `RECENT` array of last denies.
pub const RECENT_DENIES: u32 = 32;
/// Size of the `EVENTS` ring buffer in bytes (a power of two, page aligned).
pub const EVENTS_BYTES: u32 = 4 << 20;
/// Expiry value meaning "never expires".
pub const NEVER_EXPIRES: u64 = u64::MAX;

/// Address families, as in `<sys/socket.h>`.
pub mod family {
    /// `AF_UNIX`.
    pub const UNIX: u16 = 1;
    /// `AF_INET`.
    pub const INET: u16 = 2;
    /// `AF_INET6`.
    pub const INET6: u16 = 10;
    /// `AF_NETLINK`.
    pub const NETLINK: u16 = 16;
    /// `AF_PACKET`.
    pub const PACKET: u16 = 17;
    /// `AF_VSOCK`.
    pub const VSOCK: u16 = 40;
}

/// IP protocol numbers the programs care about.
pub mod protocol {
    /// `IPPROTO_TCP`.
    pub const TCP: u8 = 6;
    /// `IPPROTO_UDP`.
    pub const UDP: u8 = 17;
}

/// Indexes into the per-CPU `STATS` array.
pub mod stat {
    /// Connects and sendmsgs allowed.
    pub const ALLOWED: u32 = 0;
    /// Deny events that did not fit in the ring buffer.
    pub const EVENTS_LOST: u32 = 1;
    /// Denies, by reason: `DENIED_BASE + reason as u32`.
    pub const DENIED_BASE: u32 = 8;
    /// Number of slots.
    pub const LEN: u32 = 32;
}

/// One enforcer listener a process in the cgroup may always reach.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// Address, network order; IPv4 as IPv4-mapped IPv6.
    pub addr: [u8; 16],
    /// Port, host order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    /// 1 when this slot holds an endpoint, 0 when empty.
    pub in_use: u8,
}

/// Key of `ALLOW4`: an IPv4 destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Allow4Key {
    /// Address, network order.
    pub addr: [u8; 4],
    /// Port, host order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    /// Always zero.
    pub pad: u8,
}

/// Key of `ALLOW6`: an address (IPv4 mapped), port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SocketKey {
    /// Address, network order; IPv4 as IPv4-mapped IPv6.
    pub addr: [u8; 16],
    /// Port, host order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    /// Always zero.
    pub pad: u8,
}

/// Who a socket in `SOCK_TAGS` belongs to ([`SockTag::owner`]).
pub mod owner {
    /// Created by a process of the enforced cgroup (tagged at `sock_create`).
    pub const CGROUP: u8 = 1;
    /// One of the enforcer daemon's own listeners (tagged by the daemon, by fd).
    pub const DAEMON: u8 = 2;
}

/// Value of the `SOCK_TAGS` socket-storage map: whose socket this is.
///
/// The storage is cloned onto sockets a tagged listener accepts
/// (`BPF_F_CLONE`), so an accepted connection carries its listener's tag.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockTag {
    /// [`owner::CGROUP`] or [`owner::DAEMON`].
    pub owner: u8,
    /// Always zero.
    pub pad: [u8; 3],
    /// Process (thread group) id of the creator ([`owner::CGROUP`]), else 0;
    /// packet-level deny events, which run where no task is known, name it.
    pub tgid: u32,
    /// cgroup v2 id of the creating process ([`owner::CGROUP`]), else 0.
    pub cgroup_id: u64,
    /// Command name of the creator, NUL padded.
    pub comm: [u8; 16],
}

/// Value of the direct allow maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AllowValue {
    /// `CLOCK_BOOTTIME` nanoseconds after which the entry no longer allows;
    /// [`NEVER_EXPIRES`] for none. The program checks it on every connect, so
    /// the TTL holds with no daemon running.
    pub expires_at_boot_ns: u64,
}

/// The hook that made a decision.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `cgroup/connect4`.
    Connect4 = 1,
    /// `cgroup/connect6`.
    Connect6 = 2,
    /// `cgroup/sendmsg4`.
    Sendmsg4 = 3,
    /// `cgroup/sendmsg6`.
    Sendmsg6 = 4,
    /// `cgroup/sock_create`.
    SockCreate = 5,
    /// `lsm_cgroup/socket_create`.
    LsmSocketCreate = 6,
    /// `cgroup/setsockopt`.
    SetSockopt = 7,
    /// `cgroup_skb/egress`.
    SkbEgress = 8,
}

impl Hook {
    /// Decodes a hook byte from an event.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Connect4,
            2 => Self::Connect6,
            3 => Self::Sendmsg4,
            4 => Self::Sendmsg6,
            5 => Self::SockCreate,
            6 => Self::LsmSocketCreate,
            7 => Self::SetSockopt,
            8 => Self::SkbEgress,
            _ => return None,
        })
    }

    /// The hook's name as the kernel's section calls it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect4 => "connect4",
            Self::Connect6 => "connect6",
            Self::Sendmsg4 => "sendmsg4",
            Self::Sendmsg6 => "sendmsg6",
            Self::SockCreate => "sock_create",
            Self::LsmSocketCreate => "lsm_socket_create",
            Self::SetSockopt => "setsockopt",
            Self::SkbEgress => "skb_egress",
        }
    }
}

/// Why something was allowed or denied: one vocabulary for the kernel
/// programs, the CONNECT proxy and every audit record. The kernel programs
/// use the first seven (their discriminants are what the maps and events
/// carry); the proxy uses the rest. Names are machine-readable snake_case
/// and stable: add variants, never rename or reuse one.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    // === kernel ===
    /// The destination is not an enforcer endpoint nor a live direct entry.
    Destination = 1,
    /// A loopback destination whose receiving socket (the one the kernel
    /// would deliver to) is not a socket of the enforced cgroup.
    LoopbackPort = 2,
    /// A direct entry matched but its TTL has run out.
    DirectExpired = 3,
    /// DNS (port 53) to a resolver that is not the enforcer's.
    Dns = 4,
    /// A raw socket (`SOCK_RAW`).
    RawSocket = 5,
    /// An IPv4/IPv6 socket whose protocol is neither TCP nor UDP.
    Protocol = 6,
    /// A socket family other than unix, inet, inet6 and netlink.
    Family = 7,
    /// An IPv6 routing header or an IPv4 source-route option (LSRR/SSRR):
    /// refused at `setsockopt`, dropped at egress.
    SourceRoute = 8,
    /// An enforcer endpoint whose listening socket is not the daemon's
    /// (the daemon is down, or another process took its port).
    EndpointNotOwned = 9,

    // === CONNECT proxy ===
    // === allow ===
    /// `host:port` is on the policy pack's allowlist and every check passed.
    Allowlisted = 32,
    /// `host:port` is covered by a live runtime grant (`enforcer allow`) and
    /// every check passed.
    Granted = 33,
    /// Allowed on the outer SNI alone although the ClientHello carried an
    /// `encrypted_client_hello` extension (`fronting.allowECH`).
    AllowlistedEch = 34,
    /// A plain-HTTP (absolute-form) request to a host the policy allows
    /// plain HTTP for.
    PlainHttpAllowed = 35,

    // === before `200` ===
    /// The request line or headers broke the HTTP grammar the proxy accepts.
    MalformedRequest = 36,
    /// The request head exceeded the configured line, header-count or byte bound.
    RequestTooLarge = 37,
    /// The request head did not arrive within the header-read timeout.
    RequestTimeout = 38,
    /// The client asked for an IP address (in any spelling) instead of a name.
    IpLiteral = 39,
    /// The host is neither a valid name nor a valid address (bad IDNA,
    /// numeric garbage like `1.2.3.999`).
    InvalidHost = 40,
    /// `host:port` is not on the allowlist.
    NotAllowlisted = 41,
    /// Only expired allowlist entries or grants match `host:port`.
    Expired = 42,
    /// A plain-HTTP request to a host the policy does not allow plain HTTP for.
    PlainHttpDenied = 43,
    /// Every tunnel slot (`limits.maxConcurrentTunnels`) was taken: `503`.
    Overloaded = 44,

    // === after `200`: the ClientHello ===
    /// The first bytes in the tunnel are not a TLS handshake record.
    NotTls = 45,
    /// The TLS records or the ClientHello inside them are malformed.
    MalformedClientHello = 46,
    /// The ClientHello exceeded the byte bound.
    ClientHelloTooLarge = 47,
    /// The ClientHello did not arrive within the ClientHello timeout.
    ClientHelloTimeout = 48,
    /// The ClientHello has no `server_name` (`fronting.requireSNI`).
    MissingSni = 49,
    /// The ClientHello names more than one server.
    MultipleSni = 50,
    /// The ClientHello carries an `encrypted_client_hello` extension and the
    /// policy does not set `fronting.allowECH`.
    Ech = 51,
    /// The SNI differs from the CONNECT host after normalisation
    /// (`fronting.requireHostEqSNI`): domain fronting.
    SniMismatch = 52,

    // === resolve and dial ===
    /// The name did not resolve (or the resolver failed).
    ResolveFailed = 53,
    /// Every resolved address is in a refused class (loopback, link-local,
    /// metadata, private, …): DNS rebinding and the like.
    ForbiddenAddress = 54,
    /// No resolved address accepted a connection.
    ConnectFailed = 55,
    /// Dialling the upstream did not finish within the connect timeout.
    ConnectTimeout = 56,
    /// The client went away before a decision could be made.
    ClientClosed = 57,
    /// An I/O error on the client socket before a decision could be made.
    ClientError = 58,
}

impl Reason {
    /// The reasons the kernel programs give (what `STATS` counts).
    pub const KERNEL: [Reason; 9] = [
        Self::Destination,
        Self::LoopbackPort,
        Self::DirectExpired,
        Self::Dns,
        Self::RawSocket,
        Self::Protocol,
        Self::Family,
        Self::SourceRoute,
        Self::EndpointNotOwned,
    ];

    /// Every reason, for documentation, metrics and tests.
    pub const ALL: [Reason; 36] = [
        Self::Destination,
        Self::LoopbackPort,
        Self::DirectExpired,
        Self::Dns,
        Self::RawSocket,
        Self::Protocol,
        Self::Family,
        Self::SourceRoute,
        Self::EndpointNotOwned,
        Self::Allowlisted,
        Self::Granted,
        Self::AllowlistedEch,
        Self::PlainHttpAllowed,
        Self::MalformedRequest,
        Self::RequestTooLarge,
        Self::RequestTimeout,
        Self::IpLiteral,
        Self::InvalidHost,
        Self::NotAllowlisted,
        Self::Expired,
        Self::PlainHttpDenied,
        Self::Overloaded,
        Self::NotTls,
        Self::MalformedClientHello,
        Self::ClientHelloTooLarge,
        Self::ClientHelloTimeout,
        Self::MissingSni,
        Self::MultipleSni,
        Self::Ech,
        Self::SniMismatch,
        Self::ResolveFailed,
        Self::ForbiddenAddress,
        Self::ConnectFailed,
        Self::ConnectTimeout,
        Self::ClientClosed,
        Self::ClientError,
    ];

    /// Decodes a reason byte from an event.
    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| *reason as u8 == value)
    }

    /// Whether a reason belongs to an allow decision.
    pub fn is_allow(self) -> bool {
        matches!(
            self,
            Self::Allowlisted | Self::Granted | Self::AllowlistedEch | Self::PlainHttpAllowed
        )
    }

    /// The stable machine-readable name (audit records, logs, metrics, the `403` body).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Destination => "destination_not_allowed",
            Self::LoopbackPort => "loopback_port_not_owned",
            Self::DirectExpired => "direct_entry_expired",
            Self::Dns => "dns_not_enforcer",
            Self::RawSocket => "raw_socket",
            Self::Protocol => "protocol_not_tcp_udp",
            Self::Family => "socket_family",
            Self::SourceRoute => "source_route",
            Self::EndpointNotOwned => "endpoint_not_owned",
            Self::Allowlisted => "allowlisted",
            Self::Granted => "granted",
            Self::AllowlistedEch => "allowlisted_ech",
            Self::PlainHttpAllowed => "plain_http_allowed",
            Self::MalformedRequest => "malformed_request",
            Self::RequestTooLarge => "request_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::IpLiteral => "ip_literal",
            Self::InvalidHost => "invalid_host",
            Self::NotAllowlisted => "not_allowlisted",
            Self::Expired => "expired",
            Self::PlainHttpDenied => "plain_http_denied",
            Self::Overloaded => "overloaded",
            Self::NotTls => "not_tls",
            Self::MalformedClientHello => "malformed_client_hello",
            Self::ClientHelloTooLarge => "client_hello_too_large",
            Self::ClientHelloTimeout => "client_hello_timeout",
            Self::MissingSni => "missing_sni",
            Self::MultipleSni => "multiple_sni",
            Self::Ech => "ech",
            Self::SniMismatch => "sni_mismatch",
            Self::ResolveFailed => "resolve_failed",
            Self::ForbiddenAddress => "forbidden_address",
            Self::ConnectFailed => "connect_failed",
            Self::ConnectTimeout => "connect_timeout",
            Self::ClientClosed => "client_closed",
            Self::ClientError => "client_error",
        }
    }

    /// One sentence for a `403`/`503` body and the docs: what happened.
    pub fn explain(self) -> &'static str {
        match self {
            Self::Destination => {
                "the destination is not an enforcer endpoint nor a live direct entry"
            }
            Self::LoopbackPort => {
                "the loopback socket that would receive this is not one of the enforced cgroup's"
            }
            Self::DirectExpired => "the direct allow entry for this destination has expired",
            Self::Dns => "DNS goes only to the enforcer, not to other resolvers",
            Self::RawSocket => "raw sockets are not allowed",
            Self::Protocol => "only TCP and UDP sockets are allowed",
            Self::Family => "only unix, inet, inet6 and netlink sockets are allowed",
            Self::SourceRoute => {
                "IPv6 routing headers and IPv4 source-route options (LSRR/SSRR) are not allowed"
            }
            Self::EndpointNotOwned => {
                "the enforcer endpoint is not served by the enforcer daemon (is it running?)"
            }
            Self::Allowlisted => "the destination is allowlisted",
            Self::Granted => "the destination is allowed by a runtime grant",
            Self::AllowlistedEch => {
                "the destination is allowlisted; ECH allowed by fronting.allowECH"
            }
            Self::PlainHttpAllowed => "plain HTTP is allowed for this host",
            Self::MalformedRequest => "the proxy request is malformed",
            Self::RequestTooLarge => "the proxy request head is too large",
            Self::RequestTimeout => "the proxy request head did not arrive in time",
            Self::IpLiteral => "IP-address destinations are not allowed; ask for a host name",
            Self::InvalidHost => "the host is neither a valid name nor a valid address",
            Self::NotAllowlisted => "the destination host:port is not on the allowlist",
            Self::Expired => "the allowlist entry for this host:port has expired",
            Self::PlainHttpDenied => "plain HTTP to this host is not allowed; use HTTPS",
            Self::Overloaded => "too many concurrent tunnels; try again later",
            Self::NotTls => "the tunnel did not start with a TLS ClientHello",
            Self::MalformedClientHello => "the TLS ClientHello is malformed",
            Self::ClientHelloTooLarge => "the TLS ClientHello is too large",
            Self::ClientHelloTimeout => "the TLS ClientHello did not arrive in time",
            Self::MissingSni => "the TLS ClientHello has no server name (SNI)",
            Self::MultipleSni => "the TLS ClientHello names more than one server",
            Self::Ech => "the TLS ClientHello uses encrypted_client_hello (ECH)",
            Self::SniMismatch => "the TLS server name differs from the CONNECT host",
            Self::ResolveFailed => "the destination name did not resolve",
            Self::ForbiddenAddress => {
                "the destination resolved only to refused addresses (loopback, link-local, metadata, private, this host)"
            }
            Self::ConnectFailed => "the upstream refused or failed the connection",
            Self::ConnectTimeout => "the upstream did not accept the connection in time",
            Self::ClientClosed => "the client closed the connection",
            Self::ClientError => "the client connection failed",
        }
    }
}

impl core::fmt::Display for Reason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One denied operation, sent through the `EVENTS` ring buffer and kept in `RECENT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenyEvent {
    /// `CLOCK_BOOTTIME` nanoseconds when the deny happened.
    pub boot_ns: u64,
    /// cgroup v2 id of the process (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// Thread id.
    pub pid: u32,
    /// Process id (thread group id).
    pub tgid: u32,
    /// Real user id.
    pub uid: u32,
    /// Address family (`AF_*`).
    pub family: u16,
    /// Protocol (`IPPROTO_*`), 0 when unknown.
    pub protocol: u16,
    /// Socket type (`SOCK_*`).
    pub socket_type: u16,
    /// Destination port, host order (0 for socket creation).
    pub port: u16,
    /// [`Hook`] as a byte.
    pub hook: u8,
    /// [`Reason`] as a byte.
    pub reason: u8,
    /// Always zero.
    pub pad: [u8; 2],
    /// Destination address, network order; IPv4 as IPv4-mapped IPv6.
    pub addr: [u8; 16],
    /// The task's command name, NUL padded.
    pub comm: [u8; 16],
}

impl DenyEvent {
    /// An all-zero event (an empty `RECENT` slot reads as this).
    pub const ZERO: DenyEvent = DenyEvent {
        boot_ns: 0,
        cgroup_id: 0,
        pid: 0,
        tgid: 0,
        uid: 0,
        family: 0,
        protocol: 0,
        socket_type: 0,
        port: 0,
        hook: 0,
        reason: 0,
        pad: [0; 2],
        addr: [0; 16],
        comm: [0; 16],
    };
}

/// Maps an IPv4 address (network order bytes) to its IPv4-mapped IPv6 form.
pub const fn v4_mapped(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

#[cfg(feature = "user")]
mod pod {
    // Every type here is #[repr(C)] plain integers and byte arrays with
    // explicit padding fields, so every bit pattern is a valid value.
    // SAFETY: Endpoint is #[repr(C)] plain data with explicit padding.
    unsafe impl aya::Pod for super::Endpoint {}
    // SAFETY: Allow4Key is #[repr(C)] plain data with explicit padding.
    unsafe impl aya::Pod for super::Allow4Key {}
    // SAFETY: SocketKey is #[repr(C)] plain data with explicit padding.
    unsafe impl aya::Pod for super::SocketKey {}
    // SAFETY: AllowValue is #[repr(C)] plain data with explicit padding.
    unsafe impl aya::Pod for super::AllowValue {}
    // SAFETY: SockTag is #[repr(C)] plain data with explicit padding.
    unsafe impl aya::Pod for super::SockTag {}
    // SAFETY: DenyEvent is #[repr(C)] plain data with explicit padding.
    unsafe impl aya::Pod for super::DenyEvent {}
}

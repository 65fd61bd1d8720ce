//! Types shared between enforcer's kernel programs and userspace.
//!
//! Every map value and key the programs use is defined here once, as
//! `#[repr(C)]` plain data, so the BPF object and the loader agree on layout.
//! Addresses are stored in network byte order as 16 bytes; IPv4 addresses
//! appear as IPv4-mapped IPv6 (`::ffff:a.b.c.d`) wherever one key type serves
//! both families. Ports are in host byte order.
#![no_std]
#![deny(missing_docs)]

mod vocabulary;
pub use vocabulary::{Decision, Reason};

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
    /// BTF socket-storage map of [`crate::Judged`]: the destinations a
    /// socket's connect and sendmsg were last judged and allowed for, which
    /// `cgroup_skb/egress` holds every packet of the socket to (issue 12d).
    /// Not cloned: an accepted socket carries none.
    pub const JUDGED: &str = "JUDGED";
    /// Ring buffer of [`crate::DenyEvent`].
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU array of u64 counters, indexed by [`crate::stat`].
    pub const STATS: &str = "STATS";
    /// Array of the last [`crate::RECENT_DENIES`] [`crate::DenyEvent`]s, for `status` without a daemon.
    pub const RECENT: &str = "RECENT";
    /// One-slot array holding the number of denies ever written to `RECENT`.
    pub const RECENT_HEAD: &str = "RECENT_HEAD";

    /// Every map that is pinned (by name) so enforcement state outlives the loader.
    pub const PINNED: [&str; 9] = [
        CONFIG,
        ALLOW4,
        ALLOW6,
        SOCK_TAGS,
        JUDGED,
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

/// One destination a connect/sendmsg program judged and allowed, as the
/// kernel will use it (after the programs' own rewrite of `0.0.0.0`/`::`
/// to loopback).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct JudgedDestination {
    /// Address, network order; IPv4 as IPv4-mapped IPv6.
    pub addr: [u8; 16],
    /// Port, host order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    /// 1 when this slot holds a destination, 0 when empty.
    pub in_use: u8,
}

/// Value of the `JUDGED` socket-storage map: what a socket's packets may
/// go to. A packet passes `cgroup_skb/egress` when its destination is one
/// of the two (issue 12d).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Judged {
    /// Set by `connect4`/`connect6` (TCP, connected UDP, TCP fast open).
    pub connect: JudgedDestination,
    /// Set by `sendmsg4`/`sendmsg6` (a UDP datagram with an address).
    pub sendmsg: JudgedDestination,
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
    // SAFETY: JudgedDestination is #[repr(C)] plain data with no padding.
    unsafe impl aya::Pod for super::JudgedDestination {}
    // SAFETY: Judged is #[repr(C)] plain data with no padding.
    unsafe impl aya::Pod for super::Judged {}
    // SAFETY: DenyEvent is #[repr(C)] plain data with explicit padding.
    unsafe impl aya::Pod for super::DenyEvent {}
}

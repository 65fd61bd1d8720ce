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
    /// LRU hash of [`crate::SocketKey`] (a client socket's own address,
    /// port and protocol) to [`crate::PeerInfo`] (the task that connected
    /// it): written by `sockops` once the port is known, deleted when the
    /// socket closes. The daemon's listeners look their peers up here.
    pub const PEERS: &str = "PEERS";

    /// LPM trie of [`crate::UnixKey`] to [`crate::UnixRule`]: the unix
    /// sockets the cgroup may reach (`egress.unix` and the enforced
    /// command's own directories). Used by the second object's unix programs.
    pub const UNIX_ALLOW: &str = "UNIX_ALLOW";

    /// One-slot array of [`crate::RedirectConfig`]: whether `connect4/6`
    /// redirect (egress mode `redirect`) and where the transparent listeners are.
    pub const REDIRECT: &str = "REDIRECT";
    /// Hash of a TCP port (`u16`, host order) to `u8` 1: the ports some
    /// allowlist entry names, the only ones redirected.
    pub const REDIRECT_PORTS: &str = "REDIRECT_PORTS";
    /// BTF socket-storage map of [`crate::OriginalDestination`]: where a
    /// redirected socket asked to go (written by `connect4/6`, read by
    /// `getpeername4/6` and `sockops`). Not cloned.
    pub const ORIG_DST: &str = "ORIG_DST";
    /// LRU hash of [`crate::SocketKey`] (a redirected client socket's own
    /// address, port and protocol) to [`crate::OriginalDestination`]:
    /// written by `sockops` once the port is known, deleted when the socket
    /// closes. The transparent listener looks its peers up here.
    pub const REDIRECTS: &str = "REDIRECTS";
    /// One-slot array of [`crate::RedirectConfig`]: whether port-53 traffic
    /// (`egress.dns = "filtered"`) is rewritten to the DNS filter, and where
    /// its listeners are (UDP and TCP share the address and port).
    /// `recvmsg4/6` give the answers back the resolver's address, and
    /// `cgroup_skb/egress` records each query's sender in `PEERS` (protocol
    /// UDP), which the filter looks up to attribute it.
    pub const DNS_REDIRECT: &str = "DNS_REDIRECT";

    /// Every map that is pinned (by name) so enforcement state outlives the loader.
    pub const PINNED: [&str; 16] = [
        CONFIG,
        ALLOW4,
        ALLOW6,
        SOCK_TAGS,
        JUDGED,
        EVENTS,
        STATS,
        RECENT,
        RECENT_HEAD,
        PEERS,
        UNIX_ALLOW,
        REDIRECT,
        REDIRECT_PORTS,
        ORIG_DST,
        REDIRECTS,
        DNS_REDIRECT,
    ];
}

/// Slots in the `CONFIG` endpoint array.
pub const MAX_ENDPOINTS: u32 = 16;
/// Capacity of each direct allow map.
pub const MAX_ALLOW_ENTRIES: u32 = 131_072;
/// Slots in the `RECENT` array of last denies.
pub const RECENT_DENIES: u32 = 32;
/// Size of the `EVENTS` ring buffer in bytes (a power of two, page aligned):
/// about 3,200 denies of 80 bytes between two reads of the daemon, which
/// reads as soon as the ring is readable; what does not fit is counted
/// (`events_lost`), never blocks a deny. Its pages are mapped twice into
/// the daemon at attach, so twice this size is in its RSS from the start.
pub const EVENTS_BYTES: u32 = 1 << 18;
/// Capacity of the `PEERS` map (an LRU: the oldest entries go first when
/// it is full; entries are deleted when their socket closes anyway).
pub const MAX_PEERS: u32 = 65_536;
/// Capacity of `REDIRECT_PORTS`.
pub const MAX_REDIRECT_PORTS: u32 = 1024;
/// Capacity of `REDIRECTS` (an LRU, like `PEERS`).
pub const MAX_REDIRECTS: u32 = 65_536;
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
    /// TCP connects rewritten to the transparent listener (egress mode `redirect`).
    pub const REDIRECTED: u32 = 2;
    /// Port-53 connects and sendmsgs rewritten to the DNS filter.
    pub const DNS_REDIRECTED: u32 = 3;
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
    /// rewritten by the task that `connect()`s the socket. Packet-level deny
    /// events, which run where no task is known, name it.
    pub tgid: u32,
    /// cgroup v2 id of the creating (then connecting) process, else 0.
    pub cgroup_id: u64,
    /// Command name of the creator (then connector), NUL padded.
    pub comm: [u8; 16],
    /// Thread id of the creator (then connector).
    pub pid: u32,
    /// Real user id of the creator (then connector).
    pub uid: u32,
}

/// Value of `PEERS`: the task that connected a client socket, copied from
/// the socket's [`SockTag`] (written at `connect4/6`) by `sockops`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeerInfo {
    /// cgroup v2 id of the connecting task.
    pub cgroup_id: u64,
    /// Its thread id.
    pub pid: u32,
    /// Its process (thread group) id.
    pub tgid: u32,
    /// Its real user id.
    pub uid: u32,
    /// Always zero.
    pub pad: u32,
    /// Its command name, NUL padded.
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

/// Value of `REDIRECT` (one slot): the egress mode and the transparent
/// listeners connects are rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RedirectConfig {
    /// IPv4 listener address, network order, as IPv4-mapped IPv6.
    pub listen4: [u8; 16],
    /// IPv6 listener address, network order.
    pub listen6: [u8; 16],
    /// IPv4 listener port, host order; 0: none (IPv4 connects are denied).
    pub port4: u16,
    /// IPv6 listener port, host order; 0: none (IPv6 connects are denied).
    pub port6: u16,
    /// 1 in egress mode `redirect`; 0 (`proxy-only`): nothing is redirected.
    pub enabled: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// Where a redirected socket asked to connect (`ORIG_DST`, `REDIRECTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OriginalDestination {
    /// Address, network order; IPv4 as IPv4-mapped IPv6.
    pub addr: [u8; 16],
    /// Port, host order.
    pub port: u16,
    /// 1 when this value holds a destination.
    pub in_use: u8,
    /// Always zero.
    pub pad: u8,
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
    /// `cgroup/connect_unix`.
    ConnectUnix = 9,
    /// `cgroup/sendmsg_unix`.
    SendmsgUnix = 10,
    /// `lsm_cgroup/ptrace_access_check`.
    LsmPtrace = 11,
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
            9 => Self::ConnectUnix,
            10 => Self::SendmsgUnix,
            11 => Self::LsmPtrace,
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
            Self::ConnectUnix => "connect_unix",
            Self::SendmsgUnix => "sendmsg_unix",
            Self::LsmPtrace => "lsm_ptrace_access_check",
        }
    }
}

/// Deepest cgroup level the ptrace program looks for the enforced cgroup at.
pub const MAX_CGROUP_DEPTH: u32 = 32;

/// Where this kernel keeps a task's cgroup: byte offsets of the fields the
/// ptrace program follows (`task->cgroups->dfl_cgrp->ancestors[level]->kn->id`),
/// read from the running kernel's BTF by the loader, since they differ
/// between kernel builds and aya's Rust programs have no CO-RE field
/// relocations. `valid == 0` means unknown: the program then denies.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TaskLayout {
    /// `task_struct.cgroups` (a `struct css_set *`).
    pub task_cgroups: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `css_set.dfl_cgrp` (the cgroup v2 `struct cgroup *`).
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.level` (`int`; the root cgroup is level 0).
    pub cgroup_level: u32,
    /// `cgroup.ancestors` (`struct cgroup *[]`, 6.0+) or, when
    /// [`TaskLayout::ancestor_ids`] is 1, `cgroup.ancestor_ids` (`u64[]`).
    pub cgroup_ancestors: u32,
    /// 1 when [`TaskLayout::cgroup_ancestors`] is the older `ancestor_ids[]`.
    pub ancestor_ids: u32,
    /// `cgroup.kn` (a `struct kernfs_node *`).
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (`u64`; the cgroup id).
    pub kernfs_node_id: u32,
    /// 1 when every offset above was found.
    pub valid: u32,
    /// Always zero.
    pub pad: u32,
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
    /// Destination address, network order; IPv4 as IPv4-mapped IPv6. For
    /// [`Hook::LsmPtrace`], the target's tgid in the first four bytes
    /// (native order) and the ptrace mode in `socket_type`.
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

// === unix sockets (cgroup/connect_unix, cgroup/sendmsg_unix) ===

/// `sizeof(sockaddr_un.sun_path)`: the address bytes the unix programs compare.
pub const UNIX_PATH_MAX: usize = 108;
/// Literal bytes a [`unix_rule::SEGMENT_GLOB`] rule can require after its `*`.
pub const UNIX_SUFFIX_MAX: usize = 64;
/// Bytes of [`UnixKey::path`]: `sun_path` plus zero padding to a power of
/// two, so the programs' masked indexes always stay inside it.
pub const UNIX_KEY_PATH: usize = 128;
/// Capacity of `UNIX_ALLOW`.
pub const MAX_UNIX_RULES: u32 = 4096;
/// Bits of [`UnixKey::cgroup_id`] in an LPM prefix length.
pub const UNIX_KEY_CGROUP_BITS: u32 = 64;

/// The data of a `UNIX_ALLOW` key (after the LPM prefix length): which
/// cgroup a rule is for and the address bytes it starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixKey {
    /// cgroup v2 id, big-endian bytes (0: every cgroup the programs run for,
    /// i.e. the pack's `egress.unix`). Always matched in full.
    pub cgroup_id: [u8; 8],
    /// `sun_path` as passed: a path, or NUL and an abstract name; NUL padded
    /// (only the first [`UNIX_PATH_MAX`] bytes ever hold an address).
    pub path: [u8; UNIX_KEY_PATH],
}

impl UnixKey {
    /// An all-zero key.
    pub const ZERO: UnixKey = UnixKey {
        cgroup_id: [0; 8],
        path: [0; UNIX_KEY_PATH],
    };
}

/// How a `UNIX_ALLOW` rule matches ([`UnixRule::kind`]).
pub mod unix_rule {
    /// The address is exactly the key's `prefix_len` bytes.
    pub const EXACT: u8 = 1;
    /// The address starts with the key's bytes (a directory and everything below).
    pub const PREFIX: u8 = 2;
    /// The key's bytes, then bytes without `/`, then [`crate::UnixRule::suffix`].
    pub const SEGMENT_GLOB: u8 = 3;
}

/// Value of `UNIX_ALLOW`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixRule {
    /// One of [`unix_rule`].
    pub kind: u8,
    /// Always zero.
    pub pad: u8,
    /// Address bytes of the key (its LPM prefix length is 64 + 8 × this).
    pub prefix_len: u16,
    /// Bytes of the text after the `*` ([`unix_rule::SEGMENT_GLOB`]).
    pub suffix_len: u16,
    /// `/` bytes in the key's address bytes.
    pub prefix_slashes: u16,
    /// `/` bytes in the text after the `*`. An address matches a glob when
    /// its `/` count is `prefix_slashes + suffix_slashes`: the `*` took none.
    pub suffix_slashes: u16,
    /// Always zero.
    pub pad2: [u8; 2],
    /// The text after the `*`, right-aligned (its last byte at the end).
    pub suffix: [u8; UNIX_SUFFIX_MAX],
    /// 0xff where `suffix` holds text, 0 elsewhere: the program compares
    /// the address's last bytes with no loop bound depending on the rule.
    pub suffix_mask: [u8; UNIX_SUFFIX_MAX],
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
    // SAFETY: PeerInfo is #[repr(C)] plain data with explicit padding.
    unsafe impl aya::Pod for super::PeerInfo {}
    // SAFETY: UnixKey is #[repr(C)] byte arrays, no padding.
    unsafe impl aya::Pod for super::UnixKey {}
    // SAFETY: UnixRule is #[repr(C)] plain data with explicit padding.
    unsafe impl aya::Pod for super::UnixRule {}
    // SAFETY: RedirectConfig is #[repr(C)] plain data with explicit padding.
    unsafe impl aya::Pod for super::RedirectConfig {}
    // SAFETY: OriginalDestination is #[repr(C)] plain data with explicit padding.
    unsafe impl aya::Pod for super::OriginalDestination {}
    // SAFETY: TaskLayout is #[repr(C)] u32 fields only, no padding.
    unsafe impl aya::Pod for super::TaskLayout {}
}

//! The table of kernel programs and where each attaches.

use aya::programs::{
    CgroupSkbAttachType, CgroupSockAddrAttachType, CgroupSockAttachType, CgroupSockoptAttachType,
};

/// How a program attaches to a cgroup.
#[derive(Debug, Clone, Copy)]
pub enum HookKind {
    /// `cgroup/connect*`, `cgroup/sendmsg*`.
    SockAddr(CgroupSockAddrAttachType),
    /// `cgroup/sock_create`.
    Sock(CgroupSockAttachType),
    /// `cgroup/setsockopt`.
    Sockopt(CgroupSockoptAttachType),
    /// `cgroup_skb/egress`.
    Skb(CgroupSkbAttachType),
    /// `sockops` (`BPF_CGROUP_SOCK_OPS`): client attribution.
    SockOps,
    /// `lsm_cgroup/<hook>`: needs BPF-LSM, which not every kernel allows.
    LsmCgroup(&'static str),
}

/// One program of the object and its hook.
#[derive(Debug, Clone, Copy)]
pub struct HookSpec {
    /// Function name in the object, also the link's pin name.
    pub program: &'static str,
    /// Attach kind.
    pub kind: HookKind,
}

/// Every program enforcer attaches, in attach order. The LSM programs come
/// last: they are the ones that may fail to load, and the rest stand
/// without them.
pub const HOOKS: [HookSpec; 14] = [
    HookSpec {
        program: "sock_create",
        kind: HookKind::Sock(CgroupSockAttachType::SockCreate),
    },
    HookSpec {
        program: "sock_peers",
        kind: HookKind::SockOps,
    },
    HookSpec {
        program: "setsockopt",
        kind: HookKind::Sockopt(CgroupSockoptAttachType::Set),
    },
    HookSpec {
        program: "skb_egress",
        kind: HookKind::Skb(CgroupSkbAttachType::Egress),
    },
    // Before connect4/6: once a connect can be redirected, getpeername
    // already answers the original destination.
    HookSpec {
        program: "getpeername4",
        kind: HookKind::SockAddr(CgroupSockAddrAttachType::GetPeerName4),
    },
    HookSpec {
        program: "getpeername6",
        kind: HookKind::SockAddr(CgroupSockAddrAttachType::GetPeerName6),
    },
    // Before connect4/6 and sendmsg4/6 for the same reason: once a query
    // can be rewritten to the DNS filter, its answer shows the resolver.
    HookSpec {
        program: "recvmsg4",
        kind: HookKind::SockAddr(CgroupSockAddrAttachType::UDPRecvMsg4),
    },
    HookSpec {
        program: "recvmsg6",
        kind: HookKind::SockAddr(CgroupSockAddrAttachType::UDPRecvMsg6),
    },
    HookSpec {
        program: "connect4",
        kind: HookKind::SockAddr(CgroupSockAddrAttachType::Connect4),
    },
    HookSpec {
        program: "connect6",
        kind: HookKind::SockAddr(CgroupSockAddrAttachType::Connect6),
    },
    HookSpec {
        program: "sendmsg4",
        kind: HookKind::SockAddr(CgroupSockAddrAttachType::UDPSendMsg4),
    },
    HookSpec {
        program: "sendmsg6",
        kind: HookKind::SockAddr(CgroupSockAddrAttachType::UDPSendMsg6),
    },
    HookSpec {
        program: "socket_create",
        kind: HookKind::LsmCgroup("socket_create"),
    },
    HookSpec {
        program: "ptrace_access_check",
        kind: HookKind::LsmCgroup("ptrace_access_check"),
    },
];

/// The LSM program's name (its absence means other families are unenforced).
pub const LSM_SOCKET_CREATE: &str = "socket_create";

/// The ptrace LSM program's name (its absence means ptrace is unenforced).
pub const LSM_PTRACE: &str = "ptrace_access_check";

/// The cgroup unix-socket programs, by pin name (the second object's,
/// [`super::unix::UNIX_PROGRAMS`]); [`Layers::unix_sockets`] (what the
/// self-test and `status` report) follows their links.
pub const UNIX_HOOKS: &[&str] = &["connect_unix", "sendmsg_unix"];

/// Which optional layers this kernel's attached programs provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Layers {
    /// `lsm_cgroup/socket_create` is attached (vsock, packet, ... refused).
    pub socket_families: bool,
    /// Every unix-socket hook is attached.
    pub unix_sockets: bool,
    /// `lsm_cgroup/ptrace_access_check` is attached (tasks outside the
    /// cgroup cannot be traced). Absent in reports of older daemons.
    #[serde(default)]
    pub ptrace: bool,
}

impl Layers {
    /// Read from the pinned links of one cgroup.
    pub fn from_pins(pins: &super::paths::PinDirs) -> Self {
        Self {
            socket_families: pins.link(LSM_SOCKET_CREATE).exists(),
            ptrace: pins.link(LSM_PTRACE).exists(),
            unix_sockets: !UNIX_HOOKS.is_empty()
                && UNIX_HOOKS.iter().all(|hook| pins.link(hook).exists()),
        }
    }
}

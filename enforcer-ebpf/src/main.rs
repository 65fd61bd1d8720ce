//! enforcer's cgroup programs (proxy-only mode).
//!
//! Every `connect()`, unconnected `sendmsg()` and `socket()` of a process in
//! the enforced cgroup passes through here. Allowed: the enforcer's own
//! endpoints (`CONFIG`), loopback ports bound by a process of the same cgroup
//! (`LOCAL_PORTS`, kept by `post_bind*` and `sock_release`) and live direct
//! entries (`ALLOW4`/`ALLOW6`, expiry checked here). Everything else is
//! denied with EPERM, counted in `STATS`, remembered in `RECENT` and sent to
//! userspace through `EVENTS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    },
    macros::{cgroup_sock, cgroup_sock_addr, lsm_cgroup, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{LsmContext, SockAddrContext, SockContext},
};
use aya_log_ebpf::debug;
use enforcer_ebpf::{
    Allow4Key, AllowValue, DenyEvent, EVENTS_BYTES, Endpoint, Hook, MAX_ALLOW_ENTRIES,
    MAX_ENDPOINTS, MAX_LOCAL_PORTS, RECENT_DENIES, Reason, SocketKey, family, protocol, stat,
    v4_mapped,
};

/// Verdicts of cgroup socket programs.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

const SOCK_RAW: u32 = 3;

#[map]
static CONFIG: Array<Endpoint> = Array::pinned(MAX_ENDPOINTS, 0);
#[map]
static ALLOW4: HashMap<Allow4Key, AllowValue> = HashMap::pinned(MAX_ALLOW_ENTRIES, 0);
#[map]
static ALLOW6: HashMap<SocketKey, AllowValue> = HashMap::pinned(MAX_ALLOW_ENTRIES, 0);
#[map]
static LOCAL_PORTS: HashMap<SocketKey, u32> = HashMap::pinned(MAX_LOCAL_PORTS, 0);
#[map]
static BOUND_SOCKETS: HashMap<u64, SocketKey> = HashMap::pinned(MAX_LOCAL_PORTS, 0);
#[map]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::LEN, 0);
#[map]
static RECENT: Array<DenyEvent> = Array::pinned(RECENT_DENIES, 0);
#[map]
static RECENT_HEAD: Array<u64> = Array::pinned(1, 0);

// === connect / sendmsg ===

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    judge_sock_addr4(&ctx, Hook::Connect4)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    judge_sock_addr4(&ctx, Hook::Sendmsg4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    judge_sock_addr6(&ctx, Hook::Connect6)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    judge_sock_addr6(&ctx, Hook::Sendmsg6)
}

/// The destination of a connect/sendmsg, as read from the context.
struct Destination {
    /// Network order; IPv4 as IPv4-mapped.
    addr: [u8; 16],
    port: u16,
    protocol: u8,
    family: u16,
    socket_type: u16,
}

fn judge_sock_addr4(ctx: &SockAddrContext, hook: Hook) -> i32 {
    let sa = ctx.sock_addr;
    // Exact-width volatile loads: the verifier rejects widened context reads.
    let (ip, port, proto, stype) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*sa).user_ip4),
            core::ptr::read_volatile(&raw const (*sa).user_port),
            core::ptr::read_volatile(&raw const (*sa).protocol),
            core::ptr::read_volatile(&raw const (*sa).type_),
        )
    };
    let destination = Destination {
        addr: v4_mapped(ip.to_ne_bytes()),
        port: u16::from_be(port as u16),
        protocol: proto as u8,
        family: family::INET,
        socket_type: stype as u16,
    };
    finish(ctx, hook, &destination, decide(&destination))
}

fn judge_sock_addr6(ctx: &SockAddrContext, hook: Hook) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    let mut addr = [0u8; 16];
    let (port, proto, stype) = unsafe {
        for i in 0..4 {
            let word = core::ptr::read_volatile(&raw const (*sa).user_ip6[i]);
            let bytes = word.to_ne_bytes();
            addr[i * 4] = bytes[0];
            addr[i * 4 + 1] = bytes[1];
            addr[i * 4 + 2] = bytes[2];
            addr[i * 4 + 3] = bytes[3];
        }
        (
            core::ptr::read_volatile(&raw const (*sa).user_port),
            core::ptr::read_volatile(&raw const (*sa).protocol),
            core::ptr::read_volatile(&raw const (*sa).type_),
        )
    };
    let destination = Destination {
        addr,
        port: u16::from_be(port as u16),
        protocol: proto as u8,
        family: family::INET6,
        socket_type: stype as u16,
    };
    finish(ctx, hook, &destination, decide(&destination))
}

fn finish<C: EbpfContext>(
    ctx: &C,
    hook: Hook,
    destination: &Destination,
    verdict: Result<(), Reason>,
) -> i32 {
    match verdict {
        Ok(()) => {
            count(stat::ALLOWED);
            ALLOW
        }
        Err(reason) => {
            record_deny(
                ctx,
                hook,
                reason,
                destination.family,
                destination.socket_type,
                destination.protocol as u16,
                &destination.addr,
                destination.port,
            );
            DENY
        }
    }
}

/// The connect/sendmsg decision, in order: enforcer endpoint, loopback port
/// owned by the cgroup, live direct entry; otherwise the most specific reason.
fn decide(destination: &Destination) -> Result<(), Reason> {
    let addr = &destination.addr;
    if is_endpoint(destination) {
        return Ok(());
    }
    let loopback = is_loopback_or_unspecified(addr);
    if loopback && is_local_port(destination) {
        return Ok(());
    }
    match direct_entry(destination) {
        Some(expires_at) => {
            if unsafe { bpf_ktime_get_boot_ns() } < expires_at {
                return Ok(());
            }
            Err(Reason::DirectExpired)
        }
        None if destination.port == 53 => Err(Reason::Dns),
        None if loopback => Err(Reason::LoopbackPort),
        None => Err(Reason::Destination),
    }
}

fn is_endpoint(destination: &Destination) -> bool {
    for i in 0..MAX_ENDPOINTS {
        if let Some(endpoint) = CONFIG.get(i) {
            if endpoint.in_use == 1
                && endpoint.port == destination.port
                && endpoint.protocol == destination.protocol
                && endpoint.addr == destination.addr
            {
                return true;
            }
        }
    }
    false
}

fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10] == [0u8; 10] && addr[10] == 0xff && addr[11] == 0xff
}

fn is_loopback_or_unspecified(addr: &[u8; 16]) -> bool {
    if is_v4_mapped(addr) {
        return addr[12] == 127 || addr[12..16] == [0u8; 4];
    }
    addr[..15] == [0u8; 15] && (addr[15] == 1 || addr[15] == 0)
}

/// True when a socket of the cgroup is bound to the destination's port on
/// this address or on the wildcard address (either family's, since an IPv6
/// wildcard socket also accepts IPv4).
fn is_local_port(destination: &Destination) -> bool {
    let mut key = SocketKey {
        addr: destination.addr,
        port: destination.port,
        protocol: destination.protocol,
        pad: 0,
    };
    if unsafe { LOCAL_PORTS.get(&key) }.is_some() {
        return true;
    }
    if is_v4_mapped(&destination.addr) {
        key.addr = v4_mapped([0; 4]);
        if unsafe { LOCAL_PORTS.get(&key) }.is_some() {
            return true;
        }
    }
    key.addr = [0; 16];
    unsafe { LOCAL_PORTS.get(&key) }.is_some()
}

/// Expiry of the direct entry for this destination, if one exists.
fn direct_entry(destination: &Destination) -> Option<u64> {
    let addr = &destination.addr;
    if is_v4_mapped(addr) {
        let key = Allow4Key {
            addr: [addr[12], addr[13], addr[14], addr[15]],
            port: destination.port,
            protocol: destination.protocol,
            pad: 0,
        };
        unsafe { ALLOW4.get(&key) }.map(|value| value.expires_at_boot_ns)
    } else {
        let key = SocketKey {
            addr: *addr,
            port: destination.port,
            protocol: destination.protocol,
            pad: 0,
        };
        unsafe { ALLOW6.get(&key) }.map(|value| value.expires_at_boot_ns)
    }
}

// === socket creation ===

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let sk: *mut bpf_sock = ctx.sock;
    let (fam, stype, proto) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*sk).family),
            core::ptr::read_volatile(&raw const (*sk).type_),
            core::ptr::read_volatile(&raw const (*sk).protocol),
        )
    };
    let reason = if stype == SOCK_RAW {
        Reason::RawSocket
    } else if proto == u32::from(protocol::TCP) || proto == u32::from(protocol::UDP) {
        return ALLOW;
    } else {
        Reason::Protocol
    };
    record_deny(
        &ctx,
        Hook::SockCreate,
        reason,
        fam as u16,
        stype as u16,
        proto as u16,
        &[0; 16],
        0,
    );
    DENY
}

/// Families a process in the cgroup may create sockets of; every other
/// family (vsock, packet, bluetooth, ...) is denied.
fn family_allowed(fam: i32) -> bool {
    let fam = fam as u16;
    fam == family::UNIX || fam == family::INET || fam == family::INET6 || fam == family::NETLINK
}

#[lsm_cgroup(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    // int socket_create(int family, int type, int protocol, int kern)
    let fam: i32 = ctx.arg(0);
    let stype: i32 = ctx.arg(1);
    let proto: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    if kern != 0 || family_allowed(fam) {
        return ALLOW;
    }
    record_deny(
        &ctx,
        Hook::LsmSocketCreate,
        Reason::Family,
        fam as u16,
        stype as u16,
        proto as u16,
        &[0; 16],
        0,
    );
    DENY
}

// === loopback ports owned by the cgroup ===

#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    let sk: *mut bpf_sock = ctx.sock;
    let (ip, port, proto) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*sk).src_ip4),
            core::ptr::read_volatile(&raw const (*sk).src_port),
            core::ptr::read_volatile(&raw const (*sk).protocol),
        )
    };
    let addr = v4_mapped(ip.to_ne_bytes());
    remember_bound(&ctx, addr, port as u16, proto as u8);
    ALLOW
}

#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    let sk: *mut bpf_sock = ctx.sock;
    let mut addr = [0u8; 16];
    let (port, proto) = unsafe {
        for i in 0..4 {
            let bytes = core::ptr::read_volatile(&raw const (*sk).src_ip6[i]).to_ne_bytes();
            addr[i * 4] = bytes[0];
            addr[i * 4 + 1] = bytes[1];
            addr[i * 4 + 2] = bytes[2];
            addr[i * 4 + 3] = bytes[3];
        }
        (
            core::ptr::read_volatile(&raw const (*sk).src_port),
            core::ptr::read_volatile(&raw const (*sk).protocol),
        )
    };
    remember_bound(&ctx, addr, port as u16, proto as u8);
    ALLOW
}

fn remember_bound(ctx: &SockContext, addr: [u8; 16], port: u16, proto: u8) {
    if port == 0 || !is_loopback_or_unspecified(&addr) {
        return;
    }
    let key = SocketKey {
        addr,
        port,
        protocol: proto,
        pad: 0,
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if BOUND_SOCKETS.insert(&cookie, &key, 0).is_err() {
        return;
    }
    match LOCAL_PORTS.get_ptr_mut(&key) {
        // Not atomic: two sockets of the cgroup binding the same port at the
        // same instant (SO_REUSEPORT) may undercount, which only ever makes
        // the port unreachable early (fail closed).
        Some(count) => unsafe { *count += 1 },
        None => {
            let _ = LOCAL_PORTS.insert(&key, &1, 0);
        }
    }
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(key) = (unsafe { BOUND_SOCKETS.get(&cookie) }).copied() else {
        return ALLOW;
    };
    let _ = BOUND_SOCKETS.remove(&cookie);
    if let Some(count) = LOCAL_PORTS.get_ptr_mut(&key) {
        unsafe {
            if *count > 1 {
                *count -= 1;
                return ALLOW;
            }
        }
        let _ = LOCAL_PORTS.remove(&key);
    }
    ALLOW
}

// === deny bookkeeping ===

fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        unsafe { *counter += 1 };
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn record_deny<C: EbpfContext>(
    ctx: &C,
    hook: Hook,
    reason: Reason,
    fam: u16,
    socket_type: u16,
    proto: u16,
    addr: &[u8; 16],
    port: u16,
) {
    count(stat::DENIED_BASE + reason as u32);
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = DenyEvent {
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        family: fam,
        protocol: proto,
        socket_type,
        port,
        hook: hook as u8,
        reason: reason as u8,
        pad: [0; 2],
        addr: *addr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if EVENTS.output::<DenyEvent>(&event, 0).is_err() {
        count(stat::EVENTS_LOST);
    }
    if let Some(head) = RECENT_HEAD.get_ptr_mut(0) {
        let slot = unsafe {
            let slot = *head;
            *head = slot + 1;
            slot
        };
        let _ = RECENT.set((slot % u64::from(RECENT_DENIES)) as u32, &event, 0);
    }
    debug!(
        ctx,
        "enforcer deny hook={} reason={} port={}", hook as u8, reason as u8, port
    );
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

//! enforcer's cgroup programs.
//!
//! Every `connect()`, unconnected `sendmsg()` and `socket()` of a process in
//! the enforced cgroup passes through here. Allowed: the enforcer's own
//! endpoints (`CONFIG`), loopback destinations whose receiving socket — the
//! one `bpf_sk_lookup_tcp/udp` finds, i.e. the one the kernel would deliver
//! to — carries the cgroup's tag in `SOCK_TAGS` (set at `sock_create`), and
//! live direct entries (`ALLOW4`/`ALLOW6`, expiry checked here). In egress
//! mode `redirect` (`REDIRECT`), a TCP connect denied otherwise whose port
//! some allowlist entry names (`REDIRECT_PORTS`) is rewritten to the
//! daemon's transparent listener (only while the daemon's tagged socket
//! listens there), its original destination kept in `ORIG_DST` for
//! `getpeername4/6` and `sockops`. With `egress.dns = "filtered"`
//! (`DNS_REDIRECT`), port-53 connects and sendmsgs (UDP and TCP, either
//! mode) are rewritten to the daemon's DNS filter the same way, under the
//! same ownership rule; `recvmsg4/6` give its answers the resolver's
//! address. Everything else is denied with EPERM,
//! counted in `STATS`, remembered in `RECENT` and sent to userspace
//! through `EVENTS`.
//!
//! Attribution: an allowed `connect()` writes the connecting task into the
//! socket's `SOCK_TAGS` entry; `sockops` copies it into `PEERS`, keyed by
//! the socket's own address and port, once the kernel has chosen the port
//! (and deletes it when the socket closes), so the daemon's listeners can
//! tell who every accepted client is. For a redirected socket it copies the
//! original destination into `REDIRECTS` the same way.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_CLONE, BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE,
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE, bpf_map_type, bpf_sock, bpf_sock_addr,
        bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_socket_uid,
            bpf_ktime_get_boot_ns, bpf_sk_fullsock, bpf_sk_lookup_tcp, bpf_sk_lookup_udp,
            bpf_sk_release, bpf_sk_storage_get, bpf_skb_cgroup_id,
        },
    },
    macros::{
        btf_map, cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, lsm_cgroup, map,
        sock_ops,
    },
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{
        LsmContext, SkBuffContext, SockAddrContext, SockContext, SockOpsContext, SockoptContext,
    },
};
use aya_log_ebpf::debug;
use enforcer_ebpf::{
    Allow4Key, AllowValue, DenyEvent, EVENTS_BYTES, Endpoint, Hook, Judged, JudgedDestination,
    MAX_ALLOW_ENTRIES, MAX_CGROUP_DEPTH, MAX_ENDPOINTS, MAX_PEERS, MAX_REDIRECT_PORTS,
    MAX_REDIRECTS, MAX_UNIX_RULES, OriginalDestination, PeerInfo, RECENT_DENIES, Reason,
    RedirectConfig, SockTag, SocketKey, TaskLayout, UnixKey, UnixRule, family, owner, protocol,
    stat, v4_mapped,
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
#[btf_map]
static SOCK_TAGS: SockTagMap = SockTagMap::new();
#[btf_map]
static JUDGED: JudgedMap = JudgedMap::new();
#[map]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::LEN, 0);
#[map]
static RECENT: Array<DenyEvent> = Array::pinned(RECENT_DENIES, 0);
#[map]
static RECENT_HEAD: Array<u64> = Array::pinned(1, 0);
#[map]
static PEERS: LruHashMap<SocketKey, PeerInfo> = LruHashMap::pinned(MAX_PEERS, 0);
#[map]
static REDIRECT: Array<RedirectConfig> = Array::pinned(1, 0);
#[map]
static REDIRECT_PORTS: HashMap<u16, u8> = HashMap::pinned(MAX_REDIRECT_PORTS, 0);
#[btf_map]
static ORIG_DST: OrigDstMap = OrigDstMap::new();
#[map]
static REDIRECTS: LruHashMap<SocketKey, OriginalDestination> = LruHashMap::pinned(MAX_REDIRECTS, 0);
#[map]
static DNS_REDIRECT: Array<RedirectConfig> = Array::pinned(1, 0);

// === unix sockets: the map of the second object's programs (src/unix.rs) ===
// Declared here so aya creates and pins it with the others; no program of
// this object uses it.
#[map]
static UNIX_ALLOW: LpmTrie<UnixKey, UnixRule> = LpmTrie::pinned(MAX_UNIX_RULES, 0);

// === SOCK_TAGS: a BTF socket-storage map, pinned by name ===

/// `LIBBPF_PIN_BY_NAME`: the loader pins the map under its pin directory
/// and re-uses the pinned one on the next load, so tags survive a re-attach.
const PIN_BY_NAME: usize = 1;
const SOCK_TAG_FLAGS: usize = (BPF_F_NO_PREALLOC | BPF_F_CLONE) as usize;

/// BTF definition of a pinned-by-name `BPF_MAP_TYPE_SK_STORAGE` map (key
/// `int` = a socket fd from userspace, value `V`, map flags `FLAGS`).
/// Written out by hand because aya-ebpf 0.2.1's `btf_maps::SkStorage` has
/// no `pinning` field and its accessors only take a `SockAddrContext`; the
/// loader reads the fields' array lengths from BTF, nothing here is ever
/// dereferenced.
#[repr(C)]
struct SkStorageMap<V, const FLAGS: usize> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const V,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; FLAGS],
    pinning: *const [i32; PIN_BY_NAME],
}

// SAFETY: the fields are null placeholders that only describe the map in
// BTF; no code reads or writes through them, so sharing is sound.
unsafe impl<V, const FLAGS: usize> Sync for SkStorageMap<V, FLAGS> {}

impl<V: Copy, const FLAGS: usize> SkStorageMap<V, FLAGS> {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
            pinning: core::ptr::null(),
        }
    }

    /// The map as the helpers want it (the loader relocates this address).
    #[inline(always)]
    fn as_ptr(&'static self) -> *mut c_void {
        core::ptr::from_ref(self).cast_mut().cast()
    }

    /// The value stored for `sk`, created zeroed when it has none; null
    /// when it cannot be allocated. `sk` must be a socket pointer the
    /// verifier knows.
    #[inline(always)]
    fn get_or_create(&'static self, sk: *mut c_void) -> *mut V {
        // SAFETY: a null value with F_CREATE makes zeroed storage; the
        // result is null or this socket's value.
        unsafe {
            bpf_sk_storage_get(
                self.as_ptr(),
                sk,
                core::ptr::null_mut(),
                u64::from(BPF_SK_STORAGE_GET_F_CREATE),
            )
        }
        .cast::<V>()
    }

    /// The value stored for `sk`, or null; never creates one.
    #[inline(always)]
    fn get_ptr(&'static self, sk: *mut c_void) -> *mut V {
        // SAFETY: flags 0 never creates; a null value pointer is allowed.
        unsafe { bpf_sk_storage_get(self.as_ptr(), sk, core::ptr::null_mut(), 0) }.cast::<V>()
    }

    /// A copy of the value stored for `sk`, if it has one. `sk` must be a
    /// socket pointer the verifier knows.
    #[inline(always)]
    fn get(&'static self, sk: *mut c_void) -> Option<V> {
        let value = self.get_ptr(sk);
        if value.is_null() {
            return None;
        }
        // SAFETY: a non-null result points at this socket's value.
        Some(unsafe { *value })
    }
}

/// `SOCK_TAGS`: cloned onto accepted sockets.
type SockTagMap = SkStorageMap<SockTag, SOCK_TAG_FLAGS>;

impl SockTagMap {
    /// A copy of the tag of `sk`, if it has one. `sk` must be a full socket
    /// pointer the verifier knows.
    #[inline(always)]
    fn tag_of(&'static self, sk: *mut c_void) -> Option<SockTag> {
        self.get(sk)
    }

    /// The owner in the tag of `sk`, if it has one. `sk` must be a socket pointer the
    /// verifier knows (a context socket or a looked-up one).
    #[inline(always)]
    fn owner_of(&'static self, sk: *mut c_void) -> u8 {
        // SAFETY: flags 0 never creates; a null value pointer is allowed.
        let tag = unsafe { bpf_sk_storage_get(self.as_ptr(), sk, core::ptr::null_mut(), 0) }
            .cast::<SockTag>();
        if tag.is_null() {
            return 0;
        }
        // SAFETY: a non-null result points at this socket's SockTag.
        unsafe { (*tag).owner }
    }
}

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

/// Writes the task doing this `connect()` into the socket's tag (the task
/// that connects is the one to name, not the one that created the socket);
/// `sockops` copies it into `PEERS` once the local port is chosen.
// Not inlined, like the other per-socket bookkeeping below: their locals
// stay out of judge_sock_addr4/6's frame, which sits on the deepest call
// chain (connect4 → judge → finish → emit_deny). Debian 6.1's verifier
// counts the combined stack of that chain against 512 bytes and refused
// 544 with them inlined.
#[inline(never)]
fn note_connector(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: sa is the program's context; sk, the socket being connected,
    // is never null in connect4/connect6.
    let sk = unsafe { (*sa).__bindgen_anon_1.sk };
    let mut fresh = current_task_tag();
    // SAFETY: sk is a socket pointer the verifier knows; fresh outlives the
    // call; the storage is created (as the cgroup's, which a socket judged
    // here is) when sock_create could not tag it.
    let tag = unsafe {
        bpf_sk_storage_get(
            SOCK_TAGS.as_ptr(),
            sk.cast(),
            (&raw mut fresh).cast(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<SockTag>();
    if tag.is_null() {
        return;
    }
    // SAFETY: a non-null result points at this socket's SockTag; only the
    // task fields change, the owner stays.
    unsafe {
        (*tag).tgid = fresh.tgid;
        (*tag).pid = fresh.pid;
        (*tag).uid = fresh.uid;
        (*tag).cgroup_id = fresh.cgroup_id;
        (*tag).comm = fresh.comm;
    }
}

/// A [`SockTag`] of the cgroup naming the current task.
#[inline(always)]
fn current_task_tag() -> SockTag {
    let pid_tgid = bpf_get_current_pid_tgid();
    SockTag {
        owner: owner::CGROUP,
        pad: [0; 3],
        tgid: (pid_tgid >> 32) as u32,
        // SAFETY: bpf_get_current_cgroup_id has no preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        pid: pid_tgid as u32,
        uid: bpf_get_current_uid_gid() as u32,
    }
}

/// The destination of a connect/sendmsg, as read from the context.
#[derive(Clone, Copy)]
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
    // SAFETY: sa is the program's context and these fields are readable.
    let (ip, port, proto, stype) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*sa).user_ip4),
            core::ptr::read_volatile(&raw const (*sa).user_port),
            core::ptr::read_volatile(&raw const (*sa).protocol),
            core::ptr::read_volatile(&raw const (*sa).type_),
        )
    };
    let mut destination = Destination {
        addr: v4_mapped(ip.to_ne_bytes()),
        port: u16::from_be(port as u16),
        protocol: proto as u8,
        family: family::INET,
        socket_type: stype as u16,
    };
    let unspecified = ip == 0;
    if unspecified {
        // The kernel sends to 0.0.0.0 on loopback; judge (and, below, make)
        // it 127.0.0.1 so what is judged is where it goes.
        destination.addr = v4_mapped(LOOPBACK4);
    }
    let verdict = judge(ctx, hook, &destination);
    if let Ok(Some(listener)) = verdict {
        let l = &listener.addr;
        // SAFETY: user_ip4 and user_port are writable in connect4 and
        // sendmsg4 contexts (the hooks that rewrite); full-width writes.
        unsafe {
            core::ptr::write_volatile(
                &raw mut (*sa).user_ip4,
                u32::from_ne_bytes([l[12], l[13], l[14], l[15]]),
            );
            core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(listener.port.to_be()));
        }
        return redirected();
    }
    if verdict.is_ok() && unspecified {
        // SAFETY: user_ip4 is writable in connect4/sendmsg4 contexts.
        unsafe {
            core::ptr::write_volatile(&raw mut (*sa).user_ip4, u32::from_ne_bytes(LOOPBACK4));
        }
    }
    finish(ctx, hook, &destination, verdict.map(drop))
}

const LOOPBACK4: [u8; 4] = [127, 0, 0, 1];

fn judge_sock_addr6(ctx: &SockAddrContext, hook: Hook) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    let mut addr = [0u8; 16];
    // SAFETY: sa is the program's context; exact-width reads of readable fields.
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
    let mut destination = Destination {
        addr,
        port: u16::from_be(port as u16),
        protocol: proto as u8,
        family: family::INET6,
        socket_type: stype as u16,
    };
    // `::` and `::ffff:0.0.0.0` go to loopback: judge (and make) them ::1 /
    // ::ffff:127.0.0.1.
    let mapped = is_v4_mapped(&addr);
    let unspecified = if mapped {
        addr[12..16] == [0u8; 4]
    } else {
        addr == [0u8; 16]
    };
    let last_word = if mapped { LOOPBACK4 } else { [0, 0, 0, 1] };
    if unspecified {
        destination.addr[12..16].copy_from_slice(&last_word);
    }
    let verdict = judge(ctx, hook, &destination);
    if let Ok(Some(listener)) = verdict {
        // SAFETY: user_ip6 and user_port are writable in connect6 and
        // sendmsg6 contexts (the hooks that rewrite); full-width writes.
        unsafe {
            write_ip6(sa, &listener.addr);
            core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(listener.port.to_be()));
        }
        return redirected();
    }
    if verdict.is_ok() && unspecified {
        // SAFETY: user_ip6 is writable in connect6/sendmsg6 contexts.
        unsafe {
            core::ptr::write_volatile(&raw mut (*sa).user_ip6[3], u32::from_ne_bytes(last_word));
        }
    }
    finish(ctx, hook, &destination, verdict.map(drop))
}

/// Writes `addr` (16 bytes, network order) into the context's `user_ip6`.
/// Not inlined: inlined, the compiler spilled each byte of `addr` to its
/// own stack slot in judge_sock_addr6 (128 bytes of its frame).
///
/// # Safety
/// `sa` must be the context of a program that may write `user_ip6`.
#[inline(never)]
unsafe fn write_ip6(sa: *mut bpf_sock_addr, addr: &[u8; 16]) {
    for i in 0..4 {
        let word = u32::from_ne_bytes([
            addr[i * 4],
            addr[i * 4 + 1],
            addr[i * 4 + 2],
            addr[i * 4 + 3],
        ]);
        // SAFETY: the caller's context may write user_ip6; i < 4.
        unsafe { core::ptr::write_volatile(&raw mut (*sa).user_ip6[i], word) };
    }
}

/// The whole connect/sendmsg judgement: [`decide`], then, for DNS it
/// denied, the DNS filter ([`dns_target`]), and for a connect it denied,
/// the redirect ([`redirect_target`]); and the socket's
/// bookkeeping for what was allowed (the connecting task, the judged
/// destination, the original destination of a redirect).
/// `Ok(Some(listener))`: rewrite the destination to `listener`.
#[inline(always)]
fn judge(
    ctx: &SockAddrContext,
    hook: Hook,
    destination: &Destination,
) -> Result<Option<Destination>, Reason> {
    let connect = hook == Hook::Connect4 || hook == Hook::Connect6;
    let verdict = match decide(ctx, destination) {
        Ok(()) => Ok(None),
        Err(Reason::Dns) => dns_target(ctx, destination).map(Some),
        Err(reason) if connect => redirect_target(ctx, destination, reason).map(Some),
        Err(reason) => Err(reason),
    };
    match verdict {
        Ok(None) => {
            if connect {
                note_connector(ctx);
                forget_original(ctx);
            }
            remember_judged(ctx, hook, destination);
        }
        Ok(Some(listener)) => {
            note_connector(ctx);
            remember_original(ctx, destination);
            // Its packets go to the listener, and only there.
            remember_judged(ctx, hook, &listener);
        }
        Err(_) => {}
    }
    verdict
}

/// A rewrite to a listener of the daemon: allowed (counted where it was
/// chosen).
#[inline(always)]
fn redirected() -> i32 {
    ALLOW
}

// === redirect (egress mode `redirect`) ===

/// For a TCP connect [`decide`] denied with `reason`: the transparent
/// listener to rewrite it to, when the mode is `redirect` and some
/// allowlist entry names its port (`REDIRECT_PORTS`); DNS is never
/// redirected. The listener must be the daemon's own tagged socket, as
/// for the endpoints: with the daemon down (or its port taken) the connect
/// is denied, so nothing else can receive redirected traffic. Anything
/// else keeps `reason`.
#[inline(never)]
fn redirect_target(
    ctx: &SockAddrContext,
    destination: &Destination,
    reason: Reason,
) -> Result<Destination, Reason> {
    if destination.protocol != protocol::TCP || reason == Reason::Dns {
        return Err(reason);
    }
    let Some(config) = REDIRECT.get(0) else {
        return Err(reason);
    };
    if config.enabled != 1 {
        return Err(reason);
    }
    // SAFETY: the value is only tested for presence.
    if unsafe { REDIRECT_PORTS.get(destination.port) }.is_none() {
        return Err(reason);
    }
    let (addr, port) = if is_v4_mapped(&destination.addr) {
        (config.listen4, config.port4)
    } else {
        (config.listen6, config.port6)
    };
    if port == 0 {
        return Err(Reason::EndpointNotOwned);
    }
    let listener = Destination {
        addr,
        port,
        ..*destination
    };
    if receiver_owner(ctx, &listener) != owner::DAEMON {
        return Err(Reason::EndpointNotOwned);
    }
    count(stat::REDIRECTED);
    Ok(listener)
}

// === DNS filter (`egress.dns = "filtered"`) ===

/// For port-53 traffic [`decide`] denied (connect or sendmsg, UDP or TCP):
/// the daemon's DNS filter listener of the same family to rewrite it to,
/// when filtering is on (`DNS_REDIRECT`) and the daemon's own tagged
/// socket of that protocol is what receives there. Otherwise denied: with
/// filtering off as DNS, with the daemon down as an unowned endpoint, so
/// nobody else can receive the cgroup's queries.
#[inline(never)]
fn dns_target(ctx: &SockAddrContext, destination: &Destination) -> Result<Destination, Reason> {
    let Some(config) = DNS_REDIRECT.get(0) else {
        return Err(Reason::Dns);
    };
    if config.enabled != 1
        || (destination.protocol != protocol::TCP && destination.protocol != protocol::UDP)
    {
        return Err(Reason::Dns);
    }
    let (addr, port) = if is_v4_mapped(&destination.addr) {
        (config.listen4, config.port4)
    } else {
        (config.listen6, config.port6)
    };
    if port == 0 {
        return Err(Reason::EndpointNotOwned);
    }
    let listener = Destination {
        addr,
        port,
        ..*destination
    };
    if receiver_owner(ctx, &listener) != owner::DAEMON {
        return Err(Reason::EndpointNotOwned);
    }
    count(stat::DNS_REDIRECTED);
    Ok(listener)
}

/// Whether `addr`/`port` (as the context or a packet shows a source or
/// destination) is a DNS filter listener.
#[inline(always)]
fn is_dns_listener(config: &RedirectConfig, addr: &[u8; 16], port: u16) -> bool {
    config.enabled == 1
        && ((config.port4 != 0 && port == config.port4 && *addr == config.listen4)
            || (config.port6 != 0 && port == config.port6 && *addr == config.listen6))
}

/// An answer a rewritten socket receives from the DNS filter shows the
/// resolver the application sent to (its `ORIG_DST`), so stub resolvers
/// that check the answer's source accept it. Nothing is ever refused here.
#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: sa is the program's context; user_ip4/user_port are readable
    // in recvmsg4 (the datagram's source).
    let (ip, port) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*sa).user_ip4),
            core::ptr::read_volatile(&raw const (*sa).user_port),
        )
    };
    let source = v4_mapped(ip.to_ne_bytes());
    if let Some(config) = DNS_REDIRECT.get(0)
        && is_dns_listener(config, &source, u16::from_be(port as u16))
        && let Some(original) = original_of(&ctx)
        && is_v4_mapped(&original.addr)
    {
        let a = &original.addr;
        // SAFETY: user_ip4 and user_port are writable in recvmsg4.
        unsafe {
            core::ptr::write_volatile(
                &raw mut (*sa).user_ip4,
                u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            );
            core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(original.port.to_be()));
        }
    }
    ALLOW
}

/// The same for IPv6 sockets (an IPv4 resolver stays IPv4-mapped).
#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let mut source = [0u8; 16];
    // SAFETY: sa is the program's context; user_ip6/user_port are readable
    // in recvmsg6; exact-width reads.
    let port = unsafe {
        for i in 0..4 {
            let bytes = core::ptr::read_volatile(&raw const (*sa).user_ip6[i]).to_ne_bytes();
            source[i * 4] = bytes[0];
            source[i * 4 + 1] = bytes[1];
            source[i * 4 + 2] = bytes[2];
            source[i * 4 + 3] = bytes[3];
        }
        core::ptr::read_volatile(&raw const (*sa).user_port)
    };
    if let Some(config) = DNS_REDIRECT.get(0)
        && is_dns_listener(config, &source, u16::from_be(port as u16))
        && let Some(original) = original_of(&ctx)
    {
        // SAFETY: user_ip6 and user_port are writable in recvmsg6.
        unsafe {
            write_ip6(sa, &original.addr);
            core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(original.port.to_be()));
        }
    }
    ALLOW
}

/// `ORIG_DST`: not cloned (an accepted socket has no original destination).
const ORIG_DST_FLAGS: usize = BPF_F_NO_PREALLOC as usize;

/// `ORIG_DST`, pinned by name like `SOCK_TAGS`.
type OrigDstMap = SkStorageMap<OriginalDestination, ORIG_DST_FLAGS>;

/// Keeps where a redirected socket asked to go in its `ORIG_DST` storage.
/// Without storage (allocation failed) the listener finds no original
/// destination and closes the connection (fail closed).
#[inline(never)]
fn remember_original(ctx: &SockAddrContext, destination: &Destination) {
    // SAFETY: ctx.sk is the (non-null) socket being connected.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    let value = OriginalDestination {
        addr: destination.addr,
        port: destination.port,
        in_use: 1,
        pad: 0,
    };
    let stored = ORIG_DST.get_or_create(sk.cast());
    if !stored.is_null() {
        // SAFETY: stored points at this socket's value in the map.
        unsafe { *stored = value };
    }
}

/// A socket connected again, not redirected this time (after a failed
/// redirected connect): it has no original destination any more.
#[inline(never)]
fn forget_original(ctx: &SockAddrContext) {
    // SAFETY: ctx.sk is the (non-null) socket being connected.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    let stored = ORIG_DST.get_ptr(sk.cast());
    if !stored.is_null() {
        // SAFETY: stored points at this socket's value in the map.
        unsafe { (*stored).in_use = 0 };
    }
}

/// The original destination of the context's socket, if it was redirected.
#[inline(always)]
fn original_of(ctx: &SockAddrContext) -> Option<OriginalDestination> {
    // SAFETY: ctx.sk is the (non-null) socket asked about.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    ORIG_DST
        .get(sk.cast())
        .filter(|original| original.in_use == 1)
}

/// `getpeername()` on a redirected socket answers the address the
/// application asked for, not the transparent listener's.
#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    if let Some(original) = original_of(&ctx)
        && is_v4_mapped(&original.addr)
    {
        let a = &original.addr;
        let sa = ctx.sock_addr;
        // SAFETY: user_ip4 and user_port are writable in getpeername4.
        unsafe {
            core::ptr::write_volatile(
                &raw mut (*sa).user_ip4,
                u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            );
            core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(original.port.to_be()));
        }
    }
    ALLOW
}

/// The same for IPv6 sockets (IPv4 destinations stay IPv4-mapped).
#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    if let Some(original) = original_of(&ctx) {
        let sa = ctx.sock_addr;
        // SAFETY: user_ip6 and user_port are writable in getpeername6.
        unsafe {
            write_ip6(sa, &original.addr);
            core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(original.port.to_be()));
        }
    }
    ALLOW
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

/// The connect/sendmsg decision, in order: enforcer endpoint (served by the
/// daemon's tagged listener), loopback
/// destination whose receiving socket is the cgroup's, live direct entry;
/// otherwise the most specific reason.
fn decide(ctx: &SockAddrContext, destination: &Destination) -> Result<(), Reason> {
    let addr = &destination.addr;
    if is_endpoint(destination) {
        // Only while the daemon's own tagged socket is what listens there:
        // with the daemon down, or its port taken, it is denied.
        if receiver_owner(ctx, destination) == owner::DAEMON {
            return Ok(());
        }
        return Err(Reason::EndpointNotOwned);
    }
    let loopback = is_loopback(addr);
    if loopback && receiver_owner(ctx, destination) == owner::CGROUP {
        return Ok(());
    }
    match direct_entry(destination) {
        Some(expires_at) => {
            // SAFETY: bpf_ktime_get_boot_ns has no preconditions.
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
        if let Some(endpoint) = CONFIG.get(i)
            && endpoint.in_use == 1
            && endpoint.port == destination.port
            && endpoint.protocol == destination.protocol
            && endpoint.addr == destination.addr
        {
            return true;
        }
    }
    false
}

fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10] == [0u8; 10] && addr[10] == 0xff && addr[11] == 0xff
}

/// `127.0.0.0/8` (as IPv4-mapped) or `::1`; unspecified addresses were
/// turned into these before.
fn is_loopback(addr: &[u8; 16]) -> bool {
    if is_v4_mapped(addr) {
        return addr[12] == 127;
    }
    addr[..15] == [0u8; 15] && addr[15] == 1
}

/// The owner tag of the socket the kernel would deliver `destination` to:
/// `bpf_sk_lookup_tcp/udp` with the same tables and scoring the receive
/// path uses (a TCP listener, a bound or connected UDP socket; an
/// `IPV6_V6ONLY` socket never answers an IPv4 lookup; a bound socket that
/// does not listen is not a TCP receiver). 0 when nothing listens there or
/// the receiver is untagged (a process outside the cgroup).
fn receiver_owner(ctx: &SockAddrContext, destination: &Destination) -> u8 {
    let sa = ctx.sock_addr;
    // SAFETY: ctx.sk is the (non-null) socket being connected or sent on;
    // src_ip4/src_port are readable fields of bpf_sock.
    let (src_ip4, src_port) = unsafe {
        let sk = (*sa).__bindgen_anon_1.sk;
        (
            core::ptr::read_volatile(&raw const (*sk).src_ip4),
            core::ptr::read_volatile(&raw const (*sk).src_port),
        )
    };
    let addr = &destination.addr;
    let sport = (src_port as u16).to_be();
    let dport = destination.port.to_be();
    // SAFETY: bpf_sock_tuple is plain integers; all-zero is valid.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if is_v4_mapped(addr) {
        tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            // The source the kernel picks for a loopback destination.
            saddr: if src_ip4 != 0 {
                src_ip4
            } else {
                u32::from_ne_bytes(LOOPBACK4)
            },
            daddr: u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
            sport,
            dport,
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    } else {
        let mut daddr = [0u32; 4];
        for (i, word) in daddr.iter_mut().enumerate() {
            *word = u32::from_ne_bytes([
                addr[i * 4],
                addr[i * 4 + 1],
                addr[i * 4 + 2],
                addr[i * 4 + 3],
            ]);
        }
        tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])],
            daddr,
            sport,
            dport,
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    };
    // BPF_F_CURRENT_NETNS: the netns of the socket being connected.
    let netns = u64::MAX;
    // SAFETY: tuple is initialised for `size` bytes; a found socket is
    // released below on every path.
    let found = unsafe {
        if destination.protocol == protocol::TCP {
            bpf_sk_lookup_tcp(ctx.as_ptr(), &raw mut tuple, size as u32, netns, 0)
        } else if destination.protocol == protocol::UDP {
            bpf_sk_lookup_udp(ctx.as_ptr(), &raw mut tuple, size as u32, netns, 0)
        } else {
            core::ptr::null_mut()
        }
    };
    if found.is_null() {
        return 0;
    }
    let tag = SOCK_TAGS.owner_of(found.cast());
    // SAFETY: found came from bpf_sk_lookup_* and is released exactly once.
    unsafe { bpf_sk_release(found.cast()) };
    tag
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
        // SAFETY: the value is copied out at once, before any map update.
        unsafe { ALLOW4.get(key) }.map(|value| value.expires_at_boot_ns)
    } else {
        let key = SocketKey {
            addr: *addr,
            port: destination.port,
            protocol: destination.protocol,
            pad: 0,
        };
        // SAFETY: the value is copied out at once, before any map update.
        unsafe { ALLOW6.get(key) }.map(|value| value.expires_at_boot_ns)
    }
}

// === socket creation ===

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let sk: *mut bpf_sock = ctx.sock;
    // SAFETY: sk is the program's context; exact-width reads of readable fields.
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
        tag_socket(&ctx);
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

// === ptrace: tasks outside the cgroup are out of reach ===

/// Where this kernel keeps a task's cgroup, set by the loader from vmlinux
/// BTF before load (read-only data: a constant for the verifier).
#[unsafe(no_mangle)]
static TASK_LAYOUT: TaskLayout = TaskLayout {
    task_cgroups: 0,
    task_tgid: 0,
    css_set_dfl_cgrp: 0,
    cgroup_level: 0,
    cgroup_ancestors: 0,
    ancestor_ids: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    valid: 0,
    pad: 0,
};

/// The enforced cgroup's id (the cgroup this copy of the object attaches
/// to), set by the loader.
#[unsafe(no_mangle)]
static ENFORCED_CGROUP_ID: u64 = 0;

/// `PTRACE_MODE_NOAUDIT`: the caller only asks (`/proc/<pid>/stat` and
/// the like); such checks are denied without an event.
const PTRACE_MODE_NOAUDIT: u32 = 0x04;

/// Reads a kernel value at `base + offset`; None when the read faults.
#[inline(always)]
fn kernel_read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies into its own stack value and
    // returns an error instead of faulting on a bad address.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T).ok() }
}

/// The task's cgroup v2 cgroup (`task->cgroups->dfl_cgrp`).
#[inline(always)]
fn task_cgroup(task: u64, layout: &TaskLayout) -> Option<u64> {
    let css_set: u64 = kernel_read(task, layout.task_cgroups)?;
    kernel_read(css_set, layout.css_set_dfl_cgrp)
}

/// The id of `cgroup`'s ancestor at `level` (its own id at its own level);
/// None when `cgroup` is shallower than `level` or a read faults.
#[inline(always)]
fn ancestor_id(cgroup: u64, level: u32, layout: &TaskLayout) -> Option<u64> {
    let own_level: i32 = kernel_read(cgroup, layout.cgroup_level)?;
    if own_level < 0 || (own_level as u32) < level {
        return None;
    }
    let slot = layout.cgroup_ancestors + level * 8;
    if layout.ancestor_ids == 1 {
        return kernel_read(cgroup, slot);
    }
    let ancestor: u64 = kernel_read(cgroup, slot)?;
    let kernfs_node: u64 = kernel_read(ancestor, layout.cgroup_kn)?;
    kernel_read(kernfs_node, layout.kernfs_node_id)
}

/// The level at which `cgroup` descends from the cgroup `root`.
#[inline(always)]
fn level_of(cgroup: u64, root: u64, layout: &TaskLayout) -> Option<u32> {
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        match ancestor_id(cgroup, level, layout) {
            Some(id) if id == root => return Some(level),
            Some(_) => level += 1,
            None => return None,
        }
    }
    None
}

/// Whether `target` is in the enforced cgroup or below it, like the
/// current task (the only kind this program runs for). Unknown is no.
#[inline(always)]
fn target_is_inside(target: u64) -> bool {
    // SAFETY: read_volatile of the loader-set read-only globals.
    let (layout, root) = unsafe {
        (
            core::ptr::read_volatile(&raw const TASK_LAYOUT),
            core::ptr::read_volatile(&raw const ENFORCED_CGROUP_ID),
        )
    };
    if layout.valid != 1 || root == 0 {
        return false;
    }
    // SAFETY: bpf_get_current_task has no preconditions; its value is
    // only ever read through bpf_probe_read_kernel.
    let current = unsafe { bpf_get_current_task() };
    let Some(level) = task_cgroup(current, &layout).and_then(|cg| level_of(cg, root, &layout))
    else {
        return false;
    };
    task_cgroup(target, &layout).and_then(|cg| ancestor_id(cg, level, &layout)) == Some(root)
}

/// ptrace, `process_vm_readv/writev`, `/proc/<pid>/mem` and `pidfd_getfd`
/// all ask `ptrace_access_check`: a task of the enforced cgroup may reach
/// only tasks of the same cgroup (or below). Anything else would run code,
/// or take sockets and secrets, outside the enforcement.
#[lsm_cgroup(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    // int ptrace_access_check(struct task_struct *child, unsigned int mode)
    let target: u64 = ctx.arg(0);
    let mode: u32 = ctx.arg(1);
    if target_is_inside(target) {
        return ALLOW;
    }
    if mode & PTRACE_MODE_NOAUDIT == 0 {
        // SAFETY: read_volatile of the loader-set read-only global.
        let layout = unsafe { core::ptr::read_volatile(&raw const TASK_LAYOUT) };
        let tgid: u32 = kernel_read(target, layout.task_tgid).unwrap_or(0);
        let mut who = [0u8; 16];
        let bytes = tgid.to_ne_bytes();
        who[0] = bytes[0];
        who[1] = bytes[1];
        who[2] = bytes[2];
        who[3] = bytes[3];
        record_deny(
            &ctx,
            Hook::LsmPtrace,
            Reason::PtraceOutside,
            0,
            mode as u16,
            0,
            &who,
            0,
        );
    }
    DENY
}

/// Marks a new socket of the cgroup as the cgroup's in `SOCK_TAGS`. If
/// the storage cannot be allocated the socket stays untagged: its servers
/// are then unreachable from the cgroup (fail closed), nothing more.
fn tag_socket(ctx: &SockContext) {
    let mut tag = current_task_tag();
    // SAFETY: the context of a cgroup/sock program is the socket itself,
    // which is what bpf_sk_storage_get wants there; tag outlives the call.
    unsafe {
        bpf_sk_storage_get(
            SOCK_TAGS.as_ptr(),
            ctx.as_ptr(),
            (&raw mut tag).cast(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        );
    }
}

// === sockops: who is behind a client's address and port ===

/// `BPF_SOCK_OPS_*` ops come as u32 in the context.
const OP_TCP_CONNECT: u32 = BPF_SOCK_OPS_TCP_CONNECT_CB;
const OP_ACTIVE_ESTABLISHED: u32 = BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB;
const OP_STATE: u32 = BPF_SOCK_OPS_STATE_CB;

#[sock_ops]
pub fn sock_peers(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        OP_TCP_CONNECT => {
            // The local port is chosen by now (the SYN is not sent yet, so
            // no listener can have accepted). Delete-on-close first: an
            // entry is only written for a socket that will delete it.
            let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
            if ctx.set_cb_flags(flags as i32).is_ok() {
                record_peer(&ctx);
                record_redirect(&ctx);
            }
        }
        // Again, now that every address field is final (an IPv6 socket
        // connecting to IPv4 gets its mapped source only after TCP_CONNECT).
        OP_ACTIVE_ESTABLISHED if ctx.cb_flags() & BPF_SOCK_OPS_STATE_CB_FLAG != 0 => {
            record_peer(&ctx);
            record_redirect(&ctx);
        }
        OP_STATE if ctx.arg(1) == BPF_TCP_CLOSE => {
            let key = peer_key(&ctx);
            let _ = PEERS.remove(key);
            let _ = REDIRECTS.remove(key);
        }
        _ => {}
    }
    1
}

/// The client socket's own address, port and protocol: what the server
/// sees as its peer. IPv4, and IPv6 sockets talking to IPv4, as IPv4-mapped.
fn peer_key(ctx: &SockOpsContext) -> SocketKey {
    let ops = ctx.ops;
    // Exact-width volatile loads at fixed offsets: the verifier rejects
    // loads through a context pointer the compiler has offset first.
    // SAFETY: ops is the program's context; these fields are readable.
    let (fam, local_ip4, port) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ops).family),
            core::ptr::read_volatile(&raw const (*ops).local_ip4),
            core::ptr::read_volatile(&raw const (*ops).local_port),
        )
    };
    let mut addr = v4_mapped(local_ip4.to_ne_bytes());
    if fam == u32::from(family::INET6) {
        // SAFETY: as above.
        let remote = unsafe {
            [
                core::ptr::read_volatile(&raw const (*ops).remote_ip6[0]),
                core::ptr::read_volatile(&raw const (*ops).remote_ip6[1]),
                core::ptr::read_volatile(&raw const (*ops).remote_ip6[2]),
            ]
        };
        let mapped_prefix = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        if !(remote[0] == 0 && remote[1] == 0 && remote[2] == mapped_prefix) {
            // SAFETY: as above.
            let local = unsafe {
                [
                    core::ptr::read_volatile(&raw const (*ops).local_ip6[0]),
                    core::ptr::read_volatile(&raw const (*ops).local_ip6[1]),
                    core::ptr::read_volatile(&raw const (*ops).local_ip6[2]),
                    core::ptr::read_volatile(&raw const (*ops).local_ip6[3]),
                ]
            };
            for (i, word) in local.iter().enumerate() {
                let bytes = word.to_ne_bytes();
                addr[i * 4] = bytes[0];
                addr[i * 4 + 1] = bytes[1];
                addr[i * 4 + 2] = bytes[2];
                addr[i * 4 + 3] = bytes[3];
            }
        }
    }
    SocketKey {
        addr,
        port: port as u16,
        protocol: protocol::TCP,
        pad: 0,
    }
}

/// Copies the connecting task from the socket's tag into `PEERS`. A
/// socket without a tag (storage could not be allocated) gets no entry:
/// the daemon then refuses it as unattributed (fail closed).
fn record_peer(ctx: &SockOpsContext) {
    // SAFETY: ctx.ops is the program's context; sk is readable (may be null).
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    let Some(tag) = SOCK_TAGS.tag_of(sk.cast()) else {
        return;
    };
    if tag.owner != owner::CGROUP {
        return;
    }
    let peer = PeerInfo {
        cgroup_id: tag.cgroup_id,
        pid: tag.pid,
        tgid: tag.tgid,
        uid: tag.uid,
        pad: 0,
        comm: tag.comm,
    };
    let _ = PEERS.insert(peer_key(ctx), peer, 0);
}

/// For a redirected socket, copies its original destination into
/// `REDIRECTS` under its own address and port, where the transparent
/// listener looks it up. No entry: the listener closes the connection.
fn record_redirect(ctx: &SockOpsContext) {
    // SAFETY: ctx.ops is the program's context; sk is readable (may be null).
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    if let Some(original) = ORIG_DST.get(sk.cast())
        && original.in_use == 1
    {
        let _ = REDIRECTS.insert(peer_key(ctx), original, 0);
    }
}

// === deny bookkeeping ===

fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, written only by this CPU.
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
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = DenyEvent {
        // SAFETY: bpf_ktime_get_boot_ns has no preconditions.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        // SAFETY: bpf_get_current_cgroup_id has no preconditions.
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
    emit_deny(ctx, &event);
}

/// Counts a deny and sends it to `EVENTS` and `RECENT`.
#[inline(always)]
fn emit_deny<C: EbpfContext>(ctx: &C, event: &DenyEvent) {
    count(stat::DENIED_BASE + u32::from(event.reason));
    if EVENTS.output::<DenyEvent>(event, 0).is_err() {
        count(stat::EVENTS_LOST);
    }
    if let Some(head) = RECENT_HEAD.get_ptr_mut(0) {
        // SAFETY: head points at the map's one u64 slot. Two CPUs racing may
        // write the same RECENT slot; that loses a recent deny, nothing more.
        let slot = unsafe {
            let slot = *head;
            *head = slot + 1;
            slot
        };
        let _ = RECENT.set((slot % u64::from(RECENT_DENIES)) as u32, event, 0);
    }
    debug!(
        ctx,
        "enforcer deny hook={} reason={} port={}", event.hook, event.reason, event.port
    );
}

// === setsockopt: no routing headers, no source routes ===

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
const IP_OPTIONS: i32 = 4;
const IPV6_2292RTHDR: i32 = 5;
const IPV6_2292PKTOPTIONS: i32 = 6;
const IPV6_RTHDR: i32 = 57;
const IPOPT_END: u8 = 0;
const IPOPT_NOOP: u8 = 1;
const IPOPT_LSRR: u8 = 131;
const IPOPT_SSRR: u8 = 137;
/// IPv4 options are at most 40 bytes.
const MAX_IP_OPTIONS: usize = 40;
/// The kernel hands the program at most one page of the value.
const PAGE_SIZE: i32 = 4096;

#[cgroup_sockopt(setsockopt)]
pub fn setsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: so is the program's context; these fields are readable.
    let (level, optname, optlen, optval, optval_end, fam) = unsafe {
        let sk = (*so).__bindgen_anon_1.sk;
        (
            core::ptr::read_volatile(&raw const (*so).level),
            core::ptr::read_volatile(&raw const (*so).optname),
            core::ptr::read_volatile(&raw const (*so).optlen),
            (*so).__bindgen_anon_2.optval as usize,
            (*so).__bindgen_anon_3.optval_end as usize,
            core::ptr::read_volatile(&raw const (*sk).family),
        )
    };
    let source_route = match (level, optname) {
        (SOL_IPV6, IPV6_RTHDR | IPV6_2292RTHDR | IPV6_2292PKTOPTIONS) => true,
        (SOL_IP, IP_OPTIONS) => has_source_route_option(optval, optval_end),
        _ => false,
    };
    if source_route {
        record_deny(
            &ctx,
            Hook::SetSockopt,
            Reason::SourceRoute,
            fam as u16,
            0,
            0,
            &[0; 16],
            0,
        );
        return DENY;
    }
    if optlen > PAGE_SIZE {
        // Only the first page was copied for us: optlen = 0 tells the kernel
        // to use the caller's value untouched (without it 6.1 fails EFAULT).
        // SAFETY: optlen is writable in cgroup/setsockopt.
        unsafe { core::ptr::write_volatile(&raw mut (*so).optlen, 0) };
    }
    ALLOW
}

/// True when the `IP_OPTIONS` value between `start` and `end` holds a
/// loose or strict source-route option. A value too short to parse holds none.
#[inline(always)]
fn has_source_route_option(start: usize, end: usize) -> bool {
    let mut offset = 0usize;
    for _ in 0..MAX_IP_OPTIONS {
        if offset >= MAX_IP_OPTIONS || start + offset + 2 > end {
            // A lone last byte can only be END or NOOP for the kernel.
            break;
        }
        let at = (start + offset) as *const u8;
        // SAFETY: at + 2 <= optval_end was checked just above.
        let (kind, len) = unsafe { (*at, *at.add(1)) };
        match kind {
            IPOPT_END => break,
            IPOPT_NOOP => offset += 1,
            IPOPT_LSRR | IPOPT_SSRR => return true,
            _ if len < 2 => break,
            _ => offset += len as usize,
        }
    }
    false
}

// === cgroup_skb/egress: the packet-level check ===

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86dd;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked before giving up (and letting the packet
/// pass: the headers that matter come first, RFC 8200 §4.1).
const MAX_EXT_HEADERS: usize = 6;

#[cgroup_skb(egress)]
pub fn skb_egress(ctx: SkBuffContext) -> i32 {
    // SAFETY: ctx.skb.skb is the program's context; protocol is readable.
    let raw = unsafe { core::ptr::read_volatile(&raw const (*ctx.skb.skb).protocol) };
    let proto = u16::from_be(raw as u16);
    let (routed, fam, addr) = if u32::from(proto) == ETH_P_IPV6 {
        (
            ipv6_routing_header(&ctx),
            family::INET6,
            ipv6_destination(&ctx),
        )
    } else if u32::from(proto) == ETH_P_IP {
        (
            ipv4_source_route(&ctx),
            family::INET,
            ipv4_destination(&ctx),
        )
    } else {
        return ALLOW;
    };
    if routed {
        deny_packet(&ctx, Reason::SourceRoute, fam, &addr, 0, 0);
        return DENY;
    }
    if let Some((proto, port)) = judged_mismatch(&ctx, fam, &addr) {
        deny_packet(&ctx, Reason::DestinationMismatch, fam, &addr, proto, port);
        return DENY;
    }
    record_dns_sender(&ctx, fam, &addr);
    ALLOW
}

/// A UDP query to the DNS filter: its sender (the packet's source address
/// and port) goes into `PEERS` with the socket's tag, so the filter can
/// tell who asked. Here, not at connect: a connected UDP socket gets its
/// port only after `connect4/6` ran, and its sends never pass `sendmsg4/6`.
/// A query without an entry is refused as unattributed (fail closed).
#[inline(never)]
fn record_dns_sender(ctx: &SkBuffContext, fam: u16, destination: &[u8; 16]) {
    let Some(config) = DNS_REDIRECT.get(0) else {
        return;
    };
    if config.enabled != 1 {
        return;
    }
    let (source, l4) = if fam == family::INET {
        let Ok(header) = ctx.load::<[u8; 16]>(0) else {
            return;
        };
        let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & IP_OFFSET_MASK;
        if header[9] != protocol::UDP || fragment_offset != 0 {
            return;
        }
        (
            v4_mapped([header[12], header[13], header[14], header[15]]),
            (header[0] & 0x0f) as usize * 4,
        )
    } else {
        // Only a UDP header right after the fixed header: a query with
        // extension headers stays unattributed.
        if ctx.load::<u8>(6) != Ok(protocol::UDP) {
            return;
        }
        let Ok(source) = ctx.load::<[u8; 16]>(8) else {
            return;
        };
        (source, 40)
    };
    let Ok(ports) = ctx.load::<[u8; 4]>(l4) else {
        return;
    };
    if !is_dns_listener(
        config,
        destination,
        u16::from_be_bytes([ports[2], ports[3]]),
    ) {
        return;
    }
    let skb = ctx.skb.skb;
    // SAFETY: skb is the program's context; sk is readable (may be null).
    let sk = unsafe { core::ptr::read_volatile(&raw const (*skb).__bindgen_anon_2.sk) };
    if sk.is_null() {
        return;
    }
    // SAFETY: sk is the packet's (non-null) socket.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return;
    }
    let Some(tag) = SOCK_TAGS.tag_of(full.cast()) else {
        return;
    };
    if tag.owner != owner::CGROUP {
        return;
    }
    let key = SocketKey {
        addr: source,
        port: u16::from_be_bytes([ports[0], ports[1]]),
        protocol: protocol::UDP,
        pad: 0,
    };
    let peer = PeerInfo {
        cgroup_id: tag.cgroup_id,
        pid: tag.pid,
        tgid: tag.tgid,
        uid: tag.uid,
        pad: 0,
        comm: tag.comm,
    };
    let _ = PEERS.insert(key, peer, 0);
}

fn ipv6_routing_header(ctx: &SkBuffContext) -> bool {
    let Ok(mut next) = ctx.load::<u8>(6) else {
        return false;
    };
    let mut offset = 40usize;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXTHDR_ROUTING => return true,
            NEXTHDR_HOP | NEXTHDR_DEST => {
                let Ok(header) = ctx.load::<[u8; 2]>(offset) else {
                    return false;
                };
                next = header[0];
                offset += (header[1] as usize + 1) * 8;
            }
            NEXTHDR_AUTH => {
                let Ok(header) = ctx.load::<[u8; 2]>(offset) else {
                    return false;
                };
                next = header[0];
                offset += (header[1] as usize + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                let Ok(header) = ctx.load::<u8>(offset) else {
                    return false;
                };
                next = header;
                offset += 8;
            }
            _ => return false,
        }
    }
    false
}

fn ipv4_source_route(ctx: &SkBuffContext) -> bool {
    let Ok(first) = ctx.load::<u8>(0) else {
        return false;
    };
    let options = ((first & 0x0f) as usize * 4).saturating_sub(20);
    let mut offset = 0usize;
    for _ in 0..MAX_IP_OPTIONS {
        if offset >= options || offset >= MAX_IP_OPTIONS {
            break;
        }
        let Ok(kind) = ctx.load::<u8>(20 + offset) else {
            return false;
        };
        match kind {
            IPOPT_END => break,
            IPOPT_NOOP => offset += 1,
            IPOPT_LSRR | IPOPT_SSRR => return true,
            _ => {
                let Ok(len) = ctx.load::<u8>(20 + offset + 1) else {
                    return false;
                };
                if len < 2 {
                    break;
                }
                offset += len as usize;
            }
        }
    }
    false
}

fn ipv6_destination(ctx: &SkBuffContext) -> [u8; 16] {
    ctx.load::<[u8; 16]>(24).unwrap_or([0; 16])
}

fn ipv4_destination(ctx: &SkBuffContext) -> [u8; 16] {
    v4_mapped(ctx.load::<[u8; 4]>(16).unwrap_or([0; 4]))
}

/// A packet-level deny: no task is current here (the packet may leave from
/// softirq), so the event names the socket's creator from its tag.
/// Inlined: a BPF call takes at most five arguments.
#[inline(always)]
fn deny_packet(
    ctx: &SkBuffContext,
    reason: Reason,
    fam: u16,
    addr: &[u8; 16],
    proto: u16,
    port: u16,
) {
    let skb = ctx.skb.skb;
    // SAFETY: skb is the program's context; sk is readable (may be null).
    let sk = unsafe { core::ptr::read_volatile(&raw const (*skb).__bindgen_anon_2.sk) };
    let tag = if sk.is_null() {
        None
    } else {
        // SAFETY: sk is the packet's (non-null) socket.
        let full = unsafe { bpf_sk_fullsock(sk) };
        if full.is_null() {
            None
        } else {
            SOCK_TAGS.tag_of(full.cast())
        }
    };
    let tag = tag.unwrap_or_default();
    let event = DenyEvent {
        // SAFETY: bpf_ktime_get_boot_ns has no preconditions.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        // SAFETY: skb is the program's context.
        cgroup_id: unsafe { bpf_skb_cgroup_id(skb) },
        pid: tag.tgid,
        tgid: tag.tgid,
        // SAFETY: skb is the program's context.
        uid: unsafe { bpf_get_socket_uid(skb) },
        family: fam,
        protocol: proto,
        socket_type: 0,
        port,
        hook: Hook::SkbEgress as u8,
        reason: reason as u8,
        pad: [0; 2],
        addr: *addr,
        comm: tag.comm,
    };
    emit_deny(ctx, &event);
}

// === judged destinations (issue 12d) ===
//
// connect4/6 and sendmsg4/6 keep what they allowed in the socket's
// `JUDGED` storage; `cgroup_skb/egress` drops every packet of a socket that
// has one whose destination (address, and the TCP/UDP port where the
// packet carries it) is neither. Sockets without one pass: accepted
// sockets (the map is not BPF_F_CLONE, and they never connect) and sockets
// that have not connected or sent with an address since the first attach.

/// `BPF_F_NO_PREALLOC` only: unlike `SOCK_TAGS`, an accepted socket must
/// not inherit its listener's judged destinations.
const JUDGED_FLAGS: usize = BPF_F_NO_PREALLOC as usize;
const TCP_LISTEN: u32 = 10;
const IP_OFFSET_MASK: u16 = 0x1fff;

/// `JUDGED`, pinned by name like `SOCK_TAGS`.
type JudgedMap = SkStorageMap<Judged, JUDGED_FLAGS>;

/// Keeps an allowed connect/sendmsg destination in the socket's `JUDGED`
/// storage (connect and sendmsg each have their slot: a connected UDP
/// socket may also `sendto` another address and keep sending to its
/// connected one). Written only when it changes, so threads sending to the
/// same destination never tear it. If the storage cannot be allocated the
/// socket has none and its packets are held to the connect/sendmsg verdict
/// alone, as before this check.
#[inline(never)]
fn remember_judged(ctx: &SockAddrContext, hook: Hook, destination: &Destination) {
    // SAFETY: ctx.sk is the (non-null) socket being connected or sent on.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    let judged = JUDGED.get_or_create(sk.cast());
    if judged.is_null() {
        return;
    }
    let new = JudgedDestination {
        addr: destination.addr,
        port: destination.port,
        protocol: destination.protocol,
        in_use: 1,
    };
    // SAFETY: judged points at this socket's Judged value in the map.
    unsafe {
        let slot = match hook {
            Hook::Sendmsg4 | Hook::Sendmsg6 => &raw mut (*judged).sendmsg,
            _ => &raw mut (*judged).connect,
        };
        if *slot != new {
            *slot = new;
        }
    }
}

/// For a packet of a socket with judged destinations: `None` when it goes
/// to one of them, else its (protocol, destination port) for the deny
/// event. Packets of sockets with none, and of listeners (SYN-ACKs leave
/// with the listener as their socket), pass.
fn judged_mismatch(ctx: &SkBuffContext, fam: u16, addr: &[u8; 16]) -> Option<(u16, u16)> {
    let skb = ctx.skb.skb;
    // SAFETY: skb is the program's context; sk is readable (may be null).
    let sk = unsafe { core::ptr::read_volatile(&raw const (*skb).__bindgen_anon_2.sk) };
    if sk.is_null() {
        return None;
    }
    // SAFETY: sk is the packet's (non-null) socket.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return None;
    }
    // SAFETY: full is a full socket the verifier knows; state is readable.
    let state = unsafe { core::ptr::read_volatile(&raw const (*full).state) };
    if state == TCP_LISTEN {
        return None;
    }
    let judged = JUDGED.get_ptr(full.cast());
    if judged.is_null() {
        return None;
    }
    // SAFETY: a non-null result points at this socket's Judged.
    let judged = unsafe { *judged };
    if judged.connect.in_use == 0 && judged.sendmsg.in_use == 0 {
        return None;
    }
    let (proto, port) = if fam == family::INET6 {
        ipv6_transport(ctx)
    } else {
        ipv4_transport(ctx)
    };
    let goes_to = |slot: &JudgedDestination| {
        slot.in_use == 1
            && slot.addr == *addr
            && match port {
                // A TCP/UDP header: its port and protocol must match too.
                Some(port) => slot.port == port && slot.protocol == proto,
                // A later fragment (no transport header): the address decides.
                None => true,
            }
    };
    if goes_to(&judged.connect) || goes_to(&judged.sendmsg) {
        return None;
    }
    Some((u16::from(proto), port.unwrap_or(0)))
}

/// Protocol and, for TCP/UDP with its header in this packet, the
/// destination port of an IPv4 packet.
fn ipv4_transport(ctx: &SkBuffContext) -> (u8, Option<u16>) {
    let Ok(header) = ctx.load::<[u8; 10]>(0) else {
        return (0, None);
    };
    let proto = header[9];
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & IP_OFFSET_MASK;
    if fragment_offset != 0 || (proto != protocol::TCP && proto != protocol::UDP) {
        return (proto, None);
    }
    let l4 = (header[0] & 0x0f) as usize * 4;
    (
        proto,
        ctx.load::<[u8; 2]>(l4 + 2).ok().map(u16::from_be_bytes),
    )
}

/// The same for IPv6, past the extension headers an unprivileged sender
/// can add (routing headers never get here: they were dropped above).
fn ipv6_transport(ctx: &SkBuffContext) -> (u8, Option<u16>) {
    let Ok(mut next) = ctx.load::<u8>(6) else {
        return (0, None);
    };
    let mut offset = 40usize;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_DEST => {
                let Ok(header) = ctx.load::<[u8; 2]>(offset) else {
                    return (next, None);
                };
                next = header[0];
                offset += (header[1] as usize + 1) * 8;
            }
            NEXTHDR_AUTH => {
                let Ok(header) = ctx.load::<[u8; 2]>(offset) else {
                    return (next, None);
                };
                next = header[0];
                offset += (header[1] as usize + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                let Ok(header) = ctx.load::<[u8; 4]>(offset) else {
                    return (next, None);
                };
                if u16::from_be_bytes([header[2], header[3]]) >> 3 != 0 {
                    return (header[0], None);
                }
                next = header[0];
                offset += 8;
            }
            _ => break,
        }
    }
    if next != protocol::TCP && next != protocol::UDP {
        return (next, None);
    }
    (
        next,
        ctx.load::<[u8; 2]>(offset + 2).ok().map(u16::from_be_bytes),
    )
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

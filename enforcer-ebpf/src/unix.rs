//! enforcer's unix-socket programs (`cgroup/connect_unix`,
//! `cgroup/sendmsg_unix`, kernel 6.7+): the second BPF object.
//!
//! They live apart from the main object because aya-obj 0.3 refuses these
//! section names and would abort the whole load; enforcer's own loader
//! (enforcer-user `kernel::unix`) loads them and hands them the main
//! object's pinned maps. Rules for that loader: no globals, no calls into
//! `.text` (every helper function here is `#[inline(always)]`), maps only
//! by relocation against the `maps` section.
//!
//! A process in the enforced cgroup may connect or send to a unix socket
//! only when its address (the `sun_path` bytes it passed) matches a rule in
//! `UNIX_ALLOW`: the pack's `egress.unix` (cgroup id 0) or the enforced
//! command's own directories (its cgroup id). Everything else is denied
//! with EPERM and reported like the other denies.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns, bpf_probe_read_kernel},
    },
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
};
use enforcer_ebpf::{
    DenyEvent, EVENTS_BYTES, Hook, MAX_UNIX_RULES, RECENT_DENIES, Reason, UNIX_KEY_CGROUP_BITS,
    UNIX_KEY_PATH, UNIX_PATH_MAX, UNIX_SUFFIX_MAX, UnixKey, UnixRule, family, stat, unix_rule,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

// The loader gives these the main object's pinned maps (same names).
#[map]
static UNIX_ALLOW: LpmTrie<UnixKey, UnixRule> = LpmTrie::pinned(MAX_UNIX_RULES, 0);
#[map]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::LEN, 0);
#[map]
static RECENT: Array<DenyEvent> = Array::pinned(RECENT_DENIES, 0);
#[map]
static RECENT_HEAD: Array<u64> = Array::pinned(1, 0);

/// Placeholder call number for the kfunc `bpf_cast_to_kern_ctx`: the loader
/// rewrites every `call` with this immediate into a kfunc call
/// (`BPF_PSEUDO_KFUNC_CALL`) with the function's BTF id in vmlinux.
/// Must equal enforcer-user's `kernel::unix::KFUNC_PLACEHOLDER`.
const KFUNC_CAST_TO_KERN_CTX: usize = 0x7e4f_0001;

/// The kernel's `struct bpf_sock_addr_kern` (include/linux/filter.h, 6.7+),
/// the real context behind `bpf_sock_addr`. The verifier checks each load
/// below against vmlinux BTF, so a layout change fails the load (and unix
/// sockets are reported not enforced) rather than reading the wrong field.
#[repr(C)]
struct SockAddrKern {
    sk: u64,
    uaddr: *const u8,
    tmp_reg: u64,
    t_ctx: u64,
    uaddrlen: u32,
}

/// LPM lookups per cgroup id: a glob rule that does not match hands over
/// to the next shorter rule.
const MAX_FALLBACKS: usize = 4;

#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/connect_unix")]
extern "C" fn connect_unix(ctx: *mut bpf_sock_addr) -> i32 {
    judge(ctx, Hook::ConnectUnix)
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/sendmsg_unix")]
extern "C" fn sendmsg_unix(ctx: *mut bpf_sock_addr) -> i32 {
    judge(ctx, Hook::SendmsgUnix)
}

/// Verifier cost is what shapes this code: every loop has a constant
/// bound, rule checks have no loops bounded by rule data, and the address
/// length is passed through [`launder`] wherever a loop would pin it, so
/// what follows is verified once for "some length up to 108" instead of
/// once per possible length.
#[inline(always)]
fn judge(ctx: *mut bpf_sock_addr, hook: Hook) -> i32 {
    // The key doubles as the working copy of the address: its `path` gets
    // `sun_path` as passed; bytes past the address length are never read.
    let mut key = Key::new(0, UnixKey::ZERO);
    let len = read_address(ctx, &mut key);
    let verdict = match len {
        Some(len) if !has_dot_dot(&key.data.path, len) && allowed(&mut key, len) => ALLOW,
        _ => DENY,
    };
    if verdict == ALLOW {
        count(stat::ALLOWED);
    } else {
        record_deny(ctx, hook, &key.data.path, len.unwrap_or(0));
    }
    verdict
}

/// Reads the destination's `sun_path` into `key.data.path` and returns the
/// address length the kernel will use: up to the first NUL for a path,
/// every byte for an abstract name. `None` when it cannot be read.
#[expect(
    clippy::needless_range_loop,
    reason = "constant-bound index loops are the shape the verifier is given"
)]
#[inline(always)]
fn read_address(ctx: *mut bpf_sock_addr, key: &mut Key<UnixKey>) -> Option<usize> {
    let cast: unsafe extern "C" fn(*mut c_void) -> *mut c_void =
        // SAFETY: a helper-style call the loader turns into the kfunc call
        // `bpf_cast_to_kern_ctx(ctx)`, which returns its argument retyped.
        unsafe { core::mem::transmute(KFUNC_CAST_TO_KERN_CTX) };
    // SAFETY: ctx is the program's context, the one argument the kfunc takes.
    let kern = unsafe { cast(ctx.cast()) }.cast::<SockAddrKern>();
    // SAFETY: kern is the kernel context (a BTF pointer); the verifier
    // checks both loads against struct bpf_sock_addr_kern.
    let (uaddr, uaddrlen) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*kern).uaddr),
            core::ptr::read_volatile(&raw const (*kern).uaddrlen),
        )
    };
    // The two bytes before `path` (the end of `cgroup_id`, set later) take
    // `sun_family`, so one read fills the path in place.
    let target = (&raw mut key.data.cgroup_id[6]).cast::<c_void>();
    // SAFETY: uaddr is the kernel's copy of the address, a sockaddr_storage
    // (128 bytes), so sizeof(sockaddr_un) = 110 bytes are readable; target
    // has 2 + 108 bytes of the key behind it.
    let rc = unsafe { bpf_probe_read_kernel(target, 2 + UNIX_PATH_MAX as u32, uaddr.cast()) };
    if rc != 0 {
        return None;
    }
    let given = (uaddrlen as usize).saturating_sub(2);
    if given > UNIX_PATH_MAX {
        return None;
    }
    let path = &key.data.path;
    let len = if path[0] == 0 {
        given
    } else {
        let mut len = 0;
        for i in 0..UNIX_PATH_MAX {
            if i >= given || path[i] == 0 {
                break;
            }
            len = i + 1;
        }
        len
    };
    let len = launder(len);
    if len > UNIX_PATH_MAX {
        return None;
    }
    Some(len)
}

/// Returns `value` through a helper copy, so the verifier no longer knows
/// which constant it was (only the bound checked after).
#[inline(always)]
fn launder(value: usize) -> usize {
    let source = value as u64;
    let mut copy: u64 = u64::MAX;
    // SAFETY: both are 8-byte stack slots of this frame.
    let rc =
        unsafe { bpf_probe_read_kernel((&raw mut copy).cast(), 8, (&raw const source).cast()) };
    if rc != 0 {
        return usize::MAX;
    }
    copy as usize
}

/// Masks an index into [`UnixKey::path`]: the bound the verifier needs
/// for a variable stack offset, whatever LLVM does with the arithmetic.
const MASK: usize = UNIX_KEY_PATH - 1;

#[inline(always)]
fn byte_at(path: &[u8; UNIX_KEY_PATH], index: usize) -> u8 {
    path[index & MASK]
}

/// True when the first `len` bytes hold a `..` segment (a lexical match
/// of an allowed prefix would then say nothing about where it leads).
#[inline(always)]
fn has_dot_dot(path: &[u8; UNIX_KEY_PATH], len: usize) -> bool {
    // A loop leaving at `i >= len` pins len to one value per exit; a
    // laundered copy takes that, len itself stays unknown.
    let len = launder(len);
    for i in 0..UNIX_PATH_MAX {
        if i + 2 >= len {
            break;
        }
        if path[i] == b'/'
            && byte_at(path, i + 1) == b'.'
            && byte_at(path, i + 2) == b'.'
            && (i + 3 >= len || byte_at(path, i + 3) == b'/')
        {
            return true;
        }
    }
    false
}

/// `/` bytes among the first `len`.
#[expect(
    clippy::needless_range_loop,
    reason = "constant-bound index loops are the shape the verifier is given"
)]
#[inline(always)]
fn count_slashes(path: &[u8; UNIX_KEY_PATH], len: usize) -> usize {
    let len = launder(len);
    let mut slashes = 0;
    for i in 0..UNIX_PATH_MAX {
        if i >= len {
            break;
        }
        if path[i] == b'/' {
            slashes += 1;
        }
    }
    launder(slashes)
}

/// True when a rule for this cgroup or for every cgroup allows the address.
#[inline(always)]
fn allowed(key: &mut Key<UnixKey>, len: usize) -> bool {
    if len == 0 {
        return false;
    }
    let slashes = count_slashes(&key.data.path, len);
    // SAFETY: bpf_get_current_cgroup_id has no preconditions.
    let own = unsafe { bpf_get_current_cgroup_id() };
    for cgroup_id in [own, 0] {
        key.data.cgroup_id = cgroup_id.to_be_bytes();
        if allowed_for(key, len, slashes) {
            return true;
        }
    }
    false
}

#[inline(always)]
fn allowed_for(key: &mut Key<UnixKey>, len: usize, slashes: usize) -> bool {
    let mut bytes = len as u32;
    for _ in 0..MAX_FALLBACKS {
        key.prefix_len = UNIX_KEY_CGROUP_BITS + bytes * 8;
        let Some(rule) = UNIX_ALLOW.get(&*key) else {
            return false;
        };
        if rule_matches(rule, &key.data.path, len, slashes) {
            return true;
        }
        if rule.prefix_len == 0 {
            return false;
        }
        bytes = u32::from(rule.prefix_len) - 1;
    }
    false
}

#[inline(always)]
fn rule_matches(rule: &UnixRule, path: &[u8; UNIX_KEY_PATH], len: usize, slashes: usize) -> bool {
    let prefix = rule.prefix_len as usize;
    match rule.kind {
        unix_rule::EXACT => prefix == len,
        unix_rule::PREFIX => true,
        unix_rule::SEGMENT_GLOB => {
            let suffix = rule.suffix_len as usize;
            if suffix > UNIX_SUFFIX_MAX || prefix > UNIX_PATH_MAX || len < prefix + suffix {
                return false;
            }
            // The address's last 64 bytes against the right-aligned suffix;
            // bytes before the suffix are masked out.
            let mut diff = 0u8;
            for j in 0..UNIX_SUFFIX_MAX {
                let byte = byte_at(path, (len + j).wrapping_sub(UNIX_SUFFIX_MAX));
                diff |= (byte ^ rule.suffix[j]) & rule.suffix_mask[j];
            }
            diff == 0
                && slashes == usize::from(rule.prefix_slashes) + usize::from(rule.suffix_slashes)
        }
        _ => false,
    }
}

// === deny bookkeeping (as in the main object) ===

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { *counter += 1 };
    }
}

/// Reports a deny: the event's `addr` carries the address's first 8 and
/// last 8 bytes (all of it when it is at most 16), `port` its length.
#[inline(always)]
fn record_deny(ctx: *mut bpf_sock_addr, hook: Hook, path: &[u8; UNIX_KEY_PATH], len: usize) {
    let mut addr = [0u8; 16];
    for i in 0..16 {
        addr[i] = if len <= 16 || i < 8 {
            if i < len { path[i] } else { 0 }
        } else {
            byte_at(path, len - 16 + i)
        };
    }
    // SAFETY: ctx is the program's context; type is readable in every
    // sock_addr program.
    let socket_type = unsafe { core::ptr::read_volatile(&raw const (*ctx).type_) };
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = DenyEvent {
        // SAFETY: bpf_ktime_get_boot_ns has no preconditions.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        // SAFETY: bpf_get_current_cgroup_id has no preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        family: family::UNIX,
        protocol: 0,
        socket_type: socket_type as u16,
        port: len as u16,
        hook: hook as u8,
        reason: Reason::UnixSocket as u8,
        pad: [0; 2],
        addr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    count(stat::DENIED_BASE + u32::from(event.reason));
    if EVENTS.output::<DenyEvent>(&event, 0).is_err() {
        count(stat::EVENTS_LOST);
    }
    if let Some(head) = RECENT_HEAD.get_ptr_mut(0) {
        // SAFETY: head points at the map's one u64 slot; a race between
        // CPUs loses a recent deny, nothing more.
        let slot = unsafe {
            let slot = *head;
            *head = slot + 1;
            slot
        };
        let _ = RECENT.set((slot % u64::from(RECENT_DENIES)) as u32, event, 0);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

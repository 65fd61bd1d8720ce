//! Deny events from the kernel: decoding and reading the ring buffer.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{Map, MapData, RingBuf};
use enforcer_ebpf::{DenyEvent, Hook, Reason, family, map_names};
use nix::time::{ClockId, clock_gettime};

use super::{KernelError, maps::ip_from_bytes};

/// `CLOCK_BOOTTIME` now, in nanoseconds (the programs' clock).
pub fn boot_now_ns() -> u64 {
    // CLOCK_BOOTTIME exists on every Linux this runs on; were it refused,
    // 0 makes every event look old rather than failing the reader.
    let Ok(ts) = clock_gettime(ClockId::CLOCK_BOOTTIME) else {
        return 0;
    };
    u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(ts.tv_nsec()).unwrap_or(0)
}

/// Converts a `CLOCK_BOOTTIME` instant to wall-clock time.
pub fn boot_to_wall(boot_ns: u64) -> SystemTime {
    let now_boot = boot_now_ns();
    let now_wall = SystemTime::now();
    if boot_ns <= now_boot {
        now_wall - Duration::from_nanos(now_boot - boot_ns)
    } else {
        now_wall + Duration::from_nanos(boot_ns - now_boot)
    }
}

/// A deny event, decoded for people and for JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DenyRecord {
    /// Wall-clock time, seconds since the Unix epoch (fractional).
    pub time: f64,
    /// cgroup id of the process.
    pub cgroup_id: u64,
    /// Thread id.
    pub pid: u32,
    /// Process id.
    pub tgid: u32,
    /// Real uid.
    pub uid: u32,
    /// Command name.
    pub comm: String,
    /// Hook name (`connect4`, `sock_create`, ...).
    pub hook: String,
    /// Family name (`inet`, `inet6`, `vsock`, ... or the number).
    pub family: String,
    /// Protocol number.
    pub protocol: u16,
    /// Socket type number.
    pub socket_type: u16,
    /// Destination, when the hook has one.
    pub destination: Option<SocketAddr>,
    /// Machine-readable reason.
    pub reason: String,
    /// The unix socket address of a unix deny: the whole path (or `@name`)
    /// when at most 16 bytes, else its first and last 8 bytes around `…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_address: Option<String>,
    /// The process a ptrace deny was aimed at (its pid; 0 when unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ptrace_target: Option<u32>,
}

impl DenyRecord {
    /// Decodes a raw event.
    pub fn from_event(event: &DenyEvent) -> Self {
        let hook = Hook::from_u8(event.hook);
        let unix_hook = matches!(hook, Some(Hook::ConnectUnix | Hook::SendmsgUnix));
        let destination = match hook {
            Some(
                Hook::SockCreate
                | Hook::LsmSocketCreate
                | Hook::ConnectUnix
                | Hook::SendmsgUnix
                | Hook::LsmPtrace,
            )
            | None => None,
            Some(_) => Some(SocketAddr::new(ip_from_bytes(event.addr), event.port)),
        };
        let comm_len = event
            .comm
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(event.comm.len());
        let time = boot_to_wall(event.boot_ns)
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Self {
            time,
            cgroup_id: event.cgroup_id,
            pid: event.pid,
            tgid: event.tgid,
            uid: event.uid,
            comm: String::from_utf8_lossy(&event.comm[..comm_len]).into_owned(),
            hook: hook.map_or_else(|| format!("hook-{}", event.hook), |h| h.as_str().to_owned()),
            family: family_name(event.family),
            protocol: event.protocol,
            socket_type: event.socket_type,
            destination,
            reason: Reason::from_u8(event.reason).map_or_else(
                || format!("reason-{}", event.reason),
                |r| r.as_str().to_owned(),
            ),
            unix_address: unix_hook.then(|| unix_address(&event.addr, usize::from(event.port))),
            ptrace_target: (hook == Some(Hook::LsmPtrace)).then(|| {
                u32::from_ne_bytes([event.addr[0], event.addr[1], event.addr[2], event.addr[3]])
            }),
        }
    }

    /// The destination's IP, if any.
    pub fn destination_ip(&self) -> Option<IpAddr> {
        self.destination.map(|d| d.ip())
    }
}

impl std::fmt::Display for DenyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "deny {} pid={} comm={} cgroup={} family={}",
            self.reason, self.tgid, self.comm, self.cgroup_id, self.family
        )?;
        if let Some(destination) = self.destination {
            write!(f, " dst={destination}")?;
        }
        if let Some(address) = &self.unix_address {
            write!(f, " path={address}")?;
        }
        if let Some(target) = self.ptrace_target {
            write!(f, " target_pid={target}")?;
        }
        write!(f, " hook={}", self.hook)
    }
}

/// A unix deny's address from the event's 16 bytes (see
/// `enforcer-ebpf` unix.rs `record_deny`) and its length.
fn unix_address(bytes: &[u8; 16], len: usize) -> String {
    let text = |part: &[u8]| String::from_utf8_lossy(part).replace('\0', "@");
    if len <= 16 {
        let part = &bytes[..len.min(16)];
        match part.split_first() {
            Some((0, name)) => format!("@{}", text(name)),
            _ => text(part),
        }
    } else {
        let head = match bytes[..8].split_first() {
            Some((0, name)) => format!("@{}", text(name)),
            _ => text(&bytes[..8]),
        };
        format!("{head}…{}", text(&bytes[8..]))
    }
}

/// Human name of an address family.
pub fn family_name(number: u16) -> String {
    match number {
        family::UNIX => "unix".into(),
        family::INET => "inet".into(),
        family::INET6 => "inet6".into(),
        family::NETLINK => "netlink".into(),
        family::PACKET => "packet".into(),
        family::VSOCK => "vsock".into(),
        other => format!("family-{other}"),
    }
}

/// Reads deny events from the `EVENTS` ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    /// Wraps the ring buffer map taken from a loaded object or opened from its pin.
    pub fn new(map: Map) -> Result<Self, KernelError> {
        let ring = RingBuf::try_from(map).map_err(|source| KernelError::Map {
            map: map_names::EVENTS,
            what: "opening the ring buffer".into(),
            source,
        })?;
        Ok(Self { ring })
    }

    /// Pops every event available now, oldest first.
    pub fn drain(&mut self) -> Vec<DenyEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= std::mem::size_of::<DenyEvent>() {
                // SAFETY: the kernel wrote a whole DenyEvent; read_unaligned
                // copes with the ring buffer's 8-byte alignment.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DenyEvent>()) };
                events.push(event);
            }
        }
        events
    }

    /// Waits (asynchronously) until events are available, then drains them.
    pub async fn next_batch(
        fd: &mut tokio::io::unix::AsyncFd<Self>,
    ) -> std::io::Result<Vec<DenyEvent>> {
        loop {
            let mut guard = fd.readable_mut().await?;
            let events = guard.get_inner_mut().drain();
            guard.clear_ready();
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

impl std::os::fd::AsRawFd for EventReader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

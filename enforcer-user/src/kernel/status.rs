//! What is enforced right now, read from the pins alone (no daemon needed).

use std::{fs, path::Path};

use serde::Serialize;

use super::{
    CgroupMount, KernelError,
    events::DenyRecord,
    hooks::{HOOKS, LSM_PTRACE, LSM_SOCKET_CREATE},
    maps::{Counters, DirectEntry, EndpointSpec, PinnedMaps},
    paths::{PIN_ROOT, PinDirs},
    redirect::Mode,
    unix::{self, UnixEnforcement},
};

/// One hook and whether its link is pinned.
#[derive(Debug, Clone, Serialize)]
pub struct HookStatus {
    /// Program / hook name.
    pub program: &'static str,
    /// True when a pinned link keeps it attached.
    pub attached: bool,
}

/// Status of one enforced cgroup.
#[derive(Debug, Clone, Serialize)]
pub struct CgroupStatus {
    /// cgroup id (inode number).
    pub cgroup_id: u64,
    /// Path relative to the cgroup v2 mount, when the directory still exists.
    pub cgroup: Option<String>,
    /// Each hook's state.
    pub hooks: Vec<HookStatus>,
    /// True when BPF-LSM enforces socket families.
    pub families_enforced: bool,
    /// Families the kernel programs do not cover, if any.
    pub families_not_enforced: Vec<String>,
    /// True when BPF-LSM keeps processes outside the cgroup out of ptrace's reach.
    pub ptrace_enforced: bool,
    /// True when the cgroup unix programs (connect_unix, sendmsg_unix) are attached.
    pub unix_enforced: bool,
    /// Why unix sockets are not enforced, when they are not.
    pub unix_not_enforced: Option<String>,
    /// The `UNIX_ALLOW` rules: `egress.unix` entries, and `own(<cgroup id>): <dir>/**`
    /// for an enforced command's own directories.
    pub unix_rules: Vec<String>,
    /// Enforcer endpoints in the `CONFIG` map.
    pub endpoints: Vec<EndpointSpec>,
    /// The egress mode the programs enforce (`REDIRECT`).
    pub egress_mode: Mode,
    /// The transparent listeners connects are redirected to (mode `redirect`).
    pub transparent: Vec<std::net::SocketAddr>,
    /// The TCP ports redirected in mode `redirect` (`REDIRECT_PORTS`).
    pub redirect_ports: Vec<u16>,
    /// The DNS filter listeners port-53 traffic is rewritten to
    /// (`DNS_REDIRECT`); empty: DNS is denied.
    pub dns_filter: Vec<std::net::SocketAddr>,
    /// Direct allow entries.
    pub direct: Vec<DirectEntry>,
    /// Counters.
    pub counters: Counters,
    /// Last denies, oldest first.
    pub recent_denies: Vec<DenyRecord>,
}

/// Status of every cgroup with pins under the default root.
pub fn collect(mount: &CgroupMount) -> Result<Vec<CgroupStatus>, KernelError> {
    collect_under(mount, Path::new(PIN_ROOT))
}

/// Status of every cgroup with pins under `root`.
pub fn collect_under(mount: &CgroupMount, root: &Path) -> Result<Vec<CgroupStatus>, KernelError> {
    let Ok(entries) = fs::read_dir(root) else {
        return Ok(Vec::new());
    };
    let mut ids: Vec<u64> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    ids.sort_unstable();
    let mut statuses = Vec::new();
    for id in ids {
        let pins = PinDirs::under(root, id);
        match one(mount, &pins, id) {
            Ok(status) => statuses.push(status),
            // Pins appearing (an attach in progress) or vanishing (a detach)
            // while we read: not an enforced cgroup to report yet or any more.
            Err(_) if !maps_complete(&pins) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(statuses)
}

/// True when every map of the object is pinned under `pins`.
fn maps_complete(pins: &PinDirs) -> bool {
    enforcer_ebpf::map_names::PINNED
        .iter()
        .all(|name| pins.map(name).exists())
}

/// Status of one cgroup.
pub fn one(
    mount: &CgroupMount,
    pins: &PinDirs,
    cgroup_id: u64,
) -> Result<CgroupStatus, KernelError> {
    let maps = PinnedMaps::open(pins)?;
    let hooks: Vec<HookStatus> = HOOKS
        .iter()
        .map(|hook| HookStatus {
            program: hook.program,
            attached: pins.link(hook.program).exists(),
        })
        .collect();
    let families_enforced = pins.link(LSM_SOCKET_CREATE).exists();
    let families_not_enforced = if families_enforced {
        Vec::new()
    } else {
        [
            "vsock",
            "packet",
            "every family but unix/inet/inet6/netlink",
        ]
        .map(String::from)
        .to_vec()
    };
    let cgroup = mount.find_by_id(cgroup_id).map(|path| {
        path.strip_prefix(&mount.path)
            .unwrap_or(&path)
            .display()
            .to_string()
    });
    let unix = UnixEnforcement::from_pins(pins);
    let unix_rules = unix::rules(pins)
        .unwrap_or_default()
        .into_iter()
        .map(|(owner, rule)| {
            if owner == 0 {
                rule
            } else {
                format!("own({owner}): {rule}")
            }
        })
        .collect();
    let redirect = maps.redirect()?;
    Ok(CgroupStatus {
        cgroup_id,
        egress_mode: redirect.mode,
        transparent: [redirect.listen4, redirect.listen6]
            .into_iter()
            .flatten()
            .collect(),
        redirect_ports: maps.redirect_ports()?.into_iter().collect(),
        dns_filter: {
            let dns = maps.dns_redirect()?;
            [dns.listen4, dns.listen6].into_iter().flatten().collect()
        },
        cgroup,
        hooks,
        families_enforced,
        families_not_enforced,
        ptrace_enforced: pins.link(LSM_PTRACE).exists(),
        unix_enforced: unix.is_enforced(),
        unix_not_enforced: match unix {
            UnixEnforcement::Enforced => None,
            UnixEnforcement::NotEnforced { reason } => Some(reason),
        },
        unix_rules,
        endpoints: maps.endpoints()?,
        direct: maps.direct_entries()?,
        counters: maps.counters()?,
        recent_denies: maps
            .recent_denies()?
            .iter()
            .map(DenyRecord::from_event)
            .collect(),
    })
}

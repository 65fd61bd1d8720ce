//! Who is behind a client connection: the `PEERS` map the `sockops`
//! program writes (a TCP client's own address and port → the task that
//! connected it), and which cgroups count as enforced (the attached one and
//! every cgroup below it: `enforcer run` puts each command in a child).
//!
//! The daemon's listeners read these once per accepted connection, never
//! per byte.

use std::{
    collections::HashSet,
    fs,
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
    sync::Mutex,
};

use aya::maps::{HashMap, Map, MapData, MapError};
use enforcer_ebpf::{PeerInfo, SocketKey, map_names};

use super::{
    KernelError,
    maps::{Transport, client_key},
    paths::PinDirs,
};

/// The pinned `PEERS` map of one enforced cgroup, opened once.
pub struct PeerTable {
    map: HashMap<MapData, SocketKey, PeerInfo>,
}

impl std::fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTable").finish_non_exhaustive()
    }
}

/// The task that connected a client socket, as the kernel recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTask {
    /// cgroup v2 id of the connecting task.
    pub cgroup_id: u64,
    /// Process id (thread group id).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Real user id.
    pub uid: u32,
    /// Command name.
    pub comm: String,
}

impl PeerTable {
    /// Opens `PEERS` under `pins`.
    pub fn open(pins: &PinDirs) -> Result<Self, KernelError> {
        let name = map_names::PEERS;
        let path = pins.map(name);
        let error = |what: String| {
            move |source| KernelError::Map {
                map: name,
                what,
                source,
            }
        };
        let data =
            MapData::from_pin(&path).map_err(error(format!("opening pin {}", path.display())))?;
        let map = Map::from_map_data(data).map_err(error("reading map type".into()))?;
        let map = HashMap::try_from(map).map_err(error("opening".into()))?;
        Ok(Self { map })
    }

    /// The task behind the client socket whose own address is `client`
    /// (what `accept()` returned as the peer), if the kernel recorded one.
    pub fn lookup(
        &self,
        client: SocketAddr,
        transport: Transport,
    ) -> Result<Option<PeerTask>, KernelError> {
        let key = client_key(client, transport);
        match self.map.get(&key, 0) {
            Ok(info) => Ok(Some(PeerTask::from(info))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(KernelError::Map {
                map: map_names::PEERS,
                what: format!("looking up {client}"),
                source,
            }),
        }
    }
}

impl From<PeerInfo> for PeerTask {
    fn from(info: PeerInfo) -> Self {
        let end = info
            .comm
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(info.comm.len());
        Self {
            cgroup_id: info.cgroup_id,
            pid: info.tgid,
            tid: info.pid,
            uid: info.uid,
            comm: String::from_utf8_lossy(&info.comm[..end]).into_owned(),
        }
    }
}

/// Most cgroup directories walked to tell whether an id is below the
/// enforced cgroup (a bound on the work an unknown id costs).
const MAX_WALK: usize = 4096;
/// Most descendant ids remembered.
const MAX_KNOWN: usize = 4096;

/// The enforced cgroup and everything below it.
#[derive(Debug)]
pub struct EnforcedTree {
    root: PathBuf,
    root_id: u64,
    /// Ids already found below the root (cgroup ids are not reused while
    /// the cgroup exists).
    known: Mutex<HashSet<u64>>,
}

impl EnforcedTree {
    /// The tree under the cgroup directory `root` (absolute) whose id is `root_id`.
    pub fn new(root: impl Into<PathBuf>, root_id: u64) -> Self {
        Self {
            root: root.into(),
            root_id,
            known: Mutex::new(HashSet::new()),
        }
    }

    /// Whether the cgroup with this id is the enforced one or below it: a
    /// bounded walk of the enforced subtree, remembered when found.
    pub fn contains(&self, id: u64) -> bool {
        if id == self.root_id {
            return true;
        }
        let mut known = match self.known.lock() {
            Ok(known) => known,
            Err(poisoned) => poisoned.into_inner(),
        };
        if known.contains(&id) {
            return true;
        }
        let mut stack = vec![self.root.clone()];
        let mut walked = 0usize;
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                walked += 1;
                if walked > MAX_WALK {
                    return false;
                }
                let path = entry.path();
                if fs::metadata(&path).is_ok_and(|m| m.ino() == id) {
                    if known.len() >= MAX_KNOWN {
                        known.clear();
                    }
                    known.insert(id);
                    return true;
                }
                stack.push(path);
            }
        }
        false
    }

    /// Whether `relative` (a path below the cgroup mount, as in
    /// `/proc/<pid>/cgroup`) is the enforced cgroup or below it, given the
    /// enforced cgroup's own path relative to the mount.
    pub fn contains_path(enforced: &Path, relative: &Path) -> bool {
        let clean = |p: &Path| -> Vec<String> {
            p.components()
                .filter_map(|c| match c {
                    Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect()
        };
        if relative
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return false;
        }
        let enforced = clean(enforced);
        let relative = clean(relative);
        relative.len() >= enforced.len() && relative[..enforced.len()] == enforced[..]
    }
}

/// What `/proc` says of a local process (for unix-socket clients, whose
/// `SO_PEERCRED` names the pid; read once, at accept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessCgroup {
    /// Its cgroup, relative to the cgroup v2 mount.
    pub relative: PathBuf,
    /// The cgroup's id, when its directory could be read.
    pub cgroup_id: Option<u64>,
    /// Its command name.
    pub comm: Option<String>,
}

impl ProcessCgroup {
    /// Reads `/proc/<pid>/cgroup` (`0::/path`) and `/proc/<pid>/comm`; the
    /// id is the inode of `<mount>/<path>`.
    pub fn of(pid: u32, mount: &Path) -> Option<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
        let relative = PathBuf::from(path.trim_start_matches('/'));
        if relative
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return None;
        }
        let cgroup_id = fs::metadata(mount.join(&relative)).ok().map(|m| m.ino());
        let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .map(|c| c.trim_end_matches('\n').to_owned());
        Some(Self {
            relative,
            cgroup_id,
            comm,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn comm_and_ids_come_out_of_the_kernel_record() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let task = PeerTask::from(PeerInfo {
            cgroup_id: 9,
            pid: 101,
            tgid: 100,
            uid: 1000,
            pad: 0,
            comm,
        });
        assert_eq!(
            task,
            PeerTask {
                cgroup_id: 9,
                pid: 100,
                tid: 101,
                uid: 1000,
                comm: "curl".into(),
            }
        );
    }

    #[test]
    fn paths_below_the_enforced_cgroup_count_and_siblings_do_not() {
        let enforced = Path::new("agents.slice");
        assert!(EnforcedTree::contains_path(
            enforced,
            Path::new("agents.slice")
        ));
        assert!(EnforcedTree::contains_path(
            enforced,
            Path::new("agents.slice/run-1")
        ));
        assert!(!EnforcedTree::contains_path(
            enforced,
            Path::new("agents.slice2")
        ));
        assert!(!EnforcedTree::contains_path(
            enforced,
            Path::new("user.slice")
        ));
        assert!(!EnforcedTree::contains_path(
            enforced,
            Path::new("agents.slice/../user.slice")
        ));
        assert!(!EnforcedTree::contains_path(enforced, Path::new("")));
    }

    #[test]
    fn this_process_cgroup_is_found_in_proc() {
        let mount = crate::kernel::CgroupMount::find().unwrap();
        let me = ProcessCgroup::of(std::process::id(), &mount.path).unwrap();
        let text = fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let want = fs::metadata(mount.path.join(path.trim_start_matches('/')))
            .unwrap()
            .ino();
        assert_eq!(me.cgroup_id, Some(want));
        assert!(me.comm.is_some());
        assert!(ProcessCgroup::of(u32::MAX, &mount.path).is_none());
    }
}

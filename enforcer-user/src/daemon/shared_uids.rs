//! Agents need a dedicated uid. Where BPF-LSM does not load (and under
//! `attach`, which installs no seccomp filter), a process in the enforced
//! cgroup can `ptrace` or `process_vm_writev` any process of the same uid
//! outside it, and so run code that no cgroup program sees. At attach the
//! daemon looks for such uids and warns, naming them.
//!
//! One `/proc` scan at start-up; never on a data path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A uid with processes both inside and outside the enforced cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedUid {
    /// The uid.
    pub uid: u32,
    /// How many of its processes are inside.
    pub inside: usize,
    /// How many are outside.
    pub outside: usize,
    /// A few of the outside pids, for the operator to look at.
    pub outside_examples: Vec<u32>,
}

/// A process and its real uid.
pub type ProcessUid = (u32, u32);

/// The processes inside the enforced cgroup, and every other one.
#[derive(Debug, Clone, Default)]
pub struct Processes {
    /// In the cgroup or a descendant.
    pub inside: Vec<ProcessUid>,
    /// Everywhere else (kernel threads left out).
    pub outside: Vec<ProcessUid>,
}

/// Pure: the uids of `inside` processes that also own `outside` ones.
pub fn shared_uids(inside: &[ProcessUid], outside: &[ProcessUid]) -> Vec<SharedUid> {
    let mut inside_by_uid: BTreeMap<u32, usize> = BTreeMap::new();
    for (_, uid) in inside {
        *inside_by_uid.entry(*uid).or_default() += 1;
    }
    let inside_pids: BTreeSet<u32> = inside.iter().map(|(pid, _)| *pid).collect();
    inside_by_uid
        .into_iter()
        .filter_map(|(uid, inside)| {
            let pids: Vec<u32> = outside
                .iter()
                .filter(|(pid, owner)| *owner == uid && !inside_pids.contains(pid))
                .map(|(pid, _)| *pid)
                .collect();
            (!pids.is_empty()).then(|| SharedUid {
                uid,
                inside,
                outside: pids.len(),
                outside_examples: pids.into_iter().take(5).collect(),
            })
        })
        .collect()
}

/// Every process of the cgroup at `dir` and its descendants, with its real
/// uid, and every other process on the host.
pub fn scan(dir: &Path) -> Processes {
    let mut inside_pids = BTreeSet::new();
    collect_pids(dir, &mut inside_pids);
    let mut processes = Processes::default();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return processes;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process that exits mid-scan is skipped.
        let Some(uid) = real_uid(pid) else { continue };
        if inside_pids.contains(&pid) {
            processes.inside.push((pid, uid));
        } else if !is_kernel_thread(pid) {
            processes.outside.push((pid, uid));
        }
    }
    processes
}

fn collect_pids(dir: &Path, out: &mut BTreeSet<u32>) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(
            procs
                .lines()
                .filter_map(|line| line.trim().parse::<u32>().ok()),
        );
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&entry.path(), out);
            }
        }
    }
}

fn real_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Kernel threads have no memory map: nothing to trace there.
fn is_kernel_thread(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty())
}

/// Logs one warning per shared uid of the cgroup at `dir`; returns them.
pub fn warn_if_shared(dir: &Path) -> Vec<SharedUid> {
    let processes = scan(dir);
    let shared = shared_uids(&processes.inside, &processes.outside);
    for uid in &shared {
        tracing::warn!(
            uid = uid.uid,
            inside = uid.inside,
            outside = uid.outside,
            outside_pids = ?uid.outside_examples,
            "a uid with processes in the enforced cgroup also has processes outside it: \
             they can be traced (ptrace, process_vm_writev) from inside; run agents under a \
             dedicated uid (docs/THREAT-MODEL.md)"
        );
    }
    shared
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn only_uids_on_both_sides_are_reported() {
        let inside = [(10, 1000), (11, 1000), (12, 2000)];
        let outside = [(20, 1000), (21, 3000), (22, 1000), (23, 0)];
        assert_eq!(
            shared_uids(&inside, &outside),
            vec![SharedUid {
                uid: 1000,
                inside: 2,
                outside: 2,
                outside_examples: vec![20, 22],
            }]
        );
        assert!(shared_uids(&inside, &[(21, 3000)]).is_empty());
        assert!(shared_uids(&[], &outside).is_empty());
    }

    #[test]
    fn this_process_is_found_outside_an_empty_cgroup_dir() {
        let dir = tempfile::tempdir().unwrap();
        let processes = scan(dir.path());
        assert!(processes.inside.is_empty());
        let me = std::process::id();
        assert!(
            processes.outside.iter().any(|(pid, _)| *pid == me),
            "{:?}",
            processes.outside
        );
    }
}

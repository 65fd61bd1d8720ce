//! Issue 14: ptrace and `process_vm_readv` from inside an enforced cgroup.
//!
//! The target is this test's own process outside the cgroup, of the same
//! unprivileged uid as the attacker, and traceable by anyone
//! (`PR_SET_PTRACER_ANY`), so that without the BPF-LSM program the attack
//! works (the outside control proves it) and only the program can refuse
//! it. Where BPF-LSM does not load, `status` must say ptrace is not enforced.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
};

use enforcer::kernel::PtraceEnforcement;
use enforcer_tests::{ProbeOutcome, TestCgroup, enforcer_bin, probe_bin, unprivileged_user};

use super::{Enforced, assert_ok, unprivileged_uid};

/// A `traceable` probe: outside any cgroup of ours when `cgroup` is None.
struct Target {
    child: Child,
}

impl Target {
    fn start(cgroup: Option<&TestCgroup>) -> Self {
        let mut command = match cgroup {
            Some(cgroup) => cgroup.command(probe_bin()),
            None => Command::new(probe_bin()),
        };
        let uid = unprivileged_uid();
        let gid: u32 = unprivileged_user()
            .split(':')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        // Set before exec (not by the probe itself): a process that changes
        // its uid after exec is not dumpable, and could not be traced anyway.
        let mut child = command
            .arg("traceable")
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "target did not start");
        Self { child }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the probe outside the cgroup as the unprivileged user.
fn probe_outside_as_user(args: &[&str]) -> ProbeOutcome {
    let output = Command::new(probe_bin())
        .env("ENFORCER_PROBE_USER", unprivileged_user())
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    ProbeOutcome::parse(&output.stdout, args)
}

#[test]
fn processes_outside_the_cgroup_cannot_be_traced_or_read() {
    let mut enforced = Enforced::new("ptrace", vec![]);
    let outside = Target::start(None);
    let pid = outside.pid();
    let attacks = [
        ["process-vm-read", pid.as_str()],
        ["ptrace-attach", pid.as_str()],
    ];
    for attack in &attacks {
        assert_ok(
            &probe_outside_as_user(attack),
            &format!("outside control, same uid: {attack:?}"),
        );
    }
    match enforced.attachment.ptrace.clone() {
        PtraceEnforcement::Enforced => {}
        PtraceEnforcement::NotEnforced { reason } => {
            assert!(
                std::env::var_os("ENFORCER_EXPECT_BPF_LSM").is_none(),
                "BPF-LSM was expected to load here but the ptrace program did not attach: {reason}"
            );
            let text = Command::new(enforcer_bin()).arg("status").output().unwrap();
            assert!(
                String::from_utf8_lossy(&text.stdout).contains("ptrace: NOT enforced"),
                "{text:?}"
            );
            return;
        }
    }
    for attack in &attacks {
        let (outcome, probe) = enforced.cgroup.probe_as_user(attack);
        let record = enforced.expect_denied(
            &outcome,
            probe,
            attack,
            "ptrace_outside_cgroup",
            "lsm_ptrace_access_check",
        );
        assert_eq!(
            record.ptrace_target,
            Some(outside.child.id()),
            "{attack:?}: {record}"
        );
    }
    // Root inside the cgroup is refused too: the check is the cgroup, not the uid.
    let (outcome, probe) = enforced.cgroup.probe(&attacks[0]);
    enforced.expect_denied(
        &outcome,
        probe,
        &attacks[0],
        "ptrace_outside_cgroup",
        "lsm_ptrace_access_check",
    );
    // Inside the cgroup, tracing works: its own child, and another process of the cgroup.
    let (outcome, _) = enforced.cgroup.probe_as_user(&["ptrace-child"]);
    assert_ok(&outcome, "ptrace of its own child inside the cgroup");
    let sibling = Target::start(Some(&enforced.cgroup));
    for attack in [
        ["process-vm-read", sibling.pid().as_str()],
        ["ptrace-attach", sibling.pid().as_str()],
    ] {
        let (outcome, _) = enforced.cgroup.probe_as_user(&attack);
        assert_ok(
            &outcome,
            &format!("{attack:?} of a process inside the cgroup"),
        );
    }
    let text = Command::new(enforcer_bin()).arg("status").output().unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("ptrace: enforced by BPF-LSM"),
        "{text:?}"
    );
}

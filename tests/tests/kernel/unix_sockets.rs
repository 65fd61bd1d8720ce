//! Issue 14: unix sockets and ptrace from inside an enforced cgroup.
//!
//! Decoys are this test's own sockets in its own temp directory (and
//! abstract names carrying its pid), never a real runtime socket. Where
//! the kernel has the cgroup unix hooks (6.7+) the attempts must be
//! denied; where it lacks them (the VM's 6.1) the test asserts that
//! `status` says unix sockets are not enforced.

use std::{
    os::unix::net::{UnixDatagram, UnixListener},
    path::{Path, PathBuf},
    process::Command,
};

use enforcer::kernel::{UnixEnforcement, unix};
use enforcer_tests::{TestCgroup, enforcer_bin};
use policy::UnixSocketPattern;

use super::{Enforced, assert_ok};

/// This test's own unix sockets, outside the cgroup.
struct UnixDecoys {
    dir: tempfile::TempDir,
    stream: PathBuf,
    dgram: PathBuf,
    abstract_stream: String,
    abstract_dgram: String,
    _listeners: Vec<UnixListener>,
    _datagrams: Vec<UnixDatagram>,
}

impl UnixDecoys {
    fn new(label: &str) -> Self {
        use std::os::linux::net::SocketAddrExt as _;
        let dir = tempfile::Builder::new()
            .prefix("enforcer-unix-decoys-")
            .tempdir()
            .unwrap();
        let stream = dir.path().join("stream.sock");
        let dgram = dir.path().join("dgram.sock");
        let tag = format!("enforcer-test-{}-{label}", std::process::id());
        let abstract_stream = format!("@{tag}-stream");
        let abstract_dgram = format!("@{tag}-dgram");
        let abstract_addr = |name: &str| {
            std::os::unix::net::SocketAddr::from_abstract_name(&name.as_bytes()[1..]).unwrap()
        };
        let listeners = vec![
            UnixListener::bind(&stream).unwrap(),
            UnixListener::bind_addr(&abstract_addr(&abstract_stream)).unwrap(),
        ];
        let datagrams = vec![
            UnixDatagram::bind(&dgram).unwrap(),
            UnixDatagram::bind_addr(&abstract_addr(&abstract_dgram)).unwrap(),
        ];
        // The probe may run as the unprivileged user: let it reach the files.
        for path in [dir.path(), &stream, &dgram] {
            set_mode(path, 0o777);
        }
        Self {
            dir,
            stream,
            dgram,
            abstract_stream,
            abstract_dgram,
            _listeners: listeners,
            _datagrams: datagrams,
        }
    }

    /// Every (kind, address) attempt against the decoys.
    fn attempts(&self) -> Vec<(&'static str, String, &'static str)> {
        let stream = self.stream.display().to_string();
        let dgram = self.dgram.display().to_string();
        vec![
            ("stream", stream, "connect_unix"),
            ("dgram", dgram.clone(), "connect_unix"),
            ("dgram-sendto", dgram, "sendmsg_unix"),
            ("stream", self.abstract_stream.clone(), "connect_unix"),
            ("dgram", self.abstract_dgram.clone(), "connect_unix"),
            ("dgram-sendto", self.abstract_dgram.clone(), "sendmsg_unix"),
        ]
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// True where the running kernel has the cgroup unix hooks (6.7+).
fn kernel_has_unix_hooks() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    (major, minor) >= (6, 7)
}

fn status_text() -> String {
    let output = Command::new(enforcer_bin()).arg("status").output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn pattern(text: &str) -> UnixSocketPattern {
    UnixSocketPattern::parse(text).unwrap()
}

#[test]
fn unix_sockets_outside_the_cgroup_are_denied_or_reported_not_enforced() {
    let mut enforced = Enforced::new("unix", vec![]);
    let decoys = UnixDecoys::new("deny");
    for (kind, target, _) in decoys.attempts() {
        assert_ok(
            &TestCgroup::probe_outside(&["unix-connect", kind, &target]),
            &format!("outside control: {kind} {target}"),
        );
    }
    if !kernel_has_unix_hooks() {
        assert_eq!(
            enforced.attachment.unix,
            UnixEnforcement::NotEnforced {
                reason: enforced_reason(&enforced)
            }
        );
        let status = status_text();
        assert!(
            status.contains(
                "unix sockets: not enforced (kernel lacks cgroup unix hooks, needs 6.7+)"
            ),
            "status on a kernel without the unix hooks:\n{status}"
        );
        return;
    }
    assert_eq!(enforced.attachment.unix, UnixEnforcement::Enforced);
    for (kind, target, hook) in decoys.attempts() {
        let (outcome, pid) = enforced
            .cgroup
            .probe_as_user(&["unix-connect", kind, &target]);
        let record = enforced.expect_denied(
            &outcome,
            pid,
            &["unix-connect", kind, &target],
            "unix_socket",
            hook,
        );
        assert_eq!(record.family, "unix");
        let shown = record.unix_address.clone().unwrap();
        let tail: String = target
            .chars()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        assert!(shown.ends_with(&tail), "{shown} vs {target}");
    }
    let status = status_text();
    assert!(
        status.contains("unix sockets: enforced"),
        "status on a kernel with the unix hooks:\n{status}"
    );
}

/// The reason attach gave (its text after the kernel-version part varies).
fn enforced_reason(enforced: &Enforced) -> String {
    match &enforced.attachment.unix {
        UnixEnforcement::NotEnforced { reason } => {
            assert!(
                reason.starts_with("kernel lacks cgroup unix hooks, needs 6.7+"),
                "{reason}"
            );
            reason.clone()
        }
        UnixEnforcement::Enforced => panic!("unix programs attached on a kernel without the hooks"),
    }
}

#[test]
fn egress_unix_entries_and_the_commands_own_directories_are_reachable() {
    if !kernel_has_unix_hooks() {
        return; // Covered by the not-enforced assertion above.
    }
    let mut enforced = Enforced::new("unixallow", vec![]);
    let decoys = UnixDecoys::new("allow");
    let stream = decoys.stream.display().to_string();
    let dgram = decoys.dgram.display().to_string();
    let pins = enforced.attachment.pins.clone();
    let own = tempfile::Builder::new()
        .prefix("enforcer-unix-own-")
        .tempdir()
        .unwrap();
    set_mode(own.path(), 0o777);
    let own_server = own.path().join("srv.sock").display().to_string();

    // The attack first: with no rules, everything is denied, the
    // command's own server included.
    let (outcome, pid) = enforced
        .cgroup
        .probe_as_user(&["unix-own-server", &own_server]);
    enforced.expect_denied(
        &outcome,
        pid,
        &["unix-own-server", &own_server],
        "unix_socket",
        "connect_unix",
    );

    // egress.unix: an exact path, a segment glob, an abstract name.
    let glob = format!("{}/dg*.sock", decoys.dir.path().display());
    unix::set_rules(
        &pins,
        0,
        &[
            pattern(&stream),
            pattern(&glob),
            pattern(&decoys.abstract_stream),
        ],
    )
    .unwrap();
    for (kind, target) in [
        ("stream", stream.clone()),
        ("dgram", dgram.clone()),
        ("dgram-sendto", dgram.clone()),
        ("stream", decoys.abstract_stream.clone()),
    ] {
        let (outcome, _) = enforced
            .cgroup
            .probe_as_user(&["unix-connect", kind, &target]);
        assert_ok(&outcome, &format!("egress.unix entry {kind} {target}"));
    }
    // Not listed: the abstract datagram; a `..` walk out of an allowed
    // glob's directory stays denied.
    let dotdot = format!("{}/dgx/../stream.sock", decoys.dir.path().display());
    for (kind, target) in [
        ("dgram-sendto", decoys.abstract_dgram.clone()),
        ("stream", dotdot),
    ] {
        let args = ["unix-connect", kind, target.as_str()];
        let (outcome, pid) = enforced.cgroup.probe_as_user(&args);
        enforced.expect_denied(&outcome, pid, &args, "unix_socket", hook_of(kind));
    }

    // The command's own directory (what `enforcer run` writes for its
    // TMPDIR and working directory): its server works, for its cgroup only.
    unix::set_rules(
        &pins,
        enforced.cgroup.id(),
        &[unix::directory_pattern(own.path()).unwrap()],
    )
    .unwrap();
    let (outcome, _) = enforced
        .cgroup
        .probe_as_user(&["unix-own-server", &own_server]);
    assert_ok(&outcome, "a server under the command's own directory");
    let rules = unix::rules(&pins).unwrap();
    assert!(
        rules
            .iter()
            .any(|(cgroup, _)| *cgroup == enforced.cgroup.id()),
        "{rules:?}"
    );
    unix::clear_rules(&pins, enforced.cgroup.id()).unwrap();
    let (outcome, pid) = enforced
        .cgroup
        .probe_as_user(&["unix-own-server", &own_server]);
    enforced.expect_denied(
        &outcome,
        pid,
        &["unix-own-server", &own_server],
        "unix_socket",
        "connect_unix",
    );
}

fn hook_of(kind: &str) -> &'static str {
    if kind == "dgram-sendto" {
        "sendmsg_unix"
    } else {
        "connect_unix"
    }
}

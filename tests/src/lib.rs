//! Helpers for enforcer's workspace-level tests: cgroup guards that clean
//! up on drop (panics included), and probes spawned into a cgroup.
//!
//! cgroup v2 moves whole processes and cargo's test threads share one, so
//! every probe is a child process that joins the cgroup between fork and
//! exec; the test process itself never enters an enforced cgroup.
#![deny(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Panics unless running as root: kernel tests must fail, never skip, when
/// they cannot run.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "kernel tests need root (cgroup v2 + BPF); run `sudo cargo xtask test` or `cargo xtask test-vm`"
    );
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup_mount() -> PathBuf {
    enforcer::kernel::CgroupMount::find()
        .expect("cgroup v2 mount")
        .path
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Where enforcer pins links and maps, one directory per cgroup id.
const PIN_ROOT: &str = "/sys/fs/bpf/enforcer";

/// Prefix of every cgroup a test makes.
const TEST_CGROUP_PREFIX: &str = "enforcer-test-";

/// What a sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Stale test cgroups removed (names under the cgroup v2 mount).
    pub cgroups: Vec<String>,
    /// Pin directories removed (cgroup ids whose cgroup no longer exists).
    pub pins: Vec<String>,
}

/// The pid a test cgroup name was made by (`enforcer-test-<label>-<pid>-<n>`).
pub fn test_cgroup_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TEST_CGROUP_PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let (Some(n), Some(pid), Some(label)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    if label.is_empty() || n.parse::<u32>().is_err() {
        return None;
    }
    pid.parse().ok()
}

/// Removes what SIGKILLed test binaries left behind, and nothing else:
/// cgroups named `enforcer-test-*` directly under the cgroup v2 mount whose
/// creating process is gone and that hold no process (their pins first),
/// then pin directories under /sys/fs/bpf/enforcer/<id>/ whose cgroup id
/// no longer exists anywhere in the hierarchy.
pub fn sweep_stale() -> Swept {
    let mut swept = Swept::default();
    let Ok(mount) = enforcer::kernel::CgroupMount::find().map(|m| m.path) else {
        return swept;
    };
    for entry in fs::read_dir(&mount).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = test_cgroup_owner(&name) else {
            continue;
        };
        let path = entry.path();
        let owner_alive =
            owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists();
        let empty =
            fs::read_to_string(path.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty());
        if owner_alive || !empty {
            continue;
        }
        if let Ok(meta) = fs::metadata(&path) {
            let pins =
                Path::new(PIN_ROOT).join(std::os::unix::fs::MetadataExt::ino(&meta).to_string());
            if pins.exists() {
                let id = pins.file_name().map(|n| n.to_string_lossy().into_owned());
                let pin_dirs = enforcer::kernel::paths::PinDirs { root: pins };
                if enforcer::kernel::attach::detach_pins(&pin_dirs).is_ok() {
                    swept.pins.extend(id);
                }
            }
        }
        if fs::remove_dir(&path).is_ok() {
            swept.cgroups.push(name);
        }
    }
    // Pin directories first, then the cgroup ids: a cgroup is made before
    // its pins, so a pin directory listed here has its cgroup in the walk.
    let pin_dirs: Vec<(String, PathBuf)> = fs::read_dir(PIN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.parse::<u64>().ok().map(|_| (name, entry.path()))
        })
        .collect();
    if pin_dirs.is_empty() {
        return swept;
    }
    let live = cgroup_ids(&mount);
    for (name, path) in pin_dirs {
        let id: u64 = name.parse().unwrap_or(0);
        if live.contains(&id) {
            continue;
        }
        let pins = enforcer::kernel::paths::PinDirs { root: path };
        if enforcer::kernel::attach::detach_pins(&pins).is_ok() {
            swept.pins.push(name);
        }
    }
    swept
}

/// Every cgroup id (directory inode) under the cgroup v2 mount.
fn cgroup_ids(mount: &Path) -> std::collections::HashSet<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mut ids = std::collections::HashSet::new();
    let mut stack = vec![mount.to_owned()];
    while let Some(dir) = stack.pop() {
        if let Ok(meta) = fs::metadata(&dir) {
            ids.insert(meta.ino());
        }
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    ids
}

/// Runs `command` to its end within `limit`. Past it the child is killed
/// and, should it have attached to the root cgroup, the root cgroup's
/// enforcer pins are removed before the test fails.
pub fn output_within_or_unpin_root(command: &mut Command, limit: Duration) -> std::process::Output {
    use std::io::Read as _;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            use std::os::unix::fs::MetadataExt as _;
            let root_id = fs::metadata(cgroup_mount()).unwrap().ino();
            let pins = Path::new(PIN_ROOT).join(root_id.to_string());
            if pins.exists() {
                let _ = enforcer::kernel::attach::detach_pins(&enforcer::kernel::paths::PinDirs {
                    root: pins,
                });
            }
            panic!("{command:?} still ran after {limit:?}: killed, root cgroup pins removed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// A uniquely named child cgroup this test made. On drop it kills what is
/// left in it (only this test's probes can be there), removes the enforcer
/// pins of its id (detaching every program) and removes the directory.
pub struct TestCgroup {
    /// Name relative to the cgroup v2 mount.
    pub name: String,
    /// Absolute directory.
    pub path: PathBuf,
}

impl TestCgroup {
    /// Creates `enforcer-test-<label>-<pid>-<n>` under the cgroup v2 mount
    /// (the first one in a process sweeps what killed test runs left).
    pub fn new(label: &str) -> Self {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(|| {
            let swept = sweep_stale();
            if swept != Swept::default() {
                eprintln!("enforcer-tests: swept stale test state: {swept:?}");
            }
        });
        let name = format!(
            "enforcer-test-{label}-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        let path = cgroup_mount().join(&name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { name, path }
    }

    /// The cgroup id (inode number of the directory).
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(&self.path).unwrap().ino()
    }

    /// Where enforcer pins this cgroup's links and maps.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(PIN_ROOT).join(self.id().to_string())
    }

    /// A command that joins this cgroup between fork and exec.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .unwrap();
        let mut command = Command::new(program);
        // SAFETY: only async-signal-safe calls (write, close-on-drop of an
        // fd the child owns a copy of) run between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let written = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// Runs enforcer-probe with `args` inside this cgroup; returns what it
    /// reported and its pid.
    pub fn probe(&self, args: &[&str]) -> (ProbeOutcome, u32) {
        let child = self
            .command(probe_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let pid = child.id();
        let output = child.wait_with_output().unwrap();
        (ProbeOutcome::parse(&output.stdout, args), pid)
    }

    /// Runs enforcer-probe with `args` outside any enforced cgroup.
    pub fn probe_outside(args: &[&str]) -> ProbeOutcome {
        let output = Command::new(probe_bin())
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        ProbeOutcome::parse(&output.stdout, args)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let pins = Path::new(PIN_ROOT).join(
            fs::metadata(&self.path)
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m).to_string())
                .unwrap_or_default(),
        );
        if pins.join("links").exists() || pins.join("maps").exists() {
            let _ = enforcer::kernel::attach::detach_pins(&enforcer::kernel::paths::PinDirs {
                root: pins,
            });
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Path of the enforcer-probe binary built beside the tests.
pub fn probe_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ENFORCER_PROBE") {
        return PathBuf::from(path);
    }
    sibling_binary("enforcer-probe")
}

/// Path of the `enforcer` binary (`ENFORCER_BIN`, else next to the test binary's target dir).
pub fn enforcer_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ENFORCER_BIN") {
        return PathBuf::from(path);
    }
    sibling_binary("enforcer")
}

fn sibling_binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not found; build it first (`cargo build --bins`) or set ENFORCER_BIN / ENFORCER_PROBE",
        path.display()
    );
    path
}

/// What a probe reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The operation succeeded.
    Ok,
    /// It failed with this errno.
    Err(i32, String),
}

impl ProbeOutcome {
    fn parse(stdout: &[u8], args: &[&str]) -> Self {
        let text = String::from_utf8_lossy(stdout);
        let line = text.lines().last().unwrap_or("").trim();
        if line == "ok" {
            return Self::Ok;
        }
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next().and_then(|n| n.parse().ok())) {
            (Some("err"), Some(errno)) => Self::Err(errno, parts.next().unwrap_or("").to_owned()),
            _ => panic!("probe {args:?} printed {text:?}"),
        }
    }

    /// True when it failed with EPERM.
    pub fn is_eperm(&self) -> bool {
        matches!(self, Self::Err(errno, _) if *errno == libc::EPERM)
    }
}

/// A probe left running (`enforcer-probe listen ADDR`): holds a socket until dropped.
pub struct HeldListener {
    child: Child,
    /// The port it listens on.
    pub port: u16,
}

impl HeldListener {
    /// Starts `enforcer-probe listen ADDR` in `cgroup`, waiting until it listens.
    pub fn start(cgroup: &TestCgroup, addr: &str) -> Self {
        let mut child = cgroup
            .command(probe_bin())
            .args(["listen", addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("listener printed {line:?}"));
        Self { child, port }
    }

    /// Closes its stdin and waits until it has exited (its socket released).
    pub fn stop(mut self) {
        drop(self.child.stdin.take());
        self.child.wait().unwrap();
    }
}

impl Drop for HeldListener {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A non-loopback address of this host: `ENFORCER_TEST_HOST_ADDR` (the VM
/// sets it after adding one to `lo`), else the first global one `ip` lists.
pub fn host_address(v6: bool) -> Option<std::net::IpAddr> {
    if let Some(addr) = std::env::var("ENFORCER_TEST_HOST_ADDR")
        .ok()
        .and_then(|text| text.parse::<std::net::IpAddr>().ok())
        .filter(|addr| addr.is_ipv6() == v6)
    {
        return Some(addr);
    }
    let output = Command::new("ip")
        .args([
            if v6 { "-6" } else { "-4" },
            "-o",
            "addr",
            "show",
            "scope",
            "global",
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let field = line.split_whitespace().nth(3)?;
            field.split('/').next()?.parse().ok()
        })
}

#[cfg(test)]
mod tests {
    use super::test_cgroup_owner;

    #[test]
    fn only_test_cgroup_names_have_an_owner() {
        assert_eq!(
            test_cgroup_owner("enforcer-test-restart-4242-0"),
            Some(4242)
        );
        assert_eq!(test_cgroup_owner("enforcer-test-two-words-7-12"), Some(7));
        assert_eq!(test_cgroup_owner("enforcer-run-4242"), None);
        assert_eq!(test_cgroup_owner("enforcer-test-4242-0"), None);
        assert_eq!(test_cgroup_owner("enforcer-test-x-y-0"), None);
        assert_eq!(test_cgroup_owner("system.slice"), None);
    }
}

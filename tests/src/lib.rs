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

mod standins;
pub use standins::{
    CLAUDE_CODE_VERSION, MockProvider, NetNs, Owned, PLACEHOLDER_KEY, bounded, seed_claude_config,
    spawn_ready,
};

/// How long a test waits for `enforcer attach` to come up (or to refuse)
/// before it fails. A bound against hangs, not a time assertion: under
/// QEMU TCG (`cargo xtask test-vm`) loading and verifying the programs
/// alone takes about 15 s, and over 30 s with two tests attaching at once
/// on a loaded host.
pub const DAEMON_START_LIMIT: Duration = Duration::from_secs(120);

/// True when the running kernel's release is at least `major.minor`
/// (`/proc/sys/kernel/osrelease`, e.g. `6.1.0-28-amd64`).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(['.', '-']);
    let mut next = || -> u32 {
        parts
            .next()
            .and_then(|part| part.parse().ok())
            .unwrap_or_else(|| panic!("unreadable kernel release {release:?}"))
    };
    (next(), next()) >= (major, minor)
}

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

    /// Runs enforcer-probe with `args` inside this cgroup as the
    /// unprivileged test user ([`unprivileged_user`]), as an agent would.
    pub fn probe_as_user(&self, args: &[&str]) -> (ProbeOutcome, u32) {
        let child = self
            .command(probe_bin())
            .env("ENFORCER_PROBE_USER", unprivileged_user())
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
    /// Reads the probe's last stdout line (`ok` or `err ERRNO MESSAGE`).
    pub fn parse(stdout: &[u8], args: &[&str]) -> Self {
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

/// `UID:GID` of the unprivileged user probes drop to: `enforcer-test`
/// (made by `cargo xtask setup`) when it exists, else `nobody`'s 65534
/// (the VM has no user database).
pub fn unprivileged_user() -> String {
    fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"enforcer-test") && fields.len() > 3)
                .then(|| format!("{}:{}", fields[2], fields[3]))
        })
        .unwrap_or_else(|| "65534:65534".into())
}

/// A probe run in steps: it prints a line (e.g. `bound PORT`), waits for
/// one line on stdin, then makes its attempt and reports as usual.
pub struct StagedProbe {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    args: Vec<String>,
}

impl StagedProbe {
    /// Starts enforcer-probe with `args` in `cgroup` as the unprivileged user.
    pub fn start(cgroup: &TestCgroup, args: &[&str]) -> Self {
        let mut child = cgroup
            .command(probe_bin())
            .env("ENFORCER_PROBE_USER", unprivileged_user())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdout,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    /// The probe's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the probe printed.
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }

    /// Lets the probe go on and returns what it reported.
    pub fn proceed(mut self) -> ProbeOutcome {
        use std::io::{Read as _, Write as _};
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        drop(stdin);
        let mut rest = Vec::new();
        self.stdout.read_to_end(&mut rest).unwrap();
        self.child.wait().unwrap();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        ProbeOutcome::parse(&rest, &args)
    }
}

impl Drop for StagedProbe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A listener of the test (outside every enforced cgroup) standing where an
/// attack would land. It counts every connection it accepts and every
/// byte or datagram it receives; any of them fails the test.
pub struct Decoy {
    /// The decoy's address.
    pub addr: std::net::SocketAddr,
    hits: std::sync::Arc<AtomicU32>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Decoy {
    /// Watches a bound TCP listener (already listening).
    pub fn tcp(listener: std::net::TcpListener) -> Self {
        use std::io::Read as _;
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        Self::watch(addr, move |hits| match listener.accept() {
            Ok((mut stream, _)) => {
                hits.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 64];
                if let Ok(n) = stream.read(&mut buf) {
                    hits.fetch_add(u32::try_from(n).unwrap_or(u32::MAX), Ordering::SeqCst);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        })
    }

    /// Watches a bound UDP socket.
    pub fn udp(socket: std::net::UdpSocket) -> Self {
        let addr = socket.local_addr().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        Self::watch(addr, move |hits| {
            let mut buf = [0u8; 2048];
            if let Ok(n) = socket.recv(&mut buf) {
                hits.fetch_add(
                    u32::try_from(n.max(1)).unwrap_or(u32::MAX),
                    Ordering::SeqCst,
                );
            }
        })
    }

    fn watch(
        addr: std::net::SocketAddr,
        mut step: impl FnMut(&AtomicU32) + Send + 'static,
    ) -> Self {
        let hits = std::sync::Arc::new(AtomicU32::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (hits, stop) = (hits.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    step(&hits);
                }
            })
        };
        Self {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections plus bytes received so far.
    pub fn hits(&self) -> u32 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Waits a moment for stragglers, then panics if anything arrived.
    pub fn assert_untouched(&self, what: &str) {
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            self.hits(),
            0,
            "{what}: the decoy at {} (outside the cgroup) was reached",
            self.addr
        );
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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

/// A non-loopback address of this host: `ENFORCER_TEST_HOST_ADDR` (IPv4) or
/// `ENFORCER_TEST_HOST_ADDR6` (the VM sets them after adding them to `lo`),
/// else the first global one `ip` lists.
pub fn host_address(v6: bool) -> Option<std::net::IpAddr> {
    let variable = if v6 {
        "ENFORCER_TEST_HOST_ADDR6"
    } else {
        "ENFORCER_TEST_HOST_ADDR"
    };
    if let Some(addr) = std::env::var(variable)
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

/// An `AF_PACKET` socket on `lo` that sees every packet sent to this host's
/// own addresses: the receiving stack drops source-routed packets, so this
/// is how a test proves whether one left its sender.
///
/// Only one watch lives at a time in a test binary: the watch sees every
/// packet on `lo`, so a parallel test's outside-the-cgroup control (which
/// sends the very packet the other test must not see) would be counted
/// against it.
pub struct PacketWatch {
    fd: std::os::fd::OwnedFd,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

/// Held by the one live [`PacketWatch`].
static PACKET_WATCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl PacketWatch {
    /// Starts watching `lo`, after any other watch in this binary has ended.
    pub fn loopback() -> Self {
        use std::os::fd::FromRawFd as _;
        // A test that failed while holding the lock leaves nothing behind
        // that the next watch depends on.
        let one_at_a_time = PACKET_WATCH
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: the name is NUL-terminated.
        let index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert_ne!(index, 0, "no lo interface");
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = i32::try_from(index).unwrap();
        // SAFETY: addr is a sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "binding to lo: {}", std::io::Error::last_os_error());
        Self {
            fd,
            _one_at_a_time: one_at_a_time,
        }
    }

    /// Drops what was seen so far.
    pub fn clear(&self) {
        let _ = self.drain(|_| false);
    }

    /// Waits a moment, then counts the packets seen since the last call that
    /// go to `destination` with an IPv6 routing header or an IPv4 LSRR/SSRR
    /// option.
    pub fn source_routed_to(&self, destination: std::net::IpAddr) -> usize {
        std::thread::sleep(Duration::from_millis(300));
        self.drain(|packet| is_source_routed_to(packet, destination))
    }

    fn drain(&self, mut matches: impl FnMut(&[u8]) -> bool) -> usize {
        let mut buf = [0u8; 2048];
        let mut found = 0;
        loop {
            // SAFETY: buf is valid for writing its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else {
                return found;
            };
            if matches(&buf[..n]) {
                found += 1;
            }
        }
    }
}

/// Whether an IP packet (from its network header) is source-routed to `destination`.
fn is_source_routed_to(packet: &[u8], destination: std::net::IpAddr) -> bool {
    match (packet.first().map(|b| b >> 4), destination) {
        (Some(6), std::net::IpAddr::V6(dst)) if packet.len() >= 40 => {
            packet[6] == 43 && packet[24..40] == dst.octets()
        }
        (Some(4), std::net::IpAddr::V4(dst)) if packet.len() >= 20 => {
            let header = usize::from(packet[0] & 0x0f) * 4;
            packet[16..20] == dst.octets()
                && packet.len() >= header
                && packet[20..header]
                    .iter()
                    .find(|&&b| b != 1)
                    .is_some_and(|&kind| kind == 131 || kind == 137)
        }
        _ => false,
    }
}

/// A DNS server on loopback standing in for the daemon's `--dns-upstream`:
/// it answers A and AAAA questions for the names it was given (with their
/// TTLs), NXDOMAIN for every other name, and counts the queries per name.
/// Nothing under test ever asks the host's own resolver.
pub struct MockDns {
    /// Where it listens (UDP).
    pub addr: std::net::SocketAddr,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockDns {
    /// Serves `records`: `(name, address, TTL seconds)`; a name may repeat.
    pub fn start(records: &[(&str, std::net::IpAddr, u32)]) -> Self {
        use hickory_proto::{
            op::{Message, MessageType, ResponseCode},
            rr::{Name, RData, Record, RecordType, rdata},
        };
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let records: Vec<(Name, std::net::IpAddr, u32)> = records
            .iter()
            .map(|(name, ip, ttl)| (Name::from_ascii(format!("{name}.")).unwrap(), *ip, *ttl))
            .collect();
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (asked, stop) = (asked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let Ok(query) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    let Some(question) = query.queries().first().cloned() else {
                        continue;
                    };
                    let name = question.name().to_ascii().to_lowercase();
                    asked
                        .lock()
                        .unwrap()
                        .push(name.trim_end_matches('.').to_owned());
                    let mut reply = Message::new();
                    reply
                        .set_id(query.id())
                        .set_message_type(MessageType::Response)
                        .set_op_code(query.op_code())
                        .set_recursion_desired(query.recursion_desired())
                        .set_recursion_available(true)
                        .add_query(question.clone());
                    let known: Vec<_> = records
                        .iter()
                        .filter(|(n, _, _)| n.to_ascii().eq_ignore_ascii_case(&name))
                        .collect();
                    if known.is_empty() {
                        reply.set_response_code(ResponseCode::NXDomain);
                    }
                    for (record_name, ip, ttl) in known {
                        let data = match (question.query_type(), ip) {
                            (RecordType::A, std::net::IpAddr::V4(v4)) => RData::A(rdata::A(*v4)),
                            (RecordType::AAAA, std::net::IpAddr::V6(v6)) => {
                                RData::AAAA(rdata::AAAA(*v6))
                            }
                            _ => continue,
                        };
                        reply.add_answer(Record::from_rdata(record_name.clone(), *ttl, data));
                    }
                    if let Ok(bytes) = reply.to_vec() {
                        let _ = socket.send_to(&bytes, from);
                    }
                }
            })
        };
        Self {
            addr,
            asked,
            stop,
            thread: Some(thread),
        }
    }

    /// The names asked so far (lower case, no final dot), in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for MockDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A test CA and one leaf certificate for `names` (the first is the
/// subject), written as `ca.pem`, `leaf.pem` and `leaf.key` in `dir` with
/// `openssl` (P-256, two days); returns the CA's path.
pub fn test_ca(dir: &Path, names: &[&str]) -> PathBuf {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (cargo xtask setup installs it)");
        assert!(output.status.success(), "openssl {args:?}: {output:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
            &["-subj", "/CN=enforcer test CA"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", "leaf.key", "-out", "leaf.csr"],
            &["-subj", &format!("/CN={}", names[0])],
        ]
        .concat(),
    );
    let alt: Vec<String> = names.iter().map(|name| format!("DNS:{name}")).collect();
    fs::write(
        dir.join("leaf.ext"),
        format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            alt.join(",")
        ),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    dir.join("ca.pem")
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

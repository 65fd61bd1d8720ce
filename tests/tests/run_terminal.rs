//! `enforcer run` as a user sees it (issue 21): the command owns its
//! terminal; the enforcer prints one line before it, nothing while it runs,
//! and a summary of the run's denies after it. Real terminals (tmux on a
//! private socket), a real full-screen program (Python curses), real
//! kernel and proxy denies. Needs root; fails without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use enforcer_tests::{
    CLAUDE_CODE_VERSION, MockProvider, PLACEHOLDER_KEY, TestCgroup, enforcer_bin, require_root,
    seed_claude_config,
};

/// The unprivileged user the commands run as.
const USER: &str = "enforcer-test";

/// A full-screen program: draws with curses and, while drawing, makes
/// `KERNEL` direct connections to a loopback port it does not own (the
/// kernel refuses them) and `PROXY` CONNECTs the proxy refuses; then shows
/// what it saw and waits for a key.
const CURSES_PROGRAM: &str = r#"
import curses, os, socket, sys
port, kernel, proxy = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
proxy_host, proxy_port = os.environ["HTTPS_PROXY"].rsplit("/", 1)[1].rsplit(":", 1)

def main(screen):
    screen.addstr(0, 0, "CURSES-DEMO: drawing")
    refused, forbidden = 0, 0
    for i in range(kernel):
        screen.addstr(1, 0, "frame %d" % i)
        screen.refresh()
        try:
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
        except PermissionError:
            refused += 1
    for i in range(proxy):
        screen.addstr(1, 0, "frame %d" % (kernel + i))
        screen.refresh()
        tunnel = socket.create_connection((proxy_host, int(proxy_port)), timeout=5)
        tunnel.sendall(b"CONNECT denied.test:443 HTTP/1.1\r\nHost: denied.test:443\r\n\r\n")
        if tunnel.recv(64).startswith(b"HTTP/1.1 403"):
            forbidden += 1
        tunnel.close()
    screen.addstr(2, 0, "kernel refused %d, proxy refused %d" % (refused, forbidden))
    screen.addstr(3, 0, "WAITING for q")
    screen.refresh()
    while screen.getch() != ord("q"):
        pass

curses.wrapper(main)
"#;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A tmux server on a private socket with one session this test made;
/// killed (session and server, by that socket) on drop, panics included.
struct Tmux {
    socket: PathBuf,
    session: String,
}

impl Tmux {
    /// Starts `command` (argv) in a detached 120x40 session whose panes stay
    /// after their command exits (to read the exit status and the screen).
    fn start(dir: &Path, command: &[String]) -> Self {
        Self::start_in(dir, dir, command)
    }

    /// [`Tmux::start`] with the pane's working directory `cwd`.
    fn start_in(dir: &Path, cwd: &Path, command: &[String]) -> Self {
        let config = dir.join("tmux.conf");
        std::fs::write(
            &config,
            "set -g remain-on-exit on\nset -g history-limit 5000\n",
        )
        .unwrap();
        let session = format!(
            "enforcer-run-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let tmux = Self {
            socket: dir.join("tmux.sock"),
            session,
        };
        let line = command
            .iter()
            .map(|word| shell_quote(word))
            .collect::<Vec<_>>()
            .join(" ");
        let output = Command::new("tmux")
            .arg("-S")
            .arg(&tmux.socket)
            .arg("-f")
            .arg(&config)
            .args([
                "new-session",
                "-d",
                "-s",
                &tmux.session,
                "-x",
                "120",
                "-y",
                "40",
                "-c",
            ])
            .arg(cwd)
            // NO_COLOR unset: only the enforcer's own rules keep the terminal clean.
            // The shell around the command prints its exit status: tmux's own
            // record of a dead pane's status was seen missing (the pane's
            // process left unreaped) on this host.
            .arg(format!("env -u NO_COLOR {line}; echo {EXIT_MARK}$?"))
            .output()
            .expect("tmux (cargo xtask setup installs it)");
        assert!(output.status.success(), "tmux new-session: {output:?}");
        tmux
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// The pane's visible text; with `escapes`, its cells' attributes as
    /// SGR sequences.
    fn capture(&self, escapes: bool) -> String {
        // -J: a line the terminal wrapped comes back whole.
        let mut args = vec!["capture-pane", "-p", "-J", "-t", &self.session];
        if escapes {
            args.push("-e");
        }
        self.capture_with(&args)
    }

    /// The pane's text with its scrollback (tmux scrolls a dead pane's
    /// screen to print "Pane is dead").
    fn capture_all(&self) -> String {
        self.capture_with(&["capture-pane", "-p", "-J", "-S", "-", "-t", &self.session])
    }

    fn capture_with(&self, args: &[&str]) -> String {
        let output = self.tmux(args);
        assert!(output.status.success(), "capture-pane: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits until the pane shows `text`; returns the plain capture.
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.capture(false);
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} never appeared in the pane:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the pane's command has exited; returns its exit status
    /// (printed by the shell around it as [`EXIT_MARK`]`N`).
    fn wait_exit(&self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = self.capture_all();
            if let Some(status) = text
                .lines()
                // `^C` echoed by the terminal may precede it on the line.
                .find_map(|line| line.split_once(EXIT_MARK).map(|(_, status)| status))
            {
                return status.trim().parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "the pane's command did not exit:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `text` as it is (no key names).
    fn send_text(&self, text: &str) {
        let output = self.tmux(&["send-keys", "-t", &self.session, "-l", text]);
        assert!(output.status.success(), "send-keys -l: {output:?}");
    }

    fn send_keys(&self, keys: &str) {
        let output = self.tmux(&["send-keys", "-t", &self.session, keys]);
        assert!(output.status.success(), "send-keys: {output:?}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-session", "-t", &self.session]);
        // Only the server on this test's own socket.
        let _ = self.tmux(&["kill-server"]);
    }
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A directory the unprivileged user can read (the program lives there).
fn work_dir(label: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("enforcer-{label}-"))
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `enforcer run` with its own state directory, enforcing in-process (the
/// control socket named is never there), as the unprivileged user.
/// What the shell around a pane's command prints before its exit status.
const EXIT_MARK: &str = "pane-exit-status=";

fn run_argv(state: &Path, flags: &[&str], command: &[&str]) -> Vec<String> {
    let mut argv = vec![
        enforcer_bin().display().to_string(),
        "run".into(),
        "--user".into(),
        USER.into(),
        "--state-dir".into(),
        state.display().to_string(),
        "--control-socket".into(),
        state.join("no-daemon.sock").display().to_string(),
    ];
    argv.extend(flags.iter().map(|f| (*f).to_owned()));
    argv.push("--".into());
    argv.extend(command.iter().map(|c| (*c).to_owned()));
    argv
}

fn run_piped(argv: &[String]) -> Output {
    Command::new(&argv[0])
        .args(&argv[1..])
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Every SGR sequence (`ESC [ ... m`) in `text`, by its parameters.
fn sgr_parameters(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("\u{1b}[") {
        let after = &rest[at + 2..];
        let end = after
            .find(|c: char| !(c.is_ascii_digit() || c == ';'))
            .unwrap_or(after.len());
        if after[end..].starts_with('m') {
            found.push(after[..end].to_owned());
        }
        rest = &after[end..];
    }
    found
}

/// Lines of `screen` that carry every one of `words`.
fn line_with<'a>(screen: &'a str, words: &[&str]) -> Option<&'a str> {
    screen
        .lines()
        .find(|line| words.iter().all(|word| line.contains(word)))
}

#[test]
fn a_full_screen_command_keeps_its_terminal_and_the_summary_follows_it() {
    require_root();
    let work = work_dir("curses");
    let state = tempfile::tempdir().unwrap();
    let program = work.path().join("draw.py");
    std::fs::write(&program, CURSES_PROGRAM).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Held by this test (outside the run's cgroup): the kernel refuses the
    // command's connects to it.
    let decoy = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = decoy.local_addr().unwrap().port().to_string();
    let argv = run_argv(
        state.path(),
        &[],
        &["python3", program.to_str().unwrap(), &port, "3", "2"],
    );
    let tmux = Tmux::start(work.path(), &argv);

    // While it runs: the program's screen, and nothing of the enforcer's.
    let screen = tmux.wait_for("WAITING for q");
    assert!(
        screen.contains("kernel refused 3, proxy refused 2"),
        "the program met the denies it expects:\n{screen}"
    );
    for word in ["enforcer", "WARN", "INFO", "deny", "not_allowlisted"] {
        assert!(
            !screen.contains(word),
            "{word:?} on the command's screen while it runs:\n{screen}"
        );
    }
    let styled = tmux.capture(true);
    // The only attributes on screen are curses' own default colours.
    let foreign: Vec<String> = sgr_parameters(&styled)
        .into_iter()
        .filter(|p| !["", "0", "37", "40", "39", "49"].contains(&p.as_str()))
        .collect();
    assert!(
        foreign.is_empty(),
        "escape codes the program did not draw: {foreign:?}\n{styled:?}"
    );

    // After it exits: its status, then the summary below its output.
    tmux.send_keys("q");
    assert_eq!(tmux.wait_exit(), 0, "{}", tmux.capture(false));
    let after = tmux.capture_all();
    assert!(
        line_with(
            &after,
            &["enforcer: enforcing in-process", "enforcer status"]
        )
        .is_some(),
        "the start-up line:\n{after}"
    );
    assert!(
        after.contains("enforcer: denied 5 connections\n"),
        "3 kernel and 2 proxy denies:\n{after}"
    );
    let kernel_line = line_with(
        &after,
        &[
            "3x",
            &format!("127.0.0.2:{port}"),
            "loopback_port_not_owned",
            "(kernel)",
        ],
    );
    assert!(kernel_line.is_some(), "{after}");
    let proxy_line = line_with(
        &after,
        &["2x", "denied.test:443", "not_allowlisted", "(proxy)"],
    );
    assert!(proxy_line.is_some(), "{after}");
    let state_dir = state.path().display().to_string();
    assert!(
        line_with(
            &after,
            &["enforcer events --since ", "--decision deny", &state_dir]
        )
        .is_some(),
        "{after}"
    );
    assert!(
        after.contains("enforcer allow denied.test:443 --ttl 1h\n"),
        "{after}"
    );
    // In-process: no daemon would take that grant now; the summary says so.
    assert!(
        line_with(
            &after,
            &[
                "(a grant needs the daemon: ",
                "systemctl start enforcer; later runs use it)"
            ]
        )
        .is_some(),
        "{after}"
    );
    assert!(
        !after.contains("policy suggest"),
        "no such command yet:\n{after}"
    );
    drop(tmux);

    // The enforcer's log went to its file, plain.
    let logs: Vec<PathBuf> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("run-") && name.ends_with(".log")
        })
        .collect();
    assert_eq!(logs.len(), 1, "one run log: {logs:?}");
    let log = std::fs::read_to_string(&logs[0]).unwrap();
    // The command's own (the start-up self-test's probe is denied too, and
    // logged, under its own comm).
    assert_eq!(
        log.lines()
            .filter(|line| line.contains("kernel deny") && line.contains("comm=python3"))
            .count(),
        3,
        "the kernel denies are in the run log:\n{log}"
    );
    assert!(log.contains("not_allowlisted"), "{log}");
    assert!(!log.contains('\u{1b}'), "no escape codes in the log file");
    drop(decoy);
}

#[test]
fn ctrl_c_is_the_commands_and_its_130_passes_through() {
    require_root();
    let work = work_dir("interrupt");
    let state = tempfile::tempdir().unwrap();
    let argv = run_argv(
        state.path(),
        &["--quiet"],
        &[
            "sh",
            "-c",
            "grep '^0::' /proc/self/cgroup; echo READY-FOR-CTRL-C; exec sleep 120",
        ],
    );
    let tmux = Tmux::start(work.path(), &argv);
    let screen = tmux.wait_for("READY-FOR-CTRL-C");
    let transient = screen
        .lines()
        .find_map(|line| line.strip_prefix("0::/"))
        .expect("the command's cgroup")
        .trim()
        .to_owned();
    assert!(transient.starts_with("enforcer-run-"), "{screen}");
    // The terminal sends SIGINT to the foreground process group: the
    // enforcer and the command alike. The command dies of it; the enforcer
    // stays, cleans up and reports 128 + 2.
    tmux.send_keys("C-c");
    assert_eq!(tmux.wait_exit(), 130, "{}", tmux.capture(false));
    let after = tmux.capture_all();
    assert!(
        !after.contains("enforcer:"),
        "--quiet and nothing denied: the enforcer said nothing:\n{after}"
    );
    assert!(
        !enforcer_tests::cgroup_mount().join(&transient).exists(),
        "the enforcer survived Ctrl-C and removed {transient}"
    );
}

#[test]
fn through_a_pipe_no_escape_codes_and_exit_statuses_pass_through() {
    require_root();
    let state = tempfile::tempdir().unwrap();
    let decoy = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = decoy.local_addr().unwrap().port();
    let connect_twice_then_fail = format!(
        "import socket, sys\nfor _ in range(2):\n    try: socket.create_connection(('127.0.0.2', {port}), timeout=5)\n    except PermissionError: print('refused')\nsys.exit(1)"
    );
    let denied = run_piped(&run_argv(
        state.path(),
        &[],
        &["python3", "-c", &connect_twice_then_fail],
    ));
    assert_eq!(denied.status.code(), Some(1), "{denied:?}");
    assert_eq!(
        String::from_utf8_lossy(&denied.stdout),
        "refused\nrefused\n"
    );
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.stderr.contains(&0x1b) && !denied.stdout.contains(&0x1b),
        "no escape codes through a pipe: {stderr:?}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0].starts_with("enforcer: enforcing in-process, fallback policy"),
        "{stderr}"
    );
    assert_eq!(lines[1], "enforcer: denied 2 connections", "{stderr}");
    assert!(
        line_with(
            &stderr,
            &[
                "2x",
                &format!("127.0.0.2:{port}"),
                "loopback_port_not_owned"
            ]
        )
        .is_some(),
        "{stderr}"
    );
    for word in ["WARN", "INFO", "kernel deny", "using the embedded fallback"] {
        assert!(!stderr.contains(word), "a log line on stderr: {stderr}");
    }

    // Exit 0, and with --quiet nothing at all when nothing was denied.
    let quiet = run_piped(&run_argv(state.path(), &["--quiet"], &["true"]));
    assert_eq!(quiet.status.code(), Some(0), "{quiet:?}");
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "", "{quiet:?}");
    let plain = run_piped(&run_argv(state.path(), &[], &["true"]));
    assert_eq!(plain.status.code(), Some(0), "{plain:?}");
    let plain_err = String::from_utf8_lossy(&plain.stderr);
    assert_eq!(plain_err.lines().count(), 2, "{plain_err}");
    assert_eq!(
        plain_err.lines().nth(1),
        Some("enforcer: nothing was denied")
    );

    // --verbose: the decisions live, one plain line each; --summary off.
    let connect_once = format!(
        "import socket\ntry: socket.create_connection(('127.0.0.2', {port}), timeout=5)\nexcept PermissionError: pass\n"
    );
    let verbose = run_piped(&run_argv(
        state.path(),
        &["--verbose", "--quiet", "--summary", "off"],
        &["python3", "-c", &connect_once],
    ));
    assert_eq!(verbose.status.code(), Some(0), "{verbose:?}");
    let verbose_err = String::from_utf8_lossy(&verbose.stderr);
    assert!(!verbose.stderr.contains(&0x1b), "{verbose_err:?}");
    let decision_lines: Vec<&str> = verbose_err.lines().collect();
    assert_eq!(decision_lines.len(), 1, "{verbose_err}");
    assert!(
        decision_lines[0].starts_with("enforcer: ")
            && decision_lines[0].contains("kernel  deny loopback_port_not_owned")
            && decision_lines[0].contains(&format!("dst=127.0.0.2:{port}")),
        "{verbose_err}"
    );
    drop(decoy);
}

#[test]
fn under_a_daemon_the_summary_counts_only_the_runs_cgroup() {
    require_root();
    let cgroup = TestCgroup::new("runsummary");
    let state = tempfile::tempdir().unwrap();
    let socket = state.path().join("control.sock");
    let mut daemon = Command::new(enforcer_bin())
        .args(["attach", "--cgroup", &cgroup.name])
        .args([
            "--proxy-listen",
            "127.0.0.1:0",
            "--router-listen",
            "127.0.0.1:0",
        ])
        .arg("--control-socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(state.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(state.path().join("attach.log")).unwrap())
        .spawn()
        .unwrap();
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _daemon = {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Some(status) = daemon.try_wait().unwrap() {
                panic!("enforcer attach exited early with {status}");
            }
            assert!(Instant::now() < deadline, "the daemon never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Stop(daemon)
    };
    let decoy = TcpListener::bind("127.0.0.2:0").unwrap();
    let target = decoy.local_addr().unwrap().to_string();
    // A deny in the daemon's cgroup, outside the run: not the run's.
    let (outcome, _) = cgroup.probe(&["tcp-connect", &target]);
    assert!(outcome.is_eperm(), "{outcome:?}");
    // Four direct connects the kernel refuses, one CONNECT the proxy refuses.
    let script = format!(
        "import os, socket\nfor _ in range(4):\n    try: socket.create_connection(('127.0.0.2', {}), timeout=5)\n    except PermissionError: pass\n\
         host, port = os.environ['HTTPS_PROXY'].rsplit('/', 1)[1].rsplit(':', 1)\n\
         tunnel = socket.create_connection((host, int(port)), timeout=5)\n\
         tunnel.sendall(b'CONNECT denied.test:443 HTTP/1.1\\r\\nHost: denied.test:443\\r\\n\\r\\n')\n\
         assert tunnel.recv(64).startswith(b'HTTP/1.1 403')\n",
        decoy.local_addr().unwrap().port()
    );
    let run_state = tempfile::tempdir().unwrap();
    let output = Command::new(enforcer_bin())
        .args(["run", "--user", USER, "--state-dir"])
        .arg(run_state.path())
        .arg("--control-socket")
        .arg(&socket)
        .args(["--", "python3", "-c", &script])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!(
            "enforcer: enforcing via the daemon ({})",
            cgroup.name
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("enforcer: denied 5 connections\n"),
        "the run's four and its one CONNECT, not the probe's: {stderr}"
    );
    assert!(
        line_with(&stderr, &["4x", &target, "loopback_port_not_owned"]).is_some(),
        "{stderr}"
    );
    // The daemon's state directory, from its status, not the run's; the
    // run's cgroup, so the command shows what the summary counted.
    let daemon_state = state.path().display().to_string();
    let events_line = line_with(&stderr, &["enforcer events --since", &daemon_state])
        .unwrap_or_else(|| panic!("{stderr}"));
    let events_args: Vec<&str> = events_line
        .split_once("enforcer events ")
        .unwrap()
        .1
        .split(' ')
        .collect();
    let listed = Command::new(enforcer_bin())
        .arg("events")
        .args(&events_args)
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(
        listed.lines().count(),
        5,
        "the printed command lists the run's five denies alone:\n{listed}"
    );
    assert!(
        stderr.contains(&format!(
            "  to allow it:    enforcer allow denied.test:443 --ttl 1h --control-socket {}\n",
            socket.display()
        )),
        "a grant goes to the daemon the run used: {stderr}"
    );
}

/// Where the mock provider listens: `api.anthropic.com:443` is pinned here
/// (`--resolve`), so the lane's calls stay on this machine.
const MOCK_PROVIDER_IP: &str = "127.0.21.1";

/// The globally installed Claude Code's version, from its package.json
/// (never by running `claude` outside `enforcer run`: it calls home).
fn installed_claude_code() -> Option<String> {
    let root = Command::new("npm")
        .args(["root", "--global"])
        .output()
        .ok()?;
    let manifest = Path::new(String::from_utf8_lossy(&root.stdout).trim())
        .join("@anthropic-ai/claude-code/package.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(manifest).ok()?).ok()?;
    json["version"].as_str().map(str::to_owned)
}

/// `dir` and what is in it owned by the unprivileged user.
fn give_to_user(dir: &Path) {
    let user = enforcer_tests::unprivileged_user();
    let output = Command::new("chown")
        .arg("-R")
        .arg(&user)
        .arg(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "chown {user} {dir:?}: {output:?}");
}

/// The acceptance of issue 21 as a user meets it: `enforcer run -- claude`
/// in a terminal, on the embedded fallback policy, its lane pinned to a
/// mock provider on loopback (nothing leaves the machine). A prompt is
/// answered by the mock through the lane router; while Claude Code runs
/// its screen carries nothing of the enforcer's but the start-up line
/// printed before it; after `/exit`, the summary names Claude Code's own
/// calls home (denied: they are not on the allowlist), its totals are what
/// the printed `enforcer events` command lists, and the exit status is 0.
#[test]
fn claude_code_keeps_its_terminal_and_the_summary_names_its_calls_home() {
    require_root();
    assert_eq!(
        installed_claude_code().as_deref(),
        Some(CLAUDE_CODE_VERSION),
        "Claude Code {CLAUDE_CODE_VERSION} is not installed globally; run `sudo cargo xtask setup`"
    );
    let work = work_dir("claude");
    let state = tempfile::tempdir().unwrap();
    let (provider, ca) = MockProvider::start(work.path(), MOCK_PROVIDER_IP);

    // The user's side: a project, and Claude Code's configuration with the
    // first-run dialogs done (onboarding, the placeholder key approved by
    // its last 20 characters, the project trusted).
    // (The fallback pack's lane is passthrough: the mock provider sees the
    // placeholder key; it opens nothing.)
    let project = work.path().join("project");
    let config = work.path().join("claude-config");
    seed_claude_config(&config, &project);
    give_to_user(&project);
    give_to_user(&config);

    let mut argv: Vec<String> = vec![
        "env".into(),
        format!("CLAUDE_CONFIG_DIR={}", config.display()),
        format!("ANTHROPIC_API_KEY={PLACEHOLDER_KEY}"),
    ];
    argv.extend(run_argv(
        state.path(),
        &[
            "--resolve",
            &format!("api.anthropic.com:443:{MOCK_PROVIDER_IP}"),
            "--extra-ca",
            ca.to_str().unwrap(),
            "--dns-upstream",
            &provider.dns,
        ],
        &["claude"],
    ));
    let tmux = Tmux::start_in(work.path(), &project, &argv);

    // A prompt, answered by the mock through the lane router.
    tmux.wait_for("? for shortcuts");
    let token = format!("t{}", std::process::id());
    let prompt = format!("Reply with ENFORCER-PING-{token}");
    tmux.send_text(&prompt);
    // Typed text and Enter in one read are a paste to Claude Code (the
    // Enter becomes part of the input): Enter only once the text is shown.
    tmux.wait_for(&prompt);
    tmux.send_keys("Enter");
    let screen = tmux.wait_for(&format!("ENFORCER-PONG-{token} from the mock provider"));

    // While it runs: the start-up line above Claude Code's interface, plain,
    // and nothing else of the enforcer's.
    let ours: Vec<&str> = screen
        .lines()
        .filter(|line| line.starts_with("enforcer:"))
        .collect();
    assert_eq!(ours.len(), 1, "{screen}");
    assert!(
        ours[0].starts_with("enforcer: enforcing in-process, fallback policy"),
        "{screen}"
    );
    for word in [
        "WARN",
        "INFO",
        "not_allowlisted",
        "kernel deny",
        "proxy decision",
    ] {
        assert!(
            !screen.contains(word),
            "{word:?} on Claude Code's screen while it runs:\n{screen}"
        );
    }
    let styled = tmux.capture(true);
    let banner = styled
        .lines()
        .find(|line| line.contains("enforcer: enforcing"))
        .unwrap_or_else(|| panic!("{styled:?}"));
    assert!(
        !banner.contains('\u{1b}'),
        "a plain start-up line: {banner:?}"
    );

    // /exit (its completion menu shown first), then the summary below.
    tmux.send_text("/exit");
    tmux.wait_for("Exit the REPL");
    tmux.send_keys("Enter");
    assert_eq!(tmux.wait_exit(), 0, "{}", tmux.capture_all());
    let after = tmux.capture_all();
    let header = after
        .lines()
        .find(|line| line.starts_with("enforcer: denied "))
        .unwrap_or_else(|| panic!("no summary of denies after /exit:\n{after}"));
    // Claude Code's own calls home went to the proxy and were refused.
    assert!(
        line_with(&after, &["not_allowlisted", "(proxy)"]).is_some(),
        "{after}"
    );
    let allow = line_with(
        &after,
        &["to allow it:", "enforcer allow ", ":443 --ttl 1h"],
    );
    assert!(allow.is_some(), "{after}");
    assert!(
        line_with(&after, &["(a grant needs the daemon: "]).is_some(),
        "{after}"
    );

    // The printed command lists exactly what the header counted.
    let total: u64 = header
        .replace(" (port 53)", "")
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    let events_line = line_with(&after, &["every decision:", "enforcer events --since"])
        .unwrap_or_else(|| panic!("{after}"));
    let events_args: Vec<&str> = events_line
        .split_once("enforcer events ")
        .unwrap()
        .1
        .split(' ')
        .collect();
    let listed = Command::new(enforcer_bin())
        .arg("events")
        .args(&events_args)
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(
        u64::try_from(listed.lines().count()).unwrap(),
        total,
        "{header}\n{listed}"
    );
    assert!(
        listed.lines().all(|line| line.contains("comm=")),
        "{listed}"
    );

    // Everything let through went to the mock: the lane's requests with the
    // placeholder (passthrough lane), CONNECTs to api.anthropic.com pinned
    // to it; and the daemon asked its DNS server nothing.
    let cgroup = events_args
        .iter()
        .skip_while(|arg| **arg != "--cgroup")
        .nth(1)
        .unwrap();
    let allowed = Command::new(enforcer_bin())
        .args([
            "events",
            "--json",
            "--decision",
            "allow",
            "--cgroup",
            cgroup,
        ])
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    assert!(allowed.status.success(), "{allowed:?}");
    let allowed: Vec<serde_json::Value> = String::from_utf8_lossy(&allowed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(
        allowed.iter().any(|row| row["source"] == "router"),
        "{allowed:?}"
    );
    for row in &allowed {
        assert_eq!(row["host"], "api.anthropic.com", "{row}");
        if row["source"] == "proxy" {
            assert_eq!(row["upstream"], format!("{MOCK_PROVIDER_IP}:443"), "{row}");
        }
    }
    let seen = provider.log();
    assert!(
        seen.contains("POST /v1/messages x-api-key=True authorization=False"),
        "{seen}"
    );
    assert!(!seen.contains("dns query"), "{seen}");
}

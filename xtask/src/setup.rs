//! `cargo xtask setup`: everything a fresh machine needs, idempotently.
//!
//! - nightly's `rust-src` (the BPF programs build with `-Z build-std=core`);
//! - `bpf-linker` 0.13, linked against the LLVM shared library inside the
//!   nightly toolchain (Debian's LLVM is too old for rustc's);
//! - the `x86_64-unknown-linux-musl` target (static test binaries);
//! - cargo-fuzz (the proxy's parsers are fuzzed for a bounded time in `test`);
//! - the Debian packages the tests use, and the bench's peers (Squid,
//!   tinyproxy, nginx, wrk);
//! - the official `anthropic` Python SDK (lane router tests), `requests`
//!   and `httpx` (the tool matrix);
//! - Claude Code, pinned (`enforcer run -- claude` in the terminal tests);
//! - the unprivileged user `enforcer-test` that `enforcer run` tests drop to.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{is_root, run_command};

/// bpf-linker version known to build here (../shared/TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests, the demo and the VM layer use.
const DEBIAN_PACKAGES: &[&str] = &[
    "bpftool",
    "curl",
    "iproute2",
    "openssl",
    "socat",
    "python3",
    "qemu-system-x86",
    "busybox-static",
    "binutils",
    // musl-gcc: C code in dependencies (ring) for the static VM binaries.
    "musl-tools",
    // Python `requests` for the proxy's end-to-end tests.
    "python3-requests",
    // bubblewrap for `enforcer run --bwrap` and the sandbox tests.
    "bubblewrap",
    // tmux for `enforcer run`'s terminal tests (tests/tests/run_terminal.rs);
    // their curses program uses python3's own `curses` (libpython3-stdlib).
    "tmux",
    "git",
    // The systemd VM layer's Debian rootfs (`cargo xtask test-vm --systemd`).
    "debootstrap",
    "cpio",
    // The clients tests (tests/tests/clients.rs): Debian's Go, whose
    // pure-Go resolver sends its own DNS, built static at test time.
    "golang-go",
    // Node's `fetch` ignores the proxy variables (the same tests).
    "nodejs",
    // The tool matrix (tests/tests/compat.rs): wget, and an sshd (run in
    // the test's network namespace; nothing starts it as a service here).
    "wget",
    "openssh-server",
    "openssh-client",
    // The bench's peers (bench/, `cargo xtask bench`; `test` runs its
    // smoke pass): Squid and tinyproxy as CONNECT proxies, nginx as the
    // router's reverse-proxy peer, wrk as the router's load. None is
    // started as a service; the bench runs its own, by pid.
    "squid",
    "tinyproxy",
    "nginx-light",
    "wrk",
];

/// Runs every set-up step.
pub fn run() -> anyhow::Result<()> {
    nightly_rust_src()?;
    musl_target()?;
    bpf_linker()?;
    cargo_fuzz()?;
    debian_packages()?;
    python_packages()?;
    claude_code()?;
    test_user()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

fn output_text(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let installed = output_text(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    match installed {
        Some(list) if list.lines().any(|line| line.starts_with("rust-src")) => Ok(()),
        Some(_) => run_command(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ])),
        None => run_command(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context("the BPF programs need a nightly toolchain with rust-src"),
    }
}

fn musl_target() -> anyhow::Result<()> {
    let installed = output_text(Command::new("rustup").args(["target", "list", "--installed"]))
        .unwrap_or_default();
    if installed
        .lines()
        .any(|line| line == "x86_64-unknown-linux-musl")
    {
        return Ok(());
    }
    run_command(Command::new("rustup").args(["target", "add", "x86_64-unknown-linux-musl"]))
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn bpf_linker() -> anyhow::Result<()> {
    let binary = cargo_bin_dir().join("bpf-linker");
    // A working bpf-linker of the right version is enough; if nightly's LLVM
    // changed under it, --version fails and it is rebuilt.
    if let Some(version) = output_text(Command::new(&binary).arg("--version"))
        && version.contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    let sysroot = output_text(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("asking the nightly toolchain for its sysroot")?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("listing {}", lib_dir.display()))?
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .find(|name| name.starts_with("libLLVM-") && name.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*.so in {}", lib_dir.display()))?;
    let lib_name = llvm
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_owned();
    let major = lib_name
        .trim_start_matches("LLVM-")
        .split('-')
        .next()
        .filter(|major| major.chars().all(|c| c.is_ascii_digit()))
        .with_context(|| format!("cannot read the LLVM major version from {llvm}"))?
        .to_owned();
    let lib_dir = lib_dir.display().to_string();
    let rustflags = format!("-L {lib_dir} -l dylib={lib_name} -C link-arg=-Wl,-rpath,{lib_dir}");
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} (about 75 s)"
    );
    run_command(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{major},no-llvm-linking"),
            ])
            .env("RUSTFLAGS", rustflags),
    )
}

fn is_installed(package: &str) -> bool {
    output_text(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.contains("install ok installed"))
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| !is_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}; install them with `sudo apt-get install -y {}` or run `sudo cargo xtask setup`",
            missing.join(", "),
            missing.join(" ")
        );
    }
    run_command(Command::new("apt-get").arg("update"))?;
    // Packages install their services (openssh-server's sshd) but none
    // is started: the tests run their own, on addresses they choose.
    let no_services = NoServiceStarts::install()?;
    if missing.contains(&"openssh-server") {
        // Nor at the next boot: Debian's ssh.service and init script do
        // not start sshd while this file exists (a machine that had an
        // sshd before keeps it: the package was not missing there).
        std::fs::create_dir_all("/etc/ssh").context("creating /etc/ssh")?;
        std::fs::write(
            "/etc/ssh/sshd_not_to_be_run",
            "cargo xtask setup installed openssh-server for the tests only\n",
        )
        .context("writing /etc/ssh/sshd_not_to_be_run")?;
    }
    let installed = run_command(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    drop(no_services);
    installed
}

/// Debian's `/usr/sbin/policy-rc.d` answering 101 ("action forbidden")
/// while packages install, so that none starts its service; removed on
/// drop. Left alone when the machine already has one.
struct NoServiceStarts(Option<PathBuf>);

impl NoServiceStarts {
    fn install() -> anyhow::Result<Self> {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(Self(None));
        }
        std::fs::write(
            &path,
            "#!/bin/sh\n# cargo xtask setup: no service starts while packages install\nexit 101\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
        Ok(Self(Some(path)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The unprivileged user `enforcer run` tests drop to.
pub const TEST_USER: &str = "enforcer-test";

fn test_user() -> anyhow::Result<()> {
    let exists = Command::new("id")
        .arg(TEST_USER)
        .output()
        .is_ok_and(|out| out.status.success());
    if exists || !is_root() {
        return Ok(());
    }
    run_command(Command::new("useradd").args([
        "--system",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        TEST_USER,
    ]))
}

/// cargo-fuzz version known to work here (the fuzz targets run on nightly).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn cargo_fuzz() -> anyhow::Result<()> {
    let installed = output_text(Command::new("cargo").args(["fuzz", "--version"]))
        .is_some_and(|version| version.contains(CARGO_FUZZ_VERSION));
    if installed {
        return Ok(());
    }
    run_command(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

/// Python packages, pinned: the official Anthropic SDK (the lane router is
/// tested with it), and `requests` and `httpx` (rows of the tool matrix,
/// tests/tests/compat.rs).
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("anthropic", "1.13.0"),
    ("requests", "2.34.2"),
    ("httpx", "0.28.1"),
];

fn python_packages() -> anyhow::Result<()> {
    let check = PYTHON_PACKAGES
        .iter()
        .map(|(name, _)| format!("{name}.__version__"))
        .collect::<Vec<_>>()
        .join(", ");
    let imports = PYTHON_PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ");
    let wanted = PYTHON_PACKAGES
        .iter()
        .map(|(_, version)| *version)
        .collect::<Vec<_>>()
        .join(" ");
    let installed = output_text(
        Command::new("python3").args(["-c", &format!("import {imports}; print({check})")]),
    )
    .is_some_and(|versions| versions.trim() == wanted);
    if installed {
        return Ok(());
    }
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "--quiet"]);
    if !is_root() {
        // A normal user's python3 is often Debian's, which refuses pip
        // (PEP 668) outside a venv: install into the user's own site
        // directory (~/.local), which no system package reads.
        pip.args(["--user", "--break-system-packages"]);
    }
    run_command(
        pip.args(
            PYTHON_PACKAGES
                .iter()
                .map(|(name, version)| format!("{name}=={version}")),
        ),
    )
}

/// Claude Code's npm package.
const CLAUDE_CODE_PACKAGE: &str = "@anthropic-ai/claude-code";

/// Claude Code, pinned: `enforcer run -- claude` is tried with it in a
/// terminal (tests/tests/run_terminal.rs), and the compatibility matrix
/// reuses it. 2.1.112 is the last release whose npm package is the
/// JavaScript CLI itself (`cli.js`, `engines.node >= 18`): it installs with
/// no install script and runs on this machine's Node 20. From 2.1.113 the
/// package is a launcher for a per-platform native binary (an optional
/// dependency plus a postinstall step), and later ones ask for Node >= 22.
const CLAUDE_CODE_VERSION: &str = "2.1.112";

/// Installs [`CLAUDE_CODE_VERSION`] globally with npm (Debian's `nodejs`
/// and `npm` first when there is no npm), unless that version is there.
/// The installed version is read from the package's `package.json`:
/// `claude` itself is never run outside `enforcer run` (it calls home).
fn claude_code() -> anyhow::Result<()> {
    if output_text(Command::new("npm").arg("--version")).is_none() {
        if !is_root() {
            bail!(
                "Claude Code needs npm; install it with `sudo apt-get install -y nodejs npm` or run `sudo cargo xtask setup`"
            );
        }
        run_command(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "nodejs", "npm"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if installed_claude_code().as_deref() == Some(CLAUDE_CODE_VERSION) {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Claude Code {CLAUDE_CODE_VERSION} is not installed; run `sudo cargo xtask setup` (npm install -g)"
        );
    }
    run_command(Command::new("npm").args([
        "install",
        "--global",
        "--no-fund",
        "--no-audit",
        &format!("{CLAUDE_CODE_PACKAGE}@{CLAUDE_CODE_VERSION}"),
    ]))?;
    match installed_claude_code() {
        Some(version) if version == CLAUDE_CODE_VERSION => Ok(()),
        other => bail!(
            "npm installed {CLAUDE_CODE_PACKAGE} but its package.json says {other:?}, not {CLAUDE_CODE_VERSION}"
        ),
    }
}

/// The version of the globally installed Claude Code, from its package.json.
fn installed_claude_code() -> Option<String> {
    let root = output_text(Command::new("npm").args(["root", "--global"]))?;
    let manifest = Path::new(root.trim())
        .join(CLAUDE_CODE_PACKAGE)
        .join("package.json");
    let text = std::fs::read_to_string(manifest).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["version"].as_str().map(str::to_owned)
}

//! Issue 16: the tools a coding agent runs every day — git over HTTPS and
//! SSH, pip, npm, cargo, go, curl, wget, Python's `requests` and `httpx`,
//! Node's `fetch`, Claude Code — inside `enforcer run`, in both egress
//! modes: `proxy-only` (the proxy variables `run` sets) and `redirect`
//! (none set: the DNS filter and the transparent listener carry them).
//!
//! For each tool and mode one everyday operation against a local stand-in
//! of its registry must give byte-exact results (a checksum of what was
//! fetched), and the same operation against a second live stand-in the
//! policy does not allow must fail with the matching audit event while
//! that stand-in counts zero connections. What works and what does not is
//! compared, in both directions, against `docs/compatibility.expected.toml`,
//! and the results are written to `docs/COMPATIBILITY.md`. Last, the
//! denial-to-policy path: an `npm install` from a registry the pack does not
//! name fails, `enforcer policy suggest --apply` writes the entry, the
//! operator signs it, the daemon reloads, and the same install succeeds.
//!
//! Nothing leaves the machine: every registry, git server and provider is
//! a loopback stand-in (or an sshd in a network namespace this test makes)
//! behind a test CA, reached by public names pinned with `--resolve` and
//! answered by a loopback mock resolver; the tools' own `/etc/resolv.conf`
//! (a mount namespace) names a loopback decoy resolver, so a query that
//! escaped the DNS filter would land there and fail the test. Every tool
//! runs only inside `enforcer run`, so its calls home are denied and
//! audited, never sent. Needs root; fails (never skips) without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{
    Decoy, MockDns, MockProvider, NetNs, Owned, PLACEHOLDER_KEY, TestCgroup, bounded, cgroup_mount,
    enforcer_bin, require_root, seed_claude_config, spawn_ready, test_ca,
};

#[path = "common/daemon.rs"]
mod common;
use common::Daemon;

/// The stand-ins' script (registries, git smart HTTP).
const REGISTRY_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/compat/registry.py");

/// Where the allowed stand-ins listen (every allowed name is pinned here).
const ALLOWED_IP: &str = "127.0.50.10";
/// The registry the suggestion step adds to the pack.
const MIRROR_IP: &str = "127.0.50.12";
/// The mock Anthropic provider (`api.anthropic.com` is pinned here).
const PROVIDER_IP: &str = "127.0.50.20";
/// The resolver the tools' `/etc/resolv.conf` names second (a decoy; the
/// first is this host's end of the test's veth pair, also a decoy).
const RESOLVER_IP: &str = "127.0.50.53";

/// The public names the tools use by default, served by the allowed stand-in.
const ALLOWED_NAMES: [(&str, &str); 8] = [
    ("pypi", "pypi.org"),
    ("files", "files.pythonhosted.org"),
    ("npm", "registry.npmjs.org"),
    ("crates_index", "index.crates.io"),
    ("crates_dl", "static.crates.io"),
    ("goproxy", "proxy.golang.org"),
    ("git", "github.com"),
    ("static", "static.example.com"),
];

/// The names the policy does not allow, one per kind of registry.
const DENIED_NAMES: [(&str, &str); 8] = [
    ("pypi", "pip.denied.test"),
    ("files", "pip.denied.test"),
    ("npm", "npm.denied.test"),
    ("crates_index", "crates.denied.test"),
    ("crates_dl", "crates.denied.test"),
    ("goproxy", "go.denied.test"),
    ("git", "git.denied.test"),
    ("static", "static.denied.test"),
];

/// The registry `enforcer policy suggest` is asked about.
const MIRROR_NAME: &str = "npm.mirror.test";

/// The ssh server's name (an `egress.direct` entry, answered by the mock
/// resolver with the address inside the test's network namespace).
const SSH_NAME: &str = "git.test";

/// The lane's credential (a test value), given to the daemon only.
const LANE_KEY: &str = "sk-ant-api03-enforcer-compat-lane-key-0000000000";

/// The egress modes of the matrix, as `--egress-mode` spells them.
const MODES: [&str; 2] = ["proxy-only", "redirect"];

/// Proxy variables `enforcer run` sets; the redirect column unsets them.
const PROXY_VARIABLES: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// One tool of the matrix: a version command, the everyday operation
/// (shell, leaving what it fetched at `$W/artifact`), and the same
/// operation against the denied stand-in. Scripts see `$W` (the tool's
/// own work directory), `$CA` and the variables [`Stand::environment`] sets.
struct Tool {
    name: &'static str,
    version: &'static str,
    allowed: &'static str,
    denied: &'static str,
    /// The manifest's checksum of the artifact (`registry.py build`).
    expected: fn(&Manifest) -> String,
    /// The host (a name, or the address of a kernel deny) and port the
    /// denied operation's audit event names.
    denied_destination: fn(&Stand) -> (String, u16),
}

/// The tools, in the order they run.
const TOOLS: &[Tool] = &[
    Tool {
        name: "curl",
        version: "curl --version | head -1 | cut -d' ' -f1-2",
        allowed: r#"curl -sS --fail --max-time 30 -o "$W/artifact" https://static.example.com/files/blob.bin"#,
        denied: r#"curl -sS --fail --max-time 30 -o "$W/denied" https://static.denied.test/files/blob.bin"#,
        expected: |m| m.static_sha256.clone(),
        denied_destination: |_| ("static.denied.test".into(), 443),
    },
    Tool {
        name: "wget",
        version: "wget --version | head -1 | cut -d' ' -f1-3",
        allowed: r#"wget -q --timeout=30 --tries=1 --ca-certificate="$CA" -O "$W/artifact" https://static.example.com/files/blob.bin"#,
        denied: r#"wget -q --timeout=30 --tries=1 --ca-certificate="$CA" -O "$W/denied" https://static.denied.test/files/blob.bin"#,
        expected: |m| m.static_sha256.clone(),
        denied_destination: |_| ("static.denied.test".into(), 443),
    },
    Tool {
        name: "python-requests",
        version: r#"python3 -c 'import requests; print("requests", requests.__version__)'"#,
        allowed: r#"python3 -c 'import requests, sys; r = requests.get(sys.argv[1], timeout=30); r.raise_for_status(); open(sys.argv[2], "wb").write(r.content)' https://static.example.com/files/blob.bin "$W/artifact""#,
        denied: r#"python3 -c 'import requests, sys; r = requests.get(sys.argv[1], timeout=30); r.raise_for_status()' https://static.denied.test/files/blob.bin"#,
        expected: |m| m.static_sha256.clone(),
        denied_destination: |_| ("static.denied.test".into(), 443),
    },
    Tool {
        name: "python-httpx",
        version: r#"python3 -c 'import httpx; print("httpx", httpx.__version__)'"#,
        allowed: r#"python3 -c 'import httpx, os, ssl, sys; r = httpx.get(sys.argv[1], timeout=30, verify=ssl.create_default_context(cafile=os.environ["CA"])); r.raise_for_status(); open(sys.argv[2], "wb").write(r.content)' https://static.example.com/files/blob.bin "$W/artifact""#,
        denied: r#"python3 -c 'import httpx, os, ssl, sys; httpx.get(sys.argv[1], timeout=30, verify=ssl.create_default_context(cafile=os.environ["CA"])).raise_for_status()' https://static.denied.test/files/blob.bin"#,
        expected: |m| m.static_sha256.clone(),
        denied_destination: |_| ("static.denied.test".into(), 443),
    },
    Tool {
        name: "node-fetch",
        version: "echo node $(node --version)",
        allowed: r#"node -e 'fetch(process.argv[1]).then(async r => { if (!r.ok) throw new Error("status " + r.status); require("fs").writeFileSync(process.argv[2], Buffer.from(await r.arrayBuffer())); }).catch(e => { console.error("error: " + (e.cause || e)); process.exit(1); })' https://static.example.com/files/blob.bin "$W/artifact""#,
        denied: r#"node -e 'fetch(process.argv[1]).then(r => { if (!r.ok) throw new Error("status " + r.status); }).catch(e => { console.error("error: " + (e.cause || e)); process.exit(1); })' https://static.denied.test/files/blob.bin"#,
        expected: |m| m.static_sha256.clone(),
        denied_destination: |_| ("static.denied.test".into(), 443),
    },
    Tool {
        name: "git-https",
        version: "git --version",
        allowed: r#"git clone -q https://github.com/compat-demo.git "$W/clone" && git -C "$W/clone" fetch -q origin && cp "$W/clone/README" "$W/artifact""#,
        denied: r#"git clone -q https://git.denied.test/compat-demo.git "$W/denied-clone""#,
        expected: |m| m.git_readme_sha256.clone(),
        denied_destination: |_| ("git.denied.test".into(), 443),
    },
    Tool {
        name: "git-ssh",
        version: "ssh -V 2>&1 | cut -d, -f1",
        allowed: r#"git clone -q "ssh://root@git.test$BARE" "$W/clone" && git -C "$W/clone" fetch -q origin && cp "$W/clone/README" "$W/artifact""#,
        denied: r#"git clone -q "ssh://root@git.test:2222$BARE" "$W/denied-clone""#,
        expected: |m| m.git_readme_sha256.clone(),
        denied_destination: |stand| (stand.ns.inside.clone(), 2222),
    },
    Tool {
        name: "pip",
        version: "python3 -m pip --version | cut -d' ' -f1-2",
        allowed: r#"python3 -m pip download -q --no-deps --no-cache-dir --disable-pip-version-check --retries 0 --timeout 30 -d "$W/download" enforcer-compat-demo==1.0.0 && python3 -m pip install -q --no-deps --no-cache-dir --disable-pip-version-check --retries 0 --timeout 30 --target "$W/site" enforcer-compat-demo==1.0.0 && PYTHONPATH="$W/site" python3 -c 'import enforcer_compat_demo as m; assert m.VALUE == "enforcer-compat-demo 1.0.0"' && cp "$W"/download/*.whl "$W/artifact""#,
        denied: r#"python3 -m pip download -q --no-deps --no-cache-dir --disable-pip-version-check --retries 0 --timeout 30 --index-url https://pip.denied.test/simple -d "$W/denied" enforcer-compat-demo==1.0.0"#,
        expected: |m| m.pip_sha256.clone(),
        denied_destination: |_| ("pip.denied.test".into(), 443),
    },
    Tool {
        name: "npm",
        version: "echo npm $(npm --version)",
        allowed: r#"cd "$W" && npm pack -q --pack-destination "$W" enforcer-compat-demo@1.0.0 >/dev/null && mkdir -p "$W/project" && npm install -q --prefix "$W/project" --no-audit --no-fund --fetch-retries 0 enforcer-compat-demo@1.0.0 && node -e 'if (require(process.argv[1]) !== "enforcer-compat-demo 1.0.0") process.exit(1)' "$W/project/node_modules/enforcer-compat-demo" && cp "$W/enforcer-compat-demo-1.0.0.tgz" "$W/artifact""#,
        denied: r#"mkdir -p "$W/denied-project" && npm install -q --prefix "$W/denied-project" --registry https://npm.denied.test/ --no-audit --no-fund --fetch-retries 0 enforcer-compat-demo@1.0.0"#,
        expected: |m| m.npm_sha256.clone(),
        denied_destination: |_| ("npm.denied.test".into(), 443),
    },
    Tool {
        name: "cargo",
        version: r#""$CARGO" --version"#,
        allowed: r#"make_project "$W/project" && "$CARGO" fetch -q --manifest-path "$W/project/Cargo.toml" && cp "$CARGO_HOME"/registry/cache/*/enforcer-compat-demo-1.0.0.crate "$W/artifact""#,
        denied: r#"make_project "$W/denied-project" && "$CARGO" fetch -q --manifest-path "$W/denied-project/Cargo.toml" --config 'source.crates-io.replace-with="denied"' --config 'source.denied.registry="sparse+https://crates.denied.test/"'"#,
        expected: |m| m.cargo_sha256.clone(),
        denied_destination: |_| ("crates.denied.test".into(), 443),
    },
    Tool {
        name: "go",
        version: "go version | cut -d' ' -f3-4",
        allowed: r#"make_module "$W/module" && cd "$W/module" && go mod download example.test/compatdemo && cp "$GOMODCACHE/cache/download/example.test/compatdemo/@v/v1.0.0.zip" "$W/artifact""#,
        denied: r#"make_module "$W/denied-module" && cd "$W/denied-module" && GOMODCACHE="$W/denied-cache" GOPROXY=https://go.denied.test go mod download example.test/compatdemo"#,
        expected: |m| m.go_sha256.clone(),
        denied_destination: |_| ("go.denied.test".into(), 443),
    },
    Tool {
        name: "claude-code",
        version: "claude --version",
        allowed: r#"cd "$W/project" && claude -p "Reply with ENFORCER-PING-compat" > "$W/artifact""#,
        denied: r#"cd "$W/project" && ANTHROPIC_BASE_URL=https://api.denied.test CLAUDE_CODE_MAX_RETRIES=0 timeout 120 claude -p "Reply with ENFORCER-PING-denied""#,
        expected: |_| sha256_hex(b"ENFORCER-PONG-compat from the mock provider\n"),
        denied_destination: |_| ("api.denied.test".into(), 443),
    },
];

/// Shell functions every tool script can call.
const SCRIPT_PRELUDE: &str = r#"
make_project() {
    mkdir -p "$1/src"
    printf '[package]\nname = "compat-probe"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\nenforcer-compat-demo = "=1.0.0"\n' > "$1/Cargo.toml"
    : > "$1/src/lib.rs"
}
make_module() {
    mkdir -p "$1"
    printf 'module example.test/probe\n\ngo 1.19\n\nrequire example.test/compatdemo v1.0.0\n' > "$1/go.mod"
}
"#;

/// The first line of every run: `CGROUP: <id> <path>` of the run's own
/// cgroup (its directory's inode is the id audit rows carry).
const REPORT_CGROUP: &str = r#"own_cgroup=$(sed -n 's/^0:://p' /proc/self/cgroup)
echo "CGROUP: $(stat -c %i "$CGROUP_MOUNT$own_cgroup") ${own_cgroup#/}"
"#;

/// What `registry.py build` reports about what it built.
#[derive(Clone, Debug)]
struct Manifest {
    static_sha256: String,
    pip_sha256: String,
    npm_sha256: String,
    cargo_sha256: String,
    go_sha256: String,
    git_readme_sha256: String,
    git_bare: PathBuf,
}

impl Manifest {
    fn parse(json: &serde_json::Value) -> Self {
        let text = |path: &[&str]| {
            let mut value = json;
            for key in path {
                value = &value[*key];
            }
            value
                .as_str()
                .unwrap_or_else(|| panic!("manifest has no {path:?}: {json}"))
                .to_owned()
        };
        Self {
            static_sha256: text(&["static", "sha256"]),
            pip_sha256: text(&["pip", "sha256"]),
            npm_sha256: text(&["npm", "sha256"]),
            cargo_sha256: text(&["cargo", "crate_sha256"]),
            go_sha256: text(&["go", "zip_sha256"]),
            git_readme_sha256: text(&["git", "readme_sha256"]),
            git_bare: PathBuf::from(text(&["git", "bare"])),
        }
    }
}

/// One stand-in process of `registry.py serve` and its connection log.
struct Registry {
    _process: Owned,
    log: PathBuf,
}

impl Registry {
    /// Serves `root` on `ip`:443, inside the network namespace `netns`
    /// when given.
    fn start(dir: &Path, label: &str, ip: &str, root: &Path, netns: Option<&str>) -> Self {
        let log = dir.join(format!("{label}.log"));
        let mut command = match netns {
            Some(name) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", name, "python3"]);
                command
            }
            None => Command::new("python3"),
        };
        command
            .arg(REGISTRY_SCRIPT)
            .args(["serve", "--listen", &format!("{ip}:443"), "--cert"])
            .arg(dir.join("leaf.pem"))
            .arg("--key")
            .arg(dir.join("leaf.key"))
            .arg("--root")
            .arg(root)
            .arg("--log")
            .arg(&log)
            .stderr(Stdio::inherit());
        Self {
            _process: spawn_ready(command, &format!("registry.py serve ({label})")),
            log,
        }
    }

    /// The connections it accepted so far.
    fn connections(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.starts_with("connect "))
            .count()
    }
}

/// Builds the registries for `names` into `root`; returns the manifest.
fn build_registry(root: &Path, names: &[(&str, &str)]) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .map(|(key, name)| ((*key).to_owned(), serde_json::Value::from(*name)))
        .collect();
    let output = Command::new("python3")
        .arg(REGISTRY_SCRIPT)
        .arg("build")
        .arg(root)
        .arg("--host-map")
        .arg(serde_json::Value::Object(map).to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "registry.py build: {output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// An sshd inside the test's network namespace, on ports 22 (the direct
/// entry) and 2222 (not allowed), serving the bare repository to `root`
/// with a key made for the test; its log names every connection's port.
struct Sshd {
    _process: Owned,
    log: PathBuf,
    /// Where it listens (inside the namespace).
    inside: String,
    /// The client key and known_hosts for `GIT_SSH_COMMAND`.
    ssh_command: String,
}

impl Sshd {
    fn start(dir: &Path, ns: &NetNs) -> Self {
        let keygen = |path: &Path| {
            let output = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(path)
                .output()
                .unwrap();
            assert!(output.status.success(), "ssh-keygen: {output:?}");
        };
        let host_key = dir.join("ssh_host_ed25519_key");
        let client_key = dir.join("client_key");
        keygen(&host_key);
        keygen(&client_key);
        let authorized = dir.join("authorized_keys");
        std::fs::copy(dir.join("client_key.pub"), &authorized).unwrap();
        let host_public = std::fs::read_to_string(dir.join("ssh_host_ed25519_key.pub")).unwrap();
        let known_hosts = dir.join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("{SSH_NAME} {host_public}[{SSH_NAME}]:2222 {host_public}"),
        )
        .unwrap();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {inside}:22\nListenAddress {inside}:2222\nHostKey {host}\n\
                 AuthorizedKeysFile {authorized}\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPidFile none\nLogLevel VERBOSE\nSubsystem sftp internal-sftp\n",
                inside = ns.inside,
                host = host_key.display(),
                authorized = authorized.display(),
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let log = dir.join("sshd.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "/usr/sbin/sshd", "-D", "-f"])
            .arg(&config)
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let process = Owned(child);
        // Listening once it logs both ports.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("Server listening on")
            .count()
            < 2
        {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            _process: process,
            log,
            inside: ns.inside.clone(),
            ssh_command: format!(
                "ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=15",
                client_key.display(),
                known_hosts.display()
            ),
        }
    }

    /// Connections sshd accepted on `port`.
    fn connections_on(&self, port: u16) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                line.contains("Connection from")
                    && line.contains(&format!(" on {} port {port} ", self.inside))
            })
            .count()
    }
}

/// Every HTTPS stand-in name and the address serving it: the allowed
/// registry, the denied one (another host, inside `ns`), the mirror of the
/// suggestion step, the provider. The mock resolver answers these and the
/// daemon pins them on port 443.
fn stand_in_addresses(ns: &NetNs) -> Vec<(&'static str, String)> {
    let mut addresses: Vec<(&'static str, String)> = ALLOWED_NAMES
        .iter()
        .map(|(_, name)| (*name, ALLOWED_IP.to_owned()))
        .collect();
    addresses.extend(
        DENIED_NAMES
            .iter()
            .map(|(_, name)| (*name, ns.inside.clone())),
    );
    addresses.extend([
        (MIRROR_NAME, MIRROR_IP.to_owned()),
        ("api.anthropic.com", PROVIDER_IP.to_owned()),
        ("api.denied.test", ns.inside.clone()),
    ]);
    addresses
}

/// Every stand-in of the matrix.
struct Stand {
    dir: tempfile::TempDir,
    ca: PathBuf,
    manifest: Manifest,
    allowed: Registry,
    denied: Registry,
    mirror: Registry,
    provider: MockProvider,
    provider_ca: PathBuf,
    ns: NetNs,
    sshd: Sshd,
    upstream: MockDns,
    resolv: PathBuf,
    nsswitch: PathBuf,
    /// The decoy resolvers (UDP, TCP) resolv.conf names.
    resolvers: [(Decoy, Decoy); 2],
}

impl Stand {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("enforcer-compat-")
            .tempdir()
            .unwrap();
        let mut names: Vec<&str> = ALLOWED_NAMES
            .iter()
            .chain(DENIED_NAMES.iter())
            .map(|(_, name)| *name)
            .collect();
        names.push(MIRROR_NAME);
        names.sort_unstable();
        names.dedup();
        let ca = test_ca(dir.path(), &names);
        let roots = dir.path().join("roots");
        let manifest = Manifest::parse(&build_registry(&roots.join("allowed"), &ALLOWED_NAMES));
        build_registry(&roots.join("denied"), &DENIED_NAMES);
        let mirror_names: Vec<(&str, &str)> = ALLOWED_NAMES
            .iter()
            .map(|(key, _)| (*key, MIRROR_NAME))
            .collect();
        build_registry(&roots.join("mirror"), &mirror_names);
        // The denied stand-in is another host (in the test's namespace,
        // inside allowPrivateRanges): a bypass on the kernel's non-loopback
        // path, or a proxy dialling what it must not, would land there.
        let ns = NetNs::new("compat");
        let allowed = Registry::start(
            dir.path(),
            "allowed",
            ALLOWED_IP,
            &roots.join("allowed"),
            None,
        );
        let denied = Registry::start(
            dir.path(),
            "denied",
            &ns.inside,
            &roots.join("denied"),
            Some(&ns.name),
        );
        let mirror = Registry::start(dir.path(), "mirror", MIRROR_IP, &roots.join("mirror"), None);
        let provider_dir = dir.path().join("provider");
        std::fs::create_dir(&provider_dir).unwrap();
        let (provider, provider_ca) = MockProvider::start(&provider_dir, PROVIDER_IP);
        let ssh_dir = dir.path().join("ssh");
        std::fs::create_dir(&ssh_dir).unwrap();
        let sshd = Sshd::start(&ssh_dir, &ns);
        // The mock resolver answers every name: a bypass of the policy
        // would find its stand-in, not a missing record.
        let mut records: Vec<(&str, std::net::IpAddr, u32)> = stand_in_addresses(&ns)
            .into_iter()
            .map(|(name, ip)| (name, ip.parse().unwrap(), 300))
            .collect();
        records.push((SSH_NAME, ns.inside.parse().unwrap(), 300));
        let upstream = MockDns::start(&records);
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(
            &resolv,
            format!(
                "nameserver {}\nnameserver {RESOLVER_IP}\noptions timeout:2 attempts:1\n",
                ns.host
            ),
        )
        .unwrap();
        let nsswitch = dir.path().join("nsswitch.conf");
        std::fs::write(&nsswitch, "hosts: files dns\n").unwrap();
        let resolvers = [ns.host.as_str(), RESOLVER_IP].map(|ip| {
            (
                Decoy::udp(UdpSocket::bind((ip, 53)).unwrap()),
                Decoy::tcp(TcpListener::bind((ip, 53)).unwrap()),
            )
        });
        Self {
            dir,
            ca,
            manifest,
            allowed,
            denied,
            mirror,
            provider,
            provider_ca,
            ns,
            sshd,
            upstream,
            resolv,
            nsswitch,
            resolvers,
        }
    }

    /// The `--resolve` pins: every stand-in name at its stand-in.
    fn pins(&self) -> Vec<String> {
        let mut pins: Vec<String> = stand_in_addresses(&self.ns)
            .into_iter()
            .map(|(name, ip)| format!("{name}:443:{ip}"))
            .collect();
        pins.sort();
        pins.dedup();
        pins
    }

    /// The pack: the default names of each tool's registry on the
    /// allowlist, the ssh server as a direct entry by name, one lane that
    /// injects its own key, the DNS filter on; the mode comes from the
    /// daemon's `--egress-mode`.
    fn pack(&self) -> String {
        let mut allow: Vec<String> = ALLOWED_NAMES
            .iter()
            .map(|(_, name)| format!(r#"{{"hostport":"{name}:443"}}"#))
            .collect();
        allow.sort();
        allow.dedup();
        format!(
            r#"{{
  "schema": "ccp.policy.v1",
  "version": "compat-1",
  "ttlSeconds": 86400,
  "routing": {{ "matchers": [ {{ "pattern": "claude-*", "lane": "anthropic" }} ] }},
  "providers": {{
    "anthropic": {{
      "baseURL": "https://api.anthropic.com",
      "authHeader": {{ "mode": "x-api-key", "env": "COMPAT_LANE_KEY" }}
    }}
  }},
  "fronting": {{
    "allowlist": [ {allow} ],
    "allowPrivateRanges": ["{range}"]
  }},
  "egress": {{ "dns": "filtered", "direct": [ {{ "hostport": "{SSH_NAME}:22" }} ] }}
}}
"#,
            allow = allow.join(", "),
            range = self.ns.range,
        )
    }

    /// The environment every tool gets (besides `run`'s own): its own
    /// home and caches under `work`, and the test CA in each tool's way.
    fn environment(&self, work: &Path, cargo: &Path) -> Vec<(String, String)> {
        let path = |name: &str| work.join(name).display().to_string();
        let ca = self.ca.display().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("W".into(), work.display().to_string()),
            ("CA".into(), ca.clone()),
            ("HOME".into(), path("home")),
            ("XDG_CACHE_HOME".into(), path("cache")),
            ("XDG_CONFIG_HOME".into(), path("config")),
            ("SSL_CERT_FILE".into(), ca.clone()),
            ("CURL_CA_BUNDLE".into(), ca.clone()),
            ("REQUESTS_CA_BUNDLE".into(), ca.clone()),
            ("PIP_CERT".into(), ca.clone()),
            ("PIP_CACHE_DIR".into(), path("pip-cache")),
            ("NODE_EXTRA_CA_CERTS".into(), ca.clone()),
            ("npm_config_cafile".into(), ca.clone()),
            ("npm_config_cache".into(), path("npm-cache")),
            ("npm_config_userconfig".into(), path("npmrc")),
            ("CARGO".into(), cargo.display().to_string()),
            ("CARGO_HOME".into(), path("cargo-home")),
            ("CARGO_HTTP_CAINFO".into(), ca.clone()),
            ("CARGO_NET_RETRY".into(), "0".into()),
            ("CARGO_TARGET_DIR".into(), path("cargo-target")),
            ("GOPATH".into(), path("gopath")),
            ("GOMODCACHE".into(), path("gopath/pkg/mod")),
            ("GOCACHE".into(), path("gocache")),
            ("GOSUMDB".into(), "off".into()),
            ("GOFLAGS".into(), "-mod=mod".into()),
            ("GOTOOLCHAIN".into(), "local".into()),
            ("GIT_SSL_CAINFO".into(), ca),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("GIT_SSH_COMMAND".into(), self.sshd.ssh_command.clone()),
            ("BARE".into(), self.manifest.git_bare.display().to_string()),
            ("CLAUDE_CONFIG_DIR".into(), path("claude-config")),
            ("ANTHROPIC_API_KEY".into(), PLACEHOLDER_KEY.into()),
        ];
        env.sort();
        env
    }

    fn assert_decoys_untouched(&self) {
        for (udp, tcp) in &self.resolvers {
            udp.assert_untouched("a resolver of the tools' resolv.conf (UDP)");
            tcp.assert_untouched("a resolver of the tools' resolv.conf (TCP)");
        }
    }
}

/// The daemon of one mode: its pack (signed with a key made here), its
/// cgroup, and the key for re-signing.
struct ModeDaemon {
    mode: &'static str,
    _state: tempfile::TempDir,
    pack: PathBuf,
    key: PathBuf,
    daemon: Daemon,
    cgroup: TestCgroup,
}

impl ModeDaemon {
    fn start(stand: &Stand, mode: &'static str) -> Self {
        let state = tempfile::Builder::new()
            .prefix(&format!("enforcer-compat-{mode}-"))
            .tempdir()
            .unwrap();
        let key = state.path().join("key");
        let pack = state.path().join("pack.json");
        enforcer(&["policy", "keygen", "--out", key.to_str().unwrap()]);
        std::fs::write(&pack, stand.pack()).unwrap();
        sign(&pack, &key);
        let mut args: Vec<String> = vec![
            "--policy".into(),
            pack.display().to_string(),
            "--policy-pubkey".into(),
            format!("{}.pub", key.display()),
            "--dns-upstream".into(),
            stand.upstream.addr.to_string(),
            "--extra-ca".into(),
            stand.provider_ca.display().to_string(),
            "--egress-mode".into(),
            mode.into(),
        ];
        for pin in stand.pins() {
            args.extend(["--resolve".into(), pin]);
        }
        let cgroup = TestCgroup::new(&format!("compat-{mode}"));
        let arguments: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = Daemon::start_with_env(
            &cgroup,
            &state.path().join("daemon"),
            &arguments,
            &[("COMPAT_LANE_KEY", LANE_KEY)],
        );
        Self {
            mode,
            _state: state,
            pack,
            key,
            daemon,
            cgroup,
        }
    }

    /// Runs `script` with `enforcer run` under this daemon, in a mount
    /// namespace whose resolv.conf names the decoy resolver, with `env`;
    /// in redirect mode without the proxy variables. Bounded at 5 minutes.
    fn run(&self, stand: &Stand, env: &[(String, String)], script: &str) -> RunOutput {
        let unset = if self.mode == "redirect" {
            format!("unset {}\n", PROXY_VARIABLES.join(" "))
        } else {
            String::new()
        };
        let mut command = Command::new("unshare");
        command
            .args([
                "--mount",
                "sh",
                "-c",
                r#"mount --bind "$0" /etc/resolv.conf && mount --bind "$1" /etc/nsswitch.conf && shift && exec "$@""#,
            ])
            .arg(&stand.resolv)
            .arg(&stand.nsswitch)
            .arg(enforcer_bin())
            .args(["run", "--quiet", "--summary", "off", "--control-socket"])
            .arg(&self.daemon.socket)
            .args(["--", "bash", "-c"])
            .arg(format!("{unset}{SCRIPT_PRELUDE}{REPORT_CGROUP}{script}"))
            .env("CGROUP_MOUNT", cgroup_mount())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("SUDO_UID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = bounded(command, Duration::from_secs(300));
        let mut run = RunOutput {
            cgroup_id: 0,
            cgroup: String::new(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        let reported = run
            .value("CGROUP")
            .and_then(|line| line.trim().split_once(' '));
        let (id, path) = reported
            .unwrap_or_else(|| panic!("the run did not start:\n{}\n{}", run.stdout, run.stderr));
        (run.cgroup_id, run.cgroup) = (id.parse().unwrap(), path.to_owned());
        // Under this daemon, never the in-process fallback.
        assert!(
            run.cgroup
                .starts_with(&format!("{}/enforcer-run-", self.cgroup.name)),
            "the run is not under the daemon's cgroup {}: {}",
            self.cgroup.name,
            run.cgroup
        );
        run
    }

    /// Deny rows of the cgroup `cgroup_id`.
    fn denies(&self, cgroup_id: u64) -> Vec<serde_json::Value> {
        let output = Command::new(enforcer_bin())
            .args(["events", "--json", "--since", "1h", "--decision", "deny"])
            .args(["--cgroup", &cgroup_id.to_string()])
            .arg("--state-dir")
            .arg(&self.daemon.state)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|row| row["cgroup_id"].as_u64() == Some(cgroup_id))
            .collect()
    }
}

/// What one `enforcer run` printed, and which cgroup it ran in.
struct RunOutput {
    /// The run's cgroup id (audit rows carry it).
    cgroup_id: u64,
    /// Its path below the cgroup mount.
    cgroup: String,
    stdout: String,
    stderr: String,
}

impl RunOutput {
    /// The value of a `KEY: value` line the script printed.
    fn value(&self, key: &str) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{key}: ")))
    }
}

fn enforcer(args: &[&str]) -> String {
    let output = Command::new(enforcer_bin()).args(args).output().unwrap();
    assert!(output.status.success(), "enforcer {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn sign(pack: &Path, key: &Path) {
    enforcer(&[
        "policy",
        "sign",
        pack.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn file_sha256(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|bytes| sha256_hex(&bytes))
}

/// The toolchain's own cargo (not rustup's proxy, which reads `$HOME`).
fn real_cargo() -> PathBuf {
    let output = Command::new("rustup")
        .args(["which", "cargo"])
        .output()
        .unwrap();
    assert!(output.status.success(), "rustup which cargo: {output:?}");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// One cell of the matrix as measured.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cell {
    tool: &'static str,
    mode: &'static str,
    version: String,
    works: bool,
    /// Why the everyday operation failed, when it did (its last lines).
    failure: String,
    /// The denied operation failed and was audited with this reason.
    denied_reason: Option<String>,
    /// When the everyday operation failed: the reason of the run's deny of
    /// the allowed stand-in (so a row that "does not work" fails for the
    /// reason the expectation names, not a broken test).
    blocked_reason: Option<String>,
}

/// Runs `tool` in `mode`: the everyday operation, then the denied one.
fn measure(stand: &Stand, daemon: &ModeDaemon, tool: &Tool, cargo: &Path) -> Cell {
    let work = stand
        .dir
        .path()
        .join(format!("{}-{}", tool.name, daemon.mode));
    for dir in ["home", "cache", "config"] {
        std::fs::create_dir_all(work.join(dir)).unwrap();
    }
    if tool.name == "claude-code" {
        seed_claude_config(&work.join("claude-config"), &work.join("project"));
    }
    let env = stand.environment(&work, cargo);
    let script = format!(
        "echo \"VERSION: $({version} 2>&1 | head -1)\"\n\
         ( {allowed} ) > \"$W/allowed.log\" 2>&1; echo \"ALLOWED: $?\"\n\
         ( {denied} ) > \"$W/denied.log\" 2>&1; echo \"DENIED: $?\"\n",
        version = tool.version,
        allowed = tool.allowed,
        denied = tool.denied,
    );
    let output = daemon.run(stand, &env, &script);
    let version = output.value("VERSION").unwrap_or("").trim().to_owned();
    let allowed_status = output.value("ALLOWED").map(str::trim);
    let denied_status = output.value("DENIED").map(str::trim);
    assert!(
        allowed_status.is_some() && denied_status.is_some(),
        "{} in {}: the run did not finish:\nstdout: {}\nstderr: {}",
        tool.name,
        daemon.mode,
        output.stdout,
        output.stderr
    );
    let log_tail = |name: &str| {
        let text = std::fs::read_to_string(work.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(6)..].join("\n")
    };
    let checksum = file_sha256(&work.join("artifact"));
    let expected = (tool.expected)(&stand.manifest);
    let works = allowed_status == Some("0") && checksum.as_deref() == Some(expected.as_str());
    let failure = if works {
        String::new()
    } else {
        format!(
            "exit {}, artifact sha256 {:?} (want {expected}):\n{}",
            allowed_status.unwrap_or("?"),
            checksum,
            log_tail("allowed.log")
        )
    };
    let blocked_reason = if works {
        None
    } else {
        // The allowed stand-in by address (a kernel deny) or by name.
        let allowed: Vec<(&str, u16)> = std::iter::once(ALLOWED_IP)
            .chain(ALLOWED_NAMES.iter().map(|(_, name)| *name))
            .map(|host| (host, 443))
            .collect();
        wait_for_deny(daemon, output.cgroup_id, &allowed)
    };
    // The denied operation: failed, and an audit row names its destination.
    let destination = (tool.denied_destination)(stand);
    let denied_reason = if denied_status == Some("0") {
        None
    } else {
        wait_for_deny(daemon, output.cgroup_id, &[(&destination.0, destination.1)])
    };
    if denied_reason.is_none() {
        eprintln!(
            "{} in {}: denied operation exit {:?}, no audit row for {destination:?}:\n{}",
            tool.name,
            daemon.mode,
            denied_status,
            log_tail("denied.log")
        );
    }
    Cell {
        tool: tool.name,
        mode: daemon.mode,
        version,
        works,
        failure,
        denied_reason,
        blocked_reason,
    }
}

/// The reason of the first deny row of cgroup `cgroup_id` naming one of
/// `destinations` (host and port; a DNS refusal names the host alone),
/// waiting up to 10 s for the audit writer.
fn wait_for_deny(
    daemon: &ModeDaemon,
    cgroup_id: u64,
    destinations: &[(&str, u16)],
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = daemon.denies(cgroup_id).into_iter().find(|row| {
            destinations.iter().any(|(host, port)| {
                row["host"].as_str() == Some(*host)
                    && (row["reason"] == "dns_refused"
                        || row["port"].as_u64() == Some(u64::from(*port)))
            })
        });
        if let Some(row) = found {
            return row["reason"].as_str().map(str::to_owned);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One row of `docs/compatibility.expected.toml`.
#[derive(Clone, Debug)]
struct Expected {
    works: bool,
    denied: String,
    /// For a row that does not work: the audit reason of its refusal.
    blocked: String,
    reason: String,
    change: String,
}

/// `docs/compatibility.expected.toml`: tool → mode → expectation.
fn expected_matrix() -> BTreeMap<(String, String), Expected> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/compatibility.expected.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let mut rows = BTreeMap::new();
    for (tool, modes) in &table {
        for (mode, row) in modes.as_table().unwrap() {
            let field = |name: &str| {
                row.get(name)
                    .and_then(toml::Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let works = row
                .get("works")
                .and_then(toml::Value::as_bool)
                .unwrap_or_else(|| panic!("{tool}.{mode}: no `works`"));
            assert!(
                works
                    || (!field("reason").is_empty()
                        && !field("change").is_empty()
                        && !field("blocked").is_empty()),
                "{tool}.{mode}: a row that does not work needs `reason`, `change` and `blocked`"
            );
            rows.insert(
                (tool.clone(), mode.clone()),
                Expected {
                    works,
                    denied: field("denied"),
                    blocked: field("blocked"),
                    reason: field("reason"),
                    change: field("change"),
                },
            );
        }
    }
    rows
}

/// `docs/COMPATIBILITY.md` from the measured cells.
fn render_compatibility(cells: &[Cell], expected: &BTreeMap<(String, String), Expected>) -> String {
    let mut text = String::from(
        "# Compatibility: the tools agents run, inside `enforcer run`\n\n\
         Written by `cargo xtask test-compat` (tests/tests/compat.rs; also part of\n\
         `cargo xtask test`) from what it measured; the expectations it checks are\n\
         [compatibility.expected.toml](compatibility.expected.toml). Each tool ran\n\
         inside `enforcer run` against local stand-ins of its registry (test CA, names\n\
         pinned to loopback), once per egress mode: `proxy-only` with the proxy\n\
         variables `run` sets, `redirect` with none set. \"works\" means its everyday\n\
         operation gave byte-exact results (checksum of what it fetched); in every\n\
         row the same operation against a registry the policy does not name failed\n\
         with the audit reason shown, and that registry saw no connection.\n\n\
         | tool | version | mode | result | denied operation audited as | what a user must change |\n\
         |---|---|---|---|---|---|\n",
    );
    for cell in cells {
        let row = expected.get(&(cell.tool.to_owned(), cell.mode.to_owned()));
        let (result, change) = match row {
            _ if cell.works => ("works".to_owned(), "nothing".to_owned()),
            Some(row) if !row.works => {
                (format!("does not work: {}", row.reason), row.change.clone())
            }
            _ => (
                format!(
                    "does not work (unexpected): {}",
                    cell.failure.replace('\n', " ")
                ),
                "(not known: the matrix fails)".to_owned(),
            ),
        };
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | `{}` | {} |",
            cell.tool,
            cell.version.replace('|', "/"),
            cell.mode,
            result,
            cell.denied_reason.as_deref().unwrap_or("-"),
            change
        );
    }
    text
}

/// The whole matrix and the suggestion step, in one test: the stand-ins
/// (three registries, an sshd, a provider) are built once for all.
#[test]
fn the_tools_agents_run_work_as_docs_compatibility_says_in_both_modes() {
    require_root();
    let started = Instant::now();
    let expected = expected_matrix();
    let stand = Stand::start();
    let cargo = real_cargo();
    // `COMPAT_TOOLS=curl,git-ssh`: only these (while working on a row;
    // refused under CI, and nothing is written to docs/ then).
    let only: Option<Vec<String>> = std::env::var("COMPAT_TOOLS")
        .ok()
        .map(|list| list.split(',').map(str::to_owned).collect());
    assert!(
        only.is_none() || std::env::var_os("CI").is_none(),
        "COMPAT_TOOLS is for development; CI runs every row"
    );
    let mut cells = Vec::new();
    for mode in MODES {
        let daemon = ModeDaemon::start(&stand, mode);
        for tool in TOOLS {
            if only
                .as_ref()
                .is_some_and(|only| !only.iter().any(|name| name == tool.name))
            {
                continue;
            }
            let cell = measure(&stand, &daemon, tool, &cargo);
            eprintln!(
                "compat: {} {}: works={} denied={:?} ({} s so far)",
                cell.tool,
                cell.mode,
                cell.works,
                cell.denied_reason,
                started.elapsed().as_secs()
            );
            cells.push(cell);
        }
        if mode == "redirect" && only.is_none() {
            suggestion_makes_the_install_work(&stand, &daemon, &cargo);
        }
    }

    // Every row against the expectation, both directions.
    let mut differences = Vec::new();
    for cell in &cells {
        let key = (cell.tool.to_owned(), cell.mode.to_owned());
        let Some(row) = expected.get(&key) else {
            differences.push(format!(
                "{} {}: no row in the expected matrix",
                cell.tool, cell.mode
            ));
            continue;
        };
        if row.works != cell.works {
            differences.push(format!(
                "{} {}: expected works={}, measured works={} {}",
                cell.tool, cell.mode, row.works, cell.works, cell.failure
            ));
        }
        if !row.works && cell.blocked_reason.as_deref() != Some(row.blocked.as_str()) {
            differences.push(format!(
                "{} {}: the everyday operation should be refused as {:?}, was {:?} {}",
                cell.tool, cell.mode, row.blocked, cell.blocked_reason, cell.failure
            ));
        }
        if cell.denied_reason.as_deref() != Some(row.denied.as_str()) {
            differences.push(format!(
                "{} {}: the denied operation should be audited as {:?}, was {:?}",
                cell.tool, cell.mode, row.denied, cell.denied_reason
            ));
        }
    }
    for (tool, mode) in expected.keys() {
        if only.is_none()
            && !cells
                .iter()
                .any(|cell| cell.tool == tool && cell.mode == mode)
        {
            differences.push(format!(
                "{tool} {mode}: expected, but the matrix has no such tool"
            ));
        }
    }
    let ran = |tool: &str| cells.iter().any(|cell| cell.tool == tool);
    // The lane injected its key; the placeholder never reached the provider.
    let seen = stand.provider.log();
    let short = |key: &str| sha256_hex(key.as_bytes())[..12].to_owned();
    assert!(
        !ran("claude-code") || seen.contains(&format!("key-sha256={}", short(LANE_KEY))),
        "the lane's key never reached the provider:\n{seen}"
    );
    assert!(
        !seen.contains(&short(PLACEHOLDER_KEY)),
        "the placeholder key was forwarded:\n{seen}"
    );
    // Nothing reached what the policy does not allow, or a decoy.
    assert_eq!(
        stand.denied.connections(),
        0,
        "the denied stand-in was reached"
    );
    assert_eq!(
        stand.sshd.connections_on(2222),
        0,
        "sshd's port 2222 (no direct entry) was reached"
    );
    assert!(
        !ran("git-ssh") || stand.sshd.connections_on(22) > 0,
        "git over ssh never connected"
    );
    let fetched_by_https = cells
        .iter()
        .any(|cell| cell.works && !matches!(cell.tool, "git-ssh" | "claude-code"));
    assert!(
        !fetched_by_https || stand.allowed.connections() > 0,
        "the allowed stand-in was never reached"
    );
    stand.assert_decoys_untouched();
    // The DNS filter forwards only names the pack (or the suggestion
    // step's reload) allows.
    let asked = stand.upstream.asked();
    let allowed_upstream = |name: &str| {
        ALLOWED_NAMES.iter().any(|(_, allowed)| *allowed == name)
            || [SSH_NAME, "api.anthropic.com", MIRROR_NAME].contains(&name)
    };
    assert!(
        asked.iter().all(|name| allowed_upstream(name)),
        "the DNS filter forwarded a name the pack does not allow: {asked:?}"
    );

    eprintln!("compat: the matrix took {} s", started.elapsed().as_secs());
    let document = render_compatibility(&cells, &expected);
    if only.is_some() {
        assert!(differences.is_empty(), "{}", differences.join("\n"));
        return;
    }
    std::fs::write(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/COMPATIBILITY.md"),
        &document,
    )
    .unwrap();
    assert!(
        differences.is_empty(),
        "the matrix differs from docs/compatibility.expected.toml:\n{}\n\n{document}",
        differences.join("\n")
    );
}

/// `npm install` from a registry the pack does not name fails; the
/// suggestion for that run, applied, signed and reloaded, lets the same
/// install through.
fn suggestion_makes_the_install_work(stand: &Stand, daemon: &ModeDaemon, cargo: &Path) {
    let work = stand.dir.path().join("suggest");
    for dir in ["home", "cache", "config"] {
        std::fs::create_dir_all(work.join(dir)).unwrap();
    }
    let env = stand.environment(&work, cargo);
    let install = format!(
        "mkdir -p \"$W/project\" && npm install -q --prefix \"$W/project\" --registry https://{MIRROR_NAME}/ --no-audit --no-fund --fetch-retries 0 enforcer-compat-demo@1.0.0 && echo INSTALLED: yes"
    );
    let first = daemon.run(stand, &env, &install);
    assert_eq!(first.value("INSTALLED"), None, "{}", first.stdout);
    assert_eq!(
        stand.mirror.connections(),
        0,
        "the mirror was reached before it was allowed"
    );
    let cgroup = first.cgroup_id.to_string();
    // Wait until the refusal is in the audit log.
    assert!(
        wait_for_deny(daemon, first.cgroup_id, &[(MIRROR_NAME, 443)]).is_some(),
        "no deny for {MIRROR_NAME}"
    );
    let suggested = daemon.pack.with_extension("suggested.json");
    let output = Command::new(enforcer_bin())
        .args([
            "policy", "suggest", "--since", "10m", "--json", "--cgroup", &cgroup,
        ])
        .arg("--state-dir")
        .arg(&daemon.daemon.state)
        .arg("--apply")
        .arg(&daemon.pack)
        .arg("--out")
        .arg(&suggested)
        .output()
        .unwrap();
    assert!(output.status.success(), "policy suggest: {output:?}");
    let suggestion: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let entries = suggestion["allowlist"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|entry| entry["hostport"] == format!("{MIRROR_NAME}:443")),
        "{suggestion}"
    );
    // The operator reviews, signs, and the daemon reloads it.
    std::fs::copy(&suggested, &daemon.pack).unwrap();
    sign(&daemon.pack, &daemon.key);
    let reloaded = daemon.daemon.cli(&["reload"]);
    assert!(reloaded.status.success(), "{reloaded:?}");
    let second = daemon.run(stand, &env, &install);
    assert_eq!(
        second.value("INSTALLED"),
        Some("yes"),
        "after the suggestion: {}\n{}",
        second.stdout,
        second.stderr
    );
    assert!(stand.mirror.connections() > 0);
}

//! Issue 15 with real clients: tools that ignore the proxy variables or
//! resolve names themselves (curl `--noproxy`, glibc's `getent`, Python,
//! a static Go binary with its own resolver, Node's `fetch`) work for an
//! allowlisted name in egress mode `redirect` through the DNS filter and
//! the transparent listener, and reach nothing else; in `proxy-only` the
//! proxy-unaware ones fail. A direct entry written as a name opens only
//! what the filter answered, for the answer's TTL.
//!
//! Stand-ins, all on this machine: HTTPS servers with a test CA for
//! `up.test` (allowlisted) and `denied.test`; the daemon's `--dns-upstream`
//! is a loopback mock ([`MockDns`]); clients run in the test cgroup in
//! their own mount namespace whose `/etc/resolv.conf` names a loopback
//! decoy resolver (UDP and TCP): a byte there fails the test, and the
//! host's resolver is never asked. Needs root; fails (never skips) without.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use enforcer_tests::{
    Decoy, MockDns, NetNs, Owned, TestCgroup, bounded, require_root, spawn_ready, test_ca,
};

#[path = "common/daemon.rs"]
mod common;
use common::{Daemon, ModeFrom, Setup, Spec, audit_rows, detail};

/// The addresses of one test's stand-ins, in `127.0.NET.0/24` (each test
/// its own `NET`, so tests run in parallel).
#[derive(Clone, Copy)]
struct Net(u8);

impl Net {
    /// `up.test`'s HTTPS server (allowlisted; its `--resolve` pin).
    fn up(self) -> String {
        format!("127.0.{}.10", self.0)
    }
    /// `denied.test`'s HTTPS server (the mock upstream answers the name,
    /// the policy does not allow it).
    fn denied(self) -> String {
        format!("127.0.{}.11", self.0)
    }
    /// A decoy on port 443: where a client told the wrong address would land.
    fn decoy(self) -> String {
        format!("127.0.{}.12", self.0)
    }
    /// The resolver the clients' `/etc/resolv.conf` names (a decoy).
    fn resolver(self) -> String {
        format!("127.0.{}.53", self.0)
    }
}

/// Proxy variables the clients must not see.
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

/// Node's `fetch` of `argv[1]`: prints the body, or the error's cause (exit 1).
const NODE_FETCH: &str = "fetch(process.argv[1]).then(r => r.text()).then(t => process.stdout.write(t)).catch(e => { console.log('error: ' + (e.cause || e)); process.exit(1); })";

/// One HTTPS server: answers every GET with `hello from NAME`.
const HTTPS_SERVER: &str = r#"
import http.server, ssl, sys
addr, name, cert, key = sys.argv[1:5]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        body = ("hello from %s\n" % name).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server = http.server.ThreadingHTTPServer((addr, 443), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#;

/// A Go client: GET the URL, print the body (or the error, exit 1).
const GO_FETCH: &str = r#"package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	client := &http.Client{Timeout: 20 * time.Second}
	response, err := client.Get(os.Args[1])
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	body, _ := io.ReadAll(response.Body)
	fmt.Print(string(body))
}
"#;

/// The stand-ins: CA, HTTPS servers, decoys, the clients' resolv.conf.
struct Stand {
    net: Net,
    _dir: tempfile::TempDir,
    ca: PathBuf,
    resolv: PathBuf,
    _servers: Vec<Owned>,
    resolver_udp: Decoy,
    resolver_tcp: Decoy,
    decoy: Decoy,
}

impl Stand {
    fn start(net: Net) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("enforcer-clients-")
            .tempdir()
            .unwrap();
        let ca = test_ca(dir.path(), &["up.test", "denied.test"]);
        let mut servers = Vec::new();
        for (ip, name) in [(net.up(), "up.test"), (net.denied(), "denied.test")] {
            servers.push(https_server(dir.path(), &ip, name));
        }
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(
            &resolv,
            format!(
                "nameserver {}\noptions timeout:2 attempts:1\n",
                net.resolver()
            ),
        )
        .unwrap();
        let resolver_udp = Decoy::udp(UdpSocket::bind((net.resolver(), 53)).unwrap());
        let resolver_tcp = Decoy::tcp(TcpListener::bind((net.resolver(), 53)).unwrap());
        let decoy = Decoy::tcp(TcpListener::bind((net.decoy(), 443)).unwrap());
        Self {
            net,
            _dir: dir,
            ca,
            resolv,
            _servers: servers,
            resolver_udp,
            resolver_tcp,
            decoy,
        }
    }

    /// A daemon on `cgroup` allowing `up.test:443` (pinned to [`Net::up`]),
    /// with `upstream` as its `--dns-upstream`.
    fn daemon(&self, cgroup: &TestCgroup, mode: ModeFrom, upstream: &MockDns) -> (Setup, Daemon) {
        let mut spec = Spec::new(
            &[r#"{"hostport":"up.test:443"}"#.to_owned()],
            &[format!("up.test:443:{}", self.net.up())],
            mode,
        );
        spec.dns_upstream = Some(upstream.addr);
        let setup = Setup::build("clients", &spec);
        let daemon = setup.start(cgroup);
        (setup, daemon)
    }

    /// Runs `program args` in `cgroup`, in a mount namespace whose
    /// resolv.conf names the decoy resolver, without proxy variables,
    /// trusting the test CA; bounded at 60 s.
    fn client(&self, cgroup: &TestCgroup, program: &str, args: &[&str]) -> Output {
        let mut command = cgroup.command("unshare");
        command
            .args([
                "--mount",
                "sh",
                "-c",
                r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#,
            ])
            .arg(&self.resolv)
            .arg(program)
            .args(args)
            .env("SSL_CERT_FILE", &self.ca)
            .env("NODE_EXTRA_CA_CERTS", &self.ca)
            .env("GOTOOLCHAIN", "local")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for variable in PROXY_VARIABLES {
            command.env_remove(variable);
        }
        bounded(command, Duration::from_secs(60))
    }

    fn curl(&self, cgroup: &TestCgroup, extra: &[&str], url: &str) -> Output {
        let ca = self.ca.display().to_string();
        let mut args = vec!["-sS", "--max-time", "20", "--noproxy", "*", "--cacert", &ca];
        args.extend_from_slice(extra);
        args.push(url);
        self.client(cgroup, "curl", &args)
    }

    fn assert_decoys_untouched(&self) {
        self.resolver_udp
            .assert_untouched("the clients' resolver (UDP)");
        self.resolver_tcp
            .assert_untouched("the clients' resolver (TCP)");
        self.decoy.assert_untouched("the decoy on port 443");
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Starts the HTTPS server for `name` on `ip`:443 and waits until it listens.
fn https_server(dir: &Path, ip: &str, name: &str) -> Owned {
    let script = dir.join("https_server.py");
    std::fs::write(&script, HTTPS_SERVER).unwrap();
    let mut command = Command::new("python3");
    command
        .arg(&script)
        .args([ip, name, "leaf.pem", "leaf.key"])
        .current_dir(dir)
        .stderr(Stdio::inherit());
    spawn_ready(command, &format!("the HTTPS server for {name}"))
}

/// The static Go client, built once per target directory (Debian's Go,
/// no network: `GOPROXY=off`, `GOTOOLCHAIN=local`, standard library only).
fn go_fetch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-fetch");
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("go-fetch");
    let source = dir.join("main.go");
    std::fs::write(&source, GO_FETCH).unwrap();
    let output = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(&source)
        .current_dir(&dir)
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("gopath"))
        .output()
        .expect("go (cargo xtask setup installs golang-go)");
    assert!(output.status.success(), "go build: {output:?}");
    binary
}

/// The upstream knows `denied.test` (so its refusal is the policy's, not
/// NXDOMAIN); `up.test` is answered from its pin.
fn upstream(net: Net) -> MockDns {
    MockDns::start(&[("denied.test", net.denied().parse().unwrap(), 60)])
}

#[test]
fn proxy_unaware_clients_reach_allowlisted_names_through_the_redirect_and_nothing_else() {
    require_root();
    let net = Net(31);
    let stand = Stand::start(net);
    let cgroup = TestCgroup::new("clients-redirect");
    let upstream = upstream(net);
    let (setup, daemon) = stand.daemon(&cgroup, ModeFrom::Pack, &upstream);

    // curl without proxy variables: resolves through the filter, connects
    // to the pin's address, is redirected, reaches up.test.
    let output = stand.curl(&cgroup, &[], "https://up.test/");
    assert!(output.status.success(), "curl up.test: {output:?}");
    assert_eq!(text(&output.stdout), "hello from up.test\n");
    // A denied name fails at resolution (curl's exit 6), at once.
    let output = stand.curl(&cgroup, &[], "https://denied.test/");
    assert_eq!(
        output.status.code(),
        Some(6),
        "curl denied.test: {output:?}"
    );
    // Told the decoy's address for an allowlisted name: the bytes reach
    // only up.test's server (the pin), never the decoy.
    let output = stand.curl(
        &cgroup,
        &["--resolve", &format!("up.test:443:{}", net.decoy())],
        "https://up.test/",
    );
    assert!(output.status.success(), "curl --resolve decoy: {output:?}");
    assert_eq!(text(&output.stdout), "hello from up.test\n");

    // glibc's stub resolver (getent): the allowed name resolves, the
    // denied one does not exist for it (exit 2).
    let output = stand.client(&cgroup, "getent", &["hosts", "up.test"]);
    assert!(output.status.success(), "getent up.test: {output:?}");
    assert!(text(&output.stdout).starts_with(&net.up()), "{output:?}");
    let output = stand.client(&cgroup, "getent", &["hosts", "denied.test"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "getent denied.test: {output:?}"
    );

    // Python: urllib without proxies; getpeername on a redirected socket;
    // UDP to 443 and TCP to a port no entry names are EPERM.
    let python = format!(
        r#"
import socket, ssl, urllib.request
context = ssl.create_default_context(cafile="{ca}")
opener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}), urllib.request.HTTPSHandler(context=context))
print("urllib", opener.open("https://up.test/", timeout=20).read().decode().strip())
s = socket.create_connection(("{decoy}", 443), timeout=10)
print("peer", "%s:%d" % s.getpeername())
s.close()
for what, attempt in [
    ("udp443", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("{decoy}", 443))),
    ("udp8443", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("{decoy}", 8443))),
    ("tcp8443", lambda: socket.create_connection(("{decoy}", 8443), timeout=10)),
]:
    try:
        attempt()
        print(what, "went through")
    except PermissionError:
        print(what, "EPERM")
    except OSError as error:
        print(what, "error", error)
"#,
        ca = stand.ca.display(),
        decoy = net.decoy(),
    );
    let output = stand.client(&cgroup, "python3", &["-c", &python]);
    assert!(output.status.success(), "python: {output:?}");
    let said = text(&output.stdout);
    for line in [
        "urllib hello from up.test",
        &format!("peer {}:443", net.decoy()),
        "udp443 EPERM",
        "udp8443 EPERM",
        "tcp8443 EPERM",
    ] {
        assert!(
            said.lines().any(|l| l == line),
            "python said {said:?}, not {line:?}"
        );
    }

    // A static Go binary (its own resolver, its own UDP) and Node's fetch.
    let go = go_fetch();
    let output = stand.client(&cgroup, go.to_str().unwrap(), &["https://up.test/"]);
    assert!(output.status.success(), "go: {output:?}");
    assert_eq!(text(&output.stdout), "hello from up.test\n", "go");
    let output = stand.client(&cgroup, "node", &["-e", NODE_FETCH, "https://up.test/"]);
    assert!(output.status.success(), "node: {output:?}");
    assert_eq!(text(&output.stdout), "hello from up.test\n", "node");
    let output = stand.client(&cgroup, "node", &["-e", NODE_FETCH, "https://denied.test/"]);
    assert!(!output.status.success(), "node denied.test: {output:?}");

    // `enforcer events --since 5m`: the redirected tunnel and the refusal
    // naming the query, both attributed.
    let refused = audit_rows(&setup.state, 1, |row| {
        row["reason"] == "dns_refused" && row["host"] == "denied.test" && row["comm"] == "curl"
    });
    assert!(
        !refused.is_empty(),
        "no dns_refused event for curl's denied.test query"
    );
    let tunnels = audit_rows(&setup.state, 1, |row| {
        row["decision"] == "allow"
            && row["sni"] == "up.test"
            && detail(row)["kind"] == "transparent"
    });
    assert!(
        !tunnels.is_empty(),
        "no allowed transparent tunnel for up.test"
    );
    let status = daemon.try_control(r#"{"command":"status"}"#).unwrap();
    assert!(
        status["result"]["dns"]["answered"].as_u64().unwrap() >= 4,
        "{status}"
    );
    assert!(
        status["result"]["kernel"]["redirected"].as_u64().unwrap() >= 5,
        "{status}"
    );
    assert!(
        upstream.asked().iter().all(|name| name != "up.test"),
        "a pinned name is never forwarded: {:?}",
        upstream.asked()
    );
    stand.assert_decoys_untouched();
}

#[test]
fn in_proxy_only_mode_proxy_unaware_clients_fail_and_names_still_resolve() {
    require_root();
    let net = Net(32);
    let stand = Stand::start(net);
    let cgroup = TestCgroup::new("clients-proxy-only");
    let upstream = upstream(net);
    let (_setup, daemon) = stand.daemon(&cgroup, ModeFrom::ProxyOnly, &upstream);
    // The filter serves in proxy-only mode too...
    let output = stand.client(&cgroup, "getent", &["hosts", "up.test"]);
    assert!(output.status.success(), "getent up.test: {output:?}");
    // ...but a connect that ignores the proxy is EPERM.
    let go = go_fetch();
    let output = stand.client(&cgroup, go.to_str().unwrap(), &["https://up.test/"]);
    assert!(!output.status.success(), "go in proxy-only: {output:?}");
    assert!(
        text(&output.stdout).contains("operation not permitted"),
        "go: {output:?}"
    );
    let output = stand.client(&cgroup, "node", &["-e", NODE_FETCH, "https://up.test/"]);
    assert!(!output.status.success(), "node in proxy-only: {output:?}");
    assert!(text(&output.stdout).contains("EPERM"), "node: {output:?}");
    let output = stand.curl(&cgroup, &[], "https://up.test/");
    assert_eq!(
        output.status.code(),
        Some(7),
        "curl --noproxy in proxy-only: {output:?}"
    );
    // Through the proxy, as `enforcer run` sets it up, curl works.
    let proxy = format!("http://{}", daemon.proxy);
    let output = stand.curl(
        &cgroup,
        &["--proxy", &proxy, "--noproxy", ""],
        "https://up.test/",
    );
    assert!(
        output.status.success(),
        "curl through the proxy: {output:?}"
    );
    assert_eq!(text(&output.stdout), "hello from up.test\n");
    stand.assert_decoys_untouched();
}

/// An ssh-like server inside the namespace: sends a banner on accept,
/// prints `accepted` per connection.
const BANNER_SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 2222))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    print("accepted", flush=True)
    c.sendall(b"SSH-2.0-enforcer-test\r\n")
    c.close()
"#;

#[test]
fn a_direct_entry_by_name_opens_what_the_filter_answered_until_its_ttl_ends() {
    require_root();
    let net = Net(33);
    let stand = Stand::start(net);
    let ns = NetNs::new("direct");
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "python3",
            "-c",
            BANNER_SERVER,
            &ns.inside,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(server.stdout.take().unwrap());
    let _server = Owned(server);
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut lines, &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    // The name's answer lives 3 s; the entry itself an hour.
    let upstream = MockDns::start(&[("git.test", ns.inside.parse().unwrap(), 3)]);
    let cgroup = TestCgroup::new("clients-direct-name");
    let mut spec = Spec::new(&[], &[], ModeFrom::ProxyOnly);
    spec.egress = r#""direct":[{"hostport":"git.test:2222"}]"#.to_owned();
    spec.fronting = format!(r#""allowPrivateRanges":["{}"]"#, ns.range);
    spec.dns_upstream = Some(upstream.addr);
    let setup = Setup::build("clients-direct", &spec);
    let _daemon = setup.start(&cgroup);
    let target = format!("{}:2222", ns.inside);

    // Before anyone asked for the name, its address is closed.
    let (outcome, _) = cgroup.probe(&["tcp-connect", &target]);
    assert!(outcome.is_eperm(), "before the answer: {outcome:?}");
    // An ssh-like client: resolves git.test (through the filter) and
    // connects at once; it reads the server's banner.
    let client = r#"
import socket
s = socket.create_connection(("git.test", 2222), timeout=10)
print(s.recv(64).decode().strip())
"#;
    let output = stand.client(&cgroup, "python3", &["-c", client]);
    assert!(output.status.success(), "client: {output:?}");
    assert_eq!(text(&output.stdout).trim(), "SSH-2.0-enforcer-test");
    let (outcome, _) = cgroup.probe(&["tcp-connect", &target]);
    assert!(!outcome.is_eperm(), "within the TTL: {outcome:?}");
    // After the answer's TTL (3 s, at least MIN_LEARNED_TTL): closed again,
    // though the entry itself lives on.
    std::thread::sleep(Duration::from_secs(5));
    let (outcome, _) = cgroup.probe(&["tcp-connect", &target]);
    assert!(outcome.is_eperm(), "after the TTL: {outcome:?}");
    assert_eq!(
        upstream.asked(),
        vec!["git.test".to_owned(); upstream.asked().len()]
    );
    stand.assert_decoys_untouched();
}

#[test]
fn a_direct_name_answered_with_loopback_or_metadata_opens_nothing() {
    require_root();
    let net = Net(34);
    let stand = Stand::start(net);
    let holder = TcpListener::bind((net.decoy(), 2222)).unwrap();
    let inside = Decoy::tcp(holder);
    let upstream = MockDns::start(&[
        ("rebind.test", net.decoy().parse().unwrap(), 60),
        ("rebind.test", "169.254.169.254".parse().unwrap(), 60),
    ]);
    let cgroup = TestCgroup::new("clients-direct-rebind");
    let mut spec = Spec::new(&[], &[], ModeFrom::ProxyOnly);
    spec.egress = r#""direct":[{"hostport":"rebind.test:2222"}]"#.to_owned();
    spec.dns_upstream = Some(upstream.addr);
    let setup = Setup::build("clients-rebind", &spec);
    let _daemon = setup.start(&cgroup);
    let client = r#"
import socket
try:
    socket.create_connection(("rebind.test", 2222), timeout=5)
    print("connected")
except PermissionError:
    print("EPERM")
except OSError as error:
    print("error", error)
"#;
    let output = stand.client(&cgroup, "python3", &["-c", client]);
    assert!(output.status.success(), "client: {output:?}");
    // Loopback and metadata answers are dropped by the filter's own
    // address-class check: the name resolves to nothing usable, and the
    // kernel opens nothing.
    let said = text(&output.stdout);
    assert!(!said.contains("connected"), "{said}");
    let (outcome, _) = cgroup.probe(&["tcp-connect", &format!("{}:2222", net.decoy())]);
    assert!(outcome.is_eperm(), "{outcome:?}");
    inside.assert_untouched("a loopback answer for a direct name");
    stand.assert_decoys_untouched();
}

//! Stand-ins the end-to-end tests share: processes killed on drop, a
//! network namespace joined by a veth pair, and a mock Anthropic provider.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// A child process of the test, killed on drop.
pub struct Owned(pub Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `command` (stdout piped) and waits for its first line, which
/// must be `ready`; `what` names it in the failure.
pub fn spawn_ready(mut command: Command, what: &str) -> Owned {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready", "{what} did not start");
    Owned(child)
}

/// Claude Code as `cargo xtask setup` pins it (xtask/src/setup.rs,
/// `CLAUDE_CODE_VERSION`): the configuration [`seed_claude_config`]
/// writes is that version's.
pub const CLAUDE_CODE_VERSION: &str = "2.1.112";

/// What Claude Code holds instead of a key in the tests.
pub const PLACEHOLDER_KEY: &str = "sk-ant-api03-enforcer-placeholder-not-a-key-0000";

/// Claude Code's configuration in `config` with the first-run dialogs done
/// (onboarding, [`PLACEHOLDER_KEY`] approved by its last 20 characters,
/// `project` trusted).
pub fn seed_claude_config(config: &Path, project: &Path) {
    std::fs::create_dir_all(project).unwrap();
    std::fs::create_dir_all(config).unwrap();
    let settings = serde_json::json!({
        "hasCompletedOnboarding": true,
        "lastOnboardingVersion": CLAUDE_CODE_VERSION,
        "theme": "dark",
        "customApiKeyResponses": {
            "approved": [&PLACEHOLDER_KEY[PLACEHOLDER_KEY.len() - 20..]],
            "rejected": [],
        },
        "projects": { project.display().to_string(): { "hasTrustDialogAccepted": true } },
    });
    std::fs::write(config.join(".claude.json"), settings.to_string()).unwrap();
}

/// Waits for `command` at most `limit`; kills it past that (a test fails
/// on a hang rather than waiting forever).
pub fn bounded(mut command: Command, limit: Duration) -> Output {
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A network namespace of the test joined to this host by a veth pair
/// (`10.231.N.1` here, `10.231.N.2` inside); removed on drop.
pub struct NetNs {
    /// The namespace's name (`ip netns exec NAME`).
    pub name: String,
    host_link: String,
    /// The address inside the namespace.
    pub inside: String,
    /// This host's end of the veth pair.
    pub host: String,
    /// Its /30.
    pub range: String,
}

impl NetNs {
    /// A namespace named after `tag` and this process, with its veth pair up.
    pub fn new(tag: &str) -> Self {
        let n = std::process::id() % 200 + 20;
        let name = format!("enft-{tag}-{}", std::process::id());
        let host_link = format!("enft{}h", std::process::id());
        let peer = format!("enft{}p", std::process::id());
        let ns = Self {
            name: name.clone(),
            host_link: host_link.clone(),
            inside: format!("10.231.{n}.2"),
            host: format!("10.231.{n}.1"),
            range: format!("10.231.{n}.0/30"),
        };
        let ip = |args: &[&str]| {
            let output = Command::new("ip").args(args).output().unwrap();
            assert!(output.status.success(), "ip {args:?}: {output:?}");
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &name]);
        ip(&[
            "addr",
            "add",
            &format!("10.231.{n}.1/30"),
            "dev",
            &host_link,
        ]);
        ip(&["link", "set", &host_link, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{}/30", ns.inside),
            "dev",
            &peer,
        ]);
        ip(&["-n", &name, "link", "set", &peer, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A stand-in for api.anthropic.com (HTTPS with the test's CA; the Messages
/// API, streamed or not: it answers `ENFORCER-PING-x` with
/// `ENFORCER-PONG-x from the mock provider`) and a DNS server that refuses
/// every query (the daemon's `--dns-upstream`). Prints `ready DNSPORT`;
/// logs one line per request (method, path, which credential header came
/// and a short hash of an `x-api-key`, never a value or a body) and per
/// DNS query.
const MOCK_PROVIDER: &str = r#"
import hashlib, http.server, json, re, socket, ssl, sys, threading

addr, cert, key, log_path = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
log = open(log_path, "a", buffering=1)
lock = threading.Lock()

def note(line):
    with lock:
        log.write(line + "\n")

def serve_dns(sock):
    while True:
        query, peer = sock.recvfrom(4096)
        if len(query) < 12:
            continue
        note("dns query")
        # The same id and question; QR set, RCODE 5 (REFUSED), no records.
        flags = bytes([0x80 | (query[2] & 0x79), 0x05])
        sock.sendto(query[:2] + flags + query[4:6] + b"\0\0\0\0\0\0" + query[12:], peer)

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def note_request(self):
        # Which key came, as a short hash of it (test keys only; never a value).
        key = self.headers.get("x-api-key")
        digest = hashlib.sha256(key.encode()).hexdigest()[:12] if key else "-"
        note("%s %s x-api-key=%s authorization=%s key-sha256=%s" % (self.command,
             self.path.split("?")[0], "x-api-key" in self.headers,
             "authorization" in self.headers, digest))

    def reply(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def not_found(self):
        self.reply(404, '{"type":"error","error":{"type":"not_found_error","message":"mock: no such endpoint"}}')

    def do_GET(self):
        self.note_request()
        self.not_found()

    def do_POST(self):
        self.note_request()
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        path = self.path.split("?")[0]
        if path == "/v1/messages/count_tokens":
            return self.reply(200, '{"input_tokens": 12}')
        if path != "/v1/messages":
            return self.not_found()
        request = json.loads(body)
        found = re.search(rb"ENFORCER-PING-([A-Za-z0-9]+)", body)
        text = "ENFORCER-PONG-%s from the mock provider" % found.group(1).decode() if found else "mock answer"
        usage = {"input_tokens": 12, "output_tokens": 8, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0}
        message = {"id": "msg_mock_01", "type": "message", "role": "assistant",
                   "model": request.get("model", "claude-sonnet-4-5"), "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": usage}
        if not request.get("stream"):
            message.update(content=[{"type": "text", "text": text}], stop_reason="end_turn")
            return self.reply(200, json.dumps(message))
        events = [
            ("message_start", {"type": "message_start", "message": message}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": text}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 8},
                               "delta": {"stop_reason": "end_turn", "stop_sequence": None}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for name, data in events:
            frame = ("event: %s\ndata: %s\n\n" % (name, json.dumps(data))).encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
        self.wfile.write(b"0\r\n\r\n")

dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dns.bind(("127.0.0.1", 0))
threading.Thread(target=serve_dns, args=(dns,), daemon=True).start()
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server = http.server.ThreadingHTTPServer((addr, 443), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready %d" % dns.getsockname()[1], flush=True)
server.serve_forever()
"#;

/// The mock provider's process, killed (it is this test's child) on drop.
pub struct MockProvider {
    child: std::process::Child,
    /// Its refusing DNS server, for `--dns-upstream`.
    pub dns: String,
    log: PathBuf,
}

impl MockProvider {
    /// A test CA, a certificate for api.anthropic.com from it, and the mock
    /// on `ip`:443; returns the mock and the CA's file.
    pub fn start(dir: &Path, ip: &str) -> (Self, PathBuf) {
        let ca = crate::test_ca(dir, &["api.anthropic.com"]);
        let script = dir.join("mock_provider.py");
        std::fs::write(&script, MOCK_PROVIDER).unwrap();
        let log = dir.join("mock_provider.log");
        let mut child = Command::new("python3")
            .arg(&script)
            .args([ip, "leaf.pem", "leaf.key"])
            .arg(&log)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut ready,
        )
        .unwrap();
        let mut mock = Self {
            child,
            dns: String::new(),
            log,
        };
        let port = ready
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("the mock provider did not start: {ready:?}"));
        mock.dns = format!("127.0.0.1:{}", port.trim());
        (mock, ca)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

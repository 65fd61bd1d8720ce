//! `cargo xtask demo`: `enforcer run` on the embedded default policy.
//!
//! The policy's public names are pinned with `--resolve` to local
//! stand-ins: a mock Anthropic provider on 127.0.0.5:443 with a certificate
//! from a throw-away CA (trusted through `--extra-ca`). Inside the enforced
//! command a script tries a direct connection, DNS to a resolver outside,
//! a CONNECT to a host that is not allowlisted, a CONNECT to an allowlisted
//! host with a mismatched SNI, an allowed CONNECT and a lane-routed API
//! call; the demo prints what was allowed and denied and why, then the
//! matching audit events. Nothing leaves the machine.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{is_root, run_command_in, setup::TEST_USER, workspace_root};

/// The stand-in for api.anthropic.com.
const PROVIDER_ADDR: &str = "127.0.0.5";

/// A mock Anthropic API over TLS: answers /v1/messages with a message that
/// names the model it got, and anything else with a small JSON document.
const MOCK_PROVIDER: &str = r#"
import http.server, json, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.reply(200, {"data": [{"id": "claude-sonnet-4-5", "type": "model"}]})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
        auth = "yes" if self.headers.get("authorization") else "no"
        self.reply(200, {"id": "msg_demo", "type": "message", "role": "assistant", "model": body.get("model"),
                         "content": [{"type": "text", "text": "hello from the stand-in provider (auth injected: " + auth + ")"}],
                         "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 9}})
    def log_message(self, *args):
        pass
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
context.set_alpn_protocols(["http/1.1"])
server = http.server.ThreadingHTTPServer((sys.argv[1], 443), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#;

/// What runs inside the enforced command: one `ATTEMPT|what|target|verdict|detail` line per try.
const INSIDE: &str = r#"
proxy_hostport=${HTTPS_PROXY#http://}
line() { printf 'ATTEMPT|%s|%s|%s|%s\n' "$1" "$2" "$3" "$4"; }

out=$("$DEMO_PROBE" tcp-connect 127.0.0.5:443)
case "$out" in ok) line "direct TCP connection (no proxy)" "127.0.0.5:443" allowed "$out";; *) line "direct TCP connection (no proxy)" "127.0.0.5:443" denied "kernel: $out";; esac

out=$("$DEMO_PROBE" dns 127.0.0.2:53)
case "$out" in ok) line "DNS query to a resolver outside" "127.0.0.2:53" allowed "$out";; *) line "DNS query to a resolver outside" "127.0.0.2:53" denied "kernel: $out";; esac

code=$(curl -s -o /dev/null -D "$DEMO_DIR/headers" -w '%{http_connect}' --max-time 10 https://example.com)
reason=$(grep -i '^x-enforcer-reason' "$DEMO_DIR/headers" 2>/dev/null | tr -d '\r' | cut -d' ' -f2)
if [ "$code" = 403 ]; then line "CONNECT to a host not on the allowlist" "example.com:443" denied "proxy: 403 $reason"; else line "CONNECT to a host not on the allowlist" "example.com:443" allowed "CONNECT answered $code"; fi

if openssl s_client -proxy "$proxy_hostport" -connect api.anthropic.com:443 -servername evil.example -CAfile "$DEMO_CA" </dev/null >"$DEMO_DIR/sclient" 2>&1 && grep -q 'Verify return code: 0' "$DEMO_DIR/sclient"; then
  line "CONNECT allowlisted host, mismatched SNI" "api.anthropic.com:443" allowed "TLS handshake completed"
else
  line "CONNECT allowlisted host, mismatched SNI" "api.anthropic.com:443" denied "proxy: closed after the ClientHello (SNI evil.example)"
fi

code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$DEMO_CA" https://api.anthropic.com/v1/models)
if [ "$code" = 200 ]; then line "CONNECT allowlisted host, matching SNI" "api.anthropic.com:443" allowed "HTTP 200 from the provider"; else line "CONNECT allowlisted host, matching SNI" "api.anthropic.com:443" denied "curl got $code"; fi

body=$(curl -s --max-time 20 "$ANTHROPIC_BASE_URL/v1/messages" -H 'content-type: application/json' -H 'anthropic-version: 2023-06-01' \
  -d '{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}' -w '|%{http_code}')
code=${body##*|}
text=$(printf '%s' "${body%|*}" | sed -n 's/.*"text": *"\([^"]*\)".*/\1/p')
if [ "$code" = 200 ]; then line "lane-routed API call (claude-sonnet-4-5)" "$ANTHROPIC_BASE_URL" allowed "$text"; else line "lane-routed API call (claude-sonnet-4-5)" "$ANTHROPIC_BASE_URL" denied "router answered $code"; fi
"#;

/// The expected verdicts under the embedded default policy.
const EXPECTED: &[(&str, &str)] = &[
    ("direct TCP connection (no proxy)", "denied"),
    ("DNS query to a resolver outside", "denied"),
    ("CONNECT to a host not on the allowlist", "denied"),
    ("CONNECT allowlisted host, mismatched SNI", "denied"),
    ("CONNECT allowlisted host, matching SNI", "allowed"),
    ("lane-routed API call (claude-sonnet-4-5)", "allowed"),
];

/// Ends the mock provider (our child, by its pid) on drop.
struct MockProvider(Child);

impl Drop for MockProvider {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    if !output.status.success() {
        bail!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A throw-away CA and a certificate for the stand-in provider.
fn make_certificates(dir: &Path) -> anyhow::Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=enforcer demo CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=api.anthropic.com",
        ],
    )?;
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:api.anthropic.com\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    )
}

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the demo attaches BPF programs to a cgroup and needs root: run `sudo cargo xtask demo`"
        );
    }
    let root = workspace_root();
    let enforcer = root.join("target/debug/enforcer");
    let probe = root.join("target/debug/enforcer-probe");
    let dir = root.join("target/demo");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("state")).context("creating target/demo")?;
    make_certificates(&dir)?;
    fs::write(dir.join("mock_provider.py"), MOCK_PROVIDER)?;
    fs::write(dir.join("inside.sh"), INSIDE)?;
    // The command runs as the unprivileged test user: let it write its scratch files.
    let _ = run_command_in(Command::new("chmod").args(["0777", "."]), &dir);

    let mut mock = Command::new("python3")
        .arg(dir.join("mock_provider.py"))
        .args([PROVIDER_ADDR, "server.pem", "server.key"])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the mock provider")?;
    let mut ready = String::new();
    if let Some(stdout) = mock.stdout.as_mut() {
        use std::io::BufRead as _;
        std::io::BufReader::new(stdout).read_line(&mut ready)?;
    }
    let _mock = MockProvider(mock);
    if ready.trim() != "ready" {
        bail!("the mock provider did not start");
    }

    println!(
        "== enforcer run on the embedded default policy (api.anthropic.com -> {PROVIDER_ADDR}:443, a local stand-in)\n"
    );
    let started = Instant::now();
    let output = Command::new(&enforcer)
        .args(["run", "--user", TEST_USER, "--state-dir"])
        .arg(dir.join("state"))
        .args([
            "--resolve",
            &format!("api.anthropic.com:443:{PROVIDER_ADDR}"),
            "--extra-ca",
        ])
        .arg(dir.join("ca.pem"))
        .args(["--", "sh"])
        .arg(dir.join("inside.sh"))
        .env("DEMO_PROBE", &probe)
        .env("DEMO_CA", dir.join("ca.pem"))
        .env("DEMO_DIR", &dir)
        .env("ANTHROPIC_AUTH_TOKEN", "demo-token-held-by-enforcer")
        .env("NO_COLOR", "1")
        .stderr(fs::File::create(dir.join("enforcer.log"))?)
        .output()
        .context("running enforcer run")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!(
        "{:<42} {:<26} {:<8} why",
        "attempt from inside `enforcer run`", "target", "verdict"
    );
    println!("{}", "-".repeat(120));
    let mut surprises = Vec::new();
    let mut seen = 0;
    for line in stdout
        .lines()
        .filter_map(|line| line.strip_prefix("ATTEMPT|"))
    {
        let fields: Vec<&str> = line.splitn(4, '|').collect();
        if fields.len() < 4 {
            continue;
        }
        seen += 1;
        let expected = EXPECTED
            .iter()
            .find(|(what, _)| *what == fields[0])
            .map(|(_, v)| *v);
        let mark = if expected == Some(fields[2]) {
            ""
        } else {
            "  <- unexpected"
        };
        if !mark.is_empty() {
            surprises.push(fields[0].to_owned());
        }
        println!(
            "{:<42} {:<26} {:<8} {}{mark}",
            fields[0], fields[1], fields[2], fields[3]
        );
    }
    println!(
        "\n(ran in {:.1} s; the command's exit status: {})",
        started.elapsed().as_secs_f64(),
        output.status
    );
    println!("\n== the matching audit events (enforcer events --since 5m)");
    let events = Command::new(&enforcer)
        .args(["events", "--since", "5m", "--state-dir"])
        .arg(dir.join("state"))
        .output()
        .context("enforcer events")?;
    print!("{}", String::from_utf8_lossy(&events.stdout));
    println!(
        "\n(enforcer's own log: {})",
        dir.join("enforcer.log").display()
    );
    if seen != EXPECTED.len() {
        bail!(
            "the script inside reported {seen} of {} attempts; see {}",
            EXPECTED.len(),
            dir.join("enforcer.log").display()
        );
    }
    if !surprises.is_empty() {
        bail!("unexpected verdicts: {}", surprises.join(", "));
    }
    Ok(())
}

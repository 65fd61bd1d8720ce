//! The peers the enforcer is measured against, each started in the
//! foreground with a configuration the bench writes, as root, listening
//! on loopback, resolving the upstream's name through the bench's hosts
//! file (bind-mounted over /etc/hosts in the bench's mount namespace;
//! Squid is also given it by name). Stopped by pid when dropped.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A running peer.
pub struct Peer {
    /// What the table calls it, with its version.
    pub label: String,
    pub listen: SocketAddr,
    child: std::process::Child,
}

impl Peer {
    /// Its pid (CPU and RSS are read for it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port, for a peer that cannot bind port 0 and say.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// The version line `program` prints, or why it cannot be run.
fn version(
    program: &str,
    args: &[&str],
    pick: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("{program} is not installed (cargo xtask setup installs it)"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .find_map(&pick)
        .with_context(|| format!("{program} {args:?} printed no version: {text:?}"))
}

/// How long a peer may take to listen. LiteLLM's first start on a fresh
/// machine compiles its Python modules (17 s was seen).
const START_WITHIN: Duration = Duration::from_secs(90);

/// Starts `command` and waits until `listen` accepts, at most
/// [`START_WITHIN`].
fn start(
    label: String,
    listen: SocketAddr,
    mut command: Command,
    log: &Path,
) -> anyhow::Result<Peer> {
    let log_file = std::fs::File::create(log)?;
    let child = command
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {label}"))?;
    let mut peer = Peer {
        label,
        listen,
        child,
    };
    let deadline = Instant::now() + START_WITHIN;
    loop {
        if std::net::TcpStream::connect(listen).is_ok() {
            return Ok(peer);
        }
        if let Some(status) = peer.child.try_wait()? {
            bail!(
                "{} exited with {status} before listening: {}",
                peer.label,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not listen on {listen} within {} s",
                peer.label,
                START_WITHIN.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Squid as a CONNECT proxy: no cache, no access log, one process (`-N`).
pub fn squid(dir: &Path, hosts: &Path) -> anyhow::Result<Peer> {
    let version = version("squid", &["-v"], |line| {
        line.strip_prefix("Squid Cache: Version ")
            .map(str::to_owned)
    })?;
    let listen = free_port()?;
    let dir = dir.join("squid");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("squid.conf");
    std::fs::write(
        &config,
        format!(
            "http_port {listen}\n\
             acl SSL_ports port 443\n\
             acl CONNECT method CONNECT\n\
             http_access deny CONNECT !SSL_ports\n\
             http_access allow all\n\
             cache deny all\n\
             cache_mem 8 MB\n\
             access_log none\n\
             cache_log {log}\n\
             pid_filename {pid}\n\
             coredump_dir {dir}\n\
             hosts_file {hosts}\n\
             dns_nameservers 127.0.60.53\n\
             max_filedescriptors 4096\n\
             shutdown_lifetime 0 seconds\n",
            log = dir.join("cache.log").display(),
            pid = dir.join("squid.pid").display(),
            dir = dir.display(),
            hosts = hosts.display(),
        ),
    )?;
    let mut command = Command::new("squid");
    command.arg("-N").arg("-f").arg(&config);
    start(
        format!("Squid {version}"),
        listen,
        command,
        &dir.join("stderr.log"),
    )
}

/// tinyproxy as a CONNECT proxy to port 443, in the foreground (`-d`).
pub fn tinyproxy(dir: &Path) -> anyhow::Result<Peer> {
    let version = version("tinyproxy", &["-v"], |line| {
        line.strip_prefix("tinyproxy ").map(str::to_owned)
    })?;
    let listen = free_port()?;
    let dir = dir.join("tinyproxy");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("tinyproxy.conf");
    std::fs::write(
        &config,
        format!(
            "User nobody\nGroup nogroup\nPort {port}\nListen {ip}\nTimeout 60\n\
             MaxClients 256\nConnectPort 443\nLogLevel Error\nPidFile \"{pid}\"\n",
            port = listen.port(),
            ip = listen.ip(),
            pid = dir.join("tinyproxy.pid").display(),
        ),
    )?;
    let mut command = Command::new("tinyproxy");
    command.arg("-d").arg("-c").arg(&config);
    start(
        format!("tinyproxy {version}"),
        listen,
        command,
        &dir.join("stderr.log"),
    )
}

/// nginx as a reverse proxy to the upstream's Messages API: one process,
/// keep-alive to the upstream over TLS (verified against the bench CA),
/// buffering off (so streamed events pass as they come).
pub fn nginx(dir: &Path, upstream: SocketAddr, name: &str, ca: &Path) -> anyhow::Result<Peer> {
    let version = version("nginx", &["-v"], |line| {
        line.split("nginx/")
            .nth(1)
            .map(|rest| rest.trim().to_owned())
    })?;
    let listen = free_port()?;
    let dir = dir.join("nginx");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("nginx.conf");
    let path = |name: &str| dir.join(name).display().to_string();
    std::fs::write(
        &config,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\n\
             error_log {error} error;\npid {pid};\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {body};\nproxy_temp_path {proxy};\n\
               fastcgi_temp_path {fastcgi};\nuwsgi_temp_path {uwsgi};\nscgi_temp_path {scgi};\n\
               upstream provider {{ server {upstream}; keepalive 64; }}\n\
               server {{\n\
                 listen {listen};\n\
                 location / {{\n\
                   proxy_pass https://provider;\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n\
                   proxy_set_header Host {name};\n\
                   proxy_ssl_server_name on;\n\
                   proxy_ssl_name {name};\n\
                   proxy_ssl_verify on;\n\
                   proxy_ssl_trusted_certificate {ca};\n\
                   proxy_ssl_session_reuse on;\n\
                   proxy_buffering off;\n\
                   proxy_request_buffering off;\n\
                 }}\n\
               }}\n\
             }}\n",
            error = path("error.log"),
            pid = path("nginx.pid"),
            body = path("body"),
            proxy = path("proxy"),
            fastcgi = path("fastcgi"),
            uwsgi = path("uwsgi"),
            scgi = path("scgi"),
            ca = ca.display(),
        ),
    )?;
    let mut command = Command::new("nginx");
    command.arg("-c").arg(&config).arg("-p").arg(&dir);
    start(
        format!("nginx {version}"),
        listen,
        command,
        &dir.join("stderr.log"),
    )
}

/// The one directory under `peer_dir` whose name starts with `prefix`
/// (`cargo xtask setup --bench` installs each peer into `NAME-VERSION`).
fn installed(peer_dir: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(peer_dir)
        .with_context(|| {
            format!(
                "{} (cargo xtask setup --bench installs the router peers there)",
                peer_dir.display()
            )
        })?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .map(|entry| entry.path())
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!(
            "no {prefix}* in {} (cargo xtask setup --bench installs it)",
            peer_dir.display()
        )
    })
}

/// A command with nothing of the bench's environment but what is given:
/// no proxy variables, no CA bundle of the machine's, a home of its own.
fn clean_command(program: &Path, home: &Path, path: &str) -> anyhow::Result<Command> {
    let tmp = home.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("PATH", path)
        .env("HOME", home)
        .env("TMPDIR", &tmp)
        .current_dir(home);
    Ok(command)
}

/// claude-code-router 2.x (npm), in the foreground (`cli.js start` runs
/// the server in its own process), one provider: the upstream's Messages
/// API with the `Anthropic` transformer (passes requests through), every
/// request routed to it. It asks clients for its `APIKEY`: the bench's
/// requests carry `authorization: Bearer {client_key}`.
pub fn claude_code_router(
    dir: &Path,
    peer_dir: &Path,
    upstream: &str,
    model: &str,
    client_key: &str,
    ca: &Path,
) -> anyhow::Result<Peer> {
    let installed = installed(peer_dir, "claude-code-router-")?;
    let package = installed.join("node_modules/@musistudio/claude-code-router");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(package.join("package.json"))
            .with_context(|| format!("{}: no package.json", package.display()))?,
    )?;
    let version = manifest["version"].as_str().unwrap_or("unknown").to_owned();
    let listen = free_port()?;
    let home = dir.join("claude-code-router");
    let config_dir = home.join(".claude-code-router");
    std::fs::create_dir_all(&config_dir)?;
    let config = serde_json::json!({
        "HOST": listen.ip().to_string(),
        "PORT": listen.port(),
        "APIKEY": client_key,
        "LOG": false,
        "API_TIMEOUT_MS": 600_000,
        "Providers": [{
            "name": "bench",
            "api_base_url": format!("https://{upstream}/v1/messages"),
            "api_key": "bench-upstream-key",
            "models": [model],
            "transformer": { "use": ["Anthropic"] },
        }],
        "Router": { "default": format!("bench,{model}") },
    });
    std::fs::write(
        config_dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let mut command = clean_command(Path::new("/usr/bin/node"), &home, "/usr/bin:/bin")?;
    command
        .env("NODE_EXTRA_CA_CERTS", ca)
        .arg(package.join("dist/cli.js"))
        .arg("start");
    start(
        format!("claude-code-router {version}"),
        listen,
        command,
        &home.join("stderr.log"),
    )
}

/// LiteLLM's proxy (PyPI, in its venv), one worker in the foreground, one
/// model: `model` as `anthropic/{model}` at the upstream. No master key
/// (it accepts any client key); no cost-map download
/// (`LITELLM_LOCAL_MODEL_COST_MAP`), no telemetry; the bench CA is its
/// only trust (`SSL_CERT_FILE`).
pub fn litellm(
    dir: &Path,
    peer_dir: &Path,
    upstream: &str,
    model: &str,
    ca: &Path,
) -> anyhow::Result<Peer> {
    let venv = installed(peer_dir, "litellm-")?;
    let version = version(
        &venv.join("bin/python").display().to_string(),
        &[
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ],
        |line| Some(line.trim().to_owned()).filter(|line| !line.is_empty()),
    )?;
    let listen = free_port()?;
    let home = dir.join("litellm");
    std::fs::create_dir_all(&home)?;
    let config = home.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: {model}\n    litellm_params:\n      model: anthropic/{model}\n      api_base: https://{upstream}\n      api_key: bench-upstream-key\nlitellm_settings:\n  telemetry: false\n  drop_params: true\n"
        ),
    )?;
    let path = format!("{}:/usr/bin:/bin", venv.join("bin").display());
    let mut command = clean_command(&venv.join("bin/litellm"), &home, &path)?;
    command
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("SSL_CERT_FILE", ca)
        .arg("--config")
        .arg(&config)
        .args(["--host", &listen.ip().to_string()])
        .args(["--port", &listen.port().to_string()])
        .args(["--num_workers", "1", "--telemetry", "False"]);
    start(
        format!("LiteLLM {version}"),
        listen,
        command,
        &home.join("stderr.log"),
    )
}

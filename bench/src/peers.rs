//! The peers the enforcer is measured against, each started in the
//! foreground with a configuration the bench writes, as root, listening
//! on loopback, resolving the upstream's name through the bench's hosts
//! file (bind-mounted over /etc/hosts in the bench's mount namespace;
//! Squid is also given it by name). Stopped by pid when dropped.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
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
    flag: &str,
    pick: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<String> {
    let output = Command::new(program)
        .arg(flag)
        .output()
        .with_context(|| format!("{program} is not installed (cargo xtask setup installs it)"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .find_map(&pick)
        .with_context(|| format!("{program} {flag} printed no version: {text:?}"))
}

/// Starts `command` and waits until `listen` accepts, at most 20 s.
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
    let deadline = Instant::now() + Duration::from_secs(20);
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
            bail!("{} did not listen on {listen} within 20 s", peer.label);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Squid as a CONNECT proxy: no cache, no access log, one process (`-N`).
pub fn squid(dir: &Path, hosts: &Path) -> anyhow::Result<Peer> {
    let version = version("squid", "-v", |line| {
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
    let version = version("tinyproxy", "-v", |line| {
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
    let version = version("nginx", "-v", |line| {
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

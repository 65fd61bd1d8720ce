//! Flags shared by `attach` and `run` (DESIGN.md §7), parsed once into
//! the daemon's options.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use enforcer::policy_source::{FetchConfig, LoaderConfig, PackSource};
use enforcer::{
    daemon::{DaemonOptions, dns_sockets::DEFAULT_DNS_LISTEN, paths::DEFAULT_STATE_DIR},
    kernel::{CgroupMount, CgroupPath, maps::parse_socket_addr, redirect::Mode},
};
use policy::signing::read_public_key;
use proxy::net::resolve::ResolveOverrides;
use proxy::net::resolve::{DnsClient, Resolver, Upstream};

use super::LogFormat;

/// Parses `30s`, `5m`, `1h`, `7d` or ISO-8601 (`PT1H`).
pub fn parse_duration_flag(text: &str) -> Result<Duration, String> {
    policy::parse_duration(text).map_err(|error| format!("{text:?}: {error}"))
}

/// `--since`: a duration back from now, or a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This long before now (`30s`, `5m`, `1h`, `PT1H`).
    Ago(Duration),
    /// From this moment on (RFC 3339, as `enforcer run`'s summary prints it).
    At(SystemTime),
}

impl Since {
    /// The moment it names, `now` being now.
    pub fn resolve(self, now: SystemTime) -> SystemTime {
        match self {
            Self::Ago(ago) => now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH),
            Self::At(moment) => moment,
        }
    }
}

/// Parses `--since`: a duration (`1h`) or an RFC 3339 time (`2026-01-02T10:00:00Z`).
pub fn parse_since_flag(text: &str) -> Result<Since, String> {
    if let Ok(ago) = policy::parse_duration(text) {
        return Ok(Since::Ago(ago));
    }
    humantime::parse_rfc3339_weak(text)
        .map(Since::At)
        .map_err(|_| {
            format!("{text:?}: neither a duration (30s, 5m, 1h, PT1H) nor an RFC 3339 time (2026-01-02T10:00:00Z)")
        })
}

/// Policy, listener and resolver flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonFlags {
    /// Policy pack: a file or an https:// URL (its signature at PACK.sig).
    /// Without it: the last good cached pack, else the embedded fallback.
    #[arg(long, value_name = "FILE|URL")]
    pub policy: Option<String>,
    /// A trusted Ed25519 public key (repeat for key rotation).
    #[arg(long = "policy-pubkey", value_name = "FILE")]
    pub policy_pubkeys: Vec<PathBuf>,
    /// Fetch the policy again this often (30s, 5m, 1h, PT1H ...).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_flag)]
    pub policy_refresh: Option<Duration>,
    /// Refuse a pack whose SHA-256 (hex) is not this one.
    #[arg(long, value_name = "HEX")]
    pub policy_sha256: Option<String>,
    /// Where the DNS filter listens, UDP and TCP on one loopback address
    /// (`egress.dns = "filtered"`; port 0: a free port). The cgroup's
    /// port-53 traffic is rewritten to it; the other address family gets a
    /// free port on its own loopback.
    #[arg(long, value_name = "ADDR", value_parser = parse_socket_addr, default_value_t = DEFAULT_DNS_LISTEN)]
    pub dns_listen: SocketAddr,
    /// State directory: audit database, policy cache, grants.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Pin HOST:PORT to ADDR for every resolution the daemon makes (like curl's --resolve).
    #[arg(long = "resolve", value_name = "HOST:PORT:ADDR")]
    pub resolve: Vec<String>,
    /// The DNS server the daemon asks instead of the system resolver.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_socket_addr)]
    pub dns_upstream: Option<SocketAddr>,
    /// Trust one more CA (PEM) for upstream TLS and policy fetches.
    #[arg(long, value_name = "FILE")]
    pub extra_ca: Option<PathBuf>,
    /// Serve Prometheus metrics on this loopback address too.
    #[arg(long, value_name = "ADDR", value_parser = parse_socket_addr)]
    pub metrics_listen: Option<SocketAddr>,
    /// How long SIGTERM waits for open tunnels and streams.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration_flag)]
    pub drain: Duration,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Forward the kernel programs' aya-log debug output to the log.
    #[arg(long)]
    pub debug_bpf: bool,
    /// Serve proxy and lane-router clients outside the enforced cgroups
    /// too. Off by default: any local user could otherwise use a lane's
    /// key. Outside clients are still attributed and audited.
    #[arg(long)]
    pub serve_outside_clients: bool,
    /// What the kernel does with TCP that does not use the proxy:
    /// `proxy-only` denies it (EPERM); `redirect` sends connects to a port
    /// the allowlist names to the transparent listener, which checks the
    /// SNI like CONNECT. Default: the pack's `egress.mode` (`redirect`
    /// unless the pack says otherwise).
    #[arg(long, value_enum, value_name = "MODE")]
    pub egress_mode: Option<EgressModeFlag>,
}

/// `--egress-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EgressModeFlag {
    /// Only proxy-aware clients work.
    ProxyOnly,
    /// Redirect allowlisted ports to the transparent listener.
    Redirect,
}

impl From<EgressModeFlag> for Mode {
    fn from(flag: EgressModeFlag) -> Self {
        match flag {
            EgressModeFlag::ProxyOnly => Self::ProxyOnly,
            EgressModeFlag::Redirect => Self::Redirect,
        }
    }
}

impl DaemonFlags {
    /// Builds the daemon's options for `cgroup`.
    pub fn options(
        &self,
        mount: CgroupMount,
        cgroup: CgroupPath,
        proxy_listen: SocketAddr,
        router_listen: SocketAddr,
        control_socket: Option<PathBuf>,
    ) -> anyhow::Result<DaemonOptions> {
        let mut pins = ResolveOverrides::new();
        for entry in &self.resolve {
            pins.add_entry(entry)
                .with_context(|| format!("--resolve {entry}"))?;
        }
        let upstream = match self.dns_upstream {
            Some(server) => Upstream::Dns(DnsClient::new(server)),
            None => Upstream::System {
                timeout: Duration::from_secs(5),
            },
        };
        // One resolver for every resolution the daemon makes: proxy, router,
        // policy fetch, map writer.
        let resolver = Resolver::new(pins, upstream);
        let mut fetch = FetchConfig::new();
        fetch.resolver = resolver.clone();
        if let Some(ca) = &self.extra_ca {
            fetch
                .add_extra_ca_file(ca)
                .with_context(|| format!("--extra-ca {}", ca.display()))?;
        }
        let mut trusted_keys = Vec::new();
        for path in &self.policy_pubkeys {
            trusted_keys.push(
                read_public_key(path)
                    .with_context(|| format!("--policy-pubkey {}", path.display()))?,
            );
        }
        let source = self
            .policy
            .as_deref()
            .map(PackSource::parse)
            .transpose()
            .context("--policy")?;
        if source.is_some() && trusted_keys.is_empty() {
            anyhow::bail!(
                "--policy needs at least one --policy-pubkey to verify the pack's signature"
            );
        }
        if !self.dns_listen.ip().is_loopback() {
            anyhow::bail!(
                "--dns-listen {}: the DNS filter listens on a loopback address only (127.0.0.0/8 or [::1])",
                self.dns_listen
            );
        }
        Ok(DaemonOptions {
            cgroup,
            mount,
            loader: LoaderConfig {
                source,
                signature: None,
                trusted_keys,
                pinned_sha256: self.policy_sha256.clone(),
                refresh: self.policy_refresh,
                state_dir: Some(self.state_dir.clone()),
                fetch,
                grants: Vec::new(),
            },
            proxy_listen,
            router_listen,
            control_socket,
            metrics_listen: self.metrics_listen,
            state_dir: self.state_dir.clone(),
            resolver,
            extra_ca: self.extra_ca.clone(),
            drain: self.drain,
            debug_bpf: self.debug_bpf,
            // selftest (issue 19): `attach` turns the table on.
            selftest_table: false,
            serve_outside_clients: self.serve_outside_clients,
            egress_mode: self.egress_mode.map(Mode::from),
            dns_listen: self.dns_listen,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_duration_or_a_moment() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            parse_since_flag("1h").unwrap().resolve(now),
            now - Duration::from_secs(3600)
        );
        assert_eq!(
            parse_since_flag("2026-01-02T10:00:00Z")
                .unwrap()
                .resolve(now),
            humantime::parse_rfc3339("2026-01-02T10:00:00Z").unwrap()
        );
        let error = parse_since_flag("yesterday").unwrap_err();
        assert!(
            error.contains("\"yesterday\"") && error.contains("RFC 3339"),
            "{error}"
        );
    }
}

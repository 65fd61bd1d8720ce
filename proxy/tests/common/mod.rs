//! Shared pieces of the proxy's end-to-end tests: a running in-process
//! proxy ([`Harness`]), policy packs, loopback upstreams, a mock DNS server
//! and ClientHello helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod hello;
pub mod mock_dns;
pub mod upstream;

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use policy::{Origin, Snapshot, ValidationMode, format_timestamp, parse_pack};
use proxy::audit::{AuditEvent, MemorySink};
use proxy::net::resolve::ResolveOverrides;
use proxy::net::resolve::{DnsClient, Resolver, Upstream};
use proxy::server::{ConnectProxy, ProxyConfig};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// A pack JSON issued a minute ago, valid for a day, with the given
/// `fronting` and `limits` objects.
pub fn pack_json(fronting: &str, limits: &str) -> String {
    let issued = format_timestamp(SystemTime::now() - Duration::from_secs(60));
    format!(
        r#"{{"schema":"ccp.policy.v1","version":"2025-01-01.1","issuedAt":"{issued}","ttlSeconds":86400,"fronting":{fronting},"limits":{limits}}}"#
    )
}

/// A snapshot of `json` (not signed: tests build it directly; the daemon
/// gets snapshots from the policy crate's loader).
pub fn snapshot(json: &str) -> Arc<Snapshot> {
    let policy = parse_pack(json.as_bytes(), ValidationMode::Signed).unwrap();
    Arc::new(Snapshot::new(
        Arc::new(policy),
        Origin::Fallback {
            reason: "test snapshot".into(),
        },
        Arc::from(Vec::new()),
        1,
    ))
}

/// An allowlist of `host:port` entries as a `fronting` object (default flags).
pub fn allowlist(entries: &[String]) -> String {
    let list: Vec<String> = entries
        .iter()
        .map(|e| format!(r#"{{"hostport":"{e}"}}"#))
        .collect();
    format!(r#"{{"allowlist":[{}]}}"#, list.join(","))
}

/// An in-process proxy on 127.0.0.1 with an in-memory audit sink.
pub struct Harness {
    /// The proxy's address.
    pub addr: SocketAddr,
    /// Every audit event.
    pub sink: Arc<MemorySink>,
    /// Swaps the policy (hot reload).
    pub policy: watch::Sender<Arc<Snapshot>>,
    /// The proxy, for `active_tunnels`.
    pub proxy: ConnectProxy,
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

impl Harness {
    /// Starts a proxy for `json` with `--resolve` pins and, optionally, a
    /// `--dns-upstream` server (else the system resolver).
    pub async fn start(json: &str, pins: &[String], dns: Option<SocketAddr>) -> Self {
        let mut overrides = ResolveOverrides::new();
        for pin in pins {
            overrides.add_entry(pin).unwrap();
        }
        let upstream = match dns {
            Some(server) => {
                Upstream::Dns(DnsClient::new(server).with_timeout(Duration::from_secs(2), 2))
            }
            None => Upstream::System {
                timeout: Duration::from_secs(5),
            },
        };
        let (tx, rx) = watch::channel(snapshot(json));
        let sink = Arc::new(MemorySink::new(10_000));
        let proxy = ConnectProxy::new(
            ProxyConfig::default(),
            rx,
            Resolver::new(overrides, upstream),
            sink.clone(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let serving = proxy.clone();
        let task = tokio::spawn(async move {
            serving
                .serve_tcp(listener, async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        Self {
            addr,
            sink,
            policy: tx,
            proxy,
            task,
            stop: Some(stop_tx),
        }
    }

    /// `http://127.0.0.1:PORT`, for `-x` / `proxies=`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits (bounded) until at least `count` audit events exist; returns them.
    pub async fn events(&self, count: usize) -> Vec<AuditEvent> {
        for _ in 0..500 {
            let events = self.sink.events();
            if events.len() >= count {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "expected {count} audit events, got {:?}",
            self.sink.events()
        );
    }

    /// Waits (bounded) for the one event of a single-connection test.
    pub async fn only_event(&self) -> AuditEvent {
        let events = self.events(1).await;
        assert_eq!(events.len(), 1, "{events:#?}");
        events.into_iter().next().unwrap()
    }
}

/// Runs a real client with no proxy variables from the environment.
pub async fn run(program: &str, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(program);
    command.args(args);
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        command.env_remove(var);
    }
    command.stdin(std::process::Stdio::null());
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("{program} did not finish within 60 s"))
        .unwrap_or_else(|e| panic!("{program} could not be started: {e} (is it installed?)"))
}

/// stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

//! A standalone CONNECT proxy for local experiments and the load test:
//! serves one policy pack file (NOT signature-checked: the daemon,
//! `enforcer attach`, is what verifies packs) on one TCP address.
//!
//! ```text
//! cargo run -p proxy --example connect_proxy -- --listen 127.0.0.1:3128 \
//!     --policy pack.json [--resolve HOST:PORT:ADDR]... [--dns-upstream ADDR:PORT]
//! ```
//!
//! Prints `listening on ADDR` once ready; logs decisions to stderr
//! (`RUST_LOG=info`); stops on SIGTERM/SIGINT after draining for up to 5 s.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use policy::{Origin, Snapshot, ValidationMode, parse_pack};
use proxy::audit::LogSink;
use proxy::net::resolve::ResolveOverrides;
use proxy::net::resolve::{DnsClient, Resolver, Upstream};
use proxy::server::{ConnectProxy, ProxyConfig};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

struct Args {
    listen: SocketAddr,
    policy: String,
    resolve: ResolveOverrides,
    dns_upstream: Option<SocketAddr>,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let usage = "usage: connect_proxy --listen ADDR --policy PACK.json [--resolve HOST:PORT:ADDR]... [--dns-upstream ADDR:PORT]";
    let mut listen = None;
    let mut policy = None;
    let mut resolve = ResolveOverrides::new();
    let mut dns_upstream = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value\n{usage}"))
        };
        match flag.as_str() {
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--policy" => policy = Some(value()?),
            "--resolve" => resolve.add_entry(&value()?)?,
            "--dns-upstream" => {
                dns_upstream = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--dns-upstream: {e}"))?,
                )
            }
            other => return Err(format!("unknown argument {other:?}\n{usage}").into()),
        }
    }
    Ok(Args {
        listen: listen.ok_or(usage)?,
        policy: policy.ok_or(usage)?,
        resolve,
        dns_upstream,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = parse_args()?;
    let bytes = std::fs::read(&args.policy).map_err(|e| format!("reading {}: {e}", args.policy))?;
    let pack =
        parse_pack(&bytes, ValidationMode::Signed).map_err(|e| format!("{}: {e}", args.policy))?;
    eprintln!(
        "warning: {} is used without a signature check (example proxy)",
        args.policy
    );
    let snapshot = Snapshot::new(
        Arc::new(pack),
        Origin::Fallback {
            reason: format!("unsigned pack {} (connect_proxy example)", args.policy),
        },
        Arc::from(Vec::new()),
        1,
    );
    let (_policy_tx, policy_rx) = tokio::sync::watch::channel(Arc::new(snapshot));
    let upstream = match args.dns_upstream {
        Some(server) => Upstream::Dns(DnsClient::new(server)),
        None => Upstream::System {
            timeout: Duration::from_secs(5),
        },
    };
    let proxy = ConnectProxy::new(
        ProxyConfig::default(),
        policy_rx,
        Resolver::new(args.resolve, upstream),
        Arc::new(LogSink),
    );
    let listener = TcpListener::bind(args.listen).await?;
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", listener.local_addr()?)?;
        stdout.flush()?;
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    proxy
        .serve_tcp(listener, async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), proxy.wait_idle()).await;
    Ok(())
}

//! `enforcer-bench`: the measurements `cargo xtask bench` runs.
//!
//! `run` is the orchestrator (root, in a private mount namespace: `cargo
//! xtask bench` starts it under `unshare --mount`); `upstream`, `load` and
//! `connects` are the processes it starts, each measured from outside.

mod enforcer;
mod kernel;
mod load;
mod peers;
mod process;
mod report;
mod run;
mod swap;
mod upstream;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "enforcer-bench")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Every measurement; prints the table, writes BENCHMARKS.md and the
    /// chart into `--out`.
    Run(run::RunArgs),
    /// The HTTPS upstream (prints `ready` once listening).
    Upstream {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// One load run; prints what it measured as one JSON line.
    Load {
        /// `direct`, `plain` or `proxy:ADDR`.
        #[arg(long)]
        via: load::Via,
        /// The TCP destination for `direct` and `plain`.
        #[arg(long)]
        connect: SocketAddr,
        /// TLS server name and CONNECT host.
        #[arg(long)]
        name: String,
        /// The CA the upstream's certificate chains to.
        #[arg(long)]
        ca: PathBuf,
        #[command(subcommand)]
        shape: Shape,
    },
    /// `connect()` to a listener of this process's own, `count` times;
    /// prints the mean nanoseconds per connect as one JSON line.
    Connects {
        #[arg(long)]
        count: u32,
    },
}

#[derive(Debug, Clone, Subcommand)]
enum Shape {
    /// New tunnels, one GET each.
    Tunnels {
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        seconds: f64,
        /// Stop after this many tunnels in all.
        #[arg(long, default_value_t = u64::MAX)]
        limit: u64,
    },
    /// Bulk downloads at once.
    Bulk {
        #[arg(long)]
        streams: usize,
        #[arg(long)]
        bytes: u64,
    },
    /// Streamed Messages API requests, one after another.
    Events {
        #[arg(long)]
        requests: u64,
    },
    /// Streamed Messages API requests all open at once.
    Held {
        #[arg(long)]
        streams: usize,
        /// The upstream's wait before each event, in milliseconds (more
        /// than `upstream::GAP_FROM_MAX_TOKENS`: it is sent as max_tokens).
        #[arg(long)]
        gap_ms: u64,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Run(args) => run::run(&args),
        Task::Upstream { listen, cert, key } => upstream::serve(&listen, &cert, &key),
        Task::Load {
            via,
            connect,
            name,
            ca,
            shape,
        } => load_once(via, connect, name, &ca, shape),
        Task::Connects { count } => kernel::connects(count),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("enforcer-bench: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn load_once(
    via: load::Via,
    connect: SocketAddr,
    name: String,
    ca: &std::path::Path,
    shape: Shape,
) -> anyhow::Result<()> {
    if let Shape::Held { gap_ms, .. } = shape
        && gap_ms <= upstream::GAP_FROM_MAX_TOKENS
    {
        anyhow::bail!(
            "--gap-ms must be above {}: the upstream reads smaller max_tokens as a short stream",
            upstream::GAP_FROM_MAX_TOKENS
        );
    }
    let target = Arc::new(load::Target::new(via, connect, name, ca)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let measured = runtime.block_on(async move {
        match shape {
            Shape::Tunnels {
                clients,
                seconds,
                limit,
            } => load::tunnels(target, clients, Duration::from_secs_f64(seconds), limit).await,
            Shape::Bulk { streams, bytes } => load::bulk(target, streams, bytes).await,
            Shape::Events { requests } => load::events(target, requests).await,
            Shape::Held { streams, gap_ms } => {
                load::held(target, streams, Duration::from_millis(gap_ms)).await
            }
        }
    });
    println!("{}", serde_json::to_string(&measured)?);
    Ok(())
}

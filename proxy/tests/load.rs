//! The concurrent-tunnel limit under load: with `maxConcurrentTunnels = 200`,
//! 1,000 concurrent CONNECT attempts get exactly 200 tunnels and 800 `503`s,
//! and the proxy process's peak RSS stays under [`RSS_BOUND_KIB`].
//!
//! The proxy runs as its own process (the `connect_proxy` example) so its
//! RSS is measured alone. Bounded: 1,000 attempts, a 120 s guard, and the
//! child is killed at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::hello::rustls_client_hello;
use common::pack_json;
use common::upstream::read_head;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const ATTEMPTS: usize = 1000;
const MAX_TUNNELS: usize = 200;
/// Peak RSS the proxy may reach while holding 200 tunnels and answering 800
/// `503`s (debug build).
const RSS_BOUND_KIB: u64 = 32 * 1024;
const ALLOWED: &str = "api.allowed.test";

/// The `connect_proxy` example next to this test binary.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join("connect_proxy");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test -p proxy` (it builds the examples), or `cargo build -p proxy --example connect_proxy` before `--test load`",
        path.display()
    );
    path
}

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    assert!(
        limit.rlim_cur >= 4096,
        "this test needs 4096 file descriptors (ulimit -n), have {}",
        limit.rlim_cur
    );
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} missing in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[derive(Debug)]
enum Outcome {
    /// Held open until the end of the test (the tunnel keeps its slot).
    #[allow(dead_code)]
    Tunnel(TcpStream),
    Unavailable,
    /// Shown through Debug when the test fails.
    #[allow(dead_code)]
    Other(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_attempts_get_exactly_200_tunnels_and_503_for_the_rest() {
    raise_fd_limit();
    // An upstream that holds every connection open and counts them.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    let upstream_conns = Arc::new(AtomicUsize::new(0));
    let counter = upstream_conns.clone();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = upstream.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("pack.json");
    let fronting = format!(r#"{{"allowlist":[{{"hostport":"{ALLOWED}:{port}"}}]}}"#);
    std::fs::write(
        &pack,
        pack_json(
            &fronting,
            &format!(r#"{{"maxConcurrentTunnels":{MAX_TUNNELS}}}"#),
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(example_binary())
        .args(["--listen", "127.0.0.1:0", "--policy"])
        .arg(&pack)
        .args(["--resolve", &format!("{ALLOWED}:{port}:127.0.0.1")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the proxy did not start")
        .unwrap()
        .unwrap();
    let proxy: std::net::SocketAddr = line.strip_prefix("listening on ").unwrap().parse().unwrap();
    let rss_idle = status_kib(pid, "VmRSS:");

    let hello = Arc::new(rustls_client_hello(Some(ALLOWED)));
    let run = async {
        let mut attempts = tokio::task::JoinSet::new();
        for _ in 0..ATTEMPTS {
            let hello = hello.clone();
            attempts.spawn(async move {
                let mut stream = match TcpStream::connect(proxy).await {
                    Ok(stream) => stream,
                    Err(e) => return Outcome::Other(format!("connect: {e}")),
                };
                let request =
                    format!("CONNECT {ALLOWED}:{port} HTTP/1.1\r\nHost: {ALLOWED}:{port}\r\n\r\n");
                if let Err(e) = stream.write_all(request.as_bytes()).await {
                    return Outcome::Other(format!("write: {e}"));
                }
                let head = read_head(&mut stream).await;
                if head.starts_with("HTTP/1.1 200 ") {
                    stream.write_all(&hello).await.unwrap();
                    Outcome::Tunnel(stream)
                } else if head.starts_with("HTTP/1.1 503 ")
                    && head.contains("X-Enforcer-Reason: overloaded")
                {
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest).await;
                    Outcome::Unavailable
                } else {
                    Outcome::Other(head)
                }
            });
        }
        let mut outcomes = Vec::new();
        while let Some(outcome) = attempts.join_next().await {
            outcomes.push(outcome.unwrap());
        }
        // Every served tunnel reaches the upstream (its ClientHello passed).
        for _ in 0..1000 {
            if upstream_conns.load(Ordering::SeqCst) >= MAX_TUNNELS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        outcomes
    };
    let outcomes = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("1,000 attempts did not finish within 120 s");
    let rss_peak = status_kib(pid, "VmHWM:");
    let rss_now = status_kib(pid, "VmRSS:");

    let tunnels = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Tunnel(_)))
        .count();
    let unavailable = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Unavailable))
        .count();
    let other: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Other(_)))
        .collect();
    eprintln!(
        "tunnels={tunnels} unavailable={unavailable} other={} upstream_conns={} proxy RSS: idle {rss_idle} KiB, with {MAX_TUNNELS} tunnels {rss_now} KiB, peak {rss_peak} KiB",
        other.len(),
        upstream_conns.load(Ordering::SeqCst)
    );
    assert!(
        other.is_empty(),
        "unexpected answers: {:?}",
        &other[..other.len().min(5)]
    );
    assert_eq!(tunnels, MAX_TUNNELS);
    assert_eq!(unavailable, ATTEMPTS - MAX_TUNNELS);
    assert_eq!(upstream_conns.load(Ordering::SeqCst), MAX_TUNNELS);
    assert!(
        rss_peak < RSS_BOUND_KIB,
        "proxy peak RSS {rss_peak} KiB is over the {RSS_BOUND_KIB} KiB bound"
    );

    drop(outcomes);
    holder.abort();
    child.start_kill().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}

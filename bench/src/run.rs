//! The orchestrator: stand-ins, daemons and peers up; every measurement,
//! targets interleaved within each repetition; the report.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use enforcer_tests::{TestCgroup, spawn_ready};

use crate::{
    enforcer::Daemon,
    load::{self, Measured},
    peers::{self, Peer},
    process,
    report::{Report, Section},
};

/// `enforcer-bench run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Every target once with a few requests and no waits, nothing
    /// written: proves the bench still runs (`cargo xtask test`).
    #[arg(long)]
    pub smoke: bool,
    /// The `enforcer` binary measured.
    #[arg(long)]
    pub enforcer: PathBuf,
    /// Where BENCHMARKS.md and benchmarks.svg are written (not with --smoke).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Repetitions; targets are interleaved within each.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Where `cargo xtask setup --bench` installed claude-code-router and
    /// LiteLLM.
    #[arg(long, default_value = "/opt/enforcer-bench")]
    pub peer_dir: PathBuf,
    /// Only these tables (development: one change measured before and
    /// after; nothing is written then).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Section>,
}

impl RunArgs {
    /// Whether `section`'s measurements run.
    fn runs(&self, section: Section) -> bool {
        self.only.is_empty() || self.only.contains(&section)
    }
}

/// The upstream's public name, as the default pack allows it, and the
/// loopback address that stands in for it.
pub const UPSTREAM_NAME: &str = "api.anthropic.com";
const UPSTREAM: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 60, 10)), 443);
/// The resolver the bench's namespace names: nothing listens there, so a
/// lookup that misses the hosts file fails here instead of leaving.
const DEAD_RESOLVER: &str = "127.0.60.53";

/// How much of each measurement a run does.
struct Plan {
    reps: usize,
    tunnel_seconds: f64,
    tunnel_limit: u64,
    bulk_one: u64,
    bulk_each_of_eight: u64,
    wrk_seconds: u32,
    event_requests: u64,
    held_streams: usize,
    held_gap_ms: u64,
    connects: u32,
    direct_entries: u32,
    settle: Duration,
}

impl Plan {
    fn new(args: &RunArgs) -> Self {
        if args.smoke {
            Self {
                reps: 1,
                tunnel_seconds: 5.0,
                tunnel_limit: 8,
                bulk_one: 1 << 20,
                bulk_each_of_eight: 1 << 18,
                wrk_seconds: 1,
                event_requests: 2,
                held_streams: 20,
                held_gap_ms: 150,
                connects: 200,
                direct_entries: 1_000,
                settle: Duration::from_secs(1),
            }
        } else {
            Self {
                reps: args.reps.max(1),
                tunnel_seconds: 5.0,
                tunnel_limit: u64::MAX,
                bulk_one: 1 << 30,
                bulk_each_of_eight: 1 << 27,
                wrk_seconds: 5,
                event_requests: 25,
                held_streams: 1_000,
                held_gap_ms: 250,
                connects: 200_000,
                direct_entries: 100_000,
                settle: Duration::from_secs(30),
            }
        }
    }
}

/// Everything the measurements share.
struct Bench {
    exe: PathBuf,
    ca: PathBuf,
    upstream_pid: u32,
    wrk_script: PathBuf,
}

/// One target of the CONNECT rows.
struct ConnectTarget<'a> {
    label: String,
    /// `--via` of the load process.
    via: String,
    cgroup: &'a TestCgroup,
    /// The proxy's pid (CPU, RSS), none for direct.
    server: Option<u32>,
}

impl ConnectTarget<'_> {
    /// One load process of `shape` against this target.
    fn load(&self, bench: &Bench, shape: &[String]) -> anyhow::Result<Observed> {
        load(bench, self.cgroup, &self.via, UPSTREAM, shape, self.server)
    }
}

/// One target of the router rows.
struct RouterTarget<'a> {
    label: String,
    /// wrk's URL.
    url: String,
    /// The events load's `--via` and `--connect`.
    via: &'static str,
    connect: SocketAddr,
    cgroup: &'a TestCgroup,
    server: Option<u32>,
    /// A peer's row that fails is reported as not completed (with why)
    /// instead of failing the bench; the enforcer's and direct's fail it.
    peer: bool,
}

impl RouterTarget<'_> {
    /// One load process of `shape` (streamed requests) against this target.
    fn load(&self, bench: &Bench, shape: &[String]) -> anyhow::Result<Observed> {
        load(
            bench,
            self.cgroup,
            self.via,
            self.connect,
            shape,
            self.server,
        )
    }
}

/// What one load process (or wrk run) measured, and the CPU it cost.
struct Observed {
    measured: Measured,
    client_cpu: f64,
    server_cpu: f64,
    upstream_cpu: f64,
    peak_rss: f64,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench attaches kernel programs to cgroups of its own: run it as root");
    }
    if let Some(status) = own_mount_namespace()? {
        if status.success() {
            return Ok(());
        }
        bail!("the bench failed ({status})");
    }
    let plan = Plan::new(args);
    let work = tempfile::Builder::new()
        .prefix("enforcer-bench-")
        .tempdir()?;
    let dir = work.path();
    let hosts = name_the_upstream(dir)?;
    let ca = enforcer_tests::test_ca(dir, &[UPSTREAM_NAME, "bench.test"]);
    let exe = std::env::current_exe()?;
    let mut upstream = Command::new(&exe);
    upstream
        .args(["upstream", "--listen", &UPSTREAM.to_string(), "--cert"])
        .arg(dir.join("leaf.pem"))
        .arg("--key")
        .arg(dir.join("leaf.key"));
    let upstream = spawn_ready(upstream, "the bench upstream");
    let wrk_script = dir.join("messages.lua");
    std::fs::write(&wrk_script, wrk_request())?;
    let bench = Bench {
        exe,
        ca: ca.clone(),
        upstream_pid: upstream.0.id(),
        wrk_script,
    };

    let plain = TestCgroup::new("bench-plain");
    let proxy_cgroup = TestCgroup::new("bench-proxy-only");
    let redirect_cgroup = TestCgroup::new("bench-redirect");
    let resolver = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let daemon_args = vec![
        "--resolve".to_owned(),
        format!("{UPSTREAM_NAME}:443:{}", UPSTREAM.ip()),
        "--extra-ca".to_owned(),
        ca.display().to_string(),
        "--dns-upstream".to_owned(),
        resolver.local_addr()?.to_string(),
    ];
    let proxy_only = Daemon::start(
        &args.enforcer,
        &proxy_cgroup,
        "proxy-only",
        &dir.join("proxy-only"),
        &daemon_args,
    )?;
    let redirect = Daemon::start(
        &args.enforcer,
        &redirect_cgroup,
        "redirect",
        &dir.join("redirect"),
        &daemon_args,
    )?;
    let mut report = Report::new(args.smoke);
    let squid = peer(&mut report, "Squid", peers::squid(dir, &hosts));
    let tinyproxy = peer(&mut report, "tinyproxy", peers::tinyproxy(dir));
    let nginx = peer(
        &mut report,
        "nginx",
        peers::nginx(dir, UPSTREAM, UPSTREAM_NAME, &ca),
    );
    let claude_code_router = peer(
        &mut report,
        "claude-code-router",
        peers::claude_code_router(
            dir,
            &args.peer_dir,
            UPSTREAM_NAME,
            load::MODEL,
            load::CLIENT_KEY,
            &ca,
        ),
    );
    let litellm = peer(
        &mut report,
        "LiteLLM",
        peers::litellm(dir, &args.peer_dir, UPSTREAM_NAME, load::MODEL, &ca),
    );
    std::thread::sleep(plan.settle.min(Duration::from_secs(5)));

    let mut connect_targets = vec![
        ConnectTarget {
            label: "direct".into(),
            via: "direct".into(),
            cgroup: &plain,
            server: None,
        },
        ConnectTarget {
            label: "enforcer proxy-only".into(),
            via: format!("proxy:{}", proxy_only.proxy),
            cgroup: &proxy_cgroup,
            server: Some(proxy_only.pid()),
        },
        ConnectTarget {
            label: "enforcer redirect".into(),
            via: "direct".into(),
            cgroup: &redirect_cgroup,
            server: Some(redirect.pid()),
        },
    ];
    for peer in [&squid, &tinyproxy].into_iter().flatten() {
        connect_targets.push(ConnectTarget {
            label: peer.label.clone(),
            via: format!("proxy:{}", peer.listen),
            cgroup: &plain,
            server: Some(peer.pid()),
        });
    }
    let mut router_targets = vec![
        RouterTarget {
            label: "direct".into(),
            url: format!("https://{UPSTREAM}/v1/messages"),
            via: "direct",
            connect: UPSTREAM,
            cgroup: &plain,
            server: None,
            peer: false,
        },
        RouterTarget {
            label: "enforcer".into(),
            url: format!("http://{}/v1/messages", proxy_only.router),
            via: "plain",
            connect: proxy_only.router,
            cgroup: &proxy_cgroup,
            server: Some(proxy_only.pid()),
            peer: false,
        },
    ];
    for peer in [&nginx, &claude_code_router, &litellm]
        .into_iter()
        .flatten()
    {
        router_targets.push(RouterTarget {
            label: peer.label.clone(),
            url: format!("http://{}/v1/messages", peer.listen),
            via: "plain",
            connect: peer.listen,
            cgroup: &plain,
            server: Some(peer.pid()),
            peer: true,
        });
    }
    let labels: Vec<&str> = connect_targets
        .iter()
        .map(|target| target.label.as_str())
        .collect();
    report.columns(Section::Connect, &labels);
    let labels: Vec<&str> = router_targets
        .iter()
        .map(|target| target.label.as_str())
        .collect();
    report.columns(Section::Router, &labels);
    report.columns(
        Section::Kernel,
        &["without the programs", "with the programs"],
    );
    for target in &connect_targets {
        if let Some(pid) = target.server {
            report.record(
                Section::Connect,
                "rss_idle",
                &target.label,
                0,
                process::rss_mib(pid)?,
            );
        }
    }
    for target in &router_targets {
        if let Some(pid) = target.server {
            report.record(
                Section::Router,
                "router_rss_idle",
                &target.label,
                0,
                process::rss_mib(pid)?,
            );
        }
    }

    for rep in 0..plan.reps {
        eprintln!("enforcer-bench: repetition {} of {}", rep + 1, plan.reps);
        if args.runs(Section::Connect) {
            let targets = rotated(&connect_targets, rep);
            connect_rows(&bench, &plan, &mut report, &targets, rep)?;
        }
        if args.runs(Section::Router) {
            let targets = rotated(&router_targets, rep);
            router_rows(&bench, &plan, &mut report, &targets, rep)?;
        }
        if args.runs(Section::Kernel) {
            kernel_rows(&bench, &plan, &mut report, &plain, &proxy_cgroup, rep)?;
        }
        if args.runs(Section::Policy) {
            policy_rows(&bench, &plan, &mut report, args, dir, &daemon_args, rep)?;
        }
    }
    if !args.runs(Section::Connect) {
        print!("{}", report.table());
        return Ok(());
    }

    // RSS once the load has ended: a 32-client run on each daemon, then
    // the settle time, then the reading.
    for target in &connect_targets[1..3] {
        target
            .load(&bench, &tunnels(&plan, 32))
            .with_context(|| format!("{}: the load before the idle reading", target.label))?;
    }
    std::thread::sleep(plan.settle);
    for (label, daemon) in [
        ("enforcer proxy-only", &proxy_only),
        ("enforcer redirect", &redirect),
    ] {
        report.record(
            Section::Connect,
            "rss_after",
            label,
            0,
            process::rss_mib(daemon.pid())?,
        );
        report.breakdown(label, &process::rss_by_mapping(daemon.pid())?);
    }
    report.settled_after(plan.settle);

    print!("{}", report.table());
    if let Some(out) = &args.out
        && !args.smoke
        && args.only.is_empty()
    {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("BENCHMARKS.md"), report.markdown())?;
        std::fs::write(out.join("benchmarks.svg"), report.svg())?;
        eprintln!(
            "enforcer-bench: wrote {}",
            out.join("BENCHMARKS.md").display()
        );
    }
    drop(upstream);
    Ok(())
}

/// A started peer, or its row's reason for missing.
fn peer(report: &mut Report, name: &str, started: anyhow::Result<Peer>) -> Option<Peer> {
    match started {
        Ok(peer) => {
            report.peer(&peer.label);
            Some(peer)
        }
        Err(error) => {
            eprintln!("enforcer-bench: {name} is not measured: {error:#}");
            report.missing(name, &format!("{error:#}"));
            None
        }
    }
}

/// The targets in the order of repetition `rep`: each rep starts one later.
fn rotated<T>(targets: &[T], rep: usize) -> Vec<&T> {
    let mut order: Vec<&T> = targets.iter().collect();
    if !order.is_empty() {
        order.rotate_left(rep % targets.len());
    }
    order
}

fn tunnels(plan: &Plan, clients: usize) -> Vec<String> {
    vec![
        "tunnels".into(),
        "--clients".into(),
        clients.to_string(),
        "--seconds".into(),
        plan.tunnel_seconds.to_string(),
        "--limit".into(),
        plan.tunnel_limit.to_string(),
    ]
}

fn bulk(streams: usize, bytes: u64) -> Vec<String> {
    vec![
        "bulk".into(),
        "--streams".into(),
        streams.to_string(),
        "--bytes".into(),
        bytes.to_string(),
    ]
}

const GIB: f64 = (1u64 << 30) as f64;

fn connect_rows(
    bench: &Bench,
    plan: &Plan,
    report: &mut Report,
    targets: &[&ConnectTarget],
    rep: usize,
) -> anyhow::Result<()> {
    let record = |report: &mut Report, key, target: &ConnectTarget, value| {
        report.record(Section::Connect, key, &target.label, rep, value);
    };
    for target in targets {
        let one = target
            .load(bench, &tunnels(plan, 1))
            .with_context(|| format!("{}: tunnels, 1 client", target.label))?;
        let (done, seconds) = (one.measured.done as f64, one.measured.seconds);
        record(report, "tunnels_1", target, done / seconds);
        record(report, "client_cores_1", target, one.client_cpu / seconds);
        record(report, "tunnel_p50_1", target, one.measured.p50_us / 1000.0);
        record(report, "tunnel_p99_1", target, one.measured.p99_us / 1000.0);
        if target.server.is_some() {
            record(
                report,
                "proxy_cpu_tunnel",
                target,
                one.server_cpu / done * 1e6,
            );
        }
        record(report, "box_cpu_tunnel", target, one.box_cpu() / done * 1e6);
    }
    for target in targets {
        let many = target
            .load(bench, &tunnels(plan, 32))
            .with_context(|| format!("{}: tunnels, 32 clients", target.label))?;
        let seconds = many.measured.seconds;
        record(
            report,
            "tunnels_32",
            target,
            many.measured.done as f64 / seconds,
        );
        record(
            report,
            "tunnel_p99_32",
            target,
            many.measured.p99_us / 1000.0,
        );
        record(report, "client_cores_32", target, many.client_cpu / seconds);
        if target.server.is_some() {
            record(report, "rss_load", target, many.peak_rss);
        }
    }
    for (streams, each, key) in [
        (1, plan.bulk_one, "bulk_1"),
        (8, plan.bulk_each_of_eight, "bulk_8"),
    ] {
        for target in targets {
            let got = target
                .load(bench, &bulk(streams, each))
                .with_context(|| format!("{}: bulk, {streams} streams", target.label))?;
            let bytes = got.measured.bytes as f64;
            record(
                report,
                key,
                target,
                bytes / got.measured.seconds / f64::from(1 << 20),
            );
            if streams == 1 {
                if target.server.is_some() {
                    record(
                        report,
                        "proxy_cpu_gib",
                        target,
                        got.server_cpu / bytes * GIB,
                    );
                }
                record(report, "box_cpu_gib", target, got.box_cpu() / bytes * GIB);
            }
        }
    }
    Ok(())
}

fn router_rows(
    bench: &Bench,
    plan: &Plan,
    report: &mut Report,
    targets: &[&RouterTarget],
    rep: usize,
) -> anyhow::Result<()> {
    let section = Section::Router;
    for target in targets {
        let label = target.label.as_str();
        let Some(one) = attempt(report, target, "1 client", || {
            wrk(bench, target, 1, 1, plan.wrk_seconds)
        })?
        else {
            continue;
        };
        report.record(
            section,
            "router_p50",
            label,
            rep,
            one.measured.p50_us / 1000.0,
        );
        report.record(
            section,
            "router_p99",
            label,
            rep,
            one.measured.p99_us / 1000.0,
        );
    }
    for target in targets {
        let label = target.label.as_str();
        let Some(many) = attempt(report, target, "32 clients", || {
            wrk(bench, target, 2, 32, plan.wrk_seconds)
        })?
        else {
            continue;
        };
        let done = many.measured.done as f64;
        report.record(
            section,
            "router_rps",
            label,
            rep,
            done / many.measured.seconds,
        );
        if target.server.is_some() {
            report.record(
                section,
                "router_cpu",
                label,
                rep,
                many.server_cpu / done * 1e6,
            );
            report.record(section, "router_rss_load", label, rep, many.peak_rss);
        }
    }
    for target in targets {
        let label = target.label.as_str();
        let shape = vec![
            "events".to_owned(),
            "--requests".into(),
            plan.event_requests.to_string(),
        ];
        let Some(events) = attempt(report, target, "streamed events", || {
            target.load(bench, &shape)
        })?
        else {
            continue;
        };
        report.record(
            section,
            "sse_p50",
            label,
            rep,
            events.measured.p50_us / 1000.0,
        );
        report.record(
            section,
            "sse_max",
            label,
            rep,
            events.measured.max_us / 1000.0,
        );
    }
    for target in targets.iter().filter(|target| target.server.is_some()) {
        let label = target.label.as_str();
        let shape = vec![
            "held".to_owned(),
            "--streams".into(),
            plan.held_streams.to_string(),
            "--gap-ms".into(),
            plan.held_gap_ms.to_string(),
        ];
        let what = format!("{} streams at once", plan.held_streams);
        let Some(held) = attempt(report, target, &what, || target.load(bench, &shape))? else {
            continue;
        };
        report.record(section, "router_rss_streams", label, rep, held.peak_rss);
    }
    Ok(())
}

/// Runs one router measurement of `target`: its failure fails the bench,
/// unless the target is a peer, whose failed row is reported instead (and
/// not tried again in later repetitions: a hung peer costs its timeout once).
fn attempt(
    report: &mut Report,
    target: &RouterTarget,
    what: &str,
    measure: impl FnOnce() -> anyhow::Result<Observed>,
) -> anyhow::Result<Option<Observed>> {
    let row = format!("router, {what}");
    if report.is_incomplete(&target.label, &row) {
        return Ok(None);
    }
    match measure() {
        Ok(observed) => Ok(Some(observed)),
        Err(error) if target.peer => {
            eprintln!(
                "enforcer-bench: {}: router, {what}: not completed: {error:#}",
                target.label
            );
            report.incomplete(
                &target.label,
                &format!("router, {what}"),
                &format!("{error:#}"),
            );
            Ok(None)
        }
        Err(error) => Err(error.context(format!("{}: {row}", target.label))),
    }
}

fn kernel_rows(
    bench: &Bench,
    plan: &Plan,
    report: &mut Report,
    plain: &TestCgroup,
    enforced: &TestCgroup,
    rep: usize,
) -> anyhow::Result<()> {
    let mut order = [
        ("without the programs", plain),
        ("with the programs", enforced),
    ];
    if rep % 2 == 1 {
        order.reverse();
    }
    for (label, cgroup) in order {
        let output = cgroup
            .command(&bench.exe)
            .args(["connects", "--count", &plan.connects.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .context("starting the connect loop")?;
        if !output.status.success() {
            bail!("the connect loop {label} failed with {}", output.status);
        }
        let line: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        for key in ["new_socket_ns", "connect_ns"] {
            let ns = line[key]
                .as_f64()
                .with_context(|| format!("{key} in {line}"))?;
            report.record(Section::Kernel, key, label, rep, ns / 1000.0);
        }
    }
    Ok(())
}

/// A daemon with a pack of many direct entries on a cgroup of this
/// repetition's own (a fresh cgroup: its maps start empty): start to all
/// entries in the map, then pack swaps under a 32-client tunnel load.
fn policy_rows(
    bench: &Bench,
    plan: &Plan,
    report: &mut Report,
    args: &RunArgs,
    dir: &Path,
    daemon_args: &[String],
    rep: usize,
) -> anyhow::Result<()> {
    let cgroup = TestCgroup::new("bench-policy");
    let load = |proxy: SocketAddr| {
        let mut command = cgroup.command(&bench.exe);
        command
            .args(["load", "--via", &format!("proxy:{proxy}")])
            .args([
                "--connect",
                &UPSTREAM.to_string(),
                "--name",
                UPSTREAM_NAME,
                "--ca",
            ])
            .arg(&bench.ca)
            .args(tunnels(plan, 32));
        command
    };
    let measured = crate::swap::run(
        &args.enforcer,
        &cgroup,
        &dir.join(format!("policy-{rep}")),
        daemon_args,
        plan.direct_entries,
        load,
    )?;
    let section = Section::Policy;
    report.record(
        section,
        "policy_start",
        "enforcer",
        rep,
        measured.start_to_entries.as_secs_f64(),
    );
    report.record(section, "swaps", "enforcer", rep, f64::from(measured.swaps));
    report.record(
        section,
        "swap_tunnels",
        "enforcer",
        rep,
        measured.load.done as f64,
    );
    report.record(
        section,
        "swap_failed",
        "enforcer",
        rep,
        measured.load.errors as f64,
    );
    if measured.load.errors > 0 {
        eprintln!(
            "enforcer-bench: {} tunnels failed during pack swaps; first: {}",
            measured.load.errors,
            measured.load.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

impl Observed {
    /// The CPU the whole box spent: client, upstream and proxy.
    fn box_cpu(&self) -> f64 {
        self.client_cpu + self.upstream_cpu + self.server_cpu
    }
}

/// Runs one load process in `cgroup`, sampling the proxy's RSS meanwhile.
fn load(
    bench: &Bench,
    cgroup: &TestCgroup,
    via: &str,
    connect: SocketAddr,
    shape: &[String],
    server: Option<u32>,
) -> anyhow::Result<Observed> {
    let mut command = cgroup.command(&bench.exe);
    command
        .args([
            "load",
            "--via",
            via,
            "--connect",
            &connect.to_string(),
            "--name",
            UPSTREAM_NAME,
            "--ca",
        ])
        .arg(&bench.ca)
        .args(shape);
    let (output, observed) = measured_run(bench, command, server)?;
    let measured: Measured = serde_json::from_slice(&output)
        .with_context(|| format!("the load's report {:?}", String::from_utf8_lossy(&output)))?;
    finish(measured, observed)
}

/// wrk against a router target, with `threads` and `connections`.
fn wrk(
    bench: &Bench,
    target: &RouterTarget,
    threads: u32,
    connections: u32,
    seconds: u32,
) -> anyhow::Result<Observed> {
    let mut command = target.cgroup.command("wrk");
    command
        .args(["-t", &threads.to_string(), "-c", &connections.to_string()])
        .args(["-d", &format!("{seconds}s"), "--latency", "-s"])
        .arg(&bench.wrk_script)
        .arg(&target.url);
    let (output, observed) = measured_run(bench, command, target.server)?;
    let text = String::from_utf8_lossy(&output);
    finish(
        parse_wrk(&text).with_context(|| format!("wrk printed {text:?}"))?,
        observed,
    )
}

/// Fails on a run with errors or nothing done; else the observation.
fn finish(measured: Measured, mut observed: Observed) -> anyhow::Result<Observed> {
    if measured.errors > 0 || measured.done == 0 {
        bail!(
            "{} done, {} failed; first error: {}",
            measured.done,
            measured.errors,
            measured.first_error.as_deref().unwrap_or("none")
        );
    }
    observed.measured = measured;
    Ok(observed)
}

/// Runs `command` to its end (stdout captured), reading CPU around it and
/// the server's RSS every 50 ms while it runs.
fn measured_run(
    bench: &Bench,
    mut command: Command,
    server: Option<u32>,
) -> anyhow::Result<(Vec<u8>, Observed)> {
    let children_before = process::waited_children_cpu_seconds();
    let server_before = server.map(process::cpu_seconds).transpose()?.unwrap_or(0.0);
    let upstream_before = process::cpu_seconds(bench.upstream_pid)?;
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let running = Arc::clone(&running);
        std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while running.load(Ordering::Relaxed) {
                if let Some(pid) = server {
                    peak = peak.max(process::rss_mib(pid).unwrap_or(0.0));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("starting a load process")?;
    running.store(false, Ordering::Relaxed);
    let peak_rss = sampler.join().unwrap_or(0.0);
    if !output.status.success() {
        bail!("the load process failed with {}", output.status);
    }
    let observed = Observed {
        measured: Measured::default(),
        client_cpu: process::waited_children_cpu_seconds() - children_before,
        server_cpu: server.map(process::cpu_seconds).transpose()?.unwrap_or(0.0) - server_before,
        upstream_cpu: process::cpu_seconds(bench.upstream_pid)? - upstream_before,
        peak_rss,
    };
    Ok((output.stdout, observed))
}

/// What wrk's `--latency` report says.
fn parse_wrk(text: &str) -> anyhow::Result<Measured> {
    let mut measured = Measured::default();
    let duration = |value: &str| -> anyhow::Result<f64> {
        let value = value.trim();
        let (number, scale) = if let Some(us) = value.strip_suffix("us") {
            (us, 1.0)
        } else if let Some(ms) = value.strip_suffix("ms") {
            (ms, 1e3)
        } else if let Some(s) = value.strip_suffix('s') {
            (s, 1e6)
        } else if let Some(m) = value.strip_suffix('m') {
            (m, 60e6)
        } else {
            bail!("a duration {value:?}")
        };
        Ok(number.parse::<f64>()? * scale)
    };
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("50%") {
            measured.p50_us = duration(rest)?;
        } else if let Some(rest) = line.strip_prefix("99%") {
            measured.p99_us = duration(rest)?;
        } else if let Some((requests, rest)) = line.split_once(" requests in ") {
            measured.done = requests.trim().parse()?;
            let seconds = rest.split(',').next().context("wrk's run time")?;
            measured.seconds = duration(seconds)? / 1e6;
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            measured.errors += rest.trim().parse::<u64>()?;
            measured.first_error.get_or_insert_with(|| line.to_owned());
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let count: u64 = part.split_whitespace().last().unwrap_or("0").parse()?;
                measured.errors += count;
            }
            measured.first_error.get_or_insert_with(|| line.to_owned());
        }
    }
    if measured.seconds == 0.0 {
        bail!("no run time in wrk's report");
    }
    Ok(measured)
}

/// wrk's request: a small non-streamed Messages API call.
fn wrk_request() -> String {
    format!(
        "wrk.method = \"POST\"\nwrk.body = '{body}'\n\
         wrk.headers[\"content-type\"] = \"application/json\"\n\
         wrk.headers[\"anthropic-version\"] = \"2023-06-01\"\n\
         wrk.headers[\"authorization\"] = \"Bearer {key}\"\n",
        body = load::message_body(false, load::MAX_TOKENS),
        key = load::CLIENT_KEY,
    )
}

/// Set by the bench when it re-runs itself in a new mount namespace: the
/// namespace it left, which the new one must differ from.
const LEFT_NAMESPACE: &str = "ENFORCER_BENCH_LEFT_MOUNT_NAMESPACE";

/// Whether this process runs in a mount namespace of the bench's own;
/// if not, re-runs it in one (`unshare --mount --propagation private`)
/// and returns its exit status. The bench bind-mounts a hosts file over
/// /etc/hosts, which must never reach the machine's namespace.
fn own_mount_namespace() -> anyhow::Result<Option<std::process::ExitStatus>> {
    let own = std::fs::read_link("/proc/self/ns/mnt").context("reading /proc/self/ns/mnt")?;
    match std::env::var_os(LEFT_NAMESPACE) {
        Some(left) if Path::new(&left) == own => {
            bail!(
                "unshare --mount left the bench in the namespace it was meant to leave ({})",
                own.display()
            )
        }
        Some(_) => Ok(None),
        None => {
            let status = Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--"])
                .arg(std::env::current_exe()?)
                .args(std::env::args_os().skip(1))
                .env(LEFT_NAMESPACE, &own)
                .status()
                .context("running unshare (util-linux)")?;
            Ok(Some(status))
        }
    }
}

/// Binds a hosts file naming the upstream, a resolv.conf naming a
/// resolver nobody runs, and an nsswitch.conf with files only over the
/// machine's, in this mount namespace; checks the name resolves to the
/// stand-in. Returns the hosts file (Squid reads it by path).
fn name_the_upstream(dir: &Path) -> anyhow::Result<PathBuf> {
    let files = [
        (
            "hosts",
            format!(
                "127.0.0.1 localhost\n{} {UPSTREAM_NAME} bench.test\n",
                UPSTREAM.ip()
            ),
        ),
        (
            "resolv.conf",
            format!("nameserver {DEAD_RESOLVER}\noptions timeout:1 attempts:1\n"),
        ),
        ("nsswitch.conf", "hosts: files\n".to_owned()),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        let status = Command::new("mount")
            .arg("--bind")
            .arg(&path)
            .arg(Path::new("/etc").join(name))
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!(
                "mount --bind {} /etc/{name} failed with {status}",
                path.display()
            );
        }
    }
    let resolved: Vec<SocketAddr> = (UPSTREAM_NAME, 443).to_socket_addrs()?.collect();
    if resolved != [UPSTREAM] {
        bail!("{UPSTREAM_NAME} resolves to {resolved:?} in the bench's namespace, not {UPSTREAM}");
    }
    Ok(dir.join("hosts"))
}

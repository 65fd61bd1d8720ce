//! Start-up wiring: [`run`] brings the daemon up in a fixed order, serves
//! until shutdown, then drains.
//!
//! 1. audit log (so every later decision is recorded);
//! 2. policy (signed pack, cache or fallback; grants from the state dir);
//! 3. listeners bound (their addresses go into the kernel's endpoint map);
//! 4. kernel: attach re-using the pins of a previous run (no gap), open the
//!    maps, adopt their direct entries, take the event ring buffer;
//! 5. background tasks and servers (proxy, transparent listeners, DNS
//!    filter, router, metrics);
//! 6. the self-test (the servers accept, so the positive paths can be
//!    proven; before the first map sync, so a direct entry a previous run
//!    left is still in the maps and judged): a failure ends start-up with
//!    [`DaemonError::SelfTest`] and the programs stay attached;
//! 7. map sync and the control socket, then `ready` (sd_notify `READY=1`,
//!    "enforcing"), wait for shutdown, drain with a deadline, and leave the
//!    programs pinned (fail-closed).

use std::{sync::Arc, time::SystemTime};

use policy::grants::{live_grants, load_grants};
use proxy::{
    attribution::{ClientGate, OutsideClients},
    dns::{DnsFilter, DnsFilterConfig, DnsLimits},
    server::{ConnectProxy, ProxyConfig},
    transparent::OriginalDestinations,
};
use tokio::{
    net::TcpListener,
    sync::{Mutex, oneshot, watch},
};

use super::{
    DaemonOptions, Listeners, Ready,
    attribution::KernelAttribution,
    bridge::AuditBridge,
    control, credential_names,
    dns_sockets::DnsSockets,
    error::{DaemonError, KernelStep, Listener},
    learned::{DirectNameAnswers, LearnedNames},
    mapsync::MapSync,
    memory,
    metrics::{self, Metrics},
    notify, paths, router,
    selftest::SelftestRunner,
    shutdown_signal,
    state::Daemon,
    tasks,
};
use crate::{
    audit::{AuditWriter, Reason, Retention, writer::WriterThread},
    kernel::{
        self, AttachOptions, EndpointSpec, FamilyEnforcement, PinnedMaps, PtraceEnforcement,
        attach::Attachment,
        events::EventReader,
        hooks::Layers,
        maps::Transport,
        ownership,
        peers::PeerTable,
        redirect::{Mode, OriginalTable, RedirectSettings},
    },
    policy_source::{Loader, LoaderConfig, StartReport},
};

/// After the drain deadline, how long aborted connections get to hand over
/// their audit events before the writer is flushed.
const ABORT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// At shutdown, how long the kernel event reader gets to drain the ring
/// buffer into the audit log.
const EVENTS_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts everything and serves until `shutdown`; then drains and returns.
///
/// `ready` receives the listeners once the cgroup is enforced and the
/// servers accept (what `enforcer run` waits for before starting its child).
pub async fn run(
    mut options: DaemonOptions,
    shutdown: watch::Receiver<bool>,
    ready: Option<oneshot::Sender<Ready>>,
) -> Result<(), DaemonError> {
    // 1. Audit log, in a private state directory.
    paths::prepare_state_dir(&options.state_dir).map_err(|source| DaemonError::StateDir {
        path: options.state_dir.clone(),
        source,
    })?;
    let audit_path = paths::audit_db(&options.state_dir);
    let (writer, writer_thread) =
        AuditWriter::start(&audit_path, Retention::default()).map_err(|source| {
            DaemonError::AuditLog {
                path: audit_path,
                source: Box::new(source),
            }
        })?;
    let bridge = AuditBridge::new(writer, Arc::new(Metrics::default()));

    // 2. Policy.
    let loader_config = std::mem::take(&mut options.loader);
    let (loader, report) = load_policy(loader_config, &options, &bridge).await?;
    let store = loader.store().clone();

    // 3. Listeners (the transparent ones only in egress mode `redirect`:
    //    `--egress-mode`, else the pack's).
    //    The DNS filter's sockets where the pack says `egress.dns = "filtered"`.
    let egress_mode = Mode::effective(options.egress_mode, report.snapshot.policy().egress.mode);
    let dns_filtered = report.snapshot.policy().egress.dns == policy::DnsMode::Filtered;
    let mut bound = Bound::bind(&options, egress_mode, dns_filtered).await?;
    let listeners = bound.listeners;

    // 4. Kernel.
    let kernel = start_kernel(&options, &bound, &report)?;

    let proxy = ConnectProxy::new(
        ProxyConfig::default(),
        store.subscribe(),
        options.resolver.clone(),
        Arc::new(bridge.clone()),
    )
    .with_client_gate(kernel.gate.clone());
    // The DNS filter; what it answers for direct names feeds the map writer.
    let dns_sockets = bound.dns.take();
    let (dns, learned) = match &dns_sockets {
        Some(_) => {
            let learned = Arc::new(LearnedNames::default());
            let filter = DnsFilter::new(DnsFilterConfig {
                policy: store.subscribe(),
                resolver: options.resolver.clone(),
                audit: Arc::new(bridge.clone()),
                gate: Some(kernel.gate.clone()),
                learned: Some(Arc::new(DirectNameAnswers::new(
                    store.subscribe(),
                    learned.clone(),
                ))),
                limits: DnsLimits::default(),
            });
            (Some(filter), Some(learned))
        }
        None => (None, None),
    };
    let mapsync = match &learned {
        Some(learned) => kernel.mapsync.with_learned_names(learned.clone()),
        None => kernel.mapsync,
    };
    let daemon = Arc::new(Daemon {
        cgroup: options.cgroup.clone(),
        cgroup_id: kernel.attachment.cgroup_id,
        families: kernel.attachment.families.clone(),
        listeners,
        store: store.clone(),
        loader: loader.clone(),
        state_dir: options.state_dir.clone(),
        bridge: bridge.clone(),
        maps: kernel.status_maps,
        mapsync: Mutex::new(mapsync),
        proxy: proxy.clone(),
        grant_lock: Mutex::new(()),
        egress_mode,
        dns: dns.clone(),
        learned,
        selftest: SelftestRunner::new(
            options.mount.clone(),
            options.cgroup.clone(),
            Layers::from_pins(&kernel.attachment.pins),
            options.state_dir.clone(),
            listeners.proxy,
            listeners.router,
            listeners.transparent,
        ),
    });

    // 5. Background tasks and servers.
    let stop = || shutdown_signal(shutdown.clone());
    let mut running = tokio::task::JoinSet::new();
    // Its own task, not in `running`: at shutdown it drains what the ring
    // buffer still holds, and is waited for (not aborted) before the rest.
    let mut kernel_events =
        tokio::spawn(tasks::kernel_events(kernel.events, bridge.clone(), stop()));
    running.spawn(tasks::refresh_policy(loader.clone(), stop()));
    running.spawn(tasks::log_swaps(store.clone(), bridge.clone(), stop()));
    let serving = proxy.clone();
    let proxy_listener = bound.proxy;
    let proxy_stop = stop();
    running.spawn(async move { serving.serve_tcp(proxy_listener, proxy_stop).await });
    for listener in bound.transparent {
        let serving = proxy.clone();
        let originals = kernel.originals.clone();
        let transparent_stop = stop();
        running.spawn(async move {
            serving
                .serve_transparent(listener, originals, transparent_stop)
                .await;
        });
    }
    if let (Some(filter), Some(sockets)) = (&dns, dns_sockets) {
        for pair in sockets.into_pairs() {
            let (udp_filter, udp_stop) = (filter.clone(), stop());
            running.spawn(async move { udp_filter.serve_udp(pair.udp, udp_stop).await });
            let (tcp_filter, tcp_stop) = (filter.clone(), stop());
            running.spawn(async move { tcp_filter.serve_tcp(pair.tcp, tcp_stop).await });
        }
    }
    running.spawn(router::serve(
        bound.router,
        store.clone(),
        options.resolver.clone(),
        options.extra_ca.clone(),
        bridge.clone(),
        kernel.gate.clone(),
        stop(),
    ));
    if let Some(addr) = options.metrics_listen {
        let listener = bind_tcp(Listener::Metrics, addr).await?;
        let source = daemon.clone();
        running.spawn(metrics::serve_http(
            listener,
            move || source.metrics_text(),
            stop(),
        ));
    }

    // 6. The self-test, before the first map sync and before anyone hears "ready".
    let selftest = daemon.selftest.run(None).await;
    if options.selftest_table
        && let Ok(report) = &selftest
    {
        eprint!("{}", report.render());
    }
    let refused = match selftest {
        Ok(report) if report.passed => None,
        Ok(report) => Some(DaemonError::SelfTest {
            failures: report.failure_list(),
        }),
        Err(error) => Some(DaemonError::SelfTestRun {
            source: Box::new(error),
        }),
    };
    if let Some(error) = refused {
        running.abort_all();
        kernel_events.abort();
        let _ = kernel_events.await;
        while running.join_next().await.is_some() {}
        drop(daemon);
        drop(proxy);
        drop(dns);
        drop(bridge);
        // The links stay pinned: the cgroup stays enforced after we exit.
        drop(kernel.attachment);
        finish_audit(writer_thread).await;
        return Err(error);
    }

    // 7. Map sync and the control socket; ready.
    running.spawn(tasks::sync_maps(daemon.clone(), stop()));
    // Start-up's allocations (the kernel object's parse above all) are
    // freed by now: hand them back, and what later bursts free.
    memory::trim();
    running.spawn(memory::trim_periodically(stop()));
    if let Some(path) = &options.control_socket {
        let listener = control::bind(path).map_err(|source| DaemonError::ControlSocket {
            path: path.clone(),
            source,
        })?;
        running.spawn(control::serve(listener, daemon.clone(), stop()));
    }
    // Ready; serve until shutdown; drain.
    tracing::info!(
        cgroup = %options.cgroup.relative.display(),
        cgroup_id = kernel.attachment.cgroup_id,
        proxy = %listeners.proxy,
        router = %listeners.router,
        dns = %listeners.dns.map(|addr| addr.to_string()).unwrap_or_else(|| "denied".to_owned()),
        "enforcing"
    );
    notify::ready();
    if let Some(ready) = ready {
        let snapshot = store.current();
        let _ = ready.send(Ready {
            listeners,
            credential_names: credential_names(&snapshot),
            sandbox: snapshot.policy().sandbox.clone(),
            policy_version: snapshot.policy().version.to_string(),
            policy_fallback: matches!(snapshot.origin(), policy::Origin::Fallback { .. }),
            families_enforced: daemon.families == FamilyEnforcement::Enforced,
            live: bridge.writer().live(),
        });
    }
    stop().await;
    tracing::info!(
        drain_seconds = options.drain.as_secs(),
        "stopping: no new connections; draining"
    );
    if tokio::time::timeout(options.drain, proxy.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            open_tunnels = proxy.active_tunnels(),
            "drain deadline reached; closing what is left"
        );
        // Each aborted connection still leaves its one audit event.
        proxy.abort_all();
        let _ = tokio::time::timeout(ABORT_GRACE, proxy.wait_idle()).await;
    }
    // The kernel's last deny events (the cgroup's final connects) are
    // recorded before the writer stops: `enforcer run`'s summary counts them.
    if tokio::time::timeout(EVENTS_DRAIN, &mut kernel_events)
        .await
        .is_err()
    {
        tracing::warn!("the kernel event reader did not finish draining; stopping it");
        kernel_events.abort();
    }
    running.abort_all();
    while running.join_next().await.is_some() {}
    drop(daemon);
    drop(proxy);
    drop(dns);
    drop(bridge);
    // The links stay pinned: the cgroup stays enforced after we exit.
    drop(kernel.attachment);
    finish_audit(writer_thread).await;
    Ok(())
}

/// Loads the policy with the persisted live grants, and logs what is active.
async fn load_policy(
    loader_config: LoaderConfig,
    options: &DaemonOptions,
    bridge: &AuditBridge,
) -> Result<(Arc<Loader>, StartReport), DaemonError> {
    let now = SystemTime::now();
    let grants = match load_grants(&paths::grants_file(&options.state_dir)) {
        Ok(grants) => live_grants(&grants, now),
        Err(error) => {
            tracing::warn!(error = %error, "ignoring unreadable grants file");
            Vec::new()
        }
    };
    let loader_config = LoaderConfig {
        grants,
        state_dir: Some(options.state_dir.clone()),
        ..loader_config
    };
    let (loader, report) =
        Loader::start(loader_config, now)
            .await
            .map_err(|source| DaemonError::Policy {
                source: Box::new(source),
            })?;
    for refusal in &report.refusals {
        tracing::warn!(decision = "deny", reason = %refusal, "policy pack refused");
        bridge.control(
            Reason::PolicyRefused,
            None,
            serde_json::json!({ "why": refusal.to_string() }),
        );
    }
    tasks::log_policy(&report.snapshot, bridge);
    Ok((Arc::new(loader), report))
}

/// The bound proxy, router and transparent sockets, before anything
/// accepts on them.
struct Bound {
    proxy: TcpListener,
    router: TcpListener,
    /// The transparent listeners (IPv4, then IPv6 where `[::1]` exists);
    /// none in `proxy-only` mode.
    transparent: Vec<TcpListener>,
    /// The DNS filter's sockets (`egress.dns = "filtered"`); taken out
    /// when the filter starts serving.
    dns: Option<DnsSockets>,
    listeners: Listeners,
    egress_mode: Mode,
}

impl Bound {
    async fn bind(
        options: &DaemonOptions,
        egress_mode: Mode,
        dns_filtered: bool,
    ) -> Result<Self, DaemonError> {
        let proxy = bind_tcp(Listener::Proxy, options.proxy_listen).await?;
        let router = bind_tcp(Listener::Router, options.router_listen).await?;
        let mut listeners = Listeners {
            proxy: local_addr(Listener::Proxy, &proxy)?,
            router: local_addr(Listener::Router, &router)?,
            transparent: None,
            transparent6: None,
            dns: None,
            dns6: None,
        };
        let mut transparent = Vec::new();
        if egress_mode == Mode::Redirect {
            let v4 = bind_tcp(Listener::Transparent, TRANSPARENT4).await?;
            listeners.transparent = Some(local_addr(Listener::Transparent, &v4)?);
            transparent.push(v4);
            // Without IPv6 loopback, IPv6 connects are denied instead.
            match TcpListener::bind(TRANSPARENT6).await {
                Ok(v6) => {
                    listeners.transparent6 = Some(local_addr(Listener::Transparent, &v6)?);
                    transparent.push(v6);
                }
                Err(error) => tracing::warn!(
                    error = %error,
                    "no IPv6 transparent listener on [::1]: IPv6 connects to allowlisted ports are denied, not redirected"
                ),
            }
        }
        let dns = if dns_filtered {
            let sockets = DnsSockets::bind(options.dns_listen).await?;
            let redirect = sockets.redirect();
            listeners.dns = redirect.listen4;
            listeners.dns6 = redirect.listen6;
            Some(sockets)
        } else {
            None
        };
        Ok(Self {
            proxy,
            router,
            transparent,
            dns,
            listeners,
            egress_mode,
        })
    }

    /// What the programs are told about redirecting.
    fn redirect_settings(&self) -> RedirectSettings {
        RedirectSettings {
            mode: self.egress_mode,
            listen4: self.listeners.transparent,
            listen6: self.listeners.transparent6,
        }
    }
}

/// The transparent listeners' addresses (a free loopback port each).
const TRANSPARENT4: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);
const TRANSPARENT6: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 0);

async fn bind_tcp(
    listener: Listener,
    addr: std::net::SocketAddr,
) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| DaemonError::Bind {
            listener,
            source: Box::new(ownership::bind_error(
                listener.what(),
                addr,
                Transport::Tcp,
                error,
            )),
        })
}

fn local_addr(
    listener: Listener,
    socket: &TcpListener,
) -> Result<std::net::SocketAddr, DaemonError> {
    socket
        .local_addr()
        .map_err(|source| DaemonError::LocalAddr { listener, source })
}

/// What the kernel start-up sequence hands to the rest of the daemon.
struct Kernel {
    /// Holds the loaded object; dropping it leaves the pins.
    attachment: Attachment,
    /// Maps for status and metrics.
    status_maps: PinnedMaps,
    /// The direct-map writer (owns its own map handles).
    mapsync: MapSync,
    /// The deny-event ring buffer.
    events: EventReader,
    /// Client attribution for the proxy and the router.
    gate: ClientGate,
    /// Original destinations for the transparent listener.
    originals: Arc<dyn OriginalDestinations>,
}

/// The kernel start-up sequence, in order. Every step runs after the
/// listeners are bound and before any server accepts, so a step added here
/// (e.g. tagging the listening sockets in a map) sees `bound`'s sockets and
/// the pinned maps, and is in place before the first connection.
fn start_kernel(
    options: &DaemonOptions,
    bound: &Bound,
    report: &StartReport,
) -> Result<Kernel, DaemonError> {
    let cgroup = || options.cgroup.absolute.clone();
    let step = |step: KernelStep| {
        move |source| DaemonError::Kernel {
            step,
            cgroup: cgroup(),
            source: Box::new(source),
        }
    };
    // (a) Load, attach and pin (re-using a previous run's pins), endpoints written.
    let mut attachment = kernel::attach(
        &options.cgroup,
        &AttachOptions {
            endpoints: [
                Some(bound.listeners.proxy),
                Some(bound.listeners.router),
                bound.listeners.transparent,
                bound.listeners.transparent6,
            ]
            .into_iter()
            .flatten()
            .map(EndpointSpec::tcp)
            .collect(),
            debug_log: options.debug_bpf,
            redirect: bound.redirect_settings(),
            redirect_ports: report.snapshot.redirect_ports(SystemTime::now()),
            // No DNS filter (`egress.dns = "deny"`): port 53 stays denied.
            dns: bound
                .dns
                .as_ref()
                .map(DnsSockets::redirect)
                .unwrap_or_default(),
        },
    )
    .map_err(|source| DaemonError::Attach {
        cgroup: cgroup(),
        source: Box::new(source),
    })?;
    match &attachment.families {
        FamilyEnforcement::Enforced => tracing::info!("{}", attachment.families.describe()),
        FamilyEnforcement::NotEnforced { .. } => {
            tracing::warn!("{}", attachment.families.describe())
        }
    }
    match &attachment.ptrace {
        PtraceEnforcement::Enforced => tracing::info!("{}", attachment.ptrace.describe()),
        PtraceEnforcement::NotEnforced { .. } => {
            tracing::warn!("{}", attachment.ptrace.describe())
        }
    }
    tracing::info!(
        mode = bound.egress_mode.as_str(),
        transparent = %bound.listeners.transparent.map(|a| a.to_string()).unwrap_or_default(),
        "egress mode"
    );
    // (b) Open the pinned maps: one handle for the writer, one for status.
    let writer_maps = attachment.maps().map_err(step(KernelStep::OpenMaps))?;
    let status_maps = PinnedMaps::open(&attachment.pins).map_err(step(KernelStep::OpenMaps))?;
    // (c) Adopt the direct entries a previous run left (replaced on first sync).
    let mapsync = MapSync::new(writer_maps, options.resolver.clone())
        .map_err(step(KernelStep::AdoptDirectEntries))?;
    // (d) Take the deny-event ring buffer.
    let events = attachment
        .take_events()
        .map_err(step(KernelStep::TakeEvents))?;
    // (e) The kernel allows the endpoints only while these tagged sockets
    //     listen (a transparent or DNS listener must be claimed here too).
    //     The transparent listeners likewise: the programs redirect only
    //     while these tagged sockets listen there.
    let mut claimed: Vec<&dyn std::os::fd::AsFd> = vec![&bound.proxy, &bound.router];
    claimed.extend(
        bound
            .transparent
            .iter()
            .map(|l| l as &dyn std::os::fd::AsFd),
    );
    //     The DNS filter's sockets, UDP and TCP: port 53 is rewritten only
    //     while these receive there.
    for pair in bound.dns.iter().flat_map(DnsSockets::pairs) {
        claimed.push(&pair.udp);
        claimed.push(&pair.tcp);
    }
    ownership::claim_endpoints(&status_maps, &claimed).map_err(step(KernelStep::ClaimEndpoints))?;
    // (f) Agents need a dedicated uid: say so when one is shared.
    super::shared_uids::warn_if_shared(&options.cgroup.absolute);
    // (g) Client attribution: the listeners look every accepted peer up in
    //     PEERS and refuse clients outside the enforced cgroups.
    let peers = PeerTable::open(&attachment.pins).map_err(step(KernelStep::OpenMaps))?;
    let outside = if options.serve_outside_clients {
        tracing::warn!(
            "--serve-outside-clients: proxy and router clients outside the enforced cgroups are served"
        );
        OutsideClients::Serve
    } else {
        OutsideClients::Refuse
    };
    let attribution = KernelAttribution::new(
        peers,
        options.mount.path.clone(),
        options.cgroup.relative.clone(),
        options.cgroup.absolute.clone(),
        attachment.cgroup_id,
    );
    let gate = ClientGate::new(Arc::new(attribution), outside);
    // (h) The original destinations of redirected clients (REDIRECTS).
    let originals: Arc<dyn OriginalDestinations> =
        Arc::new(OriginalTable::open(&attachment.pins).map_err(step(KernelStep::OpenMaps))?);
    // (i) Further kernel steps go here, before any server accepts.
    Ok(Kernel {
        attachment,
        status_maps,
        mapsync,
        events,
        gate,
        originals,
    })
}

/// Flushes and stops the audit writer thread.
async fn finish_audit(writer_thread: WriterThread) {
    let _ = tokio::task::spawn_blocking(move || writer_thread.finish()).await;
}

//! The daemon behind `enforcer attach` (and `enforcer run` when no daemon
//! serves it): verified policy -> BPF maps, CONNECT proxy, lane router,
//! control socket, audit log.
//!
//! Start order keeps the cgroup enforced at every moment: the listeners are
//! bound first (so their addresses are known), then the kernel programs are
//! attached (re-using the pins of a previous run: no gap), then the maps are
//! synced and the servers start. Shutdown stops accepting, drains with a
//! deadline and leaves the programs pinned (fail-closed).

pub mod bridge;
pub mod control;
pub mod mapsync;
pub mod metrics;
pub mod router;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use policy::{
    Grant, GrantScope, Loader, LoaderConfig, Origin, PolicyStore, Snapshot,
    grants::{GRANTS_FILE, live_grants, load_grants, save_grants},
};
use proxy::{
    resolve::Resolver,
    server::{ConnectProxy, ProcPidCgroup, ProxyConfig},
};
use tokio::{
    net::TcpListener,
    sync::{Mutex, watch},
};

use self::{
    bridge::AuditBridge,
    control::{Handler, Request, Response},
    mapsync::MapSync,
    metrics::{Gauges, Metrics},
};
use crate::{
    audit::{AuditRecord, AuditWriter, Decision, Retention},
    kernel::{
        self, AttachOptions, CgroupMount, CgroupPath, DenyRecord, EndpointSpec, FamilyEnforcement,
        PinnedMaps, events::EventReader, maps::Transport, ownership,
    },
};

/// Default state directory (audit database, policy cache, grants).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/enforcer";

/// Everything the daemon needs, from `attach`'s or `run`'s flags.
pub struct DaemonOptions {
    /// The cgroup to enforce.
    pub cgroup: CgroupPath,
    /// The cgroup v2 mount.
    pub mount: CgroupMount,
    /// Policy source, keys, refresh, cache, TLS and `--resolve` for fetches.
    pub loader: LoaderConfig,
    /// CONNECT proxy address (port 0: any free port).
    pub proxy_listen: SocketAddr,
    /// Lane router address (port 0: any free port).
    pub router_listen: SocketAddr,
    /// Control socket; `None` serves none (`run` without a daemon).
    pub control_socket: Option<PathBuf>,
    /// Optional loopback Prometheus listener.
    pub metrics_listen: Option<SocketAddr>,
    /// State directory.
    pub state_dir: PathBuf,
    /// The resolver (pins + upstream) for the proxy and the map writer.
    pub resolver: Resolver,
    /// Extra CA for the router's upstream TLS.
    pub extra_ca: Option<PathBuf>,
    /// How long shutdown waits for open tunnels and streams.
    pub drain: Duration,
    /// Turn on aya-log output from the programs.
    pub debug_bpf: bool,
}

/// Addresses the daemon actually listens on.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Listeners {
    /// CONNECT proxy.
    pub proxy: SocketAddr,
    /// Lane router.
    pub router: SocketAddr,
}

/// What `run` learns once the daemon enforces.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Where it listens.
    pub listeners: Listeners,
    /// Credential variables the policy's lanes use: `run` removes them from
    /// the command's environment so the agent never sees them.
    pub credential_names: Vec<String>,
    /// The active policy's sandbox section (seccomp exceptions, bwrap).
    pub sandbox: policy::Sandbox,
}

/// Credential names (env / `$CREDENTIALS_DIRECTORY` files) the policy's lanes use.
pub fn credential_names(snapshot: &Snapshot) -> Vec<String> {
    let mut names: Vec<String> = snapshot
        .policy()
        .providers
        .values()
        .filter_map(|provider| match &provider.auth {
            policy::Auth::None => None,
            policy::Auth::Inject { credential, .. } => Some(credential.as_str().to_owned()),
            policy::Auth::Passthrough { fallback, .. } => {
                fallback.as_ref().map(|c| c.as_str().to_owned())
            }
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A running daemon's shared state (what the control socket serves).
pub struct Daemon {
    cgroup: CgroupPath,
    cgroup_id: u64,
    families: FamilyEnforcement,
    listeners: Listeners,
    store: Arc<PolicyStore>,
    loader: Arc<Loader>,
    state_dir: PathBuf,
    bridge: AuditBridge,
    maps: PinnedMaps,
    mapsync: Mutex<MapSync>,
    proxy: ConnectProxy,
    grant_lock: Mutex<()>,
}

/// Sends `true` to stop the daemon.
pub type ShutdownSender = watch::Sender<bool>;

/// A future that resolves once shutdown was requested.
pub async fn shutdown_signal(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|stop| *stop).await;
}

/// Starts everything and serves until `shutdown`; then drains and returns.
///
/// `ready` receives the listeners once the cgroup is enforced and the
/// servers accept (what `enforcer run` waits for before starting its child).
pub async fn run(
    options: DaemonOptions,
    shutdown: watch::Receiver<bool>,
    ready: Option<tokio::sync::oneshot::Sender<Ready>>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let (writer, writer_thread) =
        AuditWriter::start(&options.state_dir.join("audit.db"), Retention::default())
            .context("starting the audit log")?;
    let metrics = Arc::new(Metrics::default());
    let bridge = AuditBridge::new(writer, metrics);

    let grants_path = options.state_dir.join(GRANTS_FILE);
    let now = SystemTime::now();
    let grants = match load_grants(&grants_path) {
        Ok(grants) => live_grants(&grants, now),
        Err(error) => {
            tracing::warn!(error = %error, "ignoring unreadable grants file");
            Vec::new()
        }
    };
    let mut loader_config = options.loader;
    loader_config.grants = grants;
    loader_config.state_dir = Some(options.state_dir.clone());
    let (loader, report) = Loader::start(loader_config, now)
        .await
        .context("loading the policy")?;
    for refusal in &report.refusals {
        tracing::warn!(decision = "deny", reason = %refusal, "policy pack refused");
        bridge.control(
            Decision::Deny,
            "policy_refused",
            None,
            serde_json::json!({ "why": refusal.to_string() }),
        );
    }
    log_policy(&report.snapshot, &bridge);
    let loader = Arc::new(loader);
    let store = loader.store().clone();

    // === issue 12: a taken port names its holder (kernel::ownership) ===
    let proxy_listener = TcpListener::bind(options.proxy_listen)
        .await
        .map_err(|e| ownership::bind_error("the proxy", options.proxy_listen, Transport::Tcp, e))?;
    let router_listener = TcpListener::bind(options.router_listen)
        .await
        .map_err(|e| {
            ownership::bind_error("the lane router", options.router_listen, Transport::Tcp, e)
        })?;
    let listeners = Listeners {
        proxy: proxy_listener.local_addr()?,
        router: router_listener.local_addr()?,
    };

    let mut attachment = kernel::attach(
        &options.cgroup,
        &AttachOptions {
            endpoints: vec![
                EndpointSpec::tcp(listeners.proxy),
                EndpointSpec::tcp(listeners.router),
            ],
            debug_log: options.debug_bpf,
        },
    )
    .with_context(|| format!("attaching to cgroup {}", options.cgroup.absolute.display()))?;
    // === issue 12: the kernel allows the endpoints only while these tagged sockets listen ===
    ownership::claim_endpoints(&attachment.maps()?, &[&proxy_listener, &router_listener])
        .context("tagging the proxy and router listeners as the daemon's")?;
    match &attachment.families {
        FamilyEnforcement::Enforced => tracing::info!("{}", attachment.families.describe()),
        FamilyEnforcement::NotEnforced { .. } => {
            tracing::warn!("{}", attachment.families.describe())
        }
    }
    if report.snapshot.policy().egress.mode != policy::EgressMode::ProxyOnly {
        tracing::warn!(
            mode = ?report.snapshot.policy().egress.mode,
            "egress mode `redirect` is not implemented yet: the kernel denies (does not redirect) TCP that bypasses the proxy"
        );
    }
    let maps = attachment.maps()?;

    let proxy = ConnectProxy::new(
        ProxyConfig::default(),
        store.subscribe(),
        options.resolver.clone(),
        Arc::new(bridge.clone()),
    )
    .with_peer_cgroup(Arc::new(ProcPidCgroup::new(options.mount.path.clone())));

    let daemon = Arc::new(Daemon {
        cgroup: options.cgroup.clone(),
        cgroup_id: attachment.cgroup_id,
        families: attachment.families.clone(),
        listeners,
        store: store.clone(),
        loader: loader.clone(),
        state_dir: options.state_dir.clone(),
        bridge: bridge.clone(),
        maps: PinnedMaps::open(&attachment.pins)?,
        mapsync: Mutex::new(MapSync::new(maps, options.resolver.clone())?),
        proxy: proxy.clone(),
        grant_lock: Mutex::new(()),
    });

    let mut tasks = tokio::task::JoinSet::new();
    // Kernel denies -> audit.
    let events = attachment.take_events()?;
    tasks.spawn(kernel_events(
        events,
        bridge.clone(),
        shutdown_signal(shutdown.clone()),
    ));
    // Policy -> maps, on every swap and every expiry.
    tasks.spawn(sync_maps(daemon.clone(), shutdown_signal(shutdown.clone())));
    // Policy refresh and pack expiry.
    let refresher = loader.clone();
    let refresh_shutdown = shutdown_signal(shutdown.clone());
    tasks.spawn(async move {
        tokio::select! {
            () = refresher.run() => {}
            () = refresh_shutdown => {}
        }
    });
    // Policy swaps are logged and audited.
    tasks.spawn(log_swaps(
        store.clone(),
        bridge.clone(),
        shutdown_signal(shutdown.clone()),
    ));
    // The CONNECT proxy.
    let serving = proxy.clone();
    let proxy_shutdown = shutdown_signal(shutdown.clone());
    tasks.spawn(async move { serving.serve_tcp(proxy_listener, proxy_shutdown).await });
    // The lane router.
    tasks.spawn(router::serve(
        router_listener,
        store.clone(),
        options.resolver.clone(),
        options.extra_ca.clone(),
        bridge.clone(),
        shutdown_signal(shutdown.clone()),
    ));
    // The control socket.
    if let Some(path) = &options.control_socket {
        let listener = control::bind(path)
            .with_context(|| format!("binding the control socket {}", path.display()))?;
        tasks.spawn(control::serve(
            listener,
            daemon.clone(),
            shutdown_signal(shutdown.clone()),
        ));
    }
    if let Some(addr) = options.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener {addr}"))?;
        tasks.spawn(serve_metrics(
            listener,
            daemon.clone(),
            shutdown_signal(shutdown.clone()),
        ));
    }

    tracing::info!(
        cgroup = %options.cgroup.relative.display(),
        cgroup_id = attachment.cgroup_id,
        proxy = %listeners.proxy,
        router = %listeners.router,
        "enforcing"
    );
    if let Some(ready) = ready {
        let _ = ready.send(Ready {
            listeners,
            credential_names: credential_names(&store.current()),
            sandbox: store.current().policy().sandbox.clone(),
        });
    }

    shutdown_signal(shutdown.clone()).await;
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
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(daemon);
    drop(proxy);
    drop(bridge);
    drop(attachment);
    let _ = tokio::task::spawn_blocking(move || writer_thread.finish()).await;
    Ok(())
}

fn log_policy(snapshot: &Snapshot, bridge: &AuditBridge) {
    let version = snapshot.policy().version.to_string();
    match snapshot.origin() {
        Origin::Signed { key_id, source, .. } => {
            tracing::info!(policy_version = %version, key_id = %key_id, source = %source, "policy active");
            bridge.control(
                Decision::Allow,
                "policy_applied",
                None,
                serde_json::json!({ "version": version, "source": source, "key_id": key_id.to_string() }),
            );
        }
        Origin::Fallback { reason } => {
            tracing::warn!(reason = %reason, "using the embedded fallback policy (Anthropic API only)");
            bridge.control(
                Decision::Allow,
                "policy_fallback",
                None,
                serde_json::json!({ "version": version, "why": reason }),
            );
        }
    }
}

async fn log_swaps(
    store: Arc<PolicyStore>,
    bridge: AuditBridge,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut receiver = store.subscribe();
    let mut last = receiver.borrow_and_update().policy().version.to_string();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            changed = receiver.changed() => {
                if changed.is_err() {
                    return;
                }
                let snapshot = receiver.borrow_and_update().clone();
                let version = snapshot.policy().version.to_string();
                if version != last {
                    log_policy(&snapshot, &bridge);
                    last = version;
                }
            }
        }
    }
}

async fn kernel_events(
    events: EventReader,
    bridge: AuditBridge,
    shutdown: impl std::future::Future<Output = ()>,
) {
    // SAFETY: the reader owns its ring-buffer fd for as long as the AsyncFd owns the reader.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
    };
    let mut events = match registered {
        Ok(events) => events,
        Err(error) => {
            tracing::error!(error = %std::io::Error::from(error), "cannot watch the kernel event ring buffer");
            return;
        }
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            batch = EventReader::next_batch(&mut events) => match batch {
                Ok(batch) => {
                    for event in &batch {
                        bridge.kernel_deny(&DenyRecord::from_event(event));
                    }
                }
                Err(error) => {
                    tracing::error!(error = %error, "reading kernel deny events");
                    return;
                }
            }
        }
    }
}

async fn sync_maps(daemon: Arc<Daemon>, shutdown: impl std::future::Future<Output = ()>) {
    let mut receiver = daemon.store.subscribe();
    tokio::pin!(shutdown);
    loop {
        let snapshot = receiver.borrow_and_update().clone();
        let now = SystemTime::now();
        daemon.sync_maps(&snapshot, now).await;
        let wait = mapsync::until_next(&snapshot, now);
        tokio::select! {
            () = &mut shutdown => return,
            changed = receiver.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn serve_metrics(
    listener: TcpListener,
    daemon: Arc<Daemon>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((mut stream, _)) = accepted else { continue };
                let daemon = daemon.clone();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 2048];
                    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
                    let body = daemon.metrics_text();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                });
            }
        }
    }
}

impl Daemon {
    /// Writes `snapshot`'s direct rules to the kernel maps.
    async fn sync_maps(&self, snapshot: &Snapshot, now: SystemTime) {
        match self.mapsync.lock().await.sync(snapshot, now).await {
            Ok(report) => {
                for (target, why) in &report.skipped {
                    tracing::warn!(decision = "deny", reason = "direct_unresolved", host = %target, why = %why, "direct entry not written");
                    self.bridge.control(
                        Decision::Deny,
                        "direct_unresolved",
                        Some(target.clone()),
                        serde_json::json!({ "why": why }),
                    );
                }
                tracing::debug!(
                    written = report.written.len(),
                    removed = report.removed,
                    "direct maps synced"
                );
            }
            Err(error) => tracing::error!(error = %error, "syncing the direct maps"),
        }
    }

    fn metrics_text(&self) -> String {
        let snapshot = self.store.current();
        let counters = self.maps.counters().ok();
        let gauges = Gauges {
            open_tunnels: self.proxy.active_tunnels() as u64,
            ring_buffer_lost: counters.map_or(0, |c| c.events_lost),
            audit_dropped: self
                .bridge
                .writer()
                .stats()
                .dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            policy_version: snapshot.policy().version.to_string(),
            policy_fallback: matches!(snapshot.origin(), Origin::Fallback { .. }),
            policy_expiry: snapshot
                .expires_at()
                .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
        };
        self.bridge.metrics().render(&gauges)
    }

    fn status(&self) -> serde_json::Value {
        let snapshot = self.store.current();
        let origin = match snapshot.origin() {
            Origin::Signed {
                key_id,
                source,
                sha256,
            } => serde_json::json!({
                "kind": "signed", "key_id": key_id.to_string(), "source": source, "sha256": sha256,
            }),
            Origin::Fallback { reason } => serde_json::json!({ "kind": "fallback", "why": reason }),
        };
        let grants: Vec<serde_json::Value> = snapshot
            .grants()
            .iter()
            .map(|grant| {
                serde_json::json!({
                    "target": grant.pattern.to_string(),
                    "scope": grant.scope.as_str(),
                    "expires_at": policy::format_timestamp(grant.expires_at()),
                    "reason": grant.reason,
                })
            })
            .collect();
        serde_json::json!({
            "pid": std::process::id(),
            "cgroup": self.cgroup.relative.display().to_string(),
            "cgroup_id": self.cgroup_id,
            "listeners": self.listeners,
            "families_enforced": self.families == FamilyEnforcement::Enforced,
            "policy": {
                "version": snapshot.policy().version.to_string(),
                "generation": snapshot.generation(),
                "expires_at": snapshot.expires_at().map(policy::format_timestamp),
                "origin": origin,
            },
            "grants": grants,
            "credential_names": credential_names(&snapshot),
            "open_tunnels": self.proxy.active_tunnels(),
            "kernel": self.maps.counters().ok(),
        })
    }

    async fn allow(
        &self,
        target: &str,
        ttl: Duration,
        reason: Option<String>,
        direct: bool,
    ) -> Response {
        let _guard = self.grant_lock.lock().await;
        let now = SystemTime::now();
        let scope = if direct {
            GrantScope::Direct
        } else {
            GrantScope::Proxy
        };
        let mut grant = match Grant::new(target, scope, now, ttl) {
            Ok(grant) => grant,
            Err(error) => return Response::error(error.to_string()),
        };
        grant.reason = reason.clone();
        let mut grants = live_grants(self.store.current().grants(), now);
        grants.retain(|g| !(g.pattern == grant.pattern && g.scope == grant.scope));
        grants.push(grant.clone());
        if let Err(error) = save_grants(&self.state_dir.join(GRANTS_FILE), &grants) {
            return Response::error(format!("could not persist the grant: {error}"));
        }
        let snapshot = self.store.set_grants(grants);
        // The kernel side is in place before the operator hears "allowed".
        self.sync_maps(&snapshot, now).await;
        let expires_at = policy::format_timestamp(grant.expires_at());
        tracing::info!(decision = "allow", reason = "grant", host = %grant.pattern, scope = scope.as_str(), expires_at = %expires_at, "grant added");
        self.bridge.control(
            Decision::Allow,
            "grant",
            Some(grant.pattern.to_string()),
            serde_json::json!({ "scope": scope.as_str(), "expires_at": expires_at, "note": reason }),
        );
        Response::ok(serde_json::json!({
            "target": grant.pattern.to_string(),
            "scope": scope.as_str(),
            "expires_at": expires_at,
        }))
    }

    async fn revoke(&self, target: &str) -> Response {
        let _guard = self.grant_lock.lock().await;
        let now = SystemTime::now();
        let pattern = match policy::HostPortPattern::parse(target) {
            Ok(pattern) => pattern,
            Err(error) => return Response::error(error.to_string()),
        };
        let mut grants = live_grants(self.store.current().grants(), now);
        let before = grants.len();
        grants.retain(|g| g.pattern != pattern);
        let removed = before - grants.len();
        if removed == 0 {
            return Response::error(format!("no live grant for {target}"));
        }
        if let Err(error) = save_grants(&self.state_dir.join(GRANTS_FILE), &grants) {
            return Response::error(format!("could not persist the revocation: {error}"));
        }
        let snapshot = self.store.set_grants(grants);
        self.sync_maps(&snapshot, now).await;
        tracing::info!(decision = "deny", reason = "revoke", host = %pattern, "grant revoked");
        self.bridge.control(
            Decision::Deny,
            "revoke",
            Some(pattern.to_string()),
            serde_json::json!({ "removed": removed }),
        );
        Response::ok(serde_json::json!({ "target": pattern.to_string(), "removed": removed }))
    }

    async fn reload(&self) -> Response {
        match self.loader.refresh(SystemTime::now()).await {
            policy::RefreshOutcome::Applied(snapshot) => Response::ok(serde_json::json!({
                "outcome": "applied", "version": snapshot.policy().version.to_string(),
            })),
            policy::RefreshOutcome::Unchanged => {
                Response::ok(serde_json::json!({ "outcome": "unchanged" }))
            }
            policy::RefreshOutcome::NoSource => Response::ok(serde_json::json!({
                "outcome": "no_source", "note": "no --policy was given; the active policy stays",
            })),
            policy::RefreshOutcome::Refused(refusal) => {
                self.bridge.control(
                    Decision::Deny,
                    "policy_refused",
                    None,
                    serde_json::json!({ "why": refusal.to_string() }),
                );
                Response::error(format!(
                    "the new pack was refused and the active policy stays: {refusal}"
                ))
            }
        }
    }
}

impl Handler for Daemon {
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::ok(self.status()),
            Request::Allow {
                target,
                ttl_seconds,
                reason,
                direct,
            } => {
                self.allow(&target, Duration::from_secs(ttl_seconds), reason, direct)
                    .await
            }
            Request::Revoke { target } => self.revoke(&target).await,
            Request::Reload => self.reload().await,
            Request::Metrics => Response::ok(serde_json::Value::String(self.metrics_text())),
            Request::Events => Response::error("events are streamed"),
        }
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<AuditRecord> {
        self.bridge.writer().subscribe()
    }
}

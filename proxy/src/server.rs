//! The CONNECT proxy server: accepts clients on TCP or unix listeners and
//! takes each through the fixed phases of DESIGN.md §4, with I/O and
//! clocks here and every judgement in [`crate::decide`]:
//!
//! 1. admission: a tunnel slot (`limits.maxConcurrentTunnels`), else `503`;
//! 2. request head, bounded in bytes and by the header-read timeout;
//! 3. [`decide_request`]: IP literal → allowlist → (plain HTTP allowed?);
//!    a denial answers `403` with the reason;
//! 4. `200`, then the ClientHello, bounded in bytes and by its timeout;
//! 5. [`decide_client_hello`]: SNI checks; a denial closes the tunnel;
//! 6. resolve once, [`select_addresses`], dial exactly what passed;
//! 7. forward the buffered ClientHello, then [`relay`] both ways.
//!
//! Every connection ends in exactly one [`AuditEvent`] handed to the
//! [`AuditSink`] (which logs and stores it), whichever phase ended it. A connection uses the
//! policy snapshot current when it was accepted, to its end.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use policy::{Host, Snapshot};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::addr_class::{AddressClass, LocalAddrs};
use crate::admission::{Admission, Slot};
use crate::audit::{AuditEvent, AuditSink, Peer, RequestKind};
use crate::client_hello::{ClientHelloReader, HelloError, HelloProgress};
use crate::decide::{RequestDecision, decide_client_hello, decide_request, select_addresses};
use crate::forward::origin_head;
use crate::reason::{Reason, Verdict};
use crate::relay::{RelayLimits, SpliceStream, relay};
use crate::request::{HeadScanner, Request, RequestError, RequestLimits, Target, parse_head};
use crate::resolve::Resolver;
use crate::response::{CONNECT_ESTABLISHED, refusal};

/// Settings of the proxy itself (the policy's `limits` give the rest).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Longest request-head line, CRLF excluded.
    pub max_line_bytes: usize,
    /// Most request header lines.
    pub max_headers: usize,
    /// Most over-limit connections answered `503` at once; past that an
    /// over-limit connection is closed without an answer.
    pub max_rejecting: usize,
    /// How long an interface-address snapshot is reused.
    pub local_addrs_ttl: Duration,
    /// After a refusal, how long to drain what the client still sends so
    /// it reads the answer instead of a reset.
    pub linger: Duration,
    /// Relay pipe capacity per direction (see [`RelayLimits::pipe_size`]).
    pub pipe_size: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            max_line_bytes: 4096,
            max_headers: 64,
            max_rejecting: 1024,
            local_addrs_ttl: Duration::from_secs(10),
            linger: Duration::from_secs(1),
            pipe_size: crate::relay::DEFAULT_PIPE_SIZE,
        }
    }
}

/// Finds the cgroup v2 id of a client, when the daemon can tell.
pub trait PeerCgroup: Send + Sync {
    /// The cgroup id of `peer` (connected to the proxy's `local` address).
    fn cgroup_id(&self, peer: &Peer, local: Option<SocketAddr>) -> Option<u64>;
}

/// [`PeerCgroup`] for unix-socket clients: `SO_PEERCRED` pid →
/// `/proc/<pid>/cgroup` (`0::/path`) → inode of `<mount>/<path>`, which is
/// the cgroup id. TCP clients get `None`.
#[derive(Clone, Debug)]
pub struct ProcPidCgroup {
    mount: PathBuf,
}

impl ProcPidCgroup {
    /// A lookup under the cgroup v2 mount `mount` (e.g. `/sys/fs/cgroup`).
    pub fn new(mount: impl Into<PathBuf>) -> Self {
        Self {
            mount: mount.into(),
        }
    }
}

impl PeerCgroup for ProcPidCgroup {
    fn cgroup_id(&self, peer: &Peer, _local: Option<SocketAddr>) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let Peer::Unix { pid: Some(pid), .. } = peer else {
            return None;
        };
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
        let relative = path.trim_start_matches('/');
        if relative.split('/').any(|part| part == "..") {
            return None;
        }
        std::fs::metadata(self.mount.join(relative))
            .ok()
            .map(|m| m.ino())
    }
}

/// The policy snapshots the proxy follows (hot reload swaps the value).
pub type PolicyWatch = watch::Receiver<Arc<Snapshot>>;

/// The CONNECT proxy. Cheap to clone; clones share limits and state.
#[derive(Clone)]
pub struct ConnectProxy {
    shared: Arc<Shared>,
}

struct Shared {
    config: ProxyConfig,
    policy: PolicyWatch,
    resolver: Resolver,
    audit: Arc<dyn AuditSink>,
    cgroup: Option<Arc<dyn PeerCgroup>>,
    tunnels: Arc<Admission>,
    rejecting: Arc<Admission>,
    local_addrs: Mutex<Option<(Instant, Arc<LocalAddrs>)>>,
}

impl ConnectProxy {
    /// A proxy deciding with the snapshots from `policy`, resolving with
    /// `resolver`, reporting to `audit`.
    pub fn new(
        config: ProxyConfig,
        policy: PolicyWatch,
        resolver: Resolver,
        audit: Arc<dyn AuditSink>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                policy,
                resolver,
                audit,
                cgroup: None,
                tunnels: Admission::new(),
                rejecting: Admission::new(),
                local_addrs: Mutex::new(None),
            }),
        }
    }

    /// Adds a cgroup lookup for audit events. Call before serving.
    pub fn with_peer_cgroup(self, lookup: Arc<dyn PeerCgroup>) -> Self {
        let shared = match Arc::try_unwrap(self.shared) {
            Ok(mut shared) => {
                shared.cgroup = Some(lookup);
                shared
            }
            Err(shared) => Shared {
                config: shared.config.clone(),
                policy: shared.policy.clone(),
                resolver: shared.resolver.clone(),
                audit: shared.audit.clone(),
                cgroup: Some(lookup),
                tunnels: shared.tunnels.clone(),
                rejecting: shared.rejecting.clone(),
                local_addrs: Mutex::new(None),
            },
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Connections holding a tunnel slot now.
    pub fn active_tunnels(&self) -> usize {
        self.shared.tunnels.active()
    }

    /// Waits until no connection holds a tunnel slot (drain after the
    /// listeners stopped; bound it with a timeout).
    pub async fn wait_idle(&self) {
        self.shared.tunnels.wait_idle().await;
        self.shared.rejecting.wait_idle().await;
    }

    /// Accepts TCP clients until `shutdown` resolves. Connections already
    /// accepted carry on; see [`ConnectProxy::wait_idle`].
    pub async fn serve_tcp(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => {
                        let local = stream.local_addr().ok();
                        // Small writes must not wait for Nagle / delayed ACK.
                        let _ = stream.set_nodelay(true);
                        let shared = self.shared.clone();
                        tokio::spawn(async move {
                            handle(shared, stream, Peer::Tcp { addr }, local).await;
                        });
                    }
                    Err(error) => accept_backoff(error).await,
                }
            }
        }
    }

    /// Accepts unix-socket clients until `shutdown` resolves.
    pub async fn serve_unix(&self, listener: UnixListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let cred = stream.peer_cred().ok();
                        let peer = Peer::Unix {
                            pid: cred.as_ref().and_then(tokio::net::unix::UCred::pid),
                            uid: cred.as_ref().map(tokio::net::unix::UCred::uid),
                        };
                        let shared = self.shared.clone();
                        tokio::spawn(async move {
                            handle(shared, stream, peer, None).await;
                        });
                    }
                    Err(error) => accept_backoff(error).await,
                }
            }
        }
    }
}

/// Accept errors (EMFILE, ENOBUFS, aborted handshakes) are transient: log,
/// pause briefly so a full fd table does not spin, carry on.
async fn accept_backoff(error: io::Error) {
    tracing::warn!(error = %error, "proxy accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

impl Shared {
    /// This host's interface addresses, refreshed at most every `local_addrs_ttl`.
    fn local_addrs(&self) -> Arc<LocalAddrs> {
        let mut cached = match self.local_addrs.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((at, addrs)) = cached.as_ref()
            && at.elapsed() < self.config.local_addrs_ttl
        {
            return addrs.clone();
        }
        let addrs = match LocalAddrs::from_system() {
            Ok(addrs) => Arc::new(addrs),
            Err(error) => {
                tracing::warn!(error = %error, "getifaddrs failed; keeping the previous interface addresses");
                cached
                    .as_ref()
                    .map_or_else(|| Arc::new(LocalAddrs::default()), |(_, a)| a.clone())
            }
        };
        *cached = Some((Instant::now(), addrs.clone()));
        addrs
    }
}

// === the per-connection phases ===

/// A client stream: TCP or unix.
trait Client: AsyncRead + AsyncWrite + SpliceStream + Unpin + Send + 'static {
    /// One non-blocking write attempt (no waiting for buffer space).
    fn try_write_once(&self, bytes: &[u8]) -> io::Result<usize>;
}

impl Client for TcpStream {
    fn try_write_once(&self, bytes: &[u8]) -> io::Result<usize> {
        self.try_write(bytes)
    }
}

impl Client for UnixStream {
    fn try_write_once(&self, bytes: &[u8]) -> io::Result<usize> {
        self.try_write(bytes)
    }
}

/// Facts gathered along the phases, turned into the audit event at the end.
struct Attempt {
    time: SystemTime,
    start: Instant,
    event: AuditEvent,
}

impl Attempt {
    fn new(peer: Peer, cgroup_id: Option<u64>, policy_version: String) -> Self {
        let time = SystemTime::now();
        Self {
            time,
            start: Instant::now(),
            event: AuditEvent {
                time,
                client: peer,
                cgroup_id,
                kind: RequestKind::Unknown,
                host: None,
                port: None,
                sni: Vec::new(),
                ech: false,
                verdict: Verdict::deny(Reason::ClientError),
                address_class: None,
                upstream: None,
                upstream_source: None,
                bytes_up: 0,
                bytes_down: 0,
                handshake: Duration::ZERO,
                total: Duration::ZERO,
                end: None,
                policy_version: Some(policy_version),
            },
        }
    }

    fn mark_handshake(&mut self) {
        self.event.handshake = self.start.elapsed();
    }

    fn finish(mut self, shared: &Shared, verdict: Verdict) {
        if self.event.handshake.is_zero() {
            self.event.handshake = self.start.elapsed();
        }
        self.event.total = self.start.elapsed();
        self.event.verdict = verdict;
        self.event.time = self.time;
        shared.audit.record(self.event);
    }
}

async fn handle<C: Client>(
    shared: Arc<Shared>,
    mut client: C,
    peer: Peer,
    local: Option<SocketAddr>,
) {
    let snapshot = shared.policy.borrow().clone();
    let cgroup_id = shared
        .cgroup
        .as_ref()
        .and_then(|lookup| lookup.cgroup_id(&peer, local));
    let mut attempt = Attempt::new(peer, cgroup_id, snapshot.policy().version.to_string());
    let limits = snapshot.policy().limits;

    // Phase 1: admission.
    let max_tunnels = usize::try_from(limits.max_concurrent_tunnels).unwrap_or(usize::MAX);
    let Some(slot) = shared.tunnels.try_admit(max_tunnels) else {
        overloaded(&shared, client, attempt, &snapshot).await;
        return;
    };

    // Phase 2: the request head.
    let request_limits = RequestLimits {
        max_line_bytes: shared.config.max_line_bytes,
        max_head_bytes: usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX),
        max_headers: shared.config.max_headers,
    };
    let head_deadline = attempt.start + limits.header_read_timeout;
    let (request, leftover) = match read_head(&mut client, request_limits, head_deadline).await {
        Ok(head) => head,
        Err(failure) => {
            refuse_head(&shared, client, attempt, failure).await;
            return;
        }
    };
    let authority = request.target.authority().clone();
    attempt.event.host = Some(authority.host_for_display());
    attempt.event.port = Some(authority.port);
    attempt.event.kind = match request.target {
        Target::Connect(_) => RequestKind::Connect,
        Target::AbsoluteHttp { .. } => RequestKind::PlainHttp,
    };

    // Phase 3: the request against the allowlist.
    match decide_request(&request.target, &snapshot, SystemTime::now()) {
        RequestDecision::Deny(reason) => {
            let response = refusal(reason, Some(&authority), None);
            answer_and_close(&shared, &mut client, &response).await;
            attempt.finish(&shared, Verdict::deny(reason));
        }
        RequestDecision::Tunnel { host, port, reason } => {
            tunnel(
                &shared, client, attempt, &snapshot, host, port, reason, leftover, slot,
            )
            .await;
        }
        RequestDecision::PlainHttp { host, port } => {
            plain_http(
                &shared, client, attempt, &snapshot, &request, host, port, leftover, slot,
            )
            .await;
        }
    }
}

/// Over the tunnel limit: read the head (so the client reads our answer
/// rather than a reset), answer `503`, close. Bounded by `max_rejecting`.
async fn overloaded<C: Client>(
    shared: &Shared,
    mut client: C,
    mut attempt: Attempt,
    snapshot: &Snapshot,
) {
    let Some(_rejecting) = shared.rejecting.try_admit(shared.config.max_rejecting) else {
        // Too many being answered already: one non-blocking attempt at the
        // answer, then close, so an overload never grows memory.
        let _ = client.try_write_once(&refusal(Reason::Overloaded, None, None));
        attempt.finish(shared, Verdict::deny(Reason::Overloaded));
        return;
    };
    let limits = snapshot.policy().limits;
    let request_limits = RequestLimits {
        max_line_bytes: shared.config.max_line_bytes,
        max_head_bytes: usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX),
        max_headers: shared.config.max_headers,
    };
    let deadline = attempt.start + limits.header_read_timeout;
    let target = match read_head(&mut client, request_limits, deadline).await {
        Ok((request, _)) => {
            let authority = request.target.authority().clone();
            attempt.event.host = Some(authority.host_for_display());
            attempt.event.port = Some(authority.port);
            Some(authority)
        }
        Err(_) => None,
    };
    let response = refusal(Reason::Overloaded, target.as_ref(), None);
    answer_and_close(shared, &mut client, &response).await;
    attempt.finish(shared, Verdict::deny(Reason::Overloaded));
}

/// Why the request head could not be had.
enum HeadFailure {
    /// The client closed before a complete head.
    Closed,
    /// A socket error.
    Io,
    /// The header-read timeout ran out.
    Timeout,
    /// The head broke the grammar or a bound.
    Bad(RequestError),
}

async fn read_head<C: Client>(
    client: &mut C,
    limits: RequestLimits,
    deadline: Instant,
) -> Result<(Request, Vec<u8>), HeadFailure> {
    let mut buf = Vec::with_capacity(1024);
    let mut scanner = HeadScanner::new(limits);
    let mut chunk = [0u8; 2048];
    loop {
        let read = tokio::time::timeout_at(deadline, client.read(&mut chunk)).await;
        let n = match read {
            Err(_) => return Err(HeadFailure::Timeout),
            Ok(Err(_)) => return Err(HeadFailure::Io),
            Ok(Ok(0)) => return Err(HeadFailure::Closed),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        match scanner.scan(&buf) {
            Err(error) => return Err(HeadFailure::Bad(error)),
            Ok(None) => {}
            Ok(Some(len)) => {
                let request = parse_head(&buf[..len]).map_err(HeadFailure::Bad)?;
                let leftover = buf.split_off(len);
                return Ok((request, leftover));
            }
        }
    }
}

async fn refuse_head<C: Client>(
    shared: &Shared,
    mut client: C,
    attempt: Attempt,
    failure: HeadFailure,
) {
    let (reason, detail) = match &failure {
        HeadFailure::Closed => (Reason::ClientClosed, None),
        HeadFailure::Io => (Reason::ClientError, None),
        HeadFailure::Timeout => (Reason::RequestTimeout, None),
        HeadFailure::Bad(error) => (error.reason(), Some(error.to_string())),
    };
    if matches!(failure, HeadFailure::Timeout | HeadFailure::Bad(_)) {
        let response = refusal(reason, None, detail.as_deref());
        answer_and_close(shared, &mut client, &response).await;
    }
    if let HeadFailure::Bad(error) = &failure {
        tracing::debug!(error = %error, "malformed proxy request");
    }
    attempt.finish(shared, Verdict::deny(reason));
}

/// Writes `response`, shuts the write side, and drains what the client
/// still sends for a moment so it reads the answer instead of a reset.
async fn answer_and_close<C: Client>(shared: &Shared, client: &mut C, response: &[u8]) {
    let linger = shared.config.linger;
    let _ = tokio::time::timeout(linger, async {
        if client.write_all(response).await.is_err() {
            return;
        }
        let _ = client.shutdown().await;
        let mut sink = [0u8; 1024];
        let mut drained = 0usize;
        while drained < 64 * 1024 {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Phases 4-7 for an allowed CONNECT.
#[allow(clippy::too_many_arguments)]
async fn tunnel<C: Client>(
    shared: &Shared,
    mut client: C,
    mut attempt: Attempt,
    snapshot: &Snapshot,
    host: Host,
    port: u16,
    allow_reason: Reason,
    leftover: Vec<u8>,
    slot: Slot,
) {
    let limits = snapshot.policy().limits;
    if client.write_all(CONNECT_ESTABLISHED).await.is_err() {
        attempt.finish(shared, Verdict::deny(Reason::ClientClosed));
        return;
    }

    // Phase 4: the ClientHello.
    let max_hello = usize::try_from(limits.max_client_hello_bytes).unwrap_or(usize::MAX);
    let hello_deadline = Instant::now() + limits.client_hello_timeout;
    let (hello, raw) =
        match read_client_hello(&mut client, leftover, max_hello, hello_deadline).await {
            Ok(done) => done,
            Err(reason) => {
                attempt.finish(shared, Verdict::deny(reason));
                return;
            }
        };
    attempt.event.sni = hello.server_names.clone();
    attempt.event.ech = hello.ech;

    // Phase 5: the ClientHello against the CONNECT host.
    let verdict = decide_client_hello(&host, &hello, &snapshot.policy().fronting, allow_reason);
    if !verdict.is_allow() {
        attempt.finish(shared, verdict);
        return;
    }

    // Phase 6: resolve, check, dial.
    let upstream = match resolve_and_dial(shared, &mut attempt, snapshot, &host, port).await {
        Ok(upstream) => upstream,
        Err(reason) => {
            attempt.finish(shared, Verdict::deny(reason));
            return;
        }
    };

    // Phase 7: the buffered ClientHello, then the relay.
    run_relay(
        shared, client, upstream, attempt, snapshot, &raw, verdict, slot,
    )
    .await;
}

async fn read_client_hello<C: Client>(
    client: &mut C,
    leftover: Vec<u8>,
    max_bytes: usize,
    deadline: Instant,
) -> Result<(crate::client_hello::ClientHelloInfo, Vec<u8>), Reason> {
    let mut reader = ClientHelloReader::new(max_bytes);
    let mut pending = leftover;
    let mut chunk = [0u8; 4096];
    loop {
        if !pending.is_empty() {
            match reader.push(&pending) {
                Ok(HelloProgress::Complete(info)) => return Ok((info, reader.into_raw())),
                Ok(HelloProgress::NeedMore) => {}
                Err(error) => return Err(hello_reason(&error)),
            }
        }
        let read = tokio::time::timeout_at(deadline, client.read(&mut chunk)).await;
        let n = match read {
            Err(_) => return Err(Reason::ClientHelloTimeout),
            Ok(Err(_)) => return Err(Reason::ClientError),
            Ok(Ok(0)) => return Err(Reason::ClientClosed),
            Ok(Ok(n)) => n,
        };
        pending = chunk[..n].to_vec();
    }
}

fn hello_reason(error: &HelloError) -> Reason {
    tracing::debug!(error = %error, "ClientHello refused");
    error.reason()
}

/// Resolves `host` once, keeps the addresses that may be dialled, dials
/// them in order within the connect timeout.
async fn resolve_and_dial(
    shared: &Shared,
    attempt: &mut Attempt,
    snapshot: &Snapshot,
    host: &Host,
    port: u16,
) -> Result<TcpStream, Reason> {
    let limits = snapshot.policy().limits;
    let resolved = match shared.resolver.resolve(host, port).await {
        Ok(resolved) => resolved,
        Err(error) => {
            tracing::debug!(error = %error, "resolve failed");
            return Err(Reason::ResolveFailed);
        }
    };
    attempt.event.upstream_source = Some(resolved.source);
    let addrs = match select_addresses(
        &resolved,
        &snapshot.policy().fronting,
        &shared.local_addrs(),
    ) {
        Ok(addrs) => addrs,
        Err(refused) => {
            attempt.event.address_class = Some(refused.class);
            attempt.event.upstream = Some(SocketAddr::new(refused.addr, port));
            return Err(Reason::ForbiddenAddress);
        }
    };
    let deadline = Instant::now() + limits.connect_timeout;
    let mut last = Reason::ConnectFailed;
    for addr in addrs {
        let target = SocketAddr::new(addr, port);
        attempt.event.upstream = Some(target);
        match tokio::time::timeout_at(deadline, TcpStream::connect(target)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(error)) => {
                tracing::debug!(error = %error, upstream = %target, "upstream connect failed");
                last = Reason::ConnectFailed;
            }
            Err(_) => return Err(Reason::ConnectTimeout),
        }
    }
    Err(last)
}

#[allow(clippy::too_many_arguments)]
async fn run_relay<C: Client>(
    shared: &Shared,
    client: C,
    mut upstream: TcpStream,
    mut attempt: Attempt,
    snapshot: &Snapshot,
    first_bytes: &[u8],
    verdict: Verdict,
    slot: Slot,
) {
    let limits = snapshot.policy().limits;
    if !first_bytes.is_empty() && upstream.write_all(first_bytes).await.is_err() {
        attempt.finish(shared, Verdict::deny(Reason::ConnectFailed));
        return;
    }
    attempt.mark_handshake();
    tracing::debug!(
        decision = verdict.decision.as_str(),
        reason = verdict.reason.as_str(),
        host = attempt.event.host.as_deref().unwrap_or(""),
        upstream = %upstream.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
        "tunnel open"
    );
    let relay_limits = RelayLimits {
        idle_timeout: limits.idle_timeout,
        deadline: attempt.start + limits.total_timeout,
        pipe_size: shared.config.pipe_size,
    };
    let outcome = relay(&client, &upstream, relay_limits).await;
    drop(slot);
    attempt.event.bytes_up = outcome.bytes_up + first_bytes.len() as u64;
    attempt.event.bytes_down = outcome.bytes_down;
    attempt.event.end = Some(outcome.end);
    attempt.finish(shared, verdict);
}

/// An allowed plain-HTTP request: resolve and dial as for a tunnel (a
/// failure is answered with a status), send the rewritten head and any
/// body bytes already read, then relay.
#[allow(clippy::too_many_arguments)]
async fn plain_http<C: Client>(
    shared: &Shared,
    mut client: C,
    mut attempt: Attempt,
    snapshot: &Snapshot,
    request: &Request,
    host: Host,
    port: u16,
    leftover: Vec<u8>,
    slot: Slot,
) {
    let authority = request.target.authority().clone();
    let Some(mut head) = origin_head(request) else {
        attempt.finish(shared, Verdict::deny(Reason::MalformedRequest));
        return;
    };
    let upstream = match resolve_and_dial(shared, &mut attempt, snapshot, &host, port).await {
        Ok(upstream) => upstream,
        Err(reason) => {
            let detail = attempt
                .event
                .address_class
                .map(|class: AddressClass| format!("refused address class: {class}"));
            let response = refusal(reason, Some(&authority), detail.as_deref());
            answer_and_close(shared, &mut client, &response).await;
            attempt.finish(shared, Verdict::deny(reason));
            return;
        }
    };
    head.extend_from_slice(&leftover);
    run_relay(
        shared,
        client,
        upstream,
        attempt,
        snapshot,
        &head,
        Verdict::allow(Reason::PlainHttpAllowed),
        slot,
    )
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The cgroup v2 mount point from /proc/self/mountinfo.
    fn cgroup2_mount() -> Option<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        info.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next() != Some("cgroup2") {
                return None;
            }
            left.split_whitespace().nth(4).map(PathBuf::from)
        })
    }

    #[test]
    fn proc_pid_cgroup_finds_this_process_cgroup_id() {
        let Some(mount) = cgroup2_mount() else {
            panic!("no cgroup2 mount in /proc/self/mountinfo");
        };
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let want = std::fs::metadata(mount.join(path.trim_start_matches('/')))
            .unwrap()
            .ino();
        let lookup = ProcPidCgroup::new(&mount);
        let me = Peer::Unix {
            pid: Some(i32::try_from(std::process::id()).unwrap()),
            uid: None,
        };
        assert_eq!(lookup.cgroup_id(&me, None), Some(want));
        let tcp = Peer::Tcp {
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        assert_eq!(lookup.cgroup_id(&tcp, None), None);
        let gone = Peer::Unix {
            pid: Some(i32::MAX),
            uid: None,
        };
        assert_eq!(lookup.cgroup_id(&gone, None), None);
    }
}

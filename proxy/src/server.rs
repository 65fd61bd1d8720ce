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
//! 6. resolve once, keep the addresses that pass the class check, dial
//!    exactly those ([`crate::net::dial`]);
//! 7. forward the buffered ClientHello, then [`relay`] both ways.
//!
//! The phases are functions over one per-connection context (`Conn`) that
//! return `Result<_, Refusal>`; one function (`refuse`) turns a refusal
//! into the answer and the audit verdict. Every connection ends in exactly
//! one [`AuditEvent`] handed to the [`AuditSink`] (which logs and stores
//! it), whichever phase ended it, and also when its task is aborted (the
//! context emits on drop). A connection uses the policy snapshot current
//! when it was accepted, to its end.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use policy::{Host, Limits, Snapshot};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::admission::{Admission, Slot};
use crate::attribution::{ClientGate, ClientIdentity};
use crate::audit::{AuditEvent, AuditSink, Peer, RequestKind};
use crate::client_hello::{ClientHelloReader, HelloError, HelloProgress};
use crate::decide::{
    RequestDecision, TransparentDecision, decide_client_hello, decide_request, decide_transparent,
};
use crate::forward::origin_head;
use crate::net::addr_class::{LocalAddrs, LocalAddrsCache};
use crate::net::dial::{AddressCheck, DialError, dial};
use crate::net::resolve::Resolver;
use crate::reason::{Reason, Verdict};
use crate::relay::{RelayLimits, SpliceStream, TunnelEnd, relay};
use crate::request::{
    Authority, HeadScanner, Request, RequestError, RequestLimits, Target, parse_head,
    parse_redirected_head,
};
use crate::response::{CONNECT_ESTABLISHED, refusal as refusal_response};
use crate::transparent::OriginalDestinations;

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

/// The policy snapshots the proxy follows (hot reload swaps the value).
pub type PolicyWatch = watch::Receiver<Arc<Snapshot>>;

/// The CONNECT proxy. Cheap to clone; clones share limits and state.
#[derive(Clone)]
pub struct ConnectProxy {
    shared: Arc<ProxyState>,
}

/// What every connection of one proxy shares: settings, policy, resolver,
/// audit sink, limits and the interface-address cache.
struct ProxyState {
    config: ProxyConfig,
    policy: PolicyWatch,
    resolver: Resolver,
    audit: Arc<dyn AuditSink>,
    gate: Option<ClientGate>,
    tunnels: Arc<Admission>,
    rejecting: Arc<Admission>,
    local_addrs: LocalAddrsCache,
    /// Set once by [`ConnectProxy::abort_all`]; every connection task watches it.
    aborted: watch::Sender<bool>,
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
        let local_addrs = LocalAddrsCache::new(config.local_addrs_ttl);
        Self {
            shared: Arc::new(ProxyState {
                config,
                policy,
                resolver,
                audit,
                gate: None,
                tunnels: Admission::new(),
                rejecting: Admission::new(),
                local_addrs,
                aborted: watch::Sender::new(false),
            }),
        }
    }

    /// Attributes every client on accept and refuses those the gate
    /// refuses (clients outside the enforced cgroups) with `403
    /// client_not_enforced`, before reading a byte. Without a gate every
    /// client is served. Call before serving.
    pub fn with_client_gate(self, gate: ClientGate) -> Self {
        let shared = match Arc::try_unwrap(self.shared) {
            Ok(mut shared) => {
                shared.gate = Some(gate);
                shared
            }
            Err(shared) => ProxyState {
                config: shared.config.clone(),
                policy: shared.policy.clone(),
                resolver: shared.resolver.clone(),
                audit: shared.audit.clone(),
                gate: Some(gate),
                tunnels: shared.tunnels.clone(),
                rejecting: shared.rejecting.clone(),
                local_addrs: LocalAddrsCache::new(shared.config.local_addrs_ttl),
                aborted: shared.aborted.clone(),
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

    /// Ends every connection still open (after the drain deadline): each
    /// connection's task is dropped, and its audit event leaves from the
    /// context's drop ([`TunnelEnd::Aborted`] for open tunnels).
    pub fn abort_all(&self) {
        self.shared.aborted.send_replace(true);
    }

    /// Runs one connection on its own task, ended early by [`ConnectProxy::abort_all`].
    fn spawn(&self, connection: impl Future<Output = ()> + Send + 'static) {
        let mut aborted = self.shared.aborted.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                () = connection => {}
                _ = aborted.wait_for(|aborted| *aborted) => {}
            }
        });
    }

    /// Accepts TCP clients until `shutdown` resolves. Connections already
    /// accepted carry on; see [`ConnectProxy::wait_idle`].
    pub async fn serve_tcp(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        self.accept_tcp(listener, shutdown, |shared, stream, addr, local| {
            handle(shared, stream, Peer::Tcp { addr }, local)
        })
        .await;
    }

    /// Accepts connections the kernel redirected (egress mode `redirect`)
    /// until `shutdown` resolves, and takes each through
    /// `handle_transparent`. `originals` says where each client asked to go.
    pub async fn serve_transparent(
        &self,
        listener: TcpListener,
        originals: Arc<dyn OriginalDestinations>,
        shutdown: impl Future<Output = ()>,
    ) {
        self.accept_tcp(listener, shutdown, |shared, stream, addr, local| {
            let original = originals.original(addr);
            handle_transparent(shared, stream, addr, local, original)
        })
        .await;
    }

    /// The TCP accept loop: each accepted stream (Nagle off) goes to
    /// `connection` on its own task.
    async fn accept_tcp<F>(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        connection: impl Fn(Arc<ProxyState>, TcpStream, SocketAddr, Option<SocketAddr>) -> F,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => {
                        let local = stream.local_addr().ok();
                        // Small writes must not wait for Nagle / delayed ACK.
                        let _ = stream.set_nodelay(true);
                        self.spawn(connection(self.shared.clone(), stream, addr, local));
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
                        self.spawn(handle(self.shared.clone(), stream, peer, None));
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

impl ProxyState {
    /// This host's interface addresses, refreshed at most every `local_addrs_ttl`.
    fn local_addrs(&self) -> Arc<LocalAddrs> {
        self.local_addrs.get()
    }

    /// The request-head bounds: the proxy's own and the policy's.
    fn request_limits(&self, limits: Limits) -> RequestLimits {
        RequestLimits {
            max_line_bytes: self.config.max_line_bytes,
            max_head_bytes: usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX),
            max_headers: self.config.max_headers,
        }
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

/// One connection's context, carried through every phase (pingora's
/// `CTX`): the client, the policy snapshot it was accepted under, and the
/// facts its audit event will carry. Exactly one event leaves it: from
/// [`Conn::finish`], or from `Drop` if the task dies first (an aborted
/// task is audited with what was known, as [`TunnelEnd::Aborted`] once the
/// tunnel was open).
struct Conn<C: Client> {
    client: C,
    snapshot: Arc<Snapshot>,
    start: Instant,
    /// The requested `host:port`, once the request head parsed (for answers).
    target: Option<Authority>,
    event: AuditEvent,
    audit: Arc<dyn AuditSink>,
    emitted: bool,
    /// The gate's decision on this client, made at accept.
    admitted: Result<(), Reason>,
}

/// Why a phase ended the connection early; [`refuse`] turns it into the
/// answer (if any) and the audit verdict, in one place.
enum Refusal {
    /// Before `200`: answer with the reason's status and a short body, then close.
    Answer {
        /// Why.
        reason: Reason,
        /// One more line for the body (a parse error, a refused address class).
        detail: Option<String>,
    },
    /// Close without an answer (after `200`, or the client is gone).
    Close(Reason),
    /// Over the tunnel limit: `503`, bounded by `max_rejecting`.
    Overloaded,
}

impl<C: Client> Conn<C> {
    fn accept(state: &ProxyState, client: C, peer: Peer, local: Option<SocketAddr>) -> Self {
        let snapshot = state.policy.borrow().clone();
        let admitted = crate::attribution::check(state.gate.as_ref(), &peer, local);
        let event = AuditEvent::accepted(
            SystemTime::now(),
            peer,
            admitted.identity,
            Some(snapshot.policy().version.to_string()),
        );
        Self {
            client,
            snapshot,
            start: Instant::now(),
            target: None,
            event,
            audit: state.audit.clone(),
            emitted: false,
            admitted: admitted.verdict,
        }
    }

    fn limits(&self) -> Limits {
        self.snapshot.policy().limits
    }

    /// Notes the parsed request in the event.
    fn note_request(&mut self, request: &Request) {
        let authority = request.target.authority().clone();
        self.event.host = Some(authority.host_for_display());
        self.event.port = Some(authority.port);
        self.event.kind = match request.target {
            Target::Connect(_) => RequestKind::Connect,
            Target::AbsoluteHttp { .. } => RequestKind::PlainHttp,
        };
        self.target = Some(authority);
    }

    /// Notes a failed dial's facts (refused class, address tried, source).
    fn note_dial_error(&mut self, error: &DialError) {
        self.event.upstream_source = error.source().or(self.event.upstream_source);
        self.event.address_class = error.refused_class();
        self.event.upstream = error.upstream().or(self.event.upstream);
    }

    fn mark_handshake(&mut self) {
        self.event.handshake = self.start.elapsed();
    }

    /// Emits the one audit event with `verdict`.
    fn finish(mut self, verdict: Verdict) {
        self.event.verdict = verdict;
        self.emit();
    }

    fn emit(&mut self) {
        if self.emitted {
            return;
        }
        self.emitted = true;
        if self.event.handshake.is_zero() {
            self.event.handshake = self.start.elapsed();
        }
        self.event.total = self.start.elapsed();
        let event = std::mem::replace(&mut self.event, placeholder_event());
        self.audit.record(event);
    }
}

impl<C: Client> Drop for Conn<C> {
    fn drop(&mut self) {
        if !self.emitted && self.event.verdict.is_allow() && self.event.end.is_none() {
            self.event.end = Some(TunnelEnd::Aborted);
        }
        self.emit();
    }
}

/// What is left in a [`Conn`] after its event went out.
fn placeholder_event() -> AuditEvent {
    AuditEvent::accepted(
        SystemTime::UNIX_EPOCH,
        Peer::Unix {
            pid: None,
            uid: None,
        },
        ClientIdentity::default(),
        None,
    )
}

/// One connection, top to bottom: admission → request head → allowlist →
/// (tunnel: ClientHello → SNI → dial → relay | plain HTTP: dial → relay);
/// every early end goes through [`refuse`], and the event always leaves.
async fn handle<C: Client>(
    state: Arc<ProxyState>,
    client: C,
    peer: Peer,
    local: Option<SocketAddr>,
) {
    let mut conn = Conn::accept(&state, client, peer, local);
    match serve(&state, &mut conn).await {
        Ok(verdict) => conn.finish(verdict),
        Err(refusal) => refuse(&state, conn, refusal).await,
    }
}

async fn serve<C: Client>(state: &ProxyState, conn: &mut Conn<C>) -> Result<Verdict, Refusal> {
    // Phase 1: admission, and the client itself: one outside the enforced
    // cgroups is refused before a byte of its request is read.
    let slot = admit(state, conn)?;
    if let Err(reason) = conn.admitted {
        return Err(Refusal::Answer {
            reason,
            detail: Some(format!("client: {}", conn.event.client)),
        });
    }
    // Phase 2: the request head.
    let (request, leftover) = read_request(state, conn).await?;
    conn.note_request(&request);
    // Phase 3: the request against the allowlist.
    match decide_request(&request.target, &conn.snapshot, SystemTime::now()) {
        RequestDecision::Deny(reason) => Err(Refusal::Answer {
            reason,
            detail: None,
        }),
        RequestDecision::Tunnel { host, port, reason } => {
            let upstream = open_tunnel(state, conn, &host, port, reason, leftover).await?;
            relay_tunnel(state, conn, upstream, slot).await
        }
        RequestDecision::PlainHttp { host, port } => {
            let upstream = open_plain_http(state, conn, &request, &host, port, leftover).await?;
            relay_tunnel(state, conn, upstream, slot).await
        }
    }
}

/// Phase 1: a tunnel slot, else [`Refusal::Overloaded`].
fn admit<C: Client>(state: &ProxyState, conn: &Conn<C>) -> Result<Slot, Refusal> {
    let max_tunnels = usize::try_from(conn.limits().max_concurrent_tunnels).unwrap_or(usize::MAX);
    state
        .tunnels
        .try_admit(max_tunnels)
        .ok_or(Refusal::Overloaded)
}

/// Phase 2: the request head, bounded in bytes and by the header-read timeout.
async fn read_request<C: Client>(
    state: &ProxyState,
    conn: &mut Conn<C>,
) -> Result<(Request, Vec<u8>), Refusal> {
    let deadline = conn.start + conn.limits().header_read_timeout;
    let limits = state.request_limits(conn.limits());
    read_head(&mut conn.client, limits, deadline)
        .await
        .map_err(HeadFailure::into_refusal)
}

/// An upstream connection and the bytes to send it before relaying.
struct Upstream {
    stream: TcpStream,
    first_bytes: Vec<u8>,
    verdict: Verdict,
}

/// Phases 4–6 for an allowed CONNECT: `200`, the ClientHello, its SNI
/// against the CONNECT host, then the dial.
async fn open_tunnel<C: Client>(
    state: &ProxyState,
    conn: &mut Conn<C>,
    host: &Host,
    port: u16,
    allow_reason: Reason,
    leftover: Vec<u8>,
) -> Result<Upstream, Refusal> {
    if conn.client.write_all(CONNECT_ESTABLISHED).await.is_err() {
        return Err(Refusal::Close(Reason::ClientClosed));
    }
    // Phase 4: the ClientHello.
    let limits = conn.limits();
    let max_hello = usize::try_from(limits.max_client_hello_bytes).unwrap_or(usize::MAX);
    let deadline = Instant::now() + limits.client_hello_timeout;
    let (hello, raw) = read_client_hello(&mut conn.client, leftover, max_hello, deadline)
        .await
        .map_err(Refusal::Close)?;
    conn.event.sni = hello.server_names.clone();
    conn.event.ech = hello.ech;
    // Phase 5: the ClientHello against the CONNECT host.
    let fronting = &conn.snapshot.policy().fronting;
    let verdict = decide_client_hello(host, &hello, fronting, allow_reason);
    if !verdict.is_allow() {
        return Err(Refusal::Close(verdict.reason));
    }
    // Phase 6: resolve, check, dial.
    let stream = dial_upstream(state, conn, host, port)
        .await
        .map_err(|error| Refusal::Close(error.reason()))?;
    Ok(Upstream {
        stream,
        first_bytes: raw,
        verdict,
    })
}

/// An allowed plain-HTTP request: the rewritten head, then the dial (a
/// failure is answered with a status).
async fn open_plain_http<C: Client>(
    state: &ProxyState,
    conn: &mut Conn<C>,
    request: &Request,
    host: &Host,
    port: u16,
    leftover: Vec<u8>,
) -> Result<Upstream, Refusal> {
    let Some(mut head) = origin_head(request) else {
        return Err(Refusal::Close(Reason::MalformedRequest));
    };
    let stream = dial_upstream(state, conn, host, port)
        .await
        .map_err(|error| Refusal::Answer {
            reason: error.reason(),
            detail: error
                .refused_class()
                .map(|class| format!("refused address class: {class}")),
        })?;
    head.extend_from_slice(&leftover);
    Ok(Upstream {
        stream,
        first_bytes: head,
        verdict: Verdict::allow(Reason::PlainHttpAllowed),
    })
}

/// Resolves `host` once and dials only addresses that pass the class check.
async fn dial_upstream<C: Client>(
    state: &ProxyState,
    conn: &mut Conn<C>,
    host: &Host,
    port: u16,
) -> Result<TcpStream, DialError> {
    let local = state.local_addrs();
    let check = AddressCheck::Classes {
        fronting: &conn.snapshot.policy().fronting,
        local: &local,
    };
    let connect_timeout = conn.limits().connect_timeout;
    match dial(&state.resolver, host, port, check, connect_timeout).await {
        Ok(dialed) => {
            conn.event.upstream_source = Some(dialed.source);
            conn.event.upstream = Some(dialed.peer);
            Ok(dialed.stream)
        }
        Err(error) => {
            tracing::debug!(error = %error, "upstream dial failed");
            conn.note_dial_error(&error);
            Err(error)
        }
    }
}

/// Phase 7: the buffered first bytes, then both ways until either side
/// closes or a limit ends it.
async fn relay_tunnel<C: Client>(
    state: &ProxyState,
    conn: &mut Conn<C>,
    mut upstream: Upstream,
    slot: Slot,
) -> Result<Verdict, Refusal> {
    let first_bytes = std::mem::take(&mut upstream.first_bytes);
    if !first_bytes.is_empty() && upstream.stream.write_all(&first_bytes).await.is_err() {
        return Err(Refusal::Close(Reason::ConnectFailed));
    }
    conn.mark_handshake();
    // From here the tunnel is open: an aborted task is audited as such.
    conn.event.verdict = upstream.verdict;
    tracing::debug!(
        decision = upstream.verdict.decision.as_str(),
        reason = upstream.verdict.reason.as_str(),
        host = conn.event.host.as_deref().unwrap_or(""),
        upstream = %conn.event.upstream.map(|a| a.to_string()).unwrap_or_default(),
        "tunnel open"
    );
    let limits = conn.limits();
    let relay_limits = RelayLimits {
        idle_timeout: limits.idle_timeout,
        deadline: conn.start + limits.total_timeout,
        pipe_size: state.config.pipe_size,
    };
    let outcome = relay(&conn.client, &upstream.stream, relay_limits).await;
    drop(slot);
    conn.event.bytes_up = outcome.bytes_up + first_bytes.len() as u64;
    conn.event.bytes_down = outcome.bytes_down;
    conn.event.end = Some(outcome.end);
    Ok(upstream.verdict)
}

// === the transparent listener ===

/// One redirected connection: the same phases as a CONNECT tunnel, with the
/// original destination's port for the CONNECT port and the SNI for its
/// host (DESIGN.md §4): admission and the client gate → original
/// destination → ClientHello → [`decide_transparent`] → resolve, check and
/// dial the name (never the original address) → relay; or, when the first
/// byte is not TLS, [`redirected_plain_http`]. Every refusal closes (the
/// client did not speak to a proxy); the audit event carries the original
/// destination and the SNI.
async fn handle_transparent(
    state: Arc<ProxyState>,
    client: TcpStream,
    addr: SocketAddr,
    local: Option<SocketAddr>,
    original: Option<SocketAddr>,
) {
    let mut conn = Conn::accept(&state, client, Peer::Tcp { addr }, local);
    conn.event.kind = RequestKind::Transparent;
    conn.event.original_destination = original;
    conn.event.port = original.map(|original| original.port());
    match serve_redirected(&state, &mut conn, original).await {
        Ok(verdict) => conn.finish(verdict),
        Err(refusal) => refuse(&state, conn, refusal.closing()).await,
    }
}

async fn serve_redirected(
    state: &ProxyState,
    conn: &mut Conn<TcpStream>,
    original: Option<SocketAddr>,
) -> Result<Verdict, Refusal> {
    // Phase 1: admission and the client gate, as for CONNECT.
    let slot = admit(state, conn)?;
    conn.admitted.map_err(Refusal::Close)?;
    // Phase 2: the original destination; without one nothing is known to judge.
    let original = original.ok_or(Refusal::Close(Reason::NotRedirected))?;
    // Phase 3: the first bytes: a TLS handshake record, else plain HTTP.
    let limits = conn.limits();
    let deadline = Instant::now() + limits.client_hello_timeout;
    let first = read_first(&mut conn.client, deadline).await?;
    if first.first() != Some(&TLS_HANDSHAKE) {
        return redirected_plain_http(state, conn, original.port(), first, slot).await;
    }
    // The ClientHello, bounded in bytes and time.
    let max_hello = usize::try_from(limits.max_client_hello_bytes).unwrap_or(usize::MAX);
    let (hello, raw) = read_client_hello(&mut conn.client, first, max_hello, deadline)
        .await
        .map_err(Refusal::Close)?;
    conn.event.sni = hello.server_names.clone();
    conn.event.ech = hello.ech;
    conn.event.host = hello.server_names.first().cloned();
    // Phase 4: the SNI on the original port against the allowlist and `fronting`.
    let (host, port, verdict) =
        match decide_transparent(original.port(), &hello, &conn.snapshot, SystemTime::now()) {
            TransparentDecision::Deny(reason) => return Err(Refusal::Close(reason)),
            TransparentDecision::Tunnel {
                host,
                port,
                verdict,
            } => (host, port, verdict),
        };
    // Phase 5: resolve the name, check, dial; then relay.
    let stream = dial_upstream(state, conn, &host, port)
        .await
        .map_err(|error| Refusal::Close(error.reason()))?;
    let upstream = Upstream {
        stream,
        first_bytes: raw,
        verdict,
    };
    relay_tunnel(state, conn, upstream, slot).await
}

/// The TLS record type of a handshake (a ClientHello's first byte).
const TLS_HANDSHAKE: u8 = 0x16;

/// The first bytes a redirected client sends, by `deadline`.
async fn read_first(client: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, Refusal> {
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout_at(deadline, client.read(&mut chunk)).await {
        Err(_) => Err(Refusal::Close(Reason::ClientHelloTimeout)),
        Ok(Err(_)) => Err(Refusal::Close(Reason::ClientError)),
        Ok(Ok(0)) => Err(Refusal::Close(Reason::ClientClosed)),
        Ok(Ok(n)) => Ok(chunk[..n].to_vec()),
    }
}

/// A redirected connection that does not start with TLS: one plain-HTTP
/// request, its host the `Host` header and its port the original
/// destination's ([`parse_redirected_head`]), then exactly the CONNECT
/// path's plain-HTTP phases: [`decide_request`] (only `allowPlainHTTP`
/// entries pass), [`open_plain_http`], relay.
async fn redirected_plain_http(
    state: &ProxyState,
    conn: &mut Conn<TcpStream>,
    original_port: u16,
    first: Vec<u8>,
    slot: Slot,
) -> Result<Verdict, Refusal> {
    let deadline = conn.start + conn.limits().header_read_timeout;
    let limits = state.request_limits(conn.limits());
    let parse = |head: &[u8]| parse_redirected_head(head, original_port);
    let (request, leftover) = read_head_with(&mut conn.client, first, limits, deadline, parse)
        .await
        .map_err(HeadFailure::into_refusal)?;
    conn.note_request(&request);
    conn.event.kind = RequestKind::Transparent;
    match decide_request(&request.target, &conn.snapshot, SystemTime::now()) {
        RequestDecision::PlainHttp { host, port } => {
            let upstream = open_plain_http(state, conn, &request, &host, port, leftover).await?;
            relay_tunnel(state, conn, upstream, slot).await
        }
        RequestDecision::Deny(reason) => Err(Refusal::Close(reason)),
        // An absolute-form target is never a tunnel; refuse rather than guess.
        RequestDecision::Tunnel { .. } => Err(Refusal::Close(Reason::InvalidHost)),
    }
}

impl Refusal {
    /// The same refusal for a client that speaks no HTTP: closed, never answered.
    fn closing(self) -> Self {
        match self {
            Self::Answer { reason, .. } | Self::Close(reason) => Self::Close(reason),
            Self::Overloaded => Self::Close(Reason::Overloaded),
        }
    }
}

/// The one place an early end becomes an answer and an audit verdict.
async fn refuse<C: Client>(state: &ProxyState, mut conn: Conn<C>, refusal: Refusal) {
    let reason = match refusal {
        Refusal::Answer { reason, detail } => {
            let response = refusal_response(reason, conn.target.as_ref(), detail.as_deref());
            answer_and_close(state, &mut conn.client, &response).await;
            reason
        }
        Refusal::Close(reason) => reason,
        Refusal::Overloaded => {
            answer_overloaded(state, &mut conn).await;
            Reason::Overloaded
        }
    };
    conn.finish(Verdict::deny(reason));
}

/// Over the tunnel limit: read the head (so the client reads our answer
/// rather than a reset), answer `503`, close. Bounded by `max_rejecting`:
/// past it, one non-blocking write attempt and close, so an overload never
/// grows memory.
async fn answer_overloaded<C: Client>(state: &ProxyState, conn: &mut Conn<C>) {
    let Some(_rejecting) = state.rejecting.try_admit(state.config.max_rejecting) else {
        let _ = conn
            .client
            .try_write_once(&refusal_response(Reason::Overloaded, None, None));
        return;
    };
    let deadline = conn.start + conn.limits().header_read_timeout;
    let limits = state.request_limits(conn.limits());
    if let Ok((request, _)) = read_head(&mut conn.client, limits, deadline).await {
        conn.note_request(&request);
    }
    let response = refusal_response(Reason::Overloaded, conn.target.as_ref(), None);
    answer_and_close(state, &mut conn.client, &response).await;
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

impl HeadFailure {
    /// A timeout or a bad head is answered; a client that is gone is not.
    fn into_refusal(self) -> Refusal {
        match self {
            Self::Closed => Refusal::Close(Reason::ClientClosed),
            Self::Io => Refusal::Close(Reason::ClientError),
            Self::Timeout => Refusal::Answer {
                reason: Reason::RequestTimeout,
                detail: None,
            },
            Self::Bad(error) => {
                tracing::debug!(error = %error, "malformed proxy request");
                Refusal::Answer {
                    reason: error.reason(),
                    detail: Some(error.to_string()),
                }
            }
        }
    }
}

async fn read_head<C: Client>(
    client: &mut C,
    limits: RequestLimits,
    deadline: Instant,
) -> Result<(Request, Vec<u8>), HeadFailure> {
    read_head_with(client, Vec::new(), limits, deadline, parse_head).await
}

/// [`read_head`] starting from bytes already read, with `parse` for the
/// complete head (the transparent listener's plain HTTP is origin-form).
async fn read_head_with<C: Client>(
    client: &mut C,
    initial: Vec<u8>,
    limits: RequestLimits,
    deadline: Instant,
    parse: impl Fn(&[u8]) -> Result<Request, RequestError>,
) -> Result<(Request, Vec<u8>), HeadFailure> {
    let mut buf = initial;
    let mut scanner = HeadScanner::new(limits);
    let mut chunk = [0u8; 2048];
    loop {
        if !buf.is_empty() {
            match scanner.scan(&buf) {
                Err(error) => return Err(HeadFailure::Bad(error)),
                Ok(None) => {}
                Ok(Some(len)) => {
                    let request = parse(&buf[..len]).map_err(HeadFailure::Bad)?;
                    let leftover = buf.split_off(len);
                    return Ok((request, leftover));
                }
            }
        }
        let read = tokio::time::timeout_at(deadline, client.read(&mut chunk)).await;
        let n = match read {
            Err(_) => return Err(HeadFailure::Timeout),
            Ok(Err(_)) => return Err(HeadFailure::Io),
            Ok(Ok(0)) => return Err(HeadFailure::Closed),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes `response`, shuts the write side, and drains what the client
/// still sends for a moment so it reads the answer instead of a reset.
async fn answer_and_close<C: Client>(state: &ProxyState, client: &mut C, response: &[u8]) {
    let linger = state.config.linger;
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

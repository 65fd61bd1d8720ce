//! The DNS filter server: [`DnsFilter`] serves UDP datagrams and TCP
//! connections (2-byte length framing, several queries per connection)
//! and takes each query through fixed phases, I/O here and judgement in
//! [`super::decide`](mod@super::decide):
//!
//! 1. a slot among [`DnsLimits::max_in_flight`] queries, else the datagram
//!    is dropped (UDP) or the connection closed (TCP), counted;
//! 2. [`wire::parse_query`]: not one standard query → FORMERR/NOTIMP or drop;
//! 3. the client gate (once per datagram, once per TCP connection): a
//!    client outside the enforced cgroups is REFUSED (`client_not_enforced`);
//! 4. [`decide`] under the current policy snapshot: refuse, empty, or resolve;
//! 5. resolve (pins, then the resolver's upstream) within
//!    [`DnsLimits::query_timeout`], keep what [`select_answers`] allows, tell
//!    [`LearnedAnswers`] (and wait for it), answer; resolver failure → SERVFAIL.
//!
//! Every refusal is one [`AuditEvent`] (kind [`RequestKind::Dns`]) unless
//! the refusal-event token bucket is empty; then it is only counted.
//! Answers are counted, never audited one by one.
//!
//! The serve loops end when their `shutdown` future resolves or when they
//! are dropped, like [`crate::server::ConnectProxy`]'s; queries and TCP
//! connections already running finish on their own tasks (bounded by the
//! query timeout and the TCP idle timeout).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use policy::{Host, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::attribution::{self, Admitted, ClientGate};
use crate::audit::{AuditEvent, AuditSink, Peer, RequestKind};
use crate::net::addr_class::LocalAddrsCache;
use crate::net::resolve::{Family, ResolveError, Resolver};
use crate::reason::{Reason, Verdict};
use crate::server::PolicyWatch;

use super::decide::{DnsDecision, decide, select_answers, ttl_seconds};
use super::limit::TokenBucket;
use super::stats::{Counter, DnsStats, DnsStatsSnapshot};
use super::wire::{self, Query, Reply, TCP_LIMIT};

/// The receive buffer for one UDP datagram: larger datagrams are cut and
/// then fail to parse (no DNS query is anywhere near this).
const UDP_RECEIVE_BUFFER: usize = 4096;

/// Answers queued per TCP connection before its queries wait.
const TCP_ANSWER_QUEUE: usize = 16;

/// How long interface addresses (for the "this host" address class) are reused.
const LOCAL_ADDRS_TTL: Duration = Duration::from_secs(10);

/// Told about every successful A/AAAA answer (implemented by the daemon,
/// which opens kernel entries for `egress.direct` entries written as names,
/// expiring at the smaller of the answer's TTL and the entry's).
pub trait LearnedAnswers: Send + Sync {
    /// `name` was answered with `addrs`, each with the TTL it was answered
    /// with (already capped at [`super::MAX_ANSWER_TTL`]). The answer is
    /// sent once the returned future resolves: the daemon waits there
    /// until the kernel allows those addresses, so the connect the client
    /// makes right after its answer is not denied. Keep the wait bounded.
    fn answered(&self, name: &Host, addrs: &[(IpAddr, Duration)]) -> LearnedWait;
}

/// What [`LearnedAnswers::answered`] hands back: the answer waits for it.
pub type LearnedWait = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The filter's own bounds. [`Default`] holds the defaults, in one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsLimits {
    /// Queries being answered at once (UDP and TCP together); over it a
    /// datagram is dropped and a TCP connection closed.
    pub max_in_flight: usize,
    /// Open TCP connections; over it a new connection is closed at once.
    pub max_tcp_connections: usize,
    /// A TCP connection with no new query for this long is closed (after
    /// its pending answers are written).
    pub tcp_idle_timeout: Duration,
    /// Largest TCP query accepted; a longer length prefix closes the connection.
    pub max_tcp_message: usize,
    /// Bound on resolving one query (pins, upstream, retries); past it SERVFAIL.
    pub query_timeout: Duration,
    /// Refusal audit events per second (the token bucket's rate).
    pub refusal_events_per_second: u32,
    /// Refusal audit events at once (the token bucket's burst).
    pub refusal_event_burst: u32,
}

impl Default for DnsLimits {
    /// 256 queries in flight (a burst of lookups from many tools; each
    /// holds a small buffer and, while resolving, one upstream socket), 64
    /// TCP connections (TCP DNS is the fallback for truncated answers), 10
    /// s TCP idle (RFC 7766 suggests seconds), 4 KiB TCP queries (a query
    /// with EDNS options is well under 512 bytes), 5 s per query (the
    /// upstream client's 2 s × 2 attempts, plus slack), 20 refusal events
    /// per second with a burst of 100.
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            max_tcp_connections: 64,
            tcp_idle_timeout: Duration::from_secs(10),
            max_tcp_message: 4096,
            query_timeout: Duration::from_secs(5),
            refusal_events_per_second: 20,
            refusal_event_burst: 100,
        }
    }
}

/// Everything a [`DnsFilter`] is built from.
#[derive(Clone)]
pub struct DnsFilterConfig {
    /// The policy snapshots (hot reload swaps the value; each query uses
    /// the one current when it arrived).
    pub policy: PolicyWatch,
    /// Resolves allowed names: `--resolve` pins, then `--dns-upstream` or
    /// the system resolver.
    pub resolver: Resolver,
    /// Where refusal events go.
    pub audit: Arc<dyn AuditSink>,
    /// Attributes clients and refuses those outside the enforced cgroups;
    /// `None` serves everyone (library use and tests).
    pub gate: Option<ClientGate>,
    /// Told about every answered A/AAAA query.
    pub learned: Option<Arc<dyn LearnedAnswers>>,
    /// The filter's bounds.
    pub limits: DnsLimits,
}

/// The DNS filter. Cheap to clone; clones share limits, counters and state.
#[derive(Clone)]
pub struct DnsFilter {
    shared: Arc<Shared>,
}

/// What every query of one filter shares.
struct Shared {
    policy: PolicyWatch,
    resolver: Resolver,
    audit: Arc<dyn AuditSink>,
    gate: Option<ClientGate>,
    learned: Option<Arc<dyn LearnedAnswers>>,
    limits: DnsLimits,
    in_flight: Arc<Semaphore>,
    tcp_connections: Arc<Semaphore>,
    refusal_events: Mutex<TokenBucket>,
    stats: DnsStats,
    local_addrs: LocalAddrsCache,
}

/// The transport a query came over: it bounds the answer's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl DnsFilter {
    /// A filter from `config`.
    pub fn new(config: DnsFilterConfig) -> Self {
        let limits = config.limits;
        Self {
            shared: Arc::new(Shared {
                policy: config.policy,
                resolver: config.resolver,
                audit: config.audit,
                gate: config.gate,
                learned: config.learned,
                in_flight: Arc::new(Semaphore::new(
                    limits.max_in_flight.min(Semaphore::MAX_PERMITS),
                )),
                tcp_connections: Arc::new(Semaphore::new(
                    limits.max_tcp_connections.min(Semaphore::MAX_PERMITS),
                )),
                refusal_events: Mutex::new(TokenBucket::new(
                    limits.refusal_events_per_second,
                    limits.refusal_event_burst,
                    std::time::Instant::now(),
                )),
                limits,
                stats: DnsStats::default(),
                local_addrs: LocalAddrsCache::new(LOCAL_ADDRS_TTL),
            }),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> DnsStatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Serves queries arriving on `socket` until `shutdown` resolves (or
    /// the future is dropped); each query is answered on its own task.
    pub async fn serve_udp(&self, socket: UdpSocket, shutdown: impl Future<Output = ()>) {
        let socket = Arc::new(socket);
        let local = socket.local_addr().ok();
        let mut buf = vec![0u8; UDP_RECEIVE_BUFFER];
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                received = socket.recv_from(&mut buf) => match received {
                    Ok((n, from)) => {
                        let Ok(permit) = self.shared.in_flight.clone().try_acquire_owned() else {
                            self.shared.stats.bump(Counter::DroppedOverload);
                            continue;
                        };
                        let bytes = buf.get(..n).unwrap_or_default().to_vec();
                        let shared = self.shared.clone();
                        let socket = socket.clone();
                        tokio::spawn(async move {
                            let _permit = permit;
                            let peer = Peer::Udp { addr: from };
                            let admitted = attribution::check(shared.gate.as_ref(), &peer, local);
                            let answer = shared.answer(&bytes, &peer, &admitted, Transport::Udp).await;
                            if let Some(answer) = answer
                                && let Err(error) = socket.send_to(&answer, from).await
                            {
                                tracing::debug!(error = %error, client = %from, "DNS answer not sent");
                            }
                        });
                    }
                    Err(error) => io_backoff("DNS filter UDP receive failed", &error).await,
                }
            }
        }
    }

    /// Accepts TCP connections on `listener` until `shutdown` resolves (or
    /// the future is dropped); each connection runs on its own task and
    /// each of its queries on another.
    pub async fn serve_tcp(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => {
                        let Ok(permit) = self.shared.tcp_connections.clone().try_acquire_owned()
                        else {
                            self.shared.stats.bump(Counter::DroppedOverload);
                            drop(stream);
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let shared = self.shared.clone();
                        tokio::spawn(async move {
                            let _permit = permit;
                            tcp_connection(shared, stream, addr).await;
                        });
                    }
                    Err(error) => io_backoff("DNS filter accept failed", &error).await,
                }
            }
        }
    }
}

/// Receive and accept errors (EMFILE, ENOBUFS, ...) are transient: log,
/// pause briefly so they do not spin, carry on.
async fn io_backoff(what: &'static str, error: &io::Error) {
    tracing::warn!(error = %error, "{what}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// One TCP connection: read length-prefixed queries until EOF, the idle
/// timeout, an oversized frame or the in-flight bound; answer each on its
/// own task; write the answers (in the order they are ready, RFC 7766)
/// until the last one is out.
async fn tcp_connection(shared: Arc<Shared>, stream: TcpStream, addr: SocketAddr) {
    let local = stream.local_addr().ok();
    let peer = Peer::Tcp { addr };
    let admitted = Arc::new(attribution::check(shared.gate.as_ref(), &peer, local));
    let (mut reader, writer) = stream.into_split();
    let (answers, queue) = mpsc::channel::<Vec<u8>>(TCP_ANSWER_QUEUE);
    let writing = write_answers(writer, queue, shared.limits.tcp_idle_timeout);
    let reading = async move {
        let idle = shared.limits.tcp_idle_timeout;
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(idle, reader.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => return,
            }
            let len = usize::from(u16::from_be_bytes(len));
            if len == 0 || len > shared.limits.max_tcp_message {
                shared.stats.bump(Counter::Malformed);
                tracing::debug!(client = %addr, len, "DNS TCP frame out of bounds; closing");
                return;
            }
            let mut bytes = vec![0u8; len];
            match tokio::time::timeout(idle, reader.read_exact(&mut bytes)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => return,
            }
            let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
                shared.stats.bump(Counter::DroppedOverload);
                return;
            };
            let shared = shared.clone();
            let peer = peer.clone();
            let admitted = admitted.clone();
            let answers = answers.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Some(answer) = shared
                    .answer(&bytes, &peer, &admitted, Transport::Tcp)
                    .await
                {
                    let _ = answers.send(answer).await;
                }
            });
        }
        // `answers` drops here: the writer ends once the running queries
        // have sent theirs.
    };
    tokio::join!(reading, writing);
}

/// Writes each answer with its length prefix; ends when every sender is
/// gone, or when the client stops reading (a write not done within
/// `timeout`): then the queue closes and queries still running drop their
/// answers at once instead of holding their in-flight slots.
async fn write_answers(
    mut writer: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Vec<u8>>,
    timeout: Duration,
) {
    while let Some(answer) = queue.recv().await {
        let Ok(len) = u16::try_from(answer.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&answer);
        match tokio::time::timeout(timeout, writer.write_all(&framed)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
    let _ = writer.shutdown().await;
}

impl Shared {
    /// The answer to one message from `peer`, or `None` to send nothing.
    async fn answer(
        &self,
        bytes: &[u8],
        peer: &Peer,
        admitted: &Admitted,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let started = Instant::now();
        let query = match wire::parse_query(bytes) {
            Ok(query) => query,
            Err(error) => {
                self.stats.bump(Counter::Malformed);
                tracing::debug!(error = %error, client = %peer, "malformed DNS query");
                return error.reply();
            }
        };
        let snapshot = self.policy.borrow().clone();
        let decision = match admitted.verdict {
            Err(reason) => DnsDecision::Refuse { reason },
            Ok(()) => decide(&query.question, &snapshot, SystemTime::now()),
        };
        let reply = match decision {
            DnsDecision::Refuse { reason } => {
                self.stats.bump(Counter::Refused);
                self.audit_refusal(&query, peer, admitted, &snapshot, reason, started);
                Reply::Refused
            }
            DnsDecision::Empty { .. } => {
                self.stats.bump(Counter::Empty);
                Reply::NoData
            }
            DnsDecision::Resolve { host, family } => self.resolve(&snapshot, &host, family).await,
        };
        let limit = match transport {
            Transport::Udp => query.udp_limit(),
            Transport::Tcp => TCP_LIMIT,
        };
        match wire::respond(&query, &reply, limit) {
            Ok(answer) => Some(answer),
            Err(error) => {
                tracing::warn!(error = %error, client = %peer, "DNS answer not encoded");
                None
            }
        }
    }

    /// Resolves an allowed name and turns the outcome into the reply.
    async fn resolve(&self, snapshot: &Snapshot, host: &Host, family: Family) -> Reply {
        let resolved = tokio::time::timeout(
            self.limits.query_timeout,
            self.resolver.resolve_family(host, family),
        )
        .await;
        let resolved = match resolved {
            Ok(Ok(resolved)) => resolved,
            Ok(Err(ResolveError::NxDomain { .. })) => {
                self.stats.bump(Counter::NxDomain);
                return Reply::NxDomain;
            }
            Ok(Err(ResolveError::NoAddresses { .. })) => {
                self.stats.bump(Counter::Empty);
                return Reply::NoData;
            }
            Ok(Err(error)) => {
                self.stats.bump(Counter::ServFail);
                tracing::debug!(error = %error, host = %host, "DNS filter upstream failed");
                return Reply::ServFail;
            }
            Err(_) => {
                self.stats.bump(Counter::ServFail);
                tracing::debug!(host = %host, timeout = ?self.limits.query_timeout, "DNS filter resolve timed out");
                return Reply::ServFail;
            }
        };
        let local = self.local_addrs.get();
        let selected = select_answers(&resolved, &snapshot.policy().fronting, &local);
        if let Some((_, class)) = selected.refused.first() {
            tracing::info!(
                host = %host,
                dropped = selected.refused.len(),
                kept = selected.answers.len(),
                address_class = class.as_str(),
                "DNS answers in refused address classes dropped"
            );
        }
        if selected.answers.is_empty() {
            self.stats.bump(Counter::Empty);
            return Reply::NoData;
        }
        self.stats.bump(Counter::Answered);
        tracing::debug!(
            decision = "allow",
            reason = Reason::DnsAnswered.as_str(),
            host = %host,
            answers = selected.answers.len(),
            "DNS answered"
        );
        if let Some(learned) = &self.learned {
            learned.answered(host, &selected.answers).await;
        }
        Reply::Addresses(
            selected
                .answers
                .iter()
                .map(|&(ip, ttl)| (ip, ttl_seconds(ttl)))
                .collect(),
        )
    }

    /// One audit event for a refused query, unless the token bucket is empty.
    fn audit_refusal(
        &self,
        query: &Query,
        peer: &Peer,
        admitted: &Admitted,
        snapshot: &Snapshot,
        reason: Reason,
        started: Instant,
    ) {
        let allowed = {
            let mut bucket = match self.refusal_events.lock() {
                Ok(bucket) => bucket,
                Err(poisoned) => poisoned.into_inner(),
            };
            bucket.try_take(std::time::Instant::now())
        };
        if !allowed {
            self.stats.bump(Counter::RefusalSuppressed);
            return;
        }
        let name = query.question.name_text();
        let host = policy::normalize_host(&name).map_or(name, |host| host.to_string());
        let mut event = AuditEvent::accepted(
            SystemTime::now(),
            peer.clone(),
            admitted.identity.clone(),
            Some(snapshot.policy().version.to_string()),
        );
        event.kind = RequestKind::Dns;
        event.host = Some(host);
        event.dns_type = Some(query.question.record_type.to_string());
        event.verdict = Verdict::deny(reason);
        event.handshake = started.elapsed();
        event.total = event.handshake;
        self.audit.record(event);
    }
}

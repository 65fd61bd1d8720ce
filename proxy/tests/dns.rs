//! End-to-end tests of the DNS filter: a `DnsFilter` on 127.0.0.1 (UDP and
//! TCP) over a loopback mock upstream, asked with real queries built by
//! hickory. The answered addresses are public-looking but never dialled:
//! all traffic stays on 127.0.0.0/8.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mock_dns::MockDns;
use common::{pack_json, snapshot};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use policy::Host;
use proxy::attribution::{Attribution, ClientAttribution, ClientGate, OutsideClients};
use proxy::audit::{MemorySink, Peer, RequestKind};
use proxy::dns::{DnsFilter, DnsFilterConfig, DnsLimits, LearnedAnswers, LearnedWait};
use proxy::net::resolve::{DnsClient, ResolveOverrides, Resolver, Upstream};
use proxy::reason::{Reason, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One [`LearnedAnswers::answered`] call: the name and what it was answered with.
type LearnedCall = (String, Vec<(IpAddr, Duration)>);

/// Records every [`LearnedAnswers::answered`] call.
#[derive(Default)]
struct Learned(Mutex<Vec<LearnedCall>>);

impl LearnedAnswers for Learned {
    fn answered(&self, name: &Host, addrs: &[(IpAddr, Duration)]) -> LearnedWait {
        self.0
            .lock()
            .unwrap()
            .push((name.to_string(), addrs.to_vec()));
        Box::pin(std::future::ready(()))
    }
}

/// Attributes every client the same way.
struct Fixed {
    enforced: bool,
}

impl ClientAttribution for Fixed {
    fn attribute(&self, _peer: &Peer, _local: Option<SocketAddr>) -> Attribution {
        Attribution {
            enforced: self.enforced,
            ..Attribution::default()
        }
    }
}

/// A filter on 127.0.0.1 (UDP and TCP, one port each), stopped on drop.
struct Filter {
    udp: SocketAddr,
    tcp: SocketAddr,
    filter: DnsFilter,
    sink: Arc<MemorySink>,
    learned: Arc<Learned>,
    _policy: watch::Sender<Arc<policy::Snapshot>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Filter {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

const ALLOWED: [&str; 5] = [
    "allowed.test",
    "alias.test",
    "rebind.test",
    "long.test",
    "gone.test",
];

impl Filter {
    async fn start(upstream: Upstream, gate: Option<ClientGate>, limits: DnsLimits) -> Self {
        let entries: Vec<String> = ALLOWED
            .iter()
            .map(|h| format!(r#"{{"hostport":"{h}"}}"#))
            .collect();
        let fronting = format!(r#"{{"allowlist":[{}]}}"#, entries.join(","));
        let (tx, rx) = watch::channel(snapshot(&pack_json(&fronting, "{}")));
        let sink = Arc::new(MemorySink::new(1000));
        let learned = Arc::new(Learned::default());
        let filter = DnsFilter::new(DnsFilterConfig {
            policy: rx,
            resolver: Resolver::new(ResolveOverrides::new(), upstream),
            audit: sink.clone(),
            gate,
            learned: Some(learned.clone()),
            limits,
        });
        let udp_socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let udp = udp_socket.local_addr().unwrap();
        let tcp = listener.local_addr().unwrap();
        let serving = filter.clone();
        let udp_task = tokio::spawn(async move {
            serving.serve_udp(udp_socket, std::future::pending()).await;
        });
        let serving = filter.clone();
        let tcp_task = tokio::spawn(async move {
            serving.serve_tcp(listener, std::future::pending()).await;
        });
        Self {
            udp,
            tcp,
            filter,
            sink,
            learned,
            _policy: tx,
            tasks: vec![udp_task, tcp_task],
        }
    }

    async fn with_mock(dns: &MockDns) -> Self {
        Self::start(mock_upstream(dns), None, DnsLimits::default()).await
    }

    /// Sends `bytes` over UDP; the answer, or `None` after 500 ms.
    async fn udp_raw(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(self.udp).await.unwrap();
        socket.send(bytes).await.unwrap();
        let mut buf = vec![0u8; 65_535];
        match tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await {
            Ok(n) => Some(buf[..n.unwrap()].to_vec()),
            Err(_) => None,
        }
    }

    async fn udp(&self, name: &str, rtype: RecordType) -> Message {
        let (id, bytes) = query(name, rtype);
        let answer = self.udp_raw(&bytes).await.expect("an answer");
        let answer = Message::from_vec(&answer).unwrap();
        assert_eq!(answer.id(), id);
        assert_eq!(answer.message_type(), MessageType::Response);
        answer
    }
}

fn mock_upstream(dns: &MockDns) -> Upstream {
    Upstream::Dns(DnsClient::new(dns.addr()).with_timeout(Duration::from_millis(500), 2))
}

/// A standard query for `name`, with its id.
fn query(name: &str, rtype: RecordType) -> (u16, Vec<u8>) {
    let id = 0x4242u16.wrapping_add(rtype.into());
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    (id, m.to_vec().unwrap())
}

/// The answer records as (address, TTL).
fn addresses(message: &Message) -> Vec<(IpAddr, u32)> {
    message
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl())),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl())),
            _ => None,
        })
        .collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

async fn mock() -> MockDns {
    let dns = MockDns::start().await;
    dns.answer(
        "allowed.test",
        &["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    );
    dns.ttl("allowed.test", 120);
    dns.cname("alias.test", "mid.test");
    dns.ttl("alias.test", 600);
    dns.cname("mid.test", "target.test");
    dns.ttl("mid.test", 45);
    dns.answer("target.test", &["93.184.215.15"]);
    dns.ttl("target.test", 900);
    dns.answer(
        "rebind.test",
        &["127.0.0.1", "169.254.169.254", "93.184.215.16"],
    );
    dns.answer("long.test", &["93.184.215.17"]);
    dns.ttl("long.test", 86_400);
    dns.answer("evil.test", &["93.184.215.99"]);
    dns
}

#[tokio::test]
async fn allowed_names_are_answered_with_the_upstreams_addresses_and_ttls() {
    let dns = mock().await;
    let f = Filter::with_mock(&dns).await;

    let a = f.udp("Allowed.Test.", RecordType::A).await;
    assert_eq!(a.response_code(), ResponseCode::NoError);
    assert_eq!(
        a.queries()[0].name().to_ascii(),
        "Allowed.Test.",
        "case kept"
    );
    assert_eq!(addresses(&a), vec![(ip("93.184.215.14"), 120)]);

    let aaaa = f.udp("allowed.test.", RecordType::AAAA).await;
    assert_eq!(
        addresses(&aaaa),
        vec![(ip("2606:2800:21f:cb07:6820:80da:af6b:8b2c"), 120)]
    );

    // alias -> mid -> target: the final address, for the question name,
    // with the smallest TTL on the chain.
    let alias = f.udp("alias.test.", RecordType::A).await;
    assert_eq!(addresses(&alias), vec![(ip("93.184.215.15"), 45)]);
    assert!(
        alias
            .answers()
            .iter()
            .all(|r| r.name().to_ascii() == "alias.test."),
        "{alias:?}"
    );

    // TTLs are capped at 300 s.
    let long = f.udp("long.test.", RecordType::A).await;
    assert_eq!(addresses(&long), vec![(ip("93.184.215.17"), 300)]);

    // Other types of an allowed name: NOERROR, nothing; the upstream is not asked.
    let before = dns.udp_queries();
    let txt = f.udp("allowed.test.", RecordType::TXT).await;
    assert_eq!(txt.response_code(), ResponseCode::NoError);
    assert!(txt.answers().is_empty());
    assert_eq!(dns.udp_queries(), before);

    // An allowed name the upstream does not know: NXDOMAIN.
    let gone = f.udp("gone.test.", RecordType::A).await;
    assert_eq!(gone.response_code(), ResponseCode::NXDomain);

    let learned = f.learned.0.lock().unwrap().clone();
    assert_eq!(
        learned,
        vec![
            (
                "allowed.test".to_string(),
                vec![(ip("93.184.215.14"), Duration::from_secs(120))]
            ),
            (
                "allowed.test".to_string(),
                vec![(
                    ip("2606:2800:21f:cb07:6820:80da:af6b:8b2c"),
                    Duration::from_secs(120)
                )]
            ),
            (
                "alias.test".to_string(),
                vec![(ip("93.184.215.15"), Duration::from_secs(45))]
            ),
            (
                "long.test".to_string(),
                vec![(ip("93.184.215.17"), Duration::from_secs(300))]
            ),
        ]
    );
    let stats = f.filter.stats();
    assert_eq!(
        (stats.answered, stats.empty, stats.nxdomain, stats.refused),
        (4, 1, 1, 0)
    );
    assert!(f.sink.events().is_empty(), "answers are not audited");
}

#[tokio::test]
async fn addresses_the_proxy_would_not_dial_are_not_answered() {
    let dns = mock().await;
    let f = Filter::with_mock(&dns).await;
    let rebind = f.udp("rebind.test.", RecordType::A).await;
    assert_eq!(rebind.response_code(), ResponseCode::NoError);
    assert_eq!(addresses(&rebind), vec![(ip("93.184.215.16"), 1)]);

    dns.answer("rebind.test", &["127.0.0.1", "10.0.0.1"]);
    let none = f.udp("rebind.test.", RecordType::A).await;
    assert_eq!(none.response_code(), ResponseCode::NoError);
    assert!(none.answers().is_empty(), "{none:?}");
    assert_eq!(f.filter.stats().empty, 1);
}

#[tokio::test]
async fn denied_names_are_refused_and_audited() {
    let dns = mock().await;
    let f = Filter::with_mock(&dns).await;
    let before = dns.udp_queries();
    let refused = f.udp("Evil.Test.", RecordType::A).await;
    assert_eq!(refused.response_code(), ResponseCode::Refused);
    assert!(refused.answers().is_empty());
    let txt = f.udp("evil.test.", RecordType::TXT).await;
    assert_eq!(txt.response_code(), ResponseCode::Refused);
    assert_eq!(
        dns.udp_queries(),
        before,
        "a refused name is never asked upstream"
    );

    let events = f.sink.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.kind, RequestKind::Dns);
    assert_eq!(event.host.as_deref(), Some("evil.test"));
    assert_eq!(event.port, None);
    assert_eq!(event.dns_type.as_deref(), Some("A"));
    assert_eq!(event.verdict, Verdict::deny(Reason::DnsRefused));
    assert!(matches!(event.client, Peer::Udp { addr } if addr.ip().is_loopback()));
    assert_eq!(events[1].dns_type.as_deref(), Some("TXT"));
    let json = serde_json::to_value(event).unwrap();
    assert_eq!(json["kind"], "dns");
    assert_eq!(json["decision"]["reason"], "dns_refused");
    assert_eq!(f.filter.stats().refused, 2);
}

#[tokio::test]
async fn malformed_messages_get_formerr_or_nothing_and_the_server_carries_on() {
    let dns = mock().await;
    let f = Filter::with_mock(&dns).await;
    // Too short for a header: dropped.
    assert_eq!(f.udp_raw(&[0x01, 0x02, 0x03]).await, None);
    // A header claiming a question, then garbage: FORMERR with the id.
    let garbage = [
        0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
    ];
    let formerr = Message::from_vec(&f.udp_raw(&garbage).await.unwrap()).unwrap();
    assert_eq!(formerr.id(), 0xabcd);
    assert_eq!(formerr.response_code(), ResponseCode::FormErr);
    // A response sent to the filter: never answered.
    let (_, mut response) = query("allowed.test.", RecordType::A);
    response[2] |= 0x80;
    assert_eq!(f.udp_raw(&response).await, None);
    // Still serving.
    let a = f.udp("allowed.test.", RecordType::A).await;
    assert_eq!(addresses(&a), vec![(ip("93.184.215.14"), 120)]);
    assert_eq!(f.filter.stats().malformed, 3);
}

async fn tcp_exchange(stream: &mut TcpStream, bytes: &[u8]) -> Message {
    let mut framed = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

#[tokio::test]
async fn tcp_carries_several_length_prefixed_queries_per_connection() {
    let dns = mock().await;
    let f = Filter::with_mock(&dns).await;
    let mut stream = TcpStream::connect(f.tcp).await.unwrap();
    let (id_a, a) = query("allowed.test.", RecordType::A);
    let answer = tcp_exchange(&mut stream, &a).await;
    assert_eq!(answer.id(), id_a);
    assert_eq!(addresses(&answer), vec![(ip("93.184.215.14"), 120)]);
    let (id_aaaa, aaaa) = query("alias.test.", RecordType::AAAA);
    let answer = tcp_exchange(&mut stream, &aaaa).await;
    assert_eq!(answer.id(), id_aaaa);
    assert_eq!(answer.response_code(), ResponseCode::NoError);
    let (_, evil) = query("evil.test.", RecordType::A);
    let answer = tcp_exchange(&mut stream, &evil).await;
    assert_eq!(answer.response_code(), ResponseCode::Refused);
    assert!(matches!(
        f.sink.events()[0].client,
        Peer::Tcp { addr } if addr.ip().is_loopback()
    ));

    // Two queries written at once are both answered (in any order).
    let (id1, q1) = query("allowed.test.", RecordType::A);
    let (id2, q2) = query("long.test.", RecordType::AAAA);
    let mut both = Vec::new();
    for q in [&q1, &q2] {
        both.extend_from_slice(&u16::try_from(q.len()).unwrap().to_be_bytes());
        both.extend_from_slice(q);
    }
    stream.write_all(&both).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).await.unwrap();
        ids.push(Message::from_vec(&buf).unwrap().id());
    }
    ids.sort_unstable();
    let mut want = vec![id1, id2];
    want.sort_unstable();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn tcp_frames_over_the_bound_close_the_connection() {
    let dns = mock().await;
    let f = Filter::with_mock(&dns).await;
    let mut stream = TcpStream::connect(f.tcp).await.unwrap();
    stream.write_all(&[0xff, 0xff]).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert_eq!(f.filter.stats().malformed, 1);
}

#[tokio::test]
async fn a_truncated_udp_answer_sends_the_client_to_tcp() {
    let dns = MockDns::start().await;
    let many: Vec<String> = (1..=40).map(|i| format!("93.184.216.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    dns.answer("allowed.test", &many);
    let f = Filter::with_mock(&dns).await;
    let udp = f.udp("allowed.test.", RecordType::A).await;
    assert!(udp.truncated());
    assert!(udp.answers().is_empty());
    let mut stream = TcpStream::connect(f.tcp).await.unwrap();
    let tcp = tcp_exchange(&mut stream, &query("allowed.test.", RecordType::A).1).await;
    assert!(!tcp.truncated());
    assert_eq!(tcp.answers().len(), 40);
    // With EDNS the client gets up to 1232 bytes over UDP.
    let mut m = Message::new();
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    m.set_id(1)
        .set_recursion_desired(true)
        .add_query(Query::query(
            Name::from_ascii("allowed.test.").unwrap(),
            RecordType::A,
        ))
        .set_edns(edns);
    let answer = Message::from_vec(&f.udp_raw(&m.to_vec().unwrap()).await.unwrap()).unwrap();
    assert!(!answer.truncated());
    assert_eq!(answer.answers().len(), 40);
    assert_eq!(
        answer.extensions().as_ref().map(Edns::max_payload),
        Some(1232)
    );
}

#[tokio::test]
async fn a_failing_upstream_is_servfail() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let upstream = Upstream::Dns(
        DnsClient::new(silent.local_addr().unwrap()).with_timeout(Duration::from_millis(50), 1),
    );
    let f = Filter::start(upstream, None, DnsLimits::default()).await;
    let answer = f.udp("allowed.test.", RecordType::A).await;
    assert_eq!(answer.response_code(), ResponseCode::ServFail);
    assert_eq!(f.filter.stats().servfail, 1);
    assert!(f.learned.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn clients_outside_the_enforced_cgroups_are_refused() {
    let dns = mock().await;
    let gate = ClientGate::new(Arc::new(Fixed { enforced: false }), OutsideClients::Refuse);
    let f = Filter::start(mock_upstream(&dns), Some(gate), DnsLimits::default()).await;
    let answer = f.udp("allowed.test.", RecordType::A).await;
    assert_eq!(answer.response_code(), ResponseCode::Refused);
    let event = &f.sink.events()[0];
    assert_eq!(event.verdict, Verdict::deny(Reason::ClientNotEnforced));
    assert_eq!(event.host.as_deref(), Some("allowed.test"));

    let gate = ClientGate::new(Arc::new(Fixed { enforced: true }), OutsideClients::Refuse);
    let f = Filter::start(mock_upstream(&dns), Some(gate), DnsLimits::default()).await;
    let answer = f.udp("allowed.test.", RecordType::A).await;
    assert_eq!(answer.response_code(), ResponseCode::NoError);
}

#[tokio::test]
async fn refusal_events_are_rate_limited_and_the_rest_counted() {
    let dns = mock().await;
    let limits = DnsLimits {
        refusal_events_per_second: 0,
        refusal_event_burst: 2,
        ..DnsLimits::default()
    };
    let f = Filter::start(mock_upstream(&dns), None, limits).await;
    for _ in 0..5 {
        let answer = f.udp("evil.test.", RecordType::A).await;
        assert_eq!(answer.response_code(), ResponseCode::Refused);
    }
    assert_eq!(f.sink.events().len(), 2);
    let stats = f.filter.stats();
    assert_eq!((stats.refused, stats.refusals_suppressed), (5, 3));
}

#[tokio::test]
async fn over_the_in_flight_bound_datagrams_are_dropped_and_counted() {
    // A silent upstream keeps the one slot busy for the query timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let upstream = Upstream::Dns(
        DnsClient::new(silent.local_addr().unwrap()).with_timeout(Duration::from_secs(2), 1),
    );
    let limits = DnsLimits {
        max_in_flight: 1,
        query_timeout: Duration::from_millis(800),
        ..DnsLimits::default()
    };
    let f = Filter::start(upstream, None, limits).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(f.udp).await.unwrap();
    socket
        .send(&query("allowed.test.", RecordType::A).1)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        f.udp_raw(&query("evil.test.", RecordType::A).1).await,
        None,
        "dropped while the slot is busy"
    );
    assert_eq!(f.filter.stats().dropped_overload, 1);
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), socket.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let first = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(
        first.response_code(),
        ResponseCode::ServFail,
        "the query timeout"
    );
}

#[tokio::test]
async fn idle_tcp_connections_are_closed_and_extra_ones_refused() {
    let dns = mock().await;
    let limits = DnsLimits {
        max_tcp_connections: 1,
        tcp_idle_timeout: Duration::from_millis(300),
        ..DnsLimits::default()
    };
    let f = Filter::start(mock_upstream(&dns), None, limits).await;
    let mut first = TcpStream::connect(f.tcp).await.unwrap();
    let answer = tcp_exchange(&mut first, &query("allowed.test.", RecordType::A).1).await;
    assert_eq!(answer.response_code(), ResponseCode::NoError);
    // Over the connection bound: closed at once, counted.
    let mut second = TcpStream::connect(f.tcp).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(f.filter.stats().dropped_overload, 1);
    // The first one, idle past the timeout, is closed.
    let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Its slot is free again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut third = TcpStream::connect(f.tcp).await.unwrap();
    let answer = tcp_exchange(&mut third, &query("allowed.test.", RecordType::A).1).await;
    assert_eq!(answer.response_code(), ResponseCode::NoError);
}

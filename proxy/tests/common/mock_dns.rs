//! A mock DNS server on 127.0.0.1 (UDP and TCP, same port) for resolver and
//! DNS-rebinding tests: answers configured names, NXDOMAIN otherwise, and
//! can be told to truncate UDP answers or to answer with a wrong id.
//! CNAMEs chain (up to 8 links); every record has TTL 1 unless [`MockDns::ttl`]
//! set another for its owner name.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

#[derive(Default)]
struct State {
    addrs: HashMap<String, Vec<IpAddr>>,
    cnames: HashMap<String, String>,
    ttls: HashMap<String, u32>,
    truncate_udp: bool,
    wrong_id: bool,
    udp_queries: usize,
    tcp_queries: usize,
}

/// The running server; stops when dropped.
pub struct MockDns {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for MockDns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl MockDns {
    /// Binds UDP and TCP on the same 127.0.0.1 port and serves.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let udp_state = state.clone();
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                let reply = {
                    let mut s = udp_state.lock().unwrap();
                    s.udp_queries += 1;
                    answer(&s, &buf[..n], true)
                };
                if let Some(reply) = reply {
                    let _ = udp.send_to(&reply, from).await;
                }
            }
        });
        let tcp_state = state.clone();
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = tcp.accept().await else {
                    return;
                };
                let state = tcp_state.clone();
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    if stream.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let reply = {
                        let mut s = state.lock().unwrap();
                        s.tcp_queries += 1;
                        answer(&s, &buf, false)
                    };
                    if let Some(reply) = reply {
                        let mut framed = u16::try_from(reply.len()).unwrap().to_be_bytes().to_vec();
                        framed.extend_from_slice(&reply);
                        let _ = stream.write_all(&framed).await;
                    }
                });
            }
        });
        Self {
            addr,
            state,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// The server's address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `name` with `addrs` (A for IPv4, AAAA for IPv6).
    pub fn answer(&self, name: &str, addrs: &[&str]) {
        let addrs = addrs.iter().map(|a| a.parse().unwrap()).collect();
        self.state.lock().unwrap().addrs.insert(key(name), addrs);
    }

    /// Answers `name` with a CNAME to `target` (plus the target's records).
    pub fn cname(&self, name: &str, target: &str) {
        self.state
            .lock()
            .unwrap()
            .cnames
            .insert(key(name), key(target));
    }

    /// Gives the records owned by `name` (its CNAME or its addresses) `ttl`.
    pub fn ttl(&self, name: &str, ttl: u32) {
        self.state.lock().unwrap().ttls.insert(key(name), ttl);
    }

    /// Truncates every UDP answer (TC bit, no records).
    pub fn truncate_udp(&self, on: bool) {
        self.state.lock().unwrap().truncate_udp = on;
    }

    /// Answers with an id that does not match the question.
    pub fn wrong_id(&self, on: bool) {
        self.state.lock().unwrap().wrong_id = on;
    }

    /// Questions received over UDP.
    pub fn udp_queries(&self) -> usize {
        self.state.lock().unwrap().udp_queries
    }

    /// Questions received over TCP.
    pub fn tcp_queries(&self) -> usize {
        self.state.lock().unwrap().tcp_queries
    }
}

fn answer(state: &State, query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let question = query.queries().first()?.clone();
    let mut reply = Message::new();
    reply
        .set_id(if state.wrong_id {
            query.id().wrapping_add(1)
        } else {
            query.id()
        })
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .set_recursion_available(true)
        .add_query(question.clone());
    if udp && state.truncate_udp {
        reply.set_truncated(true);
        return reply.to_vec().ok();
    }
    let mut name = key(&question.name().to_ascii());
    let mut owner = question.name().clone();
    let mut found = false;
    let ttl = |name: &str| state.ttls.get(name).copied().unwrap_or(1);
    for _ in 0..8 {
        let Some(target) = state.cnames.get(&name) else {
            break;
        };
        let target_name = Name::from_ascii(format!("{target}.")).ok()?;
        reply.add_answer(Record::from_rdata(
            owner.clone(),
            ttl(&name),
            RData::CNAME(CNAME(target_name.clone())),
        ));
        owner = target_name;
        name = target.clone();
        found = true;
    }
    if let Some(addrs) = state.addrs.get(&name) {
        found = true;
        for addr in addrs {
            let rdata = match (addr, question.query_type()) {
                (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                _ => continue,
            };
            reply.add_answer(Record::from_rdata(owner.clone(), ttl(&name), rdata));
        }
    }
    if !found {
        reply.set_response_code(ResponseCode::NXDomain);
    }
    reply.to_vec().ok()
}

//! DNS messages on the wire, with hickory-proto (no hand-written parser):
//! [`parse_query`] turns the bytes of one query into a checked [`Query`]
//! or a [`QueryError`] that says whether and how to answer it, and
//! [`respond`] builds the answer bytes for a [`Reply`]. Pure.
//!
//! Only standard queries with exactly one question are served. A message
//! too short for a header, or one with QR set (a response: answering it
//! could loop two resolvers into each other), is dropped; any other
//! message that does not fit gets `FORMERR` (`NOTIMP` for an opcode other
//! than QUERY, RFC 1035 §4.1.1) with its id.
//!
//! Answers echo the question as the client wrote it (case kept, for
//! 0x20-randomising clients), set RA, copy RD, and carry an OPT record
//! when the query had one. An answer over the transport's limit is sent
//! truncated (TC, no records) so the client asks again over TCP.

use std::net::IpAddr;

use hickory_proto::ProtoError;
use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinDecodable;
use thiserror::Error;

/// The size limit of a UDP answer to a client without EDNS (RFC 1035).
pub const CLASSIC_UDP_LIMIT: usize = 512;

/// The EDNS payload size the filter advertises and the most it sends over
/// UDP whatever the client offers: 1232 bytes, the DNS Flag Day 2020 value
/// that avoids IP fragmentation on common paths.
pub const EDNS_UDP_LIMIT: u16 = 1232;

/// The size limit of an answer over TCP (the 2-byte length prefix).
pub const TCP_LIMIT: usize = u16::MAX as usize;

/// The one question of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// The name as the client wrote it.
    pub name: Name,
    /// The record type asked for.
    pub record_type: RecordType,
    /// The class asked for (`IN` in practice).
    pub class: DNSClass,
}

impl Question {
    /// The name as ASCII text (IDNA names in their `xn--` form), with the
    /// trailing dot of a fully qualified name.
    pub fn name_text(&self) -> String {
        self.name.to_ascii()
    }
}

/// A standard query with exactly one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// The query id, echoed in the answer.
    pub id: u16,
    /// The RD flag, echoed in the answer.
    pub recursion_desired: bool,
    /// The question.
    pub question: Question,
    /// The client's EDNS UDP payload size, when the query had an OPT record.
    pub edns_payload: Option<u16>,
}

impl Query {
    /// The largest answer this client takes over UDP: 512 bytes without
    /// EDNS, else its payload size within 512..=[`EDNS_UDP_LIMIT`].
    pub fn udp_limit(&self) -> usize {
        match self.edns_payload {
            None => CLASSIC_UDP_LIMIT,
            Some(payload) => usize::from(payload.clamp(512, EDNS_UDP_LIMIT)),
        }
    }
}

/// Why a message is not a query the filter serves.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum QueryError {
    /// Shorter than the 12-byte header: no id to answer to (dropped).
    #[error("the message is shorter than a DNS header")]
    TooShort,
    /// QR is set: a response, never answered (dropped).
    #[error("the message is a response, not a query")]
    IsResponse,
    /// The opcode is not QUERY (`NOTIMP`).
    #[error("opcode {op_code} is not QUERY")]
    NotQuery {
        /// The message id.
        id: u16,
        /// Its opcode.
        op_code: OpCode,
    },
    /// Not exactly one question (`FORMERR`).
    #[error("the query has {count} questions, not one")]
    QuestionCount {
        /// The message id.
        id: u16,
        /// How many it has.
        count: usize,
    },
    /// The header reads but the rest does not parse (`FORMERR`).
    #[error("the query does not parse")]
    Malformed {
        /// The message id.
        id: u16,
    },
}

impl QueryError {
    /// The answer to send, if any: `FORMERR` or `NOTIMP` with the
    /// message's id, nothing for messages without a usable header or with
    /// QR set.
    pub fn reply(&self) -> Option<Vec<u8>> {
        let (id, op_code, rcode) = match *self {
            Self::TooShort | Self::IsResponse => return None,
            Self::NotQuery { id, op_code } => (id, op_code, ResponseCode::NotImp),
            Self::QuestionCount { id, .. } | Self::Malformed { id } => {
                (id, OpCode::Query, ResponseCode::FormErr)
            }
        };
        Message::error_msg(id, op_code, rcode).to_vec().ok()
    }
}

/// Parses one query message.
pub fn parse_query(bytes: &[u8]) -> Result<Query, QueryError> {
    let header = Header::from_bytes(bytes).map_err(|_| QueryError::TooShort)?;
    if header.message_type() == MessageType::Response {
        return Err(QueryError::IsResponse);
    }
    let id = header.id();
    if header.op_code() != OpCode::Query {
        return Err(QueryError::NotQuery {
            id,
            op_code: header.op_code(),
        });
    }
    if header.query_count() != 1 {
        return Err(QueryError::QuestionCount {
            id,
            count: usize::from(header.query_count()),
        });
    }
    let message = Message::from_vec(bytes).map_err(|_| QueryError::Malformed { id })?;
    let [question] = message.queries() else {
        return Err(QueryError::QuestionCount {
            id,
            count: message.queries().len(),
        });
    };
    Ok(Query {
        id,
        recursion_desired: message.recursion_desired(),
        question: Question {
            name: question.name().clone(),
            record_type: question.query_type(),
            class: question.query_class(),
        },
        edns_payload: message.extensions().as_ref().map(Edns::max_payload),
    })
}

/// What to answer a [`Query`] with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// NOERROR with these addresses and TTLs (seconds) for the question name.
    Addresses(Vec<(IpAddr, u32)>),
    /// NOERROR, no records.
    NoData,
    /// NXDOMAIN: the upstream said the name does not exist.
    NxDomain,
    /// REFUSED: the name (or the client) is not allowed.
    Refused,
    /// SERVFAIL: resolving failed.
    ServFail,
}

/// The answer could not be encoded (hickory refused the message).
#[derive(Debug, Error)]
#[error("encoding the DNS answer failed: {source}")]
pub struct EncodeError {
    /// hickory's error.
    #[source]
    pub source: ProtoError,
}

/// The answer bytes for `query`, at most `limit` bytes when that fits a
/// header and the question: over it, the answer is sent truncated (TC set,
/// no records).
pub fn respond(query: &Query, reply: &Reply, limit: usize) -> Result<Vec<u8>, EncodeError> {
    let mut question =
        hickory_proto::op::Query::query(query.question.name.clone(), query.question.record_type);
    question.set_query_class(query.question.class);
    let mut message = Message::new();
    message
        .set_id(query.id)
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(query.recursion_desired)
        .set_recursion_available(true)
        .add_query(question);
    let rcode = match reply {
        Reply::Addresses(_) | Reply::NoData => ResponseCode::NoError,
        Reply::NxDomain => ResponseCode::NXDomain,
        Reply::Refused => ResponseCode::Refused,
        Reply::ServFail => ResponseCode::ServFail,
    };
    message.set_response_code(rcode);
    if let Reply::Addresses(addrs) = reply {
        for &(ip, ttl) in addrs {
            let data = match ip {
                IpAddr::V4(v4) => RData::A(A(v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
            };
            message.add_answer(Record::from_rdata(query.question.name.clone(), ttl, data));
        }
    }
    if query.edns_payload.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_UDP_LIMIT);
        message.set_edns(edns);
    }
    let encode = |message: &Message| message.to_vec().map_err(|source| EncodeError { source });
    let bytes = encode(&message)?;
    if bytes.len() <= limit {
        return Ok(bytes);
    }
    message.take_answers();
    message.set_truncated(true);
    encode(&message)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use hickory_proto::op::Query as HQuery;

    fn query_bytes(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(0x1234)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(HQuery::query(Name::from_ascii(name).unwrap(), rtype));
        if let Some(payload) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn a_query_parses_and_its_answer_round_trips() {
        let query = parse_query(&query_bytes("Api.Example.test.", RecordType::A, None)).unwrap();
        assert_eq!(query.id, 0x1234);
        assert!(query.recursion_desired);
        assert_eq!(query.question.record_type, RecordType::A);
        assert_eq!(query.question.class, DNSClass::IN);
        assert_eq!(query.question.name_text(), "Api.Example.test.");
        assert_eq!(query.udp_limit(), 512);
        let reply = Reply::Addresses(vec![
            ("192.0.2.1".parse().unwrap(), 60),
            ("192.0.2.2".parse().unwrap(), 30),
        ]);
        let bytes = respond(&query, &reply, 512).unwrap();
        let answer = Message::from_vec(&bytes).unwrap();
        assert_eq!(answer.id(), 0x1234);
        assert_eq!(answer.message_type(), MessageType::Response);
        assert_eq!(answer.response_code(), ResponseCode::NoError);
        assert!(answer.recursion_available() && answer.recursion_desired());
        assert_eq!(answer.queries().len(), 1);
        assert_eq!(answer.queries()[0].name().to_ascii(), "Api.Example.test.");
        let records: Vec<_> = answer
            .answers()
            .iter()
            .map(|r| (r.name().to_ascii(), r.ttl(), r.data().clone()))
            .collect();
        assert_eq!(
            records,
            vec![
                (
                    "Api.Example.test.".to_string(),
                    60,
                    RData::A(A("192.0.2.1".parse().unwrap()))
                ),
                (
                    "Api.Example.test.".to_string(),
                    30,
                    RData::A(A("192.0.2.2".parse().unwrap()))
                ),
            ]
        );
        assert!(
            answer.extensions().is_none(),
            "no OPT unless asked with one"
        );
    }

    #[test]
    fn rcodes_and_edns_are_answered() {
        let query = parse_query(&query_bytes("a.test.", RecordType::TXT, Some(4096))).unwrap();
        assert_eq!(query.udp_limit(), usize::from(EDNS_UDP_LIMIT));
        for (reply, rcode) in [
            (Reply::NoData, ResponseCode::NoError),
            (Reply::NxDomain, ResponseCode::NXDomain),
            (Reply::Refused, ResponseCode::Refused),
            (Reply::ServFail, ResponseCode::ServFail),
        ] {
            let answer = Message::from_vec(&respond(&query, &reply, 512).unwrap()).unwrap();
            assert_eq!(answer.response_code(), rcode);
            assert!(answer.answers().is_empty());
            assert_eq!(answer.queries()[0].query_type(), RecordType::TXT);
            assert_eq!(
                answer.extensions().as_ref().map(Edns::max_payload),
                Some(EDNS_UDP_LIMIT)
            );
        }
    }

    #[test]
    fn answers_over_the_limit_are_truncated() {
        let query = parse_query(&query_bytes("many.test.", RecordType::AAAA, None)).unwrap();
        let addrs = (0..40u16)
            .map(|i| {
                (
                    IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)),
                    60,
                )
            })
            .collect();
        let reply = Reply::Addresses(addrs);
        let small = Message::from_vec(&respond(&query, &reply, 512).unwrap()).unwrap();
        assert!(small.truncated());
        assert!(small.answers().is_empty());
        let big = Message::from_vec(&respond(&query, &reply, TCP_LIMIT).unwrap()).unwrap();
        assert!(!big.truncated());
        assert_eq!(big.answers().len(), 40);
    }

    #[test]
    fn what_is_not_one_standard_query_gets_formerr_notimp_or_nothing() {
        assert_eq!(parse_query(&[0x12]), Err(QueryError::TooShort));
        assert_eq!(parse_query(&[]), Err(QueryError::TooShort));
        // QR set: a response.
        let mut response = query_bytes("a.test.", RecordType::A, None);
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), Err(QueryError::IsResponse));
        assert_eq!(QueryError::IsResponse.reply(), None);
        // No question.
        let mut none = Message::new();
        none.set_id(7).set_message_type(MessageType::Query);
        let error = parse_query(&none.to_vec().unwrap()).unwrap_err();
        assert_eq!(error, QueryError::QuestionCount { id: 7, count: 0 });
        let formerr = Message::from_vec(&error.reply().unwrap()).unwrap();
        assert_eq!(
            (formerr.id(), formerr.response_code()),
            (7, ResponseCode::FormErr)
        );
        // Two questions.
        let mut two = Message::new();
        two.set_id(8)
            .add_query(HQuery::query(
                Name::from_ascii("a.test.").unwrap(),
                RecordType::A,
            ))
            .add_query(HQuery::query(
                Name::from_ascii("b.test.").unwrap(),
                RecordType::A,
            ));
        assert!(matches!(
            parse_query(&two.to_vec().unwrap()),
            Err(QueryError::QuestionCount { id: 8, count: 2 })
        ));
        // Not QUERY.
        let mut notify = Message::new();
        notify
            .set_id(9)
            .set_op_code(OpCode::Notify)
            .add_query(HQuery::query(
                Name::from_ascii("a.test.").unwrap(),
                RecordType::SOA,
            ));
        let error = parse_query(&notify.to_vec().unwrap()).unwrap_err();
        assert!(matches!(error, QueryError::NotQuery { id: 9, .. }));
        let notimp = Message::from_vec(&error.reply().unwrap()).unwrap();
        assert_eq!(
            (notimp.id(), notimp.response_code()),
            (9, ResponseCode::NotImp)
        );
        // A header claiming one question followed by garbage.
        let mut garbage = query_bytes("a.test.", RecordType::A, None);
        garbage.truncate(14);
        assert_eq!(
            parse_query(&garbage),
            Err(QueryError::Malformed { id: 0x1234 })
        );
    }
}

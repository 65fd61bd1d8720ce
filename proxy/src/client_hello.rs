//! Incremental, bounded TLS ClientHello reader (pure, no I/O).
//!
//! The first flight of a TLS client is one ClientHello handshake message,
//! which may be split across several TLS records, and those records across
//! any number of TCP segments (a hello written one byte at a time must work).
//! [`ClientHelloReader::push`] takes whatever bytes arrived, keeps every one
//! of them (they are forwarded upstream verbatim once the hello passes), and
//! answers [`HelloProgress::NeedMore`] until the whole ClientHello is in.
//! Record and handshake framing and the ClientHello body are parsed with
//! `tls-parser`; the reader adds what a chokepoint needs on top:
//!
//! - the first byte must start a TLS handshake record, else [`HelloError::NotTls`]
//!   (answered on the first byte, so `GET / HTTP/1.1` or SSH banners fail at once);
//! - only handshake records until the ClientHello ends, no empty records,
//!   records no longer than 2^14 bytes, the first handshake message a
//!   ClientHello, nothing after it in the same records, no trailing bytes
//!   inside the ClientHello, the extension block exactly covered by its
//!   extensions, no extension type twice (a second `server_name` counts as
//!   more names), the `server_name` list exactly covering its extension, only
//!   `host_name` entries, ASCII names;
//! - a byte bound ([`ClientHelloReader::new`]) on what is buffered.
//!
//! The result, [`ClientHelloInfo`], lists every server name and whether an
//! `encrypted_client_hello` (0xfe0d) or draft `encrypted_server_name`
//! (0xffce) extension is present. Judging those facts is `decide`'s job.

use thiserror::Error;
use tls_parser::{
    IResult, TlsExtension, TlsRecordType, parse_tls_extension_sni_content,
    parse_tls_extension_unknown, parse_tls_handshake_client_hello, parse_tls_raw_record,
};

use crate::reason::Reason;

/// The `encrypted_client_hello` extension type (RFC 9849 / draft-ietf-tls-esni).
pub const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
/// The older draft `encrypted_server_name` extension type (ESNI).
pub const EXT_ENCRYPTED_SERVER_NAME: u16 = 0xffce;
/// The `server_name` extension type (RFC 6066).
pub const EXT_SERVER_NAME: u16 = 0;
/// Largest plaintext record payload (RFC 8446 §5.1).
pub const MAX_PLAINTEXT_RECORD: usize = 1 << 14;
/// Default bound on the bytes buffered while waiting for a complete ClientHello.
pub const DEFAULT_MAX_HELLO_BYTES: usize = 32 * 1024;

/// Why a tunnel's first bytes were refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HelloError {
    /// The bytes are not a TLS handshake record.
    #[error("the tunnel did not start with a TLS handshake record (first byte 0x{first_byte:02x})")]
    NotTls {
        /// The offending byte (a content type, or the version's major byte).
        first_byte: u8,
    },
    /// The records or the ClientHello inside them are malformed.
    #[error("malformed TLS ClientHello: {what}")]
    Malformed {
        /// What was wrong.
        what: &'static str,
    },
    /// More than the bound was buffered before the ClientHello ended.
    #[error("the TLS ClientHello is larger than {limit} bytes")]
    TooLarge {
        /// The bound.
        limit: usize,
    },
}

impl HelloError {
    /// The audit reason for this error.
    pub fn reason(&self) -> Reason {
        match self {
            Self::NotTls { .. } => Reason::NotTls,
            Self::Malformed { .. } => Reason::MalformedClientHello,
            Self::TooLarge { .. } => Reason::ClientHelloTooLarge,
        }
    }
}

/// What the proxy learned from a complete ClientHello.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ClientHelloInfo {
    /// Every `host_name` in every `server_name` extension, in order, as sent
    /// (ASCII, not yet normalised).
    pub server_names: Vec<String>,
    /// An `encrypted_client_hello` (or draft `encrypted_server_name`)
    /// extension is present; the real SNI is then hidden.
    pub ech: bool,
    /// The ClientHello's `legacy_version` field.
    pub legacy_version: u16,
    /// How many TLS records carried the ClientHello.
    pub records: usize,
    /// Bytes from the start of the tunnel through the last ClientHello record.
    pub hello_len: usize,
}

/// Progress of a [`ClientHelloReader`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HelloProgress {
    /// The ClientHello is not complete yet: push more bytes.
    NeedMore,
    /// The ClientHello is complete; its facts.
    Complete(ClientHelloInfo),
}

// === impl ClientHelloReader ===

/// Reassembles and checks a ClientHello from bytes as they arrive.
#[derive(Clone, Debug)]
pub struct ClientHelloReader {
    max_bytes: usize,
    /// Every byte received, to forward upstream verbatim.
    raw: Vec<u8>,
    /// Offset in `raw` of the next record not yet consumed.
    record_pos: usize,
    /// Handshake-layer bytes reassembled from the records so far.
    handshake: Vec<u8>,
    records: usize,
    done: bool,
}

impl ClientHelloReader {
    /// A reader that buffers at most `max_bytes` before the hello completes.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            raw: Vec::new(),
            record_pos: 0,
            handshake: Vec::new(),
            records: 0,
            done: false,
        }
    }

    /// Every byte pushed so far (the ClientHello and anything after it).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Consumes the reader, returning every byte pushed.
    pub fn into_raw(self) -> Vec<u8> {
        self.raw
    }

    /// Adds bytes that arrived from the client and reports progress. After
    /// `Complete`, further pushes only append to [`ClientHelloReader::raw`].
    pub fn push(&mut self, data: &[u8]) -> Result<HelloProgress, HelloError> {
        self.raw.extend_from_slice(data);
        if self.done {
            return Ok(HelloProgress::NeedMore);
        }
        let progress = self.advance()?;
        if progress == HelloProgress::NeedMore && self.raw.len() >= self.max_bytes {
            return Err(HelloError::TooLarge {
                limit: self.max_bytes,
            });
        }
        if let HelloProgress::Complete(_) = progress {
            self.done = true;
        }
        Ok(progress)
    }

    fn advance(&mut self) -> Result<HelloProgress, HelloError> {
        loop {
            let rest = &self.raw[self.record_pos..];
            // Judge the first bytes of each record as soon as they arrive.
            if let Some(&content_type) = rest.first()
                && content_type != u8::from(TlsRecordType::Handshake)
            {
                return Err(if self.records == 0 {
                    HelloError::NotTls {
                        first_byte: content_type,
                    }
                } else {
                    HelloError::Malformed {
                        what: "a non-handshake record arrived before the ClientHello ended",
                    }
                });
            }
            if let Some(&major) = rest.get(1)
                && major != 3
            {
                return Err(if self.records == 0 {
                    HelloError::NotTls { first_byte: major }
                } else {
                    HelloError::Malformed {
                        what: "a record's version is not 3.x",
                    }
                });
            }
            let (record_len, payload) = match parse_tls_raw_record(rest) {
                Ok((after, record)) => (rest.len() - after.len(), record.data),
                Err(tls_parser::Err::Incomplete(_)) => {
                    // A length over the bound is known from the header alone.
                    if rest.len() >= 5 {
                        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
                        check_record_len(len)?;
                    }
                    return Ok(HelloProgress::NeedMore);
                }
                Err(_) => {
                    return Err(HelloError::Malformed {
                        what: "a record is longer than 2^14 bytes",
                    });
                }
            };
            check_record_len(payload.len())?;
            self.handshake.extend_from_slice(payload);
            self.records += 1;
            self.record_pos += record_len;

            if let Some(info) = self.try_complete()? {
                return Ok(HelloProgress::Complete(info));
            }
        }
    }

    /// Checks the reassembled handshake bytes; `Some` once the ClientHello
    /// is whole (at a record boundary).
    fn try_complete(&self) -> Result<Option<ClientHelloInfo>, HelloError> {
        let hs = &self.handshake;
        if let Some(&msg_type) = hs.first()
            && msg_type != 1
        {
            return Err(HelloError::Malformed {
                what: "the first handshake message is not a ClientHello",
            });
        }
        if hs.len() < 4 {
            return Ok(None);
        }
        let body_len = (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
        if body_len + 4 > self.max_bytes {
            return Err(HelloError::TooLarge {
                limit: self.max_bytes,
            });
        }
        if hs.len() < body_len + 4 {
            return Ok(None);
        }
        if hs.len() > body_len + 4 {
            return Err(HelloError::Malformed {
                what: "more handshake data follows the ClientHello in the same records",
            });
        }
        let mut info = parse_client_hello_body(&hs[4..])?;
        info.records = self.records;
        info.hello_len = self.record_pos;
        Ok(Some(info))
    }
}

fn check_record_len(len: usize) -> Result<(), HelloError> {
    if len == 0 {
        return Err(HelloError::Malformed {
            what: "an empty handshake record",
        });
    }
    if len > MAX_PLAINTEXT_RECORD {
        return Err(HelloError::Malformed {
            what: "a record is longer than 2^14 bytes",
        });
    }
    Ok(())
}

/// Parses a ClientHello body (after the 4-byte handshake header).
fn parse_client_hello_body(body: &[u8]) -> Result<ClientHelloInfo, HelloError> {
    let (rest, hello) =
        parse_tls_handshake_client_hello(body).map_err(|_| HelloError::Malformed {
            what: "the ClientHello body does not parse",
        })?;
    if !rest.is_empty() {
        return Err(HelloError::Malformed {
            what: "bytes after the ClientHello's extensions",
        });
    }
    let mut info = ClientHelloInfo {
        legacy_version: hello.version.0,
        ..ClientHelloInfo::default()
    };
    let mut extensions = hello.ext.unwrap_or(&[]);
    let mut seen: Vec<u16> = Vec::new();
    while !extensions.is_empty() {
        let parsed: IResult<&[u8], TlsExtension> = parse_tls_extension_unknown(extensions);
        let Ok((after, TlsExtension::Unknown(ext_type, data))) = parsed else {
            return Err(HelloError::Malformed {
                what: "the extension block is truncated",
            });
        };
        extensions = after;
        let ext_type = ext_type.0;
        if seen.contains(&ext_type) && ext_type != EXT_SERVER_NAME {
            return Err(HelloError::Malformed {
                what: "an extension type appears twice",
            });
        }
        seen.push(ext_type);
        match ext_type {
            EXT_SERVER_NAME => info.server_names.extend(parse_server_names(data)?),
            EXT_ENCRYPTED_CLIENT_HELLO | EXT_ENCRYPTED_SERVER_NAME => info.ech = true,
            _ => {}
        }
    }
    Ok(info)
}

/// Parses a `server_name` extension's data strictly: the list must cover
/// the data exactly and hold only non-empty ASCII `host_name` entries.
fn parse_server_names(data: &[u8]) -> Result<Vec<String>, HelloError> {
    let malformed = |what| HelloError::Malformed { what };
    if data.len() < 2 {
        return Err(malformed("the server_name extension is empty"));
    }
    let list_len = usize::from(u16::from_be_bytes([data[0], data[1]]));
    if list_len + 2 != data.len() {
        return Err(malformed(
            "the server_name list length does not match its extension",
        ));
    }
    let Ok((_, TlsExtension::SNI(entries))) = parse_tls_extension_sni_content(data) else {
        return Err(malformed("the server_name list does not parse"));
    };
    let covered: usize = entries.iter().map(|(_, name)| 3 + name.len()).sum();
    if covered != list_len {
        return Err(malformed(
            "the server_name list has truncated or trailing bytes",
        ));
    }
    if entries.is_empty() {
        return Err(malformed("the server_name list is empty"));
    }
    entries
        .into_iter()
        .map(|(name_type, name)| {
            if name_type.0 != 0 {
                return Err(malformed("a server_name entry is not of type host_name"));
            }
            if name.is_empty() {
                return Err(malformed("an empty host_name"));
            }
            if !name.iter().all(|&b| b.is_ascii_graphic()) {
                return Err(malformed(
                    "a host_name holds non-ASCII, space or control bytes",
                ));
            }
            // All bytes are ASCII graphic, so this is valid UTF-8.
            Ok(String::from_utf8_lossy(name).into_owned())
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "../tests/common/hello.rs"]
mod hello_util;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::hello_util::*;
    use super::*;

    const MAX: usize = DEFAULT_MAX_HELLO_BYTES;

    fn read_all(bytes: &[u8]) -> Result<HelloProgress, HelloError> {
        ClientHelloReader::new(MAX).push(bytes)
    }

    fn complete(bytes: &[u8]) -> ClientHelloInfo {
        match read_all(bytes).unwrap() {
            HelloProgress::Complete(info) => info,
            HelloProgress::NeedMore => panic!("hello incomplete"),
        }
    }

    #[test]
    fn rustls_hello_yields_its_sni() {
        let hello = rustls_client_hello(Some("api.example.test"));
        let info = complete(&hello);
        assert_eq!(info.server_names, vec!["api.example.test".to_string()]);
        assert!(!info.ech);
        assert_eq!(info.records, 1);
        assert_eq!(info.hello_len, hello.len());
    }

    #[test]
    fn hello_without_sni() {
        let info = complete(&rustls_client_hello(None));
        assert!(info.server_names.is_empty());
    }

    #[test]
    fn one_byte_at_a_time_across_several_records() {
        let hello = fragment_into_records(&rustls_client_hello(Some("a.example.test")), 7);
        let mut reader = ClientHelloReader::new(MAX);
        let (last, head) = hello.split_last().unwrap();
        for byte in head {
            assert_eq!(reader.push(&[*byte]).unwrap(), HelloProgress::NeedMore);
        }
        let HelloProgress::Complete(info) = reader.push(&[*last]).unwrap() else {
            panic!("not complete on the last byte");
        };
        assert_eq!(info.server_names, vec!["a.example.test".to_string()]);
        assert!(info.records > 10, "records {}", info.records);
        assert_eq!(reader.raw(), hello.as_slice());
    }

    #[test]
    fn bytes_after_the_hello_are_kept_for_forwarding() {
        let mut bytes = rustls_client_hello(Some("a.test"));
        let hello_len = bytes.len();
        bytes.extend_from_slice(b"\x14\x03\x03\x00\x01\x01");
        let mut reader = ClientHelloReader::new(MAX);
        let HelloProgress::Complete(info) = reader.push(&bytes).unwrap() else {
            panic!("incomplete");
        };
        assert_eq!(info.hello_len, hello_len);
        reader.push(b"more").unwrap();
        assert_eq!(reader.into_raw(), [bytes.as_slice(), b"more"].concat());
    }

    #[test]
    fn non_tls_bytes_fail_on_the_first_byte() {
        assert_eq!(
            ClientHelloReader::new(MAX).push(b"G"),
            Err(HelloError::NotTls { first_byte: b'G' })
        );
        assert_eq!(
            read_all(b"SSH-2.0-OpenSSH_9.2\r\n").unwrap_err().reason(),
            Reason::NotTls
        );
        // SSLv2-compatible hello.
        assert!(matches!(
            read_all(&[0x80, 0x2e, 0x01]),
            Err(HelloError::NotTls { .. })
        ));
        // Handshake content type but not version 3.x.
        assert_eq!(
            read_all(&[0x16, 0x02, 0x00]),
            Err(HelloError::NotTls { first_byte: 0x02 })
        );
    }

    #[test]
    fn several_server_names_are_all_reported() {
        let hello = rustls_client_hello(Some("a.test"));
        let two = replace_sni(&hello, &["a.test", "b.test"]);
        assert_eq!(complete(&two).server_names, vec!["a.test", "b.test"]);
        // A second server_name extension counts as more names too.
        let dup = add_extension(&hello, EXT_SERVER_NAME, &sni_ext_data(&["c.test"]));
        assert_eq!(complete(&dup).server_names, vec!["a.test", "c.test"]);
    }

    #[test]
    fn ech_and_esni_extensions_are_detected() {
        let hello = rustls_client_hello(Some("public.test"));
        let ech = add_extension(&hello, EXT_ENCRYPTED_CLIENT_HELLO, &[0, 1, 2, 3]);
        let info = complete(&ech);
        assert!(info.ech);
        assert_eq!(info.server_names, vec!["public.test"]);
        assert!(complete(&add_extension(&hello, EXT_ENCRYPTED_SERVER_NAME, &[9])).ech);
    }

    #[test]
    fn malformed_server_name_lists_are_refused() {
        let hello = rustls_client_hello(Some("a.test"));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("trailing", [sni_ext_data(&["a.test"]), vec![0xff]].concat()),
            ("empty list", vec![0, 0]),
            ("empty ext", vec![]),
            ("truncated entry", {
                let mut d = sni_ext_data(&["a.test"]);
                d.truncate(d.len() - 2);
                let n = u16::try_from(d.len() - 2).unwrap().to_be_bytes();
                d[0] = n[0];
                d[1] = n[1];
                d
            }),
            ("not host_name", {
                let mut d = sni_ext_data(&["a.test"]);
                d[2] = 1;
                d
            }),
            ("space", sni_ext_data(&["a test"])),
            ("nul", sni_ext_data(&["a\0test"])),
            ("empty name", sni_ext_data(&[""])),
        ];
        for (what, data) in cases {
            let bytes = replace_extension(&hello, EXT_SERVER_NAME, &data);
            assert!(
                matches!(read_all(&bytes), Err(HelloError::Malformed { .. })),
                "{what}: {:?}",
                read_all(&bytes)
            );
        }
    }

    #[test]
    fn record_layer_violations_are_refused() {
        let hello = rustls_client_hello(Some("a.test"));
        // Empty record.
        assert!(matches!(
            read_all(&[0x16, 0x03, 0x01, 0x00, 0x00]),
            Err(HelloError::Malformed { .. })
        ));
        // Oversized record length, known from the header alone.
        assert!(matches!(
            read_all(&[0x16, 0x03, 0x01, 0x40, 0x01]),
            Err(HelloError::Malformed { .. })
        ));
        // A ClientHello record followed by an alert record before it ended.
        let frag = fragment_into_records(&hello, 50);
        let mut bad = frag[..55].to_vec();
        bad.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
        assert!(matches!(read_all(&bad), Err(HelloError::Malformed { .. })));
        // Not a ClientHello (ServerHello type 2).
        let mut server_hello = hello.clone();
        server_hello[5] = 2;
        assert!(matches!(
            read_all(&server_hello),
            Err(HelloError::Malformed { .. })
        ));
        // Another handshake message in the same record after the hello.
        let extra = append_in_record(&hello, &[0x0b, 0, 0, 0]);
        assert!(matches!(
            read_all(&extra),
            Err(HelloError::Malformed { .. })
        ));
        // Trailing byte inside the ClientHello body.
        let trailing = grow_body(&hello, &[0]);
        assert!(matches!(
            read_all(&trailing),
            Err(HelloError::Malformed { .. })
        ));
        // Duplicate non-SNI extension.
        let dup = add_extension(&hello, 0x0010, &[0, 3, 2, b'h', b'2']);
        let dup = add_extension(&dup, 0x0010, &[0, 3, 2, b'h', b'2']);
        assert!(matches!(read_all(&dup), Err(HelloError::Malformed { .. })));
    }

    #[test]
    fn the_byte_bound_holds() {
        let hello = rustls_client_hello(Some("a.test"));
        assert!(matches!(
            ClientHelloReader::new(100).push(&hello),
            Err(HelloError::TooLarge { limit: 100 })
        ));
        // A handshake header announcing more than the bound fails before the body arrives.
        let header = [0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x01, 0x00, 0x00];
        assert!(matches!(
            ClientHelloReader::new(1000).push(&header),
            Err(HelloError::TooLarge { limit: 1000 })
        ));
        // Endless small records never complete: the bound ends them.
        let mut reader = ClientHelloReader::new(1000);
        let mut result = Ok(HelloProgress::NeedMore);
        for _ in 0..1000 {
            result = reader.push(&[0x16, 0x03, 0x01, 0x00, 0x01, 0x01]);
            if result.is_err() {
                break;
            }
        }
        assert!(
            matches!(result, Err(HelloError::TooLarge { .. })),
            "{result:?}"
        );
    }
}

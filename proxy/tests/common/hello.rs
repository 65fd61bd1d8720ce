//! Test helpers: real ClientHellos from rustls, and edits of them (extra or
//! replaced extensions, fragmentation into several records) for the cases no
//! stock client produces. Shared by the unit tests (`client_hello.rs`) and the
//! integration tests.
#![allow(dead_code)]

use std::sync::Arc;

/// A ClientHello record as rustls writes it, with `sni` as server name
/// (`None`: SNI disabled).
pub fn rustls_client_hello(sni: Option<&str>) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.enable_sni = sni.is_some();
    let name = rustls::pki_types::ServerName::try_from(sni.unwrap_or("no-sni.invalid").to_string())
        .unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// A ClientHello split into its parts, for editing.
struct Parts {
    record_version: [u8; 2],
    /// Body bytes before the extensions' length field.
    prefix: Vec<u8>,
    extensions: Vec<(u16, Vec<u8>)>,
}

fn split(record: &[u8]) -> Parts {
    assert_eq!(record[0], 0x16, "not a handshake record");
    let record_len = usize::from(u16::from_be_bytes([record[3], record[4]]));
    assert_eq!(record.len(), 5 + record_len, "expects one record");
    let hs = &record[5..];
    assert_eq!(hs[0], 1, "not a ClientHello");
    let body = &hs[4..];
    let mut at = 2 + 32;
    at += 1 + usize::from(body[at]);
    at += 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    at += 1 + usize::from(body[at]);
    let prefix = body[..at].to_vec();
    let ext_len = usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    let mut exts = &body[at + 2..at + 2 + ext_len];
    let mut extensions = Vec::new();
    while !exts.is_empty() {
        let ext_type = u16::from_be_bytes([exts[0], exts[1]]);
        let len = usize::from(u16::from_be_bytes([exts[2], exts[3]]));
        extensions.push((ext_type, exts[4..4 + len].to_vec()));
        exts = &exts[4 + len..];
    }
    Parts {
        record_version: [record[1], record[2]],
        prefix,
        extensions,
    }
}

fn join(parts: &Parts, body_suffix: &[u8], record_suffix: &[u8]) -> Vec<u8> {
    let mut exts = Vec::new();
    for (ext_type, data) in &parts.extensions {
        exts.extend_from_slice(&ext_type.to_be_bytes());
        exts.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        exts.extend_from_slice(data);
    }
    let mut body = parts.prefix.clone();
    body.extend_from_slice(&u16::try_from(exts.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&exts);
    body.extend_from_slice(body_suffix);
    let body_len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut hs = vec![1, body_len[1], body_len[2], body_len[3]];
    hs.extend_from_slice(&body);
    hs.extend_from_slice(record_suffix);
    let mut record = vec![0x16, parts.record_version[0], parts.record_version[1]];
    record.extend_from_slice(&u16::try_from(hs.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// `server_name` extension data listing `names` as host_name entries.
pub fn sni_ext_data(names: &[&str]) -> Vec<u8> {
    let mut list = Vec::new();
    for name in names {
        list.push(0);
        list.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
        list.extend_from_slice(name.as_bytes());
    }
    let mut data = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
    data.extend_from_slice(&list);
    data
}

/// The hello with one more extension at the end.
pub fn add_extension(record: &[u8], ext_type: u16, data: &[u8]) -> Vec<u8> {
    let mut parts = split(record);
    parts.extensions.push((ext_type, data.to_vec()));
    join(&parts, &[], &[])
}

/// The hello with the data of extension `ext_type` replaced.
pub fn replace_extension(record: &[u8], ext_type: u16, data: &[u8]) -> Vec<u8> {
    let mut parts = split(record);
    let ext = parts
        .extensions
        .iter_mut()
        .find(|(t, _)| *t == ext_type)
        .unwrap();
    ext.1 = data.to_vec();
    join(&parts, &[], &[])
}

/// The hello with its server_name list replaced by `names`.
pub fn replace_sni(record: &[u8], names: &[&str]) -> Vec<u8> {
    replace_extension(record, 0, &sni_ext_data(names))
}

/// The hello with `extra` handshake bytes after the ClientHello, in the same record.
pub fn append_in_record(record: &[u8], extra: &[u8]) -> Vec<u8> {
    join(&split(record), &[], extra)
}

/// The hello with `extra` bytes inside the ClientHello body after the extensions.
pub fn grow_body(record: &[u8], extra: &[u8]) -> Vec<u8> {
    join(&split(record), extra, &[])
}

/// The same handshake bytes re-framed as records of at most `chunk` bytes each.
pub fn fragment_into_records(record: &[u8], chunk: usize) -> Vec<u8> {
    let hs = &record[5..];
    let mut out = Vec::new();
    for piece in hs.chunks(chunk) {
        out.extend_from_slice(&[0x16, record[1], record[2]]);
        out.extend_from_slice(&u16::try_from(piece.len()).unwrap().to_be_bytes());
        out.extend_from_slice(piece);
    }
    out
}

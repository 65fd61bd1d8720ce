//! Loopback upstreams for the end-to-end tests: a TLS server with a test CA
//! made by rcgen (real rustls, real certificates), a raw TCP recorder, and a
//! plain-HTTP server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A test CA and one leaf certificate for a set of names.
pub struct TestPki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The leaf chain (leaf, CA).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf key.
    pub key: PrivateKeyDer<'static>,
    /// The CA certificate file (for curl, openssl, python).
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestPki {
    /// A CA and a leaf valid for `names`.
    pub fn new(names: &[&str]) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "enforcer proxy test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut leaf_params = rcgen::CertificateParams::new(names).unwrap();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "upstream");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            chain: vec![leaf.der().clone(), ca_cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            ca_file,
            _dir: dir,
        }
    }

    /// A rustls client config trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.chain[1].clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// A TLS server on 127.0.0.1 answering every HTTP request with
/// `hello from upstream sni=<the SNI it saw>`.
pub struct TlsUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The SNI of every completed handshake, in order.
    pub seen_sni: Arc<Mutex<Vec<Option<String>>>>,
    /// The first bytes of every accepted connection (a ClientHello when a
    /// client spoke TLS), recorded before any handshake, so a hello that
    /// fails the handshake is seen too.
    pub first_bytes: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    /// Starts serving with `pki`'s leaf certificate.
    pub async fn start(pki: &TestPki) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(pki.chain.clone(), pki.key.clone_key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen_sni = Arc::new(Mutex::new(Vec::new()));
        let seen = seen_sni.clone();
        let first_bytes = Arc::new(Mutex::new(Vec::new()));
        let first = first_bytes.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                let first = first.clone();
                tokio::spawn(async move {
                    let index = {
                        let mut all = first.lock().unwrap();
                        all.push(Vec::new());
                        all.len() - 1
                    };
                    let mut peeked = [0u8; 512];
                    if let Ok(n) = stream.peek(&mut peeked).await {
                        first.lock().unwrap()[index].extend_from_slice(&peeked[..n]);
                    }
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_string);
                    seen.lock().unwrap().push(sni.clone());
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = format!("hello from upstream sni={}", sni.unwrap_or_default());
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self {
            addr,
            seen_sni,
            first_bytes,
            task,
        }
    }

    /// Connections that reached this upstream, whatever they sent.
    pub fn connections(&self) -> usize {
        self.first_bytes.lock().unwrap().len()
    }

    /// Connections whose first bytes were a TLS handshake record (a ClientHello).
    pub fn client_hellos(&self) -> usize {
        self.first_bytes
            .lock()
            .unwrap()
            .iter()
            .filter(|bytes| bytes.first() == Some(&0x16))
            .count()
    }
}

/// A TCP server on 127.0.0.1 that records every byte each connection sends.
pub struct RawUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Bytes received, per connection.
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    /// Starts recording.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let index = {
                        let mut all = store.lock().unwrap();
                        all.push(Vec::new());
                        all.len() - 1
                    };
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => store.lock().unwrap()[index].extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// A plain-HTTP server on 127.0.0.1 answering `plain hello` and recording
/// each request head.
pub struct PlainUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Request heads received.
    pub heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for PlainUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PlainUpstream {
    /// Starts serving.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let store = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    store
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let body = "plain hello";
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { addr, heads, task }
    }
}

/// Opens a TCP connection to the proxy and sends `CONNECT target`;
/// returns the stream and the proxy's full response head.
pub async fn raw_connect(proxy: SocketAddr, target: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// Reads an HTTP response head (through the empty line), byte by byte so
/// nothing after it is consumed.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => break,
            Ok(_) => head.push(byte[0]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads until the proxy ends the connection (EOF or a reset) and returns
/// every byte it sent before that. Waits for ever when it never closes:
/// callers bound it with a timeout, whose expiry is the failure.
pub async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

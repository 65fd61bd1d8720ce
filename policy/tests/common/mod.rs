//! Shared helpers for the policy integration tests: packs, keys, and a
//! static HTTPS file server on 127.0.0.1 with a test CA (rcgen).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use policy::signing::{SigningKey, generate_key, sha256_hex, sign_bytes};
use policy::{FetchConfig, format_timestamp};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A pack whose allowlist and lane names carry `marker`, so a reader can
/// tell whether everything in a snapshot came from the same pack.
pub fn pack(version: &str, issued_at: SystemTime, ttl_secs: u64, marker: &str) -> Vec<u8> {
    format!(
        r#"{{
  "schema": "ccp.policy.v1",
  "version": "{version}",
  "issuedAt": "{issued}",
  "ttlSeconds": {ttl_secs},
  "routing": {{ "matchers": [ {{"pattern": "claude-*", "lane": "{marker}"}} ] }},
  "providers": {{
    "{marker}": {{"baseURL": "https://{marker}.example.com",
                 "authHeader": {{"mode": "x-api-key", "env": "KEY_{marker}"}}}} }},
  "fronting": {{ "allowlist": [ {{"hostport": "{marker}.example.com:443", "ttl": "P7D"}} ] }},
  "egress": {{ "direct": [ {{"hostport": "{marker}.example.net:22", "ttl": "PT8H"}} ] }}
}}
"#,
        issued = format_timestamp(issued_at)
    )
    .into_bytes()
}

/// Write `bytes` to `dir/name` and its signature to `dir/name.sig`.
pub fn write_signed(dir: &Path, name: &str, bytes: &[u8], key: &SigningKey) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::write(dir.join(format!("{name}.sig")), sign_bytes(key, bytes)).unwrap();
    p
}

/// A fresh key.
pub fn key() -> SigningKey {
    generate_key().unwrap()
}

/// Now, truncated to whole seconds (packs carry whole-second timestamps).
pub fn now() -> SystemTime {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs())
}

/// A port on 127.0.0.1 with nothing listening.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// === test CA and HTTPS file server ===

/// A test CA and a server certificate for `policy.test`.
pub struct TestPki {
    pub ca: CertificateDer<'static>,
    pub leaf: CertificateDer<'static>,
    pub leaf_key: PrivateKeyDer<'static>,
}

pub fn pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "enforcer policy test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params = CertificateParams::new(vec!["policy.test".to_owned()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    TestPki {
        ca: ca_cert.der().clone(),
        leaf: leaf.der().clone(),
        leaf_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

/// One request the server saw: path, If-None-Match, status answered.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub if_none_match: Option<String>,
    pub status: u16,
}

/// A static HTTPS file server on 127.0.0.1 with ETag support.
pub struct Site {
    pub addr: SocketAddr,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    pub hits: Arc<Mutex<Vec<Hit>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn etag(bytes: &[u8]) -> String {
    format!("\"{}\"", &sha256_hex(bytes)[..16])
}

impl Site {
    pub async fn start(pki: &TestPki) -> Site {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pki.leaf.clone()], pki.leaf_key.clone_key())
            .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let (f2, h2) = (files.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let (files, hits) = (f2.clone(), h2.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (files, hits) = (files.clone(), hits.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            let inm = req
                                .headers()
                                .get("if-none-match")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = files.lock().unwrap().get(&path).cloned();
                            let resp = match body {
                                None => Response::builder()
                                    .status(StatusCode::NOT_FOUND)
                                    .body(Full::new(Bytes::new())),
                                Some(b) if inm.as_deref() == Some(etag(&b).as_str()) => {
                                    Response::builder()
                                        .status(StatusCode::NOT_MODIFIED)
                                        .header("etag", etag(&b))
                                        .body(Full::new(Bytes::new()))
                                }
                                Some(b) => Response::builder()
                                    .header("etag", etag(&b))
                                    .body(Full::new(Bytes::from(b))),
                            }
                            .unwrap();
                            hits.lock().unwrap().push(Hit {
                                path,
                                if_none_match: inm,
                                status: resp.status().as_u16(),
                            });
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Site {
            addr,
            files,
            hits,
            task,
        }
    }

    /// Publish (or replace) a file.
    pub fn put(&self, path: &str, bytes: &[u8]) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_owned(), bytes.to_vec());
    }

    /// Publish a pack and its signature at `path` and `path.sig`.
    pub fn publish(&self, path: &str, bytes: &[u8], key: &SigningKey) {
        self.put(&format!("{path}.sig"), sign_bytes(key, bytes).as_bytes());
        self.put(path, bytes);
    }

    /// `https://policy.test:PORT{path}`; the name is pinned to 127.0.0.1 by [`Site::fetch_config`].
    pub fn url(&self, path: &str) -> String {
        format!("https://policy.test:{}{path}", self.addr.port())
    }

    /// Trust the test CA and pin `policy.test` to this server (never a real resolver).
    pub fn fetch_config(&self, pki: &TestPki) -> FetchConfig {
        let mut cfg = FetchConfig::new();
        cfg.add_extra_ca_der(pki.ca.clone()).unwrap();
        cfg.resolve
            .add_entry(&format!("policy.test:{}:127.0.0.1", self.addr.port()))
            .unwrap();
        cfg
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

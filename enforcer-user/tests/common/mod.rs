//! Helpers for the pack loader tests: the policy crate's pack helpers
//! (included from its tests) and a static HTTPS file server on 127.0.0.1
//! with a test CA (rcgen).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../policy/tests/common/mod.rs"]
mod packs;
pub use packs::*;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use enforcer::policy_source::FetchConfig;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use policy::signing::{SigningKey, sha256_hex, sign_bytes};
use proxy::net::resolve::{ResolveOverrides, Resolver, Upstream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

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
        let mut cfg = self.pinned_config();
        cfg.add_extra_ca_der(pki.ca.clone());
        cfg
    }

    /// `policy.test` pinned to this server, but its CA not trusted.
    pub fn pinned_config(&self) -> FetchConfig {
        let mut cfg = FetchConfig::new();
        let mut pins = ResolveOverrides::new();
        pins.add_entry(&format!("policy.test:{}:127.0.0.1", self.addr.port()))
            .unwrap();
        cfg.resolver = Resolver::new(
            pins,
            Upstream::System {
                timeout: Duration::from_secs(5),
            },
        );
        cfg
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

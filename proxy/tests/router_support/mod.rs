//! Shared pieces of the lane router's end-to-end tests: a test CA made with
//! rcgen, HTTPS mock providers on 127.x addresses (real rustls, real
//! hyper), a running in-process router ([`Harness`]) and a plain HTTP
//! client for it. Everything listens on loopback only; provider names
//! (`lane-a.test`, …) are pinned to 127.x with `--resolve`-style
//! overrides, never resolved.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::ffi::OsString;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use policy::{Origin, Snapshot, ValidationMode, format_timestamp, parse_pack};
use proxy::net::resolve::ResolveOverrides;
use proxy::net::resolve::{DnsClient, Resolver, Upstream};
use proxy::router::{CredentialSource, MemorySink, Router, RouterConfig, RouterEvent};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Generous bound for any single step of a test; reaching it is a failure.
pub const STEP: Duration = Duration::from_secs(30);

/// Awaits `f` or panics with `what` after [`STEP`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STEP:?}: {what}"))
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// === Pki ===

/// A test CA and one leaf certificate for a set of names and addresses.
pub struct Pki {
    /// The CA file (PEM) for `--extra-ca`, curl and Python.
    pub ca_file: PathBuf,
    /// The CA certificate (DER).
    pub ca_der: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    _dir: tempfile::TempDir,
}

impl Pki {
    /// A CA and a leaf valid for `sans` (DNS names or IP addresses).
    pub fn new(sans: &[&str]) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "enforcer router test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut leaf_params = rcgen::CertificateParams::new(sans).unwrap();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mock provider");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        Self {
            ca_file,
            ca_der: ca_cert.der().clone(),
            chain: vec![leaf.der().clone(), ca_cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
            _dir: dir,
        }
    }

    fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

// === MockBody ===

/// A mock provider's response body: complete, or fed through a channel.
/// When it is dropped (the router went away) `dropped` fires.
pub enum MockBody {
    Full(Option<Bytes>),
    Channel {
        rx: mpsc::Receiver<Bytes>,
        dropped: Option<oneshot::Sender<()>>,
    },
}

impl MockBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        Self::Full(Some(b.into()))
    }

    /// A streamed body; returns the feeding end and a receiver that fires
    /// when the body is dropped by the server (stream over or abandoned).
    pub fn channel() -> (Self, mpsc::Sender<Bytes>, oneshot::Receiver<()>) {
        let (tx, rx) = mpsc::channel(16);
        let (dtx, drx) = oneshot::channel();
        (
            Self::Channel {
                rx,
                dropped: Some(dtx),
            },
            tx,
            drx,
        )
    }
}

impl Drop for MockBody {
    fn drop(&mut self) {
        if let Self::Channel { dropped, .. } = self
            && let Some(d) = dropped.take()
        {
            let _ = d.send(());
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Channel { rx, .. } => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }
}

// === MockProvider ===

/// One request as the mock provider saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub authority: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

pub type Handler =
    Arc<dyn Fn(Recorded) -> Pin<Box<dyn Future<Output = Response<MockBody>> + Send>> + Send + Sync>;

/// Wraps a synchronous handler.
pub fn handler(f: impl Fn(Recorded) -> Response<MockBody> + Send + Sync + 'static) -> Handler {
    Arc::new(move |r| {
        let resp = f(r);
        Box::pin(async move { resp })
    })
}

/// A handler answering `200` with `{"served_by":NAME,"sha256":<body hash>}`.
pub fn echo(name: &'static str) -> Handler {
    handler(move |r| {
        json_response(
            200,
            &serde_json::json!({"served_by": name, "sha256": sha256_hex(&r.body), "len": r.body.len()})
                .to_string(),
        )
    })
}

pub fn json_response(status: u16, body: &str) -> Response<MockBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(MockBody::full(body.to_owned()))
        .unwrap()
}

/// An HTTPS mock provider on a 127.x address.
pub struct MockProvider {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// ALPN offers: h2 and http/1.1, or http/1.1 only.
pub const ALPN_H2: &[&[u8]] = &[b"h2", b"http/1.1"];
pub const ALPN_H1: &[&[u8]] = &[b"http/1.1"];

impl MockProvider {
    pub async fn start(ip: &str, pki: &Pki, alpn: &[&[u8]], handler: Handler) -> Self {
        let listener = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config(alpn));
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let connections: Arc<AtomicUsize> = Arc::default();
        let (reqs, conns) = (requests.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let reqs = reqs.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let reqs = reqs.clone();
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let authority = parts
                                .uri
                                .authority()
                                .map(|a| a.to_string())
                                .or_else(|| {
                                    parts
                                        .headers
                                        .get("host")
                                        .map(|h| h.to_str().unwrap().to_owned())
                                })
                                .unwrap_or_default();
                            let rec = Recorded {
                                method: parts.method.to_string(),
                                target: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                authority,
                                version: parts.version,
                                headers: parts.headers,
                                body,
                            };
                            reqs.lock().unwrap().push(rec.clone());
                            Ok::<_, Infallible>(handler(rec).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            requests,
            connections,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn last(&self) -> Recorded {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the mock provider received no request")
    }
}

// === packs ===

/// A pack JSON issued a minute ago, valid for a day.
pub fn pack(matchers: &str, providers: &str, extra: &str) -> String {
    let issued = format_timestamp(SystemTime::now() - Duration::from_secs(60));
    format!(
        r#"{{"schema":"ccp.policy.v1","version":"2025-01-01.1","issuedAt":"{issued}","ttlSeconds":86400,
        "routing":{{"matchers":{matchers}{extra}}},"providers":{providers}}}"#
    )
}

/// As [`pack`], with a `limits` object.
pub fn pack_with_limits(matchers: &str, providers: &str, limits: &str) -> String {
    let issued = format_timestamp(SystemTime::now() - Duration::from_secs(60));
    format!(
        r#"{{"schema":"ccp.policy.v1","version":"2025-01-01.1","issuedAt":"{issued}","ttlSeconds":86400,
        "routing":{{"matchers":{matchers}}},"providers":{providers},"limits":{limits}}}"#
    )
}

pub fn snapshot(json: &str) -> Arc<Snapshot> {
    let policy = parse_pack(json.as_bytes(), ValidationMode::Signed)
        .unwrap_or_else(|e| panic!("test pack invalid: {e}\n{json}"));
    Arc::new(Snapshot::new(
        Arc::new(policy),
        Origin::Fallback {
            reason: "test snapshot".into(),
        },
        Arc::from(Vec::new()),
        1,
    ))
}

// === Harness ===

/// How to start a router.
#[derive(Default)]
pub struct Options {
    /// `host:port:addr` pins.
    pub pins: Vec<String>,
    /// Extra CA (DER).
    pub extra_ca: Vec<CertificateDer<'static>>,
    /// Environment the router reads credentials from.
    pub env: Vec<(String, String)>,
    /// `$CREDENTIALS_DIRECTORY`.
    pub credentials_dir: Option<PathBuf>,
}

/// An in-process router on 127.0.0.1 with an in-memory audit sink.
pub struct Harness {
    pub addr: SocketAddr,
    pub sink: Arc<MemorySink>,
    pub policy: watch::Sender<Arc<Snapshot>>,
    pub router: Router,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub fn pin(host: &str, mock: &MockProvider) -> String {
    format!("{host}:{}:{}", mock.port(), mock.addr.ip())
}

impl Harness {
    pub async fn start(pack_json: &str, opts: Options) -> Self {
        let mut overrides = ResolveOverrides::new();
        for p in &opts.pins {
            overrides.add_entry(p).unwrap();
        }
        // Every provider name is pinned; any other lookup goes to a
        // loopback port where no DNS server listens, so it fails locally
        // and never reaches a real resolver.
        let resolver = Resolver::new(
            overrides,
            Upstream::Dns(
                DnsClient::new("127.0.0.1:9".parse().unwrap())
                    .with_timeout(Duration::from_millis(300), 1),
            ),
        );
        let env: HashMap<String, OsString> = opts
            .env
            .into_iter()
            .map(|(k, v)| (k, OsString::from(v)))
            .collect();
        let mut config =
            RouterConfig::new(resolver, CredentialSource::new(env, opts.credentials_dir));
        config.extra_ca = opts.extra_ca;
        let (tx, rx) = watch::channel(snapshot(pack_json));
        let sink = Arc::new(MemorySink::new(1000));
        let router = Router::new(config, rx, sink.clone()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let r = router.clone();
        let task = tokio::spawn(async move {
            r.serve_tcp(listener, async {
                let _ = stop_rx.await;
            })
            .await
        });
        Self {
            addr,
            sink,
            policy: tx,
            router,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// Signals shutdown; the returned handle resolves when `serve_tcp`
    /// has drained and returned.
    pub fn shutdown(&mut self) -> JoinHandle<std::io::Result<()>> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.take().expect("shut down twice")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn events(&self) -> Vec<RouterEvent> {
        self.sink.events()
    }

    /// Waits until the audit sink holds `n` events.
    pub async fn wait_events(&self, n: usize) -> Vec<RouterEvent> {
        within("audit events", async {
            loop {
                let e = self.sink.events();
                if e.len() >= n {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

// === client ===

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A plain HTTP/1.1 client for the router (hyper's pooled client).
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn post(url: &str, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

/// Sends `req` and reads the whole response.
pub async fn send(c: &TestClient, req: Request<Full<Bytes>>) -> (http::response::Parts, Bytes) {
    within("router response", async {
        let resp = c.request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        (parts, body.collect().await.unwrap().to_bytes())
    })
    .await
}

/// A `messages` request body for `model`.
pub fn messages_body(model: &str) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":16,"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

/// Parses an Anthropic error body: (error.type, error.message).
pub fn anthropic_error(body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    assert_eq!(v["type"], "error", "{v}");
    (
        v["error"]["type"].as_str().unwrap().to_owned(),
        v["error"]["message"].as_str().unwrap().to_owned(),
    )
}

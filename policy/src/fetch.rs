//! Fetching packs over HTTPS: hyper 1 over rustls (webpki roots plus an
//! optional extra CA), `If-None-Match`/`ETag`, bounded size and time, and
//! the `--resolve HOST:PORT:ADDR` override map honoured for every
//! connection (names in the map never reach a resolver).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::header::{ETAG, HOST, IF_NONE_MATCH, LOCATION, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;

use crate::host::{Host, HostError, normalize_host, parse_port, split_host_port};
use crate::model::MAX_PACK_BYTES;

/// Default limit for one whole fetch (connect, TLS, request, body).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed (https only).
const MAX_REDIRECTS: usize = 5;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not an `https://` URL we can fetch.
    #[error("`{url}` is not a usable https URL: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// Name resolution failed.
    #[error("cannot resolve {host}:{port}: {detail}")]
    Resolve {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Detail.
        detail: String,
    },
    /// TCP connect failed on every address.
    #[error("cannot connect to {host}:{port} ({detail})")]
    Connect {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Last error, per address.
        detail: String,
    },
    /// TLS handshake failed (certificate not trusted, wrong name, ...).
    #[error("TLS with {host} failed: {detail}")]
    Tls {
        /// Host.
        host: String,
        /// Detail.
        detail: String,
    },
    /// HTTP-level failure.
    #[error("HTTP request to {url} failed: {detail}")]
    Http {
        /// The URL.
        url: String,
        /// Detail.
        detail: String,
    },
    /// A status other than 200/304 (or a redirect).
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// Body larger than the limit.
    #[error("{url}: body larger than {max} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        max: usize,
    },
    /// The whole fetch took too long.
    #[error("{url}: no complete answer within {secs}s")]
    Timeout {
        /// The URL.
        url: String,
        /// The limit in seconds.
        secs: u64,
    },
    /// Too many redirects.
    #[error("{url}: more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects {
        /// The URL.
        url: String,
    },
    /// The extra CA file could not be used.
    #[error("extra CA {path}: {detail}")]
    Ca {
        /// The file.
        path: String,
        /// Detail.
        detail: String,
    },
}

// === impl ResolveOverrides ===

/// Why a `--resolve` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Not `HOST:PORT:ADDR`.
    #[error(
        "`{input}` is not HOST:PORT:ADDR (e.g. `policy.example.com:443:127.0.0.1` or `h:443:[::1]`)"
    )]
    Syntax {
        /// The entry as given.
        input: String,
    },
    /// The host part is invalid.
    #[error("`{input}`: {source}")]
    Host {
        /// The entry as given.
        input: String,
        /// What is wrong with the host.
        source: HostError,
    },
}

/// The `--resolve HOST:PORT:ADDR` map (like curl's): pins a name and port
/// to addresses for every connection made through it. Hosts are stored
/// normalised, so `Example.COM.` and `example.com` are one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolveOverrides {
    map: HashMap<(Host, u16), Vec<IpAddr>>,
}

impl ResolveOverrides {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one `HOST:PORT:ADDR` entry (ADDR may be bracketed IPv6); repeated
    /// entries for one HOST:PORT add addresses in order.
    pub fn add_entry(&mut self, entry: &str) -> Result<(), ResolveError> {
        let syntax = || ResolveError::Syntax {
            input: entry.to_owned(),
        };
        let (host, rest) = if entry.starts_with('[') {
            let close = entry.find(']').ok_or_else(syntax)?;
            (
                &entry[..=close],
                entry[close + 1..].strip_prefix(':').ok_or_else(syntax)?,
            )
        } else {
            entry.split_once(':').ok_or_else(syntax)?
        };
        let (port, addr) = rest.split_once(':').ok_or_else(syntax)?;
        let port = parse_port(port).ok_or_else(syntax)?;
        let addr = addr
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr);
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let host = normalize_host(host).map_err(|source| ResolveError::Host {
            input: entry.to_owned(),
            source,
        })?;
        self.insert(host, port, addr);
        Ok(())
    }

    /// Pin `host:port` to `addr` (appended to earlier addresses).
    pub fn insert(&mut self, host: Host, port: u16, addr: IpAddr) {
        self.map.entry((host, port)).or_default().push(addr);
    }

    /// The pinned addresses for a normalised host and port, if any.
    pub fn lookup(&self, host: &Host, port: u16) -> Option<&[IpAddr]> {
        self.map.get(&(host.clone(), port)).map(Vec::as_slice)
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

// === impl FetchConfig ===

/// TLS trust, resolver overrides and limits for pack fetches.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    roots: Arc<RootCertStore>,
    /// `--resolve` entries.
    pub resolve: ResolveOverrides,
    /// Limit for one whole fetch.
    pub timeout: Duration,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            roots: Arc::new(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            }),
            resolve: ResolveOverrides::default(),
            timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }
}

impl FetchConfig {
    /// Public web PKI roots (webpki-roots), no overrides, 30 s timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust the CA certificates in a PEM file too (`--extra-ca`). Returns
    /// how many were added.
    pub fn add_extra_ca_file(&mut self, path: &Path) -> Result<usize, FetchError> {
        let err = |detail: String| FetchError::Ca {
            path: path.display().to_string(),
            detail,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificates found".into()));
        }
        for c in &certs {
            self.add_extra_ca_der(c.clone())
                .map_err(|e| err(e.to_string()))?;
        }
        Ok(certs.len())
    }

    /// Trust one more CA certificate (DER).
    pub fn add_extra_ca_der(&mut self, cert: CertificateDer<'static>) -> Result<(), rustls::Error> {
        Arc::make_mut(&mut self.roots).add(cert)
    }

    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// What a fetch returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchResponse {
    /// `304 Not Modified` for the `If-None-Match` sent.
    NotModified,
    /// `200 OK`.
    Body {
        /// The body.
        bytes: Vec<u8>,
        /// The `ETag`, if the server sent one.
        etag: Option<String>,
    },
}

struct Target {
    host: Host,
    port: u16,
    authority: String,
    path_and_query: String,
}

fn parse_target(url: &str) -> Result<Target, FetchError> {
    let bad = |why: &str| FetchError::BadUrl {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("does not parse"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("only https:// is fetched"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?.as_str();
    if authority.contains('@') {
        return Err(bad("user info is not allowed"));
    }
    let (host_text, port) = split_host_port(authority).map_err(|e| bad(&e.to_string()))?;
    let host = normalize_host(host_text).map_err(|e| bad(&e.to_string()))?;
    Ok(Target {
        host,
        port: port.unwrap_or(443),
        authority: authority.to_owned(),
        path_and_query: uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into()),
    })
}

async fn resolve(t: &Target, cfg: &FetchConfig) -> Result<Vec<SocketAddr>, FetchError> {
    if let Some(addrs) = cfg.resolve.lookup(&t.host, t.port) {
        return Ok(addrs.iter().map(|a| SocketAddr::new(*a, t.port)).collect());
    }
    if let Some(ip) = t.host.ip() {
        return Ok(vec![SocketAddr::new(ip, t.port)]);
    }
    let name = t.host.to_string();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), t.port))
        .await
        .map_err(|e| FetchError::Resolve {
            host: name.clone(),
            port: t.port,
            detail: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(FetchError::Resolve {
            host: name,
            port: t.port,
            detail: "no addresses".into(),
        });
    }
    Ok(addrs)
}

async fn get_once(
    url: &str,
    if_none_match: Option<&str>,
    cfg: &FetchConfig,
) -> Result<Result<FetchResponse, String>, FetchError> {
    let t = parse_target(url)?;
    let addrs = resolve(&t, cfg).await?;
    let mut last = String::new();
    let mut tcp = None;
    for a in &addrs {
        match TcpStream::connect(a).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    let tcp = tcp.ok_or_else(|| FetchError::Connect {
        host: t.host.to_string(),
        port: t.port,
        detail: last,
    })?;
    let _ = tcp.set_nodelay(true);
    let tls_err = |detail: String| FetchError::Tls {
        host: t.host.to_string(),
        detail,
    };
    let server_name = match &t.host {
        Host::Ip(lit) => ServerName::IpAddress(lit.canonical().into()),
        Host::Domain(d) => {
            ServerName::try_from(d.as_str().to_owned()).map_err(|e| tls_err(e.to_string()))?
        }
    };
    let connector = tokio_rustls::TlsConnector::from(cfg.tls().map_err(tls_err)?);
    let tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| tls_err(e.to_string()))?;
    let http_err = |e: &dyn std::fmt::Display| FetchError::Http {
        url: url.to_owned(),
        detail: e.to_string(),
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
            .await
            .map_err(|e| http_err(&e))?;
    let driver = tokio::spawn(conn);
    let mut req = Request::get(t.path_and_query.as_str())
        .header(HOST, t.authority.as_str())
        .header(
            USER_AGENT,
            concat!("enforcer-policy/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(tag) = if_none_match {
        req = req.header(IF_NONE_MATCH, tag);
    }
    let req = req.body(Empty::new()).map_err(|e| http_err(&e))?;
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| http_err(&e))?;
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Ok(FetchResponse::NotModified));
        }
        if status.is_redirection() {
            let loc = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or(FetchError::Status {
                    url: url.to_owned(),
                    status: status.as_u16(),
                })?;
            return Ok(Err(absolutize(&t, loc)));
        }
        if status != StatusCode::OK {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let etag = resp
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = Limited::new(resp.into_body(), MAX_PACK_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge {
                        url: url.to_owned(),
                        max: MAX_PACK_BYTES,
                    }
                } else {
                    http_err(&e)
                }
            })?;
        Ok(Ok(FetchResponse::Body {
            bytes: body.to_bytes().to_vec(),
            etag,
        }))
    }
    .await;
    driver.abort();
    result
}

/// Resolve a `Location` against the request's URL.
fn absolutize(t: &Target, loc: &str) -> String {
    if loc.contains("://") {
        loc.to_owned()
    } else if loc.starts_with('/') {
        format!("https://{}{loc}", t.authority)
    } else {
        let base = t.path_and_query.split('?').next().unwrap_or("/");
        let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
        format!("https://{}{dir}{loc}", t.authority)
    }
}

/// GET an https URL, following up to 5 https redirects, with
/// `If-None-Match` when an ETag is given; bounded by `cfg.timeout` and
/// [`MAX_PACK_BYTES`].
pub async fn fetch(
    url: &str,
    if_none_match: Option<&str>,
    cfg: &FetchConfig,
) -> Result<FetchResponse, FetchError> {
    let work = async {
        let mut current = url.to_owned();
        for _ in 0..=MAX_REDIRECTS {
            match get_once(&current, if_none_match, cfg).await? {
                Ok(resp) => return Ok(resp),
                Err(next) => current = next,
            }
        }
        Err(FetchError::TooManyRedirects {
            url: url.to_owned(),
        })
    };
    tokio::time::timeout(cfg.timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(FetchError::Timeout {
                url: url.to_owned(),
                secs: cfg.timeout.as_secs(),
            })
        })
}

/// The signature URL for a pack URL: `.sig` appended to the path (before
/// any query).
pub fn signature_url(url: &str) -> String {
    match url.split_once('?') {
        Some((path, query)) => format!("{path}.sig?{query}"),
        None => format!("{url}.sig"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn resolve_entries() {
        let mut r = ResolveOverrides::new();
        r.add_entry("Policy.Example.com.:443:127.0.0.1").unwrap();
        r.add_entry("policy.example.com:443:[::1]").unwrap();
        r.add_entry("[::1]:8443:127.0.0.2").unwrap();
        let h = normalize_host("policy.example.com").unwrap();
        assert_eq!(
            r.lookup(&h, 443).unwrap(),
            &[
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert!(r.lookup(&h, 80).is_none());
        for bad in [
            "a:443",
            "a:x:127.0.0.1",
            "a:443:nothost",
            "a b:443:127.0.0.1",
            "a:0:127.0.0.1",
        ] {
            assert!(r.add_entry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        assert_eq!(signature_url("https://h/p.json"), "https://h/p.json.sig");
        assert_eq!(
            signature_url("https://h/p.json?v=1"),
            "https://h/p.json.sig?v=1"
        );
        assert!(matches!(
            parse_target("http://h/p"),
            Err(FetchError::BadUrl { .. })
        ));
        assert!(matches!(
            parse_target("https://u@h/p"),
            Err(FetchError::BadUrl { .. })
        ));
        let t = parse_target("https://H.example:8443/a/b.json").unwrap();
        assert_eq!((t.port, t.path_and_query.as_str()), (8443, "/a/b.json"));
        assert_eq!(absolutize(&t, "c.json"), "https://H.example:8443/a/c.json");
        assert_eq!(absolutize(&t, "/x"), "https://H.example:8443/x");
    }

    #[tokio::test]
    async fn closed_port_is_a_connect_error() {
        // Bind then drop to find a port with nothing listening on loopback.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = fetch(
            &format!("https://127.0.0.1:{port}/p.json"),
            None,
            &FetchConfig::new(),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, FetchError::Connect { .. }), "{e}");
    }
}

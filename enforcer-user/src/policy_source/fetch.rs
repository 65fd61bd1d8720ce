//! Fetching packs over HTTPS: hyper 1 over the daemon's one dial and TLS
//! trust ([`proxy::net`]: `--resolve` pins, `--dns-upstream` or the system
//! resolver, webpki roots plus `--extra-ca`), `If-None-Match`/`ETag`,
//! bounded size and time. The policy URL is the operator's choice, so its
//! addresses are not class-checked; the TLS certificate authenticates it.

use std::path::Path;
use std::time::Duration;

use http::header::{ETAG, HOST, IF_NONE_MATCH, LOCATION, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use policy::host::split_host_port;
use policy::model::MAX_PACK_BYTES;
use policy::{Host, normalize_host};
use proxy::net::dial::{AddressCheck, DialError, dial};
use proxy::net::resolve::Resolver;
use proxy::net::tls::{ALPN_HTTP11, TrustError, client_config, read_ca_file};
use rustls::pki_types::{CertificateDer, ServerName};

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
    /// Resolving or connecting failed.
    #[error("cannot connect to {host}:{port}: {source}")]
    Dial {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// What failed.
        #[source]
        source: DialError,
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
    /// The TLS trust could not be built (an unusable `--extra-ca`).
    #[error(transparent)]
    Trust(#[from] TrustError),
}

// === impl FetchConfig ===

/// Resolver, TLS trust and limits for pack fetches.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// The daemon's resolver (`--resolve` pins, `--dns-upstream`).
    pub resolver: Resolver,
    extra_ca: Vec<CertificateDer<'static>>,
    /// Limit for one whole fetch.
    pub timeout: Duration,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            resolver: Resolver::system(),
            extra_ca: Vec::new(),
            timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }
}

impl FetchConfig {
    /// The system resolver, public web PKI roots (webpki-roots), 30 s timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust the CA certificates in a PEM file too (`--extra-ca`). Returns
    /// how many were added.
    pub fn add_extra_ca_file(&mut self, path: &Path) -> Result<usize, FetchError> {
        let certs = read_ca_file(path)?;
        let count = certs.len();
        self.extra_ca.extend(certs);
        Ok(count)
    }

    /// Trust one more CA certificate (DER).
    pub fn add_extra_ca_der(&mut self, cert: CertificateDer<'static>) {
        self.extra_ca.push(cert);
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

async fn get_once(
    url: &str,
    if_none_match: Option<&str>,
    cfg: &FetchConfig,
) -> Result<Result<FetchResponse, String>, FetchError> {
    let t = parse_target(url)?;
    let tcp = dial(
        &cfg.resolver,
        &t.host,
        t.port,
        AddressCheck::Trusted,
        cfg.timeout,
    )
    .await
    .map_err(|source| FetchError::Dial {
        host: t.host.to_string(),
        port: t.port,
        source,
    })?
    .stream;
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
    let connector = tokio_rustls::TlsConnector::from(client_config(&cfg.extra_ca, ALPN_HTTP11)?);
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
        assert!(
            matches!(
                e,
                FetchError::Dial {
                    source: DialError::Connect { .. },
                    ..
                }
            ),
            "{e}"
        );
    }
}

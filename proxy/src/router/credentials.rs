//! Lane credentials: where their values come from and which one a request
//! carries upstream.
//!
//! A credential named `NAME` is read from `$CREDENTIALS_DIRECTORY/NAME`
//! (systemd `LoadCredential=`) when that file exists, else from the
//! daemon's environment variable `NAME`. Values are trimmed of surrounding
//! whitespace (credential files usually end in a newline), must be
//! non-empty and valid in an HTTP header. Found values are cached for the
//! router's life: both sources are fixed for a process (systemd sets
//! credentials at service start), so a rotated key takes a restart, as it
//! does for every other reader of them.
//!
//! Values only ever live in [`Secret`] (whose `Debug` is redacted) and in
//! header values marked sensitive; errors name the credential and where it
//! was looked for, never a value.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use policy::{Auth, AuthMode, CredentialName};

/// A credential value. `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Secret {
    fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// Where environment variables are read from.
#[derive(Debug, Clone)]
enum Env {
    /// The daemon's process environment, read at lookup time.
    Process,
    /// A fixed map (the daemon's environment captured elsewhere, or tests).
    Fixed(Arc<HashMap<String, OsString>>),
}

/// Why a credential could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Neither the credentials directory nor the environment has it.
    #[error(
        "credential {name} is not set: put it in the daemon's environment (variable {name}) or in {}",
        dir_hint(dir.as_deref(), name)
    )]
    Missing {
        /// The credential name.
        name: String,
        /// `$CREDENTIALS_DIRECTORY`, when set.
        dir: Option<PathBuf>,
    },
    /// The credential file exists but could not be read.
    #[error("credential {name}: cannot read {}: {detail}", path.display())]
    Unreadable {
        /// The credential name.
        name: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        detail: String,
    },
    /// The value is empty or not usable in a header.
    #[error("credential {name} (from {source_hint}) {what}")]
    Invalid {
        /// The credential name.
        name: String,
        /// `environment` or the file path.
        source_hint: String,
        /// What is wrong, never the value.
        what: &'static str,
    },
}

fn dir_hint(dir: Option<&Path>, name: &str) -> String {
    match dir {
        Some(d) => d.join(name).display().to_string(),
        None => format!("$CREDENTIALS_DIRECTORY/{name} (systemd LoadCredential=)"),
    }
}

/// Reads and caches lane credentials.
#[derive(Debug, Clone)]
pub struct CredentialSource {
    env: Env,
    dir: Option<PathBuf>,
    cache: Arc<RwLock<HashMap<String, Secret>>>,
}

impl CredentialSource {
    /// The daemon's own sources: `$CREDENTIALS_DIRECTORY` (if set) and the
    /// process environment.
    pub fn from_process() -> Self {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        Self {
            env: Env::Process,
            dir,
            cache: Arc::default(),
        }
    }

    /// Explicit sources: a fixed set of variables and an optional
    /// credentials directory (for a daemon that captured its environment,
    /// and for tests).
    pub fn new(env: HashMap<String, OsString>, dir: Option<PathBuf>) -> Self {
        Self {
            env: Env::Fixed(Arc::new(env)),
            dir,
            cache: Arc::default(),
        }
    }

    /// The credentials directory in use, if any.
    pub fn directory(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The value of credential `name`.
    pub fn lookup(&self, name: &CredentialName) -> Result<Secret, CredentialError> {
        let key = name.as_str();
        if let Ok(cache) = self.cache.read()
            && let Some(s) = cache.get(key)
        {
            return Ok(s.clone());
        }
        let secret = self.read(key)?;
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(key.to_owned(), secret.clone());
        }
        Ok(secret)
    }

    /// [`CredentialSource::lookup`] for the async data path: a cached value
    /// at once; a first read of `$CREDENTIALS_DIRECTORY/NAME` on the
    /// blocking pool, never on a runtime worker.
    pub async fn lookup_async(&self, name: &CredentialName) -> Result<Secret, CredentialError> {
        if let Ok(cache) = self.cache.read()
            && let Some(s) = cache.get(name.as_str())
        {
            return Ok(s.clone());
        }
        let source = self.clone();
        let owned = name.clone();
        match tokio::task::spawn_blocking(move || source.lookup(&owned)).await {
            Ok(result) => result,
            // The blocking task panicked or was cancelled: read inline rather
            // than serve the request without its credential.
            Err(_) => self.lookup(name),
        }
    }

    fn read(&self, name: &str) -> Result<Secret, CredentialError> {
        if let Some(dir) = &self.dir {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => return checked(name, &path.display().to_string(), bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(CredentialError::Unreadable {
                        name: name.to_owned(),
                        path,
                        detail: e.kind().to_string(),
                    });
                }
            }
        }
        let value = match &self.env {
            Env::Process => std::env::var_os(name),
            Env::Fixed(map) => map.get(name).cloned(),
        };
        match value {
            Some(v) => checked(name, "environment", v.into_encoded_bytes()),
            None => Err(CredentialError::Missing {
                name: name.to_owned(),
                dir: self.dir.clone(),
            }),
        }
    }
}

fn checked(name: &str, source_hint: &str, bytes: Vec<u8>) -> Result<Secret, CredentialError> {
    let invalid = |what| CredentialError::Invalid {
        name: name.to_owned(),
        source_hint: source_hint.to_owned(),
        what,
    };
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        return Err(invalid("is empty"));
    }
    if trimmed.iter().any(|b| *b < 0x20 || *b == 0x7f) {
        return Err(invalid(
            "contains control characters (not allowed in an HTTP header)",
        ));
    }
    Ok(Secret(Arc::from(trimmed)))
}

// === impl AuthPlan ===

/// Why no credential could be attached to a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The lane's credential is missing or unusable.
    #[error("lane `{lane}`: {source}")]
    Credential {
        /// The lane.
        lane: String,
        /// What is wrong with the credential.
        #[source]
        source: CredentialError,
    },
    /// A passthrough lane without `fallbackEnv` got a request without a credential.
    #[error(
        "lane `{lane}` forwards the client's own credential ({header}), and the request carried none; send one or set fallbackEnv in the lane's authHeader"
    )]
    NoClientCredential {
        /// The lane.
        lane: String,
        /// The header the lane expects from the client.
        header: &'static str,
    },
}

/// Where the credential header value came from (for logs; never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSource {
    /// The lane sends no credential (`mode: none`).
    None,
    /// The router injected the lane's credential.
    Injected,
    /// A passthrough lane forwarded the client's own credential.
    Client,
    /// A passthrough lane injected its `fallbackEnv` credential.
    Fallback,
}

impl AuthSource {
    /// Stable name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Injected => "injected",
            Self::Client => "client",
            Self::Fallback => "fallback",
        }
    }
}

/// The credential header a request carries upstream.
#[derive(Debug)]
pub struct AuthHeader {
    /// Header name and sensitive value, or `None` for `mode: none` lanes.
    pub header: Option<(HeaderName, HeaderValue)>,
    /// Where it came from.
    pub source: AuthSource,
}

fn header_name(mode: AuthMode) -> Option<HeaderName> {
    match mode {
        AuthMode::XApiKey => Some(HeaderName::from_static("x-api-key")),
        AuthMode::Bearer => Some(http::header::AUTHORIZATION),
        AuthMode::None => None,
    }
}

fn mode_str(mode: AuthMode) -> &'static str {
    match mode {
        AuthMode::XApiKey => "x-api-key",
        AuthMode::Bearer => "Authorization: Bearer",
        AuthMode::None => "none",
    }
}

fn injected(mode: AuthMode, secret: &Secret) -> Option<(HeaderName, HeaderValue)> {
    let name = header_name(mode)?;
    let raw = secret.expose();
    let value = match mode {
        AuthMode::Bearer => {
            let mut v = Vec::with_capacity(7 + raw.len());
            v.extend_from_slice(b"Bearer ");
            v.extend_from_slice(raw);
            HeaderValue::from_bytes(&v)
        }
        _ => HeaderValue::from_bytes(raw),
    };
    // `checked` refused every byte HeaderValue refuses, so this is `Some`.
    let mut value = value.ok()?;
    value.set_sensitive(true);
    Some((name, value))
}

/// The client's credential in one header: its `x-api-key`, or its
/// `Authorization` when that uses the Bearer scheme (never Basic or other
/// schemes).
fn client_header(mode: AuthMode, client: &HeaderMap) -> Option<(HeaderName, HeaderValue)> {
    let name = header_name(mode)?;
    let value = client.get(&name)?;
    let ok = match mode {
        AuthMode::Bearer => value
            .as_bytes()
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"bearer ")),
        _ => true,
    } && value.as_bytes().iter().any(|b| !b.is_ascii_whitespace());
    ok.then(|| {
        let mut v = value.clone();
        v.set_sensitive(true);
        (name, v)
    })
}

/// The client's own credential for a passthrough lane: the header the
/// lane's `mode` names, else the other Anthropic credential header, each
/// forwarded unchanged in its own header. Anthropic API keys travel in
/// `x-api-key` and OAuth tokens as `Authorization: Bearer`; an agent sends
/// one or the other depending on how it logged in, and rewriting one into
/// the other would only make the provider refuse it.
fn client_credential(mode: AuthMode, client: &HeaderMap) -> Option<(HeaderName, HeaderValue)> {
    let other = match mode {
        AuthMode::Bearer => AuthMode::XApiKey,
        AuthMode::XApiKey => AuthMode::Bearer,
        AuthMode::None => return None,
    };
    client_header(mode, client).or_else(|| client_header(other, client))
}

/// Decides the credential header for a request to `lane` (reads credential
/// values through `creds`, off the runtime's workers; otherwise pure).
pub async fn plan_auth(
    lane: &str,
    auth: &Auth,
    client: &HeaderMap,
    creds: &CredentialSource,
) -> Result<AuthHeader, AuthError> {
    let lookup = async |name: &CredentialName| {
        creds
            .lookup_async(name)
            .await
            .map_err(|source| AuthError::Credential {
                lane: lane.to_owned(),
                source,
            })
    };
    match auth {
        Auth::None => Ok(AuthHeader {
            header: None,
            source: AuthSource::None,
        }),
        Auth::Inject { header, credential } => {
            let secret = lookup(credential).await?;
            Ok(AuthHeader {
                header: injected(*header, &secret),
                source: AuthSource::Injected,
            })
        }
        Auth::Passthrough { header, fallback } => {
            if let Some(found) = client_credential(*header, client) {
                return Ok(AuthHeader {
                    header: Some(found),
                    source: AuthSource::Client,
                });
            }
            match fallback {
                Some(name) => {
                    let secret = lookup(name).await?;
                    Ok(AuthHeader {
                        header: injected(*header, &secret),
                        source: AuthSource::Fallback,
                    })
                }
                None => Err(AuthError::NoClientCredential {
                    lane: lane.to_owned(),
                    header: mode_str(*header),
                }),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn name(s: &str) -> CredentialName {
        CredentialName::parse(s).unwrap()
    }

    fn source(env: &[(&str, &str)], dir: Option<PathBuf>) -> CredentialSource {
        CredentialSource::new(
            env.iter()
                .map(|(k, v)| (k.to_string(), OsString::from(v)))
                .collect(),
            dir,
        )
    }

    #[test]
    fn directory_wins_over_environment_and_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ZAI_API_KEY"), "from-file\n").unwrap();
        let s = source(
            &[("ZAI_API_KEY", "from-env"), ("OTHER", " other ")],
            Some(dir.path().into()),
        );
        assert_eq!(
            s.lookup(&name("ZAI_API_KEY")).unwrap().expose(),
            b"from-file"
        );
        assert_eq!(s.lookup(&name("OTHER")).unwrap().expose(), b"other");
    }

    #[test]
    fn missing_names_the_variable_and_the_file() {
        let s = source(&[], Some("/run/credentials/enforcer.service".into()));
        let err = s.lookup(&name("ZAI_API_KEY")).unwrap_err().to_string();
        assert!(err.contains("ZAI_API_KEY"), "{err}");
        assert!(
            err.contains("/run/credentials/enforcer.service/ZAI_API_KEY"),
            "{err}"
        );
        let s = source(&[], None);
        let err = s.lookup(&name("ZAI_API_KEY")).unwrap_err().to_string();
        assert!(err.contains("$CREDENTIALS_DIRECTORY/ZAI_API_KEY"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_without_showing_them() {
        let s = source(&[("EMPTY", "  \n"), ("CTRL", "abc\rdef-secret")], None);
        assert!(matches!(
            s.lookup(&name("EMPTY")),
            Err(CredentialError::Invalid { .. })
        ));
        let err = s.lookup(&name("CTRL")).unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = source(&[("K", "sk-very-secret")], None);
        let dbg = format!("{:?}", s.lookup(&name("K")).unwrap());
        assert!(!dbg.contains("sk-very"), "{dbg}");
    }

    fn client(headers: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[tokio::test]
    async fn inject_uses_the_lane_credential_never_the_clients() {
        let creds = source(&[("A", "lane-a-key"), ("B", "lane-b-key")], None);
        let c = client(&[
            ("authorization", "Bearer client"),
            ("x-api-key", "client-key"),
        ]);
        let a = plan_auth(
            "a",
            &Auth::Inject {
                header: AuthMode::XApiKey,
                credential: name("A"),
            },
            &c,
            &creds,
        )
        .await
        .unwrap();
        let (n, v) = a.header.unwrap();
        assert_eq!(n, "x-api-key");
        assert_eq!(v, "lane-a-key");
        assert!(v.is_sensitive());
        assert_eq!(a.source, AuthSource::Injected);
        let b = plan_auth(
            "b",
            &Auth::Inject {
                header: AuthMode::Bearer,
                credential: name("B"),
            },
            &c,
            &creds,
        )
        .await
        .unwrap();
        let (n, v) = b.header.unwrap();
        assert_eq!(n, "authorization");
        assert_eq!(v, "Bearer lane-b-key");
    }

    #[tokio::test]
    async fn missing_lane_credential_is_an_error_not_an_unauthenticated_request() {
        let creds = source(&[], None);
        let err = plan_auth(
            "zai",
            &Auth::Inject {
                header: AuthMode::XApiKey,
                credential: name("ZAI_API_KEY"),
            },
            &HeaderMap::new(),
            &creds,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("lane `zai`"), "{err}");
        assert!(err.contains("ZAI_API_KEY"), "{err}");
    }

    #[tokio::test]
    async fn passthrough_forwards_the_clients_bearer_else_the_fallback() {
        let creds = source(&[("FB", "fallback-token")], None);
        let auth = Auth::Passthrough {
            header: AuthMode::Bearer,
            fallback: Some(name("FB")),
        };
        let got = plan_auth(
            "p",
            &auth,
            &client(&[("authorization", "Bearer mine")]),
            &creds,
        )
        .await
        .unwrap();
        assert_eq!(got.source, AuthSource::Client);
        assert_eq!(got.header.unwrap().1, "Bearer mine");
        // A client that sent only an x-api-key has it forwarded as is.
        let got = plan_auth("p", &auth, &client(&[("x-api-key", "k")]), &creds)
            .await
            .unwrap();
        assert_eq!(got.source, AuthSource::Client);
        assert_eq!(
            got.header.unwrap(),
            (
                HeaderName::from_static("x-api-key"),
                HeaderValue::from_static("k")
            )
        );
        // The mode's header wins when the client sent both.
        let got = plan_auth(
            "p",
            &auth,
            &client(&[("x-api-key", "k"), ("authorization", "Bearer mine")]),
            &creds,
        )
        .await
        .unwrap();
        assert_eq!(got.header.unwrap().1, "Bearer mine");
        // No credential: the fallback. Basic auth is not a credential here.
        let got = plan_auth("p", &auth, &HeaderMap::new(), &creds)
            .await
            .unwrap();
        assert_eq!(got.source, AuthSource::Fallback);
        assert_eq!(got.header.unwrap().1, "Bearer fallback-token");
        let got = plan_auth(
            "p",
            &auth,
            &client(&[("authorization", "Basic eA==")]),
            &creds,
        )
        .await
        .unwrap();
        assert_eq!(got.source, AuthSource::Fallback);
        let no_fallback = Auth::Passthrough {
            header: AuthMode::Bearer,
            fallback: None,
        };
        assert!(matches!(
            plan_auth("p", &no_fallback, &HeaderMap::new(), &creds).await,
            Err(AuthError::NoClientCredential { .. })
        ));
        let x = Auth::Passthrough {
            header: AuthMode::XApiKey,
            fallback: None,
        };
        let got = plan_auth("p", &x, &client(&[("x-api-key", "mine")]), &creds)
            .await
            .unwrap();
        assert_eq!(
            got.header.unwrap(),
            (
                HeaderName::from_static("x-api-key"),
                HeaderValue::from_static("mine")
            )
        );
    }

    #[tokio::test]
    async fn mode_none_sends_nothing() {
        let got = plan_auth(
            "n",
            &Auth::None,
            &client(&[("authorization", "Bearer x")]),
            &source(&[], None),
        )
        .await
        .unwrap();
        assert!(got.header.is_none());
    }
}

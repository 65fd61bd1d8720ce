//! Loading packs from a file or an `https://` URL, verifying them, caching
//! the last good one in the state directory, falling back to the embedded
//! pack, and refreshing on an interval.
//!
//! At start the candidates are, in order: the configured source, the cached
//! last good pack, the embedded fallback (with a warning). The cached pack,
//! when its signature verifies, also sets the rollback floor even if it has
//! expired, so a restart cannot be used to roll back. Every refusal leaves
//! the active policy in place and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use policy::signing::{VerifyingKey, sha256_hex, signature_path, verify_bytes};
use policy::store::{Candidate, Offered, PolicyStore, Refusal};
use policy::tools::write_atomic;
use policy::{Grant, Origin, PackError, Snapshot, ValidationMode, parse_pack};

use super::fetch::{FetchConfig, FetchResponse, fetch, signature_url};

/// File name of the cached pack inside the state directory.
pub const CACHE_PACK: &str = "policy.pack.json";
/// File name of the cached signature inside the state directory.
pub const CACHE_SIG: &str = "policy.pack.json.sig";

/// Where a pack comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackSource {
    /// A local file.
    File(PathBuf),
    /// An `https://` URL.
    Url(String),
}

impl PackSource {
    /// `https://...` is a URL; `http://` is refused; anything else is a path.
    pub fn parse(s: &str) -> Result<PackSource, LoaderError> {
        if s.starts_with("https://") {
            Ok(PackSource::Url(s.to_owned()))
        } else if s.starts_with("http://") {
            Err(LoaderError::PlainHttp { url: s.to_owned() })
        } else if s.is_empty() {
            Err(LoaderError::EmptySource)
        } else {
            Ok(PackSource::File(PathBuf::from(s)))
        }
    }

    /// The default signature location: `PACK.sig` / `URL.sig`.
    pub fn default_signature(&self) -> PackSource {
        match self {
            PackSource::File(p) => PackSource::File(signature_path(p)),
            PackSource::Url(u) => PackSource::Url(signature_url(u)),
        }
    }
}

impl std::fmt::Display for PackSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PackSource::File(p) => write!(f, "{}", p.display()),
            PackSource::Url(u) => f.write_str(u),
        }
    }
}

/// Why the loader could not be set up (never why a pack was refused: that
/// is a [`Refusal`], and the loader falls back instead).
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// `http://` source.
    #[error("`{url}`: packs are fetched over https:// only")]
    PlainHttp {
        /// The URL.
        url: String,
    },
    /// Empty `--policy`.
    #[error("--policy is empty; give a file path or an https:// URL")]
    EmptySource,
    /// Bad `--policy-sha256`.
    #[error("pinned SHA-256 `{pin}` is not 64 hex digits")]
    BadPin {
        /// The pin as given.
        pin: String,
    },
    /// The embedded fallback does not validate (a build defect).
    #[error("embedded fallback pack is invalid: {0}")]
    Fallback(#[from] PackError),
}

/// Loader settings (the daemon maps its flags onto these).
#[derive(Debug, Clone, Default)]
pub struct LoaderConfig {
    /// `--policy FILE|URL`; `None`: cache, else fallback.
    pub source: Option<PackSource>,
    /// Signature location; default `PACK.sig` / `URL.sig`.
    pub signature: Option<PackSource>,
    /// Trusted keys (`--policy-pubkey`, repeatable: rotation).
    pub trusted_keys: Vec<VerifyingKey>,
    /// Pinned SHA-256 of the pack bytes (lowercase hex), checked in addition to the signature.
    pub pinned_sha256: Option<String>,
    /// `--policy-refresh`; `None`: load once (and on [`Loader::refresh`]).
    pub refresh: Option<Duration>,
    /// `--state-dir`: where the last good pack is cached.
    pub state_dir: Option<PathBuf>,
    /// TLS trust and `--resolve` map for URL sources.
    pub fetch: FetchConfig,
    /// Runtime grants to start with (the daemon persists them).
    pub grants: Vec<Grant>,
}

/// What one refresh did.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// A new pack is active.
    Applied(Arc<Snapshot>),
    /// The source holds the active pack (or answered 304).
    Unchanged,
    /// Nothing to refresh from (no source configured).
    NoSource,
    /// The source's pack was refused; the active policy stays.
    Refused(Refusal),
}

/// What happened at start.
#[derive(Debug)]
pub struct StartReport {
    /// The snapshot now active.
    pub snapshot: Arc<Snapshot>,
    /// Every candidate refused on the way, in order.
    pub refusals: Vec<Refusal>,
}

/// Loads, verifies, caches and refreshes packs into a [`PolicyStore`].
#[derive(Debug)]
pub struct Loader {
    config: LoaderConfig,
    store: Arc<PolicyStore>,
    etag: Mutex<Option<String>>,
}

impl Loader {
    /// Build the store and load the first policy (source, else cache, else
    /// fallback with a warning).
    pub async fn start(
        config: LoaderConfig,
        now: SystemTime,
    ) -> Result<(Loader, StartReport), LoaderError> {
        if let Some(pin) = &config.pinned_sha256
            && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(LoaderError::BadPin { pin: pin.clone() });
        }
        let store = Arc::new(PolicyStore::with_fallback(
            "no signed pack loaded yet",
            config.grants.clone(),
        )?);
        let loader = Loader {
            config,
            store,
            etag: Mutex::new(None),
        };
        let mut refusals = Vec::new();

        let cached = match loader.read_cache() {
            Some(Ok(c)) => {
                loader.store.raise_floor(&c.policy.version, &c.sha256);
                Some(c)
            }
            Some(Err(r)) => {
                refusals.push(r);
                None
            }
            None => None,
        };

        let mut active = false;
        if loader.config.source.is_some() {
            match loader.refresh(now).await {
                RefreshOutcome::Applied(_) | RefreshOutcome::Unchanged => active = true,
                RefreshOutcome::Refused(r) => refusals.push(r),
                RefreshOutcome::NoSource => {}
            }
        }
        if !active && let Some(c) = cached {
            match loader.store.offer(&c, now) {
                Ok(_) => active = true,
                Err(r) => refusals.push(r),
            }
        }
        if !active {
            let reason = if refusals.is_empty() {
                if loader.config.source.is_none() {
                    "no --policy given and no cached pack".to_owned()
                } else {
                    "no pack verified".to_owned()
                }
            } else {
                refusals
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            loader.store.use_fallback(&reason)?;
        }
        let snapshot = loader.store.current();
        Ok((loader, StartReport { snapshot, refusals }))
    }

    /// The store the loader feeds (share it with the proxy, router and map writer).
    pub fn store(&self) -> &Arc<PolicyStore> {
        &self.store
    }

    fn keys(&self) -> &[VerifyingKey] {
        &self.config.trusted_keys
    }

    /// Verify signature, pin and validity of pack bytes into a candidate.
    fn candidate(
        &self,
        source: &str,
        sig_location: &str,
        bytes: Vec<u8>,
        sig: Result<Vec<u8>, String>,
    ) -> Result<Candidate, Refusal> {
        let sha256 = sha256_hex(&bytes);
        if let Some(pin) = &self.config.pinned_sha256
            && !pin.eq_ignore_ascii_case(&sha256)
        {
            return Err(Refusal::PinMismatch {
                pack: source.to_owned(),
                expected: pin.to_ascii_lowercase(),
                actual: sha256,
            });
        }
        let sig = sig.map_err(|detail| Refusal::Unsigned {
            pack: source.to_owned(),
            location: sig_location.to_owned(),
            detail,
        })?;
        let key_id =
            verify_bytes(self.keys(), &bytes, &sig, Path::new(sig_location)).map_err(|error| {
                Refusal::BadSignature {
                    pack: source.to_owned(),
                    error,
                }
            })?;
        let policy =
            parse_pack(&bytes, ValidationMode::Signed).map_err(|error| Refusal::Invalid {
                pack: source.to_owned(),
                error,
            })?;
        Ok(Candidate {
            policy: Arc::new(policy),
            bytes: bytes.into(),
            signature: sig.into(),
            sha256,
            key_id,
            source: source.to_owned(),
        })
    }

    fn cache_paths(&self) -> Option<(PathBuf, PathBuf)> {
        let dir = self.config.state_dir.as_ref()?;
        Some((dir.join(CACHE_PACK), dir.join(CACHE_SIG)))
    }

    /// The cached pack, verified (not judged): `None` when there is none.
    fn read_cache(&self) -> Option<Result<Candidate, Refusal>> {
        let (pack, sig) = self.cache_paths()?;
        let bytes = std::fs::read(&pack).ok()?;
        let sig_bytes = std::fs::read(&sig).map_err(|e| e.to_string());
        let source = format!("cache:{}", pack.display());
        Some(self.candidate(&source, &sig.display().to_string(), bytes, sig_bytes))
    }

    fn write_cache(&self, c: &Candidate) {
        let Some((pack, sig)) = self.cache_paths() else {
            return;
        };
        let result = (|| {
            if let Some(dir) = pack.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Signature first: a crash between the two leaves a pack whose
            // signature does not match, which is refused, never trusted.
            write_atomic(&sig, &c.signature)?;
            write_atomic(&pack, &c.bytes)
        })();
        if let Err(e) = result {
            tracing::warn!(path = %pack.display(), error = %e, "could not cache the policy pack");
        }
    }

    async fn read_source(
        &self,
        src: &PackSource,
        etag: Option<&str>,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, Refusal> {
        let source = src.to_string();
        match src {
            PackSource::File(p) => {
                std::fs::read(p)
                    .map(|b| Some((b, None)))
                    .map_err(|e| Refusal::Unavailable {
                        pack: source,
                        detail: e.to_string(),
                    })
            }
            PackSource::Url(u) => match fetch(u, etag, &self.config.fetch).await {
                Ok(FetchResponse::NotModified) => Ok(None),
                Ok(FetchResponse::Body { bytes, etag }) => Ok(Some((bytes, etag))),
                Err(e) => Err(Refusal::Unavailable {
                    pack: source,
                    detail: e.to_string(),
                }),
            },
        }
    }

    async fn read_signature(&self, loc: &PackSource) -> Result<Vec<u8>, String> {
        match loc {
            PackSource::File(p) => std::fs::read(p).map_err(|e| e.to_string()),
            PackSource::Url(u) => match fetch(u, None, &self.config.fetch).await {
                Ok(FetchResponse::Body { bytes, .. }) => Ok(bytes),
                Ok(FetchResponse::NotModified) => Err("unexpected 304".into()),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    /// Load the source once: fetch (with `If-None-Match`), verify, judge,
    /// swap and cache. A refused pack leaves the active policy in place.
    /// Also switches to the fallback if the active pack has expired and
    /// nothing fresh verified.
    pub async fn refresh(&self, now: SystemTime) -> RefreshOutcome {
        let outcome = self.refresh_source(now).await;
        match &outcome {
            RefreshOutcome::Refused(r) => {
                tracing::warn!(decision = "policy_refused", reason = %r, "policy pack refused; the active policy stays");
            }
            RefreshOutcome::Applied(_) | RefreshOutcome::Unchanged | RefreshOutcome::NoSource => {}
        }
        if let Err(e) = self.store.expire(now) {
            tracing::error!(error = %e, "embedded fallback pack is invalid");
        }
        outcome
    }

    async fn refresh_source(&self, now: SystemTime) -> RefreshOutcome {
        let Some(src) = &self.config.source else {
            return RefreshOutcome::NoSource;
        };
        let etag = self.etag.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (bytes, new_etag) = match self.read_source(src, etag.as_deref()).await {
            Ok(Some(b)) => b,
            Ok(None) => return RefreshOutcome::Unchanged,
            Err(r) => return RefreshOutcome::Refused(r),
        };
        if let Origin::Signed { sha256, .. } = self.store.current().origin()
            && *sha256 == sha256_hex(&bytes)
        {
            self.set_etag(new_etag);
            return RefreshOutcome::Unchanged;
        }
        let sig_loc = self
            .config
            .signature
            .clone()
            .unwrap_or_else(|| src.default_signature());
        let sig = self.read_signature(&sig_loc).await;
        let candidate = match self.candidate(&src.to_string(), &sig_loc.to_string(), bytes, sig) {
            Ok(c) => c,
            Err(r) => return RefreshOutcome::Refused(r),
        };
        match self.store.offer(&candidate, now) {
            Ok(Offered::Applied(snap)) => {
                self.set_etag(new_etag);
                self.write_cache(&candidate);
                RefreshOutcome::Applied(snap)
            }
            Ok(Offered::Unchanged) => RefreshOutcome::Unchanged,
            Err(r) => RefreshOutcome::Refused(r),
        }
    }

    fn set_etag(&self, etag: Option<String>) {
        *self.etag.lock().unwrap_or_else(|e| e.into_inner()) = etag;
    }

    /// Run forever: refresh every `refresh` interval, and at the active
    /// pack's expiry (then switch to the fallback if nothing fresh
    /// verifies). Cancel by dropping or aborting the task.
    pub async fn run(&self) {
        loop {
            let now = SystemTime::now();
            let until_expiry = self
                .store
                .current()
                .expires_at()
                .map(|t| t.duration_since(now).unwrap_or(Duration::ZERO));
            let wait = match (self.config.refresh, until_expiry) {
                (Some(r), Some(e)) => r.min(e),
                (Some(r), None) => r,
                (None, Some(e)) => e,
                (None, None) => Duration::from_secs(3600),
            };
            tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
            let _ = self.refresh(SystemTime::now()).await;
        }
    }
}

//! The checked policy: what the proxy, the lane router and the map writer
//! consume. Built only by [`Policy::from_raw`] / [`parse_pack`], so every
//! invariant below holds wherever a `Policy` exists: lane names exist,
//! patterns parse, URLs are https, durations are positive, limits are
//! non-zero.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::addr::{Cidr, private_ranges};
use crate::api_route::ApiRoute;
use crate::duration::{format_duration, parse_duration};
use crate::host::{Host, HostPort, HostPortPattern, normalize_host};
use crate::raw::{self, PackFile, SCHEMA_ID};
use crate::timestamp::{format_timestamp, parse_timestamp};
use crate::unix::UnixSocketPattern;
use crate::version::Version;

pub use crate::raw::{
    AuthMode, BwrapNet, DnsMode, EgressMode, LoggingMode, LoopbackMode, SeccompProfile,
};

/// Largest pack accepted from any source (bytes).
pub const MAX_PACK_BYTES: usize = 4 * 1024 * 1024;

/// Syscalls in the `baseline-blocklist` seccomp profile (DESIGN §8); the
/// only names `sandboxLinux.seccomp.exceptions` may list.
pub const BASELINE_BLOCKLIST: &[&str] = &[
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "clone",
    "clone3",
    "setns",
    "bpf",
    "perf_event_open",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "keyctl",
    "add_key",
    "request_key",
    "open_by_handle_at",
    "name_to_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "ioctl",
];

/// Headers the router always strips from client requests (credential-bearing).
pub const BUILTIN_STRIPPED_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "cookie",
    "proxy-authorization",
];

/// How strictly a pack is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationMode {
    /// A pack that will be signed and published: `ttlSeconds` is required.
    Signed,
    /// The embedded fallback pack: no lifetime (`issuedAt`/`ttlSeconds`
    /// absent) and no entry TTLs; it never expires.
    Embedded,
}

// === impl PackError ===

/// One thing wrong with a pack: where (JSON path) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// JSON path, e.g. `fronting.allowlist[0].hostport` (`.` for the top level).
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", display_path(&self.path), self.message)
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() || path == "." {
        "(top level)"
    } else {
        path
    }
}

/// Why a pack could not be read or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    /// Larger than [`MAX_PACK_BYTES`].
    #[error("pack is {size} bytes; the limit is {max} bytes")]
    TooLarge {
        /// Size seen.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON, or JSON of the wrong shape (unknown field, wrong type,
    /// missing field, unknown enum value).
    #[error("{}: {message}", display_path(path))]
    Shape {
        /// JSON path of the offending value (`.` for the top level).
        path: String,
        /// serde's message, with line and column.
        message: String,
    },
    /// Well-formed JSON whose values are invalid; every problem is listed.
    #[error("{}", list_problems(problems))]
    Invalid {
        /// All problems found.
        problems: Vec<Problem>,
    },
}

fn list_problems(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut s = format!("{} problems:", many.len());
            for p in many {
                s.push_str("\n  - ");
                s.push_str(&p.to_string());
            }
            s
        }
    }
}

impl PackError {
    /// All problems as (path, message) pairs, whatever the variant.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            PackError::TooLarge { .. } => vec![Problem {
                path: ".".into(),
                message: self.to_string(),
            }],
            PackError::Shape { path, message } => vec![Problem {
                path: path.clone(),
                message: message.clone(),
            }],
            PackError::Invalid { problems } => problems.clone(),
        }
    }
}

/// Parse JSON into the raw pack, refusing unknown fields with their path.
pub fn parse_raw(bytes: &[u8]) -> Result<PackFile, PackError> {
    if bytes.len() > MAX_PACK_BYTES {
        return Err(PackError::TooLarge {
            size: bytes.len(),
            max: MAX_PACK_BYTES,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let raw: PackFile = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        PackError::Shape {
            path,
            message: e.into_inner().to_string(),
        }
    })?;
    de.end().map_err(|e| PackError::Shape {
        path: ".".into(),
        message: e.to_string(),
    })?;
    Ok(raw)
}

/// Parse and validate a pack in one step.
pub fn parse_pack(bytes: &[u8], mode: ValidationMode) -> Result<Policy, PackError> {
    Policy::from_raw(&parse_raw(bytes)?, mode)
}

// === impl Policy ===

/// A validated policy pack.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Pack version (rollback ordering in [`Version`]).
    pub version: Version,
    /// `issuedAt`, if present (required before a signed pack is activated).
    pub issued_at: Option<SystemTime>,
    /// `ttlSeconds` as a duration (`None` only for the embedded fallback).
    pub ttl: Option<Duration>,
    /// Lane routing.
    pub routing: Routing,
    /// Providers (lanes) by name.
    pub providers: BTreeMap<String, Provider>,
    /// Proxy rules.
    pub fronting: Fronting,
    /// Kernel egress rules.
    pub egress: Egress,
    /// Limits.
    pub limits: Limits,
    /// Audit logging mode.
    pub logging: LoggingMode,
    /// Sandbox settings.
    pub sandbox: Sandbox,
}

impl Policy {
    /// Check a raw pack into a policy, collecting every problem with its path.
    pub fn from_raw(raw: &PackFile, mode: ValidationMode) -> Result<Policy, PackError> {
        let mut v = Validator::default();
        let policy = v.policy(raw, mode);
        match policy {
            Some(p) if v.problems.is_empty() => Ok(p),
            _ => Err(PackError::Invalid {
                problems: v.problems,
            }),
        }
    }

    /// When the pack itself stops being valid (`issuedAt + ttlSeconds`);
    /// `None` for packs without both (the embedded fallback).
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.issued_at?.checked_add(self.ttl?)
    }

    /// The lane for a request's `model`: the first matching matcher.
    pub fn route(&self, model: &str) -> Option<(&Matcher, &Provider)> {
        self.routing
            .matchers
            .iter()
            .find(|m| m.pattern.matches(model))
            .and_then(|m| self.providers.get(&m.lane).map(|p| (m, p)))
    }

    /// Non-fatal observations for `lint`: weakened checks, missing
    /// `issuedAt`, a pack already expired at `now`.
    pub fn warnings(&self, now: SystemTime) -> Vec<Problem> {
        let mut w = Vec::new();
        let mut warn = |path: &str, message: String| {
            w.push(Problem {
                path: path.into(),
                message,
            })
        };
        if self.issued_at.is_none() && self.ttl.is_some() {
            warn(
                "issuedAt",
                "missing; `enforcer policy sign` will stamp the signing time".into(),
            );
        }
        if let Some(exp) = self.expires_at()
            && exp <= now
        {
            warn(
                "ttlSeconds",
                format!(
                    "the pack expired at {} (issuedAt + ttlSeconds); it would be refused as the active policy",
                    format_timestamp(exp)
                ),
            );
        }
        let f = &self.fronting;
        for (flag, on, path) in [
            ("requireSNI", f.require_sni, "fronting.requireSNI"),
            (
                "requireHostEqSNI",
                f.require_host_eq_sni,
                "fronting.requireHostEqSNI",
            ),
            (
                "blockIPLiteral",
                f.block_ip_literal,
                "fronting.blockIPLiteral",
            ),
        ] {
            if !on {
                warn(
                    path,
                    format!("{flag} is false: this weakens the proxy's checks"),
                );
            }
        }
        if f.allow_ech {
            warn(
                "fronting.allowECH",
                "ECH ClientHellos pass on their outer SNI alone; the real destination is hidden"
                    .into(),
            );
        }
        if self.sandbox.seccomp == SeccompProfile::Off {
            warn("sandboxLinux.seccomp.profile", "seccomp is off".into());
        }
        w
    }
}

/// Lane routing.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Ordered matchers; the first match wins.
    pub matchers: Vec<Matcher>,
    /// Lowercased extra header names to strip (on top of [`BUILTIN_STRIPPED_HEADERS`]).
    pub strip_headers: Vec<String>,
}

/// A routing rule whose lane is known to exist.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    /// The model glob.
    pub pattern: ModelPattern,
    /// The provider name (a key of [`Policy::providers`]).
    pub lane: String,
}

/// A model-name glob: `*` matches any run of characters (including none),
/// everything else matches itself (case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPattern(String);

impl ModelPattern {
    /// Check a glob: 1..=256 printable ASCII characters without spaces.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| ModelPattern(s.to_owned()))
    }

    /// The glob text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `model` matches.
    pub fn matches(&self, model: &str) -> bool {
        glob_match(self.0.as_bytes(), model.as_bytes())
    }
}

impl fmt::Display for ModelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Iterative `*` glob match with single backtrack point (linear-ish time).
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

/// An upstream provider (lane).
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    /// The lane name.
    pub name: String,
    /// HTTPS base URL.
    pub base_url: HttpsUrl,
    /// Credential handling.
    pub auth: Auth,
    /// The routes forwarded: the defaults, then the pack's `paths`.
    pub routes: Vec<ApiRoute>,
}

impl Provider {
    /// Whether this lane forwards `method` on `path` (no query).
    pub fn forwards(&self, method: &str, path: &str) -> bool {
        self.routes.iter().any(|route| route.matches(method, path))
    }
}

/// How a lane's credential reaches the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credential is sent.
    None,
    /// The router injects the named credential; the client's is stripped.
    Inject {
        /// `x-api-key` or `bearer`.
        header: AuthMode,
        /// Credential name (`$CREDENTIALS_DIRECTORY/<name>` or env `<name>`).
        credential: CredentialName,
    },
    /// The client's own credential (in `header`) is forwarded; when it sent
    /// none, `fallback` is injected if set.
    Passthrough {
        /// `x-api-key` or `bearer`.
        header: AuthMode,
        /// Credential injected when the client sent none.
        fallback: Option<CredentialName>,
    },
}

/// A credential name: `[A-Za-z_][A-Za-z0-9_]*`, at most 128 characters;
/// safe as an environment variable and as a file name. The name is not
/// secret; the value never enters the policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CredentialName(String);

impl CredentialName {
    /// Check a credential name.
    pub fn parse(s: &str) -> Option<Self> {
        let mut b = s.bytes();
        let ok = s.len() <= 128
            && matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_');
        ok.then(|| CredentialName(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CredentialName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An `https://` URL without user info, query or fragment; trailing `/` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    text: String,
    host: Host,
    port: u16,
    path: String,
}

impl HttpsUrl {
    /// Parse and check an https URL; the error says what is wrong.
    pub fn parse(input: &str) -> Result<Self, String> {
        let rest = input.strip_prefix("https://").ok_or_else(|| {
            format!("`{input}` must start with https:// (upstreams are HTTPS only)")
        })?;
        if input.contains(['?', '#']) {
            return Err(format!("`{input}` must not have a query or fragment"));
        }
        if input
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_control())
        {
            return Err(format!("`{input}` contains whitespace"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!(
                "`{input}` must not carry user info; put credentials in authHeader"
            ));
        }
        let (host, port) =
            crate::host::split_host_port(authority).map_err(|e| format!("`{input}`: {e}"))?;
        let host = normalize_host(host).map_err(|e| format!("`{input}`: {e}"))?;
        let port = port.unwrap_or(443);
        let path = path.trim_end_matches('/').to_owned();
        let text = format!(
            "https://{}{}{}",
            match &host {
                Host::Ip(lit) => lit.to_string(),
                Host::Domain(d) => d.to_string(),
            },
            if port == 443 {
                String::new()
            } else {
                format!(":{port}")
            },
            path
        );
        Ok(HttpsUrl {
            text,
            host,
            port,
            path,
        })
    }

    /// The normalised URL text (`https://api.example.com/v1`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The normalised host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port (443 unless written).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path prefix without trailing `/` (may be empty).
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for HttpsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Proxy rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Fronting {
    /// Refuse ClientHellos without SNI.
    pub require_sni: bool,
    /// Refuse SNI different from the CONNECT host.
    pub require_host_eq_sni: bool,
    /// Refuse IP-literal hosts.
    pub block_ip_literal: bool,
    /// Pass ECH ClientHellos on their outer SNI.
    pub allow_ech: bool,
    /// Allowlist entries from the pack.
    pub allowlist: Vec<AllowEntry>,
    /// Private ranges allowlisted names may resolve to (each within [`private_ranges`]).
    pub allow_private_ranges: Vec<Cidr>,
}

impl Fronting {
    /// Whether the pack opens the private address `ip` (the proxy's address-class check asks this).
    pub fn private_address_allowed(&self, ip: std::net::IpAddr) -> bool {
        self.allow_private_ranges.iter().any(|c| c.contains(ip))
    }
}

/// A checked allowlist entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AllowEntry {
    /// The pattern.
    pub pattern: HostPortPattern,
    /// Lifetime from `issuedAt`; `None`: as long as the pack.
    pub ttl: Option<Duration>,
    /// Effective expiry: `issuedAt + ttl`, capped at the pack's own expiry;
    /// `None` when unknown (unstamped draft) or never (embedded fallback).
    pub expires_at: Option<SystemTime>,
    /// Plain-HTTP requests allowed too.
    pub allow_plain_http: bool,
}

/// Kernel egress rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Egress {
    /// Redirect or proxy-only.
    pub mode: EgressMode,
    /// DNS handling.
    pub dns: DnsMode,
    /// Loopback handling.
    pub loopback: LoopbackMode,
    /// Direct entries.
    pub direct: Vec<DirectEntry>,
    /// Unix sockets the cgroup may reach (`egress.unix`).
    pub unix: Vec<UnixSocketPattern>,
}

/// A checked direct egress entry (exact host or IP, no wildcard).
#[derive(Debug, Clone, PartialEq)]
pub struct DirectEntry {
    /// Destination; names are resolved by the map writer.
    pub target: HostPort,
    /// Lifetime from `issuedAt`; `None`: as long as the pack.
    pub ttl: Option<Duration>,
    /// Effective expiry, as for [`AllowEntry::expires_at`].
    pub expires_at: Option<SystemTime>,
}

/// Limits, as typed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body the router reads.
    pub max_request_bytes: u64,
    /// Largest response body the router relays.
    pub max_response_bytes: u64,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Idle timeout for tunnels and streams.
    pub idle_timeout: Duration,
    /// Longest life of one request or tunnel.
    pub total_timeout: Duration,
    /// Router: wait for upstream response headers.
    pub first_byte_timeout: Duration,
    /// Proxy: wait for the CONNECT request head.
    pub header_read_timeout: Duration,
    /// Proxy: wait for the ClientHello.
    pub client_hello_timeout: Duration,
    /// Proxy: largest CONNECT request head.
    pub max_header_bytes: u64,
    /// Proxy: largest ClientHello buffered.
    pub max_client_hello_bytes: u64,
    /// Proxy: concurrent tunnels.
    pub max_concurrent_tunnels: u64,
    /// Router: concurrent requests.
    pub max_concurrent_requests: u64,
}

impl Default for Limits {
    fn default() -> Self {
        let mut v = Validator::default();
        v.limits(&raw::Limits::default())
    }
}

/// Sandbox settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    /// bwrap network setting.
    pub net: BwrapNet,
    /// Read-only root.
    pub ro_root: bool,
    /// Read-write overlays.
    pub rw_overlays: Vec<String>,
    /// Read-deny globs.
    pub read_deny: Vec<String>,
    /// seccomp profile.
    pub seccomp: SeccompProfile,
    /// Syscalls exempted from the blocklist (each in [`BASELINE_BLOCKLIST`]).
    pub seccomp_exceptions: Vec<String>,
}

// === impl Validator ===

#[derive(Clone, Copy)]
struct Lifetime {
    issued_at: Option<SystemTime>,
    pack_expiry: Option<SystemTime>,
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn policy(&mut self, raw: &PackFile, mode: ValidationMode) -> Option<Policy> {
        if raw.schema != SCHEMA_ID {
            self.fail(
                "schema",
                format!("expected `{SCHEMA_ID}`, found `{}`", raw.schema),
            );
        }
        let version = match Version::parse(&raw.version) {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail("version", e.to_string());
                None
            }
        };
        let issued_at = raw
            .issued_at
            .as_deref()
            .and_then(|s| match parse_timestamp(s) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.fail("issuedAt", e.to_string());
                    None
                }
            });
        let ttl = match (mode, raw.ttl_seconds) {
            (_, Some(0)) => {
                self.fail("ttlSeconds", "must be greater than zero");
                None
            }
            (_, Some(s)) if Duration::from_secs(s) > crate::duration::MAX_DURATION => {
                self.fail("ttlSeconds", "must be at most 100 years");
                None
            }
            (ValidationMode::Signed, Some(s)) => Some(Duration::from_secs(s)),
            (ValidationMode::Signed, None) => {
                self.fail(
                    "ttlSeconds",
                    "missing; a signed pack must say how long it is valid (e.g. 86400)",
                );
                None
            }
            (ValidationMode::Embedded, Some(_)) => {
                self.fail(
                    "ttlSeconds",
                    "the embedded fallback pack does not expire; remove it",
                );
                None
            }
            (ValidationMode::Embedded, None) => None,
        };
        if mode == ValidationMode::Embedded && raw.issued_at.is_some() {
            self.fail(
                "issuedAt",
                "the embedded fallback pack has no issue time; remove it",
            );
        }

        let providers = self.providers(raw);
        let routing = self.routing(&raw.routing, &raw.providers.0);
        let lifetime = Lifetime {
            issued_at,
            pack_expiry: issued_at.zip(ttl).and_then(|(t, d)| t.checked_add(d)),
        };
        let fronting = self.fronting(&raw.fronting, lifetime, mode);
        let egress = self.egress(&raw.egress, lifetime, mode);
        let limits = self.limits(&raw.limits);
        let sandbox = self.sandbox(&raw.sandbox_linux);
        if !raw.telemetry.local_only {
            self.fail(
                "telemetry.localOnly",
                "enforcer has no remote telemetry; only `true` is accepted",
            );
        }
        Some(Policy {
            version: version?,
            issued_at,
            ttl,
            routing,
            providers,
            fronting,
            egress,
            limits,
            logging: raw.logging.mode,
            sandbox,
        })
    }

    fn providers(&mut self, raw: &PackFile) -> BTreeMap<String, Provider> {
        let mut out = BTreeMap::new();
        for (name, p) in &raw.providers.0 {
            let path = format!("providers.{name}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                self.fail(
                    &path,
                    "a lane name may only use letters, digits, `-`, `_` and `.`",
                );
            }
            let base_url = match HttpsUrl::parse(&p.base_url) {
                Ok(u) => Some(u),
                Err(e) => {
                    self.fail(format!("{path}.baseURL"), e);
                    None
                }
            };
            let auth = self.auth(&format!("{path}.authHeader"), &p.auth_header);
            let mut routes = ApiRoute::defaults();
            for (i, entry) in p.paths.iter().enumerate() {
                match ApiRoute::parse(entry) {
                    Ok(route) => routes.push(route),
                    Err(e) => self.fail(format!("{path}.paths[{i}]"), e.to_string()),
                }
            }
            if let (Some(base_url), Some(auth)) = (base_url, auth) {
                out.insert(
                    name.clone(),
                    Provider {
                        name: name.clone(),
                        base_url,
                        auth,
                        routes,
                    },
                );
            }
        }
        out
    }

    fn credential(&mut self, path: String, name: &str) -> Option<CredentialName> {
        let c = CredentialName::parse(name);
        if c.is_none() {
            self.fail(
                path,
                format!(
                    "`{name}` is not a credential name: use letters, digits and `_`, not starting with a digit"
                ),
            );
        }
        c
    }

    fn auth(&mut self, path: &str, a: &raw::AuthHeader) -> Option<Auth> {
        match (a.mode, a.passthrough) {
            (AuthMode::None, passthrough) => {
                if passthrough || a.env.is_some() || a.fallback_env.is_some() {
                    self.fail(
                        path,
                        "mode `none` sends no credential; remove env, fallbackEnv and passthrough",
                    );
                    return None;
                }
                Some(Auth::None)
            }
            (header, false) => {
                if a.fallback_env.is_some() {
                    self.fail(
                        format!("{path}.fallbackEnv"),
                        "fallbackEnv only applies with `passthrough: true`; use `env` to inject a credential",
                    );
                }
                match &a.env {
                    Some(env) => {
                        let credential = self.credential(format!("{path}.env"), env)?;
                        Some(Auth::Inject { header, credential })
                    }
                    None => {
                        self.fail(
                            format!("{path}.env"),
                            "missing: name the credential to inject, or set `passthrough: true`",
                        );
                        None
                    }
                }
            }
            (header, true) => {
                if a.env.is_some() {
                    self.fail(
                        format!("{path}.env"),
                        "with `passthrough: true` the client's credential is used; put the credential for clients that send none in `fallbackEnv`",
                    );
                    return None;
                }
                let fallback = match &a.fallback_env {
                    Some(f) => Some(self.credential(format!("{path}.fallbackEnv"), f)?),
                    None => None,
                };
                Some(Auth::Passthrough { header, fallback })
            }
        }
    }

    fn routing<V>(&mut self, r: &raw::Routing, providers: &BTreeMap<String, V>) -> Routing {
        let mut matchers = Vec::new();
        for (i, m) in r.matchers.iter().enumerate() {
            let path = format!("routing.matchers[{i}]");
            let pattern = ModelPattern::parse(&m.pattern);
            if pattern.is_none() {
                self.fail(
                    format!("{path}.pattern"),
                    format!(
                        "`{}` is not a model pattern: 1-256 printable characters without spaces, `*` as wildcard",
                        m.pattern
                    ),
                );
            }
            if !providers.contains_key(&m.lane) {
                let known: Vec<&str> = providers.keys().map(String::as_str).collect();
                self.fail(
                    format!("{path}.lane"),
                    format!(
                        "lane `{}` is not defined in providers (defined: {})",
                        m.lane,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            if let Some(pattern) = pattern {
                matchers.push(Matcher {
                    pattern,
                    lane: m.lane.clone(),
                });
            }
        }
        let mut strip_headers = Vec::new();
        for (i, h) in r.strip_headers.iter().enumerate() {
            let token = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if token {
                strip_headers.push(h.to_ascii_lowercase());
            } else {
                self.fail(
                    format!("routing.stripHeaders[{i}]"),
                    format!("`{h}` is not an HTTP header name"),
                );
            }
        }
        Routing {
            matchers,
            strip_headers,
        }
    }

    /// An entry's TTL and effective expiry: `issuedAt + ttl`, never later
    /// than the pack's own expiry (an entry does not outlive its pack).
    fn ttl(
        &mut self,
        path: String,
        ttl: Option<&str>,
        lifetime: Lifetime,
        mode: ValidationMode,
    ) -> (Option<Duration>, Option<SystemTime>) {
        let Some(text) = ttl else {
            return (None, lifetime.pack_expiry);
        };
        if mode == ValidationMode::Embedded {
            self.fail(
                path,
                "entries of the embedded fallback pack do not expire; remove ttl",
            );
            return (None, None);
        }
        match parse_duration(text) {
            Ok(d) => {
                let own = lifetime.issued_at.and_then(|t| t.checked_add(d));
                let eff = match (own, lifetime.pack_expiry) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                (Some(d), eff)
            }
            Err(e) => {
                self.fail(path, e.to_string());
                (None, lifetime.pack_expiry)
            }
        }
    }

    fn fronting(
        &mut self,
        f: &raw::Fronting,
        lifetime: Lifetime,
        mode: ValidationMode,
    ) -> Fronting {
        let mut allowlist = Vec::new();
        for (i, e) in f.allowlist.iter().enumerate() {
            let path = format!("fronting.allowlist[{i}]");
            let (ttl, expires_at) =
                self.ttl(format!("{path}.ttl"), e.ttl.as_deref(), lifetime, mode);
            match HostPortPattern::parse(&e.hostport) {
                Ok(p) if p.host.is_ip() && f.block_ip_literal => self.fail(
                    format!("{path}.hostport"),
                    format!(
                        "`{}` is an IP address, but blockIPLiteral is true so the proxy refuses IP literals; name the host",
                        e.hostport
                    ),
                ),
                Ok(pattern) => allowlist.push(AllowEntry {
                    pattern,
                    ttl,
                    expires_at,
                    allow_plain_http: e.allow_plain_http,
                }),
                Err(err) => self.fail(format!("{path}.hostport"), err.to_string()),
            }
        }
        let allowed = private_ranges();
        let mut allow_private_ranges = Vec::new();
        for (i, r) in f.allow_private_ranges.iter().enumerate() {
            let path = format!("fronting.allowPrivateRanges[{i}]");
            match r.parse::<Cidr>() {
                Ok(c) if allowed.iter().any(|a| c.is_within(a)) => allow_private_ranges.push(c),
                Ok(_) => self.fail(
                    path,
                    format!(
                        "`{r}` is not inside a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, fc00::/7); loopback, link-local and metadata addresses can never be opened"
                    ),
                ),
                Err(e) => self.fail(path, e.to_string()),
            }
        }
        Fronting {
            require_sni: f.require_sni,
            require_host_eq_sni: f.require_host_eq_sni,
            block_ip_literal: f.block_ip_literal,
            allow_ech: f.allow_ech,
            allowlist,
            allow_private_ranges,
        }
    }

    fn egress(&mut self, e: &raw::Egress, lifetime: Lifetime, mode: ValidationMode) -> Egress {
        let mut direct = Vec::new();
        for (i, d) in e.direct.iter().enumerate() {
            let path = format!("egress.direct[{i}]");
            let (ttl, expires_at) =
                self.ttl(format!("{path}.ttl"), d.ttl.as_deref(), lifetime, mode);
            match HostPort::parse(&d.hostport) {
                Ok(target) => direct.push(DirectEntry {
                    target,
                    ttl,
                    expires_at,
                }),
                Err(err) => self.fail(format!("{path}.hostport"), err.to_string()),
            }
        }
        let mut unix = Vec::new();
        for (i, text) in e.unix.iter().enumerate() {
            match UnixSocketPattern::parse(text) {
                Ok(pattern) => unix.push(pattern),
                Err(err) => self.fail(format!("egress.unix[{i}]"), err.to_string()),
            }
        }
        Egress {
            mode: e.mode,
            dns: e.dns,
            loopback: e.loopback,
            direct,
            unix,
        }
    }

    fn limits(&mut self, l: &raw::Limits) -> Limits {
        let mut pos = |name: &str, v: u64| {
            if v == 0 {
                self.fail(format!("limits.{name}"), "must be greater than zero");
            }
            v
        };
        let secs = |v: u64| Duration::from_secs(v);
        Limits {
            max_request_bytes: pos("maxRequestBytes", l.max_request_bytes),
            max_response_bytes: pos("maxResponseBytes", l.max_response_bytes),
            connect_timeout: secs(pos("connectTimeoutSeconds", l.connect_timeout_seconds)),
            idle_timeout: secs(pos("idleTimeoutSeconds", l.idle_timeout_seconds)),
            total_timeout: secs(pos("totalTimeoutSeconds", l.total_timeout_seconds)),
            first_byte_timeout: secs(pos("firstByteTimeoutSeconds", l.first_byte_timeout_seconds)),
            header_read_timeout: secs(pos(
                "headerReadTimeoutSeconds",
                l.header_read_timeout_seconds,
            )),
            client_hello_timeout: secs(pos(
                "clientHelloTimeoutSeconds",
                l.client_hello_timeout_seconds,
            )),
            max_header_bytes: pos("maxHeaderBytes", l.max_header_bytes),
            max_client_hello_bytes: pos("maxClientHelloBytes", l.max_client_hello_bytes),
            max_concurrent_tunnels: pos("maxConcurrentTunnels", l.max_concurrent_tunnels),
            max_concurrent_requests: pos("maxConcurrentRequests", l.max_concurrent_requests),
        }
    }

    fn sandbox(&mut self, s: &raw::SandboxLinux) -> Sandbox {
        let fs = &s.bwrap.fs;
        for (field, list) in [("rwOverlays", &fs.rw_overlays), ("readDeny", &fs.read_deny)] {
            for (i, p) in list.iter().enumerate() {
                if p.is_empty() || p.chars().any(char::is_control) {
                    self.fail(
                        format!("sandboxLinux.bwrap.fs.{field}[{i}]"),
                        "must be a non-empty path without control characters",
                    );
                }
            }
        }
        let mut exceptions = Vec::new();
        for (i, name) in s.seccomp.exceptions.iter().enumerate() {
            if BASELINE_BLOCKLIST.contains(&name.as_str()) {
                exceptions.push(name.clone());
            } else {
                self.fail(
                    format!("sandboxLinux.seccomp.exceptions[{i}]"),
                    format!(
                        "`{name}` is not in the baseline blocklist; expected one of: {}",
                        BASELINE_BLOCKLIST.join(", ")
                    ),
                );
            }
        }
        Sandbox {
            net: s.bwrap.net,
            ro_root: fs.ro_root,
            rw_overlays: fs.rw_overlays.clone(),
            read_deny: fs.read_deny.clone(),
            seccomp: s.seccomp.profile,
            seccomp_exceptions: exceptions,
        }
    }
}

/// Describe when an entry expires, for `show` (`2025-10-28T00:00:00Z (7d)`).
pub fn describe_expiry(
    ttl: Option<Duration>,
    expires_at: Option<SystemTime>,
    now: SystemTime,
) -> String {
    match (ttl, expires_at) {
        (_, Some(at)) => {
            let when = format_timestamp(at);
            match at.duration_since(now) {
                Ok(left) => format!("expires {when} (in {})", format_duration(left)),
                Err(_) => format!("expired {when}"),
            }
        }
        (Some(ttl), None) => format!("{} from issuedAt (not stamped yet)", format_duration(ttl)),
        (None, None) => "lives as long as the pack".into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        let m = |p: &str, s: &str| ModelPattern::parse(p).unwrap().matches(s);
        assert!(m("claude-haiku-*", "claude-haiku-4-5"));
        assert!(m("claude-haiku-*", "claude-haiku-"));
        assert!(!m("claude-haiku-*", "claude-sonnet-4"));
        assert!(m("*", "anything"));
        assert!(m("claude-*-4*", "claude-opus-4-1"));
        assert!(!m("claude-*-4", "claude-opus-4-1"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(!m("exact", "exactly"));
        assert!(ModelPattern::parse("has space").is_none());
        assert!(ModelPattern::parse("").is_none());
    }

    #[test]
    fn https_urls() {
        let u = HttpsUrl::parse("https://API.z.ai/api/anthropic/").unwrap();
        assert_eq!(u.as_str(), "https://api.z.ai/api/anthropic");
        assert_eq!(u.port(), 443);
        assert_eq!(u.path(), "/api/anthropic");
        let u = HttpsUrl::parse("https://[::1]:8443").unwrap();
        assert_eq!(u.as_str(), "https://[::1]:8443");
        for bad in [
            "http://api.example.com",
            "https://user:pw@api.example.com",
            "https://api.example.com/?x=1",
            "https://api.example.com/#f",
            "https://",
            "https://a b.com",
            "https://api.example.com:0",
            "api.example.com",
        ] {
            assert!(HttpsUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credential_names() {
        assert!(CredentialName::parse("ZAI_API_KEY").is_some());
        assert!(CredentialName::parse("_x1").is_some());
        for bad in ["", "1A", "A-B", "../etc/passwd", "A B"] {
            assert!(CredentialName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn default_limits_match_design() {
        let l = Limits::default();
        assert_eq!(l.max_request_bytes, 33_554_432);
        assert_eq!(l.max_response_bytes, 268_435_456);
        assert_eq!(l.connect_timeout, Duration::from_secs(10));
        assert_eq!(l.idle_timeout, Duration::from_secs(300));
        assert_eq!(l.total_timeout, Duration::from_secs(3600));
        assert_eq!(l.max_concurrent_tunnels, 1024);
    }
}

//! The pack as written: serde types that mirror the JSON exactly.
//!
//! Every struct refuses unknown fields, so a misspelt `frontingg` is an
//! error naming its path, never a silently ignored (and so weakened)
//! section. Defaults live in one place: each section's `Default` impl,
//! built from the constants in [`defaults`]. Nothing here is trusted yet:
//! [`crate::Policy::from_raw`] checks it into the types the rest of the
//! program uses. The JSON Schema (`enforcer policy schema`) is generated
//! from these types, so their doc comments are the schema's descriptions.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The only value `schema` may have.
pub const SCHEMA_ID: &str = "ccp.policy.v1";

/// Default values, one place for all of them.
pub mod defaults {
    /// `limits.maxRequestBytes`: 32 MiB (Claude Code's `/compact` sends large bodies).
    pub const MAX_REQUEST_BYTES: u64 = 33_554_432;
    /// `limits.maxResponseBytes`: 256 MiB.
    pub const MAX_RESPONSE_BYTES: u64 = 268_435_456;
    /// `limits.connectTimeoutSeconds`.
    pub const CONNECT_TIMEOUT_SECONDS: u64 = 10;
    /// `limits.idleTimeoutSeconds`.
    pub const IDLE_TIMEOUT_SECONDS: u64 = 300;
    /// `limits.totalTimeoutSeconds`.
    pub const TOTAL_TIMEOUT_SECONDS: u64 = 3600;
    /// `limits.firstByteTimeoutSeconds`.
    pub const FIRST_BYTE_TIMEOUT_SECONDS: u64 = 300;
    /// `limits.headerReadTimeoutSeconds`.
    pub const HEADER_READ_TIMEOUT_SECONDS: u64 = 10;
    /// `limits.clientHelloTimeoutSeconds`.
    pub const CLIENT_HELLO_TIMEOUT_SECONDS: u64 = 10;
    /// `limits.maxHeaderBytes`.
    pub const MAX_HEADER_BYTES: u64 = 16_384;
    /// `limits.maxClientHelloBytes`.
    pub const MAX_CLIENT_HELLO_BYTES: u64 = 65_536;
    /// `limits.maxConcurrentTunnels`.
    pub const MAX_CONCURRENT_TUNNELS: u64 = 1024;
    /// `limits.maxConcurrentRequests`.
    pub const MAX_CONCURRENT_REQUESTS: u64 = 1024;
}

// === impl PackFile ===

/// A policy pack (`schema: "ccp.policy.v1"`), exactly as written in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "enforcer policy pack (ccp.policy.v1)")]
pub struct PackFile {
    /// Format identifier; must be `ccp.policy.v1`.
    pub schema: String,
    /// Pack version, compared like `sort -V` for rollback protection (a pack older than the active one is refused). 1-64 characters from letters, digits and `.-_+~`, e.g. `2025-10-21.1`.
    pub version: String,
    /// When the pack was issued (RFC 3339, e.g. `2025-10-21T00:00:00Z`). `enforcer policy sign` stamps it when missing. Allowlist and direct-entry TTLs count from here; the pack expires at issuedAt + ttlSeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    /// How long the pack itself is valid, in seconds from issuedAt. Required for signed packs; a pack past its lifetime is refused and the active one stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Lane routing for the LLM API router.
    #[serde(default)]
    pub routing: Routing,
    /// Providers (lanes) by name; routing matchers refer to these names.
    #[serde(default)]
    pub providers: UniqueMap<Provider>,
    /// The CONNECT/transparent proxy's rules: SNI checks and the host:port allowlist.
    #[serde(default)]
    pub fronting: Fronting,
    /// Kernel-level egress: mode, DNS, loopback and direct (non-proxied) entries.
    #[serde(default)]
    pub egress: Egress,
    /// Size and time limits for the proxy and the router.
    #[serde(default)]
    pub limits: Limits,
    /// What the audit log records.
    #[serde(default)]
    pub logging: Logging,
    /// Sandbox settings for `enforcer run` (bubblewrap and seccomp).
    #[serde(default)]
    pub sandbox_linux: SandboxLinux,
    /// Telemetry settings.
    #[serde(default)]
    pub telemetry: Telemetry,
}

// === impl Routing ===

/// Lane routing: the first matcher whose pattern matches the request's `model` wins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Routing {
    /// Ordered matchers; the first match picks the lane. A request whose model matches none is refused by the router.
    pub matchers: Vec<Matcher>,
    /// Extra client request headers to strip before forwarding, on top of the built-in credential headers (authorization, x-api-key, cookie, proxy-authorization). Case-insensitive header names.
    pub strip_headers: Vec<String>,
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Matcher {
    /// Model-name glob; `*` matches any run of characters (e.g. `claude-haiku-*`).
    pub pattern: String,
    /// Name of the provider (a key of `providers`) that serves matching requests.
    pub lane: String,
}

// === impl Provider ===

/// An upstream LLM API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// HTTPS base URL; the request path is appended (e.g. `https://api.anthropic.com`). No user info, query or fragment.
    #[serde(rename = "baseURL")]
    pub base_url: String,
    /// How the credential reaches the upstream.
    #[serde(rename = "authHeader")]
    pub auth_header: AuthHeader,
    /// More API routes this lane forwards beyond the Anthropic API defaults (`POST /v1/messages`, `POST /v1/messages/count_tokens`, `GET /v1/models`, `GET /v1/models/*`): each `METHOD /path`, where a `*` segment matches one path segment (e.g. `GET /v1/files/*`). Every other method and path is refused without reaching the provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// Which header carries the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// `x-api-key: <credential>`.
    XApiKey,
    /// `Authorization: Bearer <credential>`.
    Bearer,
    /// No credential is sent (e.g. an unauthenticated local gateway).
    None,
}

/// Credential injection for one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthHeader {
    /// Header style: `x-api-key`, `bearer` or `none`.
    pub mode: AuthMode,
    /// Credential name the router injects: read from `$CREDENTIALS_DIRECTORY/<env>` (systemd LoadCredential=) or else the daemon's environment variable `<env>`. Required unless passthrough is true or mode is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// When true, this lane (and only this lane) forwards the client's own credential (the header named by `mode`, else the other Anthropic credential header unchanged); other lanes always strip it.
    #[serde(default)]
    pub passthrough: bool,
    /// With passthrough: the credential name injected when the client sent none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_env: Option<String>,
}

// === impl Fronting ===

/// The proxy's rules for CONNECT and transparent TLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Fronting {
    /// Refuse a TLS ClientHello without SNI.
    #[serde(rename = "requireSNI")]
    pub require_sni: bool,
    /// Refuse a tunnel whose SNI differs from the CONNECT host (domain fronting).
    #[serde(rename = "requireHostEqSNI")]
    pub require_host_eq_sni: bool,
    /// Refuse IP-literal hosts in any spelling (127.1, 0x7f.0.0.1, 2130706433, [::ffff:…]).
    #[serde(rename = "blockIPLiteral")]
    pub block_ip_literal: bool,
    /// Let a ClientHello carrying encrypted_client_hello through on its outer SNI alone (GREASE ECH looks the same as real ECH). Off by default: ECH is denied with reason `ech`.
    #[serde(rename = "allowECH")]
    pub allow_ech: bool,
    /// host:port patterns the proxy may tunnel to. `*.example.com:443` means strict subdomains only; the port defaults to 443.
    pub allowlist: Vec<AllowEntry>,
    /// Private address ranges (CIDR, e.g. `10.20.0.0/16`) that allowlisted names may resolve to. Only RFC 1918, 100.64.0.0/10 (CGNAT) and fc00::/7 (ULA) can be opened; loopback, link-local, metadata, multicast and unspecified addresses are always refused.
    #[serde(rename = "allowPrivateRanges")]
    pub allow_private_ranges: Vec<String>,
}

impl Default for Fronting {
    fn default() -> Self {
        Fronting {
            require_sni: true,
            require_host_eq_sni: true,
            block_ip_literal: true,
            allow_ech: false,
            allowlist: Vec::new(),
            allow_private_ranges: Vec::new(),
        }
    }
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    /// `host[:port]` or `*.domain[:port]`; port defaults to 443.
    pub hostport: String,
    /// Lifetime from the pack's issuedAt, ISO-8601 (`P7D`, `PT8H`) or short (`7d`, `8h`). Absent: the entry lives as long as the pack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Also allow plain-HTTP (absolute-form) requests to this host:port through the proxy. Off by default: plain HTTP is refused.
    #[serde(rename = "allowPlainHTTP", default)]
    pub allow_plain_http: bool,
}

// === impl Egress ===

/// How the kernel programs treat connections that do not use the proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EgressMode {
    /// TCP connects to a port some allowlist entry names are redirected to the transparent listener (SNI-checked); other connects fail with EPERM. The default.
    #[default]
    Redirect,
    /// Only proxy-aware clients work; other connects fail with EPERM.
    ProxyOnly,
}

/// DNS handling for the enforced cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DnsMode {
    /// Port-53 traffic goes to the enforcer's DNS filter, which answers only allowlisted names.
    #[default]
    Filtered,
    /// All DNS is denied (proxy-aware clients do not resolve names themselves).
    Deny,
}

/// Loopback access from the enforced cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LoopbackMode {
    /// Only loopback ports bound by processes of the same cgroup (plus the enforcer's endpoints).
    #[default]
    OwnCgroup,
    /// Only the enforcer's own endpoints.
    Deny,
}

/// Kernel egress settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Egress {
    /// `redirect` (default) or `proxy-only`.
    pub mode: EgressMode,
    /// `filtered` (default) or `deny`.
    pub dns: DnsMode,
    /// `own-cgroup` (default) or `deny`.
    pub loopback: LoopbackMode,
    /// Destinations reached directly (no proxy, no SNI check), e.g. `github.com:22` for git over SSH. Exact host or IP, no wildcard; names are resolved by the daemon.
    pub direct: Vec<DirectEntry>,
    /// Unix sockets a process in the enforced cgroup may connect or send to, besides those under the enforced command's own directories: absolute paths (`/run/foo.sock`; one `*` matches within one path segment, a final `/**` matches a whole subtree) or abstract names (`@name`, exact). Enforced where the kernel has the cgroup unix hooks (6.7+).
    pub unix: Vec<String>,
}

/// One direct egress entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectEntry {
    /// `host[:port]` or `ip[:port]` (IPv6 in brackets); port defaults to 443.
    pub hostport: String,
    /// Lifetime from the pack's issuedAt; absent: as long as the pack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

// === impl Limits ===

/// Limits for the proxy and the lane router. Every value must be greater than zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Limits {
    /// Largest request body the router reads (bytes).
    pub max_request_bytes: u64,
    /// Largest response body the router relays (bytes).
    pub max_response_bytes: u64,
    /// Upstream TCP+TLS connect timeout (seconds).
    pub connect_timeout_seconds: u64,
    /// Close a tunnel or response stream idle this long (seconds).
    pub idle_timeout_seconds: u64,
    /// Longest life of one router request or tunnel (seconds).
    pub total_timeout_seconds: u64,
    /// Router: longest wait for the upstream's response headers (seconds).
    pub first_byte_timeout_seconds: u64,
    /// Proxy: longest wait for a complete CONNECT request head (seconds).
    pub header_read_timeout_seconds: u64,
    /// Proxy: longest wait for a complete TLS ClientHello (seconds).
    pub client_hello_timeout_seconds: u64,
    /// Proxy: largest CONNECT request head (bytes).
    pub max_header_bytes: u64,
    /// Proxy: largest ClientHello buffered (bytes, across TLS records).
    pub max_client_hello_bytes: u64,
    /// Proxy: concurrent tunnels; more are answered 503.
    pub max_concurrent_tunnels: u64,
    /// Router: concurrent requests; more are answered with an overloaded error.
    pub max_concurrent_requests: u64,
}

impl Default for Limits {
    fn default() -> Self {
        use defaults::*;
        Limits {
            max_request_bytes: MAX_REQUEST_BYTES,
            max_response_bytes: MAX_RESPONSE_BYTES,
            connect_timeout_seconds: CONNECT_TIMEOUT_SECONDS,
            idle_timeout_seconds: IDLE_TIMEOUT_SECONDS,
            total_timeout_seconds: TOTAL_TIMEOUT_SECONDS,
            first_byte_timeout_seconds: FIRST_BYTE_TIMEOUT_SECONDS,
            header_read_timeout_seconds: HEADER_READ_TIMEOUT_SECONDS,
            client_hello_timeout_seconds: CLIENT_HELLO_TIMEOUT_SECONDS,
            max_header_bytes: MAX_HEADER_BYTES,
            max_client_hello_bytes: MAX_CLIENT_HELLO_BYTES,
            max_concurrent_tunnels: MAX_CONCURRENT_TUNNELS,
            max_concurrent_requests: MAX_CONCURRENT_REQUESTS,
        }
    }
}

// === impl Logging ===

/// How much the audit log records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LoggingMode {
    /// Decisions with metadata only: no bodies, no credentials, no query strings.
    #[default]
    Metadata,
    /// Also full URLs with query strings (still never bodies or credentials).
    Debug,
}

/// Audit logging settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Logging {
    /// `metadata` (default) or `debug`.
    pub mode: LoggingMode,
}

// === impl SandboxLinux ===

/// Sandbox settings used by `enforcer run`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxLinux {
    /// bubblewrap settings (`enforcer run --bwrap`, `enforcer sandbox argv`).
    pub bwrap: Bwrap,
    /// seccomp filter settings.
    pub seccomp: Seccomp,
}

/// Network setting inside bubblewrap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BwrapNet {
    /// Share the host network; the enforcer's kernel programs restrict it.
    #[default]
    Restricted,
    /// No network at all (`--unshare-net`).
    None,
}

/// bubblewrap settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Bwrap {
    /// `restricted` (default) or `none`.
    pub net: BwrapNet,
    /// File-system view.
    pub fs: BwrapFs,
}

/// bubblewrap file-system view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct BwrapFs {
    /// Mount the root file system read-only (default true).
    pub ro_root: bool,
    /// Paths mounted read-write on top (relative paths are relative to the working directory).
    pub rw_overlays: Vec<String>,
    /// Glob patterns (`*` within one path component, `**` across components) hidden from the sandbox.
    pub read_deny: Vec<String>,
}

impl Default for BwrapFs {
    fn default() -> Self {
        BwrapFs {
            ro_root: true,
            rw_overlays: Vec::new(),
            read_deny: Vec::new(),
        }
    }
}

/// seccomp profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SeccompProfile {
    /// Default-allow with EPERM for the syscalls in the baseline blocklist.
    #[default]
    BaselineBlocklist,
    /// No seccomp filter.
    Off,
}

/// seccomp settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Seccomp {
    /// `baseline-blocklist` (default) or `off`.
    pub profile: SeccompProfile,
    /// Syscalls from the baseline blocklist to allow anyway (e.g. `ptrace` for a debugger). Names not in the blocklist are an error.
    pub exceptions: Vec<String>,
}

// === impl Telemetry ===

/// Telemetry settings. enforcer sends nothing anywhere; only `localOnly: true` is accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Telemetry {
    /// Keep metrics and events on this host (default and only accepted value: true).
    pub local_only: bool,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry { local_only: true }
    }
}

// === impl UniqueMap ===

/// A JSON object whose keys must be unique (serde's maps keep the last
/// duplicate silently; a pack must not).
#[derive(Debug, Clone, PartialEq)]
pub struct UniqueMap<V>(pub BTreeMap<String, V>);

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        UniqueMap(BTreeMap::new())
    }
}

impl<V: Serialize> Serialize for UniqueMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object with unique keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    if out.contains_key(&key) {
                        return Err(serde::de::Error::custom(format_args!(
                            "duplicate key `{key}`"
                        )));
                    }
                    let value = map.next_value::<V>()?;
                    out.insert(key, value);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(V2(PhantomData))
    }
}

impl<V: JsonSchema> JsonSchema for UniqueMap<V> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        BTreeMap::<String, V>::schema_name()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        BTreeMap::<String, V>::json_schema(generator)
    }
}

//! The one decision vocabulary: [`Decision`] (allow or deny) and
//! [`Reason`] (why), shared by the kernel programs, the CONNECT proxy, the
//! lane router, the daemon and every audit record, metric label and log line.

/// Allowed or denied: the one allow/deny type of every decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Decision {
    /// Let through.
    Allow,
    /// Refused.
    Deny,
}

impl Decision {
    /// The stable name (`allow` / `deny`): audit records, logs, metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }

    /// Parses a stable name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "allow" => Some(Self::Allow),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }

    /// Whether this is [`Decision::Allow`].
    pub fn is_allow(self) -> bool {
        self == Self::Allow
    }
}

impl core::fmt::Display for Decision {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why something was allowed or denied: one vocabulary for the kernel
/// programs, the CONNECT proxy, the lane router, the daemon and every audit
/// record. The kernel programs use the first group (their discriminants are
/// what the maps and events carry); the others use the rest. Names are machine-readable snake_case
/// and stable: add variants, never rename or reuse one.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    // === kernel ===
    /// The destination is not an enforcer endpoint nor a live direct entry.
    Destination = 1,
    /// A loopback destination whose receiving socket (the one the kernel
    /// would deliver to) is not a socket of the enforced cgroup.
    LoopbackPort = 2,
    /// A direct entry matched but its TTL has run out.
    DirectExpired = 3,
    /// DNS (port 53) to a resolver that is not the enforcer's.
    Dns = 4,
    /// A raw socket (`SOCK_RAW`).
    RawSocket = 5,
    /// An IPv4/IPv6 socket whose protocol is neither TCP nor UDP.
    Protocol = 6,
    /// A socket family other than unix, inet, inet6 and netlink.
    Family = 7,
    /// An IPv6 routing header or an IPv4 source-route option (LSRR/SSRR):
    /// refused at `setsockopt`, dropped at egress.
    SourceRoute = 8,
    /// An enforcer endpoint whose listening socket is not the daemon's
    /// (the daemon is down, or another process took its port).
    EndpointNotOwned = 9,
    /// A unix socket address (path or abstract name) that is neither on the
    /// pack's `egress.unix` list nor under the enforced command's own
    /// directories (`cgroup/connect_unix`, `cgroup/sendmsg_unix`).
    UnixSocket = 10,
    /// A packet whose destination is not one its socket's connect or
    /// sendmsg was judged for (dropped at egress).
    DestinationMismatch = 11,
    /// Tracing, or reading or writing the memory of, a process outside the
    /// enforced cgroup (`ptrace`, `process_vm_*`, `/proc/<pid>/mem`,
    /// `pidfd_getfd`; `lsm_cgroup/ptrace_access_check`).
    PtraceOutside = 12,

    // === CONNECT proxy ===
    // === allow ===
    /// `host:port` is on the policy pack's allowlist and every check passed.
    Allowlisted = 32,
    /// `host:port` is covered by a live runtime grant (`enforcer allow`) and
    /// every check passed.
    Granted = 33,
    /// Allowed on the outer SNI alone although the ClientHello carried an
    /// `encrypted_client_hello` extension (`fronting.allowECH`).
    AllowlistedEch = 34,
    /// A plain-HTTP (absolute-form) request to a host the policy allows
    /// plain HTTP for.
    PlainHttpAllowed = 35,

    // === before `200` ===
    /// The request line or headers broke the HTTP grammar the proxy accepts.
    MalformedRequest = 36,
    /// The request head exceeded the configured line, header-count or byte bound.
    RequestTooLarge = 37,
    /// The request head did not arrive within the header-read timeout.
    RequestTimeout = 38,
    /// The client asked for an IP address (in any spelling) instead of a name.
    IpLiteral = 39,
    /// The host is neither a valid name nor a valid address (bad IDNA,
    /// numeric garbage like `1.2.3.999`).
    InvalidHost = 40,
    /// `host:port` is not on the allowlist.
    NotAllowlisted = 41,
    /// Only expired allowlist entries or grants match `host:port`.
    Expired = 42,
    /// A plain-HTTP request to a host the policy does not allow plain HTTP for.
    PlainHttpDenied = 43,
    /// Every tunnel slot (`limits.maxConcurrentTunnels`) was taken: `503`.
    Overloaded = 44,

    // === after `200`: the ClientHello ===
    /// The first bytes in the tunnel are not a TLS handshake record.
    NotTls = 45,
    /// The TLS records or the ClientHello inside them are malformed.
    MalformedClientHello = 46,
    /// The ClientHello exceeded the byte bound.
    ClientHelloTooLarge = 47,
    /// The ClientHello did not arrive within the ClientHello timeout.
    ClientHelloTimeout = 48,
    /// The ClientHello has no `server_name` (`fronting.requireSNI`).
    MissingSni = 49,
    /// The ClientHello names more than one server.
    MultipleSni = 50,
    /// The ClientHello carries an `encrypted_client_hello` extension and the
    /// policy does not set `fronting.allowECH`.
    Ech = 51,
    /// The SNI differs from the CONNECT host after normalisation
    /// (`fronting.requireHostEqSNI`): domain fronting.
    SniMismatch = 52,

    // === resolve and dial ===
    /// The name did not resolve (or the resolver failed).
    ResolveFailed = 53,
    /// Every resolved address is in a refused class (loopback, link-local,
    /// metadata, private, …): DNS rebinding and the like.
    ForbiddenAddress = 54,
    /// No resolved address accepted a connection.
    ConnectFailed = 55,
    /// Dialling the upstream did not finish within the connect timeout.
    ConnectTimeout = 56,
    /// The client went away before a decision could be made.
    ClientClosed = 57,
    /// An I/O error on the client socket before a decision could be made.
    ClientError = 58,
    /// The client is not a process of an enforced cgroup (or the kernel
    /// could not say whose it is): the proxy answers `403`, the router `403`
    /// `permission_error`; `--serve-outside-clients` serves it anyway.
    ClientNotEnforced = 59,
    /// A connection to the transparent listener with no original
    /// destination recorded by the kernel (not redirected by it, or the
    /// record is gone): closed, nothing is dialled.
    NotRedirected = 60,

    // === lane router (the proxy's reasons above are shared where they mean the same:
    // client_closed, request_too_large, request_timeout, overloaded) ===
    /// The provider's response was relayed to its end.
    Completed = 64,
    /// The response was cut at `limits.maxResponseBytes`.
    ResponseTooLarge = 65,
    /// No response bytes for `limits.idleTimeoutSeconds`: the stream was cut.
    IdleTimeout = 66,
    /// The request outlived `limits.totalTimeoutSeconds`: the stream was cut.
    TotalTimeout = 67,
    /// The provider's body stream failed mid-response.
    UpstreamReset = 68,
    /// No response head within `limits.firstByteTimeoutSeconds`: `504`.
    FirstByteTimeout = 69,
    /// The provider could not be reached (resolve, connect, TLS): `502`.
    UpstreamConnectFailed = 70,
    /// The provider failed the exchange before a response head: `502`.
    UpstreamFailed = 71,
    /// The model matched no lane: `400`.
    UnknownModel = 72,
    /// The top-level `model` was unreadable (not a string, duplicated, bad JSON): `400`.
    BadModel = 73,
    /// The request target cannot be forwarded: `400`.
    BadRequest = 74,
    /// The policy has no lanes: `502`.
    NoLanes = 75,
    /// The lane's credential is not configured: `502`.
    MissingCredential = 76,
    /// A passthrough lane without fallback got no client credential: `401`.
    NoClientCredential = 77,
    /// A method the router never forwards (`CONNECT`, `TRACE`, …): `400`.
    MethodNotForwarded = 78,
    /// A method and path outside the lane's API surface (`providers.*.paths`): `404`.
    PathNotForwarded = 79,
    /// A request body with `Content-Encoding`: the model cannot be read, `400`.
    ContentEncoding = 80,
    /// A request body that starts with a UTF-8 byte-order mark: `400`.
    BodyBom = 81,

    // === the daemon itself (control socket, policy swaps, map writer) ===
    /// A verified, signed pack became the active policy.
    PolicyApplied = 96,
    /// The embedded fallback pack became the active policy.
    PolicyFallback = 97,
    /// A pack was refused (signature, expiry, rollback, syntax); the active policy stays.
    PolicyRefused = 98,
    /// A direct entry's name did not resolve to an address that may be written.
    DirectUnresolved = 99,
    /// A runtime grant (`enforcer allow`) was added.
    Grant = 100,
    /// A runtime grant was revoked (`enforcer revoke`).
    Revoke = 101,

    // === DNS filter (the daemon's port-53 listener; client_not_enforced is shared) ===
    /// A DNS query for a name the policy does not allow (no live allowlist
    /// rule or direct entry names it, and it is no lane provider's host):
    /// answered `REFUSED`.
    DnsRefused = 128,
    /// A DNS query for an allowed name was answered (addresses, or an empty
    /// answer for other record types).
    DnsAnswered = 129,
}

impl Reason {
    /// The reasons the kernel programs give (what `STATS` counts).
    pub const KERNEL: [Reason; 12] = [
        Self::Destination,
        Self::LoopbackPort,
        Self::DirectExpired,
        Self::Dns,
        Self::RawSocket,
        Self::Protocol,
        Self::Family,
        Self::SourceRoute,
        Self::EndpointNotOwned,
        Self::UnixSocket,
        Self::DestinationMismatch,
        Self::PtraceOutside,
    ];

    /// Every reason, for documentation, metrics and tests.
    pub const ALL: [Reason; 67] = [
        Self::Destination,
        Self::LoopbackPort,
        Self::DirectExpired,
        Self::Dns,
        Self::RawSocket,
        Self::Protocol,
        Self::Family,
        Self::SourceRoute,
        Self::EndpointNotOwned,
        Self::UnixSocket,
        Self::DestinationMismatch,
        Self::PtraceOutside,
        Self::Allowlisted,
        Self::Granted,
        Self::AllowlistedEch,
        Self::PlainHttpAllowed,
        Self::MalformedRequest,
        Self::RequestTooLarge,
        Self::RequestTimeout,
        Self::IpLiteral,
        Self::InvalidHost,
        Self::NotAllowlisted,
        Self::Expired,
        Self::PlainHttpDenied,
        Self::Overloaded,
        Self::NotTls,
        Self::MalformedClientHello,
        Self::ClientHelloTooLarge,
        Self::ClientHelloTimeout,
        Self::MissingSni,
        Self::MultipleSni,
        Self::Ech,
        Self::SniMismatch,
        Self::ResolveFailed,
        Self::ForbiddenAddress,
        Self::ConnectFailed,
        Self::ConnectTimeout,
        Self::ClientClosed,
        Self::ClientError,
        Self::ClientNotEnforced,
        Self::NotRedirected,
        Self::Completed,
        Self::ResponseTooLarge,
        Self::IdleTimeout,
        Self::TotalTimeout,
        Self::UpstreamReset,
        Self::FirstByteTimeout,
        Self::UpstreamConnectFailed,
        Self::UpstreamFailed,
        Self::UnknownModel,
        Self::BadModel,
        Self::BadRequest,
        Self::NoLanes,
        Self::MissingCredential,
        Self::NoClientCredential,
        Self::MethodNotForwarded,
        Self::PathNotForwarded,
        Self::ContentEncoding,
        Self::BodyBom,
        Self::PolicyApplied,
        Self::PolicyFallback,
        Self::PolicyRefused,
        Self::DirectUnresolved,
        Self::Grant,
        Self::Revoke,
        Self::DnsRefused,
        Self::DnsAnswered,
    ];

    /// Decodes a reason byte from an event.
    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| *reason as u8 == value)
    }

    /// Finds a reason by its stable name ([`Reason::as_str`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == name)
    }

    /// Whether a reason belongs to an allow decision.
    pub fn is_allow(self) -> bool {
        matches!(
            self,
            Self::Allowlisted
                | Self::Granted
                | Self::AllowlistedEch
                | Self::PlainHttpAllowed
                | Self::Completed
                | Self::PolicyApplied
                | Self::PolicyFallback
                | Self::Grant
                | Self::DnsAnswered
        )
    }

    /// The decision this reason stands for: allow for the allow reasons,
    /// deny for every other.
    pub fn decision(self) -> Decision {
        if self.is_allow() {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }

    /// The stable machine-readable name (audit records, logs, metrics, the `403` body).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Destination => "destination_not_allowed",
            Self::LoopbackPort => "loopback_port_not_owned",
            Self::DirectExpired => "direct_entry_expired",
            Self::Dns => "dns_not_enforcer",
            Self::RawSocket => "raw_socket",
            Self::Protocol => "protocol_not_tcp_udp",
            Self::Family => "socket_family",
            Self::SourceRoute => "source_route",
            Self::EndpointNotOwned => "endpoint_not_owned",
            Self::UnixSocket => "unix_socket",
            Self::DestinationMismatch => "destination_mismatch",
            Self::PtraceOutside => "ptrace_outside_cgroup",
            Self::Allowlisted => "allowlisted",
            Self::Granted => "granted",
            Self::AllowlistedEch => "allowlisted_ech",
            Self::PlainHttpAllowed => "plain_http_allowed",
            Self::MalformedRequest => "malformed_request",
            Self::RequestTooLarge => "request_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::IpLiteral => "ip_literal",
            Self::InvalidHost => "invalid_host",
            Self::NotAllowlisted => "not_allowlisted",
            Self::Expired => "expired",
            Self::PlainHttpDenied => "plain_http_denied",
            Self::Overloaded => "overloaded",
            Self::NotTls => "not_tls",
            Self::MalformedClientHello => "malformed_client_hello",
            Self::ClientHelloTooLarge => "client_hello_too_large",
            Self::ClientHelloTimeout => "client_hello_timeout",
            Self::MissingSni => "missing_sni",
            Self::MultipleSni => "multiple_sni",
            Self::Ech => "ech",
            Self::SniMismatch => "sni_mismatch",
            Self::ResolveFailed => "resolve_failed",
            Self::ForbiddenAddress => "forbidden_address",
            Self::ConnectFailed => "connect_failed",
            Self::ConnectTimeout => "connect_timeout",
            Self::ClientClosed => "client_closed",
            Self::ClientError => "client_error",
            Self::ClientNotEnforced => "client_not_enforced",
            Self::NotRedirected => "not_redirected",
            Self::Completed => "completed",
            Self::ResponseTooLarge => "response_too_large",
            Self::IdleTimeout => "idle_timeout",
            Self::TotalTimeout => "total_timeout",
            Self::UpstreamReset => "upstream_reset",
            Self::FirstByteTimeout => "first_byte_timeout",
            Self::UpstreamConnectFailed => "upstream_connect_failed",
            Self::UpstreamFailed => "upstream_failed",
            Self::UnknownModel => "unknown_model",
            Self::BadModel => "bad_model",
            Self::BadRequest => "bad_request",
            Self::NoLanes => "no_lanes",
            Self::MissingCredential => "missing_credential",
            Self::NoClientCredential => "no_client_credential",
            Self::MethodNotForwarded => "method_not_forwarded",
            Self::PathNotForwarded => "path_not_forwarded",
            Self::ContentEncoding => "content_encoding",
            Self::BodyBom => "body_bom",
            Self::PolicyApplied => "policy_applied",
            Self::PolicyFallback => "policy_fallback",
            Self::PolicyRefused => "policy_refused",
            Self::DirectUnresolved => "direct_unresolved",
            Self::Grant => "grant",
            Self::Revoke => "revoke",
            Self::DnsRefused => "dns_refused",
            Self::DnsAnswered => "dns_answered",
        }
    }

    /// One sentence for a `403`/`503` body and the docs: what happened.
    pub fn explain(self) -> &'static str {
        match self {
            Self::Destination => {
                "the destination is not an enforcer endpoint nor a live direct entry"
            }
            Self::LoopbackPort => {
                "the loopback socket that would receive this is not one of the enforced cgroup's"
            }
            Self::DirectExpired => "the direct allow entry for this destination has expired",
            Self::Dns => "DNS goes only to the enforcer, not to other resolvers",
            Self::RawSocket => "raw sockets are not allowed",
            Self::Protocol => "only TCP and UDP sockets are allowed",
            Self::Family => "only unix, inet, inet6 and netlink sockets are allowed",
            Self::SourceRoute => {
                "IPv6 routing headers and IPv4 source-route options (LSRR/SSRR) are not allowed"
            }
            Self::EndpointNotOwned => {
                "the enforcer endpoint is not served by the enforcer daemon (is it running?)"
            }
            Self::UnixSocket => {
                "this unix socket is not on egress.unix nor under the command's own directories"
            }
            Self::DestinationMismatch => {
                "the packet's destination is not the one its socket's connect or send was allowed for"
            }
            Self::PtraceOutside => {
                "tracing or reading the memory of a process outside the enforced cgroup is not allowed"
            }
            Self::Allowlisted => "the destination is allowlisted",
            Self::Granted => "the destination is allowed by a runtime grant",
            Self::AllowlistedEch => {
                "the destination is allowlisted; ECH allowed by fronting.allowECH"
            }
            Self::PlainHttpAllowed => "plain HTTP is allowed for this host",
            Self::MalformedRequest => "the proxy request is malformed",
            Self::RequestTooLarge => "the proxy request head is too large",
            Self::RequestTimeout => "the proxy request head did not arrive in time",
            Self::IpLiteral => "IP-address destinations are not allowed; ask for a host name",
            Self::InvalidHost => "the host is neither a valid name nor a valid address",
            Self::NotAllowlisted => "the destination host:port is not on the allowlist",
            Self::Expired => "the allowlist entry for this host:port has expired",
            Self::PlainHttpDenied => "plain HTTP to this host is not allowed; use HTTPS",
            Self::Overloaded => "too many concurrent tunnels; try again later",
            Self::NotTls => "the tunnel did not start with a TLS ClientHello",
            Self::MalformedClientHello => "the TLS ClientHello is malformed",
            Self::ClientHelloTooLarge => "the TLS ClientHello is too large",
            Self::ClientHelloTimeout => "the TLS ClientHello did not arrive in time",
            Self::MissingSni => "the TLS ClientHello has no server name (SNI)",
            Self::MultipleSni => "the TLS ClientHello names more than one server",
            Self::Ech => "the TLS ClientHello uses encrypted_client_hello (ECH)",
            Self::SniMismatch => "the TLS server name differs from the CONNECT host",
            Self::ResolveFailed => "the destination name did not resolve",
            Self::ForbiddenAddress => {
                "the destination resolved only to refused addresses (loopback, link-local, metadata, private, this host)"
            }
            Self::ConnectFailed => "the upstream refused or failed the connection",
            Self::ConnectTimeout => "the upstream did not accept the connection in time",
            Self::ClientClosed => "the client closed the connection",
            Self::ClientError => "the client connection failed",
            Self::ClientNotEnforced => {
                "the client is not a process of an enforced cgroup; only enforced agents are served"
            }
            Self::NotRedirected => {
                "the connection reached the transparent listener without a kernel redirect"
            }
            Self::Completed => "the provider's response was relayed to its end",
            Self::ResponseTooLarge => "the provider's response exceeded limits.maxResponseBytes",
            Self::IdleTimeout => "no response bytes arrived within the idle timeout",
            Self::TotalTimeout => "the request outlived the total timeout",
            Self::UpstreamReset => "the provider's response stream failed midway",
            Self::FirstByteTimeout => "the provider sent no response head in time",
            Self::UpstreamConnectFailed => {
                "the provider could not be reached (resolve, connect, TLS)"
            }
            Self::UpstreamFailed => "the provider failed the exchange before a response head",
            Self::UnknownModel => "the model matches no lane",
            Self::BadModel => "the request's top-level model is missing or unreadable",
            Self::BadRequest => "the request cannot be forwarded to a provider",
            Self::NoLanes => "the policy has no lanes",
            Self::MissingCredential => "the lane's credential is not configured",
            Self::NoClientCredential => "a passthrough lane got no client credential",
            Self::MethodNotForwarded => "the method is never forwarded to a provider",
            Self::PathNotForwarded => "the lane does not forward this method and path",
            Self::ContentEncoding => "the request body is content-encoded",
            Self::BodyBom => "the request body starts with a byte-order mark",
            Self::PolicyApplied => "a signed policy pack became active",
            Self::PolicyFallback => "the embedded fallback policy became active",
            Self::PolicyRefused => "a policy pack was refused; the active policy stays",
            Self::DirectUnresolved => "a direct entry could not be written to the kernel maps",
            Self::Grant => "a runtime grant was added",
            Self::Revoke => "a runtime grant was revoked",
            Self::DnsRefused => "the DNS name is not allowed by the policy",
            Self::DnsAnswered => "the DNS query for an allowed name was answered",
        }
    }
}

impl core::fmt::Display for Reason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Deserialises a stable name with `parse`; `expecting` says what fits.
#[cfg(feature = "serde")]
fn deserialize_name<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Name<T> {
        expecting: &'static str,
        parse: fn(&str) -> Option<T>,
    }
    impl<T> serde::de::Visitor<'_> for Name<T> {
        type Value = T;
        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<T, E> {
            (self.parse)(name)
                .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(name), &self))
        }
    }
    deserializer.deserialize_str(Name { expecting, parse })
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_name(
            deserializer,
            "a reason name such as \"not_allowlisted\"",
            Reason::from_name,
        )
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Decision {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Decision {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_name(deserializer, "\"allow\" or \"deny\"", Decision::parse)
    }
}

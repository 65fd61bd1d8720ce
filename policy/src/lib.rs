//! enforcer's policy packs: the model, Ed25519 signing, the TTL allowlist
//! and the hot-swapped active policy. Pure: no sockets, no HTTP, no TLS
//! (fetching packs is the daemon's, over `proxy::net`).
//!
//! Data flows one way: pack bytes -> signature check ([`signing`]) ->
//! [`parse_raw`] (serde, unknown fields refused with their JSON path) ->
//! [`Policy::from_raw`] (checked types) -> [`PolicyStore`] (rollback and
//! expiry checks, atomic swap of an immutable [`Snapshot`], subscription).
//!
//! Consumers:
//! * the proxy: [`Snapshot::decide`] / [`Snapshot::decide_plain_http`] (the
//!   one allowlist decision), [`normalize_host`] (CONNECT host and SNI),
//!   [`ip_literal`], [`Fronting`] flags, [`Limits`] and
//!   [`Fronting::private_address_allowed`];
//! * the daemon's pack loader (`enforcer::policy_source`): [`signing`],
//!   [`parse_pack`], [`PolicyStore`], [`tools::write_atomic`];
//! * the lane router: [`Policy::route`], [`Provider`], [`Auth`],
//!   [`Routing::strip_headers`], [`Limits`];
//! * the map writer: [`Snapshot::direct_rules`] with expiry instants and
//!   [`Snapshot::next_expiry`];
//! * the DNS filter: [`Snapshot::name_allowed`];
//! * the CLI: [`tools`], and [`edit`] (`policy suggest --apply`).
#![deny(missing_docs)]

pub mod addr;
pub mod allowlist;
pub mod api_route;
pub mod duration;
pub mod edit;
pub mod fallback;
pub mod grants;
pub mod host;
pub mod model;
pub mod raw;
pub mod signing;
pub mod snapshot;
pub mod store;
pub mod timestamp;
pub mod tools;
pub mod unix;
pub mod version;

pub use addr::Cidr;
pub use allowlist::{
    AllowRule, Allowlist, AllowlistMatch, DirectRule, Grant, GrantScope, RuleSource,
};
pub use api_route::ApiRoute;
pub use duration::{format_duration, parse_duration};
pub use enforcer_ebpf::Reason;
pub use fallback::{FALLBACK_JSON, fallback_policy};
pub use host::{
    DEFAULT_PORT, DomainName, Host, HostError, HostPattern, HostPort, HostPortPattern, IpLiteral,
    ip_literal, normalize_host,
};
pub use model::{
    AllowEntry, Auth, AuthMode, BwrapNet, CredentialName, DirectEntry, DnsMode, Egress, EgressMode,
    Fronting, HttpsUrl, Limits, LoggingMode, LoopbackMode, Matcher, ModelPattern, PackError,
    Policy, Problem, Provider, Routing, Sandbox, SeccompProfile, ValidationMode, parse_pack,
    parse_raw,
};
pub use signing::{KeyId, SigningKey, VerifyingKey};
pub use snapshot::{Origin, Snapshot};
pub use store::{Candidate, Offered, PolicyStore, Refusal};
pub use timestamp::{format_timestamp, parse_timestamp};
pub use unix::{UnixMatch, UnixPatternError, UnixSocketPattern};
pub use version::Version;

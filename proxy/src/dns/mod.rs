//! The DNS filter: the daemon's port-53 listener (DESIGN.md §4). The kernel
//! rewrites every UDP datagram and TCP connection of the enforced cgroup to
//! port 53 to it; it answers only names the policy allows, with addresses
//! the proxy itself would dial, and refuses the rest.
//!
//! A query's path, one concern per module:
//! - [`wire`]: parse the query with hickory-proto (malformed, not a QUERY,
//!   not exactly one question, or a response: `FORMERR`/`NOTIMP` or drop)
//!   and build the answer bytes (pure);
//! - [`decide`](mod@decide): the decision, a pure function of (question, policy
//!   snapshot, now): resolve (A/AAAA of an allowed name), empty (other
//!   types of an allowed name) or refuse; and which resolved addresses may
//!   be answered (the proxy's address-class check), with capped TTLs;
//! - [`server`]: [`DnsFilter`], the UDP and TCP listeners, client
//!   attribution, resolution through [`crate::net::resolve::Resolver`],
//!   audit events for refusals, [`LearnedAnswers`] for answered names;
//! - [`limit`]: the token bucket that bounds refusal audit events;
//! - [`stats`]: the filter's counters.
//!
//! Refusals are audited ([`crate::audit::RequestKind::Dns`], reason
//! `dns_refused` or `client_not_enforced`), rate-limited; answers are only
//! counted. Names are data and may be logged; answer bodies never are.

pub mod decide;
pub mod limit;
pub mod server;
pub mod stats;
pub mod wire;

pub use decide::{DnsDecision, MAX_ANSWER_TTL, decide, select_answers};
pub use server::{DnsFilter, DnsFilterConfig, DnsLimits, LearnedAnswers, LearnedWait};
pub use stats::{DnsStats, DnsStatsSnapshot};

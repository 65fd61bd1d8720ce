//! Who is behind a client connection, and whether it may be served.
//!
//! Every connection the proxy and the router accept is attributed before a
//! byte is read from it: the daemon implements [`ClientAttribution`] from
//! what the kernel recorded (the `PEERS` map for TCP, `SO_PEERCRED` for unix
//! sockets) and says whether the client is a process of an enforced cgroup.
//! [`ClientGate`] turns that into the decision: serve, or refuse with
//! [`Reason::ClientNotEnforced`] — unless the operator chose to serve
//! clients outside (`--serve-outside-clients`). This crate stays
//! kernel-agnostic: it only sees the trait.
//!
//! A proxy or router built without a gate serves everyone (library use and
//! unit tests); the daemon always installs one.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::audit::Peer;
use crate::reason::Reason;

/// What is known of the process behind a client connection. Fields the
/// source could not tell stay `None` (a TCP client outside every enforced
/// cgroup has no kernel record at all).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientIdentity {
    /// cgroup v2 id of the process.
    pub cgroup_id: Option<u64>,
    /// Process id (thread group id).
    pub pid: Option<u32>,
    /// Thread id that connected, when the kernel recorded it.
    pub tid: Option<u32>,
    /// Real user id.
    pub uid: Option<u32>,
    /// Command name.
    pub comm: Option<String>,
}

impl ClientIdentity {
    /// Whether nothing at all is known.
    pub fn is_unknown(&self) -> bool {
        *self == Self::default()
    }
}

/// The attribution of one connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    /// Who it is, as far as known.
    pub identity: ClientIdentity,
    /// Whether the process is in an enforced cgroup (or one below it).
    /// `false` when it could not be told.
    pub enforced: bool,
}

/// Finds who is behind a client connection (implemented by the daemon).
///
/// Called once per accepted connection, on its task, before anything is
/// read: it must be quick (a map lookup; for unix sockets a few small
/// `/proc` reads), never per byte.
pub trait ClientAttribution: Send + Sync {
    /// Attributes `peer`, connected to our `local` address (TCP).
    fn attribute(&self, peer: &Peer, local: Option<SocketAddr>) -> Attribution;
}

/// What to do with clients outside every enforced cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutsideClients {
    /// Refuse them ([`Reason::ClientNotEnforced`]): the default.
    #[default]
    Refuse,
    /// Serve them anyway (`--serve-outside-clients`); still attributed.
    Serve,
}

/// Attribution plus the outside-clients rule: the one check the proxy and
/// the router make on accept.
#[derive(Clone)]
pub struct ClientGate {
    lookup: Arc<dyn ClientAttribution>,
    outside: OutsideClients,
}

impl std::fmt::Debug for ClientGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientGate")
            .field("outside", &self.outside)
            .finish_non_exhaustive()
    }
}

/// The outcome of [`ClientGate::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// Who the client is, as far as known (for the audit event).
    pub identity: ClientIdentity,
    /// `Err(ClientNotEnforced)` when the client must be refused.
    pub verdict: Result<(), Reason>,
}

impl ClientGate {
    /// A gate over `lookup` applying `outside`.
    pub fn new(lookup: Arc<dyn ClientAttribution>, outside: OutsideClients) -> Self {
        Self { lookup, outside }
    }

    /// Attributes `peer` and decides whether it is served.
    pub fn check(&self, peer: &Peer, local: Option<SocketAddr>) -> Admitted {
        let attribution = self.lookup.attribute(peer, local);
        let verdict = if attribution.enforced || self.outside == OutsideClients::Serve {
            Ok(())
        } else {
            Err(Reason::ClientNotEnforced)
        };
        Admitted {
            identity: attribution.identity,
            verdict,
        }
    }
}

/// [`ClientGate::check`] when there may be no gate: no gate serves everyone
/// and knows nothing.
pub fn check(gate: Option<&ClientGate>, peer: &Peer, local: Option<SocketAddr>) -> Admitted {
    match gate {
        Some(gate) => gate.check(peer, local),
        None => Admitted {
            identity: ClientIdentity::default(),
            verdict: Ok(()),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    struct Fixed(bool);

    impl ClientAttribution for Fixed {
        fn attribute(&self, _peer: &Peer, _local: Option<SocketAddr>) -> Attribution {
            Attribution {
                identity: ClientIdentity {
                    pid: Some(7),
                    ..ClientIdentity::default()
                },
                enforced: self.0,
            }
        }
    }

    fn peer() -> Peer {
        Peer::Tcp {
            addr: "127.0.0.1:40000".parse().unwrap(),
        }
    }

    #[test]
    fn outside_clients_are_refused_unless_the_operator_serves_them() {
        let refuse = ClientGate::new(Arc::new(Fixed(false)), OutsideClients::Refuse);
        let outcome = refuse.check(&peer(), None);
        assert_eq!(outcome.verdict, Err(Reason::ClientNotEnforced));
        assert_eq!(outcome.identity.pid, Some(7), "still attributed");
        let serve = ClientGate::new(Arc::new(Fixed(false)), OutsideClients::Serve);
        assert_eq!(serve.check(&peer(), None).verdict, Ok(()));
        let inside = ClientGate::new(Arc::new(Fixed(true)), OutsideClients::Refuse);
        assert_eq!(inside.check(&peer(), None).verdict, Ok(()));
        assert_eq!(check(None, &peer(), None).verdict, Ok(()));
    }
}

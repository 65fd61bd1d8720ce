//! The daemon's [`ClientAttribution`]: who is behind each connection the
//! proxy and the router accept, from what the kernel recorded.
//!
//! - TCP: the client's own address and port in `PEERS` (written by
//!   `sockops` for sockets of the enforced cgroups). No entry means the
//!   client is not a process of an enforced cgroup.
//! - UDP (the DNS filter's datagrams): the datagram's source address and
//!   port in `PEERS` as UDP, the same way.
//! - unix sockets: `SO_PEERCRED` gives pid and uid; the cgroup and command
//!   name are read from `/proc/<pid>` once, at accept.
//!
//! Either way the client counts as enforced only when its cgroup is the
//! enforced one or below it ([`EnforcedTree`]).

use std::{net::SocketAddr, path::PathBuf};

use proxy::{
    attribution::{Attribution, ClientAttribution, ClientIdentity},
    audit::Peer,
};

use crate::kernel::{
    maps::Transport,
    peers::{EnforcedTree, PeerTable, ProcessCgroup},
};

/// Attribution from the kernel's `PEERS` map and `SO_PEERCRED`.
#[derive(Debug)]
pub struct KernelAttribution {
    peers: PeerTable,
    tree: EnforcedTree,
    /// The cgroup v2 mount.
    mount: PathBuf,
    /// The enforced cgroup, relative to the mount.
    enforced: PathBuf,
}

impl KernelAttribution {
    /// Attribution for the cgroup `enforced` (relative to `mount`, absolute
    /// at `absolute`, id `cgroup_id`) from the pinned `peers` map.
    pub fn new(
        peers: PeerTable,
        mount: PathBuf,
        enforced: PathBuf,
        absolute: PathBuf,
        cgroup_id: u64,
    ) -> Self {
        Self {
            peers,
            tree: EnforcedTree::new(absolute, cgroup_id),
            mount,
            enforced,
        }
    }

    fn inet(&self, addr: SocketAddr, transport: Transport) -> Attribution {
        match self.peers.lookup(addr, transport) {
            Ok(Some(task)) => Attribution {
                enforced: self.tree.contains(task.cgroup_id),
                identity: ClientIdentity {
                    cgroup_id: Some(task.cgroup_id),
                    pid: Some(task.pid),
                    tid: Some(task.tid),
                    uid: Some(task.uid),
                    comm: Some(task.comm),
                },
            },
            Ok(None) => Attribution::default(),
            Err(error) => {
                tracing::warn!(error = %error, client = %addr, "client attribution failed; refusing as unattributed");
                Attribution::default()
            }
        }
    }

    fn unix(&self, pid: Option<i32>, uid: Option<u32>) -> Attribution {
        let pid = pid
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|p| *p > 0);
        let mut identity = ClientIdentity {
            pid,
            uid,
            ..ClientIdentity::default()
        };
        let Some(process) = pid.and_then(|pid| ProcessCgroup::of(pid, &self.mount)) else {
            return Attribution {
                identity,
                enforced: false,
            };
        };
        identity.cgroup_id = process.cgroup_id;
        identity.comm = process.comm;
        Attribution {
            identity,
            enforced: EnforcedTree::contains_path(&self.enforced, &process.relative),
        }
    }
}

impl ClientAttribution for KernelAttribution {
    fn attribute(&self, peer: &Peer, _local: Option<SocketAddr>) -> Attribution {
        match peer {
            Peer::Tcp { addr } => self.inet(*addr, Transport::Tcp),
            Peer::Udp { addr } => self.inet(*addr, Transport::Udp),
            Peer::Unix { pid, uid } => self.unix(*pid, *uid),
        }
    }
}

// === impl OriginalDestinations ===

impl proxy::transparent::OriginalDestinations for crate::kernel::redirect::OriginalTable {
    fn original(&self, client: SocketAddr) -> Option<SocketAddr> {
        match self.lookup(client) {
            Ok(original) => original,
            Err(error) => {
                tracing::warn!(error = %error, client = %client, "original destination lookup failed");
                None
            }
        }
    }
}

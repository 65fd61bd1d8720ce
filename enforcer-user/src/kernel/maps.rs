//! Typed access to the pinned maps of one enforced cgroup.
//!
//! Everything here works from the pins alone, so `status`, `allow` and the
//! tests can read and write enforcement state with no attacher running.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, SkStorage};
use enforcer_ebpf::{
    Allow4Key, AllowValue, DenyEvent, Endpoint, MAX_ENDPOINTS, RECENT_DENIES, Reason, SockTag,
    SocketKey, map_names, owner, protocol, stat, v4_mapped,
};

use super::{KernelError, paths::PinDirs};

/// Transport protocol of an endpoint or direct entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Transport {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => protocol::TCP,
            Self::Udp => protocol::UDP,
        }
    }

    /// Decodes an IP protocol number.
    pub fn from_number(number: u8) -> Option<Self> {
        match number {
            protocol::TCP => Some(Self::Tcp),
            protocol::UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

/// One enforcer listener the cgroup may reach (proxy, router, DNS filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EndpointSpec {
    /// Listening address.
    pub addr: SocketAddr,
    /// Its transport.
    pub transport: Transport,
}

impl EndpointSpec {
    /// A TCP endpoint.
    pub fn tcp(addr: SocketAddr) -> Self {
        Self {
            addr,
            transport: Transport::Tcp,
        }
    }

    /// A UDP endpoint.
    pub fn udp(addr: SocketAddr) -> Self {
        Self {
            addr,
            transport: Transport::Udp,
        }
    }
}

/// A socket address as the programs store it: 16 bytes, IPv4 mapped.
pub fn mapped_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address the programs' 16 bytes stand for (IPv4-mapped shown as IPv4).
pub fn ip_from_bytes(bytes: [u8; 16]) -> IpAddr {
    Ipv6Addr::from(bytes).to_canonical()
}

/// Counters summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Connects and sendmsgs allowed.
    pub allowed: u64,
    /// Deny events lost because the ring buffer was full.
    pub events_lost: u64,
    /// TCP connects rewritten to the transparent listener.
    pub redirected: u64,
    /// Port-53 connects and sendmsgs rewritten to the DNS filter.
    pub dns_redirected: u64,
    /// Denies by reason name (every reason listed, zero included).
    pub denied: Vec<(String, u64)>,
}

impl Counters {
    /// All denies.
    pub fn denied_total(&self) -> u64 {
        self.denied.iter().map(|(_, count)| count).sum()
    }
}

/// A direct allow entry as stored in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DirectEntry {
    /// Destination.
    pub addr: SocketAddr,
    /// Transport.
    pub transport: Transport,
    /// `CLOCK_BOOTTIME` nanoseconds of expiry (`u64::MAX` = never).
    pub expires_at_boot_ns: u64,
}

/// The pinned maps of one cgroup.
pub struct PinnedMaps {
    pins: PinDirs,
}

impl PinnedMaps {
    /// Opens the maps pinned under `pins` (they are opened per operation).
    pub fn open(pins: &PinDirs) -> Result<Self, KernelError> {
        if !pins.maps().exists() {
            return Err(KernelError::NotAttached {
                cgroup: pins.root.clone(),
                pins: pins.maps(),
            });
        }
        Ok(Self { pins: pins.clone() })
    }

    /// Opens the pinned map `name` (per operation).
    pub(super) fn map(&self, name: &'static str) -> Result<Map, KernelError> {
        let data = MapData::from_pin(self.pins.map(name)).map_err(|source| KernelError::Map {
            map: name,
            what: format!("opening pin {}", self.pins.map(name).display()),
            source,
        })?;
        Map::from_map_data(data).map_err(|source| KernelError::Map {
            map: name,
            what: "reading map type".into(),
            source,
        })
    }

    /// Tags `socket` (one of the daemon's listeners) as the daemon's in
    /// `SOCK_TAGS` (`bpf_map_update_elem` with the socket's fd as the key):
    /// the programs allow an endpoint only while such a socket listens there.
    pub fn tag_daemon_socket(&self, socket: &impl std::os::fd::AsFd) -> Result<(), KernelError> {
        let name = map_names::SOCK_TAGS;
        let mut map: SkStorage<MapData, SockTag> = self
            .map(name)?
            .try_into()
            .map_err(map_error(name, "opening"))?;
        let tag = SockTag {
            owner: owner::DAEMON,
            ..SockTag::default()
        };
        map.insert(&socket.as_fd(), tag, 0)
            .map_err(map_error(name, "tagging a daemon listener"))
    }

    /// Replaces the endpoint table.
    pub fn set_endpoints(&self, endpoints: &[EndpointSpec]) -> Result<(), KernelError> {
        if endpoints.len() > MAX_ENDPOINTS as usize {
            return Err(KernelError::TooManyEndpoints {
                count: endpoints.len(),
                max: MAX_ENDPOINTS,
            });
        }
        let name = map_names::CONFIG;
        let mut array: Array<MapData, Endpoint> = self
            .map(name)?
            .try_into()
            .map_err(map_error(name, "opening"))?;
        for slot in 0..MAX_ENDPOINTS {
            let value = endpoints
                .get(slot as usize)
                .map_or_else(Endpoint::default, |spec| Endpoint {
                    addr: mapped_bytes(spec.addr.ip()),
                    port: spec.addr.port(),
                    protocol: spec.transport.number(),
                    in_use: 1,
                });
            array
                .set(slot, value, 0)
                .map_err(map_error(name, "writing an endpoint"))?;
        }
        Ok(())
    }

    /// The endpoint table.
    pub fn endpoints(&self) -> Result<Vec<EndpointSpec>, KernelError> {
        let name = map_names::CONFIG;
        let array: Array<MapData, Endpoint> = self
            .map(name)?
            .try_into()
            .map_err(map_error(name, "opening"))?;
        let mut endpoints = Vec::new();
        for value in array.iter() {
            let endpoint = value.map_err(map_error(name, "reading"))?;
            if endpoint.in_use != 1 {
                continue;
            }
            if let Some(transport) = Transport::from_number(endpoint.protocol) {
                endpoints.push(EndpointSpec {
                    addr: SocketAddr::new(ip_from_bytes(endpoint.addr), endpoint.port),
                    transport,
                });
            }
        }
        Ok(endpoints)
    }

    /// Adds or replaces a direct allow entry, live until `expires_at_boot_ns`
    /// (`CLOCK_BOOTTIME`; [`enforcer_ebpf::NEVER_EXPIRES`] for none).
    pub fn set_direct(
        &self,
        addr: SocketAddr,
        transport: Transport,
        expires_at_boot_ns: u64,
    ) -> Result<(), KernelError> {
        let value = AllowValue { expires_at_boot_ns };
        match canonical(addr.ip()) {
            IpAddr::V4(v4) => {
                let name = map_names::ALLOW4;
                let mut map: HashMap<MapData, Allow4Key, AllowValue> =
                    self.map(name)?
                        .try_into()
                        .map_err(map_error(name, "opening"))?;
                map.insert(allow4_key(v4, addr.port(), transport), value, 0)
                    .map_err(map_error(name, "inserting a direct entry"))
            }
            IpAddr::V6(v6) => {
                let name = map_names::ALLOW6;
                let mut map: HashMap<MapData, SocketKey, AllowValue> =
                    self.map(name)?
                        .try_into()
                        .map_err(map_error(name, "opening"))?;
                map.insert(socket_key(v6.octets(), addr.port(), transport), value, 0)
                    .map_err(map_error(name, "inserting a direct entry"))
            }
        }
    }

    /// Removes a direct allow entry; absent entries are not an error.
    pub fn remove_direct(&self, addr: SocketAddr, transport: Transport) -> Result<(), KernelError> {
        let result = match canonical(addr.ip()) {
            IpAddr::V4(v4) => {
                let name = map_names::ALLOW4;
                let mut map: HashMap<MapData, Allow4Key, AllowValue> =
                    self.map(name)?
                        .try_into()
                        .map_err(map_error(name, "opening"))?;
                map.remove(&allow4_key(v4, addr.port(), transport))
                    .map_err(map_error(name, "removing a direct entry"))
            }
            IpAddr::V6(v6) => {
                let name = map_names::ALLOW6;
                let mut map: HashMap<MapData, SocketKey, AllowValue> =
                    self.map(name)?
                        .try_into()
                        .map_err(map_error(name, "opening"))?;
                map.remove(&socket_key(v6.octets(), addr.port(), transport))
                    .map_err(map_error(name, "removing a direct entry"))
            }
        };
        match result {
            Err(KernelError::Map {
                source: MapError::KeyNotFound,
                ..
            }) => Ok(()),
            other => other,
        }
    }

    /// Every direct entry in both maps.
    pub fn direct_entries(&self) -> Result<Vec<DirectEntry>, KernelError> {
        let mut entries = Vec::new();
        let name = map_names::ALLOW4;
        let map4: HashMap<MapData, Allow4Key, AllowValue> = self
            .map(name)?
            .try_into()
            .map_err(map_error(name, "opening"))?;
        for item in map4.iter() {
            let (key, value) = item.map_err(map_error(name, "reading"))?;
            entries.push(DirectEntry {
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(key.addr)), key.port),
                transport: Transport::from_number(key.protocol).unwrap_or(Transport::Tcp),
                expires_at_boot_ns: value.expires_at_boot_ns,
            });
        }
        let name = map_names::ALLOW6;
        let map6: HashMap<MapData, SocketKey, AllowValue> = self
            .map(name)?
            .try_into()
            .map_err(map_error(name, "opening"))?;
        for item in map6.iter() {
            let (key, value) = item.map_err(map_error(name, "reading"))?;
            entries.push(DirectEntry {
                addr: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(key.addr)), key.port),
                transport: Transport::from_number(key.protocol).unwrap_or(Transport::Tcp),
                expires_at_boot_ns: value.expires_at_boot_ns,
            });
        }
        Ok(entries)
    }

    /// The per-CPU counters, summed.
    pub fn counters(&self) -> Result<Counters, KernelError> {
        let name = map_names::STATS;
        let array: PerCpuArray<MapData, u64> = self
            .map(name)?
            .try_into()
            .map_err(map_error(name, "opening"))?;
        let read = |index: u32| -> Result<u64, KernelError> {
            let values = array.get(&index, 0).map_err(map_error(name, "reading"))?;
            Ok(values.iter().sum())
        };
        let mut denied = Vec::new();
        for reason in Reason::KERNEL {
            denied.push((
                reason.as_str().to_owned(),
                read(stat::DENIED_BASE + reason as u32)?,
            ));
        }
        Ok(Counters {
            allowed: read(stat::ALLOWED)?,
            events_lost: read(stat::EVENTS_LOST)?,
            redirected: read(stat::REDIRECTED)?,
            dns_redirected: read(stat::DNS_REDIRECTED)?,
            denied,
        })
    }

    /// The last denies, oldest first.
    pub fn recent_denies(&self) -> Result<Vec<DenyEvent>, KernelError> {
        let name = map_names::RECENT_HEAD;
        let head: Array<MapData, u64> = self
            .map(name)?
            .try_into()
            .map_err(map_error(name, "opening"))?;
        let written = head.get(&0, 0).map_err(map_error(name, "reading"))?;
        let name = map_names::RECENT;
        let recent: Array<MapData, DenyEvent> = self
            .map(name)?
            .try_into()
            .map_err(map_error(name, "opening"))?;
        let slots = u64::from(RECENT_DENIES);
        let first = written.saturating_sub(slots);
        let mut events = Vec::new();
        for sequence in first..written {
            let slot = u32::try_from(sequence % slots).unwrap_or(0);
            let event = recent.get(&slot, 0).map_err(map_error(name, "reading"))?;
            if event != DenyEvent::ZERO {
                events.push(event);
            }
        }
        events.sort_by_key(|event| event.boot_ns);
        Ok(events)
    }
}

/// IPv4-mapped IPv6 addresses are IPv4 to the programs.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn allow4_key(ip: Ipv4Addr, port: u16, transport: Transport) -> Allow4Key {
    Allow4Key {
        addr: ip.octets(),
        port,
        protocol: transport.number(),
        pad: 0,
    }
}

/// The key the kernel programs file a client socket under: its own
/// address (IPv4 as IPv4-mapped) and port.
pub(super) fn client_key(client: SocketAddr, transport: Transport) -> SocketKey {
    socket_key(mapped_bytes(client.ip()), client.port(), transport)
}

fn socket_key(addr: [u8; 16], port: u16, transport: Transport) -> SocketKey {
    SocketKey {
        addr,
        port,
        protocol: transport.number(),
        pad: 0,
    }
}

/// A map error naming the map and the step.
pub(super) fn map_error(map: &'static str, what: &'static str) -> impl Fn(MapError) -> KernelError {
    move |source| KernelError::Map {
        map,
        what: what.into(),
        source,
    }
}

/// Parses `ADDR:PORT` or `[V6]:PORT` for CLI flags.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(text)
        .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:3128 or [::1]:3128"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn v4_and_mapped_store_the_same() {
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(mapped_bytes(v4), mapped_bytes(mapped));
        assert_eq!(ip_from_bytes(mapped_bytes(v4)), v4);
    }

    #[test]
    fn v6_round_trips() {
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(ip_from_bytes(mapped_bytes(v6)), v6);
    }
}

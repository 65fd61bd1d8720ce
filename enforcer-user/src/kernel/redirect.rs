//! Egress mode `redirect` in the maps: the mode and the transparent
//! listeners (`REDIRECT`), the ports redirected (`REDIRECT_PORTS`), and the
//! original destinations `sockops` hands to the transparent listener
//! (`REDIRECTS`, keyed by the client socket's own address and port).
//!
//! The programs redirect only while the daemon's own tagged socket listens
//! on the transparent listener's address (see
//! [`super::ownership::claim_endpoints`]); what is written here says where
//! that is and which ports go there.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use aya::maps::{Array, HashMap, MapData, MapError};
use enforcer_ebpf::{OriginalDestination, RedirectConfig, SocketKey, map_names};
use policy::EgressMode;

use super::{
    KernelError,
    maps::{PinnedMaps, Transport, client_key, ip_from_bytes, map_error, mapped_bytes},
    paths::PinDirs,
};

/// What the programs are told about redirecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RedirectSettings {
    /// `proxy-only` writes nothing but "disabled".
    pub mode: Mode,
    /// The IPv4 transparent listener (a loopback address).
    pub listen4: Option<SocketAddr>,
    /// The IPv6 transparent listener (`[::1]`).
    pub listen6: Option<SocketAddr>,
}

/// The egress mode as the kernel layer knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Only proxy-aware clients work; every other connect is EPERM.
    #[default]
    ProxyOnly,
    /// TCP to a redirected port goes to the transparent listener.
    Redirect,
}

impl Mode {
    /// The policy's and `--egress-mode`'s name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProxyOnly => "proxy-only",
            Self::Redirect => "redirect",
        }
    }
}

impl Mode {
    /// The mode the daemon enforces: `--egress-mode` when given, else the
    /// pack's `egress.mode` (itself `proxy-only` unless the pack says
    /// `redirect`).
    pub fn effective(flag: Option<Mode>, pack: EgressMode) -> Mode {
        flag.unwrap_or_else(|| pack.into())
    }
}

impl From<EgressMode> for Mode {
    fn from(mode: EgressMode) -> Self {
        match mode {
            EgressMode::ProxyOnly => Self::ProxyOnly,
            EgressMode::Redirect => Self::Redirect,
        }
    }
}

impl RedirectSettings {
    /// The `REDIRECT` value: the listener addresses are only written in
    /// mode `redirect`; a family without a listener has port 0 (its
    /// redirectable connects are denied).
    pub fn config(&self) -> RedirectConfig {
        let redirect = self.mode == Mode::Redirect;
        let (listen4, port4) = match self.listen4.filter(|_| redirect) {
            Some(addr) => (mapped_bytes(addr.ip()), addr.port()),
            None => ([0; 16], 0),
        };
        let (listen6, port6) = match self.listen6.filter(|_| redirect) {
            Some(addr) => (mapped_bytes(addr.ip()), addr.port()),
            None => ([0; 16], 0),
        };
        RedirectConfig {
            listen4,
            listen6,
            port4,
            port6,
            enabled: u8::from(redirect),
            pad: [0; 3],
        }
    }

    /// Read back from a `REDIRECT` value.
    pub fn from_config(config: &RedirectConfig) -> Self {
        let listener = |addr: [u8; 16], port: u16| {
            (port != 0).then(|| SocketAddr::new(ip_from_bytes(addr), port))
        };
        Self {
            mode: if config.enabled == 1 {
                Mode::Redirect
            } else {
                Mode::ProxyOnly
            },
            listen4: listener(config.listen4, config.port4),
            listen6: listener(config.listen6, config.port6),
        }
    }
}

// === impl PinnedMaps: REDIRECT, REDIRECT_PORTS ===

impl PinnedMaps {
    /// Writes the mode and the transparent listeners.
    pub fn set_redirect(&self, settings: &RedirectSettings) -> Result<(), KernelError> {
        self.set_listener_config(map_names::REDIRECT, settings.config())
    }

    /// Writes the one [`RedirectConfig`] of `name` (`REDIRECT` or `DNS_REDIRECT`).
    pub(super) fn set_listener_config(
        &self,
        name: &'static str,
        config: RedirectConfig,
    ) -> Result<(), KernelError> {
        let mut array: Array<MapData, RedirectConfig> = self
            .map(name)?
            .try_into()
            .map_err(map_error(name, "opening"))?;
        array
            .set(0, config, 0)
            .map_err(map_error(name, "writing the listener settings"))
    }

    /// The one [`RedirectConfig`] of `name`, as written.
    pub(super) fn listener_config(
        &self,
        name: &'static str,
    ) -> Result<RedirectConfig, KernelError> {
        let array: Array<MapData, RedirectConfig> = self
            .map(name)?
            .try_into()
            .map_err(map_error(name, "opening"))?;
        array.get(&0, 0).map_err(map_error(name, "reading"))
    }

    /// The mode and the transparent listeners as written.
    pub fn redirect(&self) -> Result<RedirectSettings, KernelError> {
        let config = self.listener_config(map_names::REDIRECT)?;
        Ok(RedirectSettings::from_config(&config))
    }

    /// Makes `REDIRECT_PORTS` exactly `ports` (new ports first, then the
    /// ones no longer wanted go).
    pub fn set_redirect_ports(&self, ports: &BTreeSet<u16>) -> Result<(), KernelError> {
        let name = map_names::REDIRECT_PORTS;
        let mut map: HashMap<MapData, u16, u8> = self
            .map(name)?
            .try_into()
            .map_err(map_error(name, "opening"))?;
        let current: BTreeSet<u16> = map
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_error(name, "reading"))?;
        for port in ports.difference(&current) {
            map.insert(port, 1, 0)
                .map_err(map_error(name, "inserting a port"))?;
        }
        for port in current.difference(ports) {
            match map.remove(port) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(map_error(name, "removing a port")(source)),
            }
        }
        Ok(())
    }

    /// The redirected ports.
    pub fn redirect_ports(&self) -> Result<BTreeSet<u16>, KernelError> {
        let name = map_names::REDIRECT_PORTS;
        let map: HashMap<MapData, u16, u8> = self
            .map(name)?
            .try_into()
            .map_err(map_error(name, "opening"))?;
        map.keys()
            .collect::<Result<_, _>>()
            .map_err(map_error(name, "reading"))
    }
}

// === OriginalTable: REDIRECTS ===

/// The pinned `REDIRECTS` map of one enforced cgroup, opened once: where
/// each redirected client asked to go.
pub struct OriginalTable {
    map: HashMap<MapData, SocketKey, OriginalDestination>,
}

impl std::fmt::Debug for OriginalTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginalTable").finish_non_exhaustive()
    }
}

impl OriginalTable {
    /// Opens `REDIRECTS` under `pins`.
    pub fn open(pins: &PinDirs) -> Result<Self, KernelError> {
        let maps = PinnedMaps::open(pins)?;
        let name = map_names::REDIRECTS;
        let map = maps
            .map(name)?
            .try_into()
            .map_err(map_error(name, "opening"))?;
        Ok(Self { map })
    }

    /// The destination the client socket whose own address is `client`
    /// (what `accept()` returned as the peer) asked for, if it was redirected.
    pub fn lookup(&self, client: SocketAddr) -> Result<Option<SocketAddr>, KernelError> {
        let key = client_key(client, Transport::Tcp);
        match self.map.get(&key, 0) {
            Ok(original) if original.in_use == 1 => Ok(Some(original_addr(&original))),
            Ok(_) | Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(KernelError::Map {
                map: map_names::REDIRECTS,
                what: format!("looking up {client}"),
                source,
            }),
        }
    }
}

/// An original destination as a socket address (IPv4-mapped shown as IPv4).
pub fn original_addr(original: &OriginalDestination) -> SocketAddr {
    let ip: IpAddr = ip_from_bytes(original.addr);
    SocketAddr::new(ip, original.port)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn proxy_only_writes_no_listener_and_redirect_round_trips() {
        let listen4: SocketAddr = "127.0.0.1:4100".parse().unwrap();
        let listen6: SocketAddr = "[::1]:4101".parse().unwrap();
        let off = RedirectSettings {
            mode: Mode::ProxyOnly,
            listen4: Some(listen4),
            listen6: Some(listen6),
        };
        let config = off.config();
        assert_eq!(config.enabled, 0);
        assert_eq!((config.port4, config.port6), (0, 0));
        assert_eq!(
            RedirectSettings::from_config(&config),
            RedirectSettings::default()
        );
        let on = RedirectSettings {
            mode: Mode::Redirect,
            ..off
        };
        let config = on.config();
        assert_eq!(config.enabled, 1);
        assert_eq!(config.listen4, mapped_bytes(listen4.ip()));
        assert_eq!(RedirectSettings::from_config(&config), on);
        // No IPv6 listener: port 0, so the programs deny IPv6 redirects.
        let v4_only = RedirectSettings {
            listen6: None,
            ..on
        };
        assert_eq!(v4_only.config().port6, 0);
    }

    #[test]
    fn the_flag_overrides_the_pack_and_the_default_is_proxy_only() {
        assert_eq!(Mode::effective(None, EgressMode::default()), Mode::Redirect);
        assert_eq!(Mode::effective(None, EgressMode::Redirect), Mode::Redirect);
        assert_eq!(
            Mode::effective(Some(Mode::ProxyOnly), EgressMode::Redirect),
            Mode::ProxyOnly
        );
        assert_eq!(
            Mode::effective(Some(Mode::Redirect), EgressMode::ProxyOnly),
            Mode::Redirect
        );
    }

    #[test]
    fn original_destinations_read_back_as_the_address_asked_for() {
        let original = OriginalDestination {
            addr: mapped_bytes("127.0.0.9".parse().unwrap()),
            port: 443,
            in_use: 1,
            pad: 0,
        };
        assert_eq!(
            original_addr(&original),
            "127.0.0.9:443".parse::<SocketAddr>().unwrap()
        );
    }
}

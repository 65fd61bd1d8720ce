//! `egress.dns = "filtered"` in the maps (`DNS_REDIRECT`): whether the
//! programs rewrite the cgroup's port-53 traffic to the daemon's DNS
//! filter, and where its listeners are (UDP and TCP on one address and
//! port per family).
//!
//! As for the transparent listener, the programs rewrite only while the
//! daemon's own tagged socket of the query's protocol is what receives
//! there ([`super::ownership::claim_endpoints`]); with the daemon down
//! port 53 is denied.

use std::net::SocketAddr;

use enforcer_ebpf::{RedirectConfig, map_names};

use super::{
    KernelError,
    maps::{PinnedMaps, ip_from_bytes, mapped_bytes},
};

/// Where the DNS filter listens; no listener at all: port 53 is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DnsRedirect {
    /// The IPv4 listener (a loopback address).
    pub listen4: Option<SocketAddr>,
    /// The IPv6 listener (`[::1]`); `None`: IPv6 queries are denied.
    pub listen6: Option<SocketAddr>,
}

impl DnsRedirect {
    /// Whether port-53 traffic is rewritten at all.
    pub fn enabled(&self) -> bool {
        self.listen4.is_some() || self.listen6.is_some()
    }

    /// The `DNS_REDIRECT` value (the `REDIRECT` layout).
    pub fn config(&self) -> RedirectConfig {
        let listener = |addr: Option<SocketAddr>| match addr {
            Some(addr) => (mapped_bytes(addr.ip()), addr.port()),
            None => ([0; 16], 0),
        };
        let (listen4, port4) = listener(self.listen4);
        let (listen6, port6) = listener(self.listen6);
        RedirectConfig {
            listen4,
            listen6,
            port4,
            port6,
            enabled: u8::from(self.enabled()),
            pad: [0; 3],
        }
    }

    /// Read back from a `DNS_REDIRECT` value.
    pub fn from_config(config: &RedirectConfig) -> Self {
        let listener = |addr: [u8; 16], port: u16| {
            (config.enabled == 1 && port != 0).then(|| SocketAddr::new(ip_from_bytes(addr), port))
        };
        Self {
            listen4: listener(config.listen4, config.port4),
            listen6: listener(config.listen6, config.port6),
        }
    }
}

impl PinnedMaps {
    /// Writes where the DNS filter listens (or that there is none).
    pub fn set_dns_redirect(&self, settings: &DnsRedirect) -> Result<(), KernelError> {
        self.set_listener_config(map_names::DNS_REDIRECT, settings.config())
    }

    /// Where the programs send port-53 traffic, as written.
    pub fn dns_redirect(&self) -> Result<DnsRedirect, KernelError> {
        let config = self.listener_config(map_names::DNS_REDIRECT)?;
        Ok(DnsRedirect::from_config(&config))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn no_listener_disables_and_listeners_round_trip() {
        let off = DnsRedirect::default();
        assert_eq!(off.config().enabled, 0);
        assert_eq!(DnsRedirect::from_config(&off.config()), off);
        let on = DnsRedirect {
            listen4: Some("127.0.0.1:5300".parse().unwrap()),
            listen6: Some("[::1]:5300".parse().unwrap()),
        };
        let config = on.config();
        assert_eq!(
            (config.enabled, config.port4, config.port6),
            (1, 5300, 5300)
        );
        assert_eq!(DnsRedirect::from_config(&config), on);
        let v4_only = DnsRedirect {
            listen6: None,
            ..on
        };
        assert_eq!(v4_only.config().port6, 0);
        assert_eq!(DnsRedirect::from_config(&v4_only.config()), v4_only);
    }
}

//! `[udp]` and `[route.udp]` as written in the file, and the settings a `udp://` session
//! runs with (`session::udp`): datagram size, text, idle timeout, ICMP errors, buffers, queue.

use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// Largest UDP payload over IPv4: 65,535 minus the 20-byte IP and 8-byte UDP headers.
pub const MAX_DATAGRAM_V4: usize = 65_507;
/// Largest UDP payload over IPv6 (without jumbograms): 65,535 minus the 8-byte UDP header.
pub const MAX_DATAGRAM_V6: usize = 65_527;

/// `[udp]`: what all `udp://` sessions of the process share.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpGlobalConfig {
    /// Concurrent `udp://` sessions across all routes (each holds one UDP socket); over it,
    /// 503. 0 = no cap. Default 0.
    pub max_sessions: usize,
}

/// `[route.udp]`: how a route's `udp://` sessions behave. Allowed only on routes whose
/// backend (or token-file / claim target) can be `udp://`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpRouteConfig {
    /// Largest datagram either way, in bytes: a client message above it closes with 1009, a
    /// backend datagram above it is dropped. 0 = the address family's limit (65,507 for
    /// IPv4, 65,527 for IPv6). Default 0.
    pub max_datagram_bytes: usize,
    /// Accept text messages from the client (sent as their UTF-8 bytes); backend datagrams
    /// still go out as binary. Default false: text closes with 1003.
    pub allow_text: bool,
    /// Seconds without a datagram either way after which the session closes (1000). 0 = never.
    /// Default 30.
    pub idle_timeout_secs: f64,
    /// ICMP errors (port unreachable: nothing listens at the backend) the socket may report
    /// in a row before the session closes with 1011; a datagram from the backend resets the
    /// count. 0 = never close on them. Default 3.
    pub max_icmp_errors: u32,
    /// The socket's receive buffer (`SO_RCVBUF`) in bytes; 0 = the kernel's default. Default 0.
    pub recv_buffer_bytes: usize,
    /// The socket's send buffer (`SO_SNDBUF`) in bytes; 0 = the kernel's default. Default 0.
    pub send_buffer_bytes: usize,
    /// Backend datagrams waiting for the client's connection, per session; when the client
    /// cannot take more, newer datagrams are dropped and counted. 1..=65536. Default 64.
    pub queue_datagrams: usize,
}

impl Default for UdpRouteConfig {
    fn default() -> Self {
        Self {
            max_datagram_bytes: 0,
            allow_text: false,
            idle_timeout_secs: 30.0,
            max_icmp_errors: 3,
            recv_buffer_bytes: 0,
            send_buffer_bytes: 0,
            queue_datagrams: 64,
        }
    }
}

/// A route's `udp://` session settings, checked and resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct UdpSettings {
    /// 0: the family's limit, decided when the socket is connected.
    pub max_datagram_bytes: usize,
    pub allow_text: bool,
    /// `None`: no idle timeout.
    pub idle_timeout: Option<Duration>,
    /// 0: ICMP errors never end the session.
    pub max_icmp_errors: u32,
    pub recv_buffer_bytes: Option<usize>,
    pub send_buffer_bytes: Option<usize>,
    pub queue_datagrams: usize,
}

impl Default for UdpSettings {
    fn default() -> Self {
        UdpRouteConfig::default()
            .resolve("default")
            .expect("the defaults are valid")
    }
}

impl UdpSettings {
    /// The datagram limit for a socket of this family (`v6`): the configured one, capped
    /// at what the family can carry.
    pub fn datagram_limit(&self, v6: bool) -> usize {
        let family = if v6 { MAX_DATAGRAM_V6 } else { MAX_DATAGRAM_V4 };
        match self.max_datagram_bytes {
            0 => family,
            n => n.min(family),
        }
    }
}

impl UdpRouteConfig {
    /// Check the values; errors name `at` (`route[2].udp`).
    pub fn resolve(&self, at: &str) -> anyhow::Result<UdpSettings> {
        if self.max_datagram_bytes > MAX_DATAGRAM_V6 {
            bail!(
                "{at}.max_datagram_bytes: must be at most {MAX_DATAGRAM_V6} (0 = the family's \
                 limit), got {}",
                self.max_datagram_bytes
            );
        }
        if !self.idle_timeout_secs.is_finite()
            || self.idle_timeout_secs < 0.0
            || self.idle_timeout_secs > 1e9
        {
            bail!(
                "{at}.idle_timeout_secs: must be a number of seconds >= 0, got {}",
                self.idle_timeout_secs
            );
        }
        if !(1..=65_536).contains(&self.queue_datagrams) {
            bail!(
                "{at}.queue_datagrams: must be 1..=65536, got {}",
                self.queue_datagrams
            );
        }
        for (key, value) in [
            ("recv_buffer_bytes", self.recv_buffer_bytes),
            ("send_buffer_bytes", self.send_buffer_bytes),
        ] {
            if value > i32::MAX as usize / 2 {
                bail!("{at}.{key}: must be at most {}, got {value}", i32::MAX / 2);
            }
        }
        Ok(UdpSettings {
            max_datagram_bytes: self.max_datagram_bytes,
            allow_text: self.allow_text,
            idle_timeout: (self.idle_timeout_secs > 0.0)
                .then(|| Duration::from_secs_f64(self.idle_timeout_secs)),
            max_icmp_errors: self.max_icmp_errors,
            recv_buffer_bytes: (self.recv_buffer_bytes > 0).then_some(self.recv_buffer_bytes),
            send_buffer_bytes: (self.send_buffer_bytes > 0).then_some(self.send_buffer_bytes),
            queue_datagrams: self.queue_datagrams,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_limits() {
        let s = UdpSettings::default();
        assert_eq!(s.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.datagram_limit(false), 65_507);
        assert_eq!(s.datagram_limit(true), 65_527);
        let small = UdpRouteConfig {
            max_datagram_bytes: 1400,
            idle_timeout_secs: 0.0,
            ..Default::default()
        }
        .resolve("r")
        .unwrap();
        assert_eq!(small.datagram_limit(true), 1400);
        assert_eq!(small.idle_timeout, None);
        for bad in [
            UdpRouteConfig {
                max_datagram_bytes: 65_528,
                ..Default::default()
            },
            UdpRouteConfig {
                queue_datagrams: 0,
                ..Default::default()
            },
            UdpRouteConfig {
                idle_timeout_secs: -1.0,
                ..Default::default()
            },
        ] {
            let err = bad.resolve("route[0].udp").unwrap_err().to_string();
            assert!(err.starts_with("route[0].udp."), "{err}");
        }
    }
}

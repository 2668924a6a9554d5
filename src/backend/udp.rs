//! `udp://` backends: a UDP socket of the session's own, connected to the backend, under the
//! process-wide `[udp] max_sessions`. The pump that carries it is `session::udp`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::UdpSocket;

use crate::error::{Refusal, RejectError};
use crate::policy::targets::{self, Egress};

/// `[udp]` as the dialer applies it.
#[derive(Debug, Clone, Copy, Default)]
pub struct UdpLimits {
    /// Concurrent `udp://` sessions in the process; 0 = no cap.
    pub max_sessions: usize,
    /// `Retry-After` of the 503 over the cap.
    pub retry_after_secs: u64,
}

/// A dialled `udp://` backend: its socket, and its place under `[udp] max_sessions`, held
/// for as long as the session.
#[derive(Debug)]
pub struct UdpBackend {
    pub socket: UdpSocket,
    pub slot: UdpSlot,
}

/// Sessions with a UDP socket open in this process, against `[udp] max_sessions`.
static UDP_SESSIONS: AtomicUsize = AtomicUsize::new(0);

/// A place under `[udp] max_sessions`, counted in `wsgate_udp_sessions_active`.
#[derive(Debug)]
pub struct UdpSlot(());

impl UdpSlot {
    /// A place, or `None` when `max_sessions` (0 = no cap) are open already.
    pub fn take(max_sessions: usize) -> Option<Self> {
        let admitted = UDP_SESSIONS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (max_sessions == 0 || n < max_sessions).then_some(n + 1)
        });
        admitted.ok()?;
        crate::metrics::udp_sessions_active().increment(1.0);
        Some(Self(()))
    }
}

impl Drop for UdpSlot {
    fn drop(&mut self) {
        UDP_SESSIONS.fetch_sub(1, Ordering::AcqRel);
        crate::metrics::udp_sessions_active().decrement(1.0);
    }
}

/// A place under the cap (503 `udp_full` over it), then a UDP socket of the address's family
/// on an ephemeral port, connected (so the kernel delivers only that address's datagrams and
/// ICMP errors surface on it) to the first address `[egress]` allows. Nothing is sent: a
/// UDP dial cannot tell a live backend.
pub(super) async fn dial(
    host: &str,
    port: u16,
    egress: Option<&Egress>,
    limits: UdpLimits,
) -> Result<UdpBackend, RejectError> {
    let slot = UdpSlot::take(limits.max_sessions).ok_or(RejectError::Limited {
        reason: Refusal::UdpFull,
        retry_after_secs: limits.retry_after_secs,
    })?;
    let addrs = targets::resolve_allowed(host, port, egress).await?;
    let Some(addr) = addrs.into_iter().next() else {
        return Err(RejectError::BackendUnreachable(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolved to no address"),
        )));
    };
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // EMFILE here is the descriptor budget's (503 no_descriptors), as for a TCP dial.
    let socket = UdpSocket::bind(local)
        .await
        .map_err(super::unreachable_or_refused)?;
    socket
        .connect(addr)
        .await
        .map_err(super::unreachable_or_refused)?;
    Ok(UdpBackend { socket, slot })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_slots_respect_the_cap_and_come_back() {
        // The counter is process-wide: only this test takes slots in the unit-test binary.
        let cap = UDP_SESSIONS.load(Ordering::Acquire) + 2;
        let a = UdpSlot::take(cap).expect("first");
        let b = UdpSlot::take(cap).expect("second");
        assert!(UdpSlot::take(cap).is_none(), "over the cap");
        drop(a);
        let c = UdpSlot::take(cap).expect("a freed slot is reused");
        drop((b, c));
        assert!(UdpSlot::take(0).is_some(), "0 = no cap");
    }
}

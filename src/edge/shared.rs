//! What the connection and request tasks of one gateway share, and what one connection holds
//! for as long as it or the session it upgraded to lives.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::health::RouteState;
use crate::metrics::ConnectionGuard;
use crate::policy::ConnectionAddressSlot;
use crate::session::start::Registry;
use crate::snapshot::Snapshot;

/// What every connection task shares.
pub struct Shared {
    /// The running config. Each connection and each request takes the one current when it
    /// starts and keeps it; a reload stores a new one without touching live sessions.
    pub snapshot: ArcSwap<Snapshot>,
    /// Cancelled on SIGTERM/SIGINT: stop accepting, close sessions with 1001.
    pub shutdown: CancellationToken,
    /// Cancelled when the drain deadline passes: drop whatever is left.
    pub hard_stop: CancellationToken,
    /// Connections and sessions; the drain waits on it.
    pub tracker: TaskTracker,
    /// Live sessions, for the admin API (list, close, drain).
    pub registry: Arc<Registry>,
    /// Route drains (admission refuses) and backend health (dials report).
    pub routes: Arc<RouteState>,
}

/// A client connection's place under `max_connections` (and its address's under
/// `max_connections_per_ip`), its count in `wsgate_connections_active`, and how many of its
/// requests and sessions are open, which the HTTP/2 idle timeout watches. Shared by the HTTP
/// connection and the sessions it upgrades to, so it lasts until the last of them ends.
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    _gauge: ConnectionGuard,
    address: std::sync::Mutex<Option<ConnectionAddressSlot>>,
    /// Requests being answered and sessions running on this connection.
    in_use: AtomicUsize,
    /// Woken whenever `in_use` changes.
    changed: Notify,
}

impl ConnectionSlot {
    /// Hold `permit` and count the connection in `wsgate_connections_active`.
    pub fn open(permit: OwnedSemaphorePermit) -> Self {
        Self {
            _permit: permit,
            _gauge: ConnectionGuard::open(),
            address: std::sync::Mutex::new(None),
            in_use: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    /// Hold the connection's place under its address's cap too, for as long as this slot.
    pub fn hold_address(&self, slot: ConnectionAddressSlot) {
        *self.address.lock().unwrap_or_else(|e| e.into_inner()) = Some(slot);
    }

    /// One request (and the session it may become) on this connection: counted in use until
    /// the returned handle is dropped.
    pub fn enter(self: &Arc<Self>) -> InUse {
        self.in_use.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        InUse(self.clone())
    }

    /// Requests and sessions now open on this connection.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// Resolves at the next change of [`Self::in_use`] after it is first polled.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

/// A request or session in use on its connection ([`ConnectionSlot::enter`]); also holds the
/// connection's slot, so the connection counts until its last session ends.
pub struct InUse(Arc<ConnectionSlot>);

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

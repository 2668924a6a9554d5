//! What the connection and request tasks of one gateway share, and what one connection holds
//! for as long as it or the session it upgraded to lives.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::ConnectionGuard;
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
}

/// A client connection's place under `max_connections`, and its count in
/// `wsgate_connections_active`. Shared by the HTTP connection and the session it
/// upgrades to, so both last until the session ends.
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    _gauge: ConnectionGuard,
}

impl ConnectionSlot {
    /// Hold `permit` and count the connection in `wsgate_connections_active`.
    pub fn open(permit: OwnedSemaphorePermit) -> Self {
        Self {
            _permit: permit,
            _gauge: ConnectionGuard::open(),
        }
    }
}

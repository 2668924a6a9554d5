//! Each route's backend side as handshakes and operators see it, apart from the sessions on
//! it: the last dials' outcome (no probing; pools have their own checks) and route drains
//! (no new sessions admitted). One per gateway, shared by the edge (admission, dials) and ops
//! (the API's drain, undrain and status); the session registry knows sessions only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

/// Every route's backend health and drain.
#[derive(Debug, Default)]
pub struct RouteState {
    /// Draining routes, each with the drain it is in (see [`Drain`]).
    draining: Mutex<HashMap<Arc<str>, u64>>,
    drains: AtomicU64,
    /// Each route's last backend dials, as seen by handshakes (no probing).
    backends: Mutex<HashMap<Arc<str>, BackendHealth>>,
}

/// A route's backend as its handshakes found it.
#[derive(Debug, Clone, Default)]
pub struct BackendHealth {
    /// Failed dials since the last one that worked.
    pub consecutive_failures: u64,
    pub last_ok: Option<Instant>,
    pub last_failure: Option<(Instant, &'static str)>,
}

/// One drain of a route, from `start_drain` to `end_drain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    id: u64,
    /// The route was not draining before.
    pub fresh: bool,
}

/// A poisoned lock only means another thread panicked mid-update of plain data: keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RouteState {
    /// Stop admitting sessions on `route` (they get 503). Draining a draining route joins
    /// the drain already running.
    pub fn start_drain(&self, route: &str) -> Drain {
        let mut draining = lock(&self.draining);
        let fresh = !draining.contains_key(route);
        let id = *draining
            .entry(Arc::from(route))
            .or_insert_with(|| self.drains.fetch_add(1, Ordering::Relaxed));
        Drain { id, fresh }
    }

    /// Admit sessions on `route` again; true if it was draining.
    pub fn end_drain(&self, route: &str) -> bool {
        lock(&self.draining).remove(route).is_some()
    }

    pub fn is_draining(&self, route: &str) -> bool {
        let draining = lock(&self.draining);
        !draining.is_empty() && draining.contains_key(route)
    }

    /// Whether `drain` is still the route's current drain: not ended, and not ended and
    /// started again (whose grace is its own).
    pub fn drain_is_current(&self, route: &str, drain: Drain) -> bool {
        lock(&self.draining).get(route) == Some(&drain.id)
    }

    /// A handshake on `route` reached its backend.
    pub fn backend_reached(&self, route: &str) {
        let mut backends = lock(&self.backends);
        let h = health_entry(&mut backends, route);
        h.consecutive_failures = 0;
        h.last_ok = Some(Instant::now());
    }

    /// A handshake on `route` could not reach its backend (`label`: the error's metric label).
    pub fn backend_failed(&self, route: &str, label: &'static str) {
        let mut backends = lock(&self.backends);
        let h = health_entry(&mut backends, route);
        h.consecutive_failures += 1;
        h.last_failure = Some((Instant::now(), label));
    }

    /// What the last dials of `route` say; default (nothing seen) before the first handshake.
    pub fn backend_health(&self, route: &str) -> BackendHealth {
        lock(&self.backends).get(route).cloned().unwrap_or_default()
    }
}

fn health_entry<'a>(
    backends: &'a mut HashMap<Arc<str>, BackendHealth>,
    route: &str,
) -> &'a mut BackendHealth {
    if !backends.contains_key(route) {
        backends.insert(Arc::from(route), BackendHealth::default());
    }
    backends
        .get_mut(route)
        .expect("inserted above when it was missing")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_ended_and_started_again_is_a_new_drain() {
        let r = RouteState::default();
        let first = r.start_drain("echo");
        assert!(first.fresh);
        assert!(!r.start_drain("echo").fresh);
        assert!(r.is_draining("echo") && !r.is_draining("vnc"));
        assert!(r.end_drain("echo"));
        assert!(!r.is_draining("echo"));
        // A drain ended and started again is a new drain: the old one's timer must not act.
        let second = r.start_drain("echo");
        assert!(r.drain_is_current("echo", second));
        assert!(!r.drain_is_current("echo", first));
    }

    #[test]
    fn backend_health_counts_failures_since_the_last_success() {
        let r = RouteState::default();
        assert_eq!(r.backend_health("echo").consecutive_failures, 0);
        r.backend_failed("echo", "backend_connect");
        r.backend_failed("echo", "backend_timeout");
        let h = r.backend_health("echo");
        assert_eq!(h.consecutive_failures, 2);
        assert_eq!(h.last_failure.map(|f| f.1), Some("backend_timeout"));
        r.backend_reached("echo");
        let h = r.backend_health("echo");
        assert_eq!(h.consecutive_failures, 0);
        assert!(h.last_ok.is_some() && h.last_failure.is_some());
    }
}

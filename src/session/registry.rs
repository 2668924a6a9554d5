//! Live sessions by id, so operators can list and close them: what the admin API reads, each
//! session's close request, and the recent closes the status page shows. (Route drains and
//! backend health are the backend side's: `backend::health`.)
//!
//! Everything here happens at session start and end or on an API call; the data path only adds
//! to a session's byte counts (through its metric counters, see `metrics::SessionMetrics`) and
//! checks its watch point (one atomic load unless someone watches, `record::watch`).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fastwebsockets::CloseCode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::metrics::ByteCounts;
use crate::record::watch::WatchPoint;

/// How many closed sessions the registry remembers for the status page.
pub const RECENT_CLOSES: usize = 64;

/// What a session asks the bridge to do when it is told to stop: its close code and reason.
/// A shutdown cancels every session's token without a request (1001 "gateway shutting down").
#[derive(Debug)]
pub struct SessionControl {
    token: CancellationToken,
    request: OnceLock<(u16, &'static str)>,
}

impl SessionControl {
    /// A control that also stops when `parent` (the gateway's shutdown) is cancelled.
    pub fn new(parent: &CancellationToken) -> Self {
        Self {
            token: parent.child_token(),
            request: OnceLock::new(),
        }
    }

    /// Ask the session to close with `code`; the first request wins. False if it was already
    /// asked to close (or the gateway is shutting down).
    pub fn close(&self, code: u16, reason: &'static str) -> bool {
        if self.token.is_cancelled() || self.request.set((code, reason)).is_err() {
            return false;
        }
        self.token.cancel();
        true
    }

    /// Resolves when the session should close (cancel-safe).
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The code and reason to close with once [`cancelled`](Self::cancelled) resolved.
    pub fn reason(&self) -> (u16, &'static str) {
        self.request
            .get()
            .copied()
            .unwrap_or((1001, "gateway shutting down"))
    }
}

/// A close code an operator may ask for: one RFC 6455 lets an endpoint send (1000–1003,
/// 1007–1014, 3000–4999), so never 1005, 1006 or 1015.
pub fn is_sendable_close_code(code: u16) -> bool {
    CloseCode::from(code).is_allowed() && code != 1005 && code != 1006 && code != 1015
}

/// What the registry is told about a session when it starts.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub route: Arc<str>,
    pub client: SocketAddr,
    /// The backend as dialled (`tcp://…`, `ws://…`), never with credentials.
    pub backend: String,
    pub subprotocol: Option<String>,
    /// Who the credentials named (a JWT's `sub`, a signed-in email, a certificate name).
    pub user: Option<String>,
}

/// One live session.
#[derive(Debug)]
pub struct SessionEntry {
    pub id: u64,
    pub info: SessionInfo,
    pub started: Instant,
    pub bytes: Arc<ByteCounts>,
    pub control: SessionControl,
    /// Where operators watch the session's output (`GET /api/sessions/{id}/watch`); opened
    /// by the pumps that can be watched.
    pub watch: WatchPoint,
}

impl SessionEntry {
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A session that ended, as the status page lists it.
#[derive(Debug, Clone)]
pub struct ClosedSession {
    pub id: u64,
    pub route: Arc<str>,
    pub code: u16,
    pub at_unix_ms: u64,
}

/// The gateway's live sessions. One per gateway, shared by the edge (register) and ops (read,
/// close, drain).
#[derive(Debug)]
pub struct Registry {
    next_id: AtomicU64,
    sessions: Mutex<BTreeMap<u64, Arc<SessionEntry>>>,
    recent: Mutex<VecDeque<ClosedSession>>,
    /// Bytes of sessions that ended, so totals never go down as sessions leave.
    closed_to_backend: AtomicU64,
    closed_to_client: AtomicU64,
    /// Resumable sessions by id, for the connections that resume them.
    pub resume: Arc<crate::session::resume::ResumeStore>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            next_id: AtomicU64::new(1),
            sessions: Mutex::default(),
            recent: Mutex::default(),
            closed_to_backend: AtomicU64::new(0),
            closed_to_client: AtomicU64::new(0),
            resume: Arc::default(),
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain data: keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Gateway-wide totals at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub sessions: usize,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
}

impl Registry {
    /// Add a session; it leaves the registry when the returned guard drops.
    pub fn register(
        self: &Arc<Self>,
        info: SessionInfo,
        shutdown: &CancellationToken,
    ) -> Registered {
        let entry = Arc::new(SessionEntry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            info,
            started: Instant::now(),
            bytes: Arc::default(),
            control: SessionControl::new(shutdown),
            watch: WatchPoint::default(),
        });
        lock(&self.sessions).insert(entry.id, entry.clone());
        Registered {
            registry: self.clone(),
            entry,
            code: None,
        }
    }

    /// Up to `limit` sessions with ids above `after`, in id order (start order).
    pub fn list(&self, after: u64, limit: usize) -> Vec<Arc<SessionEntry>> {
        lock(&self.sessions)
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect()
    }

    pub fn get(&self, id: u64) -> Option<Arc<SessionEntry>> {
        lock(&self.sessions).get(&id).cloned()
    }

    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live sessions per route name.
    pub fn per_route(&self) -> BTreeMap<Arc<str>, usize> {
        let mut out = BTreeMap::new();
        for e in lock(&self.sessions).values() {
            *out.entry(e.info.route.clone()).or_insert(0) += 1;
        }
        out
    }

    /// Live sessions and bytes moved since start (ended sessions included).
    pub fn totals(&self) -> Totals {
        let sessions = lock(&self.sessions);
        let mut t = Totals {
            sessions: sessions.len(),
            bytes_to_backend: self.closed_to_backend.load(Ordering::Relaxed),
            bytes_to_client: self.closed_to_client.load(Ordering::Relaxed),
        };
        for e in sessions.values() {
            t.bytes_to_backend += e.bytes.to_backend.load(Ordering::Relaxed);
            t.bytes_to_client += e.bytes.to_client.load(Ordering::Relaxed);
        }
        t
    }

    /// The last [`RECENT_CLOSES`] closes, newest first.
    pub fn recent_closes(&self) -> Vec<ClosedSession> {
        lock(&self.recent).iter().rev().cloned().collect()
    }

    /// Ask every live session on `route` to close; returns how many were asked.
    pub fn close_route(&self, route: &str, code: u16, reason: &'static str) -> usize {
        let entries: Vec<_> = lock(&self.sessions)
            .values()
            .filter(|e| &*e.info.route == route)
            .cloned()
            .collect();
        entries
            .iter()
            .filter(|e| e.control.close(code, reason))
            .count()
    }
}

/// A session's place in the registry; dropping it removes the session and records its close.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    entry: Arc<SessionEntry>,
    code: Option<u16>,
}

impl Registered {
    pub fn entry(&self) -> &Arc<SessionEntry> {
        &self.entry
    }

    /// The code the session closed with (kept for the status page's recent closes).
    pub fn set_close_code(&mut self, code: u16) {
        self.code = Some(code);
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let r = &self.registry;
        // Its watchers' streams end with it.
        self.entry.watch.end();
        lock(&r.sessions).remove(&self.entry.id);
        r.closed_to_backend.fetch_add(
            self.entry.bytes.to_backend.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        r.closed_to_client.fetch_add(
            self.entry.bytes.to_client.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut recent = lock(&r.recent);
        if recent.len() == RECENT_CLOSES {
            recent.pop_front();
        }
        recent.push_back(ClosedSession {
            id: self.entry.id,
            route: self.entry.info.route.clone(),
            // Dropped without a recorded close: the session task ended abnormally.
            code: self.code.unwrap_or(1006),
            at_unix_ms,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(route: &str) -> SessionInfo {
        SessionInfo {
            route: Arc::from(route),
            client: SocketAddr::from(([127, 0, 0, 1], 5000)),
            backend: "tcp://127.0.0.1:7".to_owned(),
            subprotocol: None,
            user: None,
        }
    }

    #[test]
    fn sessions_leave_on_drop_and_their_bytes_stay_in_the_totals() {
        let r = Arc::new(Registry::default());
        let stop = CancellationToken::new();
        let mut a = r.register(info("echo"), &stop);
        let b = r.register(info("vnc"), &stop);
        assert_ne!(a.entry().id, b.entry().id);
        a.entry().bytes.to_backend.fetch_add(10, Ordering::Relaxed);
        b.entry().bytes.to_client.fetch_add(7, Ordering::Relaxed);
        assert_eq!(r.per_route().get("echo"), Some(&1));
        a.set_close_code(1000);
        let a_id = a.entry().id;
        drop(a);
        assert!(r.get(a_id).is_none());
        assert_eq!(
            r.totals(),
            Totals {
                sessions: 1,
                bytes_to_backend: 10,
                bytes_to_client: 7
            }
        );
        drop(b);
        let closes = r.recent_closes();
        assert_eq!(closes.len(), 2);
        assert_eq!(closes[0].code, 1006, "newest first; no code recorded");
        assert_eq!(closes[1].code, 1000);
    }

    #[test]
    fn list_pages_by_id() {
        let r = Arc::new(Registry::default());
        let stop = CancellationToken::new();
        let held: Vec<_> = (0..5).map(|_| r.register(info("echo"), &stop)).collect();
        let first = r.list(0, 2);
        assert_eq!(first.len(), 2);
        let rest = r.list(first[1].id, 10);
        assert_eq!(rest.len(), 3);
        assert!(rest.iter().all(|e| e.id > first[1].id));
        drop(held);
        assert!(r.is_empty());
    }

    #[test]
    fn the_first_close_request_wins_and_shutdown_means_1001() {
        let stop = CancellationToken::new();
        let c = SessionControl::new(&stop);
        assert!(c.close(4000, "operator"));
        assert!(!c.close(1008, "second"));
        assert!(c.is_cancelled());
        assert_eq!(c.reason(), (4000, "operator"));

        let d = SessionControl::new(&stop);
        stop.cancel();
        assert!(d.is_cancelled());
        assert!(!d.close(1008, "too late"));
        assert_eq!(d.reason(), (1001, "gateway shutting down"));
    }

    #[test]
    fn closing_a_route_closes_only_its_sessions() {
        let r = Arc::new(Registry::default());
        let stop = CancellationToken::new();
        let a = r.register(info("echo"), &stop);
        let b = r.register(info("vnc"), &stop);
        assert_eq!(r.close_route("echo", 1001, "route drained"), 1);
        assert!(a.entry().control.is_cancelled());
        assert!(!b.entry().control.is_cancelled());
    }

    #[test]
    fn operators_may_ask_for_sendable_codes_only() {
        for ok in [1000, 1001, 1008, 1011, 3000, 4999] {
            assert!(is_sendable_close_code(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 2000, 5000] {
            assert!(!is_sendable_close_code(bad), "{bad}");
        }
    }
}

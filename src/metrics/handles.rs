//! The handles the data path holds: a route's series looked up once, and the guards and
//! counters one connection or session carries until it ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use super::{
    close_code_label, install, Protocol, AUTH_FAILURES_TOTAL, BACKEND_CONNECT_SECONDS,
    BACKEND_TO_CLIENT, BYTES_TOTAL, CLIENT_TO_BACKEND, CLOSES_TOTAL, CONNECTIONS_ACTIVE,
    KEEPALIVE_TIMEOUTS_TOTAL, MESSAGES_TOTAL, PING_RTT_SECONDS, SESSIONS_ACTIVE, SESSIONS_TOTAL,
    SESSION_DURATION_SECONDS, WORKER_SESSIONS_ACTIVE,
};

pub fn backend_connected(route: &Arc<str>, took: Duration) {
    route_handles(route)
        .backend_connect
        .record(took.as_secs_f64());
}

/// A credential on `route` failed (counted against the client's address too).
pub fn auth_failed(route: &Arc<str>) {
    route_handles(route).auth_failures.increment(1);
}

/// A route's fixed-label handles, registered once per route instead of once per session:
/// a handshake then costs no registry lookup and no label allocation for them.
struct RouteHandles {
    route: Arc<str>,
    http1: ProtocolHandles,
    /// Made when a listener can serve HTTP/2 or a session comes over it, so a gateway
    /// without HTTP/2 shows no `protocol="h2"` series it can never use.
    h2: OnceLock<ProtocolHandles>,
    bytes_to_backend: Counter,
    bytes_to_client: Counter,
    messages_to_backend: Counter,
    messages_to_client: Counter,
    ping_rtt: Histogram,
    backend_connect: Histogram,
    duration: Histogram,
    keepalive_timeouts: Counter,
    auth_failures: Counter,
}

/// `wsgate_sessions_total` and `wsgate_sessions_active` of one route and protocol.
struct ProtocolHandles {
    total: Counter,
    active: Gauge,
}

impl ProtocolHandles {
    fn new(route: &str, protocol: Protocol) -> Self {
        let handles = Self {
            total: counter!(SESSIONS_TOTAL, "route" => route.to_owned(), "protocol" => protocol.label()),
            active: gauge!(SESSIONS_ACTIVE, "route" => route.to_owned(), "protocol" => protocol.label()),
        };
        // Registering is not enough for every exporter to render a series: touch each.
        handles.total.increment(0);
        handles.active.increment(0.0);
        handles
    }
}

impl RouteHandles {
    fn protocol(&self, protocol: Protocol) -> &ProtocolHandles {
        match protocol {
            Protocol::Http1 => &self.http1,
            Protocol::H2 => self
                .h2
                .get_or_init(|| ProtocolHandles::new(&self.route, Protocol::H2)),
        }
    }
}

/// Register `route`'s handles at zero, with its `protocol="h2"` series when a listener
/// serves HTTP/2.
pub(super) fn register_route(route: &Arc<str>, h2: bool) {
    let handles = route_handles(route);
    if h2 {
        handles.protocol(Protocol::H2);
    }
}

fn route_handles(route: &Arc<str>) -> Arc<RouteHandles> {
    static ROUTES: OnceLock<Mutex<HashMap<Arc<str>, Arc<RouteHandles>>>> = OnceLock::new();
    let mut routes = ROUTES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    routes
        .entry(route.clone())
        .or_insert_with(|| {
            let r = || route.to_string();
            let handles = Arc::new(RouteHandles {
                route: route.clone(),
                http1: ProtocolHandles::new(route, Protocol::Http1),
                h2: OnceLock::new(),
                bytes_to_backend: counter!(BYTES_TOTAL, "route" => r(), "direction" => CLIENT_TO_BACKEND),
                bytes_to_client: counter!(BYTES_TOTAL, "route" => r(), "direction" => BACKEND_TO_CLIENT),
                messages_to_backend: counter!(MESSAGES_TOTAL, "route" => r(), "direction" => CLIENT_TO_BACKEND),
                messages_to_client: counter!(MESSAGES_TOTAL, "route" => r(), "direction" => BACKEND_TO_CLIENT),
                ping_rtt: histogram!(PING_RTT_SECONDS, "route" => r()),
                backend_connect: histogram!(BACKEND_CONNECT_SECONDS, "route" => r()),
                duration: histogram!(SESSION_DURATION_SECONDS, "route" => r()),
                keepalive_timeouts: counter!(KEEPALIVE_TIMEOUTS_TOTAL, "route" => r()),
                auth_failures: counter!(AUTH_FAILURES_TOTAL, "route" => r()),
            });
            for c in [
                &handles.bytes_to_backend,
                &handles.bytes_to_client,
                &handles.messages_to_backend,
                &handles.messages_to_client,
                &handles.keepalive_timeouts,
                &handles.auth_failures,
            ] {
                c.increment(0);
            }
            handles
        })
        .clone()
}

/// Holds `wsgate_connections_active` up for as long as it lives.
pub struct ConnectionGuard(Gauge);

impl ConnectionGuard {
    pub fn open() -> Self {
        let g = gauge!(CONNECTIONS_ACTIVE);
        g.increment(1.0);
        Self(g)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

thread_local! {
    /// On a per-core worker's thread: its `wsgate_worker_sessions_active` series.
    static WORKER_SESSIONS: std::cell::OnceCell<Gauge> = const { std::cell::OnceCell::new() };
}

/// Mark the calling thread as per-core worker `i`: sessions opened on it count in
/// `wsgate_worker_sessions_active{worker="i"}`, which shows 0 from now on.
pub fn set_worker(i: usize) {
    // A handle taken before the recorder exists would count nowhere.
    install();
    WORKER_SESSIONS.with(|cell| {
        cell.get_or_init(|| gauge!(WORKER_SESSIONS_ACTIVE, "worker" => i.to_string()))
            .increment(0.0);
    });
}

/// A session's count in `wsgate_worker_sessions_active` of the worker thread it runs on;
/// nothing outside the per-core mode's workers. Zero-sized, so the shared mode's session
/// tasks carry nothing for it: a per-core session's task never leaves its worker's thread,
/// so the drop meets the same thread's series as the open.
pub struct WorkerSessionGuard(());

impl WorkerSessionGuard {
    /// Count the session on the calling thread's worker; call it from the session's task.
    pub fn open() -> Self {
        WORKER_SESSIONS.with(|cell| cell.get().map(|g| g.increment(1.0)));
        Self(())
    }
}

impl Drop for WorkerSessionGuard {
    fn drop(&mut self) {
        // `try_with`: a task dropped while its thread exits must not panic.
        let _ = WORKER_SESSIONS.try_with(|cell| cell.get().map(|g| g.decrement(1.0)));
    }
}

/// What one session moved so far, each way: bytes (the admin API) or messages (the access
/// log).
#[derive(Debug, Default)]
pub struct ByteCounts {
    pub to_backend: AtomicU64,
    pub to_client: AtomicU64,
}

/// A route's counter that also counts into one session's own [`ByteCounts`]: two relaxed
/// adds per call, no allocation per session and no dynamic dispatch.
#[derive(Clone)]
pub struct Tally {
    route: Counter,
    own: Arc<ByteCounts>,
    to_backend: bool,
}

impl Tally {
    fn new(route: &Counter, own: &Arc<ByteCounts>, to_backend: bool) -> Self {
        Self {
            route: route.clone(),
            own: own.clone(),
            to_backend,
        }
    }

    fn own(&self) -> &AtomicU64 {
        if self.to_backend {
            &self.own.to_backend
        } else {
            &self.own.to_client
        }
    }

    pub fn increment(&self, value: u64) {
        self.route.increment(value);
        self.own().fetch_add(value, Ordering::Relaxed);
    }

    /// What this session has counted so far.
    pub fn session_total(&self) -> u64 {
        self.own().load(Ordering::Relaxed)
    }
}

/// One session's metric handles (clones of its route's), so the data path never touches
/// the registry. Holds `wsgate_sessions_active` up while alive.
pub struct SessionMetrics {
    route: Arc<str>,
    protocol: Protocol,
    handles: Arc<RouteHandles>,
    pub bytes_to_backend: Tally,
    pub bytes_to_client: Tally,
    pub messages_to_backend: Tally,
    pub messages_to_client: Tally,
    pub ping_rtt: Histogram,
    /// This session's messages each way, for its access-log line.
    messages: Arc<ByteCounts>,
}

impl SessionMetrics {
    pub fn start(route: Arc<str>, protocol: Protocol) -> Self {
        Self::start_counted(route, protocol, &Arc::default())
    }

    /// Like [`start`](Self::start), and the session's byte counts go to `bytes` (what the
    /// admin API shows per session): one more relaxed add per write, no lookups.
    pub fn start_counted(route: Arc<str>, protocol: Protocol, bytes: &Arc<ByteCounts>) -> Self {
        let handles = route_handles(&route);
        let counts = handles.protocol(protocol);
        counts.total.increment(1);
        counts.active.increment(1.0);
        let messages = Arc::<ByteCounts>::default();
        Self {
            protocol,
            bytes_to_backend: Tally::new(&handles.bytes_to_backend, bytes, true),
            bytes_to_client: Tally::new(&handles.bytes_to_client, bytes, false),
            messages_to_backend: Tally::new(&handles.messages_to_backend, &messages, true),
            messages_to_client: Tally::new(&handles.messages_to_client, &messages, false),
            messages,
            ping_rtt: handles.ping_rtt.clone(),
            handles,
            route,
        }
    }

    /// This session's messages so far: (client to backend, backend to client), counted as
    /// `wsgate_messages_total` counts them.
    pub fn messages(&self) -> (u64, u64) {
        (
            self.messages.to_backend.load(Ordering::Relaxed),
            self.messages.to_client.load(Ordering::Relaxed),
        )
    }

    /// Record how the session ended.
    pub fn closed(&self, code: u16, initiator: &'static str, duration: Duration) {
        counter!(CLOSES_TOTAL, "route" => self.route.to_string(), "code" => close_code_label(code), "initiator" => initiator)
            .increment(1);
        self.handles.duration.record(duration.as_secs_f64());
    }

    pub fn keepalive_timed_out(&self) {
        self.handles.keepalive_timeouts.increment(1);
    }
}

impl Drop for SessionMetrics {
    fn drop(&mut self) {
        self.handles.protocol(self.protocol).active.decrement(1.0);
    }
}

//! Every metric in one place: names, descriptions, the recorder, and per-session handles.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const SESSIONS_ACTIVE: &str = "wsgate_sessions_active";
pub const SESSIONS_TOTAL: &str = "wsgate_sessions_total";
pub const UPGRADE_REJECTIONS_TOTAL: &str = "wsgate_upgrade_rejections_total";
pub const BYTES_TOTAL: &str = "wsgate_bytes_total";
pub const MESSAGES_TOTAL: &str = "wsgate_messages_total";
pub const BACKEND_CONNECT_SECONDS: &str = "wsgate_backend_connect_seconds";
pub const SESSION_DURATION_SECONDS: &str = "wsgate_session_duration_seconds";
pub const PING_RTT_SECONDS: &str = "wsgate_ping_rtt_seconds";
pub const CLOSES_TOTAL: &str = "wsgate_closes_total";
pub const KEEPALIVE_TIMEOUTS_TOTAL: &str = "wsgate_keepalive_timeouts_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "wsgate_tls_handshake_failures_total";
pub const CONNECTIONS_ACTIVE: &str = "wsgate_connections_active";
pub const CONFIG_RELOADS_TOTAL: &str = "wsgate_config_reloads_total";
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "wsgate_config_last_reload_success_timestamp_seconds";
pub const CONFIG_INFO: &str = "wsgate_config_info";
pub const BACKEND_UP: &str = "wsgate_backend_up";
pub const BACKEND_SESSIONS_ACTIVE: &str = "wsgate_backend_sessions_active";
pub const PROXY_HEADERS_REFUSED_TOTAL: &str = "wsgate_proxy_protocol_refused_total";
pub const AUTH_FAILURES_TOTAL: &str = "wsgate_auth_failures_total";
pub const BUILD_INFO: &str = "wsgate_build_info";
pub const WORKER_SESSIONS_ACTIVE: &str = "wsgate_worker_sessions_active";
pub const UDP_SESSIONS_ACTIVE: &str = "wsgate_udp_sessions_active";
pub const UDP_DATAGRAMS_TOTAL: &str = "wsgate_udp_datagrams_total";
pub const UDP_DROPPED_TOTAL: &str = "wsgate_udp_dropped_total";
pub const UDP_ICMP_ERRORS_TOTAL: &str = "wsgate_udp_icmp_errors_total";
pub const RECORDINGS_ACTIVE: &str = "wsgate_recordings_active";
pub const RECORDING_BYTES_WRITTEN_TOTAL: &str = "wsgate_recording_bytes_written_total";
pub const RECORDING_DROPPED_BYTES_TOTAL: &str = "wsgate_recording_dropped_bytes_total";
pub const RECORDING_GAPS_TOTAL: &str = "wsgate_recording_gaps_total";
pub const RECORDING_FAILURES_TOTAL: &str = "wsgate_recording_failures_total";
pub const RECORDING_DELETIONS_TOTAL: &str = "wsgate_recording_deletions_total";
pub const CERTIFICATE_NOT_AFTER: &str = "wsgate_certificate_not_after_timestamp_seconds";
pub const ACME_ORDERS_TOTAL: &str = "wsgate_acme_orders_total";
pub const CONNECTIONS_REFUSED_TOTAL: &str = "wsgate_connections_refused_total";
pub const CONNECTION_TIMEOUTS_TOTAL: &str = "wsgate_connection_timeouts_total";
pub const DESCRIPTORS_EXHAUSTED_TOTAL: &str = "wsgate_descriptors_exhausted_total";
pub const WATCHERS_ACTIVE: &str = "wsgate_watchers_active";
pub const WATCHERS_DROPPED_TOTAL: &str = "wsgate_watchers_dropped_total";
pub const RESUMES_TOTAL: &str = "wsgate_resumes_total";
pub const RESUME_DETACHED_SESSIONS: &str = "wsgate_resume_detached_sessions";
pub const RESUME_REPLAYED_BYTES_TOTAL: &str = "wsgate_resume_replayed_bytes_total";

/// `reason` values of `wsgate_connections_refused_total`.
const CONNECTION_REFUSALS: &[&str] = &["ip_limit"];
/// `phase` values of `wsgate_connection_timeouts_total`.
const CONNECTION_TIMEOUT_PHASES: &[&str] = &["first_request", "idle"];
/// `stage` values of `wsgate_descriptors_exhausted_total`.
const DESCRIPTOR_STAGES: &[&str] = &["accept", "admin_accept", "backend"];
pub const JWKS_REFRESHES_TOTAL: &str = "wsgate_jwks_refreshes_total";
pub const JWKS_AGE_SECONDS: &str = "wsgate_jwks_age_seconds";
pub const JWKS_KEYS: &str = "wsgate_jwks_keys";
pub const SIGNINS_TOTAL: &str = "wsgate_signins_total";

/// Which HTTP carried a session's handshake: the `protocol` label of
/// `wsgate_sessions_total` and `wsgate_sessions_active`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `GET` with `Upgrade: websocket` (RFC 6455).
    Http1,
    /// Extended CONNECT with `:protocol = websocket` on one stream (RFC 8441).
    H2,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2 => "h2",
        }
    }
}

/// `direction` label values.
pub const CLIENT_TO_BACKEND: &str = "client_to_backend";
pub const BACKEND_TO_CLIENT: &str = "backend_to_client";

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const DURATION_BUCKETS: &[f64] = &[
    0.1, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide recorder once (later calls return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(SESSION_DURATION_SECONDS.into()),
                    DURATION_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                })
                .expect("bucket lists are non-empty");
            let handle = builder
                .install_recorder()
                .expect("no other metrics recorder is installed in this process");
            describe();
            handle
        })
        .clone()
}

/// Every metric's description, and known label sets at zero.
fn describe() {
    describe_sessions();
    describe_operations();
    describe_recordings();
    // Known label sets at zero, so the first event shows as an increase.
    for reason in CONNECTION_REFUSALS {
        counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => *reason).increment(0);
    }
    for phase in CONNECTION_TIMEOUT_PHASES {
        counter!(CONNECTION_TIMEOUTS_TOTAL, "phase" => *phase).increment(0);
    }
    for stage in DESCRIPTOR_STAGES {
        counter!(DESCRIPTORS_EXHAUSTED_TOTAL, "stage" => *stage).increment(0);
    }
}

/// Sessions, connections and their traffic.
fn describe_sessions() {
    describe_counter!(
        ACME_ORDERS_TOTAL,
        "ACME certificate orders by result (issued, failed)"
    );
    describe_gauge!(
        CERTIFICATE_NOT_AFTER,
        Unit::Seconds,
        "When the certificate a TLS listener serves for each name expires (Unix time)"
    );
    describe_gauge!(SESSIONS_ACTIVE, "WebSocket sessions now bridged");
    describe_counter!(SESSIONS_TOTAL, "WebSocket sessions started (101 sent)");
    describe_counter!(
        UPGRADE_REJECTIONS_TOTAL,
        "Upgrade requests answered with an HTTP error, by reason"
    );
    describe_counter!(
        BYTES_TOTAL,
        Unit::Bytes,
        "Payload bytes bridged, by direction"
    );
    describe_counter!(
        MESSAGES_TOTAL,
        "Messages bridged: complete client messages, frames sent to clients"
    );
    describe_histogram!(
        BACKEND_CONNECT_SECONDS,
        Unit::Seconds,
        "Time to dial the backend"
    );
    describe_histogram!(
        SESSION_DURATION_SECONDS,
        Unit::Seconds,
        "Session lifetime, 101 to close"
    );
    describe_histogram!(
        PING_RTT_SECONDS,
        Unit::Seconds,
        "Ping to pong round trip to clients"
    );
    describe_counter!(
        CLOSES_TOTAL,
        "Sessions ended, by close code and by who started the close"
    );
    describe_counter!(
        KEEPALIVE_TIMEOUTS_TOTAL,
        "Sessions closed because the client stopped answering"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "TLS handshakes that failed or timed out"
    );
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        "Open client connections on public listeners"
    );
}

/// Reloads, backends, refusals, UDP and resources.
fn describe_operations() {
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        "Config reloads, by result (success, or error: the running config stayed)"
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS,
        Unit::Seconds,
        "Unix time of the last config load that took effect (the start counts)"
    );
    describe_gauge!(
        CONFIG_INFO,
        "1 for the running config's hash (SHA-256 of the file, first 16 hex digits), 0 for earlier ones"
    );
    describe_gauge!(
        BACKEND_UP,
        "Pool backends: 1 in service, 0 while ejected after a failed dial or check"
    );
    describe_gauge!(
        BACKEND_SESSIONS_ACTIVE,
        "Pool backends: sessions now bridged to each"
    );
    describe_counter!(
        PROXY_HEADERS_REFUSED_TOTAL,
        "Connections closed before HTTP by the PROXY protocol rules, by reason"
    );
    describe_counter!(
        AUTH_FAILURES_TOTAL,
        "Refused credentials and unknown target tokens, each spending its address's budget"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the labels say which wsgate this is");
    describe_gauge!(
        WORKER_SESSIONS_ACTIVE,
        "Per-core mode: WebSocket sessions now bridged on each worker thread"
    );
    describe_gauge!(
        UDP_SESSIONS_ACTIVE,
        "udp:// sessions now open, each holding one UDP socket"
    );
    describe_counter!(
        UDP_DATAGRAMS_TOTAL,
        "udp:// routes: datagrams delivered, by direction (one per WebSocket message)"
    );
    describe_counter!(
        UDP_DROPPED_TOTAL,
        "udp:// routes: datagrams dropped, by cause (client_slow, backend_busy, oversize, unreachable, send_error)"
    );
    describe_counter!(
        UDP_ICMP_ERRORS_TOTAL,
        "udp:// routes: ICMP errors (port unreachable) reported by sessions' sockets"
    );
    describe_counter!(
        JWKS_REFRESHES_TOTAL,
        "Fetches of a route's JWT key set, by result (ok, error: the last good keys stay)"
    );
    describe_gauge!(
        JWKS_AGE_SECONDS,
        Unit::Seconds,
        "Time since a route's JWT key set was last fetched successfully"
    );
    describe_gauge!(JWKS_KEYS, "Usable keys in a route's JWT key set");
    describe_counter!(
        SIGNINS_TOTAL,
        "Browser sign-ins, by result (ok, refused, error: the provider could not be reached)"
    );
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        "Client connections closed right after accept, by reason (ip_limit: max_connections_per_ip)"
    );
    describe_counter!(
        CONNECTION_TIMEOUTS_TOTAL,
        "HTTP/2 connections sent GOAWAY for having nothing open, by phase (first_request, idle)"
    );
    describe_counter!(
        DESCRIPTORS_EXHAUSTED_TOTAL,
        "Times the process ran out of file descriptors, by stage (accept, admin_accept, backend)"
    );
    describe_gauge!(
        WATCHERS_ACTIVE,
        "Live watches of sessions open on the admin listener, by route"
    );
    describe_counter!(
        WATCHERS_DROPPED_TOTAL,
        "Watchers dropped for falling behind their session (close 1013), by route"
    );
}

/// Session recordings.
fn describe_recordings() {
    describe_gauge!(RECORDINGS_ACTIVE, "Session recordings now open, by route");
    describe_counter!(
        RECORDING_BYTES_WRITTEN_TOTAL,
        Unit::Bytes,
        "Bytes written to recording files (headers and framing included), by route"
    );
    describe_counter!(
        RECORDING_DROPPED_BYTES_TOTAL,
        Unit::Bytes,
        "Session bytes left out of recordings, by route and cause"
    );
    describe_counter!(
        RECORDING_GAPS_TOTAL,
        "Gaps and ends marked in recordings, by route and cause"
    );
    describe_counter!(
        RECORDING_FAILURES_TOTAL,
        "Recordings that could not be created or failed while written, by route and stage"
    );
    describe_counter!(
        RECORDING_DELETIONS_TOTAL,
        "Recordings deleted by the retention sweep, by route and reason (quota, age)"
    );
}

/// One `udp://` session's counters (clones of its route's series): datagrams each way,
/// drops by cause, ICMP errors. Bytes and messages count in [`SessionMetrics`] as on
/// every route.
#[derive(Clone)]
pub struct UdpMetrics {
    pub to_backend: Counter,
    pub to_client: Counter,
    /// The queue towards a client that cannot take more was full.
    pub dropped_client_slow: Counter,
    /// The backend socket's send buffer was full.
    pub dropped_backend_busy: Counter,
    /// A backend datagram above the route's `max_datagram_bytes`.
    pub dropped_oversize: Counter,
    /// A client datagram refused by an ICMP error (nothing listening).
    pub dropped_unreachable: Counter,
    /// Any other send failure (the kernel refused the datagram).
    pub dropped_send_error: Counter,
    pub icmp_errors: Counter,
}

impl UdpMetrics {
    pub fn for_route(route: &str) -> Self {
        let dropped = |cause: &'static str| counter!(UDP_DROPPED_TOTAL, "route" => route.to_owned(), "cause" => cause);
        Self {
            to_backend: counter!(UDP_DATAGRAMS_TOTAL, "route" => route.to_owned(), "direction" => CLIENT_TO_BACKEND),
            to_client: counter!(UDP_DATAGRAMS_TOTAL, "route" => route.to_owned(), "direction" => BACKEND_TO_CLIENT),
            dropped_client_slow: dropped("client_slow"),
            dropped_backend_busy: dropped("backend_busy"),
            dropped_oversize: dropped("oversize"),
            dropped_unreachable: dropped("unreachable"),
            dropped_send_error: dropped("send_error"),
            icmp_errors: counter!(UDP_ICMP_ERRORS_TOTAL, "route" => route.to_owned()),
        }
    }
}

/// `wsgate_udp_sessions_active`, the process-wide count behind `[udp] max_sessions`.
pub fn udp_sessions_active() -> Gauge {
    gauge!(UDP_SESSIONS_ACTIVE)
}

/// A connection closed after accept: `reason` is `ip_limit`.
pub fn connection_refused(reason: &'static str) {
    counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => reason).increment(1);
}

/// An HTTP/2 connection with nothing open got GOAWAY: `phase` is `first_request` or `idle`.
pub fn connection_timed_out(phase: &'static str) {
    counter!(CONNECTION_TIMEOUTS_TOTAL, "phase" => phase).increment(1);
}

/// The process had no file descriptor left: `stage` is `accept`, `admin_accept` or `backend`.
pub fn descriptors_exhausted(stage: &'static str) {
    counter!(DESCRIPTORS_EXHAUSTED_TOTAL, "stage" => stage).increment(1);
}

/// A route's key set was fetched: `result` is `ok` or `error`.
pub fn jwks_refreshed(route: &str, result: &'static str) {
    counter!(JWKS_REFRESHES_TOTAL, "route" => route.to_owned(), "result" => result).increment(1);
}

/// Every result of the browser sign-in at zero, so a gateway with `[signin]` shows them.
pub fn signins_registered() {
    for result in ["ok", "refused", "error"] {
        counter!(SIGNINS_TOTAL, "result" => result).increment(0);
    }
}

/// A browser sign-in ended: `result` is `ok`, `refused` or `error`.
pub fn signed_in(result: &'static str) {
    counter!(SIGNINS_TOTAL, "result" => result).increment(1);
}

/// Both results of a route's key set fetches at zero, so a fresh gateway shows them.
pub fn jwks_registered(route: &str) {
    for result in ["ok", "error"] {
        counter!(JWKS_REFRESHES_TOTAL, "route" => route.to_owned(), "result" => result)
            .increment(0);
    }
}

/// `wsgate_jwks_age_seconds{route}` and `wsgate_jwks_keys{route}` of one route's key set.
pub fn jwks_gauges(route: &str) -> (Gauge, Gauge) {
    (
        gauge!(JWKS_AGE_SECONDS, "route" => route.to_owned()),
        gauge!(JWKS_KEYS, "route" => route.to_owned()),
    )
}

/// Both reload counters at zero, so a fresh gateway shows them.
pub fn config_reloaded_registered() {
    for result in ["success", "error"] {
        counter!(CONFIG_RELOADS_TOTAL, "result" => result).increment(0);
    }
}

/// A reload ended: `result` is `success` or `error`.
pub fn config_reloaded(result: &'static str) {
    counter!(CONFIG_RELOADS_TOTAL, "result" => result).increment(1);
}

/// The config with `hash` runs from now on (`previous`, if any, no longer does).
pub fn config_running(hash: &str, previous: Option<&str>) {
    if let Some(p) = previous.filter(|p| *p != hash) {
        gauge!(CONFIG_INFO, "hash" => p.to_owned()).set(0.0);
    }
    gauge!(CONFIG_INFO, "hash" => hash.to_owned()).set(1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    gauge!(CONFIG_LAST_RELOAD_SUCCESS).set(now);
}

/// `wsgate_backend_up{route,backend}` of one pool backend.
pub fn backend_up(route: &str, backend: &str) -> Gauge {
    gauge!(BACKEND_UP, "route" => route.to_owned(), "backend" => backend.to_owned())
}

/// `wsgate_backend_sessions_active{route,backend}` of one pool backend.
pub fn backend_sessions(route: &str, backend: &str) -> Gauge {
    gauge!(BACKEND_SESSIONS_ACTIVE, "route" => route.to_owned(), "backend" => backend.to_owned())
}

/// A connection closed by the PROXY protocol rules; `reason` is one of `untrusted_header`,
/// `missing_header`, `bad_header`, `timeout`.
pub fn proxy_header_refused(reason: &'static str) {
    counter!(PROXY_HEADERS_REFUSED_TOTAL, "reason" => reason).increment(1);
}

/// What the running config can produce, so [`register`] shows exactly those series at zero.
pub struct Registered<'a> {
    /// Every `reason` of `wsgate_upgrade_rejections_total` (`RejectError::LABELS`).
    pub rejection_reasons: &'a [&'static str],
    /// Some listener serves HTTP/2 (TLS with `http2`, or `h2c`): `protocol="h2"` series.
    pub h2: bool,
    /// Every `reason` of `wsgate_proxy_protocol_refused_total` when some listener reads PROXY
    /// headers; empty otherwise.
    pub proxy_refusals: &'a [&'static str],
    /// Routes whose sessions may be `udp://` (a `udp://` backend, a token-file or claim
    /// target): their `wsgate_udp_*` series.
    pub udp_routes: &'a [Arc<str>],
    /// Routes with `[route.record]`: their `wsgate_recording*` series.
    pub record_routes: &'a [Arc<str>],
    /// Routes with `[route.resume]`: their `wsgate_resume*` series.
    pub resume_routes: &'a [Arc<str>],
}

/// `result` values of `wsgate_resumes_total`.
pub const RESUME_RESULTS: &[&str] = &[
    "resumed",
    "replaced",
    "expired",
    "unknown_session",
    "bad_token",
    "offset_out_of_range",
    "bad_hello",
    "id_in_use",
    "limit_sessions",
    "limit_address",
    "limit_buffer",
];

/// `cause` values of `wsgate_recording_dropped_bytes_total`.
pub const RECORDING_DROP_CAUSES: &[&str] = &["queue_full", "cap", "write_error"];
/// `cause` values of `wsgate_recording_gaps_total`.
pub const RECORDING_GAP_CAUSES: &[&str] = &["queue_full", "cap"];
/// `stage` values of `wsgate_recording_failures_total`.
pub const RECORDING_FAILURE_STAGES: &[&str] = &["create", "write"];
/// `reason` values of `wsgate_recording_deletions_total`.
pub const RECORDING_DELETION_REASONS: &[&str] = &["age", "quota"];

/// The recording and resume series of the routes that have them, at zero.
fn register_record_and_resume(what: &Registered<'_>) {
    for route in what.record_routes {
        let r = || route.to_string();
        gauge!(RECORDINGS_ACTIVE, "route" => r()).increment(0.0);
        counter!(RECORDING_BYTES_WRITTEN_TOTAL, "route" => r()).increment(0);
        for &cause in RECORDING_DROP_CAUSES {
            counter!(RECORDING_DROPPED_BYTES_TOTAL, "route" => r(), "cause" => cause).increment(0);
        }
        for &cause in RECORDING_GAP_CAUSES {
            counter!(RECORDING_GAPS_TOTAL, "route" => r(), "cause" => cause).increment(0);
        }
        for &stage in RECORDING_FAILURE_STAGES {
            counter!(RECORDING_FAILURES_TOTAL, "route" => r(), "stage" => stage).increment(0);
        }
        for &reason in RECORDING_DELETION_REASONS {
            counter!(RECORDING_DELETIONS_TOTAL, "route" => r(), "reason" => reason).increment(0);
        }
    }
    if !what.resume_routes.is_empty() {
        gauge!(RESUME_DETACHED_SESSIONS).increment(0.0);
    }
    for route in what.resume_routes {
        counter!(RESUME_REPLAYED_BYTES_TOTAL, "route" => route.to_string()).increment(0);
        for &result in RESUME_RESULTS {
            counter!(RESUMES_TOTAL, "route" => route.to_string(), "result" => result).increment(0);
        }
    }
}

/// Make the gateway's series visible from the start, at zero: the process-wide ones, every
/// configured route's (and the `none` route's rejections), and `wsgate_build_info`. An empty
/// `/metrics` page cannot tell "no traffic" from "not scraping the right process", and
/// `increase()` in an alert misses the first event of a series that did not exist before.
pub fn register<'a>(routes: impl IntoIterator<Item = &'a Arc<str>>, what: &Registered<'_>) {
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!(CONNECTIONS_ACTIVE).increment(0.0);
    counter!(TLS_HANDSHAKE_FAILURES_TOTAL).increment(0);
    for result in ["issued", "failed"] {
        counter!(ACME_ORDERS_TOTAL, "result" => result).increment(0);
    }
    for &reason in what.proxy_refusals {
        counter!(PROXY_HEADERS_REFUSED_TOTAL, "reason" => reason).increment(0);
    }
    register_record_and_resume(what);
    if !what.udp_routes.is_empty() {
        udp_sessions_active().increment(0.0);
    }
    for route in what.udp_routes {
        let udp = UdpMetrics::for_route(route);
        for c in [
            &udp.to_backend,
            &udp.to_client,
            &udp.dropped_client_slow,
            &udp.dropped_backend_busy,
            &udp.dropped_oversize,
            &udp.dropped_unreachable,
            &udp.dropped_send_error,
            &udp.icmp_errors,
        ] {
            c.increment(0);
        }
    }
    let mut rejecting = vec![NO_ROUTE.to_owned()];
    for route in routes {
        gauge!(WATCHERS_ACTIVE, "route" => route.to_string()).increment(0.0);
        counter!(WATCHERS_DROPPED_TOTAL, "route" => route.to_string()).increment(0);
        let handles = route_handles(route);
        if what.h2 {
            handles.protocol(Protocol::H2);
        }
        rejecting.push(route.to_string());
    }
    for route in rejecting {
        for &reason in what.rejection_reasons {
            counter!(UPGRADE_REJECTIONS_TOTAL, "route" => route.clone(), "reason" => reason)
                .increment(0);
        }
    }
}

/// The `route` label of a rejection no route matched.
pub const NO_ROUTE: &str = "none";

/// The `code` label of `wsgate_closes_total`: registered codes (RFC 6455 §7.4.1 and the
/// IANA registry) by number, 3000-3999 as `3xxx`, 4000-4999 as `4xxx`, anything else `other`.
/// Peers choose codes, so the label set must not grow with what they send.
pub fn close_code_label(code: u16) -> &'static str {
    match code {
        1000 => "1000",
        1001 => "1001",
        1002 => "1002",
        1003 => "1003",
        1005 => "1005",
        1006 => "1006",
        1007 => "1007",
        1008 => "1008",
        1009 => "1009",
        1010 => "1010",
        1011 => "1011",
        1012 => "1012",
        1013 => "1013",
        1014 => "1014",
        1015 => "1015",
        3000..=3999 => "3xxx",
        4000..=4999 => "4xxx",
        _ => "other",
    }
}

/// A credential on `route` failed (counted against the client's address too).
pub fn auth_failed(route: &Arc<str>) {
    route_handles(route).auth_failures.increment(1);
}

pub fn upgrade_rejected(route: &str, reason: &'static str) {
    counter!(UPGRADE_REJECTIONS_TOTAL, "route" => route.to_owned(), "reason" => reason)
        .increment(1);
}

/// The expiry of the certificate a TLS listener serves for `name` (Unix seconds), set when a
/// snapshot loads it.
pub fn certificate_not_after(name: &str, not_after: i64) {
    gauge!(CERTIFICATE_NOT_AFTER, "name" => name.to_owned()).set(not_after as f64);
}

/// One ACME order ended: `result` is `issued` or `failed`.
pub fn acme_order(result: &'static str) {
    counter!(ACME_ORDERS_TOTAL, "result" => result).increment(1);
}

pub fn tls_handshake_failed() {
    counter!(TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
}

pub fn backend_connected(route: &Arc<str>, took: Duration) {
    route_handles(route)
        .backend_connect
        .record(took.as_secs_f64());
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

#[cfg(test)]
mod tests {
    use super::close_code_label;

    #[test]
    fn close_code_labels_are_a_fixed_set() {
        let labels: std::collections::HashSet<&str> =
            (0..=u16::MAX).map(close_code_label).collect();
        assert_eq!(labels.len(), 15 + 3, "{labels:?}");
        assert_eq!(close_code_label(1000), "1000");
        assert_eq!(close_code_label(1014), "1014");
        assert_eq!(close_code_label(1004), "other");
        assert_eq!(close_code_label(3001), "3xxx");
        assert_eq!(close_code_label(4999), "4xxx");
        assert_eq!(close_code_label(5000), "other");
    }
}

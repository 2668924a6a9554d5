//! Every metric in one place: names, the recorder, and the events outside a session's data
//! path. Descriptions and series at zero are in `metrics/registration.rs`, the handles a
//! route or session holds in `metrics/handles.rs`.

mod handles;
mod registration;

use std::sync::OnceLock;

use metrics::{counter, gauge};
use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use handles::{
    auth_failed, backend_connected, set_worker, ByteCounts, ConnectionGuard, SessionMetrics, Tally,
    WorkerSessionGuard,
};
pub use registration::{
    register, Registered, RECORDING_DELETION_REASONS, RECORDING_DROP_CAUSES,
    RECORDING_FAILURE_STAGES, RECORDING_GAP_CAUSES, RESUME_RESULTS,
};

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
            registration::describe();
            handle
        })
        .clone()
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

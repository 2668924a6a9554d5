//! What `/metrics` shows before any traffic: every metric's description, and the series
//! the running config can produce registered at zero.

use std::sync::Arc;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};

use super::{
    handles, udp_sessions_active, UdpMetrics, ACME_ORDERS_TOTAL, AUTH_FAILURES_TOTAL,
    BACKEND_CONNECT_SECONDS, BACKEND_SESSIONS_ACTIVE, BACKEND_UP, BUILD_INFO, BYTES_TOTAL,
    CERTIFICATE_NOT_AFTER, CLOSES_TOTAL, CONFIG_INFO, CONFIG_LAST_RELOAD_SUCCESS,
    CONFIG_RELOADS_TOTAL, CONNECTIONS_ACTIVE, CONNECTIONS_REFUSED_TOTAL, CONNECTION_REFUSALS,
    CONNECTION_TIMEOUTS_TOTAL, CONNECTION_TIMEOUT_PHASES, DESCRIPTORS_EXHAUSTED_TOTAL,
    DESCRIPTOR_STAGES, JWKS_AGE_SECONDS, JWKS_KEYS, JWKS_REFRESHES_TOTAL, KEEPALIVE_TIMEOUTS_TOTAL,
    MESSAGES_TOTAL, NO_ROUTE, PING_RTT_SECONDS, PROXY_HEADERS_REFUSED_TOTAL, RECORDINGS_ACTIVE,
    RECORDING_BYTES_WRITTEN_TOTAL, RECORDING_DELETIONS_TOTAL, RECORDING_DROPPED_BYTES_TOTAL,
    RECORDING_FAILURES_TOTAL, RECORDING_GAPS_TOTAL, RESUMES_TOTAL, RESUME_DETACHED_SESSIONS,
    RESUME_REPLAYED_BYTES_TOTAL, SESSIONS_ACTIVE, SESSIONS_TOTAL, SESSION_DURATION_SECONDS,
    SIGNINS_TOTAL, TLS_HANDSHAKE_FAILURES_TOTAL, UDP_DATAGRAMS_TOTAL, UDP_DROPPED_TOTAL,
    UDP_ICMP_ERRORS_TOTAL, UDP_SESSIONS_ACTIVE, UPGRADE_REJECTIONS_TOTAL, WATCHERS_ACTIVE,
    WATCHERS_DROPPED_TOTAL, WORKER_SESSIONS_ACTIVE,
};

/// Every metric's description, and known label sets at zero.
pub(super) fn describe() {
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
        handles::register_route(route, what.h2);
        rejecting.push(route.to_string());
    }
    for route in rejecting {
        for &reason in what.rejection_reasons {
            counter!(UPGRADE_REJECTIONS_TOTAL, "route" => route.clone(), "reason" => reason)
                .increment(0);
        }
    }
}

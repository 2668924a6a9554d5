//! `[timeouts]` and `[limits]`: every timeout in seconds and every resource limit, with
//! their defaults.

use serde::{Deserialize, Serialize};

/// Every timeout, in seconds (fractions allowed).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TLS handshake on a `wss` listener. Default 10 s.
    pub tls_handshake_secs: f64,
    /// Reading a request's headers (slowloris guard). Default 10 s.
    pub header_read_secs: f64,
    /// Dialing the backend, before the client gets its `101`. Default 5 s.
    pub backend_connect_secs: f64,
    /// Interval between pings to the client; 0 disables keepalive. Default 20 s.
    pub ping_interval_secs: f64,
    /// How long a ping may go unanswered before the session is closed. Default 20 s.
    pub pong_timeout_secs: f64,
    /// After the client's Close: how long backend bytes may still flow before the
    /// reply; after our Close: how long we wait for the client's. Default 5 s.
    pub close_grace_secs: f64,
    /// How long a write to the backend may make no progress (the backend stopped reading)
    /// before the session is closed with 1011. While a write waits, the client is held back
    /// (not read) and its keepalive is not held against it. Default 60 s.
    pub backend_stall_secs: f64,
    /// On SIGTERM/SIGINT: how long sessions get to close before the process exits. Default 10 s.
    pub shutdown_grace_secs: f64,
    /// After `POST /api/routes/{name}/drain`: how long live sessions keep going before they
    /// are closed with 1001 (the request's `?grace_secs=` overrides it). Default 30 s.
    pub drain_grace_secs: f64,
    /// TCP keepalive on backend sockets: idle time before the first probe, and the time
    /// between probes (3 unanswered probes drop the connection); 0 disables. Finds a
    /// backend host that vanished while the session was idle. Default 30 s.
    pub backend_keepalive_secs: f64,
    /// `TCP_USER_TIMEOUT` on backend sockets (Linux): how long sent data may stay
    /// unacknowledged before the connection is dropped; 0 leaves the kernel default
    /// (about 15 minutes of retransmissions). Default 60 s.
    pub backend_user_timeout_secs: f64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tls_handshake_secs: 10.0,
            header_read_secs: 10.0,
            backend_connect_secs: 5.0,
            ping_interval_secs: 20.0,
            pong_timeout_secs: 20.0,
            close_grace_secs: 5.0,
            backend_stall_secs: 60.0,
            shutdown_grace_secs: 10.0,
            drain_grace_secs: 30.0,
            backend_keepalive_secs: 30.0,
            backend_user_timeout_secs: 60.0,
        }
    }
}

/// Resource limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent connections across public listeners (TLS, HTTP and sessions); lowered at
    /// start when the descriptor limit (RLIMIT_NOFILE) cannot hold them and a session each.
    /// Default 10,000.
    pub max_connections: usize,
    /// Concurrent connections from one client address (IPv4, or IPv6 /64; the PROXY header's
    /// address behind a trusted balancer; a listener's `trusted_proxies` are exempt when it
    /// sets `forwarded_header`); over it, new connections are closed at once. 0 = no cap.
    /// Default 100.
    pub max_connections_per_ip: usize,
    /// Per-session buffer for each direction: the most bytes read from one side
    /// before they are written to the other. Default 64 KiB.
    pub buffer_bytes: usize,
    /// Largest frame accepted from a peer; larger ones close with 1009. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// Largest message (all fragments together) accepted from a peer; larger ones
    /// close with 1009. Messages are streamed, never reassembled. Default 64 MiB.
    pub max_message_bytes: usize,
    /// Frame payload bytes all sessions together may hold at once (frames being received,
    /// from clients and WebSocket backends). A frame that would go over it closes its session
    /// with 1013 (Try Again Later). At least every route's `max_frame_bytes`. Default 256 MiB.
    pub frame_budget_bytes: usize,
    // ---- Admission, header size and pacing: used by `policy::admission` and the pacer ----
    /// Concurrent sessions across all routes; over it, 503. 0 = as many as the descriptor
    /// limit leaves beside `max_connections` (one backend socket each). Default 0.
    pub max_sessions: usize,
    /// Concurrent sessions on each route (a route's `max_sessions` overrides it); over it,
    /// 503. 0 = no cap. Default 0.
    pub max_sessions_per_route: usize,
    /// Concurrent sessions from one client address (IPv4, or IPv6 /64); over it, 429.
    /// 0 = no cap. Default 0.
    pub max_sessions_per_ip: usize,
    /// Upgrade handshakes per second from one client address, refilled continuously;
    /// over it, 429. 0 = no rate limit. Default 0.
    pub handshakes_per_ip_per_sec: f64,
    /// Handshakes one client address may make at once before the rate applies. Default 10.
    pub handshake_burst_per_ip: u32,
    /// `Retry-After` seconds sent with a 503 or 429 from a session cap. Default 5.
    pub retry_after_secs: u32,
    /// Largest HTTP request head (request line and headers); larger ones get 431. Default 32 KiB.
    pub max_header_bytes: usize,
    /// Pacing of each direction of each session, in bytes per second (a route's
    /// `bandwidth_bytes_per_sec` overrides it). 0 = unpaced. Default 0.
    pub bandwidth_bytes_per_sec: u64,
    /// Failed credentials (401/403 from a route's auth) and unknown target tokens one client
    /// address (IPv4, or IPv6 /64) may have per minute, refilled continuously; over it, 429
    /// before the credential is even checked. 0 = no budget. Default 30.
    pub auth_failures_per_ip_per_min: u32,
    /// Failed credentials one client address may have at once before the rate applies.
    /// Default 20.
    pub auth_failure_burst_per_ip: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_ip: 100,
            buffer_bytes: 64 * 1024,
            max_frame_bytes: 16 * 1024 * 1024,
            max_message_bytes: 64 * 1024 * 1024,
            frame_budget_bytes: 256 * 1024 * 1024,
            max_sessions: 0,
            max_sessions_per_route: 0,
            max_sessions_per_ip: 0,
            handshakes_per_ip_per_sec: 0.0,
            handshake_burst_per_ip: 10,
            retry_after_secs: 5,
            max_header_bytes: 32 * 1024,
            bandwidth_bytes_per_sec: 0,
            auth_failures_per_ip_per_min: 30,
            auth_failure_burst_per_ip: 20,
        }
    }
}

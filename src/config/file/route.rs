//! `[[route]]`: a request path mapped to a backend, with everything a route may set on its
//! own (framing, compression, health, resume), every key with its unit and default.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::default_true;
use crate::config::access::{AuthConfig, OriginConfig};
use crate::config::record::RecordConfig;
use crate::config::target::TargetConfig;
use crate::config::udp::UdpRouteConfig;

/// `[route.resume]`: sessions on this route can survive a dropped client connection
/// (docs/resume.md). Byte backends only (`tcp://`, `unix:`, targets).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResumeConfig {
    /// How long a session whose client connection dropped keeps its backend connection,
    /// waiting for a resume. Default 60 s.
    pub grace_secs: f64,
    /// Most backend→client bytes held until the client acknowledges them; reading the
    /// backend pauses when it is full. Default 2 MiB.
    pub window_bytes: usize,
    /// The in-protocol heartbeat; a connection silent for three of them is dead. Default 5 s.
    pub heartbeat_secs: f64,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        Self {
            grace_secs: 60.0,
            window_bytes: 2 << 20,
            heartbeat_secs: 5.0,
        }
    }
}

/// A route: a request path mapped to a backend.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Used in metrics labels and logs. Unique.
    pub name: String,
    /// Exact path (`/vnc`), or a prefix when it ends in `/` (`/apps/`, `/`). Query is ignored.
    pub path: String,
    /// Host names this route serves (`"vnc.example.com"`, or `"*.example.com"` for exactly one
    /// more label), compared case-insensitively and without the port with the request's
    /// `Host` (HTTP/2: `:authority`). Requests for an exactly listed name try these routes
    /// first, then wildcard routes, then routes without hosts. Default: none (any host).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// `tcp://host:port`, `ws://host:port/path`, `wss://host:port/path`, or
    /// `builtin:echo` for the built-in echo service. Required unless `[route.target]` is set.
    #[serde(
        default,
        serialize_with = "crate::config::secret::url_with_query_redacted"
    )]
    pub backend: Option<String>,
    /// A pool instead of one `backend`: several URLs of one kind (all `tcp://`/`unix:`, or
    /// all `ws://`/`wss://`). A failed dial tries the next one before the client's `101`.
    /// Default none.
    #[serde(
        default,
        serialize_with = "crate::config::secret::urls_with_query_redacted"
    )]
    pub backends: Vec<String>,
    /// With `backends`: `round_robin` (default) or `least_sessions`.
    #[serde(default)]
    pub balance: Balance,
    /// `[route.health]`: with `backends`, ejection of failing backends and active checks.
    #[serde(default)]
    pub health: HealthConfig,
    /// Byte backends (`tcp://`, `unix:`, token-file and claim targets): send a PROXY
    /// protocol header carrying the client's address before any data. Only `"v2"`.
    /// Default: none.
    #[serde(default)]
    pub send_proxy_protocol: Option<ProxyProtocolVersion>,
    /// Subprotocols this route accepts, in the client's order of preference. Default `["binary"]`.
    #[serde(default = "default_subprotocols")]
    pub subprotocols: Vec<String>,
    /// Frame type for backend bytes: `binary` (default) or `text` (UTF-8 never split across frames).
    #[serde(default)]
    pub message_type: MessageType,
    /// Recent backend→client output kept in memory for the session's watchers who join
    /// late, so a terminal's screen can be drawn; 0..=16777216 bytes. Default: 65536 on a
    /// route recorded as asciicast (a terminal route), else 0 (watchers get what follows).
    #[serde(default)]
    pub watch_backlog_bytes: Option<usize>,
    /// WebSocket backends: request headers copied to the backend handshake.
    /// Default `["cookie", "authorization", "user-agent"]`.
    #[serde(default = "default_forward_headers")]
    pub forward_headers: Vec<String>,
    /// WebSocket backends: also forward the credential the gateway checked for this route
    /// (a bearer `Authorization` header, the `cookie_name` cookie) when `forward_headers`
    /// lists its header. Default false: the gateway consumes it, as it does `bearer.`
    /// subprotocol entries and query tokens.
    #[serde(default)]
    pub forward_credentials: bool,
    /// WebSocket backends with a prefix route: drop the route's prefix from the request
    /// path before appending it to the backend URL's path. Default true.
    #[serde(default = "default_true")]
    pub strip_path_prefix: bool,
    /// `wss://` backends: a PEM CA bundle to verify against instead of the built-in
    /// Mozilla roots. Default: none (built-in roots).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// `wss://` backends: skip certificate verification. Development only; logged at start.
    /// Default false.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Overrides `limits.max_frame_bytes` for this route.
    #[serde(default)]
    pub max_frame_bytes: Option<usize>,
    /// Overrides `limits.max_message_bytes` for this route.
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
    // Access control (`policy::access`, `policy::targets`): each table optional, absent = open.
    /// `[route.origin]`: the Origin allowlist.
    #[serde(default)]
    pub origin: Option<OriginConfig>,
    /// `[route.auth]`: credentials the client must present.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// `[route.target]`: a per-session target (token file, JWT claim) instead of `backend`.
    #[serde(default)]
    pub target: Option<TargetConfig>,
    /// Overrides `limits.max_sessions_per_route` for this route (0 = no cap).
    #[serde(default)]
    pub max_sessions: Option<usize>,
    /// Overrides `limits.bandwidth_bytes_per_sec` for this route (0 = unpaced).
    #[serde(default)]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// permessage-deflate (RFC 7692) on the client hop: `off` (default) or `on`.
    /// See docs/compression.md for when it pays.
    #[serde(default)]
    pub compression: CompressionMode,
    /// The gateway keeps its compressor between messages (better ratio for small similar
    /// messages, about 280 KiB per active session at 15 window bits). Default true.
    #[serde(default = "default_true")]
    pub compression_server_context_takeover: bool,
    /// The client may keep its compressor between messages; false asks it not to
    /// (`client_no_context_takeover`), so the gateway holds no decompressor between
    /// messages. Default true.
    #[serde(default = "default_true")]
    pub compression_client_context_takeover: bool,
    /// The gateway's LZ77 window, 9..=15 bits. Default 15.
    #[serde(default = "default_window_bits")]
    pub compression_server_max_window_bits: u8,
    /// The client's window when it lets the gateway choose, 9..=15 bits. Default 15.
    #[serde(default = "default_window_bits")]
    pub compression_client_max_window_bits: u8,
    /// zlib level for what the gateway compresses, 0..=9. Default 1 (fastest).
    #[serde(default = "default_compression_level")]
    pub compression_level: u8,
    /// `[route.udp]`: datagram settings of `udp://` sessions. Default: none (the defaults of
    /// `config::udp`).
    #[serde(default)]
    pub udp: Option<UdpRouteConfig>,
    /// `[route.record]`: record this route's sessions. Default: not recorded.
    #[serde(default)]
    pub record: Option<RecordConfig>,
    /// `[route.resume]`: resumable sessions for clients that ask (`wsgate.resume.v1`).
    /// Default: none (off).
    #[serde(default)]
    pub resume: Option<ResumeConfig>,
}

/// Whether a route negotiates permessage-deflate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionMode {
    #[default]
    Off,
    On,
}

fn default_window_bits() -> u8 {
    15
}

fn default_compression_level() -> u8 {
    1
}

fn default_forward_headers() -> Vec<String> {
    ["cookie", "authorization", "user-agent"]
        .map(String::from)
        .to_vec()
}

impl RouteConfig {
    /// A route with every optional field at its default.
    pub fn new(
        name: impl Into<String>,
        path: impl Into<String>,
        backend: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            resume: None,
            hosts: Vec::new(),
            backend: Some(backend.into()),
            backends: Vec::new(),
            balance: Balance::default(),
            health: HealthConfig::default(),
            send_proxy_protocol: None,
            subprotocols: default_subprotocols(),
            message_type: MessageType::default(),
            watch_backlog_bytes: None,
            forward_headers: default_forward_headers(),
            forward_credentials: false,
            strip_path_prefix: true,
            tls_ca_file: None,
            insecure_skip_verify: false,
            max_frame_bytes: None,
            max_message_bytes: None,
            origin: None,
            auth: None,
            target: None,
            max_sessions: None,
            bandwidth_bytes_per_sec: None,
            compression: CompressionMode::Off,
            compression_server_context_takeover: true,
            compression_client_context_takeover: true,
            compression_server_max_window_bits: default_window_bits(),
            compression_client_max_window_bits: default_window_bits(),
            compression_level: default_compression_level(),
            udp: None,
            record: None,
        }
    }
}

fn default_subprotocols() -> Vec<String> {
    vec!["binary".to_owned()]
}

/// How backend bytes are framed towards the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    #[default]
    Binary,
    Text,
}

/// How a pool picks a backend for a new session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each new session goes to the next backend in turn.
    #[default]
    RoundRobin,
    /// Each new session goes to the backend with the fewest live sessions (ties in turn).
    LeastSessions,
}

/// The PROXY protocol versions the gateway can send to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolVersion {
    V2,
}

/// `[route.health]`: passive and active health of a pool's backends, in seconds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// A backend whose dial failed is skipped for this long; each further failure in a row
    /// doubles it. Default 5 s.
    pub eject_secs: f64,
    /// The longest ejection. Default 300 s.
    pub max_eject_secs: f64,
    /// Active checks: every backend this often gets the dial a session makes (a connect;
    /// for `ws://`/`wss://` also TLS and the WebSocket handshake); a failure ejects, a
    /// success ends an ejection. 0 disables. Default 0.
    pub check_interval_secs: f64,
    /// How long one active check (connect and handshake) may take. Default 2 s.
    pub check_timeout_secs: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            eject_secs: 5.0,
            max_eject_secs: 300.0,
            check_interval_secs: 0.0,
            check_timeout_secs: 2.0,
        }
    }
}

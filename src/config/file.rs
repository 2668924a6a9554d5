//! The TOML file's tables as serde structs: every key, its unit and its default, unknown keys
//! rejected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::access::{AuthConfig, ClientAuth, OriginConfig};
use super::http2::Http2Config;
use super::target::{EgressConfig, TargetConfig};
use super::udp::{UdpGlobalConfig, UdpRouteConfig};

/// The file as written: every field optional where a default exists, unknown keys rejected.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Where backends may be dialed (`policy::targets`). Default: anywhere.
    #[serde(default)]
    pub egress: Option<EgressConfig>,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// HTTP/2 connection limits (`config::http2`).
    #[serde(default)]
    pub http2: Http2Config,
    #[serde(default)]
    pub reload: ReloadConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Static files on the public listeners (websockify's `--web`). Default: none.
    #[serde(default)]
    pub web: Option<WebConfig>,
    /// `[udp]`: caps shared by all `udp://` sessions (`config::udp`).
    #[serde(default)]
    pub udp: UdpGlobalConfig,
    /// `[resume]`: gateway-wide bounds on resumable sessions (docs/resume.md).
    #[serde(default)]
    pub resume: ResumeLimitsConfig,
    /// Automatic certificates over ACME (RFC 8555). Default: none.
    #[serde(default)]
    pub acme: Option<AcmeConfig>,
    /// Browser sign-in at an OpenID provider (`config::signin`). Default: none.
    #[serde(default)]
    pub signin: Option<super::SigninConfig>,
}

/// `[resume]`: how many resumable sessions the gateway holds at once, attached or waiting
/// for their client to come back, and how much replay buffer they may reserve.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResumeLimitsConfig {
    /// Resumable sessions at once (so also detached ones). Default 1000.
    pub max_sessions: usize,
    /// Resumable sessions at once from one client address. Default 32.
    pub max_sessions_per_address: usize,
    /// Replay-buffer bytes all resumable sessions may reserve (each its route's
    /// `window_bytes`). Default 1 GiB.
    pub max_buffered_bytes: usize,
}

impl Default for ResumeLimitsConfig {
    fn default() -> Self {
        Self {
            max_sessions: 1000,
            max_sessions_per_address: 32,
            max_buffered_bytes: 1 << 30,
        }
    }
}

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

/// `[acme]`: certificates for `names` obtained from an ACME CA (Let's Encrypt, a private
/// CA) with the TLS-ALPN-01 challenge on the TLS listeners (or HTTP-01 on a plain one),
/// kept in `state_dir`, renewed at about two-thirds of their lifetime. Served on every TLS
/// listener, for these exact names.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL (`https://acme-v02.api.letsencrypt.org/directory`).
    pub directory_url: String,
    /// Host names to obtain certificates for, one certificate each; no wildcards
    /// (TLS-ALPN-01 cannot prove them).
    pub names: Vec<String>,
    /// Folder for the account key and the certificates (created 0700, files 0600); used by
    /// this gateway alone. Keep it across restarts and back it up.
    pub state_dir: PathBuf,
    /// Contact URIs for the account (`"mailto:ops@example.com"`). Default none.
    #[serde(default)]
    pub contact: Vec<String>,
    /// PEM CA certificate that the ACME server's HTTPS certificate chains to (a private or
    /// test CA). Default: the built-in Mozilla roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The first wait after a failed order, in seconds; it doubles after each failure up to
    /// a day, and the current certificate keeps serving meanwhile. Default 60.
    #[serde(default = "default_acme_retry_secs")]
    pub retry_secs: f64,
    /// How the CA checks that this gateway answers for a name: `"tls-alpn-01"` (the
    /// default: on the TLS listeners, which the CA reaches on port 443) or `"http-01"` (a
    /// plain listener answers `/.well-known/acme-challenge/`; the CA reaches it on port 80).
    #[serde(default)]
    pub challenge: AcmeChallenge,
}

/// The ACME challenge type `[acme]` answers (RFC 8737 TLS-ALPN-01 or RFC 8555 HTTP-01).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    #[serde(rename = "http-01")]
    Http01,
}

fn default_acme_retry_secs() -> f64 {
    60.0
}

/// `[web]`: a folder served to plain (non-upgrade) GET and HEAD requests on every public
/// listener, e.g. noVNC's HTML and JavaScript beside its WebSocket route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// The folder; must exist. URL paths cannot leave it (`..` is refused); a folder's
    /// `index.html` answers for the folder. A listener's console keeps `/` for itself.
    pub root: PathBuf,
    /// File answers in flight at once, over every listener; more get `503`. Each holds at
    /// most one 64 KiB piece of its file. 1..=100000, default 64.
    #[serde(default = "default_web_max_responses")]
    pub max_responses: usize,
    /// Serve symlinks inside the folder whose target is outside it. Default false (`404`).
    #[serde(default)]
    pub follow_external_symlinks: bool,
}

impl WebConfig {
    /// `root` with every other key at its default.
    pub fn at(root: PathBuf) -> Self {
        Self {
            root,
            max_responses: default_web_max_responses(),
            follow_external_symlinks: false,
        }
    }
}

fn default_web_max_responses() -> usize {
    64
}

/// Reload on a change of the config file or of a listener's certificate, key or client CA
/// file (SIGHUP and `POST /reload` always work).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Watch the files. Default true (only when running from a config file).
    pub watch: bool,
    /// Quiet time after the last change before reloading, in milliseconds: a certificate and
    /// its key written one after the other are read together. 0..=60000, default 500.
    pub watch_debounce_ms: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: true,
            watch_debounce_ms: 500,
        }
    }
}

/// Logging; read at start (a reload that changes it logs that a restart is needed).
/// `--log-format` and `--log-level` (or `RUST_LOG`) override it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json` (one JSON object per line).
    pub format: LogFormat,
    /// A level (`info`, the default) or a filter (`info,wsgate::edge=debug`).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colour only on a terminal, never with `NO_COLOR`).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The async runtime; read at start (a reload that changes it logs that a restart is needed).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// How connections are spread over threads. Default `shared`.
    pub mode: RuntimeMode,
    /// Worker threads; 0 = one per CPU (the default). In `shared` mode 1 runs everything on
    /// one thread (tokio's current-thread runtime): on a small box that the backend shares it
    /// moved more bytes per CPU second in our benchmarks (docs/benchmarks.md). In `per-core`
    /// mode, the number of workers.
    pub worker_threads: usize,
}

/// `[runtime] mode`: one work-stealing runtime for everything, or a thread per core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeMode {
    /// One runtime (`worker_threads` threads, work stealing) serves every connection and the
    /// admin side.
    #[default]
    Shared,
    /// `worker_threads` single-threaded runtimes, each with its own `SO_REUSEPORT` socket per
    /// public listener: the kernel spreads connections over them, and a connection, its TLS,
    /// HTTP and session stay on one thread. Admin, reload and signals run on a thread of
    /// their own. Linux only.
    PerCore,
}

impl RuntimeMode {
    /// Whether this platform can run the mode.
    pub fn supported(self) -> anyhow::Result<()> {
        if self == Self::PerCore && !cfg!(target_os = "linux") {
            anyhow::bail!(
                "\"per-core\" needs the kernel to spread connections over SO_REUSEPORT \
                 sockets, which only Linux does; use \"shared\""
            );
        }
        Ok(())
    }
}

impl std::fmt::Display for RuntimeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Shared => "shared",
            Self::PerCore => "per-core",
        })
    }
}

/// A public listener: where clients connect, with optional TLS (`wss://`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// TLS listeners: offer HTTP/2 (ALPN `h2` before `http/1.1`), so browsers may carry
    /// WebSockets over it (RFC 8441). Default true.
    #[serde(default = "default_true")]
    pub http2: bool,
    /// Plain listeners: also accept HTTP/2 with prior knowledge (h2c), for a load balancer
    /// that speaks it; HTTP/1.1 keeps working. Default false.
    #[serde(default)]
    pub h2c: bool,
    /// Serve the browser console at `/` (plain GETs only; upgrades still go to the routes).
    /// Default false; the embedded default turns it on.
    #[serde(default)]
    pub console: bool,
    /// Behind an L4 load balancer: connections from `trusted_proxies` must open with a
    /// PROXY protocol v1 or v2 header (read before TLS, under `timeouts.header_read_secs`),
    /// whose source address becomes the client's. A header from any other source is
    /// refused; other sources without one are served as direct clients. Default false.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Behind an HTTP load balancer: the one header it writes the client's address in
    /// (`"x-forwarded-for"`, `"forwarded"` or `"x-real-ip"`). On requests from
    /// `trusted_proxies` the client is the right-most address of that header that is not
    /// itself a trusted proxy; every other header is ignored, since balancers pass on what
    /// clients send in the headers they do not write. Default: none (the TCP peer).
    #[serde(default)]
    pub forwarded_header: Option<ForwardedHeader>,
    /// The load balancers' addresses, as CIDRs or plain IPs (`"10.0.0.0/8"`, `"::1"`).
    /// Required (non-empty) with `proxy_protocol` or `forwarded_header`. Default none.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

impl ListenerConfig {
    /// A plain listener on `address` with every optional key at its default.
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            tls: None,
            http2: true,
            h2c: false,
            console: false,
            proxy_protocol: false,
            forwarded_header: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// PEM files: a certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
/// This one is the listener's default certificate: served to clients that ask for no name
/// or a name no entry of `certificates` covers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// PEM CA bundle that client certificates must chain to (mTLS). Default: none, and no
    /// client certificate is asked for.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (default) or `optional`.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
    /// `[[listener.tls.certificates]]`: more certificates on this listener, each served to
    /// clients whose SNI names one of its names. Default none.
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    /// Clients that send no SNI: `"default"` (the default certificate) or `"refuse"` (the
    /// handshake fails). Default `"default"`.
    #[serde(default)]
    pub without_sni: WithoutSni,
    /// `421` for every request whose host is not the connection's SNI name. Default: on when
    /// a route requires client certificates, else off (a request is then misdirected only
    /// when its host would select another certificate than the SNI did).
    #[serde(default)]
    pub strict_sni_host: Option<bool>,
}

impl TlsConfig {
    /// A listener's default certificate and key, every other key at its default.
    pub fn new(cert_file: PathBuf, key_file: PathBuf) -> Self {
        Self {
            cert_file,
            key_file,
            client_ca_file: None,
            client_auth: None,
            certificates: Vec::new(),
            without_sni: WithoutSni::default(),
            strict_sni_host: None,
        }
    }
}

/// One more certificate of a TLS listener, chosen by the client's SNI.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The names (`"a.example.com"`, `"*.example.com"`) this certificate is served for.
    /// Default: the DNS names of the certificate's subjectAltName extension.
    #[serde(default)]
    pub names: Vec<String>,
}

/// `[listener.tls] without_sni`: what a client that names no host in its handshake gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WithoutSni {
    /// The listener's default certificate (`cert_file`).
    #[default]
    Default,
    /// No certificate: the handshake fails.
    Refuse,
}

/// The admin listener: `/metrics`, `/healthz`, `/readyz`, the status page and the session
/// API. Keep it off public interfaces.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// SHA-256 (hex, `printf %s "$TOKEN" | sha256sum`) of the bearer token the status page
    /// and `/api/` require. Default: none (the listener is open; keep it on loopback).
    #[serde(default)]
    pub bearer_sha256: Option<String>,
    /// Names (`admin.example.com`, `wsgate-admin:9090`) requests may carry in `Host`
    /// besides the listener's own address (its IP literal, and `localhost` on loopback);
    /// other `Host`s get `421` (DNS rebinding guard). Default: none.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

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
    #[serde(default, serialize_with = "super::secret::url_with_query_redacted")]
    pub backend: Option<String>,
    /// A pool instead of one `backend`: several URLs of one kind (all `tcp://`/`unix:`, or
    /// all `ws://`/`wss://`). A failed dial tries the next one before the client's `101`.
    /// Default none.
    #[serde(default, serialize_with = "super::secret::urls_with_query_redacted")]
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
    pub record: Option<super::RecordConfig>,
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

impl FileConfig {
    /// Make every relative file path absolute against `base` (a config file's folder; for
    /// quick-mode flags, the working directory), so that the files a config names do not
    /// depend on the working directory it is started or reloaded from (systemd starts
    /// services in `/`). Absolute paths are kept as they are. Every path key is here: a new
    /// one must be added.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for l in &mut self.listeners {
            if let Some(tls) = &mut l.tls {
                fix(&mut tls.cert_file);
                fix(&mut tls.key_file);
                for c in &mut tls.certificates {
                    fix(&mut c.cert_file);
                    fix(&mut c.key_file);
                }
                tls.client_ca_file.iter_mut().for_each(fix);
            }
        }
        if let Some(acme) = &mut self.acme {
            fix(&mut acme.state_dir);
            acme.ca_file.iter_mut().for_each(fix);
        }
        if let Some(s) = &mut self.signin {
            fix(&mut s.client_secret_file);
            fix(&mut s.cookie_keys_file);
            s.ca_file.iter_mut().for_each(fix);
        }
        for r in &mut self.routes {
            r.tls_ca_file.iter_mut().for_each(fix);
            if let Some(jwt) = r.auth.as_mut().and_then(|a| a.jwt.as_mut()) {
                jwt.secret_file.iter_mut().for_each(fix);
                jwt.public_key_file.iter_mut().for_each(fix);
                jwt.ca_file.iter_mut().for_each(fix);
            }
            if let Some(target) = &mut r.target {
                target.token_file.iter_mut().for_each(fix);
            }
            if let Some(record) = &mut r.record {
                fix(&mut record.dir);
            }
        }
        if let Some(web) = &mut self.web {
            fix(&mut web.root);
        }
    }
}

fn default_true() -> bool {
    true
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

/// The header a trusted HTTP load balancer names the client in (`forwarded_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For`, a list each proxy appends to (AWS ALB, nginx
    /// `$proxy_add_x_forwarded_for`, HAProxy `option forwardfor`).
    XForwardedFor,
    /// RFC 7239 `Forwarded`, its `for=` parameters (Envoy, HAProxy `option forwarded`).
    Forwarded,
    /// `X-Real-IP`, one address the balancer sets (nginx `proxy_set_header X-Real-IP`).
    XRealIp,
}

impl ForwardedHeader {
    /// The header's name, lower-case.
    pub fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
            Self::XRealIp => "x-real-ip",
        }
    }
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

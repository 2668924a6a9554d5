//! The configuration: strict TOML, documented defaults, validated once into an immutable snapshot.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::access::{Access, AuthConfig, ClientAuth, OriginConfig};
use crate::targets::{Egress, EgressConfig, Target, TargetConfig};

/// The embedded default: `ws://127.0.0.1:8080/echo` to a built-in echo service, admin on 9090.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The file as written: every field optional where a default exists, unknown keys rejected.
#[derive(Debug, Deserialize)]
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
    /// Where backends may be dialed (src/targets.rs). Default: anywhere.
    #[serde(default)]
    pub egress: Option<EgressConfig>,
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

/// The async runtime.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads; 0 = one per CPU (the default). 1 runs everything on one thread
    /// (tokio's current-thread runtime): on a small box that the backend shares it moved
    /// more bytes per CPU second in our benchmarks (docs/benchmarks.md).
    pub worker_threads: usize,
}

/// A public listener: where clients connect, with optional TLS (`wss://`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// PEM files: a certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
#[derive(Debug, Clone, Deserialize)]
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
}

/// The admin listener: `/metrics`, `/healthz`, `/readyz`. Keep it off public interfaces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub address: SocketAddr,
}

/// Every timeout, in seconds (fractions allowed).
#[derive(Debug, Clone, Deserialize)]
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
    /// On SIGTERM/SIGINT: how long sessions get to close before the process exits. Default 10 s.
    pub shutdown_grace_secs: f64,
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
            shutdown_grace_secs: 10.0,
        }
    }
}

/// Resource limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent connections across public listeners (TLS, HTTP and sessions). Default 10,000.
    pub max_connections: usize,
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
    // ---- Admission, header size and pacing: checked and used in src/limits.rs ----
    /// Concurrent sessions across all routes; over it, 503. 0 = no cap. Default 0.
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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
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
        }
    }
}

/// A route: a request path mapped to a backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Used in metrics labels and logs. Unique.
    pub name: String,
    /// Exact path (`/vnc`), or a prefix when it ends in `/` (`/apps/`, `/`). Query is ignored.
    pub path: String,
    /// `tcp://host:port`, `ws://host:port/path`, `wss://host:port/path`, or
    /// `builtin:echo` for the built-in echo service. Required unless `[route.target]` is set.
    #[serde(default)]
    pub backend: Option<String>,
    /// Subprotocols this route accepts, in the client's order of preference. Default `["binary"]`.
    #[serde(default = "default_subprotocols")]
    pub subprotocols: Vec<String>,
    /// Frame type for backend bytes: `binary` (default) or `text` (UTF-8 never split across frames).
    #[serde(default)]
    pub message_type: MessageType,
    /// WebSocket backends: request headers copied to the backend handshake.
    /// Default `["cookie", "authorization", "user-agent"]`.
    #[serde(default = "default_forward_headers")]
    pub forward_headers: Vec<String>,
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
    // Access control (src/access.rs, src/targets.rs): each table optional, absent = open.
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
            backend: Some(backend.into()),
            subprotocols: default_subprotocols(),
            message_type: MessageType::default(),
            forward_headers: default_forward_headers(),
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
        }
    }
}

fn default_subprotocols() -> Vec<String> {
    vec!["binary".to_owned()]
}

/// How backend bytes are framed towards the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    #[default]
    Binary,
    Text,
}

/// Where a route's bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAddr {
    /// A raw TCP service, dialed by name on every session (DNS is re-resolved).
    Tcp { host: String, port: u16 },
    /// A WebSocket service; `path` holds the URL's path and query (at least `/`).
    WebSocket {
        tls: bool,
        host: String,
        port: u16,
        path: String,
    },
    /// The built-in echo service, started by the gateway on a loopback port.
    BuiltinEcho,
}

impl BackendAddr {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        if url == "builtin:echo" {
            return Ok(Self::BuiltinEcho);
        }
        let (scheme, rest) = url.split_once("://").with_context(|| {
            format!("backend {url:?}: expected tcp://, ws://, wss:// or builtin:echo")
        })?;
        let (authority, path) = match (scheme, rest.find(['/', '?'])) {
            ("tcp", _) => (rest.trim_end_matches('/'), ""),
            ("ws" | "wss", Some(i)) => (&rest[..i], &rest[i..]),
            ("ws" | "wss", None) => (rest, ""),
            _ => bail!("backend {url:?}: unknown scheme {scheme:?} (tcp, ws, wss)"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !authority.starts_with('[') || h.ends_with(']') => (h, p),
            _ if scheme == "ws" => (authority, "80"),
            _ if scheme == "wss" => (authority, "443"),
            _ => bail!("backend {url:?}: missing :PORT"),
        };
        if host.contains(['/', '@', ' ']) {
            bail!("backend {url:?}: bad host {host:?}");
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("backend {url:?}: missing host");
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("backend {url:?}: port must be 1-65535"))?;
        let host = host.to_owned();
        Ok(match scheme {
            "tcp" => Self::Tcp { host, port },
            _ => Self::WebSocket {
                tls: scheme == "wss",
                host,
                port,
                path: if path.starts_with('/') {
                    path.to_owned()
                } else {
                    format!("/{path}")
                },
            },
        })
    }
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Self::WebSocket {
                tls,
                host,
                port,
                path,
            } => {
                let scheme = if *tls { "wss" } else { "ws" };
                if host.contains(':') {
                    write!(f, "{scheme}://[{host}]:{port}{path}")
                } else {
                    write!(f, "{scheme}://{host}:{port}{path}")
                }
            }
            Self::BuiltinEcho => f.write_str("builtin:echo"),
        }
    }
}

/// A validated route, shared by every session that uses it.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    pub path: String,
    /// The fixed backend, or where each session's target comes from.
    pub backend: Target,
    pub subprotocols: Vec<String>,
    pub message_type: MessageType,
    /// Lower-case header names copied to a WebSocket backend's handshake.
    pub forward_headers: Vec<hyper::header::HeaderName>,
    pub strip_path_prefix: bool,
    /// TLS client settings for a `wss://` backend.
    pub backend_tls: Option<Arc<rustls::ClientConfig>>,
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    /// Origin allowlist and credentials.
    pub access: Access,
    /// Session cap and bandwidth (src/limits.rs).
    pub limits: crate::limits::RouteLimits,
}

impl Route {
    /// The path and query to request from a WebSocket backend for this client request.
    pub fn backend_path(
        &self,
        backend_path: &str,
        request_path: &str,
        query: Option<&str>,
    ) -> String {
        let rest = match request_path.strip_prefix(self.path.as_str()) {
            Some(rest) if self.strip_path_prefix && self.path.ends_with('/') => rest,
            _ if self.path.ends_with('/') => request_path.trim_start_matches('/'),
            _ => "",
        };
        let (base, base_query) = match backend_path.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (backend_path, None),
        };
        let mut out = String::with_capacity(base.len() + rest.len() + 16);
        out.push_str(base);
        if !rest.is_empty() {
            if !out.ends_with('/') {
                out.push('/');
            }
            out.push_str(rest);
        }
        let queries: Vec<&str> = [base_query, query]
            .into_iter()
            .flatten()
            .filter(|q| !q.is_empty())
            .collect();
        if !queries.is_empty() {
            out.push('?');
            out.push_str(&queries.join("&"));
        }
        out
    }
}

/// The resolved configuration: no `Option` that "must be set", durations as `Duration`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<SocketAddr>,
    pub routes: Vec<Arc<Route>>,
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub backend_connect_timeout: Duration,
    /// `None` when keepalive is disabled.
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    pub close_grace: Duration,
    pub shutdown_grace: Duration,
    /// Runtime worker threads; 0 = one per CPU.
    pub worker_threads: usize,
    pub max_connections: usize,
    pub buffer_bytes: usize,
    /// `None`: backends may be dialed anywhere.
    pub egress: Option<Arc<Egress>>,
    /// Session caps and handshake rate (src/limits.rs).
    pub admission: crate::limits::AdmissionConfig,
    /// Largest HTTP request head; larger ones get 431.
    pub max_header_bytes: usize,
    /// Frame payload bytes all sessions may hold at once; over it, 1013.
    pub frame_budget_bytes: usize,
}

impl Config {
    /// Parse and validate TOML text; errors name the bad key.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let file: FileConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        file.validate()
    }

    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Self {
        Self::from_toml(DEFAULT_CONFIG).expect("the embedded default config is valid (tested)")
    }
}

fn secs(name: &str, value: f64, allow_zero: bool) -> anyhow::Result<Duration> {
    if !value.is_finite() || value < 0.0 || (!allow_zero && value == 0.0) || value > 86_400.0 {
        bail!(
            "timeouts.{name}: must be {} and at most 86400, got {value}",
            if allow_zero { ">= 0" } else { "> 0" }
        );
    }
    Ok(Duration::from_secs_f64(value))
}

impl FileConfig {
    /// Check everything once and resolve it into a [`Config`].
    pub fn validate(self) -> anyhow::Result<Config> {
        if self.listeners.is_empty() {
            bail!("listener: at least one [[listener]] is required");
        }
        if self.routes.is_empty() {
            bail!("route: at least one [[route]] is required");
        }
        let mut addrs = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if l.address.port() != 0 && !addrs.insert(l.address) {
                bail!("listener[{i}].address: {} is used twice", l.address);
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            check_client_ca(i, l)?;
        }
        if let Some(admin) = &self.admin {
            if admin.address.port() != 0 && addrs.contains(&admin.address) {
                bail!("admin.address: {} is also a public listener", admin.address);
            }
        }
        // Before the routes, which inherit its defaults: a bad default is named as such.
        let admission = crate::limits::resolve(&self.limits)?;
        let mut names = HashSet::new();
        let mut paths = HashSet::new();
        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.into_iter().enumerate() {
            if r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                bail!(
                    "route[{i}].name: {:?} must be non-empty [A-Za-z0-9_.-]",
                    r.name
                );
            }
            if !names.insert(r.name.clone()) {
                bail!("route[{i}].name: {:?} is used twice", r.name);
            }
            if !r.path.starts_with('/') || r.path.contains(['?', '#', ' ']) {
                bail!(
                    "route[{i}].path: {:?} must start with / and hold no query",
                    r.path
                );
            }
            if !paths.insert(r.path.clone()) {
                bail!("route[{i}].path: {:?} is used twice", r.path);
            }
            let at = format!("route[{i}]");
            let access = Access::from_config(&at, r.origin.as_ref(), r.auth.as_ref())?;
            if access.needs_client_cert()
                && !self
                    .listeners
                    .iter()
                    .any(|l| l.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()))
            {
                bail!("{at}.auth: requires a client certificate, but no listener has tls.client_ca_file");
            }
            let backend =
                Target::from_config(&at, r.backend.as_deref(), r.target.as_ref(), &access)?;
            let is_wss = matches!(
                backend,
                Target::Fixed(BackendAddr::WebSocket { tls: true, .. })
            );
            if !is_wss && (r.tls_ca_file.is_some() || r.insecure_skip_verify) {
                bail!("route[{i}]: tls_ca_file and insecure_skip_verify apply to wss:// backends only");
            }
            if r.insecure_skip_verify {
                tracing::warn!(
                    route = %r.name,
                    "insecure_skip_verify is set: this route's backend certificates are NOT verified (development only)"
                );
            }
            let backend_tls = if is_wss {
                Some(
                    crate::tls::client_config(r.tls_ca_file.as_deref(), r.insecure_skip_verify)
                        .with_context(|| format!("route[{i}].tls_ca_file"))?,
                )
            } else {
                None
            };
            let mut forward_headers = Vec::with_capacity(r.forward_headers.len());
            for h in &r.forward_headers {
                let name = hyper::header::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .ok()
                    .filter(|n| !is_hop_header(n))
                    .with_context(|| {
                        format!("route[{i}].forward_headers: {h:?} is not a forwardable header")
                    })?;
                forward_headers.push(name);
            }
            let max_frame_bytes = r.max_frame_bytes.unwrap_or(self.limits.max_frame_bytes);
            let max_message_bytes = r.max_message_bytes.unwrap_or(self.limits.max_message_bytes);
            check_sizes(&format!("route[{i}]"), max_frame_bytes, max_message_bytes)?;
            let limits = crate::limits::resolve_route(&format!("route[{i}]"), &r, &self.limits)?;
            for p in &r.subprotocols {
                if p.is_empty() || !p.bytes().all(is_token_byte) {
                    bail!("route[{i}].subprotocols: {p:?} is not an HTTP token");
                }
            }
            routes.push(Arc::new(Route {
                name: r.name.into(),
                path: r.path,
                backend,
                subprotocols: r.subprotocols,
                message_type: r.message_type,
                forward_headers,
                strip_path_prefix: r.strip_path_prefix,
                backend_tls,
                max_frame_bytes,
                max_message_bytes,
                access,
                limits,
            }));
        }
        let t = &self.timeouts;
        let ping = secs("ping_interval_secs", t.ping_interval_secs, true)?;
        let l = &self.limits;
        if self.runtime.worker_threads > 1024 {
            bail!(
                "runtime.worker_threads: must be 0..=1024, got {}",
                self.runtime.worker_threads
            );
        }
        if l.max_connections == 0 {
            bail!("limits.max_connections: must be > 0");
        }
        if !(1024..=16 * 1024 * 1024).contains(&l.buffer_bytes) {
            bail!(
                "limits.buffer_bytes: must be 1024..=16777216, got {}",
                l.buffer_bytes
            );
        }
        if !(126..=1 << 30).contains(&l.max_frame_bytes) {
            bail!(
                "limits.max_frame_bytes: must be 126..=1073741824, got {}",
                l.max_frame_bytes
            );
        }
        if !(l.max_frame_bytes..=1 << 40).contains(&l.frame_budget_bytes) {
            bail!(
                "limits.frame_budget_bytes: must be max_frame_bytes ({})..=1099511627776, got {}",
                l.max_frame_bytes,
                l.frame_budget_bytes
            );
        }
        if let Some((i, r)) = routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.max_frame_bytes > l.frame_budget_bytes)
        {
            bail!(
                "route[{i}].max_frame_bytes: must be at most limits.frame_budget_bytes ({}), got {}",
                l.frame_budget_bytes,
                r.max_frame_bytes
            );
        }
        Ok(Config {
            listeners: self.listeners,
            admin: self.admin.map(|a| a.address),
            routes,
            tls_handshake_timeout: secs("tls_handshake_secs", t.tls_handshake_secs, false)?,
            header_read_timeout: secs("header_read_secs", t.header_read_secs, false)?,
            backend_connect_timeout: secs("backend_connect_secs", t.backend_connect_secs, false)?,
            ping_interval: (!ping.is_zero()).then_some(ping),
            pong_timeout: secs("pong_timeout_secs", t.pong_timeout_secs, false)?,
            close_grace: secs("close_grace_secs", t.close_grace_secs, false)?,
            shutdown_grace: secs("shutdown_grace_secs", t.shutdown_grace_secs, false)?,
            worker_threads: self.runtime.worker_threads,
            max_connections: l.max_connections,
            buffer_bytes: l.buffer_bytes,
            egress: self
                .egress
                .as_ref()
                .map(Egress::from_config)
                .transpose()?
                .map(Arc::new),
            admission,
            max_header_bytes: l.max_header_bytes,
            frame_budget_bytes: l.frame_budget_bytes,
        })
    }
}

/// mTLS settings of listener `i`: the CA bundle must load, `client_auth` needs one.
fn check_client_ca(i: usize, l: &ListenerConfig) -> anyhow::Result<()> {
    let Some(tls) = &l.tls else {
        return Ok(());
    };
    match (&tls.client_ca_file, tls.client_auth) {
        (Some(ca), _) => crate::tls::client_roots(ca)
            .map(drop)
            .with_context(|| format!("listener[{i}].tls.client_ca_file")),
        (None, Some(_)) => bail!("listener[{i}].tls.client_auth: needs client_ca_file"),
        (None, None) => Ok(()),
    }
}

fn check_sizes(at: &str, frame: usize, message: usize) -> anyhow::Result<()> {
    if !(126..=1 << 30).contains(&frame) {
        bail!("{at}.max_frame_bytes: must be 126..=1073741824, got {frame}");
    }
    if !(frame..=1 << 32).contains(&message) {
        bail!("{at}.max_message_bytes: must be max_frame_bytes..=4294967296, got {message}");
    }
    Ok(())
}

/// Headers that belong to one hop or to the handshake itself; never forwarded.
fn is_hop_header(name: &hyper::header::HeaderName) -> bool {
    use hyper::header::*;
    [
        CONNECTION,
        UPGRADE,
        HOST,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        CONTENT_LENGTH,
        PROXY_AUTHORIZATION,
        SEC_WEBSOCKET_KEY,
        SEC_WEBSOCKET_VERSION,
        SEC_WEBSOCKET_EXTENSIONS,
        SEC_WEBSOCKET_PROTOCOL,
        SEC_WEBSOCKET_ACCEPT,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str().starts_with("x-forwarded-")
}

/// RFC 7230 `tchar`: what a subprotocol name may hold.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default();
        assert_eq!(c.routes[0].path, "/echo");
        assert_eq!(c.routes[0].backend, BackendAddr::BuiltinEcho);
        assert_eq!(c.ping_interval, Some(Duration::from_secs(20)));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml(
            "[[listener]]\naddress = \"127.0.0.1:0\"\nbogus = 1\n[[route]]\nname=\"a\"\npath=\"/\"\nbackend=\"tcp://h:1\"\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("bogus"), "{err:#}");
    }

    #[test]
    fn backend_urls() {
        assert_eq!(
            BackendAddr::parse("tcp://[::1]:5900").unwrap(),
            BackendAddr::Tcp {
                host: "::1".into(),
                port: 5900
            }
        );
        assert!(BackendAddr::parse("tcp://host").is_err());
        assert!(BackendAddr::parse("tcp://host:0").is_err());
        assert!(BackendAddr::parse("http://host:80").is_err());
        assert_eq!(
            BackendAddr::parse("wss://example.com/chat?x=1").unwrap(),
            BackendAddr::WebSocket {
                tls: true,
                host: "example.com".into(),
                port: 443,
                path: "/chat?x=1".into()
            }
        );
        assert_eq!(
            BackendAddr::parse("ws://[::1]:9000").unwrap().to_string(),
            "ws://[::1]:9000/"
        );
        assert_eq!(
            BackendAddr::parse("tcp://[::1]:5900").unwrap().to_string(),
            "tcp://[::1]:5900"
        );
    }

    #[test]
    fn backend_path_mapping() {
        let mut r = Route {
            name: "a".into(),
            path: "/apps/".into(),
            backend: Target::Fixed(BackendAddr::BuiltinEcho),
            subprotocols: vec![],
            message_type: MessageType::Binary,
            forward_headers: vec![],
            strip_path_prefix: true,
            backend_tls: None,
            max_frame_bytes: 1 << 20,
            max_message_bytes: 1 << 20,
            access: Access::default(),
            limits: Default::default(),
        };
        assert_eq!(
            r.backend_path("/", "/apps/chat/1", Some("t=1")),
            "/chat/1?t=1"
        );
        assert_eq!(
            r.backend_path("/base?k=v", "/apps/x", Some("t=1")),
            "/base/x?k=v&t=1"
        );
        r.strip_path_prefix = false;
        assert_eq!(r.backend_path("/", "/apps/chat", None), "/apps/chat");
        r.path = "/exact".into();
        assert_eq!(r.backend_path("/ws", "/exact", None), "/ws");
    }

    #[test]
    fn bad_values_are_rejected() {
        let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nname=\"a\"\npath=\"/\"\nbackend=\"tcp://h:1\"\n";
        for (extra, needle) in [
            ("[timeouts]\npong_timeout_secs = 0\n", "pong_timeout_secs"),
            ("[limits]\nbuffer_bytes = 10\n", "buffer_bytes"),
            (
                "[[route]]\nname=\"a\"\npath=\"/x\"\nbackend=\"tcp://h:1\"\n",
                "used twice",
            ),
            (
                "[[route]]\nname=\"b\"\npath=\"x\"\nbackend=\"tcp://h:1\"\n",
                "route[1].path",
            ),
            (
                "[[route]]\nname=\"c\"\npath=\"/c\"\nbackend=\"udp://h:1\"\n",
                "route[1].backend",
            ),
        ] {
            let err = Config::from_toml(&format!("{base}{extra}")).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{extra}: {err:#}");
        }
    }
}

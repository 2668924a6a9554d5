//! The configuration: strict TOML, documented defaults, validated once into an immutable snapshot.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

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
    /// Largest frame accepted from a client; larger ones close with 1009. Default 16 MiB.
    pub max_frame_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            buffer_bytes: 64 * 1024,
            max_frame_bytes: 16 * 1024 * 1024,
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
    /// `tcp://host:port`, or `builtin:echo` for the built-in echo service.
    pub backend: String,
    /// Subprotocols this route accepts, in the client's order of preference. Default `["binary"]`.
    #[serde(default = "default_subprotocols")]
    pub subprotocols: Vec<String>,
    /// Frame type for backend bytes: `binary` (default) or `text` (UTF-8 never split across frames).
    #[serde(default)]
    pub message_type: MessageType,
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
    /// The built-in echo service, started by the gateway on a loopback port.
    BuiltinEcho,
}

impl BackendAddr {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        if url == "builtin:echo" {
            return Ok(Self::BuiltinEcho);
        }
        let Some(rest) = url.strip_prefix("tcp://") else {
            bail!("backend {url:?}: expected tcp://HOST:PORT or builtin:echo");
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .with_context(|| format!("backend {url:?}: missing :PORT"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("backend {url:?}: missing host");
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("backend {url:?}: port must be 1-65535"))?;
        Ok(Self::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Self::BuiltinEcho => f.write_str("builtin:echo"),
        }
    }
}

/// A validated route, shared by every session that uses it.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    pub path: String,
    pub backend: BackendAddr,
    pub subprotocols: Vec<String>,
    pub message_type: MessageType,
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
    pub max_connections: usize,
    pub buffer_bytes: usize,
    pub max_frame_bytes: usize,
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
        if let Some(admin) = &self.admin {
            if admin.address.port() != 0 && addrs.contains(&admin.address) {
                bail!("admin.address: {} is also a public listener", admin.address);
            }
        }
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
            let backend =
                BackendAddr::parse(&r.backend).with_context(|| format!("route[{i}].backend"))?;
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
            }));
        }
        let t = &self.timeouts;
        let ping = secs("ping_interval_secs", t.ping_interval_secs, true)?;
        let l = &self.limits;
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
            max_connections: l.max_connections,
            buffer_bytes: l.buffer_bytes,
            max_frame_bytes: l.max_frame_bytes,
        })
    }
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
            BackendAddr::parse("tcp://[::1]:5900").unwrap().to_string(),
            "tcp://[::1]:5900"
        );
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

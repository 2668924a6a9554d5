//! The configuration file format, and nothing else: serde structs for the whole TOML, their
//! documented defaults, validation once at load (`validate/`: the whole file, and each
//! route in `validate/route.rs`), quick-mode flags, the embedded default.
//!
//! This is plain data. It imports no other module of ours: `policy` compiles access rules,
//! targets and limits from it, and `snapshot` builds the running gateway's one immutable value.

mod access;
mod backend_addr;
mod file;
mod http2;
mod quick;
mod record;
mod secret;
mod signin;
mod target;
mod udp;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

pub use access::{AuthConfig, ClientAuth, JwtAlgorithm, JwtConfig, OriginConfig, TokenSource};
pub use backend_addr::{redact_query, BackendAddr, BACKEND_URL_FORMS};
pub use file::{
    AcmeChallenge, AcmeConfig, AdminConfig, Balance, CertificateConfig, CompressionMode,
    FileConfig, ForwardedHeader, HealthConfig, Limits, ListenerConfig, LogConfig, LogFormat,
    MessageType, ProxyProtocolVersion, ReloadConfig, ResumeConfig, ResumeLimitsConfig, RouteConfig,
    RuntimeConfig, RuntimeMode, Timeouts, TlsConfig, WebConfig, WithoutSni,
};
pub use http2::Http2Config;
pub use quick::{route_name, QuickMode};
pub use record::{RecordConfig, RecordFormat, RecordPolicy};
pub use secret::{Secret, REDACTED};
pub use signin::{RouteSigninConfig, SigninConfig};
pub use target::{EgressConfig, TargetConfig};
pub use udp::{UdpGlobalConfig, UdpRouteConfig, UdpSettings, MAX_DATAGRAM_V4, MAX_DATAGRAM_V6};
pub use validate::{host_pattern, is_hop_header, parse_cidr};

/// The embedded default: `ws://127.0.0.1:8080/echo` to a built-in echo service, admin on 9089.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// Largest session cap accepted (a semaphore holds at most `usize::MAX >> 3`).
pub const MAX_CAP: usize = 100_000_000;

/// `watch_backlog_bytes` of a route recorded as asciicast (a terminal route) that does not
/// set it.
pub const TERMINAL_WATCH_BACKLOG_BYTES: usize = 64 * 1024;
/// The most `watch_backlog_bytes` may be.
pub const MAX_WATCH_BACKLOG_BYTES: usize = 16 << 20;

/// A validated configuration: every value checked, durations as `Duration`, no `Option` that
/// "must be set". Routes keep their file form; `snapshot` compiles them.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<SocketAddr>,
    pub routes: Vec<RouteConfig>,
    /// `[limits]` as written (and checked); routes inherit from it.
    pub limits: Limits,
    /// `None`: backends may be dialed anywhere.
    pub egress: Option<EgressConfig>,
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub backend_connect_timeout: Duration,
    /// TCP keepalive idle time and probe interval on backend sockets; `None`: off.
    pub backend_keepalive: Option<Duration>,
    /// `TCP_USER_TIMEOUT` on backend sockets; `None`: the kernel's default.
    pub backend_user_timeout: Option<Duration>,
    /// `None` when keepalive is disabled.
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    pub close_grace: Duration,
    /// A backend write without progress for this long closes the session (1011).
    pub backend_stall: Duration,
    pub shutdown_grace: Duration,
    /// Default grace of a route drain (admin API).
    pub drain_grace: Duration,
    /// `[admin] bearer_sha256`, checked to be 64 hex digits.
    pub admin_bearer_sha256: Option<String>,
    /// `[runtime] mode`: one shared runtime, or a single-threaded runtime per worker.
    pub runtime_mode: RuntimeMode,
    /// Runtime worker threads (per-core mode: workers); 0 = one per CPU.
    pub worker_threads: usize,
    pub max_connections: usize,
    pub buffer_bytes: usize,
    /// Largest HTTP request head; larger ones get 431.
    pub max_header_bytes: usize,
    /// `[http2]`: per-connection limits wherever HTTP/2 is spoken.
    pub http2: Http2Config,
    /// `[reload]` as written (and checked).
    pub reload: ReloadConfig,
    /// `[log]` as written (and checked).
    pub log: LogConfig,
    /// `[web] root`: static files for non-upgrade GETs; `None`: such requests get 400.
    pub web_root: Option<PathBuf>,
    /// `[resume]`: bounds on resumable sessions.
    pub resume: ResumeLimitsConfig,
    /// `[web] max_responses`: file answers in flight at once.
    pub web_max_responses: usize,
    /// `[web] follow_external_symlinks`.
    pub web_follow_external_symlinks: bool,
    /// `[admin] allowed_hosts`: `Host` values the admin listener accepts besides its own
    /// address, lower-cased.
    pub admin_allowed_hosts: Vec<String>,
    /// `[udp]`: what all `udp://` sessions share.
    pub udp: UdpGlobalConfig,
    /// `[acme]` as written (and checked); `None`: no automatic certificates.
    pub acme: Option<AcmeConfig>,
    /// `[signin]` as written; `policy::signin` checks the rest.
    pub signin: Option<SigninConfig>,
}

impl Config {
    /// Parse and validate TOML text; errors name the bad key.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let file: FileConfig = toml::from_str(text).map_err(|e| parse_error(text, e))?;
        file.validate()
    }

    /// Read, parse and validate a config file. Relative file paths in it (certificates,
    /// keys, CA bundles, JWT keys, token files, the web root) resolve against the file's own
    /// folder, never the working directory: `check`, a start and every reload read the same
    /// files.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::load_with_text(path).map(|(config, _)| config)
    }

    /// [`Config::load`], also returning the text that was read (a reload hashes it). The one
    /// place a config file becomes a [`Config`].
    pub fn load_with_text(path: &Path) -> anyhow::Result<(Self, String)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        // `wsgate.toml` alone has an empty parent: the working directory.
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
        let base = match folder {
            Some(folder) => std::path::absolute(folder),
            None => std::env::current_dir(),
        }
        .with_context(|| format!("locating the folder of config {}", path.display()))?;
        let config = toml::from_str::<FileConfig>(&text)
            .map_err(|e| parse_error(&text, e))
            .and_then(|mut file| {
                file.resolve_paths(&base);
                file.validate()
            })
            .with_context(|| format!("invalid config {}", path.display()))?;
        Ok((config, text))
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Self {
        Self::from_toml(DEFAULT_CONFIG).expect("the embedded default config is valid (tested)")
    }

    /// The files a change of which should reload the config, besides the config file itself:
    /// each listener's certificates, keys and client CA file.
    pub fn watched_files(&self) -> Vec<std::path::PathBuf> {
        self.listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| {
                [
                    Some(&t.cert_file),
                    Some(&t.key_file),
                    t.client_ca_file.as_ref(),
                ]
                .into_iter()
                .flatten()
                .chain(
                    t.certificates
                        .iter()
                        .flat_map(|c| [&c.cert_file, &c.key_file]),
                )
                .cloned()
            })
            .collect()
    }

    /// Route `r`'s largest frame: its own key, else `[limits]`.
    pub fn max_frame_bytes(&self, r: &RouteConfig) -> usize {
        r.max_frame_bytes.unwrap_or(self.limits.max_frame_bytes)
    }

    /// Route `r`'s backlog for late watchers: its own key, else
    /// [`TERMINAL_WATCH_BACKLOG_BYTES`] when it is recorded as asciicast, else none.
    pub fn watch_backlog_bytes(&self, r: &RouteConfig) -> usize {
        r.watch_backlog_bytes.unwrap_or_else(|| {
            let terminal = r
                .record
                .as_ref()
                .is_some_and(|c| c.format == RecordFormat::Asciicast);
            if terminal {
                TERMINAL_WATCH_BACKLOG_BYTES
            } else {
                0
            }
        })
    }

    /// Route `r`'s largest message: its own key, else `[limits]`.
    pub fn max_message_bytes(&self, r: &RouteConfig) -> usize {
        r.max_message_bytes.unwrap_or(self.limits.max_message_bytes)
    }

    /// Route `r`'s `udp://` session settings: `[route.udp]`, else the defaults (checked at
    /// load, so this cannot fail on a validated config).
    pub fn udp_settings(&self, r: &RouteConfig) -> UdpSettings {
        r.udp
            .as_ref()
            .and_then(|u| u.resolve("route.udp").ok())
            .unwrap_or_default()
    }

    /// Route `r`'s session cap (`None`: no cap): its own key, else `[limits]`.
    pub fn max_sessions(&self, r: &RouteConfig) -> Option<usize> {
        let n = r.max_sessions.unwrap_or(self.limits.max_sessions_per_route);
        (n > 0).then_some(n)
    }

    /// Route `r`'s pacing in bytes per second (`None`: unpaced): its own key, else `[limits]`.
    pub fn bandwidth_bytes_per_sec(&self, r: &RouteConfig) -> Option<u64> {
        let n = r
            .bandwidth_bytes_per_sec
            .unwrap_or(self.limits.bandwidth_bytes_per_sec);
        (n > 0).then_some(n)
    }
}

/// A TOML or serde error, or, for a listener that still has the replaced `forwarded_headers`
/// switch, what to write instead: the switch believed `Forwarded` before `X-Forwarded-For`,
/// which let clients behind balancers that append to one and pass the other on choose their
/// address, so the operator must now name the header.
fn parse_error(text: &str, e: toml::de::Error) -> anyhow::Error {
    let listeners = toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| t.get("listener").and_then(|l| l.as_array()).cloned())
        .unwrap_or_default();
    match listeners
        .iter()
        .position(|l| l.get("forwarded_headers").is_some())
    {
        Some(i) => anyhow::anyhow!(
            "listener[{i}].forwarded_headers: replaced by forwarded_header, which names the one \
             header your load balancer writes the client's address in: \
             forwarded_header = \"x-forwarded-for\" (AWS ALB, nginx, HAProxy option forwardfor), \
             \"forwarded\" or \"x-real-ip\"; other headers are then ignored"
        ),
        None => anyhow::anyhow!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default();
        assert_eq!(c.routes[0].path, "/echo");
        assert_eq!(c.routes[0].backend.as_deref(), Some("builtin:echo"));
        assert_eq!(c.ping_interval, Some(Duration::from_secs(20)));
    }

    #[test]
    fn runtime_mode_reads_both_spellings() {
        let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nname=\"a\"\npath=\"/\"\nbackend=\"tcp://h:1\"\n";
        let c = Config::from_toml(base).unwrap();
        assert_eq!(c.runtime_mode, RuntimeMode::Shared);
        let c = Config::from_toml(&format!(
            "{base}[runtime]\nmode = \"per-core\"\nworker_threads = 3\n"
        ))
        .unwrap();
        assert_eq!(
            (c.runtime_mode, c.worker_threads),
            (RuntimeMode::PerCore, 3)
        );
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
                "[[route]]\nname=\"c\"\npath=\"/c\"\nbackend=\"sctp://h:1\"\n",
                "route[1].backend",
            ),
            ("[runtime]\nmode = \"percore\"\n", "per-core"),
            (
                "[runtime]\nworker_threads = 2000\n",
                "runtime.worker_threads",
            ),
        ] {
            let err = Config::from_toml(&format!("{base}{extra}")).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{extra}: {err:#}");
        }
    }
}

//! The configuration file format, and nothing else: serde structs for the whole TOML, their
//! documented defaults, validation once at load, quick-mode flags, the embedded default.
//!
//! This is plain data. It imports no other module of ours: `policy` compiles access rules,
//! targets and limits from it, and `snapshot` builds the running gateway's one immutable value.

mod access;
mod backend_addr;
mod file;
mod http2;
mod quick;
mod record;
mod signin;
mod target;
mod udp;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

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
pub use signin::{RouteSigninConfig, SigninConfig};
pub use target::{EgressConfig, TargetConfig};
pub use udp::{UdpGlobalConfig, UdpRouteConfig, UdpSettings, MAX_DATAGRAM_V4, MAX_DATAGRAM_V6};

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

fn secs(name: &str, value: f64, allow_zero: bool) -> anyhow::Result<Duration> {
    secs_at(&format!("timeouts.{name}"), value, allow_zero)
}

/// Seconds at key `key` (its full name) as a `Duration`: finite, at most a day.
fn secs_at(key: &str, value: f64, allow_zero: bool) -> anyhow::Result<Duration> {
    if !value.is_finite() || value < 0.0 || (!allow_zero && value == 0.0) || value > 86_400.0 {
        bail!(
            "{key}: must be {} and at most 86400, got {value}",
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
            if l.tls.is_some() && l.h2c {
                bail!("listener[{i}].h2c: for plain listeners; a TLS listener offers h2 by ALPN (`http2`)");
            }
            if let Some(tls) = &l.tls {
                if tls.client_ca_file.is_none() && tls.client_auth.is_some() {
                    bail!("listener[{i}].tls.client_auth: needs client_ca_file");
                }
                for (n, c) in tls.certificates.iter().enumerate() {
                    for (k, name) in c.names.iter().enumerate() {
                        host_pattern(name).with_context(|| {
                            format!("listener[{i}].tls.certificates[{n}].names[{k}]")
                        })?;
                    }
                }
            }
            validate_client_identity(i, l)?;
        }
        if let Some(admin) = &self.admin {
            if admin.address.port() != 0 && addrs.contains(&admin.address) {
                bail!("admin.address: {} is also a public listener", admin.address);
            }
        }
        // Before the routes, which inherit its values: a bad default is named as such.
        validate_limits(&self.limits)?;
        self.http2.validate()?;
        if self.runtime.worker_threads > 1024 {
            bail!(
                "runtime.worker_threads: must be 0..=1024, got {}",
                self.runtime.worker_threads
            );
        }
        self.runtime.mode.supported().context("runtime.mode")?;
        let mut names = HashSet::new();
        let mut claims = HashMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            self.validate_route(i, r, &mut names, &mut claims)?;
        }
        if self.reload.watch_debounce_ms > 60_000 {
            bail!(
                "reload.watch_debounce_ms: must be 0..=60000, got {}",
                self.reload.watch_debounce_ms
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            bail!(
                "log.level: {:?} is not a level or filter: {e}",
                self.log.level
            );
        }
        if let Some(egress) = &self.egress {
            if egress.allow.is_empty() {
                bail!(
                    "egress.allow: an empty list would refuse every dial; remove [egress] to allow all"
                );
            }
        }
        if let Some(acme) = &self.acme {
            validate_acme(acme, &self.listeners)?;
        }
        if let Some(web) = &self.web {
            if !web.root.is_dir() {
                bail!("web.root: {} is not a directory", web.root.display());
            }
            if !(1..=100_000).contains(&web.max_responses) {
                bail!(
                    "web.max_responses: {} is not in 1..=100000",
                    web.max_responses
                );
            }
        }
        for host in self.admin.iter().flat_map(|a| &a.allowed_hosts) {
            if host.is_empty() || host.contains(|c: char| c.is_whitespace() || "/@?#".contains(c)) {
                bail!("admin.allowed_hosts: {host:?} is not a host name (with an optional :port)");
            }
        }
        let t = &self.timeouts;
        let ping = secs("ping_interval_secs", t.ping_interval_secs, true)?;
        let keepalive = secs("backend_keepalive_secs", t.backend_keepalive_secs, true)?;
        let user_timeout = secs(
            "backend_user_timeout_secs",
            t.backend_user_timeout_secs,
            true,
        )?;
        let l = &self.limits;
        Ok(Config {
            admin: self.admin.as_ref().map(|a| a.address),
            admin_bearer_sha256: admin_digest(self.admin.as_ref())?,
            drain_grace: secs("drain_grace_secs", t.drain_grace_secs, true)?,
            tls_handshake_timeout: secs("tls_handshake_secs", t.tls_handshake_secs, false)?,
            header_read_timeout: secs("header_read_secs", t.header_read_secs, false)?,
            backend_connect_timeout: secs("backend_connect_secs", t.backend_connect_secs, false)?,
            backend_keepalive: (!keepalive.is_zero()).then_some(keepalive),
            backend_user_timeout: (!user_timeout.is_zero()).then_some(user_timeout),
            ping_interval: (!ping.is_zero()).then_some(ping),
            pong_timeout: secs("pong_timeout_secs", t.pong_timeout_secs, false)?,
            close_grace: secs("close_grace_secs", t.close_grace_secs, false)?,
            backend_stall: secs("backend_stall_secs", t.backend_stall_secs, false)?,
            shutdown_grace: secs("shutdown_grace_secs", t.shutdown_grace_secs, false)?,
            runtime_mode: self.runtime.mode,
            worker_threads: self.runtime.worker_threads,
            max_connections: l.max_connections,
            buffer_bytes: l.buffer_bytes,
            max_header_bytes: l.max_header_bytes,
            listeners: self.listeners,
            routes: self.routes,
            egress: self.egress,
            limits: self.limits,
            http2: self.http2,
            reload: self.reload,
            log: self.log,
            admin_allowed_hosts: self
                .admin
                .iter()
                .flat_map(|a| &a.allowed_hosts)
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            web_max_responses: self.web.as_ref().map_or(0, |w| w.max_responses),
            web_follow_external_symlinks: self
                .web
                .as_ref()
                .is_some_and(|w| w.follow_external_symlinks),
            web_root: self.web.map(|w| w.root),
            udp: self.udp,
            resume: self.resume,
            acme: self.acme,
            signin: self.signin,
        })
    }

    /// The checks of route `i` that need nothing but the file; `policy` checks the rest
    /// (origins, digests, key files, token files) when it compiles the route.
    fn validate_route(
        &self,
        i: usize,
        r: &RouteConfig,
        names: &mut HashSet<String>,
        claims: &mut HashMap<(String, String), usize>,
    ) -> anyhow::Result<()> {
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
        let at = format!("route[{i}]");
        if let Some(record) = &r.record {
            record.validate(&at, &r.name)?;
            if r.backend
                .as_deref()
                .is_some_and(|u| u.starts_with("udp://"))
            {
                bail!("{at}.record: udp:// backends are not recorded (datagrams are not a byte stream); only byte backends (tcp://, unix:, targets) and WebSocket backends (ws://, wss://)");
            }
        }
        // Two routes that could match one request at the same precedence: same path, and
        // the same exact name, the same wildcard, or no hosts at all.
        let mut patterns = Vec::with_capacity(r.hosts.len());
        for (n, host) in r.hosts.iter().enumerate() {
            let pattern = host_pattern(host).with_context(|| format!("{at}.hosts[{n}]"))?;
            if patterns.contains(&pattern) {
                bail!("{at}.hosts[{n}]: {host:?} is listed twice");
            }
            patterns.push(pattern);
        }
        if patterns.is_empty() {
            patterns.push(String::new());
        }
        for pattern in patterns {
            let key = (pattern, r.path.clone());
            if let Some(&j) = claims.get(&key) {
                let other = &self.routes[j].name;
                let host = match key.0.as_str() {
                    "" => "any host (neither lists hosts)".to_owned(),
                    h => format!("host {h:?}"),
                };
                bail!(
                    "{at}.path: routes {other:?} (route[{j}]) and {:?} (route[{i}]) both match \
                     {host} and path {:?}; give one of them other hosts or another path",
                    r.name,
                    r.path
                );
            }
            claims.insert(key, i);
        }
        let needs_client_cert = r
            .auth
            .as_ref()
            .is_some_and(|a| a.client_cert_required || !a.client_cert_names.is_empty());
        if needs_client_cert
            && !self
                .listeners
                .iter()
                .any(|l| l.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()))
        {
            bail!(
                "{at}.auth: requires a client certificate, but no listener has tls.client_ca_file"
            );
        }
        let backends = match (&r.backend, &r.target, r.backends.is_empty()) {
            (Some(url), None, true) => {
                vec![BackendAddr::parse(url).with_context(|| format!("{at}.backend"))?]
            }
            (None, None, false) => validate_pool(&at, r)?,
            (Some(_), Some(_), _) => bail!("{at}: backend and [route.target] exclude each other"),
            (_, _, false) => bail!("{at}.backends: excludes backend and [route.target]"),
            (None, None, true) => {
                bail!("{at}.backend: required (or backends, or a [route.target] table)")
            }
            (None, Some(_), true) => Vec::new(),
        };
        let is_wss = backends
            .iter()
            .any(|b| matches!(b, BackendAddr::WebSocket { tls: true, .. }));
        if !is_wss && (r.tls_ca_file.is_some() || r.insecure_skip_verify) {
            bail!("{at}: tls_ca_file and insecure_skip_verify apply to wss:// backends only");
        }
        // udp:// (`[route.udp]`, no pools, no compression); token-file and claim targets may
        // name udp:// too.
        let udp_possible = r.target.is_some() || backends.iter().any(BackendAddr::is_datagrams);
        if let Some(u) = &r.udp {
            if !udp_possible {
                bail!("{at}.udp: applies to routes with udp:// backends (or targets) only");
            }
            u.resolve(&format!("{at}.udp"))?;
        }
        if r.compression == CompressionMode::On && backends.iter().any(BackendAddr::is_datagrams) {
            bail!("{at}.compression: never negotiated on udp:// routes (a datagram is one message as sent)");
        }
        // Token-file and claim targets are tcp:// or udp://, so never WebSocket.
        if r.send_proxy_protocol.is_some()
            && backends
                .iter()
                .any(|b| !b.is_bytes() || *b == BackendAddr::BuiltinEcho)
        {
            bail!(
                "{at}.send_proxy_protocol: applies to tcp:// and unix: backends only \
                 (WebSocket backends get X-Forwarded-For)"
            );
        }
        for h in &r.forward_headers {
            hyper::header::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .ok()
                .filter(|n| !is_hop_header(n))
                .with_context(|| {
                    format!(
                        "{at}.forward_headers: {h:?} is not a forwardable header (hop-by-hop, \
                         handshake and client-address headers never are: the gateway writes \
                         X-Forwarded-For, -Proto and -Host itself)"
                    )
                })?;
        }
        check_sizes(&at, r, &self.limits)?;
        let frame = r.max_frame_bytes.unwrap_or(self.limits.max_frame_bytes);
        if frame > self.limits.frame_budget_bytes {
            bail!(
                "{at}.max_frame_bytes: must be at most limits.frame_budget_bytes ({}), got {frame}",
                self.limits.frame_budget_bytes
            );
        }
        cap(
            &format!("{at}.max_sessions"),
            r.max_sessions.unwrap_or(self.limits.max_sessions_per_route),
        )?;
        bandwidth(
            &format!("{at}.bandwidth_bytes_per_sec"),
            r.bandwidth_bytes_per_sec
                .unwrap_or(self.limits.bandwidth_bytes_per_sec),
        )?;
        for p in &r.subprotocols {
            if p.is_empty() || !p.bytes().all(is_token_byte) {
                bail!("{at}.subprotocols: {p:?} is not an HTTP token");
            }
        }
        for (key, bits) in [
            (
                "compression_server_max_window_bits",
                r.compression_server_max_window_bits,
            ),
            (
                "compression_client_max_window_bits",
                r.compression_client_max_window_bits,
            ),
        ] {
            if !(9..=15).contains(&bits) {
                bail!("{at}.{key}: must be 9..=15, got {bits}");
            }
        }
        if let Some(resume) = &r.resume {
            validate_resume(&at, r, resume, &backends, &self.limits)?;
        }
        if r.compression_level > 9 {
            bail!(
                "{at}.compression_level: must be 0..=9, got {}",
                r.compression_level
            );
        }
        if let Some(b) = r
            .watch_backlog_bytes
            .filter(|&b| b > MAX_WATCH_BACKLOG_BYTES)
        {
            bail!("{at}.watch_backlog_bytes: must be 0..={MAX_WATCH_BACKLOG_BYTES}, got {b}");
        }
        Ok(())
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

/// A route's `hosts` entry in its compared form: lower case, without a trailing dot; a
/// name of DNS labels (letters, digits, `-`), or `*.` and such a name (one label more). Ports,
/// IP addresses in brackets and wildcards elsewhere are refused.
pub fn host_pattern(host: &str) -> anyhow::Result<String> {
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        bail!(
            "{host:?} is not a host name (labels of letters, digits and -, optionally after \
             \"*.\" for exactly one more label; no port)"
        );
    }
    Ok(lower)
}

/// `[acme]`: names it can prove with its challenge: TLS-ALPN-01 on a TLS listener, HTTP-01
/// on a plain one; and a TLS listener to serve the certificates on.
fn validate_acme(acme: &AcmeConfig, listeners: &[ListenerConfig]) -> anyhow::Result<()> {
    if !listeners.iter().any(|l| l.tls.is_some()) {
        bail!(
            "acme: needs a TLS listener ([listener.tls]), which serves the certificates and answers the TLS-ALPN-01 challenges"
        );
    }
    if acme.challenge == AcmeChallenge::Http01 && listeners.iter().all(|l| l.tls.is_some()) {
        bail!(
            "acme.challenge: \"http-01\" needs a plain listener (no [listener.tls]), which the CA reaches on port 80"
        );
    }
    if acme.names.is_empty() {
        bail!("acme.names: list at least one host name");
    }
    for (n, name) in acme.names.iter().enumerate() {
        let pattern = host_pattern(name).with_context(|| format!("acme.names[{n}]"))?;
        if pattern.starts_with("*.") {
            bail!("acme.names[{n}]: {name:?}: wildcards need DNS-01, which wsgate does not do");
        }
    }
    if !acme.directory_url.starts_with("https://") {
        bail!(
            "acme.directory_url: {:?} must be an https:// URL",
            acme.directory_url
        );
    }
    secs_at("acme.retry_secs", acme.retry_secs, false)?;
    Ok(())
}

/// A listener's PROXY protocol and forwarded-header keys.
fn validate_client_identity(i: usize, l: &ListenerConfig) -> anyhow::Result<()> {
    let at = format!("listener[{i}]");
    for (n, cidr) in l.trusted_proxies.iter().enumerate() {
        parse_cidr(cidr).with_context(|| format!("{at}.trusted_proxies[{n}]"))?;
    }
    let uses_them = l.proxy_protocol || l.forwarded_header.is_some();
    if uses_them && l.trusted_proxies.is_empty() {
        bail!("{at}.trusted_proxies: proxy_protocol and forwarded_header need the load balancers' addresses");
    }
    if !uses_them && !l.trusted_proxies.is_empty() {
        bail!("{at}.trusted_proxies: set proxy_protocol or forwarded_header too, or remove it");
    }
    Ok(())
}

/// `"10.0.0.0/8"` or a plain address (one host).
pub fn parse_cidr(text: &str) -> anyhow::Result<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| anyhow::anyhow!("{text:?} is not an address or CIDR"))
}

/// `[route.resume]`: sane numbers, and a backend kind whose bytes can be counted.
fn validate_resume(
    at: &str,
    r: &RouteConfig,
    resume: &ResumeConfig,
    backends: &[BackendAddr],
    limits: &Limits,
) -> anyhow::Result<()> {
    if backends.iter().any(|b| !b.is_bytes()) {
        bail!(
            "{at}.resume: needs a byte backend (tcp:// or unix:); a WebSocket backend's \
             messages are not resumed (the gateway cannot replay what it has no offsets for); \
             nor is a udp:// backend's"
        );
    }
    if r.record.is_some() {
        bail!("{at}.resume: resumable sessions are not recorded yet; drop [route.record] or [route.resume] on this route");
    }
    if !(resume.grace_secs.is_finite() && (0.1..=86_400.0).contains(&resume.grace_secs)) {
        bail!("{at}.resume.grace_secs: must be 0.1..=86400");
    }
    if !(resume.heartbeat_secs.is_finite() && (0.1..=3600.0).contains(&resume.heartbeat_secs)) {
        bail!("{at}.resume.heartbeat_secs: must be 0.1..=3600");
    }
    if !(4096..=(1 << 30)).contains(&resume.window_bytes) {
        bail!("{at}.resume.window_bytes: must be 4096..=1073741824");
    }
    if r.bandwidth_bytes_per_sec
        .unwrap_or(limits.bandwidth_bytes_per_sec)
        > 0
    {
        bail!("{at}.resume: resumable sessions are not paced; set bandwidth_bytes_per_sec = 0 on this route");
    }
    Ok(())
}

/// A route's `backends` and `[route.health]`.
fn validate_pool(at: &str, r: &RouteConfig) -> anyhow::Result<Vec<BackendAddr>> {
    let mut out = Vec::with_capacity(r.backends.len());
    for (n, url) in r.backends.iter().enumerate() {
        let b = BackendAddr::parse(url).with_context(|| format!("{at}.backends[{n}]"))?;
        if b == BackendAddr::BuiltinEcho {
            bail!("{at}.backends[{n}]: builtin:echo cannot be pooled");
        }
        if b.is_datagrams() {
            bail!("{at}.backends[{n}]: udp:// backends cannot be pooled (use one backend)");
        }
        if out.contains(&b) {
            bail!("{at}.backends[{n}]: {b} is listed twice");
        }
        if out
            .first()
            .is_some_and(|f: &BackendAddr| f.is_bytes() != b.is_bytes())
        {
            bail!("{at}.backends[{n}]: mixes WebSocket and byte (tcp://, unix:) backends");
        }
        out.push(b);
    }
    if out.len() > 1024 {
        bail!("{at}.backends: at most 1024");
    }
    let h = &r.health;
    let name = |k: &str| format!("{at}.health.{k}");
    let eject = secs_at(&name("eject_secs"), h.eject_secs, false)?;
    let max = secs_at(&name("max_eject_secs"), h.max_eject_secs, false)?;
    if max < eject {
        bail!("{at}.health.max_eject_secs: must be at least eject_secs");
    }
    let interval = secs_at(&name("check_interval_secs"), h.check_interval_secs, true)?;
    if !interval.is_zero() && interval < Duration::from_millis(100) {
        bail!("{at}.health.check_interval_secs: must be 0 (off) or at least 0.1");
    }
    secs_at(&name("check_timeout_secs"), h.check_timeout_secs, false)?;
    Ok(out)
}

/// `[limits]` on its own, before any route inherits from it.
fn admin_digest(admin: Option<&AdminConfig>) -> anyhow::Result<Option<String>> {
    match admin.and_then(|a| a.bearer_sha256.as_deref()) {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Some(hex.to_owned()))
        }
        Some(_) => bail!("admin.bearer_sha256: expected 64 hex digits (sha256sum output)"),
        None => Ok(None),
    }
}

fn validate_limits(l: &Limits) -> anyhow::Result<()> {
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
    if l.max_message_bytes > 1 << 32 {
        bail!(
            "limits.max_message_bytes: must be at most 4294967296, got {}",
            l.max_message_bytes
        );
    }
    if l.max_frame_bytes > l.max_message_bytes {
        // Name the key that was written: a lowered message size, or a raised frame size.
        if l.max_frame_bytes == Limits::default().max_frame_bytes {
            bail!(
                "limits.max_message_bytes: {} is below limits.max_frame_bytes ({}): a message \
                 is at least one frame; lower max_frame_bytes too",
                l.max_message_bytes,
                l.max_frame_bytes
            );
        }
        bail!(
            "limits.max_frame_bytes: {} is above limits.max_message_bytes ({}): a message is at \
             least one frame; raise max_message_bytes too",
            l.max_frame_bytes,
            l.max_message_bytes
        );
    }
    if !(l.max_frame_bytes..=1 << 40).contains(&l.frame_budget_bytes) {
        bail!(
            "limits.frame_budget_bytes: must be max_frame_bytes ({})..=1099511627776, got {}",
            l.max_frame_bytes,
            l.frame_budget_bytes
        );
    }
    let rate = l.handshakes_per_ip_per_sec;
    if !rate.is_finite() || rate < 0.0 || (rate > 0.0 && !(0.001..=1_000_000.0).contains(&rate)) {
        bail!("limits.handshakes_per_ip_per_sec: must be 0 (off) or 0.001..=1000000, got {rate}");
    }
    if !(1..=1_000_000).contains(&l.handshake_burst_per_ip) {
        bail!(
            "limits.handshake_burst_per_ip: must be 1..=1000000, got {}",
            l.handshake_burst_per_ip
        );
    }
    if !(1..=86_400).contains(&l.retry_after_secs) {
        bail!(
            "limits.retry_after_secs: must be 1..=86400, got {}",
            l.retry_after_secs
        );
    }
    if !(1024..=1 << 20).contains(&l.max_header_bytes) {
        bail!(
            "limits.max_header_bytes: must be 1024..=1048576, got {}",
            l.max_header_bytes
        );
    }
    if l.auth_failures_per_ip_per_min > 1_000_000 {
        bail!(
            "limits.auth_failures_per_ip_per_min: must be 0 (off) or 1..=1000000, got {}",
            l.auth_failures_per_ip_per_min
        );
    }
    if !(1..=1_000_000).contains(&l.auth_failure_burst_per_ip) {
        bail!(
            "limits.auth_failure_burst_per_ip: must be 1..=1000000, got {}",
            l.auth_failure_burst_per_ip
        );
    }
    cap("limits.max_sessions", l.max_sessions)?;
    cap("limits.max_sessions_per_ip", l.max_sessions_per_ip)?;
    cap("limits.max_connections_per_ip", l.max_connections_per_ip)?;
    cap("limits.max_sessions_per_route", l.max_sessions_per_route)?;
    bandwidth("limits.bandwidth_bytes_per_sec", l.bandwidth_bytes_per_sec)?;
    Ok(())
}

/// `0` means "off"; anything else must be at most [`MAX_CAP`].
fn cap(name: &str, value: usize) -> anyhow::Result<()> {
    if value > MAX_CAP {
        bail!("{name}: must be 0 (no cap) or at most {MAX_CAP}, got {value}");
    }
    Ok(())
}

fn bandwidth(name: &str, value: u64) -> anyhow::Result<()> {
    if value != 0 && !(1024..=1 << 40).contains(&value) {
        bail!("{name}: must be 0 (off) or 1024..=1099511627776 bytes per second, got {value}");
    }
    Ok(())
}

/// A route's frame and message sizes, each its own key or inherited from `[limits]` (checked
/// already). Errors name a key the route wrote, or say what it inherits.
fn check_sizes(at: &str, r: &RouteConfig, limits: &Limits) -> anyhow::Result<()> {
    let frame = r.max_frame_bytes.unwrap_or(limits.max_frame_bytes);
    let message = r.max_message_bytes.unwrap_or(limits.max_message_bytes);
    if !(126..=1 << 30).contains(&frame) {
        bail!("{at}.max_frame_bytes: must be 126..=1073741824, got {frame}");
    }
    if message > 1 << 32 {
        bail!("{at}.max_message_bytes: must be at most 4294967296, got {message}");
    }
    if message < frame {
        match (r.max_frame_bytes, r.max_message_bytes) {
            (_, Some(_)) => bail!(
                "{at}.max_message_bytes: {message} is below the route's max_frame_bytes \
                 ({frame}{}): a message is at least one frame",
                if r.max_frame_bytes.is_some() {
                    ""
                } else {
                    ", from [limits]"
                }
            ),
            _ => bail!(
                "{at}.max_frame_bytes: {frame} is above the max_message_bytes it inherits from \
                 [limits] ({message}): set {at}.max_message_bytes too"
            ),
        }
    }
    Ok(())
}

/// Headers that belong to one hop or to the handshake itself, or that name the client
/// (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`: a backend would take a client's forgery for the
/// gateway's word); never forwarded.
pub fn is_hop_header(name: &hyper::header::HeaderName) -> bool {
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
        || ["keep-alive", "proxy-connection", "forwarded", "x-real-ip"].contains(&name.as_str())
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

//! The TOML file's tables as serde structs: every key, its unit and its default, unknown keys
//! rejected. The top level and the gateway-wide tables are here; the listeners, the
//! timeouts and limits, and the routes have a file each under `file/`.

mod limits;
mod listener;
mod route;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::http2::Http2Config;
use super::target::EgressConfig;
use super::udp::UdpGlobalConfig;

pub use limits::{Limits, Timeouts};
pub use listener::{
    AcmeChallenge, AcmeConfig, AdminConfig, CertificateConfig, ForwardedHeader, ListenerConfig,
    TlsConfig, WithoutSni,
};
pub use route::{
    Balance, CompressionMode, HealthConfig, MessageType, ProxyProtocolVersion, ResumeConfig,
    RouteConfig,
};

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

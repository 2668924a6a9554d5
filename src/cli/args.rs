//! The command line, as clap reads it: the run flags (a config file, or quick mode:
//! websockify's positional form and flags), the global log flags, and the subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use wsgate::config::{QuickMode, RuntimeMode};

/// `wsgate --version`: the crate version and the git revision it was built from (build.rs;
/// "unknown" when built without it, as in a copy of `src/` alone).
pub fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        let revision = option_env!("WSGATE_GIT_REVISION").unwrap_or("unknown");
        format!("{} (git {revision})", env!("CARGO_PKG_VERSION"))
    })
}

const AFTER_HELP: &str = "\
Backend URLs (TARGET, --route PATH=URL):
  HOST:PORT, tcp://HOST:PORT          raw TCP (VNC, MQTT, SSH, ...); HOST is a name, IPv4 or [IPv6]
  udp://HOST:PORT                     UDP: one binary message = one datagram (WireGuard, DNS, games)
  ws://HOST[:PORT][/PATH][?QUERY]     a WebSocket backend, frames relayed end to end
  wss://HOST[:PORT][/PATH][?QUERY]    the same over TLS, verified against the Mozilla roots
  unix:/PATH                          raw bytes over a Unix domain socket (absolute path)
  builtin:echo                        a TCP echo service inside wsgate

Examples:
  wsgate                                   the demo: ws://127.0.0.1:8080/echo -> builtin:echo,
                                           console http://127.0.0.1:8080/, metrics on :9089
  wsgate 6080 localhost:5900               websockify's form: every path on port 6080 -> VNC
  wsgate --web /usr/share/novnc 6080 localhost:5900
                                           noVNC's page at http://HOST:6080/vnc.html too
  wsgate --cert full.pem --key key.pem --ssl-only 443 localhost:5900
  wsgate --token-plugin TokenFile --token-source tokens.cfg 6080
  wsgate --listen 127.0.0.1:8080 --route /ssh=tcp://10.0.0.5:22
  wsgate --listen 127.0.0.1:8080 --route /wg=udp://127.0.0.1:51820
  wsgate --listen 127.0.0.1:8080 --route /mqtt=tcp://127.0.0.1:1883 --subprotocol mqtt
                                           MQTT.js and other clients that offer a subprotocol
  wsgate --config /etc/wsgate/wsgate.toml  everything else (access control, limits): a file
  wsgate config --from-flags 6080 localhost:5900 > wsgate.toml

Docs: README.md and docs/ in the source; `wsgate man` prints the manual page.";

/// WebSocket-to-TCP reverse proxy gateway: browsers and WebSocket clients to TCP or
/// WebSocket backends, with TLS, routes, access control, limits and metrics.
///
/// With no arguments, serves a demo: ws://127.0.0.1:8080/echo to a built-in echo service,
/// a browser console at http://127.0.0.1:8080/, metrics on http://127.0.0.1:9089/metrics.
/// With websockify's arguments ([LISTEN_HOST:]LISTEN_PORT TARGET_HOST:TARGET_PORT), works as
/// websockify does. SIGHUP (or `wsgate reload`) reloads the config without dropping sessions.
#[derive(Debug, Parser)]
#[command(name = "wsgate", version = version(), about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,

    /// Log format (overrides [log] format) [default: text].
    #[arg(long, value_enum, value_name = "FORMAT", global = true)]
    pub log_format: Option<LogFormatArg>,

    /// Log level or filter, e.g. `debug` or `info,wsgate::edge=debug` (overrides --verbose and
    /// RUST_LOG, which override [log] level) [default: info].
    #[arg(long, value_name = "FILTER", global = true)]
    pub log_level: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RuntimeModeArg {
    Shared,
    PerCore,
}

impl From<RuntimeModeArg> for RuntimeMode {
    fn from(arg: RuntimeModeArg) -> Self {
        match arg {
            RuntimeModeArg::Shared => Self::Shared,
            RuntimeModeArg::PerCore => Self::PerCore,
        }
    }
}

/// How to run: a config file, or quick mode (websockify's positional form and flags).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Run from a TOML config file (no quick-mode arguments then).
    #[arg(long, short, value_name = "FILE", conflicts_with_all = [
        "listen_pos", "target", "listen", "routes", "tls_cert", "tls_key", "ssl_only",
        "token_plugin", "token_source", "target_config", "web", "admin", "heartbeat",
        "verify_client", "cafile", "console", "subprotocols", "prefer_ipv6", "unix_target",
    ])]
    pub config: Option<PathBuf>,

    /// websockify's form: where to listen. PORT alone = every interface.
    #[arg(value_name = "[LISTEN_HOST:]LISTEN_PORT")]
    pub listen_pos: Option<String>,

    /// websockify's form: the backend, HOST:PORT (TCP) or a backend URL; serves every path.
    #[arg(value_name = "TARGET_HOST:TARGET_PORT")]
    pub target: Option<String>,

    /// The public listener: PORT (every interface), HOST:PORT, [IPv6]:PORT or NAME:PORT
    /// [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// A route, PATH=URL (repeatable). A PATH ending in / is a prefix.
    #[arg(long = "route", value_name = "PATH=URL")]
    pub routes: Vec<String>,

    /// Serve wss:// with this PEM certificate chain (websockify: --cert).
    #[arg(long, visible_alias = "cert", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key [default: the certificate file] (websockify: --key).
    #[arg(long, visible_alias = "key", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Refuse plain ws:// (websockify's flag; with a certificate wsgate never serves plain).
    #[arg(long)]
    pub ssl_only: bool,

    /// Require a client certificate chaining to --cafile (mutual TLS).
    #[arg(long, requires = "cafile")]
    pub verify_client: bool,

    /// The PEM CA bundle client certificates must chain to (with --verify-client).
    #[arg(long, value_name = "FILE", requires = "verify_client")]
    pub cafile: Option<PathBuf>,

    /// Pick each session's target from a token: TokenFile (websockify's token file).
    #[arg(long, value_name = "PLUGIN")]
    pub token_plugin: Option<String>,

    /// The token file for --token-plugin TokenFile: `token: host:port` lines.
    #[arg(long, value_name = "FILE")]
    pub token_source: Option<PathBuf>,

    /// websockify's older spelling of --token-plugin TokenFile --token-source FILE.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["token_plugin", "token_source"])]
    pub target_config: Option<PathBuf>,

    /// Serve the files in DIR to plain GET requests (noVNC's page beside its WebSocket).
    #[arg(long, value_name = "DIR")]
    pub web: Option<PathBuf>,

    /// The admin listener (/metrics, /healthz, /readyz): PORT (on loopback) or HOST:PORT;
    /// none if omitted.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,

    /// Seconds between keepalive pings (websockify: --heartbeat) [default: 20].
    #[arg(long, value_name = "SECS")]
    pub heartbeat: Option<f64>,

    /// Runtime worker threads (overrides [runtime] worker_threads); 0 = one per CPU,
    /// 1 = a single-threaded runtime; with --runtime-mode per-core, the number of workers.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub worker_threads: usize,

    /// How connections are spread over threads (overrides [runtime] mode): one shared
    /// runtime, or per-core (a single-threaded runtime and SO_REUSEPORT socket per worker)
    /// [default: shared].
    #[arg(long, value_enum, value_name = "MODE")]
    pub runtime_mode: Option<RuntimeModeArg>,

    /// Serve the browser console at / on the listener.
    #[arg(long)]
    pub console: bool,

    /// A subprotocol the routes accept, e.g. `mqtt` for MQTT.js (repeatable; replaces the
    /// default `binary`: add `--subprotocol binary` to keep it). A client gets back the first
    /// it offers that is listed. TCP and unix: routes; a ws:// backend negotiates its own.
    #[arg(long = "subprotocol", value_name = "NAME")]
    pub subprotocols: Vec<String>,

    /// websockify's -6: a bare LISTEN_PORT listens on IPv6 `[::]` (dual-stack where the
    /// kernel allows it), a NAME on its IPv6 address; no address at all means [::1]:8080.
    #[arg(long, short = '6')]
    pub prefer_ipv6: bool,

    /// websockify's --unix-target: the target is this Unix domain socket (instead of
    /// TARGET_HOST:TARGET_PORT; a unix:/PATH backend).
    #[arg(long, value_name = "FILE", conflicts_with = "target")]
    pub unix_target: Option<PathBuf>,

    /// Log each connection's decisions (wsgate=debug unless RUST_LOG or --log-level is set).
    #[arg(long, short)]
    pub verbose: bool,
}

impl RunArgs {
    pub fn quick_mode(&self) -> QuickMode {
        let (token_plugin, token_source) = match &self.target_config {
            Some(file) => (Some("TokenFile".to_owned()), Some(file.clone())),
            None => (self.token_plugin.clone(), self.token_source.clone()),
        };
        QuickMode {
            listen: self.listen.clone(),
            positional: self
                .listen_pos
                .iter()
                .chain(&self.target)
                .cloned()
                .collect(),
            routes: self.routes.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            ssl_only: self.ssl_only,
            verify_client: self.verify_client,
            cafile: self.cafile.clone(),
            token_plugin,
            token_source,
            web: self.web.clone(),
            admin: self.admin.clone(),
            heartbeat_secs: self.heartbeat,
            worker_threads: self.worker_threads,
            runtime_mode: self.runtime_mode.map_or(RuntimeMode::default(), Into::into),
            console: self.console,
            subprotocols: self.subprotocols.clone(),
            prefer_ipv6: self.prefer_ipv6,
            unix_target: self.unix_target.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config file and exit: 0 if valid, 1 with the bad key named if not.
    /// Offline unless --fetch-keys.
    Check {
        /// The TOML file to check.
        file: PathBuf,
        /// Also fetch every route's JWT key set from its OpenID provider (discovery or
        /// jwks_url); a fetch that fails or finds no usable key fails the check.
        #[arg(long)]
        fetch_keys: bool,
    },
    /// Print the config file a quick-mode command line stands for, commented, once it passes
    /// what `wsgate check` checks (else exit 2 and why, nothing printed). Relative paths in
    /// the flags are printed absolute, so the file names the same files wherever it is saved.
    Config {
        /// The quick-mode arguments follow, e.g. `--from-flags 6080 localhost:5900`.
        #[arg(long, required = true)]
        from_flags: bool,
        /// The quick-mode command line, without the program name.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `wsgate man > /usr/local/share/man/man1/wsgate.1`.
    Man,
    /// Read a session recording (raw `.wsrec` or asciicast `.cast`): list it (default), write
    /// what the backend sent (`--cat`), export it for noVNC's playback page
    /// (`--websockify-export`), or play it again to clients that connect, as a TCP
    /// stream (`--tcp`) or a WebSocket server (`--ws`) that a client connects to as if live.
    Replay {
        /// The recording.
        file: PathBuf,
        /// Write the backend→client bytes to stdout, as sent, without timing.
        #[arg(long, conflicts_with_all = ["tcp", "ws", "websockify_export"])]
        cat: bool,
        /// Write the recording to stdout in the form websockify's `--record` writes
        /// (`var VNC_frame_data = [...]`), which noVNC's playback page loads.
        #[arg(long, conflicts_with_all = ["tcp", "ws"])]
        websockify_export: bool,
        /// Serve the recording as a TCP stream on this address (port 0: any free port).
        #[arg(long, value_name = "ADDR", conflicts_with = "ws")]
        tcp: Option<SocketAddr>,
        /// Serve the recording as a WebSocket server on this address (any path; port 0: any
        /// free port). The address it listens on is printed first.
        #[arg(long, value_name = "ADDR")]
        ws: Option<SocketAddr>,
        /// Playback speed: 1 = as recorded, 4 = four times as fast, 0 = no waiting.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Idle stretches longer than this are cut to it, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 5.0)]
        max_wait_secs: f64,
        /// Exit after the first client's replay instead of serving every client that comes.
        #[arg(long)]
        once: bool,
    },
    /// Ask a running gateway to reload its config: `POST /reload` on its admin listener.
    /// Exit 0 when the new config runs (the answer names keys that wait for a restart), 1 and
    /// why when it was refused (the old one still runs) or the gateway could not be asked.
    /// When `[admin] bearer_sha256` is set, the token comes from `WSGATE_ADMIN_TOKEN`.
    Reload {
        /// The admin listener [default: the [admin] address of --config, else the embedded
        /// default's 127.0.0.1:9089].
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
        /// The gateway's config file, to find its admin address.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// How long to wait for the gateway's answer, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        timeout_secs: u64,
    },
}

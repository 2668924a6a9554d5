//! The `wsgate` binary: parse the CLI, set up logging, load the config, run until a signal.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use wsgate::config::{LogConfig, LogFormat, QuickMode, RuntimeMode};
use wsgate::edge::urls::{machine_addresses, reachable_hosts};
use wsgate::ops::reload::Sighup;
use wsgate::{Config, Gateway, Snapshot};

/// `wsgate --version`: the crate version and the git revision it was built from (build.rs;
/// "unknown" when built without it, as in a copy of `src/` alone).
fn version() -> &'static str {
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
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,

    /// Log format (overrides [log] format) [default: text].
    #[arg(long, value_enum, value_name = "FORMAT", global = true)]
    log_format: Option<LogFormatArg>,

    /// Log level or filter, e.g. `debug` or `info,wsgate::edge=debug` (overrides --verbose and
    /// RUST_LOG, which override [log] level) [default: info].
    #[arg(long, value_name = "FILTER", global = true)]
    log_level: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RuntimeModeArg {
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
struct RunArgs {
    /// Run from a TOML config file (no quick-mode arguments then).
    #[arg(long, short, value_name = "FILE", conflicts_with_all = [
        "listen_pos", "target", "listen", "routes", "tls_cert", "tls_key", "ssl_only",
        "token_plugin", "token_source", "target_config", "web", "admin", "heartbeat",
        "verify_client", "cafile", "console", "subprotocols", "prefer_ipv6", "unix_target",
    ])]
    config: Option<PathBuf>,

    /// websockify's form: where to listen. PORT alone = every interface.
    #[arg(value_name = "[LISTEN_HOST:]LISTEN_PORT")]
    listen_pos: Option<String>,

    /// websockify's form: the backend, HOST:PORT (TCP) or a backend URL; serves every path.
    #[arg(value_name = "TARGET_HOST:TARGET_PORT")]
    target: Option<String>,

    /// The public listener: PORT (every interface), HOST:PORT, [IPv6]:PORT or NAME:PORT
    /// [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,

    /// A route, PATH=URL (repeatable). A PATH ending in / is a prefix.
    #[arg(long = "route", value_name = "PATH=URL")]
    routes: Vec<String>,

    /// Serve wss:// with this PEM certificate chain (websockify: --cert).
    #[arg(long, visible_alias = "cert", value_name = "FILE")]
    tls_cert: Option<PathBuf>,

    /// The PEM private key [default: the certificate file] (websockify: --key).
    #[arg(long, visible_alias = "key", value_name = "FILE")]
    tls_key: Option<PathBuf>,

    /// Refuse plain ws:// (websockify's flag; with a certificate wsgate never serves plain).
    #[arg(long)]
    ssl_only: bool,

    /// Require a client certificate chaining to --cafile (mutual TLS).
    #[arg(long, requires = "cafile")]
    verify_client: bool,

    /// The PEM CA bundle client certificates must chain to (with --verify-client).
    #[arg(long, value_name = "FILE", requires = "verify_client")]
    cafile: Option<PathBuf>,

    /// Pick each session's target from a token: TokenFile (websockify's token file).
    #[arg(long, value_name = "PLUGIN")]
    token_plugin: Option<String>,

    /// The token file for --token-plugin TokenFile: `token: host:port` lines.
    #[arg(long, value_name = "FILE")]
    token_source: Option<PathBuf>,

    /// websockify's older spelling of --token-plugin TokenFile --token-source FILE.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["token_plugin", "token_source"])]
    target_config: Option<PathBuf>,

    /// Serve the files in DIR to plain GET requests (noVNC's page beside its WebSocket).
    #[arg(long, value_name = "DIR")]
    web: Option<PathBuf>,

    /// The admin listener (/metrics, /healthz, /readyz): PORT (on loopback) or HOST:PORT;
    /// none if omitted.
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,

    /// Seconds between keepalive pings (websockify: --heartbeat) [default: 20].
    #[arg(long, value_name = "SECS")]
    heartbeat: Option<f64>,

    /// Runtime worker threads (overrides [runtime] worker_threads); 0 = one per CPU,
    /// 1 = a single-threaded runtime; with --runtime-mode per-core, the number of workers.
    #[arg(long, value_name = "N", default_value_t = 0)]
    worker_threads: usize,

    /// How connections are spread over threads (overrides [runtime] mode): one shared
    /// runtime, or per-core (a single-threaded runtime and SO_REUSEPORT socket per worker)
    /// [default: shared].
    #[arg(long, value_enum, value_name = "MODE")]
    runtime_mode: Option<RuntimeModeArg>,

    /// Serve the browser console at / on the listener.
    #[arg(long)]
    console: bool,

    /// A subprotocol the routes accept, e.g. `mqtt` for MQTT.js (repeatable; replaces the
    /// default `binary`: add `--subprotocol binary` to keep it). A client gets back the first
    /// it offers that is listed. TCP and unix: routes; a ws:// backend negotiates its own.
    #[arg(long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,

    /// websockify's -6: a bare LISTEN_PORT listens on IPv6 `[::]` (dual-stack where the
    /// kernel allows it), a NAME on its IPv6 address; no address at all means [::1]:8080.
    #[arg(long, short = '6')]
    prefer_ipv6: bool,

    /// websockify's --unix-target: the target is this Unix domain socket (instead of
    /// TARGET_HOST:TARGET_PORT; a unix:/PATH backend).
    #[arg(long, value_name = "FILE", conflicts_with = "target")]
    unix_target: Option<PathBuf>,

    /// Log each connection's decisions (wsgate=debug unless RUST_LOG or --log-level is set).
    #[arg(long, short)]
    verbose: bool,
}

impl RunArgs {
    fn quick_mode(&self) -> QuickMode {
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
enum Command {
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

/// What `wsgate replay` writes to stdout when it does not serve the recording.
#[derive(Debug, Clone, Copy)]
enum Print {
    Listing,
    Cat,
    WebsockifyExport,
}

/// `wsgate replay`: exit 0 when the listing, the bytes or the replays were given, 1 and why
/// when the file could not be read or the address not bound.
fn replay(
    file: &Path,
    print: Print,
    tcp: Option<SocketAddr>,
    ws: Option<SocketAddr>,
    pace: wsgate::record::replay::Pace,
    once: bool,
) -> ExitCode {
    use wsgate::record::replay;
    if let Err(e) = replay::Recording::open(file) {
        eprintln!("error: {}: {e}", file.display());
        return ExitCode::FAILURE;
    }
    let Some((addr, websocket)) = tcp.map(|a| (a, false)).or(ws.map(|a| (a, true))) else {
        let mut out = std::io::stdout().lock();
        let done = match print {
            Print::Cat => replay::cat(file, &mut out),
            Print::WebsockifyExport => {
                wsgate::record::websockify::export(file, &mut out).map(|_| ())
            }
            Print::Listing => replay::print_listing(file, &mut out),
        };
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}: {e}", file.display());
                ExitCode::FAILURE
            }
        };
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let file = file.to_path_buf();
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let scheme = if websocket { "ws" } else { "tcp" };
        println!("replaying on {scheme}://{bound}/");
        let _ = std::io::stdout().flush();
        if websocket {
            replay::serve_websocket(listener, file, pace, once).await
        } else {
            replay::serve_tcp(listener, file, pace, once).await
        }
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: replay on {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logging to stderr: `--log-format`/`--log-level` first, then `RUST_LOG` (level only), then
/// `--verbose`, then `[log]`. Colour only when stderr is a terminal and `NO_COLOR` is unset or empty
/// (journald, `docker logs` and Kubernetes get plain text).
fn init_logging(cli: &Cli, file: &LogConfig) {
    let filter = match &cli.log_level {
        Some(level) => EnvFilter::try_new(level),
        None => EnvFilter::try_from_default_env().or_else(|_| {
            if cli.run.verbose {
                EnvFilter::try_new("info,wsgate=debug")
            } else {
                EnvFilter::try_new(&file.level)
            }
        }),
    }
    .unwrap_or_else(|e| {
        eprintln!("warning: bad log level ({e}); using info");
        EnvFilter::new("info")
    });
    let format = match cli.log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None => file.format,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Reload {
            admin,
            config,
            timeout_secs,
        }) => {
            let wait = Duration::from_secs(*timeout_secs);
            return reload_command(*admin, config.as_deref(), wait);
        }
        Some(Command::Check { file, fetch_keys }) => {
            init_logging(&cli, &LogConfig::default());
            return check(file, *fetch_keys);
        }
        Some(Command::Config { args, .. }) => return config_from_flags(args),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "wsgate",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Some(Command::Replay {
            file,
            cat,
            websockify_export,
            tcp,
            ws,
            speed,
            max_wait_secs,
            once,
        }) => {
            let pace = wsgate::record::replay::Pace {
                speed: *speed,
                max_wait: Duration::try_from_secs_f64(*max_wait_secs).unwrap_or(Duration::ZERO),
            };
            let print = match (*cat, *websockify_export) {
                (true, _) => Print::Cat,
                (false, true) => Print::WebsockifyExport,
                (false, false) => Print::Listing,
            };
            return replay(file, print, *tcp, *ws, pace, *once);
        }
        Some(Command::Man) => {
            let mut out = Vec::new();
            if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut out) {
                eprintln!("error: rendering the manual page: {e}");
                return ExitCode::FAILURE;
            }
            return print(&out);
        }
        None => {}
    }
    let config = match load(&cli.run) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cli, &config.log);
    let runtime = match (config.runtime_mode, config.worker_threads) {
        // The gateway starts its workers; this thread is left admin, reload and signals.
        (RuntimeMode::PerCore, _) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        // One thread: no work stealing, no cross-thread wake-ups.
        (_, 1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        (_, 0) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        (_, n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, cli.run.config.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `wsgate check FILE`: the same build as a start, minus the sockets (certificates, keys,
/// token files and JWT key files are read and checked). Offline: JWT key sets are fetched
/// only with `--fetch-keys`, so a check in a build pipeline needs no network.
fn check(file: &std::path::Path, fetch_keys: bool) -> ExitCode {
    let built = Config::load(file).and_then(|c| Snapshot::build(c, None));
    let built = match built {
        Ok(snapshot) if fetch_keys => fetch_key_sets(snapshot),
        other => other,
    };
    match built {
        Ok(Snapshot { config: c, .. }) => {
            println!(
                "{}: ok ({} listener(s), {} route(s))",
                file.display(),
                c.listeners.len(),
                c.routes.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `wsgate check --fetch-keys`: fetch every route's key set once; any failure fails the check.
fn fetch_key_sets(snapshot: Snapshot) -> anyhow::Result<Snapshot> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the key set fetches")?;
    let results = runtime.block_on(snapshot.fetch_keys());
    let mut failed = Vec::new();
    for (route, result) in results {
        match result {
            Ok(n) => println!("route {route}: key set fetched, {n} usable key(s)"),
            Err(e) => failed.push(format!("route {route}: {e:#}")),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("JWT key sets: {}", failed.join("; "));
    }
    Ok(snapshot)
}

/// `wsgate config --from-flags ARGS…`: parse ARGS as a run would, print the file.
fn config_from_flags(args: &[String]) -> ExitCode {
    let inner =
        match Cli::try_parse_from(std::iter::once("wsgate".to_owned()).chain(args.iter().cloned()))
        {
            Ok(c) => c,
            Err(e) => e.exit(),
        };
    if inner.command.is_some() || inner.run.config.is_some() {
        eprintln!("error: --from-flags takes quick-mode arguments, not a subcommand or --config");
        return ExitCode::from(2);
    }
    let quick = inner.run.quick_mode();
    let command = std::iter::once("wsgate")
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    // What is printed is what is checked: the text is read back as `wsgate check` reads a
    // file, so no flag combination yields a file that check (or a start) refuses.
    let checked = quick.to_toml(&command).and_then(|text| {
        let config = Config::from_toml(&text).context("the config these flags stand for")?;
        Snapshot::build(config, None).context("the config these flags stand for")?;
        Ok(text)
    });
    match checked {
        Ok(text) => print(text.as_bytes()),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn print(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`wsgate man | head`) is not worth a message.
        Err(_) => ExitCode::FAILURE,
    }
}

fn load(args: &RunArgs) -> anyhow::Result<Config> {
    let mut config = load_source(args)?;
    // The flag wins over a file's [runtime] and applies to the embedded default too.
    if args.worker_threads != 0 {
        config.worker_threads = args.worker_threads;
    }
    if let Some(mode) = args.runtime_mode {
        config.runtime_mode = mode.into();
        // The check a file's `[runtime] mode` gets, for the flag over a file.
        config.runtime_mode.supported().context("--runtime-mode")?;
    }
    Ok(config)
}

fn load_source(args: &RunArgs) -> anyhow::Result<Config> {
    if let Some(path) = &args.config {
        return Config::load(path);
    }
    let quick = args.quick_mode();
    if quick.is_empty() {
        return Ok(Config::embedded_default());
    }
    quick
        .to_file_config()
        .and_then(|file| file.validate())
        .context("quick mode")
}

async fn serve(config: Config, file: Option<PathBuf>) -> anyhow::Result<()> {
    // From here on SIGHUP reloads instead of killing the process; one that arrives before
    // the gateway runs is served once it does.
    let sighup = Sighup::register().context("listening for SIGHUP")?;
    let gateway = match &file {
        // Read again (the same bytes, unless they just changed): a reload reads this file.
        Some(path) => Gateway::bind_file(path).await?,
        None => Gateway::bind(config).await?,
    };
    // Start-up lines go to whoever reads stdout; once that reader is gone (`| head -1`, a
    // supervisor that stopped reading) they are dropped, never a reason to stop serving.
    let mut out = std::io::stdout().lock();
    let interfaces = machine_addresses();
    let snapshot = gateway.snapshot().clone();
    let listeners = &snapshot.config.listeners;
    for (l, (addr, scheme)) in listeners.iter().zip(gateway.public_urls()) {
        let http = if scheme == "wss" { "https" } else { "http" };
        let port = addr.port();
        for host in reachable_hosts(addr, &interfaces) {
            for route in &snapshot.routes {
                let _ = writeln!(
                    out,
                    "wsgate: {scheme}://{host}:{port}{} -> {}",
                    route.path, route.backend
                );
            }
            if l.console {
                let _ = writeln!(out, "wsgate: console {http}://{host}:{port}/");
            }
            if let Some(root) = &snapshot.config.web_root {
                let _ = writeln!(
                    out,
                    "wsgate: {http}://{host}:{port}/ -> files in {}",
                    root.display()
                );
            }
        }
    }
    if let Some(admin) = gateway.admin_addr() {
        let host = reachable_hosts(admin, &[]).remove(0);
        let port = admin.port();
        let _ = writeln!(
            out,
            "wsgate: status page http://{host}:{port}/ (API under /api/)"
        );
        let _ = writeln!(
            out,
            "wsgate: admin http://{host}:{port}/metrics /healthz /readyz"
        );
    }
    let _ = out.flush();
    drop(out);
    let shutdown = CancellationToken::new();
    let sighup = tokio::spawn(sighup.forward(gateway.reload_handle(), shutdown.clone()));
    let signals = tokio::spawn(wsgate::ops::shutdown::cancel_on_signal(shutdown.clone()));
    let result = gateway.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = signals.await;
    let _ = sighup.await;
    result
}

/// `wsgate reload`: POST /reload to the admin listener and print its answer.
fn reload_command(
    admin: Option<SocketAddr>,
    config: Option<&std::path::Path>,
    wait: Duration,
) -> ExitCode {
    let addr = match (admin, config) {
        (Some(a), _) => Some(a),
        // Only `[admin] address` is read: the file may be the broken edit being reloaded,
        // which the gateway refuses and explains (exit 1), keeping its running config.
        (None, Some(path)) => match admin_address_of(path) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: {e:#}; the gateway was not asked");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => Config::embedded_default().admin,
    };
    let Some(mut addr) = addr else {
        eprintln!("error: the config has no [admin] listener to send the reload to; use SIGHUP");
        return ExitCode::FAILURE;
    };
    // A wildcard bind is reached on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(post_reload(addr, wait)) {
        Ok((status, body)) => {
            print!("{body}");
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: reload via http://{addr}/reload: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `[admin] address` of a config file, read without validating the rest of it.
fn admin_address_of(path: &std::path::Path) -> anyhow::Result<Option<SocketAddr>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| {
        format!(
            "config {} is not TOML, so its [admin] address is unknown (or give --admin)",
            path.display()
        )
    })?;
    let Some(address) = table.get("admin").and_then(|admin| admin.get("address")) else {
        return Ok(None);
    };
    address
        .as_str()
        .and_then(|a| a.parse().ok())
        .map(Some)
        .with_context(|| format!("config {}: admin.address: not IP:PORT", path.display()))
}

async fn post_reload(
    addr: SocketAddr,
    wait: Duration,
) -> anyhow::Result<(hyper::StatusCode, String)> {
    use http_body_util::{BodyExt, Empty};
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .context("connecting")?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut request =
            hyper::Request::post("/reload").header(hyper::header::HOST, addr.to_string());
        // The admin token, when the listener has one (`[admin] bearer_sha256`).
        if let Ok(token) = std::env::var("WSGATE_ADMIN_TOKEN") {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Empty::<bytes::Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(wait, exchange)
        .await
        .with_context(|| format!("no answer in {} s", wait.as_secs()))?
}

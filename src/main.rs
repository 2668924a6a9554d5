//! The `wsgate` binary: parse the CLI, set up logging, load the config, run until a signal.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use wsgate::config::{LogConfig, LogFormat, QuickMode};
use wsgate::ops::reload::Sighup;
use wsgate::{Config, Gateway, Snapshot};

/// WebSocket-to-TCP reverse proxy gateway.
///
/// With no arguments, serves the embedded default: ws://127.0.0.1:8080/echo to a built-in
/// echo service, metrics on http://127.0.0.1:9089/metrics.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Run from a TOML config file.
    #[arg(long, short, value_name = "FILE", conflicts_with_all = ["listen", "routes", "tls_cert", "admin", "console"])]
    config: Option<PathBuf>,

    /// Quick mode: the public listener address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Quick mode: a route, PATH=tcp://HOST:PORT (repeatable). A PATH ending in / is a prefix.
    #[arg(long = "route", value_name = "PATH=URL")]
    routes: Vec<String>,

    /// Quick mode: serve wss:// with this PEM certificate chain.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// Quick mode: the PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Runtime worker threads (overrides [runtime] worker_threads); 0 = one per CPU,
    /// 1 = a single-threaded runtime.
    #[arg(long, value_name = "N", default_value_t = 0)]
    worker_threads: usize,

    /// Quick mode: the admin listener (/metrics, /healthz, /readyz, status page, session
    /// API); none if omitted.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,

    /// Quick mode: serve the browser console at / on the listener.
    #[arg(long)]
    console: bool,

    /// Log format (overrides [log] format) [default: text].
    #[arg(long, value_enum, value_name = "FORMAT", global = true)]
    log_format: Option<LogFormatArg>,

    /// Log level or filter, e.g. `debug` or `info,wsgate::edge=debug` (overrides RUST_LOG,
    /// which overrides [log] level) [default: info].
    #[arg(long, value_name = "FILTER", global = true)]
    log_level: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config file and exit: 0 if valid, 1 with the bad key named if not.
    Check {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Ask a running gateway to reload its config: `POST /reload` on its admin listener.
    /// Exit 0 when the new config runs, 1 when it was refused (the old one still runs).
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

/// Logging to stderr: `--log-format`/`--log-level` first, then `RUST_LOG` (level only), then
/// `[log]`. Colour only when stderr is a terminal and `NO_COLOR` is unset or empty
/// (journald, `docker logs` and Kubernetes get plain text).
fn init_logging(cli: &Cli, file: &LogConfig) {
    let filter = match &cli.log_level {
        Some(level) => EnvFilter::try_new(level),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&file.level)),
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
        Some(Command::Check { .. }) => init_logging(&cli, &LogConfig::default()),
        None => {}
    }
    if let Some(Command::Check { file }) = &cli.command {
        // The same build as a start, minus the sockets: certificates, keys, token files
        // and JWT keys are read and checked.
        return match Config::load(file).and_then(|c| Snapshot::build(c, None)) {
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
        };
    }
    let config = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cli, &config.log);
    let runtime = match config.worker_threads {
        // One thread: no work stealing, no cross-thread wake-ups.
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
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
    match runtime.block_on(serve(config, cli.config.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = load_source(cli)?;
    // The flag wins over a file's [runtime] and applies to the embedded default too.
    if cli.worker_threads != 0 {
        config.worker_threads = cli.worker_threads;
    }
    Ok(config)
}

fn load_source(cli: &Cli) -> anyhow::Result<Config> {
    if let Some(path) = &cli.config {
        return Config::load(path);
    }
    let quick = QuickMode {
        listen: cli.listen,
        routes: cli.routes.clone(),
        tls_cert: cli.tls_cert.clone(),
        tls_key: cli.tls_key.clone(),
        admin: cli.admin,
        worker_threads: cli.worker_threads,
        console: cli.console,
    };
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
    let shutdown = CancellationToken::new();
    let sighup = tokio::spawn(sighup.forward(gateway.reload_handle(), shutdown.clone()));
    let snapshot = gateway.snapshot().clone();
    let listeners = &snapshot.config.listeners;
    for (l, (addr, scheme)) in listeners.iter().zip(gateway.public_urls()) {
        for route in &snapshot.routes {
            println!(
                "wsgate: {scheme}://{addr}{} -> {}",
                route.path, route.backend
            );
        }
        if l.console {
            let http = if scheme == "wss" { "https" } else { "http" };
            println!("wsgate: console {http}://{addr}/");
        }
    }
    if let Some(admin) = gateway.admin_addr() {
        println!("wsgate: status page http://{admin}/ (API under /api/)");
        println!("wsgate: admin http://{admin}/metrics /healthz /readyz");
    }
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
        (None, Some(path)) => match Config::load(path) {
            Ok(c) => c.admin,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        },
        (None, None) => Config::embedded_default().admin,
    };
    let Some(mut addr) = addr else {
        eprintln!("error: the config has no [admin] listener to send the reload to; use SIGHUP");
        return ExitCode::from(2);
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
        let request = hyper::Request::post("/reload")
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<bytes::Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(wait, exchange)
        .await
        .with_context(|| format!("no answer in {} s", wait.as_secs()))?
}

//! The `wsgate` binary: parse the CLI, set up logging, load the config, run until a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use wsgate::config::QuickMode;
use wsgate::{Config, Gateway, Snapshot};

/// WebSocket-to-TCP reverse proxy gateway.
///
/// With no arguments, serves the embedded default: ws://127.0.0.1:8080/echo to a built-in
/// echo service, metrics on http://127.0.0.1:9090/metrics.
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
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config file and exit: 0 if valid, 1 with the bad key named if not.
    Check {
        /// The TOML file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
    match runtime.block_on(serve(config)) {
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

async fn serve(config: Config) -> anyhow::Result<()> {
    let gateway = Gateway::bind(config).await?;
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
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(wsgate::ops::shutdown::cancel_on_signal(shutdown.clone()));
    let result = gateway.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = signals.await;
    result
}

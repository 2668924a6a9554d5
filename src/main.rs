//! The `wsgate` binary: parse the CLI (`cli/`), set up logging, load the config, run until a
//! signal.

mod cli;

/// jemalloc, not the system's malloc: rustls's record buffers and the bridge's message
/// buffers churn through it (docs/benchmarks.md has the figures that chose it).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use wsgate::config::{LogConfig, LogFormat, RuntimeMode};
use wsgate::edge::urls::{machine_addresses, reachable_hosts};
use wsgate::ops::reload::Sighup;
use wsgate::{Config, Gateway};

use cli::{Cli, LogFormatArg, RunArgs};

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
    if let Some(code) = cli::subcommand(&cli, init_logging) {
        return code;
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

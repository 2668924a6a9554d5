//! The subcommands that do their job and exit: `check`, `config --from-flags`, `replay`,
//! `reload` (and `man`'s printing). Each returns the process's exit code.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use wsgate::{Config, Snapshot};

use super::args::Cli;

/// What `wsgate replay` writes to stdout when it does not serve the recording.
#[derive(Debug, Clone, Copy)]
pub enum Print {
    Listing,
    Cat,
    WebsockifyExport,
}

/// `wsgate replay`: exit 0 when the listing, the bytes or the replays were given, 1 and why
/// when the file could not be read or the address not bound.
pub fn replay(
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

/// `wsgate check FILE`: the same build as a start, minus the sockets (certificates, keys,
/// token files and JWT key files are read and checked). Offline: JWT key sets are fetched
/// only with `--fetch-keys`, so a check in a build pipeline needs no network.
pub fn check(file: &std::path::Path, fetch_keys: bool) -> ExitCode {
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
pub fn config_from_flags(args: &[String]) -> ExitCode {
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

pub fn print(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`wsgate man | head`) is not worth a message.
        Err(_) => ExitCode::FAILURE,
    }
}

/// `wsgate reload`: POST /reload to the admin listener and print its answer.
pub fn reload_command(
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

//! Load generator for WebSocket upgrades: how many handshakes per second a gateway completes.
//!
//! ```text
//! cargo run --release --example handshake_rate -- --url ws://127.0.0.1:8080/ --total 20000 --concurrency 64
//! cargo run --release --example handshake_rate -- --url wss://127.0.0.1:8443/ --total 5000 --concurrency 64
//! ```
//!
//! Each handshake: TCP connect, TLS for `wss://` (certificate verification off unless `--ca`;
//! every handshake a full one unless `--resume`), a minimal upgrade request, the response read
//! up to its blank line, `101` and `Sec-WebSocket-Accept` checked. The latency is connect →
//! end of the `101` headers. Then, with `--close true` (the default), a masked Close 1000 is
//! sent and the server's Close awaited, then the server's end of the connection, so the
//! gateway's session ends cleanly and the server closes first; `--close false` just drops the
//! socket. The rate is handshakes completed per second of wall time, closes included.
//!
//! Prints one `RESULT {json}` line and one line for people. Loopback targets only; bounded by
//! `--total` and by `--timeout` seconds in all (and `--handshake-timeout` per connection).
//! Exits 1 if any handshake failed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use clap::{ArgAction, Parser};
use hyper::Uri;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// WebSocket handshake load generator (loopback only).
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Args {
    /// ws:// or wss:// URL of the gateway; the host must be a loopback address or name.
    #[arg(long)]
    url: String,

    /// Handshakes to attempt.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    total: u64,

    /// Connections in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,

    /// Stop after this many seconds in all (attempts cut short count as timeouts).
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,

    /// Limit per connection, for the handshake and again for the close.
    #[arg(long, default_value_t = 10.0)]
    handshake_timeout: f64,

    /// wss://: verify the server's certificate against this CA (PEM). Without it,
    /// verification is off (handshake signatures are still checked).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,

    /// End each session with a Close handshake (true) or just drop the socket (false).
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    close: bool,

    /// wss://: allow TLS session resumption (by default every handshake is a full one).
    #[arg(long)]
    resume: bool,

    /// Runtime threads for the generator (1: a current-thread runtime).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    threads: u64,
}

/// Everything a connection needs, shared by all workers.
struct Target {
    addr: SocketAddr,
    /// `Host` header value.
    authority: String,
    path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    close: bool,
    handshake_timeout: Duration,
    deadline: Instant,
}

/// Why an attempt failed (the `failures` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fail {
    Connect,
    Tls,
    Io,
    Status,
    Accept,
    Timeout,
}

impl Fail {
    fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Io => "io",
            Self::Status => "status",
            Self::Accept => "accept",
            Self::Timeout => "timeout",
        }
    }
}

/// One worker's tally.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    failures: BTreeMap<Fail, u64>,
    close_failed: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads as usize)
            .enable_all()
            .build()
    };
    let result = runtime
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Run the load; `Ok(true)` when every handshake succeeded.
async fn run(args: Args) -> anyhow::Result<bool> {
    if !(args.timeout > 0.0 && args.handshake_timeout > 0.0) {
        bail!("--timeout and --handshake-timeout must be positive");
    }
    let started = Instant::now();
    let target = Arc::new(target(&args, started).await?);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.min(args.total) {
        let (target, next, total) = (target.clone(), next.clone(), args.total);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= target.deadline {
                    break;
                }
                match attempt(&target, i).await {
                    Ok((latency, closed)) => {
                        tally.latencies.push(latency);
                        tally.close_failed += u64::from(!closed);
                    }
                    Err(f) => *tally.failures.entry(f).or_default() += 1,
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for w in workers {
        let t = w.await.context("a worker panicked")?;
        all.latencies.extend(t.latencies);
        for (f, n) in t.failures {
            *all.failures.entry(f).or_default() += n;
        }
        all.close_failed += t.close_failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let done = all.latencies.len() as u64 + all.failures.values().sum::<u64>();
    let timed_out = done < args.total || Instant::now() >= target.deadline;
    report(&args, &all, elapsed, timed_out);
    Ok(!all.latencies.is_empty() && all.failures.is_empty() && !timed_out)
}

/// Parse and check the URL, resolve it (loopback only), build the TLS client if needed.
async fn target(args: &Args, started: Instant) -> anyhow::Result<Target> {
    let uri: Uri = args.url.parse().context("--url")?;
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => bail!("--url must start with ws:// or wss://"),
    };
    let host = uri.host().context("--url has no host")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .with_context(|| format!("resolving {bare}"))?
        .collect();
    let Some(&addr) = addrs.first() else {
        bail!("{bare} resolves to no address");
    };
    if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "refusing a non-loopback target: {bare} resolves to {}",
            a.ip()
        );
    }
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let tls = if tls {
        // The gateway's own client config: ring, TLS 1.2/1.3, ALPN http/1.1, and with no CA
        // file its "accept any certificate" verifier (signatures are still checked).
        let config = wsgate::tls::client_config(args.ca.as_deref(), args.ca.is_none())?;
        let mut config = rustls::ClientConfig::clone(&config);
        if !args.resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        let name = ServerName::try_from(bare.to_owned()).context("TLS server name")?;
        Some((TlsConnector::from(Arc::new(config)), name))
    } else {
        None
    };
    Ok(Target {
        addr,
        authority: uri.authority().map_or(host, |a| a.as_str()).to_owned(),
        path,
        tls,
        close: args.close,
        handshake_timeout: Duration::from_secs_f64(args.handshake_timeout),
        deadline: started + Duration::from_secs_f64(args.timeout),
    })
}

/// One connection. `Ok((handshake latency, closed cleanly))`.
async fn attempt(target: &Target, i: u64) -> Result<(Duration, bool), Fail> {
    let t0 = Instant::now();
    let limit = (t0 + target.handshake_timeout).min(target.deadline);
    let tcp = match timeout_at(limit, TcpStream::connect(target.addr)).await {
        Err(_) => return Err(Fail::Timeout),
        Ok(Err(_)) => return Err(Fail::Connect),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    match &target.tls {
        None => session(target, tcp, t0, i).await,
        Some((connector, name)) => {
            let tls = match timeout_at(limit, connector.connect(name.clone(), tcp)).await {
                Err(_) => return Err(Fail::Timeout),
                Ok(Err(_)) => return Err(Fail::Tls),
                Ok(Ok(s)) => s,
            };
            session(target, tls, t0, i).await
        }
    }
}

/// The upgrade and, if asked, the close handshake, on a connected (and secured) stream.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    target: &Target,
    mut s: S,
    t0: Instant,
    i: u64,
) -> Result<(Duration, bool), Fail> {
    let limit = (t0 + target.handshake_timeout).min(target.deadline);
    let key = BASE64.encode(key_bytes(i));
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.path, target.authority
    );
    let rest = match timeout_at(limit, upgrade(&mut s, request.as_bytes(), &key)).await {
        Err(_) => return Err(Fail::Timeout),
        Ok(r) => r?,
    };
    let latency = t0.elapsed();
    if !target.close {
        return Ok((latency, true));
    }
    let limit = (Instant::now() + target.handshake_timeout).min(target.deadline);
    let closed = matches!(timeout_at(limit, close(&mut s, rest)).await, Ok(Ok(())));
    Ok((latency, closed))
}

/// 16 distinct bytes per connection for `Sec-WebSocket-Key` (splitmix64 of the index).
fn key_bytes(i: u64) -> [u8; 16] {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let a = mix(i.wrapping_add(0x9e37_79b9_7f4a_7c15));
    let b = mix(a);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_le_bytes());
    out[8..].copy_from_slice(&b.to_le_bytes());
    out
}

/// Send the request, read the response head, check `101` and the accept value.
/// Returns any bytes read past the head.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    request: &[u8],
    key: &str,
) -> Result<Vec<u8>, Fail> {
    s.write_all(request).await.map_err(|_| Fail::Io)?;
    s.flush().await.map_err(|_| Fail::Io)?;
    let mut buf = Vec::with_capacity(512);
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err(Fail::Status);
        }
        let mut chunk = [0u8; 1024];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(Fail::Io),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| Fail::Status)?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(Fail::Status);
    }
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let expected = BASE64.encode(sha.finalize());
    let accepted = lines
        .filter_map(|l| l.split_once(':'))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == expected
        });
    if !accepted {
        return Err(Fail::Accept);
    }
    Ok(buf.split_off(end))
}

/// Send a masked Close 1000, read frames until the server's Close, then until the server
/// ends the connection (so the server closes first).
async fn close<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, mut buf: Vec<u8>) -> Result<(), ()> {
    const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x08];
    let code = 1000u16.to_be_bytes();
    let frame = [
        0x88,
        0x82,
        MASK[0],
        MASK[1],
        MASK[2],
        MASK[3],
        code[0] ^ MASK[0],
        code[1] ^ MASK[1],
    ];
    s.write_all(&frame).await.map_err(drop)?;
    s.flush().await.map_err(drop)?;
    let mut chunk = [0u8; 4096];
    // Frames the server sent before its Close are skipped.
    loop {
        if let Some((opcode, size)) = frame_size(&buf) {
            if buf.len() >= size {
                if opcode == 0x8 {
                    break;
                }
                buf.drain(..size);
                continue;
            }
        }
        if buf.len() > 1 << 20 {
            return Err(());
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    // The server's Close came: its end of the connection follows (an error also ends it).
    while let Ok(n) = s.read(&mut chunk).await {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

/// The opcode and whole size of the frame at the start of `buf`, once its header is there.
fn frame_size(buf: &[u8]) -> Option<(u8, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let (header, len) = match b1 & 0x7f {
        126 => (
            4,
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
        ),
        127 => (
            10,
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
        ),
        n => (2, usize::from(n)),
    };
    Some((b0 & 0x0f, header + mask + len))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn report(args: &Args, tally: &Tally, elapsed: f64, timed_out: bool) {
    let mut sorted = tally.latencies.clone();
    sorted.sort_unstable();
    let ok = sorted.len();
    let failed: u64 = tally.failures.values().sum();
    let rate = ok as f64 / elapsed;
    let (p50, p90, p99) = (
        percentile(&sorted, 50.0),
        percentile(&sorted, 90.0),
        percentile(&sorted, 99.0),
    );
    let max = percentile(&sorted, 100.0);
    let failures = tally
        .failures
        .iter()
        .map(|(f, n)| format!("{}:{n}", json_str(f.label())))
        .collect::<Vec<_>>()
        .join(",");
    let tls = args.url.starts_with("wss:");
    println!(
        "RESULT {{\"tool\":\"handshake_rate\",\"url\":{},\"tls\":{tls},\"resume\":{},\
         \"close\":{},\"total\":{},\"concurrency\":{},\"threads\":{},\"ok\":{ok},\
         \"failed\":{failed},\"failures\":{{{failures}}},\"close_failed\":{},\
         \"timed_out\":{timed_out},\"elapsed_s\":{elapsed:.3},\"handshakes_per_s\":{rate:.1},\
         \"latency_ms\":{{\"p50\":{p50:.3},\"p90\":{p90:.3},\"p99\":{p99:.3},\"max\":{max:.3}}}}}",
        json_str(&args.url),
        args.resume && tls,
        args.close,
        args.total,
        args.concurrency,
        args.threads,
        tally.close_failed,
    );
    println!(
        "{}: {ok} handshakes in {elapsed:.2} s = {rate:.0}/s at concurrency {}; \
         latency p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; {failed} failed{}{}",
        args.url,
        args.concurrency,
        if tally.close_failed > 0 {
            format!(", {} closes unclean", tally.close_failed)
        } else {
            String::new()
        },
        if timed_out {
            " (stopped by --timeout)"
        } else {
            ""
        },
    );
}

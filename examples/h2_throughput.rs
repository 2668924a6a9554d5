//! WebSocket echo throughput over HTTP/2 next to HTTP/1.1 wss, with each side's CPU time.
//!
//! ```text
//! nice -n 19 cargo build --release --example h2_throughput --bin wsgate
//! flock /tmp/bench.lock target/release/examples/h2_throughput --rounds 3
//! ```
//!
//! Starts a gateway on 127.0.0.1:0 with a TLS listener (a certificate made at start) and a
//! route to the built-in echo service, on its own runtime and threads (named `gateway`, as
//! `wsgate --worker-threads N` would run it), and drives it from a lean client on one other
//! thread: pre-masked frames written as they are, echoes counted without a copy, HTTP/2 through
//! the `h2` crate directly (no per-stream task). Loads, interleaved `--rounds` times:
//! 1. `h1`: one session over HTTP/1.1 wss (ALPN `http/1.1`);
//! 2. `h2`: one session over HTTP/2 (ALPN `h2`, extended CONNECT);
//! 3. `h2-many`: `--sessions` sessions on one HTTP/2 connection;
//! 4. `h1-many`: `--sessions` HTTP/1.1 wss sessions, one connection each.
//!
//! Each session sends `--chunk`-byte binary messages, keeping `--in-flight` of them
//! unanswered, until `--mib` MiB (split across the sessions of a load) went out and came back.
//! Per load: MB/s (10^6 bytes of echoed payload per second) and the CPU seconds per GB of
//! echoed payload of the gateway's threads and of the client's, with the share of a core each
//! used. A client near 100 % of its core limits the figure; the gateway's s/GB does not depend
//! on it. Loopback only; bounded by `--mib` and `--timeout`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use hyper::{Method, Request, StatusCode};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use wsgate::{Config, Gateway};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Payload MiB each load echoes (split across its sessions).
    #[arg(long, default_value_t = 256)]
    mib: usize,
    /// Sessions of the `h2-many` and `h1-many` loads.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 64 * 1024)]
    chunk: usize,
    /// Messages a session keeps unanswered.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Loads to run, in this order, each round.
    #[arg(long, value_delimiter = ',', default_value = "h1,h2,h2-many,h1-many")]
    loads: Vec<Load>,
    /// Times to run the loads, interleaved; the summary gives each figure's median.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Gateway runtime threads (`--worker-threads`): 1 is a current-thread runtime.
    #[arg(long, default_value_t = 1)]
    gateway_threads: usize,
    /// `[http2] stream_window_bytes` (default: the gateway's).
    #[arg(long)]
    stream_window: Option<u32>,
    /// `[http2] connection_window_bytes` (default: the gateway's).
    #[arg(long)]
    conn_window: Option<u32>,
    /// `[http2] max_frame_bytes` (default: the gateway's).
    #[arg(long)]
    frame: Option<u32>,
    /// `[http2] max_send_buffer_bytes` (default: the gateway's).
    #[arg(long)]
    send_buffer: Option<usize>,
    /// SETTINGS_MAX_FRAME_SIZE the client announces: the largest DATA frame the gateway
    /// sends it. 16384 is what browsers announce (the protocol's default).
    #[arg(long, default_value_t = 16 * 1024)]
    client_frame: u32,
    /// Seconds a load may take before the run fails.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Load {
    H1,
    H2,
    H2Many,
    H1Many,
}

impl Load {
    fn describe(self, sessions: usize) -> String {
        match self {
            Load::H1 => "HTTP/1.1 wss, 1 session".to_owned(),
            Load::H2 => "HTTP/2, 1 session".to_owned(),
            Load::H2Many => format!("HTTP/2, {sessions} sessions on 1 connection"),
            Load::H1Many => format!("HTTP/1.1 wss, {sessions} sessions, 1 connection each"),
        }
    }
}

/// One load's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    mb_per_s: f64,
    gateway_s_per_gb: f64,
    gateway_busy: f64,
    client_s_per_gb: f64,
    client_busy: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    wsgate::tls::install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem())?;
    std::fs::write(&key_file, cert.signing_key.serialize_pem())?;
    let mut http2 = String::new();
    for (key, value) in [
        (
            "stream_window_bytes",
            args.stream_window.map(|v| v as usize),
        ),
        (
            "connection_window_bytes",
            args.conn_window.map(|v| v as usize),
        ),
        ("max_frame_bytes", args.frame.map(|v| v as usize)),
        ("max_send_buffer_bytes", args.send_buffer),
    ] {
        if let Some(v) = value {
            http2.push_str(&format!("{key} = {v}\n"));
        }
    }
    let config = Config::from_toml(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert_file = {:?}\nkey_file = {:?}\n\
         [http2]\n{http2}[[route]]\nname = \"echo\"\npath = \"/\"\nbackend = \"builtin:echo\"\n",
        cert_file.display().to_string(),
        key_file.display().to_string(),
    ))?;

    let shutdown = CancellationToken::new();
    let (addr, gateway) = start_gateway(config, args.gateway_threads, shutdown.clone())?;
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ca = cert.cert.der().clone();
    let result = client.block_on(async {
        let mut all: BTreeMap<Load, Vec<Figures>> = BTreeMap::new();
        for round in 1..=args.rounds {
            for &load in &args.loads {
                let figures = run_load(load, addr, &ca, &args)
                    .await
                    .with_context(|| format!("round {round}, {}", load.describe(args.sessions)))?;
                println!(
                    "round {round}: {:<48} {:>6.0} MB/s   gateway {:.2} s/GB ({:.0} % of a core)   client {:.2} s/GB ({:.0} %)",
                    load.describe(args.sessions),
                    figures.mb_per_s,
                    figures.gateway_s_per_gb,
                    figures.gateway_busy * 100.0,
                    figures.client_s_per_gb,
                    figures.client_busy * 100.0,
                );
                all.entry(load).or_default().push(figures);
            }
        }
        summary(&all, &args);
        anyhow::Ok(())
    });
    shutdown.cancel();
    match gateway.join() {
        Ok(r) => r?,
        Err(_) => bail!("the gateway thread panicked"),
    }
    result
}

/// The gateway on its own runtime, on threads named `gateway` (so their CPU time and
/// `perf report --comm gateway` count the gateway alone).
fn start_gateway(
    config: Config,
    threads: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, std::thread::JoinHandle<anyhow::Result<()>>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("gateway".to_owned())
        .spawn(move || {
            let runtime = match threads {
                1 => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
                n => tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(n)
                    .thread_name("gateway")
                    .enable_all()
                    .build()?,
            };
            runtime.block_on(async {
                let gateway = match Gateway::bind(config).await {
                    Ok(g) => g,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow::anyhow!("{e:#}")));
                        return Ok(());
                    }
                };
                let _ = tx.send(Ok(gateway.public_urls()[0].0));
                gateway.run(shutdown).await
            })
        })?;
    let addr = rx
        .recv()
        .context("the gateway thread ended before binding")??;
    Ok((addr, handle))
}

async fn run_load(
    load: Load,
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    args: &Args,
) -> anyhow::Result<Figures> {
    let total = args.mib * 1024 * 1024;
    let limit = Duration::from_secs(args.timeout);
    let sessions = match load {
        Load::H1 | Load::H2 => 1,
        Load::H2Many | Load::H1Many => args.sessions,
    };
    let per = total / sessions;
    // Handshakes are set up before the clock starts: the figures are the data phase's.
    let mut streams: Vec<Session> = Vec::with_capacity(sessions);
    match load {
        Load::H1 | Load::H1Many => {
            for _ in 0..sessions {
                streams.push(Session::H1(Box::new(http1_session(addr, ca).await?)));
            }
        }
        Load::H2 | Load::H2Many => {
            let send = h2_connection(addr, ca, args.client_frame).await?;
            for _ in 0..sessions {
                streams.push(h2_session(&send).await?);
            }
        }
    }
    let before = cpu_seconds()?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for session in streams {
        let args = args.clone();
        tasks.spawn(async move { session.echo(per, &args).await });
    }
    tokio::time::timeout(limit, async {
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        anyhow::Ok(())
    })
    .await
    .context("timed out")??;
    let took = started.elapsed().as_secs_f64();
    let after = cpu_seconds()?;
    let gb = (per * sessions) as f64 / 1e9;
    let (gateway, client) = (after.0 - before.0, after.1 - before.1);
    Ok(Figures {
        mb_per_s: gb * 1e3 / took,
        gateway_s_per_gb: gateway / gb,
        gateway_busy: gateway / took,
        client_s_per_gb: client / gb,
        client_busy: client / took,
    })
}

fn summary(all: &BTreeMap<Load, Vec<Figures>>, args: &Args) {
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    let pick = |load, f: fn(&Figures) -> f64| {
        all.get(&load)
            .map(|runs| median(runs.iter().map(f).collect()))
    };
    println!(
        "\nmedians of {} round(s), {} MiB per load, {} B messages, {} in flight:",
        args.rounds, args.mib, args.chunk, args.in_flight
    );
    println!("| load | MB/s | gateway CPU s/GB | gateway % of a core | client CPU s/GB | client % of a core |");
    println!("|---|---|---|---|---|---|");
    for &load in all.keys() {
        let f = |g: fn(&Figures) -> f64| pick(load, g).unwrap_or(f64::NAN);
        println!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} |",
            load.describe(args.sessions),
            f(|x| x.mb_per_s),
            f(|x| x.gateway_s_per_gb),
            f(|x| x.gateway_busy * 100.0),
            f(|x| x.client_s_per_gb),
            f(|x| x.client_busy * 100.0),
        );
    }
    for (h2, h1) in [
        (Load::H2, Load::H1),
        (Load::H2Many, Load::H1),
        (Load::H2Many, Load::H1Many),
    ] {
        if let (Some(a), Some(b)) = (pick(h2, |x| x.mb_per_s), pick(h1, |x| x.mb_per_s)) {
            let cpu = |l| pick(l, |x| x.gateway_s_per_gb).unwrap_or(f64::NAN);
            println!(
                "{} / {}: {:.2}x MB/s, {:.2}x the gateway's CPU per GB",
                h2.describe(args.sessions),
                h1.describe(args.sessions),
                a / b,
                cpu(h2) / cpu(h1)
            );
        }
    }
}

/// CPU seconds used so far by this process's threads named `gateway`, and by the others
/// (the client), from each thread's `/proc/self/task/*/schedstat` (nanoseconds on a CPU).
/// Threads that ended are not counted: both runtimes keep theirs for the whole run.
fn cpu_seconds() -> anyhow::Result<(f64, f64)> {
    let (mut gateway, mut client) = (0u64, 0u64);
    for task in std::fs::read_dir("/proc/self/task").context("reading /proc/self/task")? {
        let path = task?.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .context("parsing schedstat")?;
        if comm.trim_end() == "gateway" {
            gateway += ns;
        } else {
            client += ns;
        }
    }
    Ok((gateway as f64 / 1e9, client as f64 / 1e9))
}

async fn tls(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    alpn: &[u8],
) -> anyhow::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?)
}

/// One WebSocket session of the client, after its handshake.
enum Session {
    /// HTTP/1.1: the TLS stream itself, and bytes read past the `101`.
    H1(Box<(TlsStream<TcpStream>, Vec<u8>)>),
    /// HTTP/2: the stream's two halves.
    H2(h2::SendStream<Bytes>, h2::RecvStream),
}

async fn http1_session(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
) -> anyhow::Result<(TlsStream<TcpStream>, Vec<u8>)> {
    let mut io = tls(addr, ca, b"http/1.1").await?;
    io.write_all(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await?;
    io.flush().await?;
    let mut head = Vec::new();
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 16 * 1024 || io.read_buf(&mut head).await? == 0 {
            bail!("no complete upgrade response");
        }
    };
    if !head.starts_with(b"HTTP/1.1 101") {
        bail!(
            "upgrade answered {:?}",
            String::from_utf8_lossy(&head[..end.min(40)])
        );
    }
    Ok((io, head.split_off(end)))
}

async fn h2_connection(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    max_frame: u32,
) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    let io = tls(addr, ca, b"h2").await?;
    let (send, conn) = h2::client::Builder::new()
        // Large client windows, so the gateway's side is what the figures measure.
        .initial_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(64 * 1024 * 1024)
        .max_frame_size(max_frame)
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("HTTP/2 client connection: {e}");
        }
    });
    Ok(send)
}

async fn h2_session(send: &h2::client::SendRequest<Bytes>) -> anyhow::Result<Session> {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri("https://localhost/")
        .header("sec-websocket-version", "13")
        .body(())?;
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let mut ready = send.clone().ready().await?;
    let (resp, stream) = ready.send_request(req, false)?;
    let resp = resp.await?;
    if resp.status() != StatusCode::OK {
        bail!("extended CONNECT answered {}", resp.status());
    }
    Ok(Session::H2(stream, resp.into_body()))
}

/// A masked binary frame as a browser sends it, built once and written as it is.
fn masked_frame(len: usize) -> Bytes {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x82u8];
    match len {
        0..=125 => frame.push(0x80 | len as u8),
        126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&KEY);
    frame.extend((0..len).map(|i| 0x5a ^ KEY[i % 4]));
    Bytes::from(frame)
}

/// Counts the payload of the gateway's (unmasked) frames in a byte stream, across reads.
#[derive(Default)]
struct EchoCounter {
    head: Vec<u8>,
    skip: usize,
    data: bool,
    closed: bool,
}

impl EchoCounter {
    /// Payload bytes of data frames in `bytes`.
    fn feed(&mut self, mut bytes: &[u8]) -> anyhow::Result<usize> {
        let mut payload = 0;
        while let Some((&first, rest)) = bytes.split_first() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                if self.data {
                    payload += n;
                }
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            self.head.push(first);
            bytes = rest;
            let h = &self.head;
            let need = match h.get(1).map(|b| b & 0x7f) {
                None => continue,
                Some(126) => 4,
                Some(127) => 10,
                Some(_) => 2,
            };
            if h[1] & 0x80 != 0 {
                bail!("the gateway sent a masked frame");
            }
            if h.len() < need {
                continue;
            }
            self.skip = match need {
                4 => u16::from_be_bytes([h[2], h[3]]) as usize,
                10 => usize::try_from(u64::from_be_bytes(h[2..10].try_into()?))?,
                _ => (h[1] & 0x7f) as usize,
            };
            let opcode = h[0] & 0x0f;
            self.data = opcode <= 2;
            self.closed |= opcode == 8;
            self.head.clear();
        }
        Ok(payload)
    }
}

impl Session {
    /// Send `total` bytes in `chunk`-byte messages with `in_flight` unanswered, and count
    /// them back; then Close 1000 and wait for the gateway's Close.
    async fn echo(self, total: usize, args: &Args) -> anyhow::Result<()> {
        let full = masked_frame(args.chunk);
        let frame_for = |n: usize| {
            if n == args.chunk {
                full.clone()
            } else {
                masked_frame(n)
            }
        };
        let close = Bytes::from_static(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
        let (mut sent, mut received) = (0usize, 0usize);
        let mut counter = EchoCounter::default();
        match self {
            Session::H1(h1) => {
                let (mut io, early) = *h1;
                received += counter.feed(&early)?;
                let mut buf = vec![0u8; 256 * 1024];
                while received < total {
                    let mut wrote = false;
                    while sent < total && sent - received < args.in_flight * args.chunk {
                        let n = args.chunk.min(total - sent);
                        io.write_all(&frame_for(n)).await?;
                        sent += n;
                        wrote = true;
                    }
                    if wrote {
                        io.flush().await?;
                    }
                    let n = io.read(&mut buf).await?;
                    if n == 0 {
                        bail!("EOF after {received} of {total} bytes");
                    }
                    received += counter.feed(&buf[..n])?;
                    if counter.closed {
                        bail!("closed after {received} of {total} bytes");
                    }
                }
                io.write_all(&close).await?;
                io.flush().await?;
                while !counter.closed {
                    let n = io.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    counter.feed(&buf[..n])?;
                }
            }
            Session::H2(mut send, mut recv) => {
                while received < total {
                    while sent < total && sent - received < args.in_flight * args.chunk {
                        let n = args.chunk.min(total - sent);
                        // h2 queues it and sends as the gateway's windows allow; what is
                        // queued is bounded by `in_flight`.
                        send.send_data(frame_for(n), false)?;
                        sent += n;
                    }
                    let Some(data) = recv.data().await else {
                        bail!("stream ended after {received} of {total} bytes");
                    };
                    let data = data?;
                    let _ = recv.flow_control().release_capacity(data.len());
                    received += counter.feed(&data)?;
                    if counter.closed {
                        bail!("closed after {received} of {total} bytes");
                    }
                }
                send.send_data(close, false)?;
                while !counter.closed {
                    match recv.data().await {
                        Some(Ok(data)) => {
                            let _ = recv.flow_control().release_capacity(data.len());
                            counter.feed(&data)?;
                        }
                        _ => break,
                    }
                }
                send.send_data(Bytes::new(), true).ok();
            }
        }
        Ok(())
    }
}

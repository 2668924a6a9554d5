//! WebSocket echo throughput over HTTP/2 next to HTTP/1.1 wss, through an in-process gateway.
//!
//! ```text
//! cargo run --release --example h2_throughput -- --mib 256 --sessions 100
//! cargo run --release --example h2_throughput -- --stream-window 1048576 --frame 16384
//! ```
//!
//! Starts a gateway on 127.0.0.1:0 with a TLS listener (a certificate made at start) and a
//! route to the built-in echo service, then runs three loads one after another, each client
//! a fastwebsockets client over tokio-rustls in the same process:
//! 1. one session over HTTP/1.1 wss (ALPN `http/1.1`);
//! 2. one session over HTTP/2 (ALPN `h2`, extended CONNECT);
//! 3. `--sessions` sessions on one HTTP/2 connection.
//!
//! Each session sends `--chunk`-byte binary messages, keeping `--in-flight` of them
//! unanswered, until `--mib` MiB (split across the sessions of a load) went out and came back.
//! Prints MiB/s of echoed payload per load. Loopback only; bounded by `--mib` and `--timeout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
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
    /// Sessions on the one HTTP/2 connection of the third load.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 64 * 1024)]
    chunk: usize,
    /// Messages a session keeps unanswered.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// `[http2] stream_window_bytes`.
    #[arg(long, default_value_t = 256 * 1024)]
    stream_window: u32,
    /// `[http2] connection_window_bytes`.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    conn_window: u32,
    /// `[http2] max_frame_bytes`.
    #[arg(long, default_value_t = 64 * 1024)]
    frame: u32,
    /// `[http2] max_send_buffer_bytes`.
    #[arg(long, default_value_t = 256 * 1024)]
    send_buffer: usize,
    /// Seconds a load may take before the run fails.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

type Ws = WebSocket<TokioIo<Upgraded>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    wsgate::tls::install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem())?;
    std::fs::write(&key_file, cert.signing_key.serialize_pem())?;
    let config = Config::from_toml(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert_file = {:?}\nkey_file = {:?}\n\
         [http2]\nstream_window_bytes = {}\nconnection_window_bytes = {}\nmax_frame_bytes = {}\n\
         max_send_buffer_bytes = {}\n[[route]]\nname = \"echo\"\npath = \"/\"\nbackend = \"builtin:echo\"\n",
        cert_file.display().to_string(),
        key_file.display().to_string(),
        args.stream_window,
        args.conn_window,
        args.frame,
        args.send_buffer,
    ))?;
    let gateway = Gateway::bind(config).await?;
    let addr = gateway.public_urls()[0].0;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway.run(shutdown.clone()));
    let ca = cert.cert.der().clone();
    let total = args.mib * 1024 * 1024;
    let limit = Duration::from_secs(args.timeout);

    let started = Instant::now();
    let ws = http1_session(addr, &ca).await?;
    tokio::time::timeout(limit, echo(ws, total, &args)).await??;
    report("HTTP/1.1 wss, 1 session", total, started.elapsed());

    let started = Instant::now();
    let mut h2 = h2_connection(addr, &ca).await?;
    let ws = h2_session(&mut h2).await?;
    tokio::time::timeout(limit, echo(ws, total, &args)).await??;
    report("HTTP/2, 1 session", total, started.elapsed());

    let started = Instant::now();
    let mut h2 = h2_connection(addr, &ca).await?;
    let per = total / args.sessions;
    let mut loads = tokio::task::JoinSet::new();
    for _ in 0..args.sessions {
        let ws = h2_session(&mut h2).await?;
        let args = args.clone();
        loads.spawn(async move { echo(ws, per, &args).await });
    }
    tokio::time::timeout(limit, async {
        while let Some(r) = loads.join_next().await {
            r??;
        }
        anyhow::Ok(())
    })
    .await??;
    report(
        &format!("HTTP/2, {} sessions on 1 connection", args.sessions),
        per * args.sessions,
        started.elapsed(),
    );

    shutdown.cancel();
    task.await??;
    Ok(())
}

fn report(what: &str, bytes: usize, took: Duration) {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    println!(
        "{what}: {mib:.0} MiB echoed in {:.2} s = {:.0} MiB/s",
        took.as_secs_f64(),
        mib / took.as_secs_f64()
    );
}

async fn tls(
    addr: std::net::SocketAddr,
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

async fn http1_session(
    addr: std::net::SocketAddr,
    ca: &CertificateDer<'static>,
) -> anyhow::Result<Ws> {
    let io = tls(addr, ca, b"http/1.1").await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn.with_upgrades());
    let req = Request::get("/")
        .header("host", "localhost")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        bail!("HTTP/1.1 upgrade answered {}", resp.status());
    }
    let upgraded = hyper::upgrade::on(resp).await?;
    Ok(WebSocket::after_handshake(
        TokioIo::new(upgraded),
        Role::Client,
    ))
}

async fn h2_connection(
    addr: std::net::SocketAddr,
    ca: &CertificateDer<'static>,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>> {
    let io = tls(addr, ca, b"h2").await?;
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        // Large client windows, so the gateway's side is what the figures measure.
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(64 * 1024 * 1024)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn h2_session(
    send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
) -> anyhow::Result<Ws> {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri("https://localhost/")
        .header("sec-websocket-version", "13")
        .body(Empty::new())?;
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    send.ready().await?;
    let mut resp = send.send_request(req).await?;
    if resp.status() != StatusCode::OK {
        bail!("extended CONNECT answered {}", resp.status());
    }
    let upgraded = hyper::upgrade::on(&mut resp).await?;
    Ok(WebSocket::after_handshake(
        TokioIo::new(upgraded),
        Role::Client,
    ))
}

/// Send `total` bytes in `chunk`-byte messages with `in_flight` unanswered, and read them back.
async fn echo(mut ws: Ws, total: usize, args: &Args) -> anyhow::Result<()> {
    let chunk = vec![0x5au8; args.chunk];
    let (mut sent, mut received) = (0usize, 0usize);
    while received < total {
        while sent < total && sent - received < args.in_flight * args.chunk {
            let n = args.chunk.min(total - sent);
            ws.write_frame(Frame::binary(Payload::Borrowed(&chunk[..n])))
                .await?;
            sent += n;
        }
        let frame = ws.read_frame().await.context("reading the echo")?;
        match frame.opcode {
            OpCode::Binary | OpCode::Continuation => received += frame.payload.len(),
            OpCode::Close => bail!("closed after {received} of {total} bytes"),
            _ => {}
        }
    }
    ws.write_frame(Frame::close(1000, b"")).await?;
    Ok(())
}

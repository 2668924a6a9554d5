//! The figures docs/resume.md gives for resumable sessions, measured against a gateway in this
//! process: how long a resume takes after a dropped connection (p50/p99 over many drops, each
//! a reset from a relay between client and gateway), what a detached session costs in memory
//! (resident set growth over many sessions that never come back), and the throughput of a
//! resumable session against a plain one (backend→client, interleaved plain, resumable,
//! plain, … so other load on the machine falls on both alike).
//!
//! Run: `cargo run --release --example resume_bench [DROPS] [DETACHED] [MIB_PER_RUN] [ROUNDS]`
//! (defaults 200, 1000, 256, 3). The client speaks wsgate.resume.v1 as docs/resume.md
//! specifies it; the gateway, backends, relay and client share this process.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const DATA: u8 = 3;
const ACK: u8 = 4;
const PING: u8 = 5;
const PONG: u8 = 6;
const END: u8 = 7;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn numbered(kind: u8, n: u64) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&n.to_be_bytes());
    m
}

/// Open a connection of session `id` and exchange HELLO/WELCOME; the socket and the token.
async fn attach(
    base: &str,
    id: &str,
    resume: Option<(u64, [u8; 32])>,
) -> Result<(Ws, [u8; 32]), String> {
    let url = match resume {
        Some(_) => format!("{base}?wsgate_session={id}&wsgate_resume=1"),
        None => format!("{base}?wsgate_session={id}"),
    };
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "wsgate.resume.v1".parse().expect("header value"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
        .await
        .map_err(|e| e.to_string())?;
    let mut hello = numbered(HELLO, resume.map_or(0, |(r, _)| r));
    if let Some((_, token)) = resume {
        hello.extend_from_slice(&token);
    }
    ws.send(Message::binary(hello))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) if b.first() == Some(&WELCOME) && b.len() == 49 => {
                let token: [u8; 32] = b[17..49].try_into().expect("32 bytes");
                return Ok((ws, token));
            }
            Some(Ok(Message::Binary(b))) if b.first() == Some(&PING) => {
                let mut pong = b.to_vec();
                pong[0] = PONG;
                ws.send(Message::binary(pong))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            other => return Err(format!("no WELCOME: {other:?}")),
        }
    }
}

/// A relay to `target` whose `cut` resets every connection it carries.
#[derive(Clone)]
struct Relay {
    addr: SocketAddr,
    generation: Arc<Mutex<CancellationToken>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let relay = Relay {
            addr: listener.local_addr().expect("addr"),
            generation: Arc::new(Mutex::new(CancellationToken::new())),
        };
        let generation = relay.generation.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let cut = generation.lock().expect("lock").clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.cancelled() => {
                            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                            let _ = socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO));
                        }
                    }
                });
            }
        });
        relay
    }

    fn cut(&self) {
        let mut generation = self.generation.lock().expect("lock");
        generation.cancel();
        *generation = CancellationToken::new();
    }
}

async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A backend that sends `bytes` to every connection, then closes it (`hold`: keeps it open).
async fn source(bytes: usize, hold: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let chunk: Arc<[u8]> = vec![0x5au8; 64 * 1024].into();
        while let Ok((mut s, _)) = listener.accept().await {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if s.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
                if hold {
                    let mut sink = [0u8; 1];
                    let _ = s.read(&mut sink).await;
                } else {
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Drop the connection `drops` times; each time, the time from the reset to the WELCOME of the
/// resume, and an echo through the resumed session.
async fn resume_times(gateway: SocketAddr, drops: usize) -> Vec<Duration> {
    let relay = Relay::start(gateway).await;
    let base = format!("ws://{}/echo", relay.addr);
    let id = "resume-bench-session-0001";
    let (mut ws, mut token) = attach(&base, id, None).await.expect("session starts");
    let mut received = 0u64;
    let mut times = Vec::with_capacity(drops);
    for i in 0..drops {
        let payload = format!("round {i}").into_bytes();
        let mut m = vec![DATA];
        m.extend_from_slice(&payload);
        ws.send(Message::binary(m)).await.expect("send");
        let mut got = 0;
        while got < payload.len() {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) if b.first() == Some(&DATA) => got += b.len() - 1,
                Some(Ok(_)) => {}
                other => panic!("echo: {other:?}"),
            }
        }
        received += got as u64;
        ws.send(Message::binary(numbered(ACK, received)))
            .await
            .expect("ack");
        // Wait for the gateway's ACK of our bytes, so nothing needs resending.
        tokio::time::sleep(Duration::from_millis(5)).await;
        relay.cut();
        let began = Instant::now();
        drop(ws);
        loop {
            match attach(&base, id, Some((received, token))).await {
                Ok((resumed, next)) => {
                    times.push(began.elapsed());
                    ws = resumed;
                    token = next;
                    break;
                }
                Err(e) if began.elapsed() > Duration::from_secs(10) => panic!("resume: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }
    times.sort_unstable();
    times
}

/// RSS growth per detached session: `n` sessions started, `window` backend bytes held
/// unacknowledged in each, their clients gone.
async fn detached_cost(gateway: SocketAddr, path: &str, n: usize, window: u64) -> f64 {
    let base = format!("ws://{gateway}{path}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_bytes();
    for i in 0..n {
        let id = format!("detached-{path}-{i:06}").replace('/', "");
        let (mut ws, _) = attach(&base, &id, None).await.expect("session starts");
        let mut got = 0u64;
        while got < window {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) if b.first() == Some(&DATA) => {
                    got += b.len() as u64 - 1
                }
                Some(Ok(_)) => {}
                other => panic!("window: {other:?}"),
            }
        }
        drop(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    (rss_bytes().saturating_sub(before)) as f64 / n as f64
}

/// Read a backend→client stream of `bytes` on a plain session; seconds.
async fn plain_run(url: &str, bytes: usize) -> f64 {
    let start = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .expect("upgrade");
    let mut got = 0;
    while let Some(Ok(m)) = ws.next().await {
        match m {
            Message::Binary(b) => got += b.len(),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(got, bytes, "the whole stream arrived");
    start.elapsed().as_secs_f64()
}

/// The same on a resumable session, acknowledging every 256 KiB; seconds.
async fn resumable_run(base: &str, id: &str, bytes: usize) -> f64 {
    let start = Instant::now();
    let (mut ws, _) = attach(base, id, None).await.expect("session starts");
    let (mut got, mut acked) = (0u64, 0u64);
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => match b.first() {
                Some(&DATA) => {
                    got += b.len() as u64 - 1;
                    if got - acked >= 256 * 1024 || got == bytes as u64 {
                        acked = got;
                        ws.send(Message::binary(numbered(ACK, got)))
                            .await
                            .expect("ack");
                    }
                }
                Some(&PING) => {
                    let mut pong = b.to_vec();
                    pong[0] = PONG;
                    ws.send(Message::binary(pong)).await.expect("pong");
                }
                Some(&END) => {}
                _ => {}
            },
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("resumable stream: {e}"),
        }
    }
    assert_eq!(got, bytes as u64, "the whole stream arrived");
    start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut arg = |default: usize| args.next().and_then(|a| a.parse().ok()).unwrap_or(default);
    let (drops, detached, mib, rounds) = (arg(200), arg(1000), arg(256), arg(3));
    const WINDOW: u64 = 64 * 1024;
    let bytes = mib << 20;
    let echo = echo_backend().await;
    let idle = source(0, true).await;
    let full = source(WINDOW as usize * 4, true).await;
    let stream = source(bytes, false).await;
    let toml = format!(
        // Every client is 127.0.0.1 and a detached session keeps its connection's slot: no
        // per-address connection cap.
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n\
         [resume]\nmax_sessions = 100000\nmax_sessions_per_address = 100000\n\
         max_buffered_bytes = 1099511627776\n\n\
         [limits]\nmax_connections_per_ip = 0\n\n\
         [[route]]\nname = \"echo\"\npath = \"/echo\"\nbackend = \"tcp://{echo}\"\n\
         [route.resume]\ngrace_secs = 600\n\n\
         [[route]]\nname = \"idle\"\npath = \"/idle\"\nbackend = \"tcp://{idle}\"\n\
         [route.resume]\ngrace_secs = 600\nwindow_bytes = {WINDOW}\n\n\
         [[route]]\nname = \"full\"\npath = \"/full\"\nbackend = \"tcp://{full}\"\n\
         [route.resume]\ngrace_secs = 600\nwindow_bytes = {WINDOW}\n\n\
         [[route]]\nname = \"stream\"\npath = \"/stream\"\nbackend = \"tcp://{stream}\"\n\
         [route.resume]\ngrace_secs = 600\n"
    );
    let config = wsgate::Config::from_toml(&toml).expect("config");
    let gateway = wsgate::Gateway::bind(config).await.expect("bind");
    let addr = gateway.public_urls()[0].0;
    let stop = CancellationToken::new();
    let task = tokio::spawn(gateway.run(stop.clone()));

    let times = resume_times(addr, drops).await;
    println!(
        "resume after a reset: {drops} drops, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
         (reset to WELCOME: reconnect, upgrade, HELLO, WELCOME)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );

    let idle_cost = detached_cost(addr, "/idle", detached, 0).await;
    let full_cost = detached_cost(addr, "/full", detached, WINDOW).await;
    println!(
        "memory per detached session ({detached} sessions, RSS growth / N): \
         idle {:.1} KiB, holding a full {} KiB window {:.1} KiB",
        idle_cost / 1024.0,
        WINDOW >> 10,
        full_cost / 1024.0
    );

    let mut totals = [0.0f64; 2];
    for round in 0..rounds {
        totals[0] += plain_run(&format!("ws://{addr}/stream"), bytes).await;
        totals[1] += resumable_run(
            &format!("ws://{addr}/stream"),
            &format!("throughput-{round}"),
            bytes,
        )
        .await;
    }
    let mb = (bytes * rounds) as f64 / 1e6;
    println!(
        "throughput backend→client, {rounds} interleaved rounds of {mib} MiB: plain {:.0} MB/s, \
         resumable (2 MiB window, ACK every 256 KiB) {:.0} MB/s",
        mb / totals[0],
        mb / totals[1]
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

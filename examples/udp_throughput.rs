//! Datagrams per second and what gets dropped: a UDP echo on loopback reached directly, then
//! through a gateway's `udp://` route, one run each with the same datagram size and time.
//! First in lockstep (one datagram in flight: the round trip's rate, nothing lost), then
//! flooding (each sender as fast as it can): how many datagrams made it back and where the
//! rest went (the gateway's drop counters, or the kernel's socket buffers).
//!
//! Run: `cargo run --release --example udp_throughput [-- SECONDS BYTES]` (default 3 s,
//! 1,200-byte datagrams). Loopback only; ends by itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsgate::{Config, Gateway};

/// A UDP echo: every datagram back to its sender.
async fn echo_server() -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    Ok(addr)
}

struct Run {
    sent: u64,
    received: u64,
    took: Duration,
}

/// One datagram in flight at a time, directly, for `time`: round trips done.
async fn direct_lockstep(echo: SocketAddr, size: usize, time: Duration) -> anyhow::Result<Run> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(echo).await?;
    let (datagram, mut buf) = (vec![0x5a; size], vec![0u8; 65_536]);
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < time {
        socket.send(&datagram).await?;
        tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await??;
        n += 1;
    }
    Ok(Run {
        sent: n,
        received: n,
        took: started.elapsed(),
    })
}

/// The same through the gateway, on one session.
async fn through_lockstep(url: &str, size: usize, time: Duration) -> anyhow::Result<Run> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let datagram = vec![0x5a; size];
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < time {
        ws.send(Message::binary(datagram.clone())).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(1), ws.next()).await? {
                Some(Ok(m)) if m.is_binary() => break,
                Some(Ok(_)) => continue,
                _ => anyhow::bail!("session ended"),
            }
        }
        n += 1;
    }
    ws.close(None).await?;
    Ok(Run {
        sent: n,
        received: n,
        took: started.elapsed(),
    })
}

/// Send to the echo directly for `time`, counting what comes back.
async fn direct(echo: SocketAddr, size: usize, time: Duration) -> anyhow::Result<Run> {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    socket.connect(echo).await?;
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let (socket, received) = (socket.clone(), received.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while socket.recv(&mut buf).await.is_ok() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let datagram = vec![0x5a; size];
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < time {
        if socket.send(&datagram).await.is_ok() {
            sent += 1;
        }
        if sent.is_multiple_of(256) {
            tokio::task::yield_now().await;
        }
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.abort();
    Ok(Run {
        sent,
        received: received.load(Ordering::Relaxed),
        took,
    })
}

/// The same through the gateway: one WebSocket session, one binary message per datagram.
async fn through(url: &str, size: usize, time: Duration) -> anyhow::Result<Run> {
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let (mut sink, mut stream) = ws.split();
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if m.is_binary() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let datagram = vec![0x5a; size];
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < time {
        sink.feed(Message::binary(datagram.clone())).await?;
        sent += 1;
        if sent.is_multiple_of(64) {
            sink.flush().await?;
        }
    }
    sink.flush().await?;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.abort();
    Ok(Run {
        sent,
        received: received.load(Ordering::Relaxed),
        took,
    })
}

async fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(admin).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut page = String::new();
    s.read_to_string(&mut page).await?;
    Ok(page)
}

/// Sum of the series of `name` whose labels contain `label`, gained from `before` to `after`.
fn gained((before, after): (&str, &str), name: &str, label: &str) -> u64 {
    metric(after, name, label).saturating_sub(metric(before, name, label))
}

/// Sum of the series of `name` whose labels contain `label`.
fn metric(page: &str, name: &str, label: &str) -> u64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().map_or(Ok(3.0), |a| a.parse())?;
    let size: usize = args.next().map_or(Ok(1200), |a| a.parse())?;
    let time = Duration::from_secs_f64(secs);
    let echo = echo_server().await?;

    let dl = direct_lockstep(echo, size, time).await?;
    let d = direct(echo, size, time).await?;

    let config = Config::from_toml(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"bench\"\npath = \"/udp\"\nbackend = \"udp://{echo}\"\n"
    ))?;
    let gateway = Gateway::bind(config).await?;
    let addr = gateway.public_urls()[0].0;
    let admin = gateway
        .admin_addr()
        .ok_or_else(|| anyhow::anyhow!("no admin listener"))?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway.run(shutdown.clone()));
    let gl = through_lockstep(&format!("ws://{addr}/udp"), size, time).await?;
    // The flood's own counts: what the counters gained during it.
    let before = scrape(admin).await?;
    let g = through(&format!("ws://{addr}/udp"), size, time).await?;
    let after = scrape(admin).await?;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;

    let rate = |n: u64, t: Duration| n as f64 / t.as_secs_f64();
    println!("{size}-byte datagrams, {secs} s each, one sender, loopback:");
    println!(
        "lockstep (one in flight): direct {:.0} round trips/s, through the gateway {:.0}/s",
        rate(dl.sent, dl.took),
        rate(gl.sent, gl.took)
    );
    println!("flooding:");
    println!(
        "direct:  sent {} ({:.0}/s), echoed back {} ({:.0}/s), lost in socket buffers {}",
        d.sent,
        rate(d.sent, d.took),
        d.received,
        rate(d.received, d.took),
        d.sent.saturating_sub(d.received)
    );
    let to_backend = gained(
        (&before, &after),
        "wsgate_udp_datagrams_total",
        "direction=\"client_to_backend\"",
    );
    let to_client = gained(
        (&before, &after),
        "wsgate_udp_datagrams_total",
        "direction=\"backend_to_client\"",
    );
    println!(
        "gateway: sent {} ({:.0}/s), to the backend {}, back to the client {} ({:.0}/s)",
        g.sent,
        rate(g.sent, g.took),
        to_backend,
        g.received,
        rate(g.received, g.took)
    );
    for cause in [
        "backend_busy",
        "client_slow",
        "oversize",
        "unreachable",
        "send_error",
    ] {
        let n = gained(
            (&before, &after),
            "wsgate_udp_dropped_total",
            &format!("cause=\"{cause}\""),
        );
        println!("  dropped by the gateway, {cause}: {n}");
    }
    println!(
        "  lost in socket buffers (the echo's or the gateway's): {}",
        to_backend.saturating_sub(
            to_client
                + gained(
                    (&before, &after),
                    "wsgate_udp_dropped_total",
                    "cause=\"client_slow\""
                )
        )
    );
    Ok(())
}

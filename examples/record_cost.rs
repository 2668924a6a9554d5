//! What recording costs a session: throughput and the process's CPU seconds per GB moved
//! backend→client through the gateway with `[route.record]` on (raw format, into a temporary
//! folder) against off, in one interleaved run (off, on, off, on, …) so that other load on the
//! machine falls on both alike.
//!
//! Run: `cargo run --release --example record_cost [MIB_PER_RUN] [ROUNDS]` (defaults 256 and
//! 3). The gateway, the TCP backend (a source) and the WebSocket client run in this process:
//! CPU is the whole process's (/proc/self/stat), so the difference between the two lines is
//! what recording adds; the absolute figures include the client and the backend.

use std::time::Instant;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// CPU seconds this process has used (user + system).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name's closing parenthesis: utime is the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// A TCP backend that sends `bytes` to every connection, then closes it.
async fn source(bytes: usize) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let chunk: std::sync::Arc<[u8]> = vec![0x5au8; 64 * 1024].into();
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
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// One session: read everything; (seconds, CPU seconds).
async fn run(url: &str, bytes: usize) -> (f64, f64) {
    let (cpu, start) = (cpu_secs(), Instant::now());
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
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
    (start.elapsed().as_secs_f64(), cpu_secs() - cpu)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let bytes = mib << 20;
    let dir = tempfile::tempdir().expect("temporary folder");
    let backend = source(bytes).await;
    let toml = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"off\"\npath = \"/off\"\nbackend = \"tcp://{backend}\"\n\n\
         [[route]]\nname = \"on\"\npath = \"/on\"\nbackend = \"tcp://{backend}\"\n\
         [route.record]\ndir = {:?}\nmax_session_bytes = 0\nmin_free_bytes = 0\n",
        dir.path().display().to_string()
    );
    let config = wsgate::Config::from_toml(&toml).expect("config");
    let gateway = wsgate::Gateway::bind(config).await.expect("bind");
    let addr = gateway.public_urls()[0].0;
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(gateway.run(stop.clone()));
    let mut totals = [(0.0, 0.0); 2];
    for _ in 0..rounds {
        for (i, path) in ["off", "on"].iter().enumerate() {
            let (secs, cpu) = run(&format!("ws://{addr}/{path}"), bytes).await;
            totals[i].0 += secs;
            totals[i].1 += cpu;
        }
    }
    let gb = (bytes * rounds) as f64 / 1e9;
    println!("{rounds} rounds of {mib} MiB backend→client, interleaved");
    for (i, name) in ["recording off", "recording on "].iter().enumerate() {
        let (secs, cpu) = totals[i];
        println!(
            "{name}: {:7.1} MB/s, {:5.2} CPU s per GB (whole process)",
            gb * 1000.0 / secs,
            cpu / gb
        );
    }
    stop.cancel();
    let _ = task.await;
}

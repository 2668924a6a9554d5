//! Test helpers that read like sentences: a real gateway on loopback, real backends, real clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wsgate::{Config, Gateway};

pub type WsClient = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A gateway running in this test's runtime.
pub struct TestGateway {
    /// The first public listener.
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// SIGTERM, in-process: cancel and wait for `run` to return.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("gateway drained in time")
            .expect("gateway task did not panic")
    }
}

/// A config with one plain listener and the admin listener on free ports, plus `extra` TOML
/// (routes, `[timeouts]`, `[limits]`).
pub fn config_with(extra: &str) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n{extra}\n"
    )
}

/// One route `name` at `path` to `backend`.
pub fn route(name: &str, path: &str, backend: &str) -> String {
    format!("[[route]]\nname = \"{name}\"\npath = \"{path}\"\nbackend = \"{backend}\"\n")
}

/// Start a gateway from TOML text.
pub async fn spawn_gateway(toml: &str) -> TestGateway {
    let config = Config::from_toml(toml).expect("test config is valid");
    let gateway = Gateway::bind(config).await.expect("gateway binds");
    let addr = gateway.public_urls()[0].0;
    let admin = gateway.admin_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway.run(shutdown.clone()));
    TestGateway {
        addr,
        admin,
        shutdown,
        task,
    }
}

/// A gateway with a single route `/` named `name` to `backend`.
pub async fn gateway_to(name: &str, backend: &str) -> TestGateway {
    spawn_gateway(&config_with(&route(name, "/", backend))).await
}

/// A TCP echo backend on loopback; runs until the test's runtime ends.
pub async fn tcp_echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A TCP backend whose every accepted connection is handed to the test.
pub async fn tcp_backend() -> (SocketAddr, tokio::sync::mpsc::Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            if tx.send(s).await.is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

/// A loopback address where nothing listens (bound, then released).
pub async fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Open a WebSocket to `url` with the default client.
pub async fn ws_client(url: &str) -> WsClient {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade succeeds");
    ws
}

/// Open a WebSocket offering `protocols`; returns the client and the selected subprotocol.
pub async fn ws_client_offering(url: &str, protocols: &str) -> (WsClient, Option<String>) {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade succeeds");
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    (ws, chosen)
}

/// The next data message's bytes (text or binary), skipping pings and pongs.
pub async fn next_data(ws: &mut WsClient) -> Option<Vec<u8>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("message in time")?
        {
            Ok(Message::Binary(b)) => return Some(b.to_vec()),
            Ok(Message::Text(t)) => return Some(t.as_bytes().to_vec()),
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => continue,
            Ok(Message::Close(_)) | Err(_) => return None,
        }
    }
}

/// Read data messages until `n` bytes have arrived; returns them.
pub async fn read_bytes(ws: &mut WsClient, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next_data(ws).await {
            Some(b) => out.extend_from_slice(&b),
            None => panic!("stream ended after {} of {n} bytes", out.len()),
        }
    }
    out
}

/// Read until the server's Close arrives; returns its code and reason.
pub async fn expect_close(ws: &mut WsClient) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before Close: {e}"),
            None => panic!("stream ended without Close"),
        }
    }
}

pub async fn send_binary(ws: &mut WsClient, data: &[u8]) {
    ws.send(Message::binary(data.to_vec())).await.expect("send");
}

/// A raw HTTP/1.1 request on a fresh connection; returns the status line and the whole answer.
pub async fn raw_http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = find(&buf, b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An upgrade request for `path` with the usual headers plus `extra` header lines.
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// GET the admin `/metrics` page.
pub async fn scrape(admin: SocketAddr) -> String {
    let (status, text) = raw_http(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    text
}

/// The value of one metric line (`name{labels}`), labels given in the exporter's order.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Retry an async condition for up to 10 s.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if $cond {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                panic!($($msg)+);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

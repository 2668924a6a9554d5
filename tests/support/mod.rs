//! Test helpers that read like sentences: a real gateway on loopback, real backends, real clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
    /// The public listeners as reloads change them.
    pub listeners: wsgate::gateway::BoundListeners,
    pub reload: wsgate::ops::reload::ReloadHandle,
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
    run_gateway(Gateway::bind(config).await.expect("gateway binds"))
}

/// Start a gateway from a config file, which its reloads read again.
pub async fn spawn_gateway_from_file(path: &std::path::Path) -> TestGateway {
    run_gateway(Gateway::bind_file(path).await.expect("gateway binds"))
}

fn run_gateway(gateway: Gateway) -> TestGateway {
    let addr = gateway.public_urls()[0].0;
    let admin = gateway.admin_addr();
    let listeners = gateway.bound_listeners();
    let reload = gateway.reload_handle();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway.run(shutdown.clone()));
    TestGateway {
        addr,
        admin,
        shutdown,
        task,
        listeners,
        reload,
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

/// A loopback listener whose accepted sockets keep a 64 KiB receive buffer (no autotuning):
/// a backend that stops reading pushes back on the gateway after a few kilobytes, not after
/// many megabytes of kernel buffers.
pub async fn small_window_listener() -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(16).unwrap()
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

/// The value of `name{labels}`: the sum over every line of that name whose labels include
/// the given ones (in any order), as PromQL's `sum(name{labels})`; `None` if no line matches.
/// So `wsgate_sessions_total{route="x"}` counts sessions over HTTP/1.1 and HTTP/2 alike.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    let (name, want) = split_series(series);
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (line_series, value) = l.rsplit_once(' ')?;
            let (line_name, labels) = split_series(line_series);
            (line_name == name && want.iter().all(|w| labels.contains(w)))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .reduce(|a, b| a + b)
}

/// `name{a="1",b="2"}` → (`name`, [`a="1"`, `b="2"`]). Label values here hold no commas.
fn split_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        Some((name, rest)) => (
            name,
            rest.trim_end_matches('}')
                .split(',')
                .filter(|l| !l.is_empty())
                .collect(),
        ),
        None => (series, Vec::new()),
    }
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

// ---------------------------------------------------------------------------------------------
// Bridge and shutdown helpers.

/// `len` bytes of the deterministic stream used by bulk tests, starting at stream offset `offset`.
/// The period (251) is prime, so a lost, repeated or reordered chunk shows up as a mismatch.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|i| (i % 251) as u8)
        .collect()
}

/// After the server's Close: keep reading so tungstenite sends its reply, and expect the
/// server to end the connection (within 10 s).
pub async fn finish_close(ws: &mut WsClient) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await
    .expect("the server ends the connection after the close handshake");
}

/// Scrape until `series` (as `metric` spells it) has `value`, for up to 10 s.
pub async fn expect_metric(admin: SocketAddr, series: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let last = metric(&scrape(admin).await, series);
        if last == Some(value) || tokio::time::Instant::now() > deadline {
            assert_eq!(last, Some(value), "{series}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Under a paused clock tokio jumps to the next timer whenever the runtime parks, even when that
/// park also delivered socket readiness. A 1 ms ticker caps every jump, so a loopback round trip
/// costs a few virtual milliseconds while idle waits (a ping due in 20 s) still pass at once.
pub fn tick_paused_clock() {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}

/// A free loopback port (bound, then released) for a process that binds it itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Retry connecting to `addr` until something listens there, for up to 10 s.
pub async fn wait_for_listener(addr: SocketAddr) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("nothing listens on {addr} after 10 s"));
}

/// First-byte bits and opcodes for [`client_frame`].
pub mod frame_bits {
    pub const FIN: u8 = 0x80;
    pub const RSV1: u8 = 0x40;
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// One client frame, masked, written by hand: `first` is the first header byte
/// (`FIN | RSV* | opcode`), so frames a conforming client refuses to send can be built too.
pub fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// A Close frame's payload: the code, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// One frame as the server sent it (unmasked).
#[derive(Debug)]
pub struct RawFrame {
    pub first: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn opcode(&self) -> u8 {
        self.first & 0x0f
    }
}

/// A WebSocket client on a bare stream (a TCP socket, or an HTTP/2 stream): hand-written
/// frames out, the server's frames parsed in.
pub struct RawWs<S = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
}

/// Upgrade a fresh connection to `path` on `addr`; panics unless the answer is `101`.
pub async fn raw_ws_client(addr: SocketAddr, path: &str) -> RawWs {
    raw_ws_client_with(addr, path, "").await.0
}

/// Like [`raw_ws_client`], with `extra` header lines (`Name: value\r\n`) in the request;
/// also returns the `101` answer's head.
pub async fn raw_ws_client_with(addr: SocketAddr, path: &str, extra: &str) -> (RawWs, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(upgrade_request(path, extra).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                return end;
            }
            let mut chunk = [0u8; 4096];
            let n = stream
                .read(&mut chunk)
                .await
                .expect("read the upgrade answer");
            assert!(n > 0, "connection closed before the upgrade answer");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("upgrade answer in time");
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    buf.drain(..end + 4);
    (RawWs { stream, buf }, head)
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> RawWs<S> {
    /// A client on a stream whose `101` answer was read up to its blank line, and no further.
    pub fn from_upgraded(stream: S) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Write bytes (usually from [`client_frame`]) as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw send");
    }

    async fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        true
    }

    /// The server's next frame, or `None` when the connection ended (10 s limit).
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        tokio::time::timeout(Duration::from_secs(10), async {
            if !self.fill(2).await {
                return None;
            }
            let (first, len7) = (self.buf[0], self.buf[1] & 0x7f);
            assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
            let (header, len) = match len7 {
                126 => {
                    if !self.fill(4).await {
                        return None;
                    }
                    (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize)
                }
                127 => {
                    if !self.fill(10).await {
                        return None;
                    }
                    let b: [u8; 8] = self.buf[2..10].try_into().unwrap();
                    (10, u64::from_be_bytes(b) as usize)
                }
                n => (2, n as usize),
            };
            if !self.fill(header + len).await {
                return None;
            }
            let payload = self.buf[header..header + len].to_vec();
            self.buf.drain(..header + len);
            Some(RawFrame { first, payload })
        })
        .await
        .expect("a frame or the end of the connection in time")
    }

    /// Data frames' payloads until `n` bytes have arrived (pings and pongs skipped).
    pub async fn read_bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let f = self
                .read_frame()
                .await
                .unwrap_or_else(|| panic!("connection ended after {} of {n} bytes", out.len()));
            match f.opcode() {
                frame_bits::PING | frame_bits::PONG => {}
                frame_bits::CLOSE => panic!("Close after {} of {n} bytes: {f:?}", out.len()),
                _ => out.extend_from_slice(&f.payload),
            }
        }
        out
    }

    /// Read until the server's Close; returns its code (1005 if none) and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            let f = self
                .read_frame()
                .await
                .expect("connection ended without a Close");
            if f.opcode() == frame_bits::CLOSE {
                return match f.payload.as_slice() {
                    [a, b, reason @ ..] => (
                        u16::from_be_bytes([*a, *b]),
                        String::from_utf8_lossy(reason).into_owned(),
                    ),
                    _ => (1005, String::new()),
                };
            }
        }
    }

    /// After the Close: the server ends the connection (EOF or reset) within 10 s.
    pub async fn expect_end(&mut self) {
        if let Some(f) = self.read_frame().await {
            panic!("unexpected frame after the Close: {f:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// permessage-deflate (RFC 7692) on the client side, with flate2 directly (not the gateway's
// codec): for tests/compression.rs and the compressed session over HTTP/2 in tests/http2.rs.

/// The client's compressor: raw deflate, sync flush, tail removed (RFC 7692 §7.2.1).
pub struct ClientDeflate(flate2::Compress);

impl Default for ClientDeflate {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientDeflate {
    pub fn new() -> Self {
        Self(flate2::Compress::new(flate2::Compression::default(), false))
    }

    pub fn piece(&mut self, data: &[u8], last: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 1024);
        let before = self.0.total_in();
        loop {
            let done = (self.0.total_in() - before) as usize;
            self.0
                .compress_vec(&data[done..], &mut out, flate2::FlushCompress::Sync)
                .unwrap();
            if (self.0.total_in() - before) as usize == data.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(64 * 1024);
        }
        if last {
            assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
            out.truncate(out.len() - 4);
        }
        out
    }
}

/// The client's decompressor, kept across messages (the gateway may take over its context).
pub struct ClientInflate(flate2::Decompress);

impl Default for ClientInflate {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientInflate {
    pub fn new() -> Self {
        Self(flate2::Decompress::new(false))
    }

    pub fn message(&mut self, payload: &[u8]) -> Vec<u8> {
        let input = [payload, &[0, 0, 0xff, 0xff]].concat();
        let mut out = Vec::with_capacity(input.len() * 8 + 1024);
        let before = self.0.total_in();
        loop {
            let done = (self.0.total_in() - before) as usize;
            self.0
                .decompress_vec(&input[done..], &mut out, flate2::FlushDecompress::Sync)
                .expect("the gateway's deflate stream decodes");
            if (self.0.total_in() - before) as usize == input.len() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(out.capacity().max(1024));
        }
    }
}

/// Read one whole data message (frames until FIN; pings skipped): first byte of its
/// first frame, and the payloads joined.
pub async fn read_message<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut RawWs<S>) -> (u8, Vec<u8>) {
    let mut first = None;
    let mut data = Vec::new();
    loop {
        let f = ws.read_frame().await.expect("a frame");
        match f.opcode() {
            frame_bits::PING | frame_bits::PONG => continue,
            frame_bits::CLOSE => panic!("Close instead of data: {f:?}"),
            _ => {}
        }
        first.get_or_insert(f.first);
        data.extend_from_slice(&f.payload);
        if f.first & frame_bits::FIN != 0 {
            return (first.unwrap(), data);
        }
    }
}

/// Read compressed or plain messages until `n` inflated bytes came back.
pub async fn read_echo<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut RawWs<S>,
    inflate: &mut ClientInflate,
    n: usize,
) -> (Vec<u8>, usize) {
    let (mut out, mut compressed) = (Vec::new(), 0);
    while out.len() < n {
        let (first, payload) = read_message(ws).await;
        if first & frame_bits::RSV1 != 0 {
            compressed += 1;
            out.extend_from_slice(&inflate.message(&payload));
        } else {
            out.extend_from_slice(&payload);
        }
    }
    (out, compressed)
}

// ---------------------------------------------------------------------------------------------
// Access-control helpers: raw answers, tokens, special backends, captured logs.

/// An upgrade request to `path` with extra `headers`, on a fresh connection; returns the status
/// and the whole answer.
pub async fn upgrade_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    raw_http(addr, &upgrade_request(path, &extra)).await
}

/// One header's value in a raw HTTP answer (name case-insensitive).
pub fn answer_header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The body of a raw HTTP answer.
pub fn answer_body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Open a WebSocket to `url` with extra request headers; returns the client and the selected
/// subprotocol, or the client's error when the upgrade fails.
pub async fn ws_client_with(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(WsClient, Option<String>), tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().append(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    Ok((ws, chosen))
}

/// Bytes sent, then echoed back through `ws`.
pub async fn assert_echoes(ws: &mut WsClient, data: &[u8]) {
    send_binary(ws, data).await;
    assert_eq!(read_bytes(ws, data.len()).await, data);
}

/// A TCP backend that greets every connection with `name`, then echoes: tells which served.
pub async fn greeting_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(name.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// The greeting of the backend a WebSocket to `url` (with `headers`) reaches.
pub async fn greeting_via(url: &str, headers: &[(&str, &str)]) -> String {
    let (mut ws, _) = ws_client_with(url, headers)
        .await
        .unwrap_or_else(|e| panic!("{url}: upgrade failed: {e}"));
    let greeting = next_data(&mut ws).await.expect("the backend's greeting");
    String::from_utf8(greeting).unwrap()
}

/// What a WebSocket backend saw in one handshake.
#[derive(Debug)]
pub struct SeenHandshake {
    pub path: String,
    pub protocols: Option<String>,
}

/// A WebSocket echo backend that reports each handshake and selects `binary` when offered.
pub async fn ws_echo_backend() -> (SocketAddr, tokio::sync::mpsc::Receiver<SeenHandshake>) {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut seen = None;
                // The callback's error type is tungstenite's, not ours.
                #[allow(clippy::result_large_err)]
                let callback = |req: &Request, mut resp: Response| {
                    let protocols = req
                        .headers()
                        .get("sec-websocket-protocol")
                        .map(|v| v.to_str().unwrap().to_owned());
                    if protocols
                        .as_deref()
                        .is_some_and(|p| p.split(',').any(|p| p.trim() == "binary"))
                    {
                        resp.headers_mut()
                            .insert("sec-websocket-protocol", "binary".parse().unwrap());
                    }
                    seen = Some(SeenHandshake {
                        path: req.uri().to_string(),
                        protocols,
                    });
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, callback).await else {
                    return;
                };
                if let Some(seen) = seen.take() {
                    let _ = tx.send(seen).await;
                }
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_binary() || m.is_text()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// SHA-256 of a token in hex, as `bearer_sha256` lists it.
pub fn sha256_hex(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt_signing_input(alg: &str, claims: &serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let head = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{head}.{body}")
}

fn jwt_finish(input: String, signature: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A JWT signed with HS256 (built by hand: the gateway's verifier is what is under test).
pub fn jwt_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    let input = jwt_signing_input("HS256", claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    jwt_finish(input, tag.as_ref())
}

/// A JWT signed with ES256 by a P-256 key in PKCS#8 DER (rcgen's `KeyPair::serialize_der`).
pub fn jwt_es256(pkcs8: &[u8], claims: &serde_json::Value) -> String {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng).unwrap();
    let input = jwt_signing_input("ES256", claims);
    let sig = key.sign(&rng, input.as_bytes()).unwrap();
    jwt_finish(input, sig.as_ref())
}

/// A JWT signed with RS256 by an RSA key in PKCS#8 DER.
pub fn jwt_rs256(pkcs8: &[u8], claims: &serde_json::Value) -> String {
    let key = ring::rsa::KeyPair::from_pkcs8(pkcs8).unwrap();
    let input = jwt_signing_input("RS256", claims);
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    jwt_finish(input, &sig)
}

/// Log lines captured in memory (plain text, no colours).
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Capture every log line at debug and above written on this thread while the guard lives.
/// With `#[tokio::test]`'s current-thread runtime that includes the gateway's tasks.
pub fn capture_logs() -> (CapturedLogs, tracing::subscriber::DefaultGuard) {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

/// A self-signed test CA for signing test certificates (generated, never stored).
pub fn test_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A `localhost` / `127.0.0.1` server certificate signed by `ca`: (certificate PEM, key PEM).
pub fn leaf_signed_by(ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) -> (String, String) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&key, ca).unwrap();
    (leaf.pem(), key.serialize_pem())
}

// ---------------------------------------------------------------------------------------------
// TLS listeners.

/// A test CA and a `localhost` / `127.0.0.1` leaf it signed, as PEM files in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    pub ca: rustls::pki_types::CertificateDer<'static>,
}

pub fn pki() -> Pki {
    let ca = test_ca("wsgate test CA");

    let (leaf_pem, key_pem) = leaf_signed_by(&ca);

    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("leaf.pem");
    let key_file = dir.path().join("leaf-key.pem");
    std::fs::write(&cert_file, leaf_pem).unwrap();
    std::fs::write(&key_file, key_pem).unwrap();
    Pki {
        dir,
        cert_file,
        key_file,
        ca: ca.der().clone(),
    }
}

/// A config with one `wss` listener and the admin listener on free ports.
pub fn tls_config(cert_file: &std::path::Path, key_file: &std::path::Path, extra: &str) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[listener.tls]\ncert_file = {:?}\nkey_file = {:?}\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n{extra}\n",
        cert_file.display().to_string(),
        key_file.display().to_string(),
    )
}

/// A rustls client that trusts only the test CA and offers `alpn`.
pub fn client_config(
    ca: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::sync::Arc<rustls::ClientConfig> {
    wsgate::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    std::sync::Arc::new(config)
}

// ---------------------------------------------------------------------------------------------
// Admin API helpers (session API, status page).

/// `METHOD path` on the admin listener with extra header lines; returns the status and answer.
pub async fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    raw_http(
        admin,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n"
        ),
    )
    .await
}

/// GET an admin API path that must answer 200; its JSON body.
pub async fn admin_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let (status, answer) = admin_request(admin, "GET", path, &[]).await;
    assert_eq!(status, 200, "GET {path}: {answer}");
    serde_json::from_str(answer_body(&answer)).expect("JSON body")
}

/// The live sessions the admin API lists.
pub async fn live_sessions(admin: SocketAddr) -> Vec<serde_json::Value> {
    admin_json(admin, "/api/sessions").await["sessions"]
        .as_array()
        .expect("sessions array")
        .clone()
}

// Client identity helpers.

/// A byte backend that reads the PROXY v2 header the gateway sends, then greets with
/// `source destination` as it parsed them (or `no header`), then echoes.
pub async fn proxy_reading_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 16];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = u16::from_be_bytes([head[14], head[15]]) as usize;
                let mut header = head.to_vec();
                header.resize(16 + len, 0);
                if s.read_exact(&mut header[16..]).await.is_err() {
                    return;
                }
                let seen = match ppp::v2::Header::try_from(&header[..]) {
                    Ok(h) => match h.addresses {
                        ppp::v2::Addresses::IPv4(a) => format!(
                            "{}:{} {}:{}",
                            a.source_address,
                            a.source_port,
                            a.destination_address,
                            a.destination_port
                        ),
                        ppp::v2::Addresses::IPv6(a) => format!(
                            "[{}]:{} [{}]:{}",
                            a.source_address,
                            a.source_port,
                            a.destination_address,
                            a.destination_port
                        ),
                        other => format!("{other:?}"),
                    },
                    Err(e) => format!("no header: {e}"),
                };
                if s.write_all(seen.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// The per-core mode.

/// `wsgate_worker_sessions_active{worker="i"}` for workers `0..workers` (0 when absent).
pub fn worker_sessions(page: &str, workers: usize) -> Vec<f64> {
    (0..workers)
        .map(|i| {
            metric(
                page,
                &format!("wsgate_worker_sessions_active{{worker=\"{i}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .collect()
}

/// Open sessions to `url`, each checked by an echo, until every one of `workers` per-core
/// workers serves at least one (the kernel picks a worker per connection; 64 sessions at
/// most, where missing a worker by chance is below 2^-60 for two). Every open session is
/// counted on exactly one worker.
pub async fn sessions_on_every_worker(
    url: &str,
    admin: SocketAddr,
    workers: usize,
) -> Vec<WsClient> {
    let mut sessions = Vec::new();
    loop {
        let mut ws = ws_client(url).await;
        assert_echoes(&mut ws, format!("session {}", sessions.len()).as_bytes()).await;
        sessions.push(ws);
        let counts = worker_sessions(&scrape(admin).await, workers);
        assert_eq!(
            counts.iter().sum::<f64>(),
            sessions.len() as f64,
            "every session on one worker: {counts:?}"
        );
        if counts.iter().all(|&n| n > 0.0) {
            return sessions;
        }
        assert!(
            sessions.len() < 64,
            "64 sessions and a worker got none: {counts:?}"
        );
    }
}

//! Test backends on loopback (TCP echo, TCP handed to the test, greeting, PROXY-reading,
//! WebSocket echo), and the backend kinds a scenario can run against.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

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

/// A loopback address where nothing listens: a socket bound there that never listens, kept
/// for the rest of the test process, so connections are refused and the port cannot be
/// handed to another test's listener (the defect: a port bound and released was sometimes
/// taken by a parallel test's backend, and `a_failed_dial_gives_its_slot_back` got a 101).
pub async fn refused_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    addr
}

/// A loopback address nothing listens on now, released so the test can listen there later
/// (a backend that comes back); unlike [`refused_addr`], another test could take it meanwhile.
pub async fn released_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
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

/// What a WebSocket backend saw in one handshake.
#[derive(Debug)]
pub struct SeenHandshake {
    pub path: String,
    pub protocols: Option<String>,
    /// The `Cookie` header, as the gateway forwarded it.
    pub cookie: Option<String>,
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
                        cookie: req
                            .headers()
                            .get("cookie")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
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

/// The kinds of backend a session bridges to: bytes over TCP (the bridge) or WebSocket
/// messages (the relay). A scenario that holds for both is written once, for a `kind`, and
/// run for each with [`for_each_backend_kind!`](crate::for_each_backend_kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Tcp,
    Ws,
}

impl BackendKind {
    /// `name` made unique to this kind: metrics are process-wide and both kinds' tests run in
    /// one process.
    pub fn route(self, name: &str) -> String {
        match self {
            BackendKind::Tcp => format!("{name}_tcp"),
            BackendKind::Ws => format!("{name}_ws"),
        }
    }

    /// The backend URL of this kind for a server at `addr`.
    pub fn url(self, addr: SocketAddr) -> String {
        match self {
            BackendKind::Tcp => format!("tcp://{addr}"),
            BackendKind::Ws => format!("ws://{addr}/"),
        }
    }

    /// A fresh echo backend of this kind; its URL.
    pub async fn echo_backend(self) -> String {
        match self {
            BackendKind::Tcp => self.url(tcp_echo_backend().await),
            // The handshake reports are not needed: dropping the receiver lets the echo run.
            BackendKind::Ws => self.url(ws_echo_backend().await.0),
        }
    }

    /// A backend whose every connection is handed to the test (for `Ws`, once its handshake
    /// completed); its URL.
    pub async fn backend(self) -> (String, tokio::sync::mpsc::Receiver<BackendConn>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = self.url(listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok(conn) = self.accept(&listener).await {
                if tx.send(conn).await.is_err() {
                    break;
                }
            }
        });
        (url, rx)
    }

    /// Accept one connection on `listener` (for `Ws`, and complete its handshake).
    pub async fn accept(self, listener: &TcpListener) -> std::io::Result<BackendConn> {
        let (tcp, _) = listener.accept().await?;
        Ok(match self {
            BackendKind::Tcp => BackendConn::Tcp(tcp),
            BackendKind::Ws => BackendConn::Ws(Box::new(
                tokio_tungstenite::accept_async(tcp)
                    .await
                    .map_err(std::io::Error::other)?,
            )),
        })
    }
}

/// The backend's side of one session, of either kind; data is bytes for TCP, binary messages
/// for a WebSocket.
pub enum BackendConn {
    Tcp(TcpStream),
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
}

impl BackendConn {
    /// Send `data` towards the client (one message for a WebSocket); how much was taken.
    pub async fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            BackendConn::Tcp(s) => s.write(data).await,
            BackendConn::Ws(ws) => ws
                .send(Message::binary(data.to_vec()))
                .await
                .map(|()| data.len())
                .map_err(std::io::Error::other),
        }
    }

    /// End the session from the backend's side, cleanly (TCP FIN; a WebSocket Close 1000), and
    /// wait until the gateway lets go of the connection.
    pub async fn finish(&mut self) {
        match self {
            BackendConn::Tcp(s) => {
                s.shutdown().await.unwrap();
                let _ = s.read_to_end(&mut Vec::new()).await;
            }
            BackendConn::Ws(ws) => {
                ws.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                })))
                .await
                .unwrap();
                while let Some(Ok(_)) = ws.next().await {}
            }
        }
    }

    /// Everything the client sent until it closed the session (pings answered meanwhile).
    pub async fn read_all(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        match self {
            BackendConn::Tcp(s) => {
                // Until the gateway's FIN, which follows the client's Close.
                s.read_to_end(&mut got).await.unwrap();
            }
            BackendConn::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(data))) => got.extend_from_slice(&data),
                    Some(Ok(Message::Close(_))) => {
                        // Read on until the end, so tungstenite sends its reply.
                        while let Ok(Some(_)) = timeout(Duration::from_secs(10), ws.next()).await {}
                        break;
                    }
                    Some(Ok(_)) => {}
                    other => panic!("backend: {other:?} after {} bytes", got.len()),
                }
            },
        }
        got
    }

    /// The gateway lets go of the backend within `limit`, sending no data first: for TCP the
    /// stream ends (EOF or reset), `None`; for a WebSocket its Close (code, reason) arrives,
    /// then the connection ends. Reading answers the gateway's pings meanwhile.
    pub async fn expect_end(&mut self, limit: Duration) -> Option<(u16, String)> {
        match self {
            BackendConn::Tcp(s) => {
                let mut buf = [0u8; 16];
                let read = timeout(limit, s.read(&mut buf))
                    .await
                    .expect("the backend sees the end in time");
                assert!(matches!(read, Ok(0) | Err(_)), "EOF or error, got {read:?}");
                None
            }
            BackendConn::Ws(ws) => {
                let close = timeout(limit, async {
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                            Some(Ok(Message::Close(Some(f)))) => {
                                break (u16::from(f.code), f.reason.to_string())
                            }
                            Some(Ok(Message::Close(None))) => break (1005, String::new()),
                            other => panic!("expected a Close, got {other:?}"),
                        }
                    }
                })
                .await
                .expect("the backend gets its Close in time");
                let end = timeout(Duration::from_secs(10), async {
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                            Some(Ok(m)) => panic!("expected the connection to end, got {m:?}"),
                            Some(Err(_)) | None => break,
                        }
                    }
                })
                .await;
                end.expect("the connection ends after the Close");
                Some(close)
            }
        }
    }
}

/// Define a scenario once, for a `kind: BackendKind`, and a test for each kind: `name::tcp`
/// and `name::ws` (so `cargo test name` runs both). The attributes (the test attribute and the
/// scenario's doc) go on both tests.
#[macro_export]
macro_rules! for_each_backend_kind {
    ($(#[$attr:meta])* async fn $name:ident($kind:ident) $body:block) => {
        mod $name {
            use super::*;

            async fn scenario($kind: BackendKind) $body

            $(#[$attr])*
            async fn tcp() {
                scenario(BackendKind::Tcp).await
            }

            $(#[$attr])*
            async fn ws() {
                scenario(BackendKind::Ws).await
            }
        }
    };
}

//! Test backends on loopback (TCP echo, TCP handed to the test, greeting, PROXY-reading,
//! WebSocket echo), and the backend kinds a scenario can run against.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

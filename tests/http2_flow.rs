//! An HTTP/2 session's client stream within HTTP/2 flow control (RFC 9113 §5.2), seen from a
//! raw `h2` client over h2c: what the session reads is given back to the client's window (a
//! session echoes many times both windows), a client that stops reading holds the backend
//! back instead of the gateway buffering for it (and lets it go on once it reads), and a
//! session that closes ends its stream with END_STREAM, not a reset.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use hyper::{Method, Request, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::*;

/// A plain listener that also speaks h2c, with `extra` TOML.
fn h2c_config(extra: &str) -> String {
    config_with(extra).replacen("\n\n[admin]", "\nh2c = true\n\n[admin]", 1)
}

/// An h2c connection whose receive windows (stream and connection) are `window` bytes.
async fn h2c_connection(addr: SocketAddr, window: u32) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(window)
        .handshake(tcp)
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// An extended CONNECT for a WebSocket at `path` that must be answered `200`: the stream.
async fn websocket(
    send: &h2::client::SendRequest<Bytes>,
    path: &str,
) -> (SendStream<Bytes>, RecvStream) {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://localhost{path}"))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let mut ready = send.clone().ready().await.expect("connection ready");
    let (answer, stream) = ready.send_request(req, false).expect("request sent");
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::OK);
    (stream, answer.into_body())
}

/// A masked binary frame of `payload` (mask 0: the payload goes as it is).
fn masked(payload: &[u8]) -> Bytes {
    let mut frame = vec![0x82u8];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// The next DATA chunk of `recv` within 10 s (its window given back), or `None` at the end.
async fn next_data(recv: &mut RecvStream) -> Option<Bytes> {
    let data = tokio::time::timeout(Duration::from_secs(10), recv.data())
        .await
        .expect("DATA in time")?
        .expect("a DATA frame, not a reset");
    let _ = recv.flow_control().release_capacity(data.len());
    Some(data)
}

/// Payload bytes of the gateway's unmasked frames in a byte stream, across DATA chunks.
#[derive(Default)]
struct Frames {
    head: Vec<u8>,
    left: usize,
    payload: Vec<u8>,
    opcodes: Vec<u8>,
}

impl Frames {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                self.payload.extend_from_slice(&bytes[..n]);
                self.left -= n;
                bytes = &bytes[n..];
                continue;
            }
            self.head.push(bytes[0]);
            bytes = &bytes[1..];
            let need = match self.head.get(1).map(|b| b & 0x7f) {
                None => continue,
                Some(126) => 4,
                Some(127) => 10,
                Some(_) => 2,
            };
            if self.head.len() < need {
                continue;
            }
            let h = std::mem::take(&mut self.head);
            assert_eq!(h[1] & 0x80, 0, "the gateway's frames are unmasked");
            self.left = match need {
                4 => u16::from_be_bytes([h[2], h[3]]) as usize,
                10 => u64::from_be_bytes(h[2..10].try_into().unwrap()) as usize,
                _ => (h[1] & 0x7f) as usize,
            };
            self.opcodes.push(h[0] & 0x0f);
        }
    }
}

/// The session gives back what it reads: 4 MiB echo through windows of 64 KiB on both
/// sides (the gateway's and the client's), which stall for good after the first 64 KiB if
/// either side's reads do not release their window.
#[tokio::test]
async fn a_session_echoes_many_times_its_windows() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&h2c_config(&format!(
        "{}[http2]\nstream_window_bytes = 65535\nconnection_window_bytes = 65535\n",
        route("flow", "/", &format!("tcp://{echo}"))
    )))
    .await;
    let client = h2c_connection(gw.addr, 65_535).await;
    let (mut send, mut recv) = websocket(&client, "/").await;
    let message = pattern(3, 32 * 1024);
    let mut frames = Frames::default();
    for _ in 0..128 {
        send.send_data(masked(&message), false).unwrap();
        let wanted = frames.payload.len() + message.len();
        while frames.payload.len() < wanted {
            let data = next_data(&mut recv).await.expect("the stream goes on");
            frames.feed(&data);
        }
    }
    assert_eq!(frames.payload.len(), 128 * message.len());
    assert!(frames.payload.chunks(message.len()).all(|m| m == message));
    gw.stop().await.unwrap();
}

/// Backpressure: a client that stops reading stops the session from reading its backend
/// once the client's stream window and the stream's send buffer are full, so the backend's
/// writes stall after a bounded amount (kernel socket buffers included), and go on once
/// the client reads again.
#[tokio::test]
async fn a_client_that_does_not_read_holds_the_backend_back() {
    let (backend, mut accepted) = tcp_backend().await;
    let gw = spawn_gateway(&h2c_config(&format!(
        "{}[http2]\nmax_send_buffer_bytes = 65536\n",
        route("held", "/", &format!("tcp://{backend}"))
    )))
    .await;
    let client = h2c_connection(gw.addr, 65_535).await;
    let (_send, mut recv) = websocket(&client, "/").await;
    let mut socket = accepted
        .recv()
        .await
        .expect("the gateway dialed the backend");
    let chunk = vec![5u8; 64 * 1024];
    let mut written = 0usize;
    let stalled = loop {
        match tokio::time::timeout(Duration::from_secs(1), socket.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            Ok(Err(e)) => panic!("the backend's write failed after {written} bytes: {e}"),
            Err(_) => break true,
        }
        if written > 256 * 1024 * 1024 {
            break false;
        }
    };
    assert!(
        stalled,
        "256 MiB went to a client that reads nothing: nothing held the backend back"
    );
    assert!(
        written < 64 * 1024 * 1024,
        "{written} bytes were taken for a client that reads nothing"
    );
    // The client reads again: the session goes on, and so does the backend.
    let reader = tokio::spawn(async move { while next_data(&mut recv).await.is_some() {} });
    for _ in 0..64 {
        tokio::time::timeout(Duration::from_secs(10), socket.write_all(&chunk))
            .await
            .expect("the backend's writes go on once the client reads")
            .unwrap();
    }
    reader.abort();
    gw.stop().await.unwrap();
}

/// A session that ends with the close handshake ends its stream with END_STREAM: the
/// client reads the gateway's Close, then the end of the stream (not a reset).
#[tokio::test]
async fn a_closed_session_ends_its_stream_with_end_stream() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&h2c_config(&route("ends", "/", &format!("tcp://{echo}")))).await;
    let admin = gw.admin.unwrap();
    let client = h2c_connection(gw.addr, 65_535).await;
    let (mut send, mut recv) = websocket(&client, "/").await;
    send.send_data(masked(b"before the close"), false).unwrap();
    let close = [0x88u8, 0x82, 0, 0, 0, 0, 0x03, 0xe8];
    let mut frames = Frames::default();
    while frames.payload.len() < b"before the close".len() {
        frames.feed(&next_data(&mut recv).await.expect("the echo"));
    }
    send.send_data(Bytes::copy_from_slice(&close), false)
        .unwrap();
    while let Some(data) = next_data(&mut recv).await {
        frames.feed(&data);
    }
    assert_eq!(
        frames.opcodes.last(),
        Some(&0x8),
        "the gateway's Close came"
    );
    assert!(recv.is_end_stream(), "the stream ended with END_STREAM");
    expect_metric(
        admin,
        "wsgate_closes_total{route=\"ends\",code=\"1000\"}",
        1.0,
    )
    .await;
    gw.stop().await.unwrap();
}

//! WebSocket frames written and read by hand, for what a conforming client refuses to send
//! and for checking the exact frames the gateway sends.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http::{find, upgrade_request};

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

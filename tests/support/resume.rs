//! A resume-protocol client written from docs/resume.md alone (not from the gateway's code),
//! and a fault-injecting TCP relay that sits between a client and the gateway and cuts every
//! connection through it on command.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::clients::WsClient;

pub const SUBPROTOCOL: &str = "wsgate.resume.v1";
pub const HELLO: u8 = 0x01;
pub const WELCOME: u8 = 0x02;
pub const DATA: u8 = 0x03;
pub const ACK: u8 = 0x04;
pub const PING: u8 = 0x05;
pub const PONG: u8 = 0x06;
pub const END: u8 = 0x07;

/// A relay from its own loopback port to `target`; [`FaultRelay::cut`] kills every connection
/// it carries at that moment (both sockets dropped with a reset), new ones are carried again.
#[derive(Clone)]
pub struct FaultRelay {
    pub addr: SocketAddr,
    generation: Arc<Mutex<CancellationToken>>,
    /// Connections carried so far.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl FaultRelay {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Self {
            addr: listener.local_addr().unwrap(),
            generation: Arc::new(Mutex::new(CancellationToken::new())),
            accepted: Default::default(),
        };
        let r = relay.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                r.accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let cut = r.generation.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    // No Nagle delays on the relay's hops: small protocol messages (ACK,
                    // PONG) go out at once, as on the direct path.
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.cancelled() => {
                            // A reset, as a dead network or a killed proxy leaves it.
                            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                            let _ = socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO));
                        }
                    }
                });
            }
        });
        relay
    }

    /// Cut every connection carried now.
    pub fn cut(&self) {
        let mut generation = self.generation.lock().unwrap();
        generation.cancel();
        *generation = CancellationToken::new();
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

/// A random session id as docs/resume.md asks: 22 base64url-ish characters.
pub fn new_session_id(seed: &mut u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..22)
        .map(|_| ALPHABET[(xorshift(seed) % 64) as usize] as char)
        .collect()
}

/// A small deterministic random source for drop points and ids.
pub fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

pub fn numbered(kind: u8, n: u64) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&n.to_be_bytes());
    m
}

pub fn hello(received: u64, token: Option<&[u8; 32]>) -> Vec<u8> {
    let mut m = numbered(HELLO, received);
    if let Some(t) = token {
        m.extend_from_slice(t);
    }
    m
}

pub fn data(payload: &[u8]) -> Vec<u8> {
    let mut m = vec![DATA];
    m.extend_from_slice(payload);
    m
}

/// A WELCOME's fields.
#[derive(Debug, Clone, Copy)]
pub struct Welcome {
    pub received: u64,
    pub heartbeat_ms: u32,
    pub grace_ms: u32,
    pub token: [u8; 32],
}

pub fn parse_welcome(m: &[u8]) -> Option<Welcome> {
    if m.len() != 1 + 8 + 4 + 4 + 32 || m[0] != WELCOME {
        return None;
    }
    Some(Welcome {
        received: u64::from_be_bytes(m[1..9].try_into().ok()?),
        heartbeat_ms: u32::from_be_bytes(m[9..13].try_into().ok()?),
        grace_ms: u32::from_be_bytes(m[13..17].try_into().ok()?),
        token: m[17..49].try_into().ok()?,
    })
}

/// The URL of a connection of session `id` (`resume`: join it, don't start it).
pub fn session_url(base: &str, id: &str, resume: bool) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    if resume {
        format!("{base}{sep}wsgate_session={id}&wsgate_resume=1")
    } else {
        format!("{base}{sep}wsgate_session={id}")
    }
}

/// Open a connection offering the resume subprotocol; the answered subprotocol with it.
pub async fn resume_connect(
    url: &str,
) -> Result<(WsClient, Option<String>), tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", SUBPROTOCOL.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async_with_config(req, None, true).await?;
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    Ok((ws, chosen))
}

/// The next protocol message (binary), answering PINGs; `Err` with the close code (1006 when
/// the connection broke without one).
pub async fn next_message(ws: &mut WsClient) -> Result<Vec<u8>, u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Err(_) => return Err(1006),
            Ok(Some(Ok(Message::Binary(b)))) => {
                if b.first() == Some(&PING) && b.len() == 9 {
                    let mut pong = b.to_vec();
                    pong[0] = PONG;
                    if ws.send(Message::binary(pong)).await.is_err() {
                        return Err(1006);
                    }
                    continue;
                }
                return Ok(b.to_vec());
            }
            Ok(Some(Ok(Message::Close(Some(f))))) => return Err(u16::from(f.code)),
            Ok(Some(Ok(Message::Close(None)))) => return Err(1005),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return Err(1006),
        }
    }
}

/// Read until the connection closes; its close code, skipping any protocol messages.
pub async fn close_code(ws: &mut WsClient) -> u16 {
    loop {
        if let Err(code) = next_message(ws).await {
            return code;
        }
    }
}

/// One resumable session as a client keeps it: its id, token, both offsets and the bytes it
/// sent that the gateway has not acknowledged yet.
pub struct ResumeSession {
    pub base: String,
    pub id: String,
    pub token: [u8; 32],
    /// Gateway→client stream bytes received.
    pub received: u64,
    /// Client→gateway bytes the gateway acknowledged (reached the backend).
    pub acked: u64,
    /// Kept for replay: the bytes from `acked` on that were sent (or are to be resent).
    pub kept: VecDeque<u8>,
    /// Client→gateway bytes handed to `send` (offset after the last).
    pub sent: u64,
    pub last_ack_sent: u64,
    pub resumes: u64,
    /// How long each successful resume took, from the first attempt to its WELCOME.
    pub resume_times: Vec<Duration>,
    pub ws: Option<WsClient>,
}

impl ResumeSession {
    /// Start a new session at `base` (a route's URL); panics if it is not resumable.
    pub async fn start(base: &str, id: &str) -> Self {
        let (mut ws, chosen) = resume_connect(&session_url(base, id, false))
            .await
            .expect("upgrade");
        assert_eq!(chosen.as_deref(), Some(SUBPROTOCOL));
        ws.send(Message::binary(hello(0, None))).await.unwrap();
        let first = next_message(&mut ws).await.expect("WELCOME");
        let welcome = parse_welcome(&first).expect("a WELCOME");
        assert_eq!(welcome.received, 0);
        Self {
            base: base.to_owned(),
            id: id.to_owned(),
            token: welcome.token,
            received: 0,
            acked: 0,
            kept: VecDeque::new(),
            sent: 0,
            last_ack_sent: 0,
            resumes: 0,
            resume_times: Vec::new(),
            ws: Some(ws),
        }
    }

    /// Resume after a lost connection, retrying for up to `patience`; `Err(code)` when the
    /// gateway refused (a close code from docs/resume.md's table) or patience ran out (1006).
    pub async fn resume(&mut self, patience: Duration) -> Result<(), u16> {
        self.ws = None;
        let began = tokio::time::Instant::now();
        loop {
            match self.try_resume().await {
                Ok(()) => {
                    self.resumes += 1;
                    self.resume_times.push(began.elapsed());
                    return Ok(());
                }
                Err(code) if code >= 4000 => return Err(code),
                Err(_) if began.elapsed() > patience => return Err(1006),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn try_resume(&mut self) -> Result<(), u16> {
        let (mut ws, chosen) = resume_connect(&session_url(&self.base, &self.id, true))
            .await
            .map_err(|_| 1006u16)?;
        if chosen.as_deref() != Some(SUBPROTOCOL) {
            return Err(4400);
        }
        ws.send(Message::binary(hello(self.received, Some(&self.token))))
            .await
            .map_err(|_| 1006u16)?;
        let first = next_message(&mut ws).await?;
        let welcome = parse_welcome(&first).ok_or(4400u16)?;
        // Drop what reached the gateway; resend the rest.
        if welcome.received < self.acked || welcome.received > self.sent {
            panic!(
                "WELCOME received {} outside the kept bytes {}..{}",
                welcome.received, self.acked, self.sent
            );
        }
        self.release(welcome.received);
        self.token = welcome.token;
        let resend: Vec<u8> = self.kept.iter().copied().collect();
        for chunk in resend.chunks(16 * 1024) {
            ws.send(Message::binary(data(chunk)))
                .await
                .map_err(|_| 1006u16)?;
        }
        self.ws = Some(ws);
        Ok(())
    }

    fn release(&mut self, offset: u64) {
        if offset > self.acked {
            let n = (offset - self.acked) as usize;
            self.kept.drain(..n.min(self.kept.len()));
            self.acked = offset;
        }
    }

    /// Send `bytes` as DATA, keeping them for replay. `Err` when the connection broke.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ()> {
        self.kept.extend(bytes);
        self.sent += bytes.len() as u64;
        let ws = self.ws.as_mut().ok_or(())?;
        ws.send(Message::binary(data(bytes))).await.map_err(|_| ())
    }

    /// The next DATA payload, or an empty one after an ACK (PINGs are answered on the way;
    /// received bytes are acknowledged every 64 KiB). `Err(code)`: the connection closed or broke (1006).
    pub async fn recv(&mut self) -> Result<Vec<u8>, u16> {
        loop {
            let ws = self.ws.as_mut().ok_or(1006u16)?;
            let m = next_message(ws).await?;
            match m.first() {
                Some(&DATA) => {
                    self.received += (m.len() - 1) as u64;
                    if self.received - self.last_ack_sent >= 64 * 1024 {
                        self.ack().await;
                    }
                    return Ok(m[1..].to_vec());
                }
                Some(&ACK) if m.len() == 9 => {
                    let offset = u64::from_be_bytes(m[1..9].try_into().unwrap());
                    assert!(offset <= self.sent, "ACK beyond what was sent");
                    self.release(offset);
                    return Ok(Vec::new());
                }
                Some(&PONG) => {}
                Some(&END) => return Err(close_code(ws).await),
                other => panic!("unexpected message type {other:?}"),
            }
        }
    }

    /// Acknowledge everything received.
    pub async fn ack(&mut self) {
        self.last_ack_sent = self.received;
        if let Some(ws) = self.ws.as_mut() {
            let _ = ws.send(Message::binary(numbered(ACK, self.received))).await;
        }
    }

    /// Send END and read to the close; the close code.
    pub async fn end(&mut self) -> u16 {
        let ws = self.ws.as_mut().expect("connected");
        ws.send(Message::binary(vec![END])).await.expect("send END");
        loop {
            match next_message(ws).await {
                Ok(m) if m.first() == Some(&END) => {}
                Ok(_) => {}
                Err(code) => return code,
            }
        }
    }
}

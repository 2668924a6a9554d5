//! Dialing backends under a timeout (TCP, UDP, Unix sockets, WebSocket over TCP or TLS), with
//! socket options and an optional PROXY header; pools with health; the built-in echo service.

pub mod pool;
pub mod udp;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::Upgraded;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::BackendAddr;
use crate::error::RejectError;
use crate::policy::targets::{self, Egress};
use crate::ws::extensions::{self, Agreement};

/// A connected backend. An enum, not a TCP stream, so more kinds can join it.
#[derive(Debug)]
pub enum Backend {
    /// Raw bytes: the bridge frames them.
    Tcp(TcpStream),
    /// Raw bytes over a Unix domain socket.
    Unix(UnixStream),
    /// Datagrams: a UDP socket connected to the backend, this session's alone, so only the
    /// backend's replies reach it (`backend::udp`, carried by `session::udp`).
    Udp(udp::UdpBackend),
    /// A WebSocket whose handshake completed; `protocol` is the backend's choice.
    WebSocket {
        io: TokioIo<Upgraded>,
        protocol: Option<HeaderValue>,
        /// permessage-deflate as the backend accepted it (only offered when the client's
        /// hop agreed on it).
        deflate: Option<Agreement>,
    },
}

impl Backend {
    /// The `Sec-WebSocket-Protocol` to answer the client with: a WebSocket backend's own
    /// choice from the client's offer; for a byte backend, `route_choice` (the route's pick).
    pub fn subprotocol(
        &self,
        route_choice: impl FnOnce() -> Option<HeaderValue>,
    ) -> Option<HeaderValue> {
        match self {
            Self::WebSocket { protocol, .. } => protocol.clone(),
            Self::Tcp(_) | Self::Unix(_) | Self::Udp(_) => route_choice(),
        }
    }

    /// Whether the client's hop may use permessage-deflate: not for `udp://`, whose messages
    /// are datagrams exactly as sent.
    pub fn takes_deflate(&self) -> bool {
        !matches!(self, Self::Udp(_))
    }

    /// A byte stream the resume protocol can count offsets in (`tcp://`, `unix:`).
    pub fn resumes(&self) -> bool {
        matches!(self, Self::Tcp(_) | Self::Unix(_))
    }
}

/// The path a backend's WebSocket handshake requests, for the kinds that have one.
pub fn handshake_path(target: &BackendAddr) -> Option<&str> {
    match target {
        BackendAddr::WebSocket { path, .. } => Some(path),
        BackendAddr::Tcp { .. }
        | BackendAddr::Udp { .. }
        | BackendAddr::Unix { .. }
        | BackendAddr::BuiltinEcho => None,
    }
}

/// What the backend's WebSocket handshake carries over from the client's request.
#[derive(Debug, Default)]
pub struct Handshake {
    /// Path and query to request.
    pub path: String,
    /// Forwarded client headers and `X-Forwarded-*`.
    pub headers: HeaderMap,
    /// The client's `Sec-WebSocket-Protocol` offer, passed through.
    pub protocols: Option<HeaderValue>,
    /// permessage-deflate to offer, shaped by the client hop's agreement.
    pub deflate: Option<Agreement>,
}

/// The two ends of the client's connection, as a PROXY header tells them to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyAddrs {
    /// The client (after PROXY / forwarded headers).
    pub source: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
}

impl ProxyAddrs {
    /// The PROXY protocol v2 header (`PROXY` command, TCP over the client's family).
    pub fn v2_header(&self) -> io::Result<Vec<u8>> {
        use ppp::v2::{Builder, Command, Protocol, Version};
        // A v4 client on a v6 listener (or the reverse): both ends in one family.
        let (source, destination) = match (self.source, self.destination) {
            (s @ SocketAddr::V4(_), d @ SocketAddr::V4(_))
            | (s @ SocketAddr::V6(_), d @ SocketAddr::V6(_)) => (s, d),
            (s, d) => (to_v6(s), to_v6(d)),
        };
        Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            (source, destination),
        )
        .build()
    }
}

fn to_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    }
}

/// Options set on every backend TCP socket, so a half-open backend is found.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketOptions {
    /// Keepalive idle time and probe interval (3 probes); `None`: off.
    pub keepalive: Option<Duration>,
    /// `TCP_USER_TIMEOUT`; `None`: the kernel's default.
    pub user_timeout: Option<Duration>,
}

impl SocketOptions {
    fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        let sock = socket2::SockRef::from(stream);
        if let Some(idle) = self.keepalive {
            let ka = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(idle)
                .with_retries(3);
            sock.set_tcp_keepalive(&ka)?;
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(t) = self.user_timeout {
            sock.set_tcp_user_timeout(Some(t))?;
        }
        Ok(())
    }
}

/// Turns a route's backend address into a connection.
#[derive(Debug, Clone)]
pub struct Dialer {
    pub connect_timeout: Duration,
    pub socket: SocketOptions,
    /// Where the built-in echo service listens, when a route uses it.
    pub echo_addr: Option<SocketAddr>,
    /// `[egress] allow`, checked on every dial but the echo service's.
    pub egress: Option<Arc<Egress>>,
    /// `[udp]`: the cap on `udp://` sessions.
    pub udp: udp::UdpLimits,
}

impl Dialer {
    /// Dial `target` (the route's backend, or this session's); for a WebSocket backend its
    /// handshake is part of the dial, and so is the PROXY header (`proxy`) of a byte
    /// backend. Everything runs under the connect timeout: egress denied → 403, refused
    /// → 502, timeout → 504.
    pub async fn dial(
        &self,
        backend_tls: Option<&Arc<rustls::ClientConfig>>,
        target: &BackendAddr,
        handshake: Handshake,
        proxy: Option<ProxyAddrs>,
    ) -> Result<Backend, RejectError> {
        let egress = self.egress.as_deref();
        let socket = &self.socket;
        let dial = async {
            let mut backend = match target {
                BackendAddr::Tcp { host, port } => {
                    Backend::Tcp(connect_checked(host, *port, egress, socket).await?)
                }
                // ---- udp:// (session::udp): one connected socket per session ----
                BackendAddr::Udp { host, port } => {
                    Backend::Udp(udp::dial(host, *port, egress, self.udp).await?)
                }
                BackendAddr::Unix { path } => Backend::Unix(
                    UnixStream::connect(path)
                        .await
                        .map_err(unreachable_or_refused)?,
                ),
                BackendAddr::BuiltinEcho => match self.echo_addr {
                    Some(a) => Backend::Tcp(connect(a, &SocketOptions::default()).await?),
                    None => {
                        return Err(RejectError::BackendUnreachable(io::Error::new(
                            io::ErrorKind::NotFound,
                            "echo service not started",
                        )))
                    }
                },
                BackendAddr::WebSocket {
                    tls, host, port, ..
                } => {
                    // SNI and Host keep the name; the socket goes to a checked address.
                    let tcp = connect_checked(host, *port, egress, socket).await?;
                    let authority = if *port == if *tls { 443 } else { 80 } {
                        bracket(host)
                    } else {
                        format!("{}:{port}", bracket(host))
                    };
                    let (io, protocol, deflate) = match (tls, backend_tls) {
                        (true, Some(config)) => {
                            let name = ServerName::try_from(host.clone())
                                .map_err(|e| handshake_error(e.to_string()))?;
                            let stream = TlsConnector::from(config.clone())
                                .connect(name, tcp)
                                .await
                                .map_err(|e| handshake_error(format!("TLS: {e}")))?;
                            websocket_handshake(stream, &authority, handshake).await?
                        }
                        _ => websocket_handshake(tcp, &authority, handshake).await?,
                    };
                    Backend::WebSocket {
                        io,
                        protocol,
                        deflate,
                    }
                }
            };
            if let Some(addrs) = proxy {
                // The header goes first, before any client byte (the bridge has not started).
                let header = addrs.v2_header().map_err(RejectError::BackendUnreachable)?;
                let written = match &mut backend {
                    Backend::Tcp(s) => s.write_all(&header).await,
                    Backend::Unix(s) => s.write_all(&header).await,
                    Backend::WebSocket { .. } | Backend::Udp(_) => Ok(()),
                };
                written.map_err(RejectError::BackendUnreachable)?;
            }
            Ok(backend)
        };
        tokio::time::timeout(self.connect_timeout, dial)
            .await
            .map_err(|_| RejectError::BackendTimeout)?
    }
}

/// Resolve once, keep what `[egress]` allows, connect to those addresses in order.
async fn connect_checked(
    host: &str,
    port: u16,
    egress: Option<&Egress>,
    socket: &SocketOptions,
) -> Result<TcpStream, RejectError> {
    let mut last = None;
    for addr in targets::resolve_allowed(host, port, egress).await? {
        match connect(addr, socket).await {
            Ok(stream) => return Ok(stream),
            // The next address would fail the same way.
            Err(e @ RejectError::NoDescriptors(_)) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        RejectError::BackendUnreachable(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolved to no address"),
        ))
    }))
}

async fn connect(addr: SocketAddr, socket: &SocketOptions) -> Result<TcpStream, RejectError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(unreachable_or_refused)?;
    // Small messages (keystrokes, pongs, RPCs) must not wait for Nagle.
    stream
        .set_nodelay(true)
        .map_err(RejectError::BackendUnreachable)?;
    socket
        .apply(&stream)
        .map_err(RejectError::BackendUnreachable)?;
    Ok(stream)
}

pub(crate) fn unreachable_or_refused(e: io::Error) -> RejectError {
    if crate::policy::descriptors::is_exhaustion(&e) {
        crate::metrics::descriptors_exhausted("backend");
        return RejectError::NoDescriptors(e);
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => RejectError::BackendRefused(e),
        _ => RejectError::BackendUnreachable(e),
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn handshake_error(detail: impl Into<String>) -> RejectError {
    RejectError::BackendHandshake(detail.into().into())
}

/// The client side of RFC 6455 §4.1, strict: 101, `Upgrade: websocket`, an `upgrade`
/// token in `Connection` (`keep-alive, Upgrade` is legal), the right `Sec-WebSocket-Accept`,
/// no extension we did not offer, and a subprotocol only from the offer.
async fn websocket_handshake<S>(
    io: S,
    authority: &str,
    handshake: Handshake,
) -> Result<(TokioIo<Upgraded>, Option<HeaderValue>, Option<Agreement>), RejectError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let key = fastwebsockets::handshake::generate_key();
    let mut request = Request::get(handshake.path.as_str())
        .header(header::HOST, authority)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_KEY, key.as_str())
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .body(Empty::<Bytes>::new())
        .map_err(|e| handshake_error(format!("building the request: {e}")))?;
    let headers = request.headers_mut();
    for (name, value) in &handshake.headers {
        headers.append(name, value.clone());
    }
    if let Some(p) = &handshake.protocols {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, p.clone());
    }
    if let Some(offer) = &handshake.deflate {
        let offer = HeaderValue::from_str(&extensions::backend_offer(offer))
            .map_err(|e| handshake_error(format!("building the request: {e}")))?;
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, offer);
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| handshake_error(e.to_string()))?;
    // Drives the HTTP exchange; ends once the connection is upgraded or dropped.
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| handshake_error(e.to_string()))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(RejectError::BackendRejected(response.status()));
    }
    let h = response.headers();
    if !has_token(h, header::UPGRADE, "websocket") {
        return Err(handshake_error("101 without Upgrade: websocket"));
    }
    if !has_token(h, header::CONNECTION, "upgrade") {
        return Err(handshake_error("101 without Connection: Upgrade"));
    }
    if h.get(header::SEC_WEBSOCKET_ACCEPT)
        .map(HeaderValue::as_bytes)
        != Some(accept_key(key.as_bytes()).as_bytes())
    {
        return Err(handshake_error("wrong Sec-WebSocket-Accept"));
    }
    let answer = h
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let deflate = match &handshake.deflate {
        None if h.contains_key(header::SEC_WEBSOCKET_EXTENSIONS) => {
            return Err(handshake_error("extension negotiated without an offer"))
        }
        None => None,
        Some(offer) => extensions::check_answer(answer, offer).map_err(handshake_error)?,
    };
    let protocol = h.get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
    if let Some(chosen) = &protocol {
        let offered = handshake
            .protocols
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|offer| {
                offer
                    .split(',')
                    .any(|p| p.trim().as_bytes() == chosen.as_bytes())
            });
        if !offered {
            return Err(handshake_error("subprotocol the client did not offer"));
        }
    }
    let upgraded = hyper::upgrade::on(&mut response)
        .await
        .map_err(|e| handshake_error(e.to_string()))?;
    Ok((TokioIo::new(upgraded), protocol, deflate))
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// The built-in TCP echo service behind `builtin:echo`: its listener, on a loopback port.
/// It ends with `shutdown`; each connection ends with its client or with `shutdown`.
pub async fn bind_echo_service() -> io::Result<TcpListener> {
    TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await
}

/// Serve the echo service bound by [`bind_echo_service`] until `shutdown`; its
/// connections go on `tracker`.
pub fn serve_echo_service(
    listener: TcpListener,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let conns = tracker.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = shutdown.cancelled() => break,
            };
            let Ok((mut stream, _)) = accepted else {
                continue;
            };
            let stop = shutdown.clone();
            conns.spawn(async move {
                let _ = stream.set_nodelay(true);
                let (mut r, mut w) = stream.split();
                tokio::select! {
                    _ = tokio::io::copy(&mut r, &mut w) => { let _ = w.shutdown().await; }
                    () = stop.cancelled() => {}
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backend_sockets_get_keepalive_and_user_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = SocketOptions {
            keepalive: Some(Duration::from_secs(7)),
            user_timeout: Some(Duration::from_secs(11)),
        };
        let stream = connect(listener.local_addr().unwrap(), &options)
            .await
            .unwrap();
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(11))
        );
        let plain = connect(listener.local_addr().unwrap(), &SocketOptions::default())
            .await
            .unwrap();
        assert!(!socket2::SockRef::from(&plain).keepalive().unwrap());
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}

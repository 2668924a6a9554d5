//! Dialing backends under a timeout, and the built-in echo service.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::BackendAddr;
use crate::error::RejectError;

/// A connected backend. An enum, not a TCP stream, so TLS and WebSocket backends can join it.
#[derive(Debug)]
pub enum Backend {
    Tcp(TcpStream),
}

/// Turns a route's backend address into a connection.
#[derive(Debug, Clone)]
pub struct Dialer {
    pub connect_timeout: Duration,
    /// Where the built-in echo service listens, when a route uses it.
    pub echo_addr: Option<SocketAddr>,
}

impl Dialer {
    /// Dial under the connect timeout: refused → 502, timeout → 504.
    pub async fn dial(&self, addr: &BackendAddr) -> Result<Backend, RejectError> {
        let connect = async {
            match addr {
                BackendAddr::Tcp { host, port } => TcpStream::connect((host.as_str(), *port)).await,
                BackendAddr::BuiltinEcho => match self.echo_addr {
                    Some(a) => TcpStream::connect(a).await,
                    None => Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "echo service not started",
                    )),
                },
            }
        };
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| RejectError::BackendTimeout)?
            .map_err(|e| match e.kind() {
                io::ErrorKind::ConnectionRefused => RejectError::BackendRefused(e),
                _ => RejectError::BackendUnreachable(e),
            })?;
        // Small messages (keystrokes, pongs, RPCs) must not wait for Nagle.
        stream
            .set_nodelay(true)
            .map_err(RejectError::BackendUnreachable)?;
        Ok(Backend::Tcp(stream))
    }
}

/// The built-in TCP echo service behind `builtin:echo`, on a loopback port.
/// It ends with `shutdown`; each connection ends with its client or with `shutdown`.
pub async fn spawn_echo_service(
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
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
    Ok(addr)
}

//! Public listeners: accept with a permit, per-connection span, the PROXY header (behind an
//! L4 load balancer), TLS handshake under a timeout, then hyper's HTTP/1.1 with upgrades or
//! HTTP/2 (`super::h2`, chosen by ALPN or, with `h2c`, by the preface); each request goes to
//! [`super::http::handle`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn, Instrument, Span};

use super::console::Console;
use super::proxy_protocol::{self, Proxied};
use super::shared::{ConnectionSlot, Shared};
use crate::metrics;
use crate::policy::{descriptors, ClientCert, ClientSource, ConnInfo};
use crate::snapshot::{ListenerKey, Snapshot};

/// A bound public listener: its socket, the key its TLS config is found under in each
/// snapshot, and its own stop (a reload that drops it from the config cancels it).
pub struct PublicListener {
    /// Registered with the runtime the accept loop runs on, when it starts: a socket
    /// registered elsewhere would be woken by that other runtime's thread.
    pub listener: std::net::TcpListener,
    pub key: ListenerKey,
    /// Stop accepting; connections already accepted carry on.
    pub stop: CancellationToken,
}

/// Accept until shutdown or `l.stop`. A permit is taken before accepting, so at the limit new
/// clients wait in the kernel's backlog instead of costing us memory. Each connection takes
/// the snapshot current when it is accepted: a new TLS client meets the latest certificate.
pub async fn accept_loop(l: PublicListener, permits: Arc<Semaphore>, shared: Arc<Shared>) {
    let listener = match TcpListener::from_std(l.listener) {
        Ok(listener) => listener,
        Err(e) => {
            error!(listener = %l.key, error = %e, "listener not served: registering its socket failed");
            return;
        }
    };
    // The console of the snapshot it was built from, rebuilt when a reload swaps it.
    let mut console: Option<(Arc<Snapshot>, Option<Arc<Console>>)> = None;
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = shared.shutdown.cancelled() => break,
            () = l.stop.cancelled() => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shared.shutdown.cancelled() => break,
            () = l.stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the listener stays up.
                if let Some(wait) = descriptors::after_accept_error(&e, "accept") {
                    tokio::time::sleep(wait).await;
                }
                continue;
            }
        };
        let snapshot = shared.snapshot.load_full();
        // Between a reload's swap and its stopping this listener, the new snapshot lacks it.
        let Some(tls) = snapshot.listener_tls(l.key) else {
            break;
        };
        let tls = tls.map(TlsAcceptor::from);
        let page = match &console {
            Some((built_from, page)) if Arc::ptr_eq(built_from, &snapshot) => page.clone(),
            _ => {
                let page = console_of(&snapshot, l.key);
                console = Some((snapshot.clone(), page.clone()));
                page
            }
        };
        // `peer` is the socket's; `client` is recorded when a trusted balancer names another.
        let span = tracing::info_span!("conn", %peer, client = tracing::field::Empty, session = tracing::field::Empty, route = tracing::field::Empty, user = tracing::field::Empty, backend = tracing::field::Empty);
        // This listener's trust rules as the current snapshot has them.
        let Some(trust) = snapshot.listener_trust(l.key) else {
            break;
        };
        let h2c = snapshot.listener_config(l.key).is_some_and(|c| c.h2c);
        let local = stream.local_addr().unwrap_or(peer);
        let conn = ConnInfo {
            trust_forwarded: trust.forwarded_headers.clone(),
            host_check: snapshot.host_check(l.key),
            ..ConnInfo::direct(peer, local, tls.is_some())
        };
        let proxy = trust.proxy_protocol.as_ref().map(|t| t.contains(peer.ip()));
        shared.tracker.spawn(
            connection(
                stream,
                Front {
                    proxy,
                    tls,
                    h2c,
                    console: page,
                },
                conn,
                permit,
                snapshot,
                shared.clone(),
            )
            .instrument(span),
        );
    }
}

/// How many connections may wait in each listening socket's accept queue (tokio's and
/// mio's value for `TcpListener::bind`; the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 1024;

/// Bind `address` as `count` listening sockets. Several (the per-core mode, one per worker)
/// share the address through `SO_REUSEPORT`, and the kernel spreads new connections over
/// them; port 0 binds the first socket to a free port and the others to the same one.
pub fn bind(address: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut sockets = Vec::with_capacity(count);
    let mut address = address;
    for _ in 0..count.max(1) {
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        // As tokio's TcpListener::bind does: a restart may bind while old connections sit
        // in TIME_WAIT.
        #[cfg(unix)]
        socket.set_reuse_address(true)?;
        #[cfg(target_os = "linux")]
        if count > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&address.into())?;
        socket.listen(BACKLOG)?;
        let listener = std::net::TcpListener::from(socket);
        address = listener.local_addr()?;
        sockets.push(listener);
    }
    Ok(sockets)
}

/// The browser console of listener `key` in `snapshot`, when that listener serves it.
fn console_of(snapshot: &Snapshot, key: ListenerKey) -> Option<Arc<Console>> {
    let l = snapshot.listener_config(key)?;
    l.console.then(|| {
        Arc::new(Console::new(
            snapshot.config.routes.iter().map(|r| r.path.as_str()),
        ))
    })
}

/// What a connection meets before HTTP, as its listener is configured in the snapshot
/// current when it was accepted.
struct Front {
    /// `None` on a listener without `proxy_protocol`, else whether the peer is trusted.
    proxy: Option<bool>,
    tls: Option<TlsAcceptor>,
    /// Plain listeners: accept HTTP/2 with prior knowledge too.
    h2c: bool,
    console: Option<Arc<Console>>,
}

async fn connection(
    mut stream: TcpStream,
    Front {
        proxy,
        tls,
        h2c,
        console,
    }: Front,
    mut conn: ConnInfo,
    permit: OwnedSemaphorePermit,
    snapshot: Arc<Snapshot>,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    let permit = Arc::new(ConnectionSlot::open(permit));
    if let Some(trusted) = proxy {
        // Before TLS, under the header timeout: a silent peer costs a slot for that long only.
        let read = tokio::select! {
            r = tokio::time::timeout(snapshot.header_read_timeout, proxy_protocol::read(&mut stream, trusted)) => r,
            () = shared.shutdown.cancelled() => return,
        };
        match read {
            Ok(Ok(Proxied::Client {
                source,
                destination,
            })) => {
                conn.peer = source;
                conn.local = destination;
                conn.source = ClientSource::ProxyProtocol;
                Span::current().record("client", tracing::field::display(source));
            }
            Ok(Ok(Proxied::Local | Proxied::Direct)) => {}
            Ok(Err(e)) => {
                metrics::proxy_header_refused(e.label());
                if matches!(
                    e,
                    proxy_protocol::Refused::Closed | proxy_protocol::Refused::Io(_)
                ) {
                    debug!(error = %e, "connection closed");
                } else {
                    warn!(error = %e, "connection refused");
                }
                return;
            }
            Err(_) => {
                metrics::proxy_header_refused("timeout");
                debug!("PROXY header timed out");
                return;
            }
        }
    }
    // One address may hold `max_connections_per_ip` of the slots; a balancer whose
    // forwarded headers name its clients carries many and is capped per session instead.
    let forwarding = conn
        .trust_forwarded
        .as_ref()
        .is_some_and(|t| t.proxies.contains(conn.tcp_peer.ip()));
    if !forwarding {
        match snapshot.admission.admit_connection(conn.peer.ip()) {
            Some(slot) => permit.hold_address(slot),
            None => {
                metrics::connection_refused("ip_limit");
                debug!("connection closed: max_connections_per_ip reached for its address");
                return;
            }
        }
    }
    match tls {
        None if h2c
            && super::h2::opens_with_preface(&stream, snapshot.header_read_timeout).await =>
        {
            super::h2::serve(stream, console, conn, permit, &snapshot, shared).await
        }
        None => serve_http(stream, console, conn, permit, &snapshot, shared).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                r = tokio::time::timeout(snapshot.tls_handshake_timeout, acceptor.accept(stream)) => r,
                () = shared.shutdown.cancelled() => return,
            };
            match handshake {
                Ok(Ok(stream)) => {
                    let conn = ConnInfo {
                        client_cert: ClientCert::of_connection(stream.get_ref().1),
                        sni: stream
                            .get_ref()
                            .1
                            .server_name()
                            .map(|n| n.to_ascii_lowercase().into()),
                        ..conn
                    };
                    // The ALPN list came from the snapshot this connection was accepted
                    // under, so `http2 = false` after a reload stops new h2 connections.
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        super::h2::serve(stream, console, conn, permit, &snapshot, shared).await
                    } else {
                        serve_http(stream, console, conn, permit, &snapshot, shared).await
                    }
                }
                Ok(Err(e)) => {
                    metrics::tls_handshake_failed();
                    debug!(error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    metrics::tls_handshake_failed();
                    debug!("TLS handshake timed out");
                }
            }
        }
    }
}

/// HTTP on one connection. Its timeouts and header limit come from the snapshot it was
/// accepted under; each request takes the current snapshot for its route and checks.
async fn serve_http<IO>(
    io: IO,
    console: Option<Arc<Console>>,
    conn: ConnInfo,
    permit: Arc<ConnectionSlot>,
    snapshot: &Snapshot,
    shared: Arc<Shared>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = super::http::connection_service(console, conn, permit, shared.clone());
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(snapshot.header_read_timeout)
        // Over it hyper answers 431 and closes (its default is ~400 KiB and 100 headers).
        .max_header_size(snapshot.max_header_bytes)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    // At shutdown: finish the request in flight (its upgrade included), then close.
    let served =
        super::graceful::serve_until_shutdown(conn.as_mut(), |c| c.graceful_shutdown(), &shared);
    let Some(result) = served.await else {
        return;
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
    }
}

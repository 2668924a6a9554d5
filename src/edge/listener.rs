//! Public listeners: accept with a permit, per-connection span, the PROXY header (behind an
//! L4 load balancer), TLS handshake under a timeout, then hyper's HTTP/1.1 with upgrades or
//! HTTP/2 (`super::h2`, chosen by ALPN or, with `h2c`, by the preface); each request goes to
//! [`super::http::handle`].

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, warn, Instrument, Span};

use super::console::Console;
use super::proxy_protocol::{self, Proxied};
use super::shared::{ConnectionSlot, Shared};
use crate::metrics;
use crate::policy::{ClientCert, ClientSource, ConnInfo, ListenerTrust};

/// A bound public listener and, for `wss`, its TLS acceptor.
pub struct PublicListener {
    pub listener: TcpListener,
    pub tls: Option<TlsAcceptor>,
    /// Plain listeners: accept HTTP/2 with prior knowledge too.
    pub h2c: bool,
    /// The browser console, when this listener serves it.
    pub console: Option<Arc<Console>>,
    /// Which load balancers' word about the client it takes.
    pub trust: ListenerTrust,
}

/// Accept until shutdown. A permit is taken before accepting, so at the limit new
/// clients wait in the kernel's backlog instead of costing us memory.
pub async fn accept_loop(l: PublicListener, permits: Arc<Semaphore>, shared: Arc<Shared>) {
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = shared.shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            r = l.listener.accept() => r,
            () = shared.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the listener stays up.
                error!(error = %e, "accept failed; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // `peer` is the socket's; `client` is recorded when a trusted balancer names another.
        let span = tracing::info_span!("conn", %peer, client = tracing::field::Empty, route = tracing::field::Empty, user = tracing::field::Empty, backend = tracing::field::Empty);
        let tls = l.tls.clone();
        let h2c = l.h2c;
        let console = l.console.clone();
        let local = stream.local_addr().unwrap_or(peer);
        let conn = ConnInfo {
            trust_forwarded: l.trust.forwarded_headers.clone(),
            ..ConnInfo::direct(peer, local, tls.is_some())
        };
        let proxy = l
            .trust
            .proxy_protocol
            .as_ref()
            .map(|t| t.contains(peer.ip()));
        shared.tracker.spawn(
            connection(
                stream,
                tls,
                h2c,
                console,
                proxy,
                conn,
                permit,
                shared.clone(),
            )
            .instrument(span),
        );
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// `proxy`: `None` on a listener without `proxy_protocol`, else whether the peer is trusted.
// One connection's whole setting, passed down once from the accept loop.
#[allow(clippy::too_many_arguments)]
async fn connection(
    mut stream: TcpStream,
    tls: Option<TlsAcceptor>,
    h2c: bool,
    console: Option<Arc<Console>>,
    proxy: Option<bool>,
    mut conn: ConnInfo,
    permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    let permit = Arc::new(ConnectionSlot::open(permit));
    if let Some(trusted) = proxy {
        // Before TLS, under the header timeout: a silent peer costs a slot for that long only.
        let read = tokio::select! {
            r = tokio::time::timeout(shared.snapshot.header_read_timeout, proxy_protocol::read(&mut stream, trusted)) => r,
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
    match tls {
        None if h2c
            && super::h2::opens_with_preface(&stream, shared.snapshot.header_read_timeout)
                .await =>
        {
            super::h2::serve(stream, console, conn, permit, shared).await
        }
        None => serve_http(stream, console, conn, permit, shared).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                r = tokio::time::timeout(shared.snapshot.tls_handshake_timeout, acceptor.accept(stream)) => r,
                () = shared.shutdown.cancelled() => return,
            };
            match handshake {
                Ok(Ok(stream)) => {
                    let conn = ConnInfo {
                        client_cert: ClientCert::of_connection(stream.get_ref().1),
                        ..conn
                    };
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        super::h2::serve(stream, console, conn, permit, shared).await
                    } else {
                        serve_http(stream, console, conn, permit, shared).await
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

async fn serve_http<IO>(
    io: IO,
    console: Option<Arc<Console>>,
    conn: ConnInfo,
    permit: Arc<ConnectionSlot>,
    shared: Arc<Shared>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let shared = shared.clone();
        service_fn(move |req| {
            // The console answers plain requests for its pages; upgrades go to the routes.
            let page = console.as_ref().and_then(|c| c.answer(&req));
            let (conn, shared, permit) = (conn.clone(), shared.clone(), permit.clone());
            async move {
                match page {
                    Some(page) => Ok(page),
                    None => super::http::handle(req, conn, shared, permit).await,
                }
            }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.snapshot.header_read_timeout)
        // Over it hyper answers 431 and closes (its default is ~400 KiB and 100 headers).
        .max_header_size(shared.snapshot.max_header_bytes)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shared.shutdown.cancelled() => {
            // Finish the request in flight (its upgrade included), then close.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                () = shared.hard_stop.cancelled() => return,
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
    }
}

//! The gateway's lifecycle: bind, accept with permits, serve connections, drain on shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::access::{self, ClientCert};
use crate::backend::{spawn_echo_service, Dialer};
use crate::config::{BackendAddr, Config};
use crate::limits::Admission;
use crate::metrics::{self, ConnectionGuard};
use crate::reader::FrameBudget;
use crate::route::Router;
use crate::{admin, tls};

/// Everything a session needs from the configuration it started with. Immutable and shared:
/// a later config reload makes a new snapshot, and live sessions keep theirs.
#[derive(Debug)]
pub struct Snapshot {
    pub router: Router,
    pub dialer: Dialer,
    pub buffer_bytes: usize,
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    pub close_grace: Duration,
    /// Session caps and handshake rate, shared by every request (src/limits.rs).
    pub admission: Arc<Admission>,
    /// Frame payload bytes all sessions' readers may hold at once (src/reader.rs).
    pub frame_budget: Arc<FrameBudget>,
}

/// What every connection task shares.
pub struct Shared {
    pub snapshot: Arc<Snapshot>,
    /// Cancelled on SIGTERM/SIGINT: stop accepting, close sessions with 1001.
    pub shutdown: CancellationToken,
    /// Cancelled when the drain deadline passes: drop whatever is left.
    pub hard_stop: CancellationToken,
    /// Connections and sessions; the drain waits on it.
    pub tracker: TaskTracker,
    header_read_timeout: Duration,
    tls_handshake_timeout: Duration,
    max_header_bytes: usize,
}

struct PublicListener {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
}

/// A gateway whose sockets are bound; [`Gateway::run`] serves them.
pub struct Gateway {
    config: Config,
    listeners: Vec<PublicListener>,
    admin: Option<TcpListener>,
}

impl Gateway {
    /// Load TLS material and bind every listener (port 0 picks a free port).
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        tls::install_crypto_provider();
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let tls = match &l.tls {
                Some(t) => Some(TlsAcceptor::from(
                    tls::server_config(t)
                        .with_context(|| format!("TLS for listener {}", l.address))?,
                )),
                None => None,
            };
            let listener = TcpListener::bind(l.address)
                .await
                .with_context(|| format!("binding listener {}", l.address))?;
            listeners.push(PublicListener { listener, tls });
        }
        let admin = match config.admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding admin listener {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            config,
            listeners,
            admin,
        })
    }

    /// Public listeners' addresses, in config order, with `wss` for TLS ones.
    pub fn public_urls(&self) -> Vec<(SocketAddr, &'static str)> {
        self.listeners
            .iter()
            .filter_map(|l| {
                let scheme = if l.tls.is_some() { "wss" } else { "ws" };
                l.listener.local_addr().ok().map(|a| (a, scheme))
            })
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serve until `shutdown` is cancelled, then close every session with 1001 and
    /// drain for up to `shutdown_grace` before returning.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let handle = metrics::install();
        let config = self.config;
        let hard_stop = CancellationToken::new();
        // Helpers (admin, echo, metrics upkeep) outlive the drain and stop after it.
        let aux_stop = CancellationToken::new();
        let aux = TaskTracker::new();

        let needs_echo = config
            .routes
            .iter()
            .any(|r| r.backend == BackendAddr::BuiltinEcho);
        let echo_addr = if needs_echo {
            Some(
                spawn_echo_service(&aux, aux_stop.clone())
                    .await
                    .context("starting the echo service")?,
            )
        } else {
            None
        };
        let snapshot = Arc::new(Snapshot {
            router: Router::new(&config.routes),
            dialer: Dialer {
                connect_timeout: config.backend_connect_timeout,
                echo_addr,
                egress: config.egress.clone(),
            },
            buffer_bytes: config.buffer_bytes,
            ping_interval: config.ping_interval,
            pong_timeout: config.pong_timeout,
            close_grace: config.close_grace,
            admission: Arc::new(Admission::new(&config.admission, &config.routes)),
            frame_budget: FrameBudget::new(config.frame_budget_bytes),
        });
        // Keeps the handshake limiter's memory bounded; stops with the other helpers.
        aux.spawn(snapshot.admission.clone().run_upkeep(aux_stop.clone()));
        let shared = Arc::new(Shared {
            snapshot,
            shutdown: shutdown.clone(),
            hard_stop: hard_stop.clone(),
            tracker: TaskTracker::new(),
            header_read_timeout: config.header_read_timeout,
            tls_handshake_timeout: config.tls_handshake_timeout,
            max_header_bytes: config.max_header_bytes,
        });

        let ready = Arc::new(AtomicBool::new(false));
        if let Some(listener) = self.admin {
            aux.spawn(admin::serve(
                listener,
                handle.clone(),
                ready.clone(),
                aux_stop.clone(),
            ));
        }
        aux.spawn({
            let stop = aux_stop.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = tick.tick() => handle.run_upkeep(),
                        () = stop.cancelled() => break,
                    }
                }
            }
        });

        let permits = Arc::new(Semaphore::new(config.max_connections));
        for l in self.listeners {
            shared
                .tracker
                .spawn(accept_loop(l, permits.clone(), shared.clone()));
        }
        ready.store(true, Ordering::Relaxed);

        shutdown.cancelled().await;
        ready.store(false, Ordering::Relaxed);
        let active = shared.tracker.len();
        info!(
            tasks = active,
            grace_secs = config.shutdown_grace.as_secs_f64(),
            "shutting down: closing sessions with 1001"
        );
        shared.tracker.close();
        if tokio::time::timeout(config.shutdown_grace, shared.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                left = shared.tracker.len(),
                "drain deadline passed: dropping what is left"
            );
            hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), shared.tracker.wait()).await;
        }
        aux_stop.cancel();
        aux.close();
        aux.wait().await;
        info!("shutdown complete");
        Ok(())
    }
}

/// Accept until shutdown. A permit is taken before accepting, so at the limit new
/// clients wait in the kernel's backlog instead of costing us memory.
async fn accept_loop(l: PublicListener, permits: Arc<Semaphore>, shared: Arc<Shared>) {
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
        let span = tracing::info_span!("conn", %peer, route = tracing::field::Empty, user = tracing::field::Empty, backend = tracing::field::Empty);
        let tls = l.tls.clone();
        let conn = ConnInfo {
            peer,
            tls: tls.is_some(),
            client_cert: None,
        };
        shared
            .tracker
            .spawn(connection(stream, tls, conn, permit, shared.clone()).instrument(span));
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

/// A client connection's place under `max_connections`, and its count in
/// `wsgate_connections_active`. Shared by the HTTP connection and the session it
/// upgrades to, so both last until the session ends.
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    _gauge: ConnectionGuard,
}

/// What a request handler knows of its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The client came over TLS (`wss`).
    pub tls: bool,
    /// The client certificate the listener verified (mTLS), if one was sent.
    pub client_cert: Option<Arc<ClientCert>>,
}

async fn connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    conn: ConnInfo,
    permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    let permit = Arc::new(ConnectionSlot {
        _permit: permit,
        _gauge: ConnectionGuard::open(),
    });
    match tls {
        None => serve_http(stream, conn, permit, shared).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                r = tokio::time::timeout(shared.tls_handshake_timeout, acceptor.accept(stream)) => r,
                () = shared.shutdown.cancelled() => return,
            };
            match handshake {
                Ok(Ok(stream)) => {
                    let conn = ConnInfo {
                        client_cert: access::client_cert(stream.get_ref().1),
                        ..conn
                    };
                    serve_http(stream, conn, permit, shared).await
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

async fn serve_http<IO>(io: IO, conn: ConnInfo, permit: Arc<ConnectionSlot>, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let shared = shared.clone();
        service_fn(move |req| {
            crate::http::handle(req, conn.clone(), shared.clone(), permit.clone())
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.header_read_timeout)
        // Over it hyper answers 431 and closes (its default is ~400 KiB and 100 headers).
        .max_header_size(shared.max_header_bytes)
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

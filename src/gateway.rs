//! The gateway's lifecycle: build the snapshot, bind every listener, serve the public
//! listeners (`edge`) and the admin listener (`ops`), and on shutdown drain with a deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backend::pool::Pool;
use crate::backend::{bind_echo_service, serve_echo_service};
use crate::config::Config;
use crate::edge::console::Console;
use crate::edge::{accept_loop, PublicListener, Shared};
use crate::metrics;
use crate::ops::admin;
use crate::ops::api::{redact, ApiSettings, OpsApi, RouteSummary};
use crate::policy::access::decode_sha256_hex;
use crate::session::registry::Registry;
use crate::snapshot::Snapshot;

/// A gateway whose sockets are bound; [`Gateway::run`] serves them.
pub struct Gateway {
    snapshot: Arc<Snapshot>,
    listeners: Vec<PublicListener>,
    admin: Option<TcpListener>,
    /// The built-in echo service's listener, when a route uses it.
    echo: Option<TcpListener>,
    /// The admin API's view of the config (checked at bind: a bad digest fails here).
    api_settings: ApiSettings,
}

impl Gateway {
    /// Build the snapshot (certificates, keys, token files, JWT keys) and bind every
    /// listener (port 0 picks a free port).
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        // Before the snapshot: pools register their gauges when built, and a handle taken
        // before the recorder exists would be a no-op forever.
        metrics::install();
        let echo = if Snapshot::needs_echo(&config) {
            Some(
                bind_echo_service()
                    .await
                    .context("starting the echo service")?,
            )
        } else {
            None
        };
        let echo_addr = echo.as_ref().and_then(|l| l.local_addr().ok());
        let snapshot = Snapshot::build(config, echo_addr)?;
        let mut listeners = Vec::with_capacity(snapshot.config.listeners.len());
        for ((l, tls), trust) in snapshot
            .config
            .listeners
            .iter()
            .zip(&snapshot.listener_tls)
            .zip(&snapshot.listener_trust)
        {
            let listener = TcpListener::bind(l.address)
                .await
                .with_context(|| format!("binding listener {}", l.address))?;
            let console = l.console.then(|| {
                Arc::new(Console::new(
                    snapshot.config.routes.iter().map(|r| r.path.as_str()),
                ))
            });
            listeners.push(PublicListener {
                listener,
                tls: tls.clone().map(TlsAcceptor::from),
                h2c: l.h2c,
                console,
                trust: trust.clone(),
            });
        }
        let admin = match snapshot.config.admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding admin listener {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            api_settings: api_settings(&snapshot)?,
            snapshot: Arc::new(snapshot),
            listeners,
            admin,
            echo,
        })
    }

    /// The snapshot the gateway serves.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
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
        let snapshot = self.snapshot;
        metrics::register(snapshot.routes.iter().map(|r| &r.name));
        let shutdown_grace = snapshot.config.shutdown_grace;
        let hard_stop = CancellationToken::new();
        // Helpers (admin, echo, metrics upkeep) outlive the drain and stop after it.
        let aux_stop = CancellationToken::new();
        let aux = TaskTracker::new();
        if let Some(echo) = self.echo {
            serve_echo_service(echo, &aux, aux_stop.clone());
        }
        // Keeps the handshake limiter's memory bounded; stops with the other helpers.
        aux.spawn(snapshot.admission.clone().run_upkeep(aux_stop.clone()));
        // Active health checks, one task per pool that has them; each also ends when a
        // reload drops its pool.
        for pool in snapshot.pools() {
            if pool.check_interval().is_some() {
                aux.spawn(Pool::run_checks(Arc::downgrade(pool), aux_stop.clone()));
            }
        }
        let permits = Arc::new(Semaphore::new(snapshot.config.max_connections));
        let registry = Arc::new(Registry::default());
        let shared = Arc::new(Shared {
            snapshot,
            shutdown: shutdown.clone(),
            hard_stop: hard_stop.clone(),
            tracker: TaskTracker::new(),
            registry: registry.clone(),
        });

        let ready = Arc::new(AtomicBool::new(false));
        if let Some(listener) = self.admin {
            let api = Arc::new(OpsApi::new(
                registry,
                self.api_settings,
                aux.clone(),
                aux_stop.clone(),
            ));
            aux.spawn(api.clone().run_sampler());
            aux.spawn(admin::serve(
                listener,
                handle.clone(),
                ready.clone(),
                api,
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
            grace_secs = shutdown_grace.as_secs_f64(),
            "shutting down: closing sessions with 1001"
        );
        shared.tracker.close();
        if tokio::time::timeout(shutdown_grace, shared.tracker.wait())
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

/// What the admin API needs from the snapshot: the token digest, the routes, the running
/// config with secrets redacted, the default drain grace.
fn api_settings(snapshot: &Snapshot) -> anyhow::Result<ApiSettings> {
    let config = &snapshot.config;
    let token_sha256 = match &config.admin_bearer_sha256 {
        Some(hex) => {
            Some(decode_sha256_hex(hex).context("admin.bearer_sha256: not a SHA-256 digest")?)
        }
        None => None,
    };
    let mut config_json = serde_json::json!({
        "listener": config.listeners,
        "admin": config.admin.map(|address| serde_json::json!({
            "address": address,
            "bearer_sha256": config.admin_bearer_sha256,
        })),
        "timeouts": {
            "tls_handshake_secs": config.tls_handshake_timeout.as_secs_f64(),
            "header_read_secs": config.header_read_timeout.as_secs_f64(),
            "backend_connect_secs": config.backend_connect_timeout.as_secs_f64(),
            "ping_interval_secs": config.ping_interval.map_or(0.0, |d| d.as_secs_f64()),
            "pong_timeout_secs": config.pong_timeout.as_secs_f64(),
            "close_grace_secs": config.close_grace.as_secs_f64(),
            "shutdown_grace_secs": config.shutdown_grace.as_secs_f64(),
            "drain_grace_secs": config.drain_grace.as_secs_f64(),
        },
        "limits": config.limits,
        "route": config.routes,
        "egress": config.egress,
        "runtime": { "worker_threads": config.worker_threads },
    });
    redact(&mut config_json);
    Ok(ApiSettings {
        token_sha256,
        routes: snapshot
            .routes
            .iter()
            .map(|r| RouteSummary {
                name: r.name.clone(),
                path: r.path.to_string(),
            })
            .collect(),
        config_json,
        drain_grace: config.drain_grace,
    })
}

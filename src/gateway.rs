//! The gateway's lifecycle: build the snapshot, bind every listener, serve the public
//! listeners (`edge`) and the admin listener (`ops`), apply reloads (new snapshot, listeners
//! added and removed), and on shutdown drain with a deadline. The start-up steps are in
//! `gateway/start.rs`, applying a reload in `gateway/reconfigure.rs`.

mod reconfigure;
mod start;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backend::health::RouteState;
use crate::backend::{bind_echo_service, serve_echo_service};
use crate::config::{Config, RuntimeMode};
use crate::edge::{workers, Shared, Workers};
use crate::metrics;
use crate::ops::api::ApiSettings;
use crate::ops::reload::{self, config_hash, Applied, ReloadHandle, ReloadRequests};
use crate::policy::descriptors;
use crate::session::registry::Registry;
use crate::snapshot::{ListenerKey, Snapshot};
use reconfigure::{watch_setting, Reconfigure};
use start::{
    api_settings, bind_public, descriptor_budget, register_metrics, spawn_checks,
    spawn_key_refreshers, spawn_upkeep, start_acme, start_admin, start_listener, AdminParts,
};

/// A gateway whose sockets are bound; [`Gateway::run`] serves them.
pub struct Gateway {
    snapshot: Arc<Snapshot>,
    source: Source,
    hash: String,
    /// Each public listener's sockets: one, or one per worker in the per-core mode.
    listeners: Vec<(ListenerKey, Vec<std::net::TcpListener>)>,
    /// The per-core mode's number of workers; `None` in the shared mode.
    workers: Option<usize>,
    admin: Option<TcpListener>,
    /// The built-in echo service's listener, when a route uses it.
    echo: Option<TcpListener>,
    reload: ReloadHandle,
    requests: ReloadRequests,
    bound: BoundListeners,
    /// The admin API's view of the config (checked at bind: a bad digest fails here).
    api_settings: ApiSettings,
}

/// Where a reload reads the config from.
#[derive(Clone)]
enum Source {
    /// A file, read again on every reload.
    File(PathBuf),
    /// A config given in memory (quick mode, the embedded default): a reload rebuilds the
    /// snapshot from it, which reads the certificates and keys again.
    Fixed(Box<Config>),
}

impl Source {
    fn load(&self) -> anyhow::Result<(Config, String)> {
        match self {
            Self::File(path) => read_config(path),
            Self::Fixed(config) => Ok((
                (**config).clone(),
                config_hash(format!("{config:?}").as_bytes()),
            )),
        }
    }

    fn watched_files(&self, config: &Config) -> Vec<PathBuf> {
        match self {
            Self::File(path) => std::iter::once(path.clone())
                .chain(config.watched_files())
                .collect(),
            Self::Fixed(_) => config.watched_files(),
        }
    }
}

/// Read, parse and validate a config file, and hash the bytes that were read.
fn read_config(path: &Path) -> anyhow::Result<(Config, String)> {
    // Relative paths in it follow the file's folder, as `wsgate check` reads them.
    let (config, text) = Config::load_with_text(path)?;
    Ok((config, config_hash(text.as_bytes())))
}

/// The public listeners' bound addresses, kept current across reloads.
#[derive(Clone, Default)]
pub struct BoundListeners(Arc<Mutex<Vec<Bound>>>);

/// A public listener's key, bound address and scheme (`ws` or `wss`).
type Bound = (ListenerKey, SocketAddr, &'static str);

impl BoundListeners {
    /// Each public listener's address, in config order, with `wss` for TLS ones.
    pub fn urls(&self) -> Vec<(SocketAddr, &'static str)> {
        let bound = self.0.lock().unwrap_or_else(|e| e.into_inner());
        bound
            .iter()
            .map(|(_, addr, scheme)| (*addr, *scheme))
            .collect()
    }

    fn set(&self, snapshot: &Snapshot, addrs: &HashMap<ListenerKey, SocketAddr>) {
        let list = snapshot
            .listeners
            .iter()
            .filter_map(|(key, tls)| {
                let scheme = if tls.is_some() { "wss" } else { "ws" };
                addrs.get(key).map(|a| (*key, *a, scheme))
            })
            .collect();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = list;
    }
}

impl Gateway {
    /// Build the snapshot (certificates, keys, token files, JWT keys) and bind every
    /// listener (port 0 picks a free port). A reload rebuilds from this same config.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let hash = config_hash(format!("{config:?}").as_bytes());
        Self::bind_source(Source::Fixed(Box::new(config.clone())), config, hash).await
    }

    /// [`Gateway::bind`] from a config file, which a reload reads again.
    pub async fn bind_file(path: &Path) -> anyhow::Result<Self> {
        let (config, hash) = read_config(path)?;
        Self::bind_source(Source::File(path.to_path_buf()), config, hash).await
    }

    async fn bind_source(source: Source, config: Config, hash: String) -> anyhow::Result<Self> {
        // Before the snapshot: pools register their gauges when built, and a handle taken
        // before the recorder exists would be a no-op forever.
        metrics::install();
        // Before the snapshot: its session cap is what the descriptor limit leaves.
        descriptors::init();
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
        let workers = match config.runtime_mode {
            RuntimeMode::Shared => None,
            RuntimeMode::PerCore => Some(workers::count(config.worker_threads)),
        };
        let snapshot = Snapshot::build(config, echo_addr)?;
        // JWT key sets before the first client: a failure is logged and retried later.
        snapshot.fetch_keys().await;
        let mut listeners = Vec::with_capacity(snapshot.listeners.len());
        let mut addrs = HashMap::new();
        for (key, _) in &snapshot.listeners {
            let sockets = bind_public(*key, workers.unwrap_or(1))?;
            addrs.insert(*key, sockets[0].local_addr()?);
            listeners.push((*key, sockets));
        }
        let bound = BoundListeners::default();
        bound.set(&snapshot, &addrs);
        let admin = match snapshot.config.admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding admin listener {addr}"))?,
            ),
            None => None,
        };
        let (reload, requests) = ReloadHandle::channel();
        Ok(Self {
            api_settings: api_settings(&snapshot)?,
            snapshot: Arc::new(snapshot),
            source,
            hash,
            listeners,
            workers,
            admin,
            echo,
            reload,
            requests,
            bound,
        })
    }

    /// The snapshot the gateway starts with.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// Public listeners' addresses, in config order, with `wss` for TLS ones.
    pub fn public_urls(&self) -> Vec<(SocketAddr, &'static str)> {
        self.bound.urls()
    }

    /// The public listeners' addresses as reloads change them.
    pub fn bound_listeners(&self) -> BoundListeners {
        self.bound.clone()
    }

    /// Ask the running gateway for reloads (SIGHUP and the admin endpoint use the same).
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serve until `shutdown` is cancelled, then close every session with 1001 and
    /// drain for up to `shutdown_grace` (of the config running then) before returning.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // First, so that a failure to start them leaves nothing else running.
        let workers = match self.workers {
            Some(n) => Some(Workers::start(n).await?),
            None => None,
        };
        let handle = metrics::install();
        let snapshot = self.snapshot;
        register_metrics(&snapshot);
        let hard_stop = CancellationToken::new();
        // Helpers (admin, echo, metrics upkeep) outlive the drain and stop after it.
        let aux_stop = CancellationToken::new();
        let aux = TaskTracker::new();
        let echo_addr = self.echo.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(echo) = self.echo {
            serve_echo_service(echo, &aux, aux_stop.clone());
        }
        // Active health checks, one task per pool that has them; each also ends when a
        // reload drops its pool.
        spawn_checks(&snapshot, None, &aux, &aux_stop);
        // `[acme]`: its client runs until a reload changes `[acme]` (then a new one starts on
        // the same certificates) or the gateway stops.
        let acme = start_acme(&snapshot, &aux, &aux_stop);
        spawn_key_refreshers(&snapshot, &aux, &aux_stop);
        let permits = Arc::new(Semaphore::new(descriptor_budget(&snapshot.config)));
        let initial = Applied {
            hash: self.hash,
            files: self.source.watched_files(&snapshot.config),
            watch: watch_setting(&snapshot.config, &self.source),
            summary: String::new(),
        };
        info!(
            event = "start",
            hash = %initial.hash,
            listeners = snapshot.listeners.len(),
            routes = snapshot.routes.len(),
            runtime = %snapshot.config.runtime_mode,
            workers = self.workers.unwrap_or(snapshot.config.worker_threads),
            version = env!("CARGO_PKG_VERSION"),
            "gateway starting"
        );
        let registry = Arc::new(Registry::default());
        let routes = Arc::new(RouteState::default());
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::new(snapshot),
            shutdown: shutdown.clone(),
            hard_stop: hard_stop.clone(),
            tracker: TaskTracker::new(),
            registry: registry.clone(),
            routes: routes.clone(),
        });

        let ready = Arc::new(AtomicBool::new(false));
        let api = self.admin.map(|listener| {
            let admin = AdminParts {
                registry,
                routes,
                settings: self.api_settings,
                handle: handle.clone(),
                ready: ready.clone(),
                reload: self.reload.clone(),
            };
            start_admin(listener, admin, &aux, &aux_stop)
        });
        spawn_upkeep(handle, &shared, &aux, &aux_stop);

        let places: Vec<Handle> = workers
            .as_ref()
            .map_or(Vec::new(), |w| w.handles().to_vec());
        let mut running = HashMap::new();
        for (key, sockets) in self.listeners {
            running.insert(
                key,
                start_listener(key, sockets, &places, &permits, &shared),
            );
        }
        // Reloads stop with the shutdown: the drain runs on the config it started with.
        aux.spawn(reload::run(
            self.requests,
            Reconfigure {
                shared: shared.clone(),
                source: self.source,
                running,
                bound: self.bound,
                permits,
                places,
                echo_addr,
                api,
                aux: aux.clone(),
                aux_stop: aux_stop.clone(),
                acme,
            },
            initial,
            shutdown.clone(),
        ));
        ready.store(true, Ordering::Relaxed);

        shutdown.cancelled().await;
        ready.store(false, Ordering::Relaxed);
        drain(&shared, &hard_stop).await;
        if let Some(workers) = workers {
            // Their accept loops and sessions have ended (or are dropped now).
            workers.stop().await;
        }
        aux_stop.cancel();
        aux.close();
        aux.wait().await;
        info!(event = "shutdown", "shutdown complete");
        Ok(())
    }
}

/// The drain: close every session with 1001 and wait up to `shutdown_grace` (of the config
/// running now); past it, stop what is left without waiting for close handshakes.
async fn drain(shared: &Shared, hard_stop: &CancellationToken) {
    let shutdown_grace = shared.snapshot.load().config.shutdown_grace;
    let active = shared.tracker.len();
    info!(
        event = "shutdown",
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
            event = "shutdown",
            left = shared.tracker.len(),
            "drain deadline passed: dropping what is left"
        );
        hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), shared.tracker.wait()).await;
    }
}

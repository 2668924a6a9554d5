//! The gateway's lifecycle: build the snapshot, bind every listener, serve the public
//! listeners (`edge`) and the admin listener (`ops`), apply reloads (new snapshot, listeners
//! added and removed), and on shutdown drain with a deadline.

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

use crate::backend::pool::Pool;
use crate::backend::{bind_echo_service, serve_echo_service};
use crate::config::{AcmeConfig, Config, RuntimeMode};
use crate::edge::proxy_protocol::Refused;
use crate::edge::{accept_loop, listener, workers, PublicListener, Shared, Workers};
use crate::http_util::decode_sha256_hex;
use crate::metrics;
use crate::ops::admin;
use crate::ops::api::{redact, ApiSettings, OpsApi, RouteSummary};
use crate::ops::reload::{
    self, config_hash, Applied, Apply, ReloadHandle, ReloadRequests, Trigger,
};
use crate::policy::{descriptors, UPKEEP_INTERVAL};
use crate::session::registry::Registry;
use crate::snapshot::{ListenerKey, Snapshot};

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
        let fit = descriptors::fit(&snapshot.config.limits);
        if fit.lowered {
            warn!(
                event = "start",
                nofile = descriptors::limit(),
                reserved = descriptors::RESERVED,
                max_connections = snapshot.config.max_connections,
                max_sessions = snapshot.config.limits.max_sessions,
                connections = fit.connections,
                sessions = fit.sessions,
                "the descriptor limit (RLIMIT_NOFILE) cannot hold max_connections and a backend \
                 socket per session: serving fewer; raise LimitNOFILE (ulimit -n) to at least \
                 max_connections + sessions + reserved"
            );
        } else if let Some(nofile) = descriptors::limit() {
            info!(
                event = "start",
                nofile,
                connections = fit.connections,
                sessions = fit.sessions,
                "descriptor budget"
            );
        }
        let permits = Arc::new(Semaphore::new(fit.connections));
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
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::new(snapshot),
            shutdown: shutdown.clone(),
            hard_stop: hard_stop.clone(),
            tracker: TaskTracker::new(),
            registry: registry.clone(),
        });

        let ready = Arc::new(AtomicBool::new(false));
        let mut api = None;
        if let Some(listener) = self.admin {
            let ops_api = Arc::new(OpsApi::new(
                registry,
                self.api_settings,
                aux.clone(),
                aux_stop.clone(),
            ));
            aux.spawn(ops_api.clone().run_sampler());
            aux.spawn(admin::serve(
                listener,
                handle.clone(),
                ready.clone(),
                ops_api.clone(),
                self.reload.clone(),
                aux_stop.clone(),
            ));
            api = Some(ops_api);
        }
        aux.spawn({
            let stop = aux_stop.clone();
            let shared = shared.clone();
            async move {
                let mut metrics_tick = tokio::time::interval(Duration::from_secs(5));
                // Keeps the handshake limiter's memory bounded, whichever snapshot runs.
                let mut admission_tick = tokio::time::interval(UPKEEP_INTERVAL);
                admission_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = metrics_tick.tick() => handle.run_upkeep(),
                        _ = admission_tick.tick() => shared.snapshot.load().admission.upkeep(),
                        () = stop.cancelled() => break,
                    }
                }
            }
        });

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

/// Bind listener `key` as `sockets` sockets (one per worker in the per-core mode).
fn bind_public(key: ListenerKey, sockets: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    listener::bind(key.address, sockets).with_context(|| format!("binding listener {key}"))
}

/// Accept on `sockets` until shutdown or until a reload removes the listener (the returned
/// token). With `places` (the per-core workers' runtimes), socket i is served on worker i,
/// and everything its accept loop spawns runs there; without, on the calling runtime.
fn start_listener(
    key: ListenerKey,
    sockets: Vec<std::net::TcpListener>,
    places: &[Handle],
    permits: &Arc<Semaphore>,
    shared: &Arc<Shared>,
) -> CancellationToken {
    let stop = CancellationToken::new();
    for (i, listener) in sockets.into_iter().enumerate() {
        let l = PublicListener {
            listener,
            key,
            stop: stop.clone(),
        };
        let task = accept_loop(l, permits.clone(), shared.clone());
        match places.get(i) {
            Some(place) => shared.tracker.spawn_on(task, place),
            None => shared.tracker.spawn(task),
        };
    }
    stop
}

/// Spawn [`Pool::run_checks`] for every pool of `snapshot` with active checks that
/// `previous` does not already run them for.
fn spawn_checks(
    snapshot: &Snapshot,
    previous: Option<&Snapshot>,
    aux: &TaskTracker,
    stop: &CancellationToken,
) {
    for route in &snapshot.routes {
        let Some(pool) = &route.pool else { continue };
        let running = previous.is_some_and(|p| p.pools().any(|q| Arc::ptr_eq(q, pool)));
        if pool.check_interval().is_some() && !running {
            aux.spawn(Pool::run_checks(
                Arc::downgrade(pool),
                snapshot.dialer.clone(),
                route.backend_tls.clone(),
                stop.clone(),
            ));
        }
    }
}

/// Watch files only when running from a file (or from flags naming certificates).
fn watch_setting(config: &Config, source: &Source) -> Option<Duration> {
    let has_files = matches!(source, Source::File(_)) || !config.watched_files().is_empty();
    (config.reload.watch && has_files)
        .then(|| Duration::from_millis(config.reload.watch_debounce_ms))
}

/// What a reload changes in a running gateway.
struct Reconfigure {
    shared: Arc<Shared>,
    source: Source,
    /// Each public listener's stop, by key.
    running: HashMap<ListenerKey, CancellationToken>,
    bound: BoundListeners,
    permits: Arc<Semaphore>,
    /// The per-core workers' runtimes (empty in the shared mode): an added listener gets a
    /// socket on each.
    places: Vec<Handle>,
    echo_addr: Option<SocketAddr>,
    /// The admin API, which shows the running config's routes and settings.
    api: Option<Arc<OpsApi>>,
    aux: TaskTracker,
    aux_stop: CancellationToken,
    /// The running ACME client's `[acme]` and its stop.
    acme: Option<(AcmeConfig, CancellationToken)>,
}

/// Start the ACME client for `snapshot`'s `[acme]` (if any) on its certificate store.
fn start_acme(
    snapshot: &Snapshot,
    aux: &TaskTracker,
    aux_stop: &CancellationToken,
) -> Option<(AcmeConfig, CancellationToken)> {
    let (config, store) = (snapshot.config.acme.as_ref()?, snapshot.acme.as_ref()?);
    let stop = aux_stop.child_token();
    aux.spawn(crate::ops::acme::run(
        config.clone(),
        store.clone(),
        stop.clone(),
    ));
    Some((config.clone(), stop))
}

impl Apply for Reconfigure {
    /// Everything that can fail (reading, validating, certificates, binding new listeners)
    /// happens before the swap; after it nothing fails. Live sessions keep the snapshot they
    /// started with; listeners the new config still has keep their sockets.
    async fn apply(&mut self, trigger: Trigger) -> anyhow::Result<Applied> {
        // File reads and certificate parsing run off the async workers: with one worker
        // thread they would otherwise stall every session for the length of the reload.
        let source = self.source.clone();
        let (config, hash) = blocking(move || source.load()).await?;
        let old = self.shared.snapshot.load_full();
        // A file caught half-written can be valid and open; only an operator's reload may
        // take access control away.
        if trigger == Trigger::FileChange {
            let removed = reload::access_removed(&old.config, &config);
            if !removed.is_empty() {
                anyhow::bail!(
                    "a file change would remove access control ({}); if that is meant, reload \
                     with SIGHUP, `wsgate reload` or POST /reload",
                    removed.join("; ")
                );
            }
        }
        let echo = match self.echo_addr {
            None if Snapshot::needs_echo(&config) => Some(
                bind_echo_service()
                    .await
                    .context("starting the echo service")?,
            ),
            _ => None,
        };
        let echo_addr = self
            .echo_addr
            .or_else(|| echo.as_ref().and_then(|l| l.local_addr().ok()));
        let previous = old.clone();
        let snapshot = blocking(move || Snapshot::succeed(config, echo_addr, &previous)).await?;
        let api_settings = api_settings(&snapshot)?;
        let mut added = Vec::new();
        for (key, _) in &snapshot.listeners {
            if !self.running.contains_key(key) {
                added.push((*key, bind_public(*key, self.places.len().max(1))?));
            }
        }

        let needs_restart = warn_needs_restart(&old.config, &snapshot.config);
        if let Some(echo) = echo {
            serve_echo_service(echo, &self.aux, self.aux_stop.clone());
            self.echo_addr = echo_addr;
        }
        let snapshot = Arc::new(snapshot);
        self.shared.snapshot.store(snapshot.clone());
        register_metrics(&snapshot);
        // Kept pools keep their check task; a dropped pool's task ends with its last Arc.
        spawn_checks(&snapshot, Some(&old), &self.aux, &self.aux_stop);
        // A changed `[acme]`: the old client stops mid-order if it must; the new one keeps the
        // certificates of names it still lists and orders the rest.
        if self.acme.as_ref().map(|(c, _)| c) != snapshot.config.acme.as_ref() {
            if let Some((_, stop)) = self.acme.take() {
                stop.cancel();
            }
            if let (Some(config), Some(store)) = (&snapshot.config.acme, &snapshot.acme) {
                store.retain_names(&config.names);
            }
            self.acme = start_acme(&snapshot, &self.aux, &self.aux_stop);
            info!(event = "reload", "[acme] changed: its client restarted");
        }
        if let Some(api) = &self.api {
            api.update(api_settings);
        }
        let (n_added, mut removed) = (added.len(), 0);
        let mut addrs: HashMap<ListenerKey, SocketAddr> = self
            .bound
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, a, _)| (*k, *a))
            .collect();
        for (key, sockets) in added {
            if let Some(a) = sockets.first().and_then(|l| l.local_addr().ok()) {
                addrs.insert(key, a);
            }
            info!(event = "reload", listener = %key, sockets = sockets.len(), "listener added");
            let stop = start_listener(key, sockets, &self.places, &self.permits, &self.shared);
            self.running.insert(key, stop);
        }
        self.running.retain(|key, stop| {
            let keep = snapshot.listener_tls(*key).is_some();
            if !keep {
                // Stops accepting; its connections and sessions carry on to their end.
                stop.cancel();
                removed += 1;
                info!(event = "reload", listener = %key, "listener removed");
            }
            keep
        });
        self.bound.set(&snapshot, &addrs);
        Ok(Applied {
            hash,
            files: self.source.watched_files(&snapshot.config),
            watch: watch_setting(&snapshot.config, &self.source),
            summary: format!(
                "{} listener(s) ({n_added} added, {removed} removed), {} route(s){}",
                snapshot.listeners.len(),
                snapshot.routes.len(),
                restart_note(&needs_restart)
            ),
        })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("reload task panicked")?
}

/// Settings a reload reads but cannot apply to a running process: each changed one is
/// logged, and returned for the reload's answer.
fn warn_needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.admin != new.admin {
        keys.push("admin.address");
    }
    if old.max_connections != new.max_connections {
        keys.push("limits.max_connections");
    }
    if old.worker_threads != new.worker_threads {
        keys.push("runtime.worker_threads");
    }
    if old.runtime_mode != new.runtime_mode {
        keys.push("runtime.mode");
    }
    if old.log != new.log {
        keys.push("log");
    }
    for key in &keys {
        warn!(
            event = "reload",
            key, "changed, but applies only after a restart; the running value stays"
        );
    }
    keys
}

/// The end of a reload's summary naming the keys that wait for a restart (empty if none).
fn restart_note(keys: &[&str]) -> String {
    if keys.is_empty() {
        return String::new();
    }
    format!(
        "; changed, but applies only after a restart (the running value stays): {}",
        keys.join(", ")
    )
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
            "allowed_hosts": config.admin_allowed_hosts,
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
        "runtime": { "mode": config.runtime_mode, "worker_threads": config.worker_threads },
        "http2": config.http2,
        "reload": config.reload,
        "log": config.log,
    });
    redact(&mut config_json);
    Ok(ApiSettings {
        token_sha256,
        allowed_hosts: config.admin_allowed_hosts.clone(),
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

/// Show at zero every series `snapshot`'s routes and listeners can produce.
fn register_metrics(snapshot: &Snapshot) {
    let listeners = &snapshot.config.listeners;
    let reads_proxy_headers = listeners.iter().any(|l| l.proxy_protocol);
    // udp:// (session::udp): routes whose sessions may carry datagrams.
    let udp_routes: Vec<Arc<str>> = snapshot
        .routes
        .iter()
        .filter(|r| r.backend.may_be_udp())
        .map(|r| r.name.clone())
        .collect();
    let named = |keep: fn(&crate::snapshot::Route) -> bool| -> Vec<Arc<str>> {
        snapshot
            .routes
            .iter()
            .filter(|r| keep(r))
            .map(|r| r.name.clone())
            .collect()
    };
    let record_routes = named(|r| r.session.record.is_some());
    let resume_routes = named(|r| r.session.resume.is_some());
    metrics::register(
        snapshot.routes.iter().map(|r| &r.name),
        &metrics::Registered {
            rejection_reasons: crate::error::RejectError::LABELS,
            h2: listeners
                .iter()
                .any(|l| (l.tls.is_some() && l.http2) || l.h2c),
            proxy_refusals: if reads_proxy_headers {
                Refused::LABELS
            } else {
                &[]
            },
            udp_routes: &udp_routes,
            record_routes: &record_routes,
            resume_routes: &resume_routes,
        },
    );
}

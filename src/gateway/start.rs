//! The start-up steps `Gateway::run` takes in order, each also used by a reload where it
//! applies: the descriptor budget, the admin listener, upkeep, public listeners, health
//! checks, key refreshers, ACME, the admin API's settings and the series at zero.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backend::health::RouteState;
use crate::backend::pool::Pool;
use crate::config::{AcmeConfig, Config};
use crate::edge::proxy_protocol::Refused;
use crate::edge::{accept_loop, listener, PublicListener, Shared};
use crate::http_util::decode_sha256_hex;
use crate::metrics;
use crate::ops::admin;
use crate::ops::api::{ApiSettings, OpsApi, RouteSummary};
use crate::ops::config_view::ConfigView;
use crate::ops::reload::ReloadHandle;
use crate::policy::jwks::KeySet;
use crate::policy::{descriptors, UPKEEP_INTERVAL};
use crate::session::registry::Registry;
use crate::snapshot::{ListenerKey, Snapshot};

/// The connection permits: `max_connections`, lowered (with a warning) when the descriptor
/// limit cannot hold them and a backend socket per session.
pub(super) fn descriptor_budget(config: &Config) -> usize {
    let fit = descriptors::fit(&config.limits);
    if fit.lowered {
        warn!(
            event = "start",
            nofile = descriptors::limit(),
            reserved = descriptors::RESERVED,
            max_connections = config.max_connections,
            max_sessions = config.limits.max_sessions,
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
    fit.connections
}

/// What the admin listener serves besides its socket.
pub(super) struct AdminParts {
    pub(super) registry: Arc<Registry>,
    pub(super) routes: Arc<RouteState>,
    pub(super) settings: ApiSettings,
    pub(super) handle: PrometheusHandle,
    pub(super) ready: Arc<AtomicBool>,
    pub(super) reload: ReloadHandle,
}

/// Serve the admin listener (metrics, health, the API) and its API's sampler on `aux`.
pub(super) fn start_admin(
    listener: TcpListener,
    parts: AdminParts,
    aux: &TaskTracker,
    aux_stop: &CancellationToken,
) -> Arc<OpsApi> {
    let ops_api = Arc::new(OpsApi::new(
        parts.registry,
        parts.routes,
        parts.settings,
        aux.clone(),
        aux_stop.clone(),
    ));
    aux.spawn(ops_api.clone().run_sampler());
    aux.spawn(admin::serve(
        listener,
        parts.handle,
        parts.ready,
        ops_api.clone(),
        parts.reload,
        aux_stop.clone(),
    ));
    ops_api
}

/// The periodic upkeep: the metrics exporter's, and the handshake limiter's (whichever
/// snapshot runs), until `stop`.
pub(super) fn spawn_upkeep(
    handle: PrometheusHandle,
    shared: &Arc<Shared>,
    aux: &TaskTracker,
    stop: &CancellationToken,
) {
    aux.spawn({
        let stop = stop.clone();
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
}

/// Bind listener `key` as `sockets` sockets (one per worker in the per-core mode).
pub(super) fn bind_public(
    key: ListenerKey,
    sockets: usize,
) -> anyhow::Result<Vec<std::net::TcpListener>> {
    listener::bind(key.address, sockets).with_context(|| format!("binding listener {key}"))
}

/// Accept on `sockets` until shutdown or until a reload removes the listener (the returned
/// token). With `places` (the per-core workers' runtimes), socket i is served on worker i,
/// and everything its accept loop spawns runs there; without, on the calling runtime.
pub(super) fn start_listener(
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
pub(super) fn spawn_checks(
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

/// Spawn [`KeySet::run_refresher`] for every JWT key set of `snapshot` without one (a kept
/// set keeps its task; a dropped set's task ends with its last snapshot).
pub(super) fn spawn_key_refreshers(
    snapshot: &Snapshot,
    aux: &TaskTracker,
    stop: &CancellationToken,
) {
    for set in snapshot.key_sets() {
        if set.claim_refresher() {
            aux.spawn(KeySet::run_refresher(Arc::downgrade(set), stop.clone()));
        }
    }
}

/// Start the ACME client for `snapshot`'s `[acme]` (if any) on its certificate store.
pub(super) fn start_acme(
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

/// What the admin API needs from the snapshot: the token digest, the routes, the running
/// config with secrets redacted, the default drain grace.
pub(super) fn api_settings(snapshot: &Snapshot) -> anyhow::Result<ApiSettings> {
    let config = &snapshot.config;
    let token_sha256 = match &config.admin_bearer_sha256 {
        Some(hex) => {
            Some(decode_sha256_hex(hex).context("admin.bearer_sha256: not a SHA-256 digest")?)
        }
        None => None,
    };
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
        config_json: ConfigView::of(config).to_json(),
        drain_grace: config.drain_grace,
    })
}

/// Show at zero every series `snapshot`'s routes and listeners can produce.
pub(super) fn register_metrics(snapshot: &Snapshot) {
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

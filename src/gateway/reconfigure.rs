//! A reload applied to the running gateway: a new snapshot swapped in, listeners added and
//! removed, ACME and the admin API brought in step, and the settings that need a restart
//! named.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::start::{
    api_settings, bind_public, register_metrics, spawn_checks, spawn_key_refreshers, start_acme,
    start_listener,
};
use super::{BoundListeners, Source};
use crate::backend::{bind_echo_service, serve_echo_service};
use crate::config::{AcmeConfig, Config};
use crate::edge::Shared;
use crate::ops::api::OpsApi;
use crate::ops::reload::{self, Applied, Apply, Trigger};
use crate::snapshot::{ListenerKey, Snapshot};

/// Watch files only when running from a file (or from flags naming certificates).
pub(super) fn watch_setting(config: &Config, source: &Source) -> Option<Duration> {
    let has_files = matches!(source, Source::File(_)) || !config.watched_files().is_empty();
    (config.reload.watch && has_files)
        .then(|| Duration::from_millis(config.reload.watch_debounce_ms))
}

/// What a reload changes in a running gateway.
pub(super) struct Reconfigure {
    pub(super) shared: Arc<Shared>,
    pub(super) source: Source,
    /// Each public listener's stop, by key.
    pub(super) running: HashMap<ListenerKey, CancellationToken>,
    pub(super) bound: BoundListeners,
    pub(super) permits: Arc<Semaphore>,
    /// The per-core workers' runtimes (empty in the shared mode): an added listener gets a
    /// socket on each.
    pub(super) places: Vec<Handle>,
    pub(super) echo_addr: Option<SocketAddr>,
    /// The admin API, which shows the running config's routes and settings.
    pub(super) api: Option<Arc<OpsApi>>,
    pub(super) aux: TaskTracker,
    pub(super) aux_stop: CancellationToken,
    /// The running ACME client's `[acme]` and its stop.
    pub(super) acme: Option<(AcmeConfig, CancellationToken)>,
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
        // New JWT key sets are fetched before the swap; kept ones keep their keys.
        snapshot.fetch_keys().await;
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
        spawn_key_refreshers(&snapshot, &self.aux, &self.aux_stop);
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

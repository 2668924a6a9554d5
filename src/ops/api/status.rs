//! The status page's data: totals sampled for its chart, and the one answer it draws from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::sessions::session_json;
use super::{OpsApi, SESSIONS_PAGE};

/// The status page's history: one sample every [`SAMPLE_EVERY`], [`SAMPLES`] kept (5 minutes).
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const SAMPLES: usize = 150;

#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    at: Instant,
    sessions: usize,
    to_backend: u64,
    to_client: u64,
}

impl OpsApi {
    /// Sample the totals for the chart every [`SAMPLE_EVERY`] until `stop`.
    pub async fn run_sampler(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(),
                () = self.stop.cancelled() => break,
            }
        }
    }

    fn sample(&self) {
        let t = self.registry.totals();
        let mut h = self.history();
        if h.len() == SAMPLES {
            h.pop_front();
        }
        h.push_back(Sample {
            at: Instant::now(),
            sessions: t.sessions,
            to_backend: t.bytes_to_backend,
            to_client: t.bytes_to_client,
        });
    }

    fn history(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Everything the status page draws, in one answer.
    pub(super) fn status(&self) -> Value {
        let totals = self.registry.totals();
        let per_route = self.registry.per_route();
        let routes: Vec<Value> = self
            .view
            .load()
            .routes
            .iter()
            .map(|r| {
                let h = self.routes.backend_health(&r.name);
                let ago = |t: Instant| t.elapsed().as_secs_f64();
                json!({
                    "name": &*r.name,
                    "path": r.path,
                    "sessions": per_route.get(&r.name).copied().unwrap_or(0),
                    "draining": self.routes.is_draining(&r.name),
                    "backend": {
                        "state": match (h.consecutive_failures, h.last_ok) {
                            (0, None) => "unknown",
                            (0, Some(_)) => "ok",
                            _ => "failing",
                        },
                        "consecutive_failures": h.consecutive_failures,
                        "last_ok_secs_ago": h.last_ok.map(ago),
                        "last_error": h.last_failure.map(|f| f.1),
                        "last_error_secs_ago": h.last_failure.map(|f| ago(f.0)),
                    },
                })
            })
            .collect();
        let recent = self.registry.recent_closes();
        let mut by_code = BTreeMap::new();
        for c in &recent {
            *by_code.entry(c.code.to_string()).or_insert(0u64) += 1;
        }
        let history = self.history();
        let first = history.front().map(|s| s.at);
        let mut points = Vec::with_capacity(history.len());
        let mut rate = (0.0, 0.0);
        for (prev, s) in history.iter().zip(history.iter().skip(1)) {
            let dt = (s.at - prev.at).as_secs_f64().max(1e-3);
            rate = (
                s.to_backend.saturating_sub(prev.to_backend) as f64 / dt,
                s.to_client.saturating_sub(prev.to_client) as f64 / dt,
            );
            points.push(json!({
                "t": first.map_or(0.0, |f| (s.at - f).as_secs_f64()),
                "sessions": s.sessions,
                "bytes_per_sec": (rate.0 + rate.1).round(),
            }));
        }
        drop(history);
        let list: Vec<Value> = self
            .registry
            .list(0, SESSIONS_PAGE)
            .iter()
            .map(|e| session_json(e))
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "sessions": totals.sessions,
            "bytes": { "to_backend": totals.bytes_to_backend, "to_client": totals.bytes_to_client },
            "bytes_per_sec": { "to_backend": rate.0.round(), "to_client": rate.1.round() },
            "routes": routes,
            "session_list": list,
            "closes_by_code": by_code,
            "recent_closes": recent.iter().map(|c| json!({
                "id": c.id, "route": &*c.route, "code": c.code, "at_unix_ms": c.at_unix_ms,
            })).collect::<Vec<_>>(),
            "history": points,
        })
    }
}

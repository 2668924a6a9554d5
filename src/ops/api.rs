//! The admin listener's session API and live status page: list, inspect, watch and close
//! sessions, drain routes, show the running config; optionally behind a bearer token.
//!
//! `/metrics`, `/healthz` and `/readyz` stay open (scrapers and orchestrators); `/`, `/assets/`,
//! `/api/` and `POST /reload` need the token when `[admin] bearer_sha256` is set, a `Host`
//! naming this listener (DNS rebinding guard, [`OpsApi::refuse`]) and, to change state, no
//! other site's `Origin`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use super::watch::{self, Who};
use crate::backend::health::RouteState;
use crate::http_util::{json as json_response, query_value, text, Body};
use crate::record::watch::NotWatchable;
use crate::session::registry::{is_sendable_close_code, Registry, SessionEntry};

const INDEX_HTML: &str = include_str!("status/index.html");
const STATUS_JS: &str = include_str!("status/status.js");
const STATUS_CSS: &str = include_str!("status/status.css");

/// Same-origin scripts, styles and fetches only; no inline code; never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The cookie a browser gets after opening `/?token=…`, so the page's own requests carry it.
const AUTH_COOKIE: &str = "wsgate_admin";

/// `GET /api/sessions` pages: this many by default, never more than the maximum.
pub const SESSIONS_PAGE: usize = 100;
pub const SESSIONS_PAGE_MAX: usize = 1000;

/// The status page's history: one sample every [`SAMPLE_EVERY`], [`SAMPLES`] kept (5 minutes).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
pub const SAMPLES: usize = 150;

/// Close code for `DELETE /api/sessions/{id}` without `?code=`: policy violation.
pub const DEFAULT_CLOSE_CODE: u16 = 1008;

/// What the API says about a route.
#[derive(Debug, Clone)]
pub struct RouteSummary {
    pub name: Arc<str>,
    pub path: String,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    sessions: usize,
    to_backend: u64,
    to_client: u64,
}

/// Everything the API answers from; one per gateway.
#[derive(Debug)]
pub struct OpsApi {
    registry: Arc<Registry>,
    /// Route drains and backend health.
    routes: Arc<RouteState>,
    /// What the running config says; a reload replaces it ([`OpsApi::update`]).
    view: ArcSwap<View>,
    started: Instant,
    history: Mutex<VecDeque<Sample>>,
    /// Drain timers run here and end with `stop`.
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// The API's settings from the running config.
#[derive(Debug)]
struct View {
    /// SHA-256 of the admin bearer token; `None`: no token needed.
    token_sha256: Option<[u8; 32]>,
    /// `[admin] allowed_hosts`, lower-case.
    allowed_hosts: Vec<String>,
    routes: Vec<RouteSummary>,
    /// The running config as JSON (`ops::config_view`: secrets redacted by their type).
    config_json: Bytes,
    drain_grace: Duration,
}

impl From<ApiSettings> for View {
    fn from(settings: ApiSettings) -> Self {
        Self {
            token_sha256: settings.token_sha256,
            allowed_hosts: settings.allowed_hosts,
            routes: settings.routes,
            config_json: Bytes::from(settings.config_json.to_string()),
            drain_grace: settings.drain_grace,
        }
    }
}

/// Settings of the API taken from the config.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub token_sha256: Option<[u8; 32]>,
    /// `Host` names accepted besides the listener's own address (`[admin] allowed_hosts`).
    pub allowed_hosts: Vec<String>,
    pub routes: Vec<RouteSummary>,
    pub config_json: Value,
    /// How long a drained route's live sessions get before their 1001, unless the request
    /// says `?grace_secs=`.
    pub drain_grace: Duration,
}

impl OpsApi {
    pub fn new(
        registry: Arc<Registry>,
        routes: Arc<RouteState>,
        settings: ApiSettings,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        Self {
            registry,
            routes,
            view: ArcSwap::from_pointee(View::from(settings)),
            started: Instant::now(),
            history: Mutex::default(),
            tasks,
            stop,
        }
    }

    /// Answer from a reloaded config from now on: its routes, config, token and drain grace.
    pub fn update(&self, settings: ApiSettings) {
        self.view.store(Arc::new(View::from(settings)));
    }

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

    /// The refusal of a request that must not be served, checked before any other answer:
    /// `421` for a `Host` that does not name this listener (`local`, the address the
    /// connection arrived at) or an `[admin] allowed_hosts` entry, so a web page whose name
    /// was rebound to this address is not served; for `/reload`, `401` without the admin
    /// token and `403` from another origin. Only the paths that show or change state are
    /// guarded (the page, `/assets/`, `/api/`, `/reload`): `/metrics`, `/healthz` and
    /// `/readyz` answer any `Host`, since scrapers and probes reach them by names the gateway
    /// cannot know, and they change nothing.
    pub fn refuse<B>(&self, req: &Request<B>, local: Option<SocketAddr>) -> Option<Response<Body>> {
        let path = req.uri().path();
        let guarded = path == "/"
            || path == "/reload"
            || path.starts_with("/assets/")
            || path.starts_with("/api/");
        if !guarded {
            return None;
        }
        let host = req
            .headers()
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or("\u{0}"));
        if let Some(host) = host {
            if !host_allowed(host, local, &self.view.load().allowed_hosts) {
                info!(
                    host = %crate::logsafe::Escaped(host),
                    path = %crate::logsafe::Escaped(path),
                    "admin request refused: its Host names neither this listener nor an [admin] allowed_hosts entry"
                );
                return Some(text(
                    StatusCode::MISDIRECTED_REQUEST,
                    "this Host is not a name of the admin listener; add it to [admin] allowed_hosts\n",
                ));
            }
        }
        if path == "/reload" {
            if !self.authorized(req) {
                return Some(unauthorized());
            }
            if !same_origin(req) {
                return Some(text(
                    StatusCode::FORBIDDEN,
                    "cross-origin request refused\n",
                ));
            }
        }
        None
    }

    /// The answer for a request this module serves, or `None` (the caller's 404 and the
    /// `/metrics` family).
    pub fn answer<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        let path = req.uri().path();
        let ours = path == "/" || path.starts_with("/assets/") || path.starts_with("/api/");
        // The admin listener routes no WebSockets: an upgrade gets the plain 404.
        if !ours || req.headers().contains_key(header::UPGRADE) {
            return None;
        }
        let mut response = self.route(req, path);
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
        Some(response)
    }

    fn route<B>(&self, req: &Request<B>, path: &str) -> Response<Body> {
        let method = req.method();
        // A page opened as `/?token=…` trades the token for a cookie, then drops it from the URL.
        if method == Method::GET && path == "/" {
            if let Some(token) = query_value(req.uri().query(), "token") {
                return self.login(&token);
            }
        }
        if !self.authorized(req) {
            return unauthorized();
        }
        if method != Method::GET && !same_origin(req) {
            return text(StatusCode::FORBIDDEN, "cross-origin request refused\n");
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let query = req.uri().query();
        match (method, segments.as_slice()) {
            (&Method::GET, [""]) => asset(INDEX_HTML, "text/html; charset=utf-8"),
            (&Method::GET, ["assets", "status.js"]) => {
                asset(STATUS_JS, "text/javascript; charset=utf-8")
            }
            (&Method::GET, ["assets", "status.css"]) => {
                asset(STATUS_CSS, "text/css; charset=utf-8")
            }
            (&Method::GET, ["api", "status"]) => json_response(StatusCode::OK, &self.status()),
            (&Method::GET, ["api", "config"]) => {
                let mut r = Response::new(Body::new(self.view.load().config_json.clone()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            (&Method::GET, ["api", "sessions"]) => self.list(query),
            (&Method::GET, ["api", "sessions", id]) => match self.find(id) {
                Some(e) => json_response(StatusCode::OK, &session_json(&e)),
                None => not_found("no such session"),
            },
            (&Method::DELETE, ["api", "sessions", id]) => self.close(id, query),
            (&Method::POST, ["api", "routes", name, "drain"]) => self.drain(name, query),
            (&Method::DELETE, ["api", "routes", name, "drain"]) => self.undrain(name),
            (
                _,
                [""] | ["assets", ..] | ["api", "status" | "config" | "sessions" | "routes", ..],
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here\n"),
            _ => not_found("not found"),
        }
    }

    fn login(&self, token: &str) -> Response<Body> {
        if !self.token_matches(token) {
            return text(StatusCode::UNAUTHORIZED, "wrong admin token\n");
        }
        let mut r = text(StatusCode::SEE_OTHER, "see /\n");
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/"));
        // The token itself, scoped to this listener's pages: HttpOnly (no script reads it) and
        // SameSite=Strict (no other site's request carries it).
        if let Ok(cookie) = HeaderValue::from_str(&format!(
            "{AUTH_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
        )) {
            r.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        r
    }

    fn authorized<B>(&self, req: &Request<B>) -> bool {
        self.credential(req).is_some()
    }

    /// Which credential let the request in (`bearer`, `cookie`; `none` when no admin token
    /// is set), or `None` when it needs one and showed none that matches.
    fn credential<B>(&self, req: &Request<B>) -> Option<&'static str> {
        if self.view.load().token_sha256.is_none() {
            return Some("none");
        }
        let bearer = req
            .headers()
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let cookies = req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(AUTH_COOKIE)?.strip_prefix('='));
        if bearer.into_iter().any(|t| self.token_matches(t)) {
            return Some("bearer");
        }
        cookies
            .into_iter()
            .any(|t| self.token_matches(t))
            .then_some("cookie")
    }

    /// `GET /api/sessions/{id}/watch`: a read-only WebSocket carrying the session's
    /// backend→client bytes from now on (terminal routes: the recent output first). `None`
    /// for any other path. The answer: `101` (the watch runs on the API's tasks until the
    /// session, the watcher or the gateway ends), `401` without the admin token, `403` from
    /// another origin, `404` for an unknown session, `405` for another method, `426` for a
    /// request that is not a WebSocket upgrade, `409` for a session that cannot be watched
    /// (its kind, or it is ending), `503` when it has all the watchers it may have.
    pub fn watch<B>(&self, req: &mut Request<B>, peer: SocketAddr) -> Option<Response<Body>> {
        let id = req
            .uri()
            .path()
            .strip_prefix("/api/sessions/")?
            .strip_suffix("/watch")?;
        if id.contains('/') {
            return None;
        }
        let id = id.to_owned();
        let mut response = self.start_watch(req, &id, peer);
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let h = response.headers_mut();
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        Some(response)
    }

    fn start_watch<B>(&self, req: &mut Request<B>, id: &str, peer: SocketAddr) -> Response<Body> {
        let Some(credential) = self.credential(req) else {
            return unauthorized();
        };
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "a watch is a GET\n");
        }
        // A WebSocket from a page of another site carries that site's Origin.
        if !same_origin(req) {
            return text(StatusCode::FORBIDDEN, "cross-origin request refused\n");
        }
        let Some(entry) = self.find(id) else {
            return not_found("no such session");
        };
        let version_13 = req
            .headers()
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13");
        if !fastwebsockets::upgrade::is_upgrade_request(req) || !version_13 {
            let mut r = text(
                StatusCode::UPGRADE_REQUIRED,
                "a watch is a WebSocket (version 13): open it with a WebSocket client\n",
            );
            let h = r.headers_mut();
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return r;
        }
        let watcher = match entry.watch.subscribe() {
            Ok(w) => w,
            Err(why @ NotWatchable::Full) => {
                return text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
            }
            Err(why) => return text(StatusCode::CONFLICT, format!("{why}\n")),
        };
        let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut *req) {
            Ok(r) => r,
            Err(_) => {
                entry.watch.leave(watcher.id);
                return text(StatusCode::BAD_REQUEST, "invalid WebSocket upgrade\n");
            }
        };
        let who = Who {
            peer,
            credential,
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        self.tasks.spawn(watch::serve(
            entry,
            watcher,
            upgrade,
            who,
            self.stop.clone(),
        ));
        response.map(|_| Body::default())
    }

    fn token_matches(&self, token: &str) -> bool {
        let view = self.view.load();
        let Some(want) = &view.token_sha256 else {
            return true;
        };
        let got = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        got.as_ref().ct_eq(want).into()
    }

    fn find(&self, id: &str) -> Option<Arc<SessionEntry>> {
        id.parse().ok().and_then(|id| self.registry.get(id))
    }

    fn list(&self, query: Option<&str>) -> Response<Body> {
        let after = query_value(query, "after").and_then(|v| v.parse().ok());
        let limit = query_value(query, "limit").and_then(|v| v.parse().ok());
        let limit = limit.unwrap_or(SESSIONS_PAGE).clamp(1, SESSIONS_PAGE_MAX);
        // One more than asked, to know whether another page follows.
        let mut page = self.registry.list(after.unwrap_or(0), limit + 1);
        let more = page.len() > limit;
        page.truncate(limit);
        let next = more.then(|| page.last().map(|e| e.id)).flatten();
        json_response(
            StatusCode::OK,
            &json!({
                "sessions": page.iter().map(|e| session_json(e)).collect::<Vec<_>>(),
                "next_after": next,
            }),
        )
    }

    fn close(&self, id: &str, query: Option<&str>) -> Response<Body> {
        let Some(entry) = self.find(id) else {
            return not_found("no such session");
        };
        let code = match query_value(query, "code") {
            None => DEFAULT_CLOSE_CODE,
            Some(v) => match v.parse::<u16>() {
                Ok(c) if is_sendable_close_code(c) => c,
                _ => return text(
                    StatusCode::BAD_REQUEST,
                    "code: a close code an endpoint may send (1000-1003, 1007-1014, 3000-4999)\n",
                ),
            },
        };
        let asked = entry.control.close(code, "closed by the operator");
        info!(
            session = entry.id,
            route = %entry.info.route,
            code,
            "session close requested through the admin API"
        );
        json_response(
            StatusCode::ACCEPTED,
            &json!({ "id": entry.id, "code": entry.control.reason().0, "already_closing": !asked }),
        )
    }

    fn drain(&self, name: &str, query: Option<&str>) -> Response<Body> {
        let view = self.view.load();
        let Some(route) = view.routes.iter().find(|r| &*r.name == name) else {
            return not_found("no such route");
        };
        let grace = match query_value(query, "grace_secs") {
            None => view.drain_grace,
            Some(v) => match v.parse::<f64>() {
                Ok(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => {
                    Duration::from_secs_f64(s)
                }
                _ => return text(StatusCode::BAD_REQUEST, "grace_secs: 0 to 86400\n"),
            },
        };
        let drain = self.routes.start_drain(&route.name);
        let live = self
            .registry
            .per_route()
            .get(&route.name)
            .copied()
            .unwrap_or(0);
        info!(route = %route.name, grace_secs = grace.as_secs_f64(), live, "route draining");
        let (registry, routes) = (self.registry.clone(), self.routes.clone());
        let (name, stop) = (route.name.clone(), self.stop.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => {
                    // Only if this drain still holds: an undrain during the grace calls the
                    // closes off, and a later drain has its own grace.
                    if routes.drain_is_current(&name, drain) {
                        let n = registry.close_route(&name, 1001, "route drained");
                        info!(route = %name, closed = n, "drain grace over: sessions closed with 1001");
                    }
                }
                () = stop.cancelled() => {}
            }
        });
        json_response(
            StatusCode::ACCEPTED,
            &json!({
                "route": &*route.name,
                "draining": true,
                "already_draining": !drain.fresh,
                "live_sessions": live,
                "grace_secs": grace.as_secs_f64(),
            }),
        )
    }

    fn undrain(&self, name: &str) -> Response<Body> {
        let view = self.view.load();
        let Some(route) = view.routes.iter().find(|r| &*r.name == name) else {
            return not_found("no such route");
        };
        let was = self.routes.end_drain(&route.name);
        info!(route = %route.name, "route open again");
        json_response(
            StatusCode::OK,
            &json!({ "route": &*route.name, "draining": false, "was_draining": was }),
        )
    }

    /// Everything the status page draws, in one answer.
    fn status(&self) -> Value {
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

fn session_json(e: &SessionEntry) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({
        "id": e.id,
        "route": &*e.info.route,
        "client": e.info.client.to_string(),
        "backend": e.info.backend,
        "subprotocol": e.info.subprotocol,
        "user": e.info.user,
        "bytes_to_backend": e.bytes.to_backend.load(Relaxed),
        "bytes_to_client": e.bytes.to_client.load(Relaxed),
        "age_secs": e.age().as_secs_f64(),
        "closing": e.control.is_cancelled(),
        "watchable": e.watch.is_open(),
        "terminal": e.watch.keeps_backlog(),
        "watchers": e.watch.watchers(),
    })
}

/// A state-changing request from a page must come from this listener's own pages: browsers
/// send `Origin` on cross-origin requests, and we refuse one naming another host.
fn same_origin<B>(req: &Request<B>) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// Whether `host` (a `Host` header: a name or IP literal, with an optional port) names the
/// admin listener at `local`: its IP literal, `localhost` when it is a loopback address, or
/// an `allowed` entry (an entry with a port must match with that port).
fn host_allowed(host: &str, local: Option<SocketAddr>, allowed: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let name = match host.strip_prefix('[') {
        // `[::1]:9090`, `[::1]`
        Some(v6) => match v6.split_once(']') {
            Some((ip, rest)) if rest.is_empty() || rest.starts_with(':') => ip,
            _ => return false,
        },
        None => host
            .rsplit_once(':')
            .map_or(host.as_str(), |(name, _)| name),
    };
    let name = name.trim_end_matches('.');
    if allowed.iter().any(|a| *a == host || *a == name) {
        return true;
    }
    let Some(local) = local else {
        return false;
    };
    let ip = match local.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|n| n == ip || n == local.ip())
        || (ip.is_loopback() && (name == "localhost" || name.ends_with(".localhost")))
}

fn unauthorized() -> Response<Body> {
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        "admin token required: Authorization: Bearer <token>, or open /?token=<token>\n",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn not_found(what: &'static str) -> Response<Body> {
    json_response(StatusCode::NOT_FOUND, &json!({ "error": what }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listeners_own_names_are_accepted_as_host() {
        let v4: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let v6: SocketAddr = "[::1]:9090".parse().unwrap();
        let lan: SocketAddr = "10.0.0.5:9090".parse().unwrap();
        let allowed = vec!["admin.example".to_owned(), "gw:8443".to_owned()];
        for (host, local, ok) in [
            ("127.0.0.1:9090", v4, true),
            ("127.0.0.1", v4, true),
            ("localhost:9090", v4, true),
            ("LOCALHOST", v4, true),
            ("[::1]:9090", v6, true),
            ("localhost:9090", v6, true),
            ("10.0.0.5:9090", lan, true),
            ("localhost:9090", lan, false),
            ("admin.example:9090", lan, true),
            ("gw:8443", lan, true),
            ("gw:9090", lan, false),
            ("rebind.attacker.example:9090", v4, false),
            ("127.0.0.2:9090", v4, false),
            ("[::1]x", v6, false),
        ] {
            assert_eq!(
                host_allowed(host, Some(local), &allowed),
                ok,
                "{host} on {local}"
            );
        }
    }

    #[test]
    fn state_changes_from_another_origin_are_refused() {
        let req = |origin: Option<&str>| {
            let mut b = Request::post("/api/routes/x/drain").header("Host", "127.0.0.1:9090");
            if let Some(o) = origin {
                b = b.header("Origin", o);
            }
            b.body(()).unwrap()
        };
        assert!(same_origin(&req(None)));
        assert!(same_origin(&req(Some("http://127.0.0.1:9090"))));
        assert!(!same_origin(&req(Some("https://evil.example"))));
        assert!(!same_origin(&req(Some("null"))));
    }
}

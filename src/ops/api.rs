//! The admin listener's session API and live status page: list, inspect, watch and close
//! sessions, drain routes, show the running config; optionally behind a bearer token.
//!
//! `/metrics`, `/healthz` and `/readyz` stay open (scrapers and orchestrators); `/`, `/assets/`,
//! `/api/` and `POST /reload` need the token when `[admin] bearer_sha256` is set, a `Host`
//! naming this listener (DNS rebinding guard, [`OpsApi::refuse`]) and, to change state, no
//! other site's `Origin`. This file is that gate and the dispatch; the session endpoints
//! are in `api/sessions.rs`, the status page's data in `api/status.rs`.

mod sessions;
mod status;

use std::collections::VecDeque;
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

use super::watch::{self};
use crate::backend::health::RouteState;
use crate::http_util::{json as json_response, query_value, text, Body};
use crate::session::registry::Registry;
use sessions::session_json;
use status::Sample;

const INDEX_HTML: &str = include_str!("status/index.html");
const STATUS_JS: &str = include_str!("status/status.js");
const STATUS_CSS: &str = include_str!("status/status.css");
/// xterm.js for the watch view, vendored unmodified (version and update steps in
/// docs/development.md).
const XTERM_JS: &str = include_str!("status/vendor/xterm.js");
const XTERM_CSS: &str = include_str!("status/vendor/xterm.css");

/// Same-origin scripts, styles and fetches only; no inline script; never framed. Inline
/// styles are allowed because xterm.js (the watch view) sizes and colours its cells through
/// `<style>` elements it writes; the page puts no API text into HTML, so there is nothing to
/// inject them with.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The cookie a browser gets after opening `/?token=…`, so the page's own requests carry it.
const AUTH_COOKIE: &str = "wsgate_admin";

/// `GET /api/sessions` pages: this many by default, never more than the maximum.
pub const SESSIONS_PAGE: usize = 100;
pub const SESSIONS_PAGE_MAX: usize = 1000;

/// Close code for `DELETE /api/sessions/{id}` without `?code=`: policy violation.
pub const DEFAULT_CLOSE_CODE: u16 = 1008;

/// What the API says about a route.
#[derive(Debug, Clone)]
pub struct RouteSummary {
    pub name: Arc<str>,
    pub path: String,
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
            (&Method::GET, ["assets", "vendor", "xterm.js"]) => {
                asset(XTERM_JS, "text/javascript; charset=utf-8")
            }
            (&Method::GET, ["assets", "vendor", "xterm.css"]) => {
                asset(XTERM_CSS, "text/css; charset=utf-8")
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

    fn token_matches(&self, token: &str) -> bool {
        let view = self.view.load();
        let Some(want) = &view.token_sha256 else {
            return true;
        };
        let got = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        got.as_ref().ct_eq(want).into()
    }
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

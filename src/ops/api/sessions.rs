//! The session endpoints: list, inspect, close and watch sessions, drain and undrain
//! routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tracing::info;

use super::watch::{self, Who};
use crate::http_util::{json as json_response, query_value, text, Body};
use crate::record::watch::NotWatchable;
use crate::session::registry::{is_sendable_close_code, SessionEntry};

use super::{
    not_found, same_origin, unauthorized, OpsApi, DEFAULT_CLOSE_CODE, SESSIONS_PAGE,
    SESSIONS_PAGE_MAX,
};

impl OpsApi {
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

    pub(super) fn find(&self, id: &str) -> Option<Arc<SessionEntry>> {
        id.parse().ok().and_then(|id| self.registry.get(id))
    }

    pub(super) fn list(&self, query: Option<&str>) -> Response<Body> {
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

    pub(super) fn close(&self, id: &str, query: Option<&str>) -> Response<Body> {
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

    pub(super) fn drain(&self, name: &str, query: Option<&str>) -> Response<Body> {
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

    pub(super) fn undrain(&self, name: &str) -> Response<Body> {
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
}

pub(super) fn session_json(e: &SessionEntry) -> Value {
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

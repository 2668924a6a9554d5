//! One HTTP request on a public listener, as named stages: [`route`] (path rules 400, no
//! route 404), the forwarded client, upgrade checks (400/426) and [`check_open`] (503),
//! [`authorize`] (failed-credential budget 429, origin 403, credentials 401/403, target
//! 404/403), [`admit`] (limits 429/503), [`dial()`] (egress 403, backend 502/504) and
//! [`accept`] (`101`, or `200` for an HTTP/2 extended CONNECT), which hands the session over
//! to `session::start`. Each stage returns `Result<_, RejectError>`; [`reject`] turns the
//! error into the answer, a metric and a log line. The stages before the dial are here; the
//! dial is in `http/dial.rs`, the `101` and the session task in `http/handover.rs`.

mod dial;
mod handover;
mod matched;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http_body_util::Either;
use hyper::header::{self, HeaderValue};
use hyper::service::{service_fn, Service};
use hyper::{Method, Request, Response, StatusCode, Version};
use tracing::{debug, info, warn, Span};

use super::console::Console;
use super::shared::{ConnectionSlot, InUse, Shared};
use crate::config::BackendAddr;
use crate::error::RejectError;
use crate::http_util::{header_has_token, log_uri, query_value, text, typed, Body};
use crate::logsafe::Escaped;
use crate::metrics;
use crate::policy::{ConnInfo, SessionSlot};
use crate::record::{Pending, Recorder};
use crate::session::start::{resume_protocol, ResumeAsk};
use crate::snapshot::{check_path, Route, Snapshot};
use crate::ws::extensions;

use dial::dial;
use handover::{accept, accept_join};
use matched::Matched;

pub use super::upgrade::check_upgrade;

/// What a public listener's connection answers with: one of ours, or a static file
/// (`edge::web`, streamed).
pub type ConnectionBody = super::web::WebBody;

/// What a connection's requests go to, over HTTP/1.1 and HTTP/2 alike, before any route:
/// the resume library and the console's pages (so a browser's page and its WebSockets share
/// the connection), ACME HTTP-01 answers, the `[signin]` endpoints (start, callback,
/// sign-out), then `[web]` files (behind the sign-in with `protect_web`); the rest go to the
/// routes.
///
/// No stage reads a request's body: hyper's HTTP/1.1 requests come with theirs, and
/// `super::h2` hands HTTP/2 requests over without it (an extended CONNECT's stream is the
/// session's).
pub(super) fn connection_service<B: hyper::body::Body + Send + Sync + 'static>(
    console: Option<Arc<Console>>,
    conn: ConnInfo,
    permit: Arc<ConnectionSlot>,
    shared: Arc<Shared>,
) -> impl Service<
    Request<B>,
    Response = Response<ConnectionBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ConnectionBody>, Infallible>> + Send,
> + Clone {
    service_fn(move |req: Request<B>| {
        let page = resume_library(&req).or_else(|| console.as_ref().and_then(|c| c.answer(&req)));
        let (conn, shared, permit) = (conn.clone(), shared.clone(), permit.enter());
        async move {
            if let Some(page) = page {
                return Ok(page.map(Either::Left));
            }
            let snapshot = shared.snapshot.load_full();
            if let Some(answer) = acme_http_challenge(&req, &snapshot) {
                return Ok(answer.map(Either::Left));
            }
            // `[signin]`: its own paths (start, callback, sign-out) before the files.
            if let Some(signin) = snapshot
                .signin
                .as_ref()
                .filter(|s| s.is_endpoint(req.uri().path()))
            {
                return Ok(signin.serve(&req).await.map(Either::Left));
            }
            // `[web] root`: a plain GET (a page, a script) is a file; only upgrades reach the
            // routes.
            if let Some(web) = &snapshot.web {
                if matches!(*req.method(), Method::GET | Method::HEAD)
                    && !header_has_token(req.headers(), header::UPGRADE, "websocket")
                {
                    // `[signin] protect_web`: a browser not signed in goes to sign in first.
                    if let Some(signin) = snapshot.signin.as_ref().filter(|s| s.protects_web()) {
                        if signin.identity(&req).is_none() {
                            return Ok(signin.to_signin(&req).map(Either::Left));
                        }
                    }
                    return Ok(super::web::serve(web, req).await);
                }
            }
            drop(snapshot);
            let answer = handle(req, conn, shared, permit).await;
            answer.map(|r| r.map(Either::Left))
        }
    })
}

/// Answer one request on a public listener. Never fails: errors become HTTP answers.
pub async fn handle<B: Send + Sync>(
    mut req: Request<B>,
    conn: ConnInfo,
    shared: Arc<Shared>,
    permit: InUse,
) -> Result<Response<Body>, Infallible> {
    // This request's config: a reload after this point does not change its session.
    let snapshot = shared.snapshot.load_full();
    let route = match route(&req, &snapshot, &conn) {
        Ok(route) => route,
        Err(e) => return Ok(reject(&req, None, e)),
    };
    let conn = forwarded_client(conn, &req);
    let answer = upgrade(
        &mut req,
        Matched {
            conn,
            route: route.clone(),
            snapshot,
        },
        &shared,
        permit,
    );
    Ok(match answer.await {
        Ok(response) => response,
        Err(e) => reject(&req, Some(&route), e),
    })
}

/// Every stage after routing, in order; the first error is the answer.
async fn upgrade<B: Send + Sync>(
    req: &mut Request<B>,
    matched: Matched,
    shared: &Arc<Shared>,
    permit: InUse,
) -> Result<Response<Body>, RejectError> {
    check_upgrade(req)?;
    check_open(shared, &matched.route)?;
    let (target, principal) = authorize(req, &matched).await?;
    let slot = admit(&matched)?;
    let resume = resume_ask(req, &matched.route)?;
    // permessage-deflate on the client hop: the first acceptable offer, or none (never on a
    // resumable connection).
    let deflate = match resume {
        Some(_) => None,
        None => matched
            .route
            .session
            .compression
            .as_ref()
            .and_then(|policy| {
                let offers = req.headers().get_all(header::SEC_WEBSOCKET_EXTENSIONS);
                extensions::negotiate(offers.iter().filter_map(|v| v.to_str().ok()), policy)
            }),
    };
    match resume {
        // A resume joins the session's backend connection: nothing to dial.
        Some((ask, true)) => accept_join(req, matched, shared, (permit, slot), ask),
        ask => {
            let dialed = dial(req, &matched, shared, target, deflate).await?;
            // A target file may name udp://: its datagrams carry no offsets to resume from.
            if ask.is_some() && !dialed.backend.resumes() {
                return Err(RejectError::BadRequest(
                    "this target is not resumable (udp://); connect without wsgate.resume.v1",
                ));
            }
            // A kind that carries messages as they are sent (udp://) takes no
            // permessage-deflate.
            let deflate = deflate.filter(|_| dialed.backend.takes_deflate());
            let recording = record(req, &matched, principal.clone())
                .await?
                .map(Box::new);
            let ask = ask.map(|(ask, _)| ask);
            accept(
                req,
                matched,
                shared,
                (permit, slot),
                (dialed, recording, principal),
                deflate,
                ask,
            )
        }
    }
}

/// Route: path rules (400) before routing, since the router matches the path a backend will
/// get; then the route (404).
fn route<B>(
    req: &Request<B>,
    snapshot: &Snapshot,
    conn: &ConnInfo,
) -> Result<Arc<Route>, RejectError> {
    check_path(req.uri().path())?;
    let route = snapshot.router.route(req, conn)?.clone();
    Span::current().record("route", &*route.name);
    Ok(route)
}

/// Behind a trusted HTTP load balancer the client is who its headers name: from here on
/// (access, limits, logs, PROXY headers to the backend) that address is the client's.
fn forwarded_client<B>(conn: ConnInfo, req: &Request<B>) -> ConnInfo {
    match conn.for_request(req.headers()) {
        Some(c) => {
            Span::current().record("client", tracing::field::display(c.peer));
            c
        }
        None => conn,
    }
}

/// The gateway and the route still take sessions (503 while shutting down or draining).
fn check_open(shared: &Shared, route: &Route) -> Result<(), RejectError> {
    if shared.shutdown.is_cancelled() {
        return Err(RejectError::ShuttingDown);
    }
    if shared.routes.is_draining(&route.name) {
        return Err(RejectError::Draining);
    }
    Ok(())
}

/// Authorize: the address's budget of failed credentials (429, before its credential is
/// tried), origin (403), credentials (401/403), then this session's target (404 for an
/// unknown token). A pool picks its backend at the dial (`None` here). The egress check
/// (403) is part of the dial.
async fn authorize<B>(
    req: &Request<B>,
    matched: &Matched,
) -> Result<(Option<BackendAddr>, Option<String>), RejectError> {
    let Matched {
        conn,
        route,
        snapshot,
    } = matched;
    let auth_failures = &snapshot.admission.auth_failures;
    let checks_credentials = route.access.checks_credentials() || route.backend.takes_token();
    if checks_credentials {
        auth_failures.check(conn.peer.ip())?;
    }
    let failed = |e: RejectError| {
        if checks_credentials && e.is_credential_failure() {
            auth_failures.failed(conn.peer.ip());
            metrics::auth_failed(&route.name);
        }
        e
    };
    let granted = route.access.check(req, conn).await.map_err(failed)?;
    if let Some(user) = &granted.principal {
        Span::current().record("user", tracing::field::display(Escaped(user)));
    }
    if route.pool.is_some() {
        return Ok((None, granted.principal));
    }
    let target = route.backend.resolve(req, &granted).await.map_err(failed)?;
    Span::current().record(
        "backend",
        tracing::field::display(Escaped(&target.to_string())),
    );
    Ok((Some(target), granted.principal))
}

/// Record: the session's recording file (`[route.record]`), created before the `101` so that
/// a route that requires a recording refuses the session (503) when it cannot be made.
async fn record<B>(
    req: &Request<B>,
    matched: &Matched,
    principal: Option<String>,
) -> Result<Option<Pending>, RejectError> {
    let Some(settings) = &matched.route.session.record else {
        return Ok(None);
    };
    let mut pending = Recorder::prepare(settings)
        .await
        .map_err(|_| RejectError::RecordingUnavailable)?;
    if let Some(p) = &mut pending {
        p.identity = principal;
        p.user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(256).collect());
    }
    Ok(pending)
}

/// Admit: a slot under every session cap, held until the session ends (429/503).
fn admit(matched: &Matched) -> Result<SessionSlot, RejectError> {
    matched
        .snapshot
        .admission
        .admit(&matched.route.name, matched.conn.peer.ip())
}

/// A resumable-session request: the route resumes, and the client offered
/// `wsgate.resume.v1`; then the URL must name the session (400 otherwise). The flag says
/// whether it joins an existing session (`wsgate_resume=1`).
fn resume_ask<B>(
    req: &Request<B>,
    route: &Route,
) -> Result<Option<(ResumeAsk, bool)>, RejectError> {
    if route.session.resume.is_none()
        || !header_has_token(
            req.headers(),
            header::SEC_WEBSOCKET_PROTOCOL,
            resume_protocol::SUBPROTOCOL,
        )
    {
        return Ok(None);
    }
    let query = req.uri().query();
    let id = query_value(query, resume_protocol::SESSION_PARAM)
        .filter(|id| resume_protocol::valid_id(id))
        .ok_or(RejectError::BadRequest(
            "a resumable session needs wsgate_session: 1-64 of [A-Za-z0-9_-]",
        ))?;
    let joining = query_value(query, resume_protocol::RESUME_PARAM).as_deref() == Some("1");
    Ok(Some((ResumeAsk { id }, joining)))
}

/// `[acme] challenge = "http-01"`: the CA's `GET /.well-known/acme-challenge/TOKEN` answered
/// with the key authorization while that token's order is being validated, `404` otherwise.
/// `None` when the gateway does no ACME (the path is then a route's or `[web]`'s, as any).
fn acme_http_challenge<B>(req: &Request<B>, snapshot: &Snapshot) -> Option<Response<Body>> {
    let token = req
        .uri()
        .path()
        .strip_prefix("/.well-known/acme-challenge/")?;
    let store = snapshot.acme.as_ref()?;
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    Some(match store.http_answer(token) {
        Some(answer) => {
            info!(token, "answered an ACME HTTP-01 challenge");
            typed(StatusCode::OK, "application/octet-stream", answer)
        }
        None => text(StatusCode::NOT_FOUND, "no such ACME challenge\n"),
    })
}

/// The resume client library (docs/resume.md), on every public listener.
const RESUME_JS: &str = include_str!("resume.js");

/// `GET /.wsgate/resume.js`: the library; anything else is not for it.
fn resume_library<B>(req: &Request<B>) -> Option<Response<Body>> {
    if req.uri().path() != "/.wsgate/resume.js"
        || !matches!(*req.method(), Method::GET | Method::HEAD)
    {
        return None;
    }
    let body = if req.method() == Method::HEAD {
        ""
    } else {
        RESUME_JS
    };
    let mut response = typed(StatusCode::OK, "text/javascript; charset=utf-8", body);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response.headers_mut().insert(
        header::HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    Some(response)
}

/// Turn a rejection into its HTTP answer, a metric and a log line.
fn reject<B>(req: &Request<B>, route: Option<&Route>, e: RejectError) -> Response<Body> {
    let route_name = route.map_or(metrics::NO_ROUTE, |r| &*r.name);
    metrics::upgrade_rejected(route_name, e.label());
    // Query values are redacted: a token in the URL never reaches the log.
    let uri = log_uri(req.uri());
    let uri = Escaped(&uri);
    if e.is_routine() {
        debug!(uri = %uri, error = %e, "upgrade rejected");
    } else {
        let source = match &e {
            RejectError::BackendRejected(status) => Some(format!("backend answered {status}")),
            _ => std::error::Error::source(&e).map(ToString::to_string),
        };
        let source = source
            .as_deref()
            .map(|s| tracing::field::display(Escaped(s)));
        warn!(uri = %uri, error = %e, source, "upgrade failed");
    }
    let mut response = crate::http_util::text(e.status(), format!("{e}\n"));
    let headers = response.headers_mut();
    if e.status() == StatusCode::UPGRADE_REQUIRED {
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    if e.status() == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(secs) = e.retry_after_secs() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if req.version() == Version::HTTP_2 {
        super::extended_connect::strip_connection_headers(headers);
    }
    response
}

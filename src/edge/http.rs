//! One HTTP request: path rules, route, upgrade checks, access (failed-credential budget,
//! origin, credentials, target), backend dial, `101` (or `200` for an HTTP/2 extended
//! CONNECT, `edge::extended_connect`), then the session task.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::Role;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::{service_fn, Service};
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::io::AsyncWrite;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument, Span};

use super::console::Console;
use super::shared::{ConnectionSlot, InUse, Shared};
use crate::backend::{Backend, Handshake, ProxyAddrs};
use crate::config::BackendAddr;
use crate::error::RejectError;
use crate::logsafe::Escaped;
use crate::metrics::{self, Protocol, SessionMetrics};
use crate::policy::{access, ClientSource, ConnInfo};
use crate::session::bridge::{self, BridgeConfig};
use crate::session::deflate::{HopDeflate, RelayDeflate};
use crate::session::extensions::{self, Agreement};
use crate::session::io::{websocket_halves, ClientStream};
use crate::session::reader::ReadReady;
use crate::session::registry::{Registered, SessionEntry, SessionInfo};
use crate::session::relay::{self, RelayConfig};
use crate::snapshot::{check_path, select_subprotocol, Route, Snapshot};

/// Every answer the gateway writes itself: a short, complete body.
pub type Body = Full<Bytes>;

/// What a connection's requests go to, over HTTP/1.1 and HTTP/2 alike: the console answers
/// plain requests for its pages (so a browser's page and its WebSockets share the
/// connection); the rest go to the routes.
pub(super) fn connection_service(
    console: Option<Arc<Console>>,
    conn: ConnInfo,
    permit: Arc<ConnectionSlot>,
    shared: Arc<Shared>,
) -> impl Service<
    Request<hyper::body::Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |req| {
        let page = console.as_ref().and_then(|c| c.answer(&req));
        let (conn, shared, permit) = (conn.clone(), shared.clone(), permit.enter());
        async move {
            match page {
                Some(page) => Ok(page),
                None => handle(req, conn, shared, permit).await,
            }
        }
    })
}

/// Answer one request on a public listener. Never fails: errors become HTTP answers.
pub async fn handle(
    mut req: Request<hyper::body::Incoming>,
    conn: ConnInfo,
    shared: Arc<Shared>,
    permit: InUse,
) -> Result<Response<Body>, Infallible> {
    // This request's config: a reload after this point does not change its session.
    let snapshot = shared.snapshot.load_full();
    // `[web] root`: a plain GET (a page, a script) is a file; only upgrades reach the routes.
    if let Some(root) = &snapshot.config.web_root {
        if matches!(*req.method(), Method::GET | Method::HEAD)
            && !header_has_token(&req, header::UPGRADE, "websocket")
        {
            return Ok(super::web::serve(root, req).await);
        }
    }
    // Path rules (400) before routing: the router matches the path a backend will get.
    if let Err(e) = check_path(req.uri().path()) {
        return Ok(reject(&req, None, e));
    }
    let Some(route) = snapshot.router.find(req.uri().path()).cloned() else {
        return Ok(reject(&req, None, RejectError::NoRoute));
    };
    Span::current().record("route", &*route.name);
    // Behind a trusted HTTP load balancer the client is who its headers name: from here on
    // (access, limits, logs, PROXY headers to the backend) that address is the client's.
    let conn = match conn.for_request(req.headers()) {
        Some(c) => {
            Span::current().record("client", tracing::field::display(c.peer));
            c
        }
        None => conn,
    };
    if let Err(e) = check_upgrade(&req) {
        return Ok(reject(&req, Some(&route), e));
    }
    if shared.shutdown.is_cancelled() {
        return Ok(reject(&req, Some(&route), RejectError::ShuttingDown));
    }
    if shared.registry.is_draining(&route.name) {
        return Ok(reject(&req, Some(&route), RejectError::Draining));
    }

    // Access: the address's budget of failed credentials (429, before its credential is
    // tried), origin (403), credentials (401/403), then this session's target (404 for an
    // unknown token). The egress check (403) is part of the dial.
    let auth_failures = &snapshot.admission.auth_failures;
    let checks_credentials = route.access.checks_credentials() || route.backend.takes_token();
    if checks_credentials {
        if let Err(e) = auth_failures.check(conn.peer.ip()) {
            return Ok(reject(&req, Some(&route), e));
        }
    }
    let failed = |e: RejectError| {
        if checks_credentials && e.is_credential_failure() {
            auth_failures.failed(conn.peer.ip());
            metrics::auth_failed(&route.name);
        }
        reject(&req, Some(&route), e)
    };
    let granted = match route.access.check(&req, &conn) {
        Ok(g) => g,
        Err(e) => return Ok(failed(e)),
    };
    if let Some(user) = &granted.principal {
        Span::current().record("user", tracing::field::display(Escaped(user)));
    }
    // A pool picks its backend at the dial; any other route's target is known now.
    let target = match &route.pool {
        Some(_) => None,
        None => match route.backend.resolve(&req, &granted).await {
            Ok(t) => {
                Span::current().record("backend", tracing::field::display(Escaped(&t.to_string())));
                Some(t)
            }
            Err(e) => return Ok(failed(e)),
        },
    };
    // The offer without `bearer.` credentials: never chosen, echoed or forwarded.
    let offered = route.access.offered_protocols(&req);
    // Limits: a slot under every session cap, held until the session ends (429/503).
    let slot = match snapshot.admission.admit(&route.name, conn.peer.ip()) {
        Ok(slot) => slot,
        Err(e) => return Ok(reject(&req, Some(&route), e)),
    };

    // permessage-deflate on the client hop: the first acceptable offer, or none.
    let deflate = route.compression.as_ref().and_then(|policy| {
        let offers = req.headers().get_all(header::SEC_WEBSOCKET_EXTENSIONS);
        extensions::negotiate(offers.iter().filter_map(|v| v.to_str().ok()), policy)
    });

    // Only a live backend earns a 101: the route's pool in its order (a failed dial tries
    // the next backend), or this session's one target.
    let dial_started = Instant::now();
    let proxy = route.send_proxy_protocol.then_some(ProxyAddrs {
        source: conn.peer,
        destination: conn.local,
    });
    let handshake = |target: &BackendAddr| match target {
        BackendAddr::WebSocket { path, .. } => Handshake {
            deflate,
            ..backend_handshake(&req, &route, path, &conn, &offered)
        },
        _ => Handshake::default(),
    };
    let dialer = &snapshot.dialer;
    let dialed = match (&route.pool, &target) {
        (Some(pool), _) => pool
            .dial(dialer, route.backend_tls.as_ref(), handshake, proxy)
            .await
            .map(|(b, lease)| {
                Span::current().record("backend", tracing::field::display(lease.backend()));
                (b, Some(lease))
            }),
        (None, Some(target)) => dialer
            .dial(route.backend_tls.as_ref(), target, handshake(target), proxy)
            .await
            .map(|b| (b, None)),
        (None, None) => Err(RejectError::BackendUnreachable(std::io::Error::other(
            "route has neither a pool nor a target",
        ))),
    };
    let (backend, lease) = match dialed {
        Ok(pair) => pair,
        Err(e) => {
            // 502/504: the backend's fault (a refused egress is the config's, not its health).
            if matches!(
                e.status(),
                StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
            ) {
                shared.registry.backend_failed(&route.name, e.label());
            }
            return Ok(reject(&req, Some(&route), e));
        }
    };
    shared.registry.backend_reached(&route.name);
    metrics::backend_connected(&route.name, dial_started.elapsed());

    // A WebSocket backend chose from the client's offer; for a byte backend the route decides.
    let protocol = match &backend {
        Backend::WebSocket { protocol, .. } => protocol.clone(),
        Backend::Tcp(_) | Backend::Unix(_) => select_subprotocol(&route, offered.iter().copied())
            .and_then(|p| HeaderValue::from_str(p).ok()),
    };
    let (mut response, upgrade) = match PendingUpgrade::accept(&mut req) {
        Ok(pair) => pair,
        Err(e) => return Ok(reject(&req, Some(&route), e)),
    };
    if let Some(p) = protocol {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    if let Some(answer) = deflate.and_then(|a| HeaderValue::from_str(&a.response()).ok()) {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_EXTENSIONS, answer);
    }

    let info = SessionInfo {
        route: route.name.clone(),
        client: conn.peer,
        backend: match (&lease, &target) {
            (Some(lease), _) => lease.backend().to_string(),
            (None, Some(target)) => target.to_string(),
            (None, None) => String::new(),
        },
        subprotocol: response
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|p| p.to_str().ok())
            .map(str::to_owned),
    };
    let session = {
        let shared = shared.clone();
        async move {
            let _permit = permit;
            let _slot = slot;
            let _lease = lease;
            let protocol = upgrade.protocol();
            let client = match upgrade.wait().await {
                Ok(client) => client,
                Err(e) => {
                    debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            // In the session's task: the thread it counts on is the one it runs on.
            let _worker = metrics::WorkerSessionGuard::open();
            let mut registered = shared.registry.register(info, &shared.shutdown);
            Span::current().record("session", registered.entry().id);
            let code = run_session(
                client,
                backend,
                &route,
                &snapshot,
                &shared,
                &registered,
                protocol,
                deflate,
            )
            .await;
            registered.set_close_code(code);
        }
    };
    shared.tracker.spawn(session.instrument(Span::current()));
    Ok(response)
}

/// The upgrade a `101` or an extended CONNECT's `200` promises: the client's stream once
/// hyper has sent the answer.
enum PendingUpgrade {
    Http1(fastwebsockets::upgrade::UpgradeFut),
    H2(hyper::upgrade::OnUpgrade),
}

impl PendingUpgrade {
    /// The answer that completes the handshake (`101` with `Sec-WebSocket-Accept`, or `200`
    /// on an h2 stream), and the stream to come.
    fn accept(
        req: &mut Request<hyper::body::Incoming>,
    ) -> Result<(Response<Body>, Self), RejectError> {
        if req.version() == Version::HTTP_2 {
            let (response, upgrade) = super::extended_connect::accept(req);
            return Ok((response, Self::H2(upgrade)));
        }
        let (response, upgrade) = fastwebsockets::upgrade::upgrade(req)
            .map_err(|_| RejectError::BadRequest("invalid upgrade request"))?;
        Ok((response.map(|_| Body::default()), Self::Http1(upgrade)))
    }

    fn protocol(&self) -> Protocol {
        match self {
            Self::Http1(_) => Protocol::Http1,
            Self::H2(_) => Protocol::H2,
        }
    }

    async fn wait(self) -> Result<Upgraded, Box<dyn std::error::Error + Send + Sync>> {
        match self {
            Self::Http1(fut) => Ok(fut.await?.into_inner().into_inner()),
            Self::H2(on) => Ok(on.await?),
        }
    }
}

/// Bridge or relay the session; returns the close code it ended with. `deflate`:
/// permessage-deflate as agreed with the client.
#[allow(clippy::too_many_arguments)]
async fn run_session(
    client: Upgraded,
    backend: Backend,
    route: &Route,
    snapshot: &Snapshot,
    shared: &Shared,
    registered: &Registered,
    protocol: Protocol,
    deflate: Option<Agreement>,
) -> u16 {
    let entry = registered.entry();
    // Each kind boxed, sized to itself: the task that waits for the upgrade stays small, and
    // a TLS or h2 session does not also carry a plain session's inline state.
    match ClientStream::new(client) {
        ClientStream::Tcp(read, write) => {
            Box::pin(bridge_session(
                (read, write),
                backend,
                route,
                snapshot,
                shared,
                entry,
                protocol,
                deflate,
            ))
            .await
        }
        ClientStream::Other(read, write) => {
            Box::pin(bridge_session(
                (read, write),
                backend,
                route,
                snapshot,
                shared,
                entry,
                protocol,
                deflate,
            ))
            .await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn bridge_session<CR, CW>(
    (client_read, client_write): (CR, CW),
    backend: Backend,
    route: &Route,
    snapshot: &Snapshot,
    shared: &Shared,
    entry: &SessionEntry,
    protocol: Protocol,
    deflate: Option<Agreement>,
) -> u16
where
    CR: ReadReady + Send + 'static,
    CW: AsyncWrite + Unpin,
{
    let started = Instant::now();
    let metrics = SessionMetrics::start_counted(route.name.clone(), protocol, &entry.bytes);
    let client_deflate = deflate
        .zip(route.compression)
        .map(|(a, p)| HopDeflate::server(&a, &p));
    let (mut client_read, client_write) = websocket_halves(
        client_read,
        client_write,
        Role::Server,
        route.max_frame_bytes,
        &snapshot.frame_budget,
    );
    if client_deflate.is_some() {
        client_read.allow_rsv1();
    }
    let bridge_config = || BridgeConfig {
        buffer_bytes: snapshot.buffer_bytes,
        max_message_bytes: route.max_message_bytes,
        message_type: route.message_type,
        ping_interval: snapshot.ping_interval,
        pong_timeout: snapshot.pong_timeout,
        close_grace: snapshot.close_grace,
        backend_stall: snapshot.backend_stall,
        bandwidth_bytes_per_sec: route.limits.bandwidth_bytes_per_sec,
        deflate: client_deflate,
    };
    let outcome = match backend {
        Backend::Unix(stream) => {
            let (backend_read, backend_write) = stream.into_split();
            // Boxed: sessions on TCP routes should not carry a second bridge's state.
            Box::pin(bridge::run(
                client_read,
                client_write,
                backend_read,
                backend_write,
                &bridge_config(),
                &metrics,
                &entry.control,
                &shared.hard_stop,
            ))
            .await
        }
        Backend::Tcp(stream) => {
            let config = bridge_config();
            let (backend_read, backend_write) = stream.into_split();
            bridge::run(
                client_read,
                client_write,
                backend_read,
                backend_write,
                &config,
                &metrics,
                &entry.control,
                &shared.hard_stop,
            )
            .await
        }
        Backend::WebSocket {
            io,
            deflate: backend_deflate,
            ..
        } => {
            let config = RelayConfig {
                max_message_bytes: route.max_message_bytes,
                ping_interval: snapshot.ping_interval,
                pong_timeout: snapshot.pong_timeout,
                close_grace: snapshot.close_grace,
                backend_stall: snapshot.backend_stall,
                bandwidth_bytes_per_sec: route.limits.bandwidth_bytes_per_sec,
                deflate: RelayDeflate::new(deflate, backend_deflate, route.compression),
            };
            let (read, write) = tokio::io::split(io);
            let mut backend = websocket_halves(
                read,
                write,
                Role::Client,
                route.max_frame_bytes,
                &snapshot.frame_budget,
            );
            if config.deflate.backend.is_some() {
                backend.0.allow_rsv1();
            }
            // Boxed so that sessions on TCP routes do not carry the relay's larger state.
            Box::pin(relay::run(
                (client_read, client_write),
                backend,
                &config,
                &metrics,
                &entry.control,
                &shared.hard_stop,
            ))
            .await
        }
    };
    let duration = started.elapsed();
    metrics.closed(outcome.code, outcome.initiator.label(), duration);
    let (messages_to_backend, messages_to_client) = metrics.messages();
    // The access log: one line per session, every field named (one JSON object with
    // `--log-format json`).
    info!(
        session_id = entry.id,
        client = %entry.info.client,
        route = &*route.name,
        backend = entry.info.backend.as_str(),
        subprotocol = entry.info.subprotocol.as_deref(),
        bytes_to_backend = outcome.bytes_to_backend,
        bytes_to_client = outcome.bytes_to_client,
        messages_to_backend,
        messages_to_client,
        duration_ms = duration.as_millis() as u64,
        code = outcome.code,
        closed_by = outcome.initiator.label(),
        reason = %Escaped(&outcome.reason),
        "session closed"
    );
    outcome.code
}

/// The backend handshake for a WebSocket route: mapped path, forwarded headers,
/// `X-Forwarded-*`, and the client's subprotocol offer (`offered`, credentials removed).
fn backend_handshake<B>(
    req: &Request<B>,
    route: &Route,
    backend_path: &str,
    conn: &ConnInfo,
    offered: &[&str],
) -> Handshake {
    let mut headers = HeaderMap::new();
    for name in &route.forward_headers {
        for value in req.headers().get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    drop_connection_listed(&mut headers, req.headers());
    if !route.forward_credentials {
        route.access.withhold_credentials(&mut headers);
    }
    // The hop before us: the balancer when its headers named the client, else the client.
    let hop = match conn.source {
        ClientSource::ForwardedHeaders => conn.tcp_peer,
        _ => conn.peer,
    };
    let client_ip = hop.ip().to_string();
    // Every earlier proxy's line, in order, then the address this connection came from.
    let forwarded_for = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .chain(std::iter::once(client_ip.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    // HTTP/2 carries the host as `:authority`, which hyper puts in the URI.
    let host = req.headers().get(header::HOST).cloned().or_else(|| {
        let authority = req.uri().authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    });
    if let Some(host) = host {
        headers.insert("x-forwarded-host", host);
    }
    let protocols = offered.join(", ");
    let query = route.access.forwarded_query(req.uri().query());
    Handshake {
        path: route.backend_path(backend_path, req.uri().path(), query.as_deref()),
        headers,
        protocols: (!protocols.is_empty())
            .then(|| HeaderValue::from_str(&protocols).ok())
            .flatten(),
        deflate: None,
    }
}

/// RFC 9110 §7.6.1: a header the client names in `Connection` belongs to its hop alone,
/// whatever `forward_headers` says (`Connection: Cookie` would otherwise be a way to ask us
/// to drop or keep headers at will, and hop-by-hop means never forwarded).
fn drop_connection_listed(forwarded: &mut HeaderMap, request: &HeaderMap) {
    let listed = request
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| header::HeaderName::from_bytes(name.trim().as_bytes()).ok());
    for name in listed {
        forwarded.remove(name);
    }
}

/// RFC 6455 §4.2.1: what makes a request a WebSocket upgrade.
pub fn check_upgrade<B>(req: &Request<B>) -> Result<(), RejectError> {
    if req.version() == Version::HTTP_2 {
        return super::extended_connect::check_extended_connect(req);
    }
    if req.method() != Method::GET {
        return Err(RejectError::BadRequest("a WebSocket upgrade must be a GET"));
    }
    if req.version() < Version::HTTP_11 {
        return Err(RejectError::BadRequest(
            "a WebSocket upgrade needs HTTP/1.1",
        ));
    }
    if !header_has_token(req, header::UPGRADE, "websocket") {
        return Err(RejectError::BadRequest("missing Upgrade: websocket"));
    }
    if !header_has_token(req, header::CONNECTION, "upgrade") {
        return Err(RejectError::BadRequest("missing Connection: Upgrade"));
    }
    match req.headers().get(header::SEC_WEBSOCKET_KEY) {
        None => return Err(RejectError::BadRequest("missing Sec-WebSocket-Key")),
        Some(key) if !is_valid_key(key.as_bytes()) => {
            return Err(RejectError::BadRequest(
                "Sec-WebSocket-Key must be 16 bytes in base64",
            ))
        }
        Some(_) => {}
    }
    match req.headers().get(header::SEC_WEBSOCKET_VERSION) {
        Some(v) if v == "13" => Ok(()),
        _ => Err(RejectError::UnsupportedVersion),
    }
}

fn header_has_token<B>(req: &Request<B>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// 16 bytes in canonical base64: 24 characters ending in `==`, no stray bits in the last one.
fn is_valid_key(key: &[u8]) -> bool {
    use base64::Engine;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|raw| raw.len() == 16)
}

/// Turn a rejection into its HTTP answer, a metric and a log line.
fn reject<B>(req: &Request<B>, route: Option<&Route>, e: RejectError) -> Response<Body> {
    let route_name = route.map_or(metrics::NO_ROUTE, |r| &*r.name);
    metrics::upgrade_rejected(route_name, e.label());
    // Query values are redacted: a token in the URL never reaches the log.
    let uri = access::log_uri(req.uri());
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
    let mut response = Response::new(Body::from(format!("{e}\n")));
    *response.status_mut() = e.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(edit: impl FnOnce(&mut hyper::http::request::Builder)) -> Request<()> {
        let mut b = Request::get("/x")
            .header("Upgrade", "websocket")
            .header("Connection", "keep-alive, Upgrade")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("Sec-WebSocket-Version", "13");
        edit(&mut b);
        b.body(()).unwrap()
    }

    #[test]
    fn accepts_a_proper_upgrade() {
        assert!(check_upgrade(&request(|_| {})).is_ok());
    }

    #[test]
    fn rejects_each_missing_piece_with_its_status() {
        let post = Request::post("/x").body(()).unwrap();
        assert_eq!(
            check_upgrade(&post).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        let no_upgrade = Request::get("/x")
            .header("Connection", "Upgrade")
            .body(())
            .unwrap();
        assert!(check_upgrade(&no_upgrade)
            .unwrap_err()
            .to_string()
            .contains("Upgrade: websocket"));
        let bad_key = request(|b| {
            b.headers_mut()
                .unwrap()
                .insert("Sec-WebSocket-Key", HeaderValue::from_static("short"));
        });
        assert!(check_upgrade(&bad_key)
            .unwrap_err()
            .to_string()
            .contains("Sec-WebSocket-Key"));
        // Regression (found by tests/fuzz.rs): 22 alphabet characters and `==` passed even when
        // the last character carried bits past the 16 bytes, which is not base64 of 16 bytes.
        let stray_bits = request(|b| {
            b.headers_mut().unwrap().insert(
                "Sec-WebSocket-Key",
                HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAB=="),
            );
        });
        assert_eq!(
            check_upgrade(&stray_bits).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        let v8 = request(|b| {
            b.headers_mut()
                .unwrap()
                .insert("Sec-WebSocket-Version", HeaderValue::from_static("8"));
        });
        assert_eq!(
            check_upgrade(&v8).unwrap_err().status(),
            StatusCode::UPGRADE_REQUIRED
        );
    }
}

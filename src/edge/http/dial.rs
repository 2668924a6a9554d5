//! The dial stage of a request: the backend dialled before any `101`, from the route's pool
//! or this session's one target, with the handshake a WebSocket backend is sent. Its own
//! file because what the backend is told (forwarded headers, `X-Forwarded-*`, the
//! subprotocol offer) is a concern apart from the request's checks.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode};
use tokio::time::Instant;
use tracing::Span;

use super::matched::Matched;
use crate::backend::pool::Lease;
use crate::backend::{handshake_path, Backend, Handshake, ProxyAddrs};
use crate::config::BackendAddr;
use crate::edge::shared::Shared;
use crate::error::RejectError;
use crate::metrics;
use crate::policy::{ClientSource, ConnInfo};
use crate::snapshot::{select_subprotocol, Route, Snapshot};
use crate::ws::extensions::Agreement;

/// A backend that answered, and what the client is told about it.
pub(super) struct Dialed {
    pub(super) backend: Backend,
    /// The pool member in use (released when the session ends).
    pub(super) lease: Option<Lease>,
    /// The backend as the registry and the access log name it.
    pub(super) name: String,
    /// The `Sec-WebSocket-Protocol` answer.
    pub(super) subprotocol: Option<HeaderValue>,
}

/// Dial: only a live backend earns a `101` — the route's pool in its order (a failed dial
/// tries the next backend), or this session's one target (502/504; egress 403).
pub(super) async fn dial<B: Sync>(
    req: &Request<B>,
    matched: &Matched,
    shared: &Shared,
    target: Option<BackendAddr>,
    deflate: Option<Agreement>,
) -> Result<Dialed, RejectError> {
    let Matched {
        conn,
        route,
        snapshot,
    } = matched;
    // The offer without `bearer.` credentials: never chosen, echoed or forwarded.
    let offered = route.access.offered_protocols(req);
    let dial_started = Instant::now();
    let proxy = route.send_proxy_protocol.then_some(ProxyAddrs {
        source: conn.peer,
        destination: conn.local,
    });
    let handshake = |target: &BackendAddr| match handshake_path(target) {
        Some(path) => Handshake {
            deflate,
            ..backend_handshake(req, route, snapshot, path, conn, &offered)
        },
        None => Handshake::default(),
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
    let (backend, lease) = dialed.inspect_err(|e| {
        // 502/504: the backend's fault (a refused egress is the config's, not its health).
        if matches!(
            e.status(),
            StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
        ) {
            shared.routes.backend_failed(&route.name, e.label());
        }
    })?;
    shared.routes.backend_reached(&route.name);
    metrics::backend_connected(&route.name, dial_started.elapsed());
    // A WebSocket backend chose from the client's offer; for a byte backend the route decides.
    let subprotocol = backend.subprotocol(|| {
        select_subprotocol(route, offered.iter().copied())
            .and_then(|p| HeaderValue::from_str(p).ok())
    });
    let name = match (&lease, &target) {
        (Some(lease), _) => lease.backend().to_string(),
        (None, Some(target)) => target.to_string(),
        (None, None) => String::new(),
    };
    Ok(Dialed {
        backend,
        lease,
        name,
        subprotocol,
    })
}

/// The backend handshake for a WebSocket route: mapped path, forwarded headers (without
/// the credentials the gateway checked and the sign-in's cookies), `X-Forwarded-*`, and the
/// client's subprotocol offer (`offered`, credentials removed).
fn backend_handshake<B>(
    req: &Request<B>,
    route: &Route,
    snapshot: &Snapshot,
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
    if let Some(signin) = &snapshot.signin {
        let keep_session = route.forward_credentials && route.access.takes_signin();
        signin.withhold_cookies(&mut headers, keep_session);
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

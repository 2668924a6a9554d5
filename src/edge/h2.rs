//! WebSockets over HTTP/2 (RFC 8441): serve an h2 connection with extended CONNECT enabled,
//! check the CONNECT request, and answer `200`; every other check is `http::handle`'s.

use std::sync::Arc;
use std::time::Duration;

use hyper::ext::Protocol;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use super::http::Body;
use super::shared::{ConnectionSlot, Shared};
use crate::error::RejectError;
use crate::policy::ConnInfo;

/// Serve one HTTP/2 connection: each stream is a request to `http::handle`, and an extended
/// CONNECT that passes its checks becomes a session on that stream. On shutdown: GOAWAY,
/// then the connection lives on while its sessions close with 1001.
pub async fn serve<IO>(io: IO, conn: ConnInfo, permit: Arc<ConnectionSlot>, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let shared = shared.clone();
        service_fn(move |req| {
            super::http::handle(req, conn.clone(), shared.clone(), permit.clone())
        })
    };
    let limits = &shared.snapshot.config.http2;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // SETTINGS_ENABLE_CONNECT_PROTOCOL: browsers send WebSockets here only when it is set.
        .enable_connect_protocol()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .initial_stream_window_size(limits.stream_window_bytes)
        .initial_connection_window_size(limits.connection_window_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .max_send_buf_size(limits.max_send_buffer_bytes)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.max_local_error_reset_streams)
        .max_header_list_size(u32::try_from(shared.snapshot.max_header_bytes).unwrap_or(u32::MAX));
    // A peer that stops answering HTTP/2 pings is gone: every session on it ends with it.
    if let Some(interval) = shared.snapshot.ping_interval {
        builder
            .keep_alive_interval(interval)
            .keep_alive_timeout(shared.snapshot.pong_timeout);
    }
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shared.shutdown.cancelled() => {
            // GOAWAY: no new streams; the sessions on this connection close with 1001 (they
            // watch the same token) and the connection ends after the last one.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                () = shared.hard_stop.cancelled() => return,
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "HTTP/2 connection ended with an error");
    }
}

/// h2c with prior knowledge: whether a plain connection opens with HTTP/2's preface. Its
/// first bytes `PRI ` are a method RFC 9113 §3.4 reserved so that no HTTP/1.1 request
/// starts with them; h2 checks the rest of the preface itself.
pub async fn opens_with_preface(stream: &TcpStream, timeout: Duration) -> bool {
    const START: &[u8] = b"PRI ";
    let peek = async {
        let mut buf = [0u8; 4];
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(n) => n,
                Err(_) => return false,
            };
            if n == 0 || buf[..n] != START[..n] {
                return false;
            }
            if n == START.len() {
                return true;
            }
            // A peek returns at once while any byte waits: poll the rest gently.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(timeout, peek).await.unwrap_or(false)
}

/// RFC 8441 §4–5: what makes an HTTP/2 request a WebSocket handshake. Neither
/// `Sec-WebSocket-Key` nor `Sec-WebSocket-Accept` is used; the version must still be 13.
pub fn check_extended_connect<B>(req: &Request<B>) -> Result<(), RejectError> {
    if req.method() != Method::CONNECT {
        return Err(RejectError::BadRequest(
            "a WebSocket over HTTP/2 is an extended CONNECT",
        ));
    }
    match req.extensions().get::<Protocol>() {
        None => {
            return Err(RejectError::BadRequest(
                "a CONNECT without :protocol is not a WebSocket",
            ))
        }
        Some(p) if !p.as_str().eq_ignore_ascii_case("websocket") => {
            return Err(RejectError::UnsupportedProtocol)
        }
        Some(_) => {}
    }
    match req.headers().get(header::SEC_WEBSOCKET_VERSION) {
        Some(v) if v == "13" => Ok(()),
        _ => Err(RejectError::UnsupportedVersion),
    }
}

/// The `200` that opens the stream as a WebSocket, and the stream to come once hyper has
/// sent it.
pub fn accept(req: &mut Request<hyper::body::Incoming>) -> (Response<Body>, OnUpgrade) {
    let upgrade = hyper::upgrade::on(req);
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::OK;
    (response, upgrade)
}

/// Headers that name the connection, which HTTP/2 forbids (RFC 9113 §8.2.2): a response
/// carrying one would be reset instead of sent.
pub fn strip_connection_headers(headers: &mut hyper::HeaderMap<HeaderValue>) {
    headers.remove(header::UPGRADE);
    headers.remove(header::CONNECTION);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(protocol: Option<&'static str>, version: Option<&str>) -> Request<()> {
        let mut b = Request::connect("https://example.com/x");
        if let Some(v) = version {
            b = b.header("sec-websocket-version", v);
        }
        let mut req = b.body(()).unwrap();
        if let Some(p) = protocol {
            req.extensions_mut().insert(Protocol::from_static(p));
        }
        req
    }

    #[test]
    fn accepts_an_extended_connect_for_websocket_without_a_key() {
        assert!(check_extended_connect(&connect(Some("websocket"), Some("13"))).is_ok());
    }

    #[test]
    fn rejects_each_missing_piece_with_the_rfc_status() {
        let get = Request::get("https://example.com/x").body(()).unwrap();
        let status = |r: &Request<()>| check_extended_connect(r).unwrap_err().status();
        assert_eq!(status(&get), StatusCode::BAD_REQUEST);
        assert_eq!(status(&connect(None, Some("13"))), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(&connect(Some("webtransport"), Some("13"))),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            status(&connect(Some("websocket"), None)),
            StatusCode::UPGRADE_REQUIRED
        );
        assert_eq!(
            status(&connect(Some("websocket"), Some("8"))),
            StatusCode::UPGRADE_REQUIRED
        );
    }
}

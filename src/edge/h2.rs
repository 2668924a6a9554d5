//! HTTP/2 connections (RFC 8441): serve h2 with extended CONNECT enabled and the `[http2]`
//! limits; each stream is a request to `http::handle`, whose RFC 8441 checks are in
//! `extended_connect`.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use super::console::Console;
use super::shared::{ConnectionSlot, Shared};
use crate::policy::ConnInfo;
use crate::snapshot::Snapshot;

/// Serve one HTTP/2 connection: each stream is a request to `http::handle`, and an extended
/// CONNECT that passes its checks becomes a session on that stream. On shutdown: GOAWAY,
/// then the connection lives on while its sessions close with 1001. Its settings and limits
/// come from the snapshot it was accepted under (a reload applies to new connections); each
/// stream takes the current snapshot for its route and checks.
pub async fn serve<IO>(
    io: IO,
    console: Option<Arc<Console>>,
    conn: ConnInfo,
    permit: Arc<ConnectionSlot>,
    snapshot: &Snapshot,
    shared: Arc<Shared>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = super::http::connection_service(console, conn, permit, shared.clone());
    let limits = &snapshot.config.http2;
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
        .max_header_list_size(u32::try_from(snapshot.max_header_bytes).unwrap_or(u32::MAX));
    // A peer that stops answering HTTP/2 pings is gone: every session on it ends with it.
    if let Some(interval) = snapshot.ping_interval {
        builder
            .keep_alive_interval(interval)
            .keep_alive_timeout(snapshot.pong_timeout);
    }
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // At shutdown, GOAWAY: no new streams; the sessions on this connection close with 1001
    // (they watch the same token) and the connection ends after the last one.
    let served =
        super::graceful::serve_until_shutdown(conn.as_mut(), |c| c.graceful_shutdown(), &shared);
    let Some(result) = served.await else {
        return;
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

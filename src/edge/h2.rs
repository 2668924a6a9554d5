//! HTTP/2 connections (RFC 8441): serve h2 with extended CONNECT enabled and the `[http2]`
//! limits; each stream is a request to `http::handle`, whose RFC 8441 checks are in
//! `extended_connect`. A connection with nothing open is closed: before its first request at
//! `header_read_secs` (the preface and SETTINGS included), later at `idle_timeout_secs`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::http2;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use super::console::Console;
use super::shared::{ConnectionSlot, InUse, Shared};
use crate::metrics;
use crate::policy::ConnInfo;
use crate::snapshot::Snapshot;

/// Serve one HTTP/2 connection: each stream is a request to `http::handle`, and an extended
/// CONNECT that passes its checks becomes a session on that stream. On shutdown: GOAWAY,
/// then the connection lives on while its sessions close with 1001. Its settings and limits
/// come from the snapshot it was accepted under (a reload applies to new connections); each
/// stream takes the current snapshot for its route and checks.
///
/// Every phase has a deadline: a connection that has not completed a request within
/// `header_read_secs` (a partial preface, SETTINGS and no HEADERS) or that has had no stream
/// open for `idle_timeout_secs` gets GOAWAY; one that does not finish within
/// `header_read_secs` after it, with still nothing open, is dropped.
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
    let slot = permit.clone();
    let requests = super::http::connection_service(console, conn, permit, shared.clone());
    // A response's body keeps its stream in use until it is sent, as the request did.
    let in_use = slot.clone();
    let service = service_fn(move |req| {
        let held = in_use.enter();
        let answer = requests.call(req);
        async move {
            let response = answer.await?;
            Ok::<_, std::convert::Infallible>(response.map(|body| Held { body, _held: held }))
        }
    });
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
    let first_request = snapshot.header_read_timeout;
    let result = tokio::select! {
        r = conn.as_mut() => r,
        phase = unused_for(&slot, first_request, limits.idle_timeout()) => {
            metrics::connection_timed_out(phase);
            debug!(phase, "HTTP/2 connection unused: GOAWAY");
            conn.as_mut().graceful_shutdown();
            // h2 closes after the client answers the PING that follows GOAWAY; one that never
            // answers (or never finished its preface) is dropped once nothing is open.
            tokio::select! {
                r = conn.as_mut() => r,
                _ = unused_for(&slot, first_request, first_request) => return,
                () = shared.hard_stop.cancelled() => return,
            }
        }
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

/// Resolves once `slot` has had no request or session open for `first` (before anything was
/// ever open: `phase` "first_request") or `idle` (after: "idle").
async fn unused_for(slot: &ConnectionSlot, first: Duration, idle: Duration) -> &'static str {
    let mut used = false;
    loop {
        let changed = slot.changed();
        tokio::pin!(changed);
        // Registered before the count is read, so no change is missed between the two.
        changed.as_mut().enable();
        if slot.in_use() > 0 {
            used = true;
            changed.await;
            continue;
        }
        let (limit, phase) = if used {
            (idle, "idle")
        } else {
            (first, "first_request")
        };
        tokio::select! {
            () = tokio::time::sleep(limit) => return phase,
            () = &mut changed => used = true,
        }
    }
}

/// A response body that keeps its stream counted in use until it is dropped.
struct Held<B> {
    body: B,
    _held: InUse,
}

impl<B: Body + Unpin> Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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

//! HTTP/2 connections (RFC 8441) on the `h2` crate: extended CONNECT enabled and the
//! `[http2]` limits; each stream is a request to `http::handle`, whose RFC 8441 checks are in
//! `extended_connect`, and an extended CONNECT's `200` hands the stream itself to the
//! session, which reads and writes it within h2's flow control with no task or copy queue
//! between. A connection with nothing open is closed: before its first request at
//! `header_read_secs` (the preface and SETTINGS included), later at `idle_timeout_secs`.

use std::convert::Infallible;
use std::error::Error;
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Ping, PingPong, RecvStream, SendStream};
use http_body_util::{BodyExt, Empty};
use hyper::body::Body;
use hyper::header::{self, HeaderValue};
use hyper::service::Service;
use hyper::{Method, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument, Span};

use super::console::Console;
use super::extended_connect::{strip_connection_headers, PendingStream};
use super::h2_writes::GatheredWrites;
use super::http::ConnectionBody;
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
/// `header_read_secs` after a GOAWAY, with still nothing open, is dropped. With keepalive on
/// (`ping_interval_secs`), a PING unanswered for `pong_timeout_secs` drops the connection
/// and every session on it.
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
    let requests =
        super::http::connection_service::<Empty<Bytes>>(console, conn, permit, shared.clone());
    let limits = &snapshot.config.http2;
    let mut builder = h2::server::Builder::new();
    builder
        // SETTINGS_ENABLE_CONNECT_PROTOCOL: browsers send WebSockets here only when it is set.
        .enable_connect_protocol()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .initial_window_size(limits.stream_window_bytes)
        .initial_connection_window_size(limits.connection_window_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .max_send_buffer_size(limits.max_send_buffer_bytes)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(limits.max_local_error_reset_streams))
        .max_header_list_size(u32::try_from(snapshot.max_header_bytes).unwrap_or(u32::MAX));
    let first_request = snapshot.header_read_timeout;
    let unused = unused_for(&slot, first_request, limits.idle_timeout());
    tokio::pin!(unused);
    // The preface and SETTINGS count towards the first request's deadline.
    let handshake = tokio::select! {
        r = builder.handshake::<_, Bytes>(GatheredWrites::new(io)) => r,
        phase = &mut unused => {
            metrics::connection_timed_out(phase);
            debug!(phase, "HTTP/2 preface not completed in time: closed");
            return;
        }
        () = shared.shutdown.cancelled() => return,
    };
    let mut connection = match handshake {
        Ok(connection) => connection,
        Err(e) => {
            debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
    };
    // A peer that stops answering HTTP/2 pings is gone: every session on it ends with it.
    let unanswered = unanswered_ping(
        connection.ping_pong(),
        snapshot.ping_interval,
        snapshot.pong_timeout,
    );
    tokio::pin!(unanswered);
    let mut goaway = false;
    loop {
        tokio::select! {
            next = connection.accept() => match next {
                Some(Ok((req, respond))) => {
                    let stream = answer(req, respond, requests.clone(), slot.enter(), shared.hard_stop.clone());
                    shared.tracker.spawn(stream.instrument(Span::current()));
                }
                Some(Err(e)) => {
                    debug!(error = %e, "HTTP/2 connection ended with an error");
                    return;
                }
                None => return,
            },
            phase = &mut unused => {
                // h2 closes after the client answers the PING that follows GOAWAY; one that
                // never answers (or stalls its side) is dropped once nothing is open.
                if goaway {
                    return;
                }
                metrics::connection_timed_out(phase);
                debug!(phase, "HTTP/2 connection unused: GOAWAY");
                connection.graceful_shutdown();
                goaway = true;
                unused.set(unused_for(&slot, first_request, first_request));
            }
            () = shared.shutdown.cancelled(), if !goaway => {
                // GOAWAY: no new streams; the sessions on this connection close with 1001 (they
                // watch the same token) and the connection ends after the last one.
                connection.graceful_shutdown();
                goaway = true;
                unused.set(unused_for(&slot, first_request, first_request));
            }
            () = shared.hard_stop.cancelled() => return,
            () = &mut unanswered => {
                debug!("HTTP/2 PING unanswered: connection dropped");
                return;
            }
        }
    }
}

/// Answer one stream: the request through `requests` (abandoned if the client resets the
/// stream first), then the answer — an extended CONNECT's `2xx` without a body, its stream
/// handed to the session, or any other answer with its body sent within the stream's flow
/// control. The stream counts as in use on its connection until this ends.
async fn answer<S>(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    requests: S,
    _in_use: InUse,
    hard_stop: CancellationToken,
) where
    S: Service<Request<Empty<Bytes>>, Response = Response<ConnectionBody>, Error = Infallible>,
{
    let (mut parts, recv) = req.into_parts();
    // No stage reads a request's body; an extended CONNECT's stream is the session's.
    let handover = (parts.method == Method::CONNECT).then(|| {
        let (handover, pending) = PendingStream::new();
        parts.extensions.insert(pending);
        handover
    });
    let answered = tokio::select! {
        r = requests.call(Request::from_parts(parts, Empty::new())) => r,
        reset = poll_fn(|cx| respond.poll_reset(cx)) => {
            debug!(reason = ?reset.ok(), "stream reset before its answer");
            return;
        }
        () = hard_stop.cancelled() => return,
    };
    let (mut head, body) = match answered {
        Ok(response) => response.into_parts(),
        Err(never) => match never {},
    };
    strip_connection_headers(&mut head.headers);
    // RFC 9110 §6.6.1, as hyper does on HTTP/1.1.
    if !head.headers.contains_key(header::DATE) {
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        if let Ok(date) = HeaderValue::try_from(now) {
            head.headers.insert(header::DATE, date);
        }
    }
    if let Some(tx) = handover.filter(|tx| head.status.is_success() && !tx.is_closed()) {
        // RFC 9113 §8.5: a CONNECT's 2xx has no content; what follows is the tunnel's.
        head.headers.remove(header::CONTENT_LENGTH);
        match respond.send_response(Response::from_parts(head, ()), false) {
            // A session that went away meanwhile drops them, which resets the stream.
            Ok(send) => drop(tx.send((send, recv))),
            Err(e) => debug!(error = %e, "the 200 of an extended CONNECT was not sent"),
        }
        return;
    }
    drop(recv);
    if body.is_end_stream() {
        if let Err(e) = respond.send_response(Response::from_parts(head, ()), true) {
            debug!(error = %e, "answer not sent");
        }
        return;
    }
    if let Some(len) = body.size_hint().exact() {
        head.headers
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(len));
    }
    let sent = match respond.send_response(Response::from_parts(head, ()), false) {
        Ok(send) => send_body(body, send).await,
        Err(e) => Err(e.into()),
    };
    if let Err(e) = sent {
        debug!(error = %e, "answer not sent");
    }
}

/// An answer's body on its stream, each piece sent as the stream's send capacity allows (a
/// client that reads slowly holds one piece of it, not the whole body).
async fn send_body<B>(
    body: B,
    mut send: SendStream<Bytes>,
) -> Result<(), Box<dyn Error + Send + Sync>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        match frame.into_data() {
            Ok(mut data) => {
                while !data.is_empty() {
                    send.reserve_capacity(data.len());
                    let room = poll_fn(|cx| match send.capacity() {
                        0 => send.poll_capacity(cx),
                        room => std::task::Poll::Ready(Some(Ok(room))),
                    })
                    .await
                    .ok_or("the stream closed")??;
                    let room = room.min(send.capacity()).min(data.len());
                    if room > 0 {
                        send.send_data(data.split_to(room), false)?;
                    }
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers)?;
                    return Ok(());
                }
            }
        }
    }
    send.send_data(Bytes::new(), true)?;
    Ok(())
}

/// Resolves when the peer has left a PING unanswered for `timeout` (one is sent every
/// `interval`); never without keepalive.
async fn unanswered_ping(
    ping_pong: Option<PingPong>,
    interval: Option<Duration>,
    timeout: Duration,
) {
    let (Some(mut ping_pong), Some(interval)) = (ping_pong, interval) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            // The connection is ending: `accept` says so.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
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

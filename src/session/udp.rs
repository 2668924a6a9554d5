//! The pump between a WebSocket client and a UDP backend (`udp://`): one binary message is
//! exactly one datagram and one datagram exactly one message, over one connected socket per
//! session; when a side cannot keep up, datagrams are dropped and counted, never queued
//! without bound.
//!
//! Three parts, each owning what it touches:
//! - the client reader (its own task: `read_frame` is not cancel-safe) reassembles a message
//!   up to the datagram limit (1009 above it; text 1003 unless allowed) and sends it with
//!   `try_send`: a full send buffer drops it (`backend_busy`) instead of holding the client;
//! - the backend receiver (its own task) reads datagrams and offers each to a bounded queue:
//!   a full queue, a client that is not reading, drops it (`client_slow`);
//! - the writer (the session's future) empties the queue into frames and owns the close
//!   handshake, keepalive pings, the idle timeout and the end on ICMP errors.

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};
use futures_util::StreamExt;
use tokio::io::AsyncWrite;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::bridge::{Initiator, Outcome, OVER_BUDGET};
use super::keepalive::{Due, Keepalive};
use super::registry::SessionControl;
use super::settings::SessionSettings;
use crate::config::UdpSettings;
use crate::error::close_code;
use crate::metrics::{SessionMetrics, Tally, UdpMetrics};
use crate::ws::frames::{close_payload_code, GuardedWriter, MessageCheck, WriteFailed};
use crate::ws::reader::{FrameReader, ReadError, ReadReady};
use crate::ws::writer::FrameWriter;

/// A client message that is kept whole up to this capacity between messages; a larger
/// buffer is given back (an idle session holds little).
const KEEP_MESSAGE_BUFFER: usize = 16 * 1024;

/// The largest datagram this socket's family carries under `settings`.
pub fn datagram_limit(socket: &UdpSocket, settings: &UdpSettings) -> usize {
    let v6 = matches!(socket.peer_addr(), Ok(SocketAddr::V6(_)));
    settings.datagram_limit(v6)
}

/// What the two reading tasks tell the writer.
#[derive(Debug)]
enum Event {
    Ping(Box<[u8]>),
    Pong(Box<[u8]>),
    /// The client's Close (raw payload, to echo).
    Close(Box<[u8]>),
    Violation(u16, &'static str),
    OverBudget,
    /// The client's stream ended without a Close.
    Gone,
    /// The socket reported `max_icmp_errors` ICMP errors in a row.
    Unreachable,
    /// The socket failed otherwise.
    BackendFailed,
}

/// When the last datagram went either way, and the ICMP errors since the last one the
/// backend sent: shared by the two reading tasks and the writer.
struct Activity {
    base: Instant,
    /// Milliseconds from `base`.
    last: AtomicU64,
    icmp_in_a_row: AtomicU32,
    max_icmp_errors: u32,
    icmp_counter: metrics::Counter,
}

impl Activity {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// The backend answered: it is reachable again.
    fn backend_answered(&self) {
        self.icmp_in_a_row.store(0, Ordering::Relaxed);
    }

    /// An ICMP error surfaced; true when it is one too many.
    fn icmp_error(&self) -> bool {
        self.icmp_counter.increment(1);
        let n = self.icmp_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_icmp_errors != 0 && n >= self.max_icmp_errors
    }
}

/// Whether a socket error is an ICMP error the kernel reported for an earlier datagram
/// (port or host unreachable).
fn is_icmp_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// Pump one upgraded WebSocket and one connected UDP socket until the session ends.
/// `ws_read` should already refuse frames above the datagram limit (1009).
#[allow(clippy::too_many_arguments)]
pub fn run<'a, CR, CW>(
    ws_read: FrameReader<CR>,
    ws_write: FrameWriter<CW>,
    socket: UdpSocket,
    config: &'a SessionSettings,
    metrics: &'a SessionMetrics,
    udp_metrics: UdpMetrics,
    control: &'a SessionControl,
    hard_stop: &'a CancellationToken,
) -> impl Future<Output = Outcome> + 'a
where
    CR: ReadReady + Send + 'static,
    CW: AsyncWrite + Unpin + 'a,
{
    let settings = &config.udp;
    let sock = socket2::SockRef::from(&socket);
    if let Some(n) = settings.recv_buffer_bytes {
        let _ = sock.set_recv_buffer_size(n);
    }
    if let Some(n) = settings.send_buffer_bytes {
        let _ = sock.set_send_buffer_size(n);
    }
    let limit = datagram_limit(&socket, settings);
    let socket = Arc::new(socket);
    let activity = Arc::new(Activity {
        base: Instant::now(),
        last: AtomicU64::new(0),
        icmp_in_a_row: AtomicU32::new(0),
        max_icmp_errors: settings.max_icmp_errors,
        icmp_counter: udp_metrics.icmp_errors.clone(),
    });
    // Control events only: a handful in flight, a flooding client waits on the channel.
    let (events, events_rx) = flume::bounded(4);
    // Backend datagrams for the client: the one queue, bounded; full means dropped.
    let (queue, queue_rx) = flume::bounded::<Bytes>(settings.queue_datagrams);
    let client = tokio::spawn(client_to_backend(
        ws_read,
        socket.clone(),
        events.clone(),
        ClientSide {
            limit,
            allow_text: settings.allow_text,
            bytes: metrics.bytes_to_backend.clone(),
            messages: metrics.messages_to_backend.clone(),
            udp: udp_metrics.clone(),
            activity: activity.clone(),
        },
    ));
    let backend = tokio::spawn(backend_to_queue(
        socket,
        queue,
        events,
        limit,
        udp_metrics.clone(),
        activity.clone(),
    ));
    let keepalive = config
        .ping_interval
        .map(|i| Keepalive::new(i, config.pong_timeout, Instant::now()));
    let mut writer = Writer {
        ws: GuardedWriter::new(
            ws_write,
            keepalive.as_ref().map(Keepalive::stall_limit),
            hard_stop,
        ),
        keepalive,
        sent: 0,
    };
    async move {
        let (code, initiator, reason) = writer
            .run(
                events_rx,
                queue_rx,
                config,
                metrics,
                &udp_metrics,
                &activity,
                control,
            )
            .await;
        // Both are cancel-safe to drop here: nothing reads their sources afterwards. The
        // socket closes with the last of them.
        client.abort();
        backend.abort();
        let _ = client.await;
        let _ = backend.await;
        Outcome {
            code,
            initiator,
            reason,
            bytes_to_backend: metrics.bytes_to_backend.session_total(),
            bytes_to_client: writer.sent,
        }
    }
}

struct ClientSide {
    limit: usize,
    allow_text: bool,
    bytes: Tally,
    messages: Tally,
    udp: UdpMetrics,
    activity: Arc<Activity>,
}

/// Client messages → datagrams, until the client's Close, error or EOF.
async fn client_to_backend<CR: ReadReady>(
    mut ws: FrameReader<CR>,
    socket: Arc<UdpSocket>,
    events: flume::Sender<Event>,
    side: ClientSide,
) {
    let last = pump_messages(&mut ws, &socket, &events, &side).await;
    let _ = events.send_async(last).await;
}

async fn pump_messages<CR: ReadReady>(
    ws: &mut FrameReader<CR>,
    socket: &UdpSocket,
    events: &flume::Sender<Event>,
    side: &ClientSide,
) -> Event {
    let mut check = MessageCheck::new(side.limit);
    let mut message: Vec<u8> = Vec::new();
    loop {
        let frame = match ws.read_frame().await {
            Ok(frame) => frame,
            Err(ReadError::Violation((code, reason))) => return Event::Violation(code, reason),
            Err(ReadError::Gone(_)) => return Event::Gone,
            Err(ReadError::OverBudget) => return Event::OverBudget,
        };
        match frame.opcode {
            OpCode::Ping | OpCode::Pong => {
                let payload: Box<[u8]> = frame.payload[..].into();
                let event = if frame.opcode == OpCode::Ping {
                    Event::Ping(payload)
                } else {
                    Event::Pong(payload)
                };
                if events.send_async(event).await.is_err() {
                    return Event::Gone;
                }
                continue;
            }
            OpCode::Close => return Event::Close(frame.payload[..].into()),
            OpCode::Text if !side.allow_text => {
                return Event::Violation(
                    close_code::UNSUPPORTED_DATA,
                    "text messages are not accepted on this route",
                )
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {}
        }
        match check.data_frame(frame.opcode, frame.fin, &frame.payload) {
            Ok(true) => {}
            Ok(false) => {
                // A fragment: kept until the message is whole (bounded by the check).
                message.extend_from_slice(&frame.payload);
                continue;
            }
            Err((code, reason)) => return Event::Violation(code, reason),
        }
        // The whole message: a single frame goes out as it is, fragments as one datagram.
        let datagram: &[u8] = if message.is_empty() {
            &frame.payload
        } else {
            message.extend_from_slice(&frame.payload);
            &message
        };
        side.messages.increment(1);
        match socket.try_send(datagram) {
            Ok(n) => {
                side.bytes.increment(n as u64);
                side.udp.to_backend.increment(1);
                side.activity.touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                side.udp.dropped_backend_busy.increment(1);
            }
            Err(e) if is_icmp_error(&e) => {
                side.udp.dropped_unreachable.increment(1);
                if side.activity.icmp_error() {
                    return Event::Unreachable;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "datagram to the backend dropped");
                side.udp.dropped_send_error.increment(1);
            }
        }
        message.clear();
        if message.capacity() > KEEP_MESSAGE_BUFFER {
            message = Vec::new();
        }
    }
}

/// Backend datagrams → the client's bounded queue, dropping what does not fit.
async fn backend_to_queue(
    socket: Arc<UdpSocket>,
    queue: flume::Sender<Bytes>,
    events: flume::Sender<Event>,
    limit: usize,
    udp: UdpMetrics,
    activity: Arc<Activity>,
) {
    // One byte over the limit tells an oversize datagram from one that fits exactly.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if let Err(e) = socket.readable().await {
            tracing::debug!(error = %e, "backend socket failed");
            let _ = events.send_async(Event::BackendFailed).await;
            return;
        }
        if buf.is_empty() {
            // Taken on the first datagram: a session whose backend never answers holds none.
            buf = vec![0; limit + 1];
        }
        match socket.try_recv(&mut buf) {
            Ok(n) => {
                activity.touch();
                activity.backend_answered();
                if n > limit {
                    udp.dropped_oversize.increment(1);
                    continue;
                }
                match queue.try_send(Bytes::copy_from_slice(&buf[..n])) {
                    Ok(()) => {}
                    Err(flume::TrySendError::Full(_)) => udp.dropped_client_slow.increment(1),
                    Err(flume::TrySendError::Disconnected(_)) => return,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if is_icmp_error(&e) => {
                if activity.icmp_error() {
                    let _ = events.send_async(Event::Unreachable).await;
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "backend socket failed");
                let _ = events.send_async(Event::BackendFailed).await;
                return;
            }
        }
    }
}

type Ending = (u16, Initiator, Cow<'static, str>);

struct Writer<'a, CW> {
    ws: GuardedWriter<'a, CW>,
    keepalive: Option<Keepalive>,
    sent: u64,
}

/// The gateway sent its Close and waits for the client's until `deadline`.
struct Closing {
    code: u16,
    initiator: Initiator,
    reason: Cow<'static, str>,
    deadline: Instant,
}

impl<CW: AsyncWrite + Unpin> Writer<'_, CW> {
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &mut self,
        events: flume::Receiver<Event>,
        queue: flume::Receiver<Bytes>,
        config: &SessionSettings,
        metrics: &SessionMetrics,
        udp: &UdpMetrics,
        activity: &Activity,
        control: &SessionControl,
    ) -> Ending {
        let hard_stop = self.ws.hard_stop();
        let mut events = events.into_stream();
        let mut queue = queue.into_stream();
        let timer = tokio::time::sleep_until(Instant::now() + Duration::from_secs(1 << 30));
        tokio::pin!(timer);
        let asked_to_close = control.cancelled();
        tokio::pin!(asked_to_close);
        let idle = config.udp.idle_timeout;
        let mut closing: Option<Closing> = None;
        let stopped: Ending = (
            close_code::ABNORMAL,
            Initiator::Gateway,
            "drain deadline passed".into(),
        );
        macro_rules! send_or_end {
            ($write:expr) => {
                match $write.await {
                    Ok(()) => {
                        if self.ws.take_waited() {
                            if let Some(k) = self.keepalive.as_mut() {
                                k.excuse(Instant::now());
                            }
                        }
                    }
                    Err(WriteFailed::Io) => {
                        return (
                            close_code::ABNORMAL,
                            Initiator::Client,
                            "client connection lost".into(),
                        )
                    }
                    Err(WriteFailed::Stalled) => {
                        metrics.keepalive_timed_out();
                        return (
                            close_code::ABNORMAL,
                            Initiator::Gateway,
                            "client stopped reading".into(),
                        );
                    }
                    Err(WriteFailed::Stopped) => return stopped,
                }
            };
        }
        macro_rules! close_with {
            ($code:expr, $initiator:expr, $reason:expr) => {{
                if closing.is_some() {
                    continue;
                }
                let reason: Cow<'static, str> = $reason.into();
                send_or_end!(self.ws.send_close($code, &reason));
                closing = Some(Closing {
                    code: $code,
                    initiator: $initiator,
                    reason,
                    deadline: Instant::now() + config.close_grace,
                });
                continue;
            }};
        }
        loop {
            let open = closing.is_none();
            let ping_at = match (open, &self.keepalive) {
                (true, Some(k)) => Some(k.deadline()),
                _ => None,
            };
            let idle_at = idle.filter(|_| open).map(|d| activity.last() + d);
            let close_at = closing.as_ref().map(|c| c.deadline);
            let next = [ping_at, idle_at, close_at].into_iter().flatten().min();
            if let Some(at) = next {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
            }
            tokio::select! {
                biased;
                () = hard_stop.cancelled(), if !open => return stopped,
                () = &mut timer, if next.is_some() => {
                    let now = Instant::now();
                    if let Some(c) = closing.take_if(|c| c.deadline <= now) {
                        return (c.code, c.initiator, c.reason);
                    }
                    if idle_at.is_some_and(|at| at <= now) {
                        close_with!(close_code::NORMAL, Initiator::Gateway, "idle timeout");
                    }
                    if ping_at.is_none_or(|at| at > now) {
                        continue;
                    }
                    let Some(k) = self.keepalive.as_mut() else { continue };
                    match k.on_deadline(now) {
                        Due::Ping(seq) => send_or_end!(self.ws.send(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&seq)))),
                        Due::TimedOut => {
                            metrics.keepalive_timed_out();
                            Box::pin(self.ws.try_close(close_code::GOING_AWAY, "keepalive timeout")).await;
                            return (close_code::GOING_AWAY, Initiator::Gateway, "keepalive timeout".into());
                        }
                    }
                }
                event = events.next() => match event {
                    Some(Event::Ping(payload)) => {
                        if open {
                            send_or_end!(self.ws.send(Frame::pong(Payload::Borrowed(&payload))));
                        }
                    }
                    Some(Event::Pong(payload)) => {
                        if let Some(rtt) = self.keepalive.as_mut().and_then(|k| k.on_pong(&payload, Instant::now())) {
                            metrics.ping_rtt.record(rtt.as_secs_f64());
                        }
                    }
                    Some(Event::Close(echo)) => {
                        if let Some(c) = closing {
                            return (c.code, c.initiator, c.reason);
                        }
                        send_or_end!(self.ws.send(Frame::close_raw(Payload::Borrowed(&echo))));
                        let code = close_payload_code(&echo);
                        let reason = String::from_utf8_lossy(echo.get(2..).unwrap_or_default()).into_owned();
                        return (code, Initiator::Client, reason.into());
                    }
                    Some(Event::Violation(code, reason)) => {
                        if let Some(c) = closing {
                            return (c.code, c.initiator, c.reason);
                        }
                        Box::pin(self.ws.try_close(code, reason)).await;
                        return (code, Initiator::Client, reason.into());
                    }
                    Some(Event::OverBudget) => {
                        if let Some(c) = closing {
                            return (c.code, c.initiator, c.reason);
                        }
                        Box::pin(self.ws.try_close(close_code::TRY_AGAIN_LATER, OVER_BUDGET)).await;
                        return (close_code::TRY_AGAIN_LATER, Initiator::Gateway, OVER_BUDGET.into());
                    }
                    Some(Event::Unreachable) => {
                        close_with!(close_code::INTERNAL_ERROR, Initiator::Backend, "backend unreachable (ICMP errors)");
                    }
                    Some(Event::BackendFailed) => {
                        close_with!(close_code::INTERNAL_ERROR, Initiator::Backend, "backend socket failed");
                    }
                    Some(Event::Gone) | None => {
                        return match closing {
                            Some(c) => (c.code, c.initiator, c.reason),
                            None => (close_code::ABNORMAL, Initiator::Client, "client vanished without a Close".into()),
                        };
                    }
                },
                () = &mut asked_to_close, if open => {
                    let (code, reason) = control.reason();
                    close_with!(code, Initiator::Gateway, reason);
                }
                datagram = queue.next(), if open => {
                    let Some(datagram) = datagram else { continue };
                    let n = datagram.len() as u64;
                    send_or_end!(self.ws.send(Frame::binary(Payload::Borrowed(&datagram))));
                    self.sent += n;
                    metrics.bytes_to_client.increment(n);
                    metrics.messages_to_client.increment(1);
                    udp.to_client.increment(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_errors_count_in_a_row() {
        let activity = Activity {
            base: Instant::now(),
            last: AtomicU64::new(0),
            icmp_in_a_row: AtomicU32::new(0),
            max_icmp_errors: 2,
            icmp_counter: metrics::Counter::noop(),
        };
        assert!(!activity.icmp_error());
        activity.backend_answered();
        assert!(!activity.icmp_error());
        assert!(activity.icmp_error(), "two in a row");
        assert!(is_icmp_error(&io::ErrorKind::ConnectionRefused.into()));
        assert!(!is_icmp_error(&io::ErrorKind::WouldBlock.into()));
    }
}

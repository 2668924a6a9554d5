//! The two-direction pump between a WebSocket client and a byte-stream backend, and how it closes.
//!
//! Two tasks, each owning one half of each side:
//! - `client_to_backend` reads frames (`read_frame` is not cancel-safe, so it has its own loop
//!   and is never raced) and writes payloads to the backend; control frames and the
//!   end of the client's stream are reported to the other task over a small bounded channel.
//! - `backend_to_client` owns the WebSocket writer: backend bytes, pongs, pings and every Close go
//!   out from here, so the close handshake and keepalive live in one place.
//!
//! Backpressure is end to end: each task holds at most one buffer and does not read its source
//! until the last write to its sink finished. An optional bandwidth cap paces each task's reads
//! (`session::pacer`), so a capped session slows its sender down instead of buffering.

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
use futures_util::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::deflate::{Deflater, HopDeflate, Inflater};
use super::frames::{close_payload_code, GuardedWriter, MessageCheck, WriteFailed};
use super::io::BackendSource;
use super::keepalive::{Due, Held, Keepalive};
use super::pacer::Pacer;
use super::reader::{FrameReader, ReadError, ReadReady};
use super::registry::SessionControl;
use super::utf8::complete_prefix;
use super::writer::FrameWriter;
use crate::config::MessageType;
use crate::error::close_code;
use crate::metrics::{SessionMetrics, Tally};

/// Per-session settings, taken from the config snapshot the session started with.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Most backend bytes read (and framed) at once. The client side is bounded by
    /// `max_frame_bytes`, enforced by the frame reader.
    pub buffer_bytes: usize,
    /// Largest client message, all fragments together (1009 above it).
    pub max_message_bytes: usize,
    pub message_type: MessageType,
    /// `None` disables pings.
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    pub close_grace: Duration,
    /// A backend write without progress for this long closes the session (1011).
    pub backend_stall: Duration,
    /// Pacing of each direction in bytes per second; `None`: unpaced.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// permessage-deflate with the client, when negotiated.
    pub deflate: Option<HopDeflate>,
}

/// Who started the end of a session (`initiator` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    Client,
    Backend,
    Gateway,
}

impl Initiator {
    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Backend => "backend",
            Self::Gateway => "gateway",
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The close code sent or received; 1006 when a peer vanished without one.
    pub code: u16,
    pub initiator: Initiator,
    pub reason: Cow<'static, str>,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
}

/// What the client-reading task tells the client-writing task. Kept small (boxed payloads):
/// the channel's first block holds 32 of these in every session.
#[derive(Debug)]
enum FromClient {
    /// The client pinged: answer with a pong carrying this payload.
    Ping(Box<[u8]>),
    /// The client answered a ping.
    Pong(Box<[u8]>),
    /// The client's Close frame (raw payload, to echo). The backend's write side is shut.
    Close(Box<[u8]>),
    /// The client broke the protocol: close with this code.
    Violation(u16, &'static str),
    /// Writing to the backend failed: the backend is gone.
    BackendWriteFailed,
    /// A write to the backend made no progress for `backend_stall`: close with 1011.
    BackendStalled,
    /// The client's stream ended or failed without a Close.
    Gone,
    /// The frame budget could not cover the client's frame: close with 1013.
    OverBudget,
}

/// Bridge one upgraded WebSocket and one backend until the session ends.
///
/// Not an `async fn`: the client reader starts here, and the returned future holds only the
/// writer's side (an `async fn` would keep a second copy of every argument for the session's
/// whole life).
#[allow(clippy::too_many_arguments)]
pub fn run<'a, CR, CW, BR, BW>(
    ws_read: FrameReader<CR>,
    ws_write: FrameWriter<CW>,
    backend_read: BR,
    backend_write: BW,
    config: &'a BridgeConfig,
    metrics: &'a SessionMetrics,
    control: &'a SessionControl,
    hard_stop: &'a CancellationToken,
) -> impl Future<Output = Outcome> + 'a
where
    CR: ReadReady + Send + 'static,
    CW: AsyncWrite + Unpin + 'a,
    BR: BackendSource + 'a,
    BW: AsyncWrite + Unpin + Send + 'static,
{
    // A handful of control messages in flight at most: a client that floods pings
    // while we cannot write waits on this channel, not on our memory. flume's bounded
    // channel costs an idle session about 200 bytes; tokio's preallocates 1.3 KiB.
    let (tx, rx) = flume::bounded(4);
    let held = Held::new();
    let mut pump = ClientPump {
        ws: ws_read,
        backend: backend_write,
        tx,
        counters: ClientCounters {
            max_message_bytes: config.max_message_bytes,
            bytes: metrics.bytes_to_backend.clone(),
            messages: metrics.messages_to_backend.clone(),
            pacer: Pacer::new(config.bandwidth_bytes_per_sec),
            inflater: config.deflate.map(|d| d.inflater()),
            held: held.clone(),
            backend_stall: config.backend_stall,
        },
    };
    let reader = tokio::spawn(async move { pump.run().await });
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
        held,
        sent: 0,
        deflater: config.deflate.map(|d| d.deflater()),
    };
    async move {
        let (code, initiator, reason) = writer
            .backend_to_client(backend_read, rx, config, metrics, control)
            .await;
        // Dropping the reader's loop is cancel-safe: nothing reads the client's stream
        // afterwards.
        reader.abort();
        let _ = reader.await;
        Outcome {
            code,
            initiator,
            reason,
            // Counted by the reader with every write to the backend.
            bytes_to_backend: metrics.bytes_to_backend.session_total(),
            bytes_to_client: writer.sent,
        }
    }
}

struct ClientCounters {
    max_message_bytes: usize,
    bytes: Tally,
    messages: Tally,
    pacer: Pacer,
    /// For the client's compressed messages (permessage-deflate negotiated).
    inflater: Option<Inflater>,
    /// Marked while a backend write waits (read by the writer's keepalive).
    held: Arc<Held>,
    backend_stall: Duration,
}

/// Client frames → backend bytes: the reader task's state, kept in one place so the task's
/// future holds it once.
struct ClientPump<CR, BW> {
    ws: FrameReader<CR>,
    backend: BW,
    tx: flume::Sender<FromClient>,
    counters: ClientCounters,
}

impl<CR: ReadReady, BW: AsyncWrite + Unpin> ClientPump<CR, BW> {
    /// Ends at the client's Close, error or EOF, or when the writer aborts the task.
    async fn run(&mut self) {
        let last = pump_client_frames(
            &mut self.ws,
            &mut self.backend,
            &self.tx,
            &mut self.counters,
        )
        .await;
        // The client is done sending. Tell the writer before the backend gets its FIN
        // (half-close): the backend's answering EOF must find the writer already in the
        // client-closed phase, or the close would be counted as the backend's.
        // Every client byte was written before this point, so the FIN loses nothing.
        let _ = self.tx.send_async(last).await;
        let _ = self.backend.shutdown().await;
    }
}

/// Pumps until the client's side ends; returns the message that says how.
async fn pump_client_frames<CR, BW>(
    ws: &mut FrameReader<CR>,
    backend: &mut BW,
    tx: &flume::Sender<FromClient>,
    counters: &mut ClientCounters,
) -> FromClient
where
    CR: ReadReady,
    BW: AsyncWrite + Unpin,
{
    let mut messages = MessageCheck::new(counters.max_message_bytes);
    let mut backend_alive = true;
    // The message being read is compressed (RSV1 on its first frame).
    let mut compressed = false;
    loop {
        counters.pacer.ready().await;
        let frame = match ws.read_frame().await {
            Ok(frame) => frame,
            Err(ReadError::Violation((code, reason))) => {
                return FromClient::Violation(code, reason)
            }
            Err(ReadError::Gone(_)) => return FromClient::Gone,
            Err(ReadError::OverBudget) => return FromClient::OverBudget,
        };
        if matches!(frame.opcode, OpCode::Text | OpCode::Binary) {
            compressed = ws.compressed();
        }
        // The cap counts what the backend receives: a compressed message's inflated bytes,
        // charged piece by piece as they are written below, anything else as read.
        let inflates = compressed
            && counters.inflater.is_some()
            && matches!(
                frame.opcode,
                OpCode::Text | OpCode::Binary | OpCode::Continuation
            );
        if !inflates {
            counters.pacer.spent(frame.payload.len());
        }
        match frame.opcode {
            OpCode::Ping | OpCode::Pong => {
                let payload: Box<[u8]> = frame.payload[..].into();
                let msg = if frame.opcode == OpCode::Ping {
                    FromClient::Ping(payload)
                } else {
                    FromClient::Pong(payload)
                };
                if tx.send_async(msg).await.is_err() {
                    return FromClient::Gone;
                }
                continue;
            }
            // The frame reader checked the code and the reason's UTF-8.
            OpCode::Close => return FromClient::Close(frame.payload[..].into()),
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {}
        }
        if let (true, Some(inflater)) = (compressed, counters.inflater.as_mut()) {
            let mut inflating = inflater.frame(&frame.payload, frame.fin);
            // Sequencing first; then each inflated piece is checked and written before the
            // next is made, so a message is never held whole however far it inflates.
            let mut checked = messages.data_frame(frame.opcode, false, &[]);
            while checked.is_ok() {
                counters.pacer.ready().await;
                let chunk = match inflating.next_chunk() {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(v) => {
                        checked = Err(v);
                        break;
                    }
                };
                counters.pacer.spent(chunk.len());
                checked = messages.data_frame(OpCode::Continuation, false, chunk);
                if checked.is_err() || !backend_alive {
                    continue;
                }
                let written = write_watched(backend, chunk, &counters.held, counters.backend_stall);
                if let Err(e) = written.await {
                    backend_alive = false;
                    if tx.send_async(backend_failed(&e)).await.is_err() {
                        return FromClient::Gone;
                    }
                    continue;
                }
                counters.bytes.increment(chunk.len() as u64);
            }
            match checked.and_then(|_| messages.data_frame(OpCode::Continuation, frame.fin, &[])) {
                Ok(true) => counters.messages.increment(1),
                Ok(false) => {}
                Err((code, reason)) => return FromClient::Violation(code, reason),
            }
            continue;
        }
        match messages.data_frame(frame.opcode, frame.fin, &frame.payload) {
            Ok(true) => counters.messages.increment(1),
            Ok(false) => {}
            Err((code, reason)) => return FromClient::Violation(code, reason),
        }
        if frame.payload.is_empty() || !backend_alive {
            continue;
        }
        let written = write_watched(
            backend,
            &frame.payload,
            &counters.held,
            counters.backend_stall,
        );
        if let Err(e) = written.await {
            // Keep reading: the client's answer to our Close 1011 still has to arrive.
            backend_alive = false;
            if tx.send_async(backend_failed(&e)).await.is_err() {
                return FromClient::Gone;
            }
            continue;
        }
        let n = frame.payload.len() as u64;
        counters.bytes.increment(n);
    }
}

/// What the writer hears when a backend write failed: `TimedOut` is a stalled backend.
fn backend_failed(e: &io::Error) -> FromClient {
    if e.kind() == io::ErrorKind::TimedOut {
        FromClient::BackendStalled
    } else {
        FromClient::BackendWriteFailed
    }
}

/// Write all of `buf` to the backend, then flush. Each step is polled once first: when the
/// backend keeps up this costs what `write_all` did. A step that has to wait marks the
/// client's reader `held` (the client's keepalive is excused meanwhile: its pongs sit unread
/// behind data we are not reading) and may wait `stall` without progress, then fails with
/// `TimedOut`: a backend that stopped reading.
async fn write_watched<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut buf: &[u8],
    held: &Held,
    stall: Duration,
) -> io::Result<()> {
    let mut holding = false;
    let mut result = Ok(());
    while !buf.is_empty() {
        let written = watched(
            |cx| Pin::new(&mut *w).poll_write(cx, buf),
            &mut holding,
            held,
            stall,
        );
        match written.await {
            Ok(0) => result = Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                continue;
            }
            Err(e) => result = Err(e),
        }
        break;
    }
    if result.is_ok() {
        let flushed = watched(
            |cx| Pin::new(&mut *w).poll_flush(cx),
            &mut holding,
            held,
            stall,
        );
        result = flushed.await;
    }
    if holding {
        held.release();
    }
    result
}

/// One I/O step: polled once, and only if that is not enough, marked held and given `stall`.
async fn watched<T>(
    mut poll: impl FnMut(&mut Context<'_>) -> Poll<io::Result<T>>,
    holding: &mut bool,
    held: &Held,
    stall: Duration,
) -> io::Result<T> {
    if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(poll(cx))).await {
        return r;
    }
    if !*holding {
        held.hold();
        *holding = true;
    }
    match tokio::time::timeout(stall, std::future::poll_fn(poll)).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Where the close handshake stands, from the writer's side.
enum Phase {
    Open,
    /// The client sent Close: backend bytes still flow until the backend's FIN
    /// or the deadline, then we echo the client's Close.
    ClientClosed {
        echo: Box<[u8]>,
        deadline: Instant,
    },
    /// We sent Close: wait for the client's until the deadline.
    GatewayClosed {
        code: u16,
        initiator: Initiator,
        reason: Cow<'static, str>,
        deadline: Instant,
    },
}

struct Writer<'a, CW> {
    ws: GuardedWriter<'a, CW>,
    keepalive: Option<Keepalive>,
    /// Whether the client's reader is held back by the backend (its pongs then wait too).
    held: Arc<Held>,
    sent: u64,
    /// For backend bytes to the client (permessage-deflate negotiated).
    deflater: Option<Deflater>,
}

type Ending = (u16, Initiator, Cow<'static, str>);

impl<CW: AsyncWrite + Unpin> Writer<'_, CW> {
    /// Backend bytes → client frames, plus pings, pongs and the close handshake.
    async fn backend_to_client<BR: BackendSource>(
        &mut self,
        mut backend: BR,
        rx: flume::Receiver<FromClient>,
        config: &BridgeConfig,
        metrics: &SessionMetrics,
        control: &SessionControl,
    ) -> Ending {
        let hard_stop = self.ws.hard_stop();
        // One stream for the session's life: it keeps its waiter registered between messages
        // (a fresh `recv` would register and drop one per loop).
        let mut rx = rx.into_stream();
        // Parked far away until a deadline needs it (an unarmed tokio timer costs nothing).
        let timer = tokio::time::sleep_until(Instant::now() + Duration::from_secs(1 << 30));
        tokio::pin!(timer);
        // Made once: a fresh wait per loop would join and leave the token's waiter list,
        // under its lock, on every message. The drain's hard stop comes only after the
        // shutdown, which cancels every session's control first; so it is watched only once
        // the session stopped accepting that (our Close is out), and then afresh each loop.
        let asked_to_close = control.cancelled();
        tokio::pin!(asked_to_close);
        // Allocated on the first backend bytes, sized to the traffic: an idle session holds little.
        let mut buf: Vec<u8> = Vec::new();
        let mut pacer = Pacer::new(config.bandwidth_bytes_per_sec);
        let mut read_size = ReadSize::new(pacer.max_read(config.buffer_bytes));
        let mut phase = Phase::Open;
        let mut backend_open = true;
        // False once the client's side ended (its Close, a violation, or EOF): the reader is done.
        let mut client_open = true;
        let stopped: Ending = (
            close_code::ABNORMAL,
            Initiator::Gateway,
            "drain deadline passed".into(),
        );
        macro_rules! send_or_end {
            ($write:expr) => {
                match $write.await {
                    Ok(()) => {
                        // Our ping may have sat behind the data this send waited on.
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
        // One Close per direction: once ours is out, later failures change nothing, and the
        // first code stays the one recorded.
        macro_rules! close_with {
            ($code:expr, $initiator:expr, $reason:expr) => {{
                if matches!(phase, Phase::GatewayClosed { .. }) {
                    continue;
                }
                let reason: Cow<'static, str> = $reason.into();
                send_or_end!(self.ws.send_close($code, &reason));
                phase = Phase::GatewayClosed {
                    code: $code,
                    initiator: $initiator,
                    reason,
                    deadline: Instant::now() + config.close_grace,
                };
            }};
        }
        // After the client's Close, any end of the backend's stream completes the handshake:
        // echo the client's Close now.
        macro_rules! answer_client_close {
            () => {
                if let Phase::ClientClosed { echo, .. } = &phase {
                    send_or_end!(self.ws.send(Frame::close_raw(Payload::Borrowed(echo))));
                    return client_ending(echo);
                }
            };
        }
        loop {
            let ping_at = match (&phase, &self.keepalive) {
                (Phase::Open, Some(k)) => Some(k.deadline()),
                _ => None,
            };
            let close_at = match &phase {
                Phase::Open => None,
                Phase::ClientClosed { deadline, .. } | Phase::GatewayClosed { deadline, .. } => {
                    Some(*deadline)
                }
            };
            let wants_backend = backend_open && !matches!(phase, Phase::GatewayClosed { .. });
            // Over the bandwidth cap: no read until the pacer allows one.
            let paced_until = if wants_backend {
                pacer.ready_at(Instant::now())
            } else {
                None
            };
            let read_backend = wants_backend && paced_until.is_none();
            let accepting_shutdown = !matches!(phase, Phase::GatewayClosed { .. });
            // One timer for the next of the three: armed once and moved only when that
            // changes, so a busy session does not register a timer per message.
            let next = [ping_at, paced_until, close_at].into_iter().flatten().min();
            if let Some(at) = next {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
            }
            tokio::select! {
                biased;
                () = hard_stop.cancelled(), if !accepting_shutdown => return stopped,
                // Timers first: a session busy with bulk data still pings on time, and a
                // close deadline holds however fast the backend talks.
                () = &mut timer, if next.is_some() => {
                    let now = Instant::now();
                    if close_at.is_some_and(|at| at <= now) {
                        match phase {
                            Phase::ClientClosed { echo, .. } => {
                                // The backend kept talking past the grace period: finish the handshake anyway.
                                send_or_end!(self.ws.send(Frame::close_raw(Payload::Borrowed(&echo))));
                                return client_ending(&echo);
                            }
                            Phase::GatewayClosed { code, initiator, reason, .. } => return (code, initiator, reason),
                            Phase::Open => unreachable!("no close deadline while open"),
                        }
                    }
                    // Otherwise the pacer's wait is over (the loop reads again), or a ping is due.
                    if ping_at.is_none_or(|at| at > now) {
                        continue;
                    }
                    let Some(k) = self.keepalive.as_mut() else { continue };
                    // A pong that waits behind data we chose not to read is not missed.
                    if self.held.peer_free_since(now).is_some_and(|since| k.excuse(since)) {
                        continue;
                    }
                    match k.on_deadline(now) {
                        Due::Ping(seq) => send_or_end!(self.ws.send(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&seq)))),
                        Due::TimedOut => {
                            metrics.keepalive_timed_out();
                            // Best effort: the client may be gone, so do not wait on it for long.
                            // Boxed, as are the other `try_close` calls: rare, and the largest
                            // future here, it would size every idle session's task.
                            Box::pin(self.ws.try_close(close_code::GOING_AWAY, "keepalive timeout")).await;
                            return (close_code::GOING_AWAY, Initiator::Gateway, "keepalive timeout".into());
                        }
                    }
                }
                msg = rx.next(), if client_open => match msg {
                    Some(FromClient::Ping(payload)) => {
                        if !matches!(phase, Phase::GatewayClosed { .. }) {
                            send_or_end!(self.ws.send(Frame::pong(Payload::Borrowed(&payload))));
                        }
                    }
                    Some(FromClient::Pong(payload)) => {
                        if let Some(rtt) = self.keepalive.as_mut().and_then(|k| k.on_pong(&payload, Instant::now())) {
                            metrics.ping_rtt.record(rtt.as_secs_f64());
                        }
                    }
                    Some(FromClient::Close(echo)) => { client_open = false; match phase {
                        Phase::Open if backend_open => {
                            phase = Phase::ClientClosed { echo, deadline: Instant::now() + config.close_grace };
                        }
                        Phase::Open | Phase::ClientClosed { .. } => {
                            send_or_end!(self.ws.send(Frame::close_raw(Payload::Borrowed(&echo))));
                            return client_ending(&echo);
                        }
                        Phase::GatewayClosed { code, initiator, reason, .. } => return (code, initiator, reason),
                    }},
                    Some(FromClient::Violation(code, reason)) => {
                        if let Phase::GatewayClosed { code, initiator, reason, .. } = phase {
                            return (code, initiator, reason);
                        }
                        Box::pin(self.ws.try_close(code, reason)).await;
                        return (code, Initiator::Client, reason.into());
                    }
                    Some(FromClient::OverBudget) => {
                        if let Phase::GatewayClosed { code, initiator, reason, .. } = phase {
                            return (code, initiator, reason);
                        }
                        Box::pin(self.ws.try_close(close_code::TRY_AGAIN_LATER, OVER_BUDGET)).await;
                        return (close_code::TRY_AGAIN_LATER, Initiator::Gateway, OVER_BUDGET.into());
                    }
                    Some(FromClient::BackendStalled) => {
                        backend_open = false;
                        answer_client_close!();
                        close_with!(close_code::INTERNAL_ERROR, Initiator::Backend, "backend stopped reading");
                    }
                    Some(FromClient::BackendWriteFailed) => {
                        backend_open = false;
                        answer_client_close!();
                        close_with!(close_code::INTERNAL_ERROR, Initiator::Backend, "backend connection lost");
                    }
                    Some(FromClient::Gone) | None => {
                        return match phase {
                            Phase::GatewayClosed { code, initiator, reason, .. } => (code, initiator, reason),
                            _ => (close_code::ABNORMAL, Initiator::Client, "client vanished without a Close".into()),
                        };
                    }
                },
                () = &mut asked_to_close, if accepting_shutdown => {
                    answer_client_close!();
                    let (code, reason) = control.reason();
                    close_with!(code, Initiator::Gateway, reason);
                }
                ready = backend.ready(), if read_backend => match ready.and_then(|()| {
                    // The buffer is taken only now that bytes are waiting.
                    read_size.prepare(&mut buf);
                    backend.try_read_into(&mut buf)
                }) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Ok(0) => {
                        backend_open = false;
                        if !buf.is_empty() {
                            // Text mode: the backend ended inside a character.
                            close_with!(close_code::INTERNAL_ERROR, Initiator::Backend, "backend sent invalid UTF-8");
                            continue;
                        }
                        answer_client_close!();
                        close_with!(close_code::NORMAL, Initiator::Backend, "backend closed the connection");
                    }
                    Ok(n) => {
                        read_size.after_read(n);
                        pacer.spent(n);
                        let ready = match config.message_type {
                            MessageType::Binary => buf.len(),
                            MessageType::Text => match complete_prefix(&buf) {
                                Ok(n) => n,
                                Err(_) => {
                                    backend_open = false;
                                    close_with!(close_code::INTERNAL_ERROR, Initiator::Backend, "backend sent invalid UTF-8");
                                    continue;
                                }
                            },
                        };
                        if ready > 0 {
                            let opcode = match config.message_type {
                                MessageType::Binary => OpCode::Binary,
                                MessageType::Text => OpCode::Text,
                            };
                            let data = &buf[..ready];
                            match self.deflater.as_mut().and_then(|d| d.compress_message(data)) {
                                Some(c) => send_or_end!(self.ws.send_marked(Frame::new(true, opcode, None, Payload::Owned(c)), true)),
                                None => send_or_end!(self.ws.send(Frame::new(true, opcode, None, Payload::Borrowed(data)))),
                            }
                            self.sent += ready as u64;
                            metrics.bytes_to_client.increment(ready as u64);
                            metrics.messages_to_client.increment(1);
                            // At most 3 bytes of a cut character stay for the next read.
                            buf.drain(..ready);
                        }
                        read_size.release_if_idle(&mut buf);
                    }
                    Err(_) => {
                        backend_open = false;
                        answer_client_close!();
                        close_with!(close_code::INTERNAL_ERROR, Initiator::Backend, "backend connection lost");
                    }
                },
            }
        }
    }
}

/// The reason sent with 1013 when the frame budget is exhausted.
pub(crate) const OVER_BUDGET: &str = "gateway busy: frame memory budget exhausted";

/// Backend read sizes follow the traffic: they double while reads fill the buffer (bulk
/// transfer) up to `buffer_bytes`, and halve when reads come back small (interactive).
#[derive(Debug)]
struct ReadSize {
    current: usize,
    max: usize,
}

impl ReadSize {
    const MIN: usize = 4096;

    fn new(max: usize) -> Self {
        Self {
            current: Self::MIN.min(max),
            max,
        }
    }

    /// Make room for the next read, giving memory back after a burst.
    fn prepare(&self, buf: &mut Vec<u8>) {
        if buf.capacity() > 2 * self.current.max(buf.len()) {
            buf.shrink_to(self.current.max(buf.len()));
        }
        buf.reserve_exact(self.current);
    }

    /// After a small read that emptied the buffer, free it: interactive and idle sessions
    /// hold no read buffer between messages (a fresh one is a cheap allocation).
    fn release_if_idle(&self, buf: &mut Vec<u8>) {
        if buf.is_empty() && self.current <= Self::MIN {
            *buf = Vec::new();
        }
    }

    fn after_read(&mut self, n: usize) {
        if n >= self.current {
            self.current = (self.current * 2).min(self.max);
        } else if n <= self.current / 4 {
            self.current = (self.current / 2).max(Self::MIN.min(self.max));
        }
    }
}

/// The client started the close: report its code (1005 "no code" when it sent none).
fn client_ending(echo: &[u8]) -> Ending {
    let code = close_payload_code(echo);
    let reason = String::from_utf8_lossy(echo.get(2..).unwrap_or_default()).into_owned();
    (code, Initiator::Client, reason.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_size_grows_with_bulk_and_shrinks_when_idle() {
        let mut size = ReadSize::new(64 * 1024);
        let mut buf = Vec::new();
        size.prepare(&mut buf);
        assert!(buf.capacity() >= 4096 && buf.capacity() < 8192);
        for _ in 0..6 {
            let n = size.current;
            size.after_read(n);
        }
        assert_eq!(size.current, 64 * 1024, "capped at buffer_bytes");
        size.prepare(&mut buf);
        assert!(buf.capacity() >= 64 * 1024);
        for _ in 0..6 {
            size.after_read(10);
        }
        assert_eq!(size.current, 4096);
        size.prepare(&mut buf);
        assert!(
            buf.capacity() < 16 * 1024,
            "memory given back after the burst"
        );
    }
}

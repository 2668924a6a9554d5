//! The frame relay between a WebSocket client and a WebSocket backend: two hops, each a full peer.
//!
//! Each hop has a reader (its own loop: `read_frame` is not cancel-safe) and a writer (the only
//! place frames go out: relayed data, pongs, pings for that hop's keepalive, Close). Frames stream
//! through one at a time with their opcode and FIN bit, never reassembled; the channels between
//! reader and writer hold one frame, so a slow hop slows the other instead of growing a queue.
//! Close codes travel end to end; a hop that dies closes the other with 1001 (client lost) or
//! 1011 (backend lost), 1014 when the backend broke the protocol. An optional bandwidth cap paces
//! each reader (`session::pacer`): a capped hop's sender is slowed down, never buffered.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};
use metrics::Histogram;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::bridge::{Initiator, Outcome, OVER_BUDGET};
use super::deflate::{Deflater, Inflater, RelayDeflate, MIN_COMPRESS};
use super::frames::{close_payload_code, GuardedWriter, MessageCheck, Violation, WriteFailed};
use super::keepalive::{sleep_until_opt, Due, Held, Keepalive};
use super::pacer::Pacer;
use super::reader::{FrameReader, ReadError, ReadReady};
use super::registry::SessionControl;
use super::writer::FrameWriter;
use crate::error::close_code;
use crate::metrics::{SessionMetrics, Tally};

/// Per-session settings from the route and the config snapshot.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Largest message from either hop, all fragments together (1009 above it).
    pub max_message_bytes: usize,
    /// Ping interval for each hop; `None` disables keepalive.
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    /// How long a hop waits for the Close that answers its own.
    pub close_grace: Duration,
    /// The backend hop's write stall limit: no progress for this long closes the session
    /// (the client gets 1011).
    pub backend_stall: Duration,
    /// Pacing of each direction in bytes per second; `None`: unpaced.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// permessage-deflate on each hop and what may pass through as it is.
    pub deflate: RelayDeflate,
}

/// Which side of the gateway a hop faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    Client,
    Backend,
}

impl Hop {
    fn initiator(self) -> Initiator {
        match self {
            Hop::Client => Initiator::Client,
            Hop::Backend => Initiator::Backend,
        }
    }

    fn other(self) -> Self {
        match self {
            Hop::Client => Hop::Backend,
            Hop::Backend => Hop::Client,
        }
    }

    /// The Close the *other* hop gets when this one vanishes.
    fn lost(self) -> (u16, &'static str) {
        match self {
            Hop::Client => (close_code::GOING_AWAY, "client went away"),
            Hop::Backend => (close_code::INTERNAL_ERROR, "backend connection lost"),
        }
    }

    /// The Close the *other* hop gets when this one stopped reading (a write stalled), and
    /// the reason recorded.
    fn stalled(self) -> (u16, &'static str) {
        match self {
            Hop::Client => (close_code::GOING_AWAY, "client stopped reading"),
            Hop::Backend => (close_code::INTERNAL_ERROR, "backend stopped reading"),
        }
    }

    /// The Close the *other* hop gets when this one broke the protocol.
    fn violated(self) -> (u16, &'static str) {
        match self {
            Hop::Client => (close_code::GOING_AWAY, "client protocol error"),
            Hop::Backend => (close_code::BAD_GATEWAY, "backend protocol error"),
        }
    }
}

/// From a hop's reader to the other hop's writer.
enum Relayed {
    Frame {
        opcode: OpCode,
        fin: bool,
        payload: BytesMut,
        wire: Wire,
    },
    /// The peer's Close, raw (code and reason), to pass on unchanged.
    Close(Bytes),
    /// The peer is gone or broke the protocol: close the other hop with this.
    Lost(u16, &'static str),
}

/// How a relayed frame's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// Message bytes as they are (inflated if they came compressed).
    Plain,
    /// The sender's compressed bytes, passed through unchanged (RSV1 on the first frame).
    Deflated,
}

/// From a hop's reader to its own writer.
enum Own {
    Ping(Bytes),
    Pong(Bytes),
    /// The peer sent Close (its payload): answer once the other hop answered, or at the deadline.
    PeerClosed(Bytes),
    /// The peer broke the protocol: close it with this code.
    Violation(u16, &'static str),
}

/// How a hop's writer that gave up (write failed or stalled, keepalive timeout) tells the other
/// hop's writer to close its peer. Set once and never lost: a `try_send` on the one-frame relay
/// channel, which the dead hop's own data may keep full, could drop it.
#[derive(Debug, Default)]
struct HopLost {
    /// The Close the other hop's peer gets.
    close: OnceLock<(u16, &'static str)>,
    raised: CancellationToken,
}

impl HopLost {
    fn raise(&self, code: u16, reason: &'static str) {
        let _ = self.close.set((code, reason));
        self.raised.cancel();
    }
}

/// The first reason the session started to end; later ones do not overwrite it.
type FirstEnd = Arc<OnceLock<(u16, Initiator, Cow<'static, str>)>>;

fn record(first: &FirstEnd, code: u16, initiator: Initiator, reason: impl Into<Cow<'static, str>>) {
    let _ = first.set((code, initiator, reason.into()));
}

/// Relay frames between `client` and `backend` until both close handshakes are done.
#[allow(clippy::too_many_arguments)]
pub async fn run<CR, CW, BR, BW>(
    client: (FrameReader<CR>, FrameWriter<CW>),
    backend: (FrameReader<BR>, FrameWriter<BW>),
    config: &RelayConfig,
    metrics: &SessionMetrics,
    control: &SessionControl,
    hard_stop: &CancellationToken,
) -> Outcome
where
    CR: ReadReady + Send + 'static,
    CW: AsyncWrite + Unpin,
    BR: ReadReady + Send + 'static,
    BW: AsyncWrite + Unpin,
{
    let first: FirstEnd = Arc::default();
    let (client_lost, backend_lost) = (Arc::new(HopLost::default()), Arc::new(HopLost::default()));
    let (to_backend_tx, to_backend_rx) = mpsc::channel(1);
    let (to_client_tx, to_client_rx) = mpsc::channel(1);
    let (client_own_tx, client_own_rx) = mpsc::channel(4);
    let (backend_own_tx, backend_own_rx) = mpsc::channel(4);
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    let stop_readers = CancellationToken::new();
    // Each hop's reader is held while the other hop's writer cannot take its frames.
    let (client_held, backend_held) = (Held::new(), Held::new());

    let client_reader = tokio::spawn(read_hop(
        client.0,
        Hop::Client,
        client_own_tx,
        to_backend_tx,
        Counts {
            max_message_bytes: config.max_message_bytes,
            bytes: metrics.bytes_to_backend.clone(),
            messages: metrics.messages_to_backend.clone(),
            total: up.clone(),
            pacer: Pacer::new(config.bandwidth_bytes_per_sec),
            inflater: config.deflate.client.map(|d| d.inflater()),
            as_is: config.deflate.client_to_backend_as_is,
            held: client_held.clone(),
        },
        first.clone(),
        stop_readers.clone(),
    ));
    let backend_reader = tokio::spawn(read_hop(
        backend.0,
        Hop::Backend,
        backend_own_tx,
        to_client_tx,
        Counts {
            max_message_bytes: config.max_message_bytes,
            bytes: metrics.bytes_to_client.clone(),
            messages: metrics.messages_to_client.clone(),
            total: down.clone(),
            pacer: Pacer::new(config.bandwidth_bytes_per_sec),
            inflater: config.deflate.backend.map(|d| d.inflater()),
            as_is: config.deflate.backend_to_client_as_is,
            held: backend_held.clone(),
        },
        first.clone(),
        stop_readers.clone(),
    ));

    let keepalive = || {
        config
            .ping_interval
            .map(|i| Keepalive::new(i, config.pong_timeout, Instant::now()))
    };
    let (keepalive_client, keepalive_backend) = (keepalive(), keepalive());
    let client_writer = HopWriter {
        hop: Hop::Client,
        ws: GuardedWriter::new(
            client.1,
            keepalive_client.as_ref().map(Keepalive::stall_limit),
            hard_stop,
        ),
        keepalive: keepalive_client,
        held: client_held,
        first: first.clone(),
        rtt: Some(metrics.ping_rtt.clone()),
        metrics,
        // Frames passed through keep the backend's context: ours must not interleave with it.
        deflater: (!config.deflate.backend_to_client_as_is)
            .then_some(config.deflate.client)
            .flatten()
            .map(|d| d.deflater()),
        compressing: false,
    };
    let backend_writer = HopWriter {
        hop: Hop::Backend,
        ws: GuardedWriter::new(
            backend.1,
            // A backend may pause reading for a while (its own documented limit): the
            // client is held back meanwhile, never blamed.
            Some(config.backend_stall),
            hard_stop,
        ),
        keepalive: keepalive_backend,
        held: backend_held,
        first: first.clone(),
        rtt: None,
        metrics,
        deflater: (!config.deflate.client_to_backend_as_is)
            .then_some(config.deflate.backend)
            .flatten()
            .map(|d| d.deflater()),
        compressing: false,
    };
    tokio::join!(
        client_writer.run(
            client_own_rx,
            to_client_rx,
            (&client_lost, &backend_lost),
            config,
            control
        ),
        backend_writer.run(
            backend_own_rx,
            to_backend_rx,
            (&backend_lost, &client_lost),
            config,
            control
        ),
    );
    stop_readers.cancel();
    let _ = tokio::join!(client_reader, backend_reader);

    let (code, initiator, reason) =
        first
            .get()
            .cloned()
            .unwrap_or((close_code::ABNORMAL, Initiator::Gateway, "ended".into()));
    Outcome {
        code,
        initiator,
        reason,
        bytes_to_backend: up.load(Ordering::Relaxed),
        bytes_to_client: down.load(Ordering::Relaxed),
    }
}

struct Counts {
    max_message_bytes: usize,
    bytes: Tally,
    messages: Tally,
    total: Arc<AtomicU64>,
    pacer: Pacer,
    /// For this hop's compressed messages (permessage-deflate negotiated on it).
    inflater: Option<Inflater>,
    /// Compressed messages go to the other hop as they are (only checked here).
    as_is: bool,
    /// Marked while the other hop's writer cannot take this reader's frames.
    held: Arc<Held>,
}

/// One hop's reader: frames from its peer, checked, to the other hop (data, Close)
/// or to its own writer (ping, pong, violations).
async fn read_hop<R: ReadReady>(
    mut ws: FrameReader<R>,
    hop: Hop,
    own: mpsc::Sender<Own>,
    relay: mpsc::Sender<Relayed>,
    mut counts: Counts,
    first: FirstEnd,
    stop: CancellationToken,
) {
    // Dropping the loop is cancel-safe: nothing reads `ws` afterwards.
    tokio::select! {
        () = stop.cancelled() => {}
        () = pump_hop(&mut ws, hop, &own, &relay, &mut counts, &first) => {}
    }
}

async fn pump_hop<R: ReadReady>(
    ws: &mut FrameReader<R>,
    hop: Hop,
    own: &mpsc::Sender<Own>,
    relay: &mpsc::Sender<Relayed>,
    counts: &mut Counts,
    first: &FirstEnd,
) {
    let mut messages = MessageCheck::new(counts.max_message_bytes);
    // The message being read is compressed (RSV1 on its first frame).
    let mut compressed = false;
    loop {
        counts.pacer.ready().await;
        let violation = match ws.read_frame().await {
            Err(ReadError::Violation(v)) => v,
            Err(ReadError::OverBudget) => {
                let (code, reason) = (close_code::TRY_AGAIN_LATER, OVER_BUDGET);
                record(first, code, Initiator::Gateway, reason);
                let _ = own.send(Own::Violation(code, reason)).await;
                let _ = relay.send(Relayed::Lost(code, reason)).await;
                return;
            }
            Err(ReadError::Gone(_)) => {
                let side = if hop == Hop::Client {
                    "client"
                } else {
                    "backend"
                };
                record(
                    first,
                    close_code::ABNORMAL,
                    hop.initiator(),
                    format!("{side} vanished without a Close"),
                );
                let (code, reason) = hop.lost();
                let _ = relay.send(Relayed::Lost(code, reason)).await;
                return;
            }
            Ok(frame) => {
                if matches!(frame.opcode, OpCode::Text | OpCode::Binary) {
                    compressed = ws.compressed();
                }
                let data = matches!(
                    frame.opcode,
                    OpCode::Text | OpCode::Binary | OpCode::Continuation
                );
                // The cap counts message data as it is, not as it travels: a compressed
                // frame is charged its inflated bytes (in `relay_compressed`).
                if !(compressed && data && counts.inflater.is_some()) {
                    counts.pacer.spent(frame.payload.len());
                }
                if let (true, true, Some(inflater)) = (compressed, data, counts.inflater.as_mut()) {
                    let as_is = counts.as_is;
                    let relayed = relay_compressed(
                        frame,
                        inflater,
                        as_is,
                        &mut messages,
                        relay,
                        &counts.held,
                        &mut counts.pacer,
                    );
                    match relayed.await {
                        Ok((ends_message, n)) => {
                            counts.bytes.increment(n);
                            counts.total.fetch_add(n, Ordering::Relaxed);
                            if ends_message {
                                counts.messages.increment(1);
                            }
                            continue;
                        }
                        Err(v) => {
                            let (code, reason) = v;
                            record(first, code, hop.initiator(), reason);
                            let _ = own.send(Own::Violation(code, reason)).await;
                            let (code, reason) = hop.violated();
                            let _ = relay.send(Relayed::Lost(code, reason)).await;
                            return;
                        }
                    }
                }
                let checked = messages.data_frame(frame.opcode, frame.fin, &frame.payload);
                match (checked, frame.opcode) {
                    (Err(v), _) => v,
                    (Ok(_), OpCode::Ping) => {
                        if own
                            .send(Own::Ping(Bytes::copy_from_slice(&frame.payload)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    (Ok(_), OpCode::Pong) => {
                        if own
                            .send(Own::Pong(Bytes::copy_from_slice(&frame.payload)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    (Ok(_), OpCode::Close) => {
                        let payload = Bytes::copy_from_slice(&frame.payload);
                        let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default())
                            .into_owned();
                        record(first, close_payload_code(&payload), hop.initiator(), reason);
                        let _ = relay.send(Relayed::Close(payload.clone())).await;
                        let _ = own.send(Own::PeerClosed(payload)).await;
                        return;
                    }
                    (Ok(ends_message), opcode) => {
                        let n = frame.payload.len() as u64;
                        let payload = match frame.payload {
                            Payload::Bytes(b) => b,
                            other => BytesMut::from(&other[..]),
                        };
                        let frame = Relayed::Frame {
                            opcode,
                            fin: frame.fin,
                            payload,
                            wire: Wire::Plain,
                        };
                        // Once the other hop's writer is gone, data is dropped but reading goes
                        // on: this hop's close handshake still needs its peer's Close.
                        if !deliver(relay, frame, &counts.held).await {
                            continue;
                        }
                        counts.bytes.increment(n);
                        counts.total.fetch_add(n, Ordering::Relaxed);
                        if ends_message {
                            counts.messages.increment(1);
                        }
                        continue;
                    }
                }
            }
        };
        let (code, reason) = violation;
        record(first, code, hop.initiator(), reason);
        let _ = own.send(Own::Violation(code, reason)).await;
        let (code, reason) = hop.violated();
        let _ = relay.send(Relayed::Lost(code, reason)).await;
        return;
    }
}

/// Hand one frame to the other hop's writer; false once that writer is gone. When its
/// channel is full (its peer reads slowly) this hop's reader is marked held meanwhile: this
/// hop's peer waits too, and its late pongs are excused.
async fn deliver(relay: &mpsc::Sender<Relayed>, frame: Relayed, held: &Held) -> bool {
    match relay.try_send(frame) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(frame)) => {
            held.hold();
            let sent = relay.send(frame).await;
            held.release();
            sent.is_ok()
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// One frame of a compressed message: inflated piece by piece, each piece checked (size,
/// UTF-8) before the next is made. Passed on as it is (`as_is`), or as its inflated pieces
/// for the other hop's writer to send plain or recompress. `Ok((ends message, inflated
/// bytes delivered))`, or the violation. Once the other hop's writer is gone the message is
/// still checked but no longer delivered (the caller keeps reading for this hop's Close).
async fn relay_compressed(
    frame: Frame<'static>,
    inflater: &mut Inflater,
    as_is: bool,
    messages: &mut MessageCheck,
    relay: &mpsc::Sender<Relayed>,
    held: &Held,
    pacer: &mut Pacer,
) -> Result<(bool, u64), Violation> {
    let mut inflating = inflater.frame(&frame.payload, frame.fin);
    let mut opcode = frame.opcode;
    let (mut n, mut inflated) = (0u64, 0u64);
    let mut delivering = true;
    messages.data_frame(opcode, false, &[])?;
    loop {
        // Paced piece by piece: one small compressed frame may inflate to a large message.
        pacer.ready().await;
        let Some(chunk) = inflating.next_chunk()? else {
            break;
        };
        pacer.spent(chunk.len());
        messages.data_frame(OpCode::Continuation, false, chunk)?;
        inflated += chunk.len() as u64;
        if as_is || !delivering {
            continue;
        }
        let piece = Relayed::Frame {
            opcode,
            fin: false,
            payload: BytesMut::from(chunk),
            wire: Wire::Plain,
        };
        delivering = deliver(relay, piece, held).await;
        if delivering {
            n += chunk.len() as u64;
        }
        opcode = OpCode::Continuation;
    }
    drop(inflating);
    let ends = messages.data_frame(OpCode::Continuation, frame.fin, &[])?;
    let last = if as_is {
        let payload = match frame.payload {
            Payload::Bytes(b) => b,
            other => BytesMut::from(&other[..]),
        };
        Some((frame.opcode, payload, Wire::Deflated))
    } else {
        // The message's end, or its opcode when nothing came out of this frame.
        (frame.fin || opcode != OpCode::Continuation)
            .then(|| (opcode, BytesMut::new(), Wire::Plain))
    };
    if let Some((opcode, payload, wire)) = last.filter(|_| delivering) {
        let frame = Relayed::Frame {
            opcode,
            fin: frame.fin,
            payload,
            wire,
        };
        if deliver(relay, frame, held).await && as_is {
            n = inflated;
        }
    }
    Ok((ends, n))
}

/// One hop's writer and its half of the close handshake.
struct HopWriter<'a, W> {
    hop: Hop,
    ws: GuardedWriter<'a, W>,
    keepalive: Option<Keepalive>,
    /// Whether this hop's reader is held back by the other hop (its peer's pongs wait too).
    held: Arc<Held>,
    first: FirstEnd,
    /// Where this hop's ping round trips are recorded (the client hop only).
    rtt: Option<Histogram>,
    metrics: &'a SessionMetrics,
    /// Compresses plain messages for this hop (negotiated, and not passing another's through).
    deflater: Option<Deflater>,
    /// The message being sent is compressed by `deflater`.
    compressing: bool,
}

impl<W: AsyncWrite + Unpin> HopWriter<'_, W> {
    /// A plain frame as this hop gets it: compressed when a message's first frame shows it
    /// pays (a whole message that shrinks, or a first fragment worth compressing), plain
    /// otherwise. The second value is RSV1.
    fn encode(&mut self, opcode: OpCode, fin: bool, payload: BytesMut) -> (Payload<'static>, bool) {
        let Some(d) = self.deflater.as_mut() else {
            return (Payload::Bytes(payload), false);
        };
        let first = opcode != OpCode::Continuation;
        if first && fin {
            self.compressing = false;
            return match d.compress_message(&payload) {
                Some(c) => (Payload::Owned(c), true),
                None => (Payload::Bytes(payload), false),
            };
        }
        if first {
            self.compressing = payload.len() >= MIN_COMPRESS;
        }
        if !self.compressing {
            return (Payload::Bytes(payload), false);
        }
        let mut out = Vec::new();
        d.compress(&payload, fin, &mut out);
        (Payload::Owned(out), first)
    }

    async fn run(
        mut self,
        mut own: mpsc::Receiver<Own>,
        mut relayed: mpsc::Receiver<Relayed>,
        // (this hop's, raised when it gives up; the other hop's, watched)
        (lost, other_lost): (&HopLost, &HopLost),
        config: &RelayConfig,
        control: &SessionControl,
    ) {
        let hard_stop = self.ws.hard_stop();
        let mut sent_close = false;
        let mut peer_closed: Option<Bytes> = None;
        let mut deadline: Option<Instant> = None;
        let (mut own_open, mut relay_open) = (true, true);
        macro_rules! send_or_return {
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
                    Err(e) => {
                        let stalled = matches!(e, WriteFailed::Stalled);
                        if stalled && self.hop == Hop::Client {
                            self.metrics.keepalive_timed_out();
                        }
                        let (code, reason) = if stalled {
                            self.hop.stalled()
                        } else {
                            self.hop.lost()
                        };
                        record(
                            &self.first,
                            close_code::ABNORMAL,
                            self.hop.initiator(),
                            if stalled { reason } else { "write failed" },
                        );
                        lost.raise(code, reason);
                        return;
                    }
                }
            };
        }
        // Made once, not per loop: a fresh wait would join and leave a token's waiter list
        // (under its lock) and a fresh ping timer would be registered, on every message.
        let stopped_now = hard_stop.cancelled();
        let asked_to_close = control.cancelled();
        let other_gave_up = other_lost.raised.cancelled();
        let ping_timer = tokio::time::sleep_until(Instant::now() + Duration::from_secs(1 << 30));
        tokio::pin!(stopped_now, asked_to_close, other_gave_up, ping_timer);
        loop {
            let ping_at = match (&self.keepalive, sent_close || peer_closed.is_some()) {
                (Some(k), false) => Some(k.deadline()),
                _ => None,
            };
            if let Some(at) = ping_at {
                if ping_timer.deadline() != at {
                    ping_timer.as_mut().reset(at);
                }
            }
            tokio::select! {
                biased;
                () = &mut stopped_now => return,
                () = &mut ping_timer, if ping_at.is_some() => {
                    let Some(k) = self.keepalive.as_mut() else { continue };
                    let now = Instant::now();
                    // A pong that waits behind data we chose not to read is not missed.
                    if self.held.peer_free_since(now).is_some_and(|since| k.excuse(since)) {
                        continue;
                    }
                    match k.on_deadline(now) {
                        Due::Ping(seq) => send_or_return!(self.ws.send(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&seq)))),
                        Due::TimedOut => {
                            self.metrics.keepalive_timed_out();
                            record(&self.first, close_code::GOING_AWAY, Initiator::Gateway, "keepalive timeout");
                            self.ws.try_close(close_code::GOING_AWAY, "keepalive timeout").await;
                            let (code, _) = self.hop.lost();
                            lost.raise(code, "peer keepalive timeout");
                            return;
                        }
                    }
                }
                msg = own.recv(), if own_open => match msg {
                    Some(Own::Ping(payload)) if !sent_close => send_or_return!(self.ws.send(Frame::pong(Payload::Borrowed(&payload)))),
                    Some(Own::Ping(_)) => {}
                    Some(Own::Pong(payload)) => {
                        let rtt = self.keepalive.as_mut().and_then(|k| k.on_pong(&payload, Instant::now()));
                        if let (Some(rtt), Some(h)) = (rtt, &self.rtt) {
                            h.record(rtt.as_secs_f64());
                        }
                    }
                    Some(Own::PeerClosed(payload)) => {
                        own_open = false;
                        if sent_close {
                            return;
                        }
                        // Answer with the other hop's reply when it comes, or echo at the deadline.
                        peer_closed = Some(payload);
                        deadline = Some(Instant::now() + config.close_grace);
                    }
                    Some(Own::Violation(code, reason)) => {
                        if !sent_close {
                            self.ws.try_close(code, reason).await;
                        }
                        return;
                    }
                    // The reader ended without a Close: the peer is gone.
                    None => return,
                },
                () = &mut asked_to_close, if !sent_close => {
                    let (code, reason) = control.reason();
                    record(&self.first, code, Initiator::Gateway, reason);
                    send_or_return!(self.ws.send_close(code, reason));
                    sent_close = true;
                    if peer_closed.is_some() {
                        return;
                    }
                    deadline = Some(Instant::now() + config.close_grace);
                }
                // The other hop's writer gave up: close this hop's peer the same way as for
                // a lost peer (the other hop's reader may still be busy relaying its data).
                () = &mut other_gave_up, if !sent_close => {
                    relay_open = false;
                    let (code, reason) = other_lost.close.get().copied().unwrap_or(self.hop.other().lost());
                    send_or_return!(self.ws.send_close(code, reason));
                    sent_close = true;
                    if peer_closed.is_some() {
                        return;
                    }
                    deadline = Some(Instant::now() + config.close_grace);
                }
                msg = relayed.recv(), if relay_open => match msg {
                    Some(Relayed::Frame { opcode, fin, payload, wire }) => {
                        if !sent_close {
                            let (payload, rsv1) = match wire {
                                Wire::Deflated => (Payload::Bytes(payload), opcode != OpCode::Continuation),
                                Wire::Plain => self.encode(opcode, fin, payload),
                            };
                            send_or_return!(self.ws.send_marked(Frame::new(fin, opcode, None, payload), rsv1));
                        }
                    }
                    Some(Relayed::Close(payload)) => {
                        relay_open = false;
                        if !sent_close {
                            send_or_return!(self.ws.send(Frame::close_raw(Payload::Borrowed(&payload))));
                            sent_close = true;
                        }
                        if peer_closed.is_some() {
                            return;
                        }
                        deadline = Some(Instant::now() + config.close_grace);
                    }
                    Some(Relayed::Lost(code, reason)) => {
                        relay_open = false;
                        if !sent_close {
                            send_or_return!(self.ws.send_close(code, reason));
                            sent_close = true;
                        }
                        if peer_closed.is_some() {
                            return;
                        }
                        deadline = Some(Instant::now() + config.close_grace);
                    }
                    None => relay_open = false,
                },
                () = sleep_until_opt(deadline), if deadline.is_some() => {
                    if let (Some(payload), false) = (&peer_closed, sent_close) {
                        // The other hop never answered: complete this hop's handshake ourselves.
                        let payload = payload.clone();
                        send_or_return!(self.ws.send(Frame::close_raw(Payload::Borrowed(&payload))));
                    }
                    return;
                }
            }
        }
    }
}

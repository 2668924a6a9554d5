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

use super::bridge::{Initiator, Outcome, OVER_BUDGET, RECORDING_FAILED};
use super::keepalive::{sleep_until_opt, Due, Held, Keepalive};
use super::pacer::Pacer;
use super::registry::{SessionControl, SessionEntry};
use super::settings::SessionSettings;
use crate::error::close_code;
use crate::metrics::{SessionMetrics, Tally};
use crate::record::watch::WatchPoint;
use crate::record::{Tap, Taps};
use crate::ws::deflate::{Deflater, HopDeflate, Inflater, RelayDeflate, MIN_COMPRESS};
use crate::ws::frames::{close_payload_code, GuardedWriter, MessageCheck, Violation, WriteFailed};
use crate::ws::reader::{FrameReader, ReadError, ReadReady};
use crate::ws::writer::FrameWriter;

mod hop_writer;
mod read_hop;

use hop_writer::HopWriter;
use read_hop::{read_hop, Counts};

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

impl Counts {
    /// What `hop`'s reader counts and checks: a client hop's frames go to the backend (and
    /// the reverse), so they count as bytes and messages to the backend.
    fn new(
        hop: Hop,
        config: &SessionSettings,
        deflate: &RelayDeflate,
        metrics: &SessionMetrics,
        total: &Arc<AtomicU64>,
        held: &Arc<Held>,
        watch: Option<Arc<SessionEntry>>,
    ) -> Self {
        let (bytes, messages, inflater, as_is) = match hop {
            Hop::Client => (
                &metrics.bytes_to_backend,
                &metrics.messages_to_backend,
                deflate.client,
                deflate.client_to_backend_as_is,
            ),
            Hop::Backend => (
                &metrics.bytes_to_client,
                &metrics.messages_to_client,
                deflate.backend,
                deflate.backend_to_client_as_is,
            ),
        };
        Counts {
            max_message_bytes: config.max_message_bytes,
            bytes: bytes.clone(),
            messages: messages.clone(),
            total: total.clone(),
            pacer: Pacer::new(config.bandwidth_bytes_per_sec),
            inflater: inflater.map(|d| d.inflater()),
            as_is,
            held: held.clone(),
            watch,
            record: None,
        }
    }
}

impl Counts {
    /// This hop's message data also goes to the session's recording through `tap`.
    fn recorded(self, tap: Option<Box<Tap>>) -> Self {
        Self {
            record: tap,
            ..self
        }
    }
}

/// The first reason the session started to end; later ones do not overwrite it.
type FirstEnd = Arc<OnceLock<(u16, Initiator, Cow<'static, str>)>>;

fn record(first: &FirstEnd, code: u16, initiator: Initiator, reason: impl Into<Cow<'static, str>>) {
    let _ = first.set((code, initiator, reason.into()));
}

/// Relay frames between `client` and `backend` until both close handshakes are done.
/// `watched`: the session, whose watchers see the data of every message the backend sends
/// (`record::watch`). `taps`: the session's recording, fed each message's data (inflated)
/// from the backend (output) and, when the route records input, from the client.
#[allow(clippy::too_many_arguments)]
pub async fn run<CR, CW, BR, BW>(
    client: (FrameReader<CR>, FrameWriter<CW>),
    backend: (FrameReader<BR>, FrameWriter<BW>),
    config: &SessionSettings,
    deflate: &RelayDeflate,
    metrics: &SessionMetrics,
    control: &SessionControl,
    hard_stop: &CancellationToken,
    watched: Option<Arc<SessionEntry>>,
    taps: Taps,
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
    let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop_readers = CancellationToken::new();
    // Each hop's reader is held while the other hop's writer cannot take its frames.
    let (client_held, backend_held) = (Held::new(), Held::new());

    let client_reader = tokio::spawn(read_hop(
        client.0,
        Hop::Client,
        client_own_tx,
        to_backend_tx,
        Counts::new(
            Hop::Client,
            config,
            deflate,
            metrics,
            &up,
            &client_held,
            None,
        )
        .recorded(taps.input),
        first.clone(),
        stop_readers.clone(),
    ));
    let backend_reader = tokio::spawn(read_hop(
        backend.0,
        Hop::Backend,
        backend_own_tx,
        to_client_tx,
        Counts::new(
            Hop::Backend,
            config,
            deflate,
            metrics,
            &down,
            &backend_held,
            watched,
        )
        .recorded(taps.output),
        first.clone(),
        stop_readers.clone(),
    ));

    let (keepalive_client, keepalive_backend) = (hop_keepalive(config), hop_keepalive(config));
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
        deflater: hop_deflater(deflate.backend_to_client_as_is, deflate.client),
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
        deflater: hop_deflater(deflate.client_to_backend_as_is, deflate.backend),
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

    outcome(&first, &up, &down)
}

/// A hop's keepalive, when the route pings.
fn hop_keepalive(config: &SessionSettings) -> Option<Keepalive> {
    config
        .ping_interval
        .map(|i| Keepalive::new(i, config.pong_timeout, Instant::now()))
}

/// A hop writer's compressor: none when the other hop's compressed frames pass through as
/// they are (ours must not interleave with their context), or when the hop did not agree.
fn hop_deflater(passing_through: bool, hop: Option<HopDeflate>) -> Option<Deflater> {
    (!passing_through)
        .then_some(hop)
        .flatten()
        .map(|d| d.deflater())
}

/// How the relay ended: the first end recorded, and the bytes each way.
fn outcome(first: &FirstEnd, up: &AtomicU64, down: &AtomicU64) -> Outcome {
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

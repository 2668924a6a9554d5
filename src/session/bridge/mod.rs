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

use super::io::BackendSource;
use super::keepalive::{Due, Held, Keepalive};
use super::pacer::Pacer;
use super::registry::SessionControl;
use super::settings::SessionSettings;
use crate::config::MessageType;
use crate::error::close_code;
use crate::metrics::{SessionMetrics, Tally};
use crate::record::watch::WatchPoint;
use crate::record::{Tap, Taps};
use crate::ws::deflate::{Deflater, HopDeflate, Inflater};
use crate::ws::frames::{close_payload_code, GuardedWriter, MessageCheck, WriteFailed};
use crate::ws::reader::{FrameReader, ReadError, ReadReady};
use crate::ws::utf8::complete_prefix;
use crate::ws::writer::FrameWriter;

mod backend_to_client;
mod client_to_backend;

use backend_to_client::Writer;
use client_to_backend::{ClientCounters, ClientPump};

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
    config: &'a SessionSettings,
    deflate: Option<HopDeflate>,
    metrics: &'a SessionMetrics,
    control: &'a SessionControl,
    hard_stop: &'a CancellationToken,
    taps: Taps,
    watch: &'a WatchPoint,
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
            inflater: deflate.map(|d| d.inflater()),
            held: held.clone(),
            backend_stall: config.backend_stall,
            record: taps.input,
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
        deflater: deflate.map(|d| d.deflater()),
        record: taps.output,
        watch,
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

/// The reason sent with 1011 when a required recording failed.
pub(crate) const RECORDING_FAILED: &str = "session recording failed";

/// The reason sent with 1013 when the frame budget is exhausted.
pub(crate) const OVER_BUDGET: &str = "gateway busy: frame memory budget exhausted";

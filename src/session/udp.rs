//! The pump between a WebSocket client and a UDP backend (`udp://`): one binary message is
//! exactly one datagram and one datagram exactly one message, over one connected socket per
//! session; when a side cannot keep up, datagrams are dropped and counted, never queued
//! without bound.
//!
//! Three parts, each owning what it touches (the readers in `udp/readers.rs`, the writer in
//! `udp/writer.rs`; here the wiring and the activity and ICMP bookkeeping they share):
//! - the client reader (its own task: `read_frame` is not cancel-safe) reassembles a message
//!   up to the datagram limit (1009 above it; text 1003 unless allowed) and sends it with
//!   `try_send`: a full send buffer drops it (`backend_busy`) instead of holding the client;
//! - the backend receiver (its own task) reads datagrams and offers each to a bounded queue:
//!   a full queue, a client that is not reading, drops it (`client_slow`);
//! - the writer (the session's future) empties the queue into frames and owns the close
//!   handshake, keepalive pings, the idle timeout and the end on ICMP errors.

mod readers;
mod writer;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::bridge::Outcome;
use super::keepalive::Keepalive;
use super::registry::SessionControl;
use super::settings::SessionSettings;
use crate::config::UdpSettings;
use crate::metrics::{SessionMetrics, UdpMetrics};
use crate::ws::frames::GuardedWriter;
use crate::ws::reader::{FrameReader, ReadReady};
use crate::ws::writer::FrameWriter;
use readers::{backend_to_queue, client_to_backend, ClientSide};
use writer::Writer;

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

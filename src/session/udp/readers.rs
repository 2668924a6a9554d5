//! The session's two reader tasks: client messages → datagrams (1009 above the limit, a
//! full send buffer drops), and backend datagrams → the bounded queue (full drops).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::OpCode;
use tokio::net::UdpSocket;

use super::{is_icmp_error, Activity, Event, KEEP_MESSAGE_BUFFER};
use crate::error::close_code;
use crate::metrics::{Tally, UdpMetrics};
use crate::ws::frames::MessageCheck;
use crate::ws::reader::{FrameReader, ReadError, ReadReady};

pub(super) struct ClientSide {
    pub(super) limit: usize,
    pub(super) allow_text: bool,
    pub(super) bytes: Tally,
    pub(super) messages: Tally,
    pub(super) udp: UdpMetrics,
    pub(super) activity: Arc<Activity>,
}

/// Client messages → datagrams, until the client's Close, error or EOF.
pub(super) async fn client_to_backend<CR: ReadReady>(
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
pub(super) async fn backend_to_queue(
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

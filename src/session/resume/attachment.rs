//! One client connection of a resumable session: its reader turns protocol messages into
//! backend bytes and events for the session, its writer sends what the session queues.
//! Both end with the connection; the session (`core`) carries on without them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::core::{Event, Feed, Link, Out, OUT_MESSAGES};
use super::protocol::{self, FromClient};
use crate::ws::reader::{FrameReader, ReadError, ReadReady};
use crate::ws::writer::FrameWriter;

/// The connection's half of a [`Link`]: what its reader and writer hold.
pub struct Ends {
    pub out: mpsc::Sender<Out>,
    pub out_rx: mpsc::Receiver<Out>,
    pub kicked: CancellationToken,
    pub stopped: oneshot::Sender<()>,
    pub heard: Arc<AtomicU64>,
}

/// A new connection's link (for the session) and ends (for the connection).
pub fn link() -> (Link, Ends) {
    let (out, out_rx) = mpsc::channel(OUT_MESSAGES);
    let kicked = CancellationToken::new();
    let (stopped, stopped_rx) = oneshot::channel();
    let heard = Arc::new(AtomicU64::new(0));
    (
        Link {
            out: out.clone(),
            kicked: kicked.clone(),
            stopped: stopped_rx,
            heard: heard.clone(),
        },
        Ends {
            out,
            out_rx,
            kicked,
            stopped,
            heard,
        },
    )
}

/// Why the first message could not be had.
pub enum HelloError {
    /// The connection ended or timed out first.
    Gone,
    /// Not a HELLO: close with 4400 and this reason.
    Malformed(&'static str),
}

/// Read one whole binary message (fragments joined, at most `max_bytes`); answers Pings
/// through `out` and notes when the client was heard. `None`: the connection is over.
async fn read_message<R: ReadReady + Send>(
    reader: &mut FrameReader<R>,
    out: &mpsc::Sender<Out>,
    max_bytes: usize,
    mut heard: impl FnMut(),
) -> Result<Option<Bytes>, &'static str> {
    let mut message = BytesMut::new();
    let mut in_message = false;
    loop {
        let frame = match reader.read_frame().await {
            Ok(frame) => frame,
            Err(ReadError::Violation(v)) => {
                let _ = out.try_send(Out::Close(v.0, "protocol error"));
                return Ok(None);
            }
            Err(ReadError::Gone(_)) => return Ok(None),
            Err(ReadError::OverBudget) => {
                let _ = out.try_send(Out::Close(1013, "gateway busy"));
                return Ok(None);
            }
        };
        heard();
        match frame.opcode {
            OpCode::Binary | OpCode::Continuation => {
                if (frame.opcode == OpCode::Binary) == in_message {
                    return Err("fragments out of order");
                }
                if message.len() + frame.payload.len() > max_bytes {
                    return Err("message too big");
                }
                message.extend_from_slice(&frame.payload);
                in_message = !frame.fin;
                if frame.fin {
                    return Ok(Some(message.freeze()));
                }
            }
            OpCode::Text => return Err("text message"),
            OpCode::Ping => {
                let _ = out.try_send(Out::Pong(Bytes::copy_from_slice(&frame.payload)));
            }
            OpCode::Pong => {}
            OpCode::Close => {
                // No END before it: the session stays, waiting for a resume.
                let _ = out.try_send(Out::Close(1000, ""));
                return Ok(None);
            }
        }
    }
}

/// The first message of a connection, which must be a HELLO.
pub async fn read_hello<R: ReadReady + Send>(
    reader: &mut FrameReader<R>,
    out: &mpsc::Sender<Out>,
    max_bytes: usize,
    wait: Duration,
) -> Result<(u64, Option<[u8; protocol::TOKEN_BYTES]>), HelloError> {
    let message = tokio::time::timeout(wait, read_message(reader, out, max_bytes, || {}))
        .await
        .map_err(|_| HelloError::Gone)?
        .map_err(HelloError::Malformed)?
        .ok_or(HelloError::Gone)?;
    match protocol::parse(message) {
        Ok(FromClient::Hello { received, token }) => Ok((received, token)),
        Ok(_) => Err(HelloError::Malformed("the first message must be HELLO")),
        Err(e) => Err(HelloError::Malformed(e)),
    }
}

/// Run the connection until it ends, is replaced, or the session ends.
pub async fn run<R, W>(
    mut reader: FrameReader<R>,
    writer: FrameWriter<W>,
    ends: Ends,
    feed: Option<Feed>,
    max_message_bytes: usize,
    close_grace: Duration,
) where
    R: ReadReady + Send,
    W: AsyncWrite + Unpin,
{
    let Ends {
        out,
        out_rx,
        kicked,
        stopped,
        heard,
    } = ends;
    let reading = async {
        let _stopped = stopped;
        let Some(feed) = feed else {
            return;
        };
        let note = || {
            heard.store(feed.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        };
        note();
        loop {
            let message = tokio::select! {
                biased;
                _ = kicked.cancelled() => return,
                m = read_message(&mut reader, &out, max_message_bytes, note) => m,
            };
            let event = match message.map(|m| m.map(protocol::parse)) {
                Ok(None) => break,
                Ok(Some(Ok(FromClient::Data(bytes)))) => {
                    let len = bytes.len() as u64;
                    if len == 0 {
                        continue;
                    }
                    tokio::select! {
                        biased;
                        _ = kicked.cancelled() => return,
                        sent = feed.to_backend.send(bytes) => {
                            if sent.is_err() {
                                return;
                            }
                            feed.accepted.fetch_add(len, Ordering::AcqRel);
                        }
                    }
                    continue;
                }
                Ok(Some(Ok(FromClient::Ack(n)))) => Event::Ack(n),
                Ok(Some(Ok(FromClient::Ping(n)))) => Event::Ping(n),
                Ok(Some(Ok(FromClient::Pong(_)))) => continue,
                Ok(Some(Ok(FromClient::End))) => Event::End,
                Ok(Some(Ok(FromClient::Hello { .. }))) => {
                    Event::Violation("HELLO after the first message")
                }
                Ok(Some(Err(reason))) | Err(reason) => Event::Violation(reason),
            };
            let last = matches!(event, Event::End | Event::Violation(_));
            tokio::select! {
                biased;
                _ = kicked.cancelled() => return,
                _ = feed.events.send((feed.attach, event)) => {}
            }
            if last {
                // The session answers (END, Close); stop reading, keep the writer.
                kicked.cancelled().await;
                return;
            }
        }
        // The connection is gone: stop the writer too.
        kicked.cancel();
    };
    let writing = write_all(writer, out_rx, &kicked, close_grace);
    tokio::join!(reading, writing);
}

async fn write_all<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    mut out_rx: mpsc::Receiver<Out>,
    kicked: &CancellationToken,
    close_grace: Duration,
) {
    // A write may wait on a client that stopped reading; after a kick, only for a while.
    let give_up = async {
        kicked.cancelled().await;
        tokio::time::sleep(close_grace).await;
    };
    tokio::pin!(give_up);
    loop {
        let next = tokio::select! {
            biased;
            next = out_rx.recv() => next,
            _ = kicked.cancelled() => out_rx.try_recv().ok(),
        };
        let Some(next) = next else { break };
        let (frame, last) = match &next {
            Out::Message(m) => (Frame::binary(Payload::Borrowed(m)), false),
            Out::Pong(p) => (Frame::pong(Payload::Borrowed(p)), false),
            Out::Close(code, reason) => (Frame::close(*code, reason.as_bytes()), true),
        };
        let wrote = tokio::select! {
            w = async {
                writer.write_frame(frame, false).await?;
                if last || out_rx.is_empty() {
                    writer.flush().await?;
                }
                std::io::Result::Ok(())
            } => w.is_ok(),
            _ = &mut give_up => false,
        };
        if !wrote || last {
            break;
        }
    }
    kicked.cancel();
}

/// Refuse a connection at its start: a Close with `code`, written within `close_grace`.
pub async fn refuse<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    code: u16,
    reason: &'static str,
    close_grace: Duration,
) {
    let _ = tokio::time::timeout(close_grace, async {
        writer
            .write_frame(Frame::close(code, reason.as_bytes()), false)
            .await?;
        writer.flush().await
    })
    .await;
}

//! The bridge's reader task: client frames → backend bytes (checked, inflated when
//! compressed, written with a stall limit); control frames and the client's end go to the
//! writer over the channel.

use super::*;

pub(super) struct ClientCounters {
    pub(super) max_message_bytes: usize,
    pub(super) bytes: Tally,
    pub(super) messages: Tally,
    pub(super) pacer: Pacer,
    /// For the client's compressed messages (permessage-deflate negotiated).
    pub(super) inflater: Option<Inflater>,
    /// Marked while a backend write waits (read by the writer's keepalive).
    pub(super) held: Arc<Held>,
    pub(super) backend_stall: Duration,
    /// Recording of what the client sends (`[route.record] input = true`).
    pub(super) record: Option<Box<Tap>>,
}

/// Client frames → backend bytes: the reader task's state, kept in one place so the task's
/// future holds it once.
pub(super) struct ClientPump<CR, BW> {
    pub(super) ws: FrameReader<CR>,
    pub(super) backend: BW,
    pub(super) tx: flume::Sender<FromClient>,
    pub(super) counters: ClientCounters,
}

impl<CR: ReadReady, BW: AsyncWrite + Unpin> ClientPump<CR, BW> {
    /// Ends at the client's Close, error or EOF, or when the writer aborts the task.
    pub(super) async fn run(&mut self) {
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
                if let Some(tap) = counters.record.as_mut() {
                    if tap.record(chunk).await.is_err() {
                        return FromClient::Violation(close_code::INTERNAL_ERROR, RECORDING_FAILED);
                    }
                }
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
        if let Some(tap) = counters.record.as_mut() {
            if tap.record(&frame.payload).await.is_err() {
                return FromClient::Violation(close_code::INTERNAL_ERROR, RECORDING_FAILED);
            }
        }
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

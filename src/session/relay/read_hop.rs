//! A hop's reader: frames from its peer, checked (sizes, UTF-8, sequencing), inflated or
//! passed through as they are, to the other hop's writer; control frames to its own writer.

use super::*;

pub(super) struct Counts {
    pub(super) max_message_bytes: usize,
    pub(super) bytes: Tally,
    pub(super) messages: Tally,
    pub(super) total: Arc<AtomicU64>,
    pub(super) pacer: Pacer,
    /// For this hop's compressed messages (permessage-deflate negotiated on it).
    pub(super) inflater: Option<Inflater>,
    /// Compressed messages go to the other hop as they are (only checked here).
    pub(super) as_is: bool,
    /// Marked while the other hop's writer cannot take this reader's frames.
    pub(super) held: Arc<Held>,
    /// The backend hop's reader: the session whose watchers see each message's data as it
    /// is relayed to the client (inflated); `None` on the client hop.
    pub(super) watch: Option<Arc<SessionEntry>>,
    /// The recording's tap for this hop's message data (inflated): the backend hop's is the
    /// output, the client hop's the input (`[route.record] input = true`).
    pub(super) record: Option<Box<Tap>>,
}

/// One hop's reader: frames from its peer, checked, to the other hop (data, Close)
/// or to its own writer (ping, pong, violations).
pub(super) async fn read_hop<R: ReadReady>(
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

/// What a hop's reader does after one frame.
enum Next {
    /// Read the next frame.
    Read,
    /// Stop reading (the end was recorded and passed on).
    Stop,
    /// The peer broke a rule: close both hops for it.
    Violated(Violation),
    /// A required recording failed: the gateway closes both hops with this code (1011).
    RecordingFailed(u16),
}

impl Counts {
    /// Count `n` bytes delivered to the other hop (and a message when it ended one).
    #[inline]
    fn delivered(&mut self, n: u64, ends_message: bool) {
        self.bytes.increment(n);
        self.total.fetch_add(n, Ordering::Relaxed);
        if ends_message {
            self.messages.increment(1);
        }
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
        let next = match ws.read_frame().await {
            Ok(frame) => {
                if matches!(frame.opcode, OpCode::Text | OpCode::Binary) {
                    compressed = ws.compressed();
                }
                let hop_frame = HopFrame {
                    hop,
                    own,
                    relay,
                    first,
                };
                hop_frame
                    .pass_on(frame, compressed, counts, &mut messages)
                    .await
            }
            Err(e) => read_failed(e, hop, own, relay, first).await,
        };
        match next {
            Next::Read => continue,
            Next::Stop => return,
            Next::RecordingFailed(code) => {
                recording_failed(code, first, own, relay).await;
                return;
            }
            Next::Violated((code, reason)) => {
                record(first, code, hop.initiator(), reason);
                let _ = own.send(Own::Violation(code, reason)).await;
                let (code, reason) = hop.violated();
                let _ = relay.send(Relayed::Lost(code, reason)).await;
                return;
            }
        }
    }
}

/// A read that gave no frame: a violation to close for, or an end passed on here.
async fn read_failed(
    error: ReadError,
    hop: Hop,
    own: &mpsc::Sender<Own>,
    relay: &mpsc::Sender<Relayed>,
    first: &FirstEnd,
) -> Next {
    match error {
        ReadError::Violation(v) => Next::Violated(v),
        ReadError::OverBudget => {
            let (code, reason) = (close_code::TRY_AGAIN_LATER, OVER_BUDGET);
            record(first, code, Initiator::Gateway, reason);
            let _ = own.send(Own::Violation(code, reason)).await;
            let _ = relay.send(Relayed::Lost(code, reason)).await;
            Next::Stop
        }
        ReadError::Gone(_) => {
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
            Next::Stop
        }
    }
}

/// Where one hop's frames go: its own writer, the other hop's writer, the session's end.
struct HopFrame<'a> {
    hop: Hop,
    own: &'a mpsc::Sender<Own>,
    relay: &'a mpsc::Sender<Relayed>,
    first: &'a FirstEnd,
}

impl HopFrame<'_> {
    /// One frame read from this hop's peer, checked and passed on: data to the other hop
    /// (inflated when compressed), ping and pong to this hop's writer, Close to both.
    async fn pass_on(
        &self,
        frame: Frame<'static>,
        compressed: bool,
        counts: &mut Counts,
        messages: &mut MessageCheck,
    ) -> Next {
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
                messages,
                Taken {
                    relay: self.relay,
                    watch: counts.watch.as_deref().map(|e| &e.watch),
                    record: counts.record.as_deref_mut(),
                },
                &counts.held,
                &mut counts.pacer,
            );
            return match relayed.await {
                Ok((ends_message, n)) => {
                    counts.delivered(n, ends_message);
                    Next::Read
                }
                Err((code, RECORDING_FAILED)) => Next::RecordingFailed(code),
                Err(v) => Next::Violated(v),
            };
        }
        let ends_message = match messages.data_frame(frame.opcode, frame.fin, &frame.payload) {
            Ok(ends) => ends,
            Err(v) => return Next::Violated(v),
        };
        match frame.opcode {
            OpCode::Ping => {
                self.to_own(Own::Ping(Bytes::copy_from_slice(&frame.payload)))
                    .await
            }
            OpCode::Pong => {
                self.to_own(Own::Pong(Bytes::copy_from_slice(&frame.payload)))
                    .await
            }
            OpCode::Close => {
                let payload = Bytes::copy_from_slice(&frame.payload);
                let reason =
                    String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
                record(
                    self.first,
                    close_payload_code(&payload),
                    self.hop.initiator(),
                    reason,
                );
                let _ = self.relay.send(Relayed::Close(payload.clone())).await;
                let _ = self.own.send(Own::PeerClosed(payload)).await;
                Next::Stop
            }
            opcode => {
                let n = frame.payload.len() as u64;
                if let Some(session) = &counts.watch {
                    session.watch.publish(&frame.payload);
                }
                if let Some(tap) = counts.record.as_mut() {
                    if tap.record(&frame.payload).await.is_err() {
                        return Next::RecordingFailed(close_code::INTERNAL_ERROR);
                    }
                }
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
                if deliver(self.relay, frame, &counts.held).await {
                    counts.delivered(n, ends_message);
                }
                Next::Read
            }
        }
    }

    /// A control frame for this hop's own writer; stop once that writer is gone.
    async fn to_own(&self, message: Own) -> Next {
        match self.own.send(message).await {
            Ok(()) => Next::Read,
            Err(_) => Next::Stop,
        }
    }
}

/// A required recording failed: the session ends, both hops closed with `code` (1011) by
/// the gateway.
async fn recording_failed(
    code: u16,
    first: &FirstEnd,
    own: &mpsc::Sender<Own>,
    relay: &mpsc::Sender<Relayed>,
) {
    record(first, code, Initiator::Gateway, RECORDING_FAILED);
    let _ = own.send(Own::Violation(code, RECORDING_FAILED)).await;
    let _ = relay.send(Relayed::Lost(code, RECORDING_FAILED)).await;
}

/// Where a compressed message's inflated pieces go: the other hop's writer, the session's
/// watchers (backend hop) and its recording.
struct Taken<'a> {
    relay: &'a mpsc::Sender<Relayed>,
    watch: Option<&'a WatchPoint>,
    record: Option<&'a mut Tap>,
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
/// A required recording that fails is `Err((1011, RECORDING_FAILED))`.
async fn relay_compressed(
    frame: Frame<'static>,
    inflater: &mut Inflater,
    as_is: bool,
    messages: &mut MessageCheck,
    Taken {
        relay,
        watch,
        mut record,
    }: Taken<'_>,
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
        if let Some(watch) = watch {
            watch.publish(chunk);
        }
        if let Some(tap) = record.as_mut() {
            if tap.record(chunk).await.is_err() {
                return Err((close_code::INTERNAL_ERROR, RECORDING_FAILED));
            }
        }
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

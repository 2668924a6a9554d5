//! A hop's writer: the only place frames go out to its peer (relayed data, pongs, pings
//! for the hop's keepalive, Close), and its half of the close handshake.

use super::*;

/// One hop's writer and its half of the close handshake.
pub(super) struct HopWriter<'a, W> {
    pub(super) hop: Hop,
    pub(super) ws: GuardedWriter<'a, W>,
    pub(super) keepalive: Option<Keepalive>,
    /// Whether this hop's reader is held back by the other hop (its peer's pongs wait too).
    pub(super) held: Arc<Held>,
    pub(super) first: FirstEnd,
    /// Where this hop's ping round trips are recorded (the client hop only).
    pub(super) rtt: Option<Histogram>,
    pub(super) metrics: &'a SessionMetrics,
    /// Compresses plain messages for this hop (negotiated, and not passing another's through).
    pub(super) deflater: Option<Deflater>,
    /// The message being sent is compressed by `deflater`.
    pub(super) compressing: bool,
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

    pub(super) async fn run(
        mut self,
        mut own: mpsc::Receiver<Own>,
        mut relayed: mpsc::Receiver<Relayed>,
        // (this hop's, raised when it gives up; the other hop's, watched)
        (lost, other_lost): (&HopLost, &HopLost),
        config: &SessionSettings,
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

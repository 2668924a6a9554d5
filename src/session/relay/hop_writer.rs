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
        let mut closing = Closing::default();
        // Sends stay in this one function (not in a helper per event): their futures then
        // share one slot of this task's state, which every relayed session carries.
        macro_rules! or_return {
            ($flow:expr) => {
                if $flow == Flow::Stop {
                    return;
                }
            };
        }
        macro_rules! send_or_return {
            ($write:expr) => {{
                let result = $write.await;
                or_return!(self.sent(result, lost));
            }};
        }
        // Made once, not per loop: a fresh wait would join and leave a token's waiter list
        // (under its lock) and a fresh ping timer would be registered, on every message.
        let stopped_now = hard_stop.cancelled();
        let asked_to_close = control.cancelled();
        let other_gave_up = other_lost.raised.cancelled();
        let ping_timer = tokio::time::sleep_until(Instant::now() + Duration::from_secs(1 << 30));
        tokio::pin!(stopped_now, asked_to_close, other_gave_up, ping_timer);
        loop {
            let ping_at = self
                .keepalive
                .as_ref()
                .filter(|_| !closing.started())
                .map(Keepalive::deadline);
            if let Some(at) = ping_at {
                if ping_timer.deadline() != at {
                    ping_timer.as_mut().reset(at);
                }
            }
            tokio::select! {
                biased;
                () = &mut stopped_now => return,
                () = &mut ping_timer, if ping_at.is_some() => match self.ping_due() {
                    None => {}
                    Some(Due::Ping(seq)) => send_or_return!(self.ws.send(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&seq)))),
                    Some(Due::TimedOut) => {
                        self.metrics.keepalive_timed_out();
                        record(&self.first, close_code::GOING_AWAY, Initiator::Gateway, "keepalive timeout");
                        self.ws.try_close(close_code::GOING_AWAY, "keepalive timeout").await;
                        let (code, _) = self.hop.lost();
                        lost.raise(code, "peer keepalive timeout");
                        return;
                    }
                },
                msg = own.recv(), if closing.own_open => match msg {
                    Some(Own::Ping(payload)) if !closing.sent_close => send_or_return!(self.ws.send(Frame::pong(Payload::Borrowed(&payload)))),
                    Some(Own::Ping(_)) => {}
                    Some(Own::Pong(payload)) => self.pong(&payload),
                    Some(Own::PeerClosed(payload)) => or_return!(closing.peer_closed(payload, config.close_grace)),
                    Some(Own::Violation(code, reason)) => {
                        if !closing.sent_close {
                            self.ws.try_close(code, reason).await;
                        }
                        return;
                    }
                    // The reader ended without a Close: the peer is gone.
                    None => return,
                },
                () = &mut asked_to_close, if !closing.sent_close => {
                    let (code, reason) = control.reason();
                    record(&self.first, code, Initiator::Gateway, reason);
                    send_or_return!(self.ws.send_close(code, reason));
                    or_return!(closing.close_sent(config.close_grace));
                }
                // The other hop's writer gave up: close this hop's peer the same way as for
                // a lost peer (the other hop's reader may still be busy relaying its data).
                () = &mut other_gave_up, if !closing.sent_close => {
                    closing.relay_open = false;
                    let (code, reason) = other_lost.close.get().copied().unwrap_or(self.hop.other().lost());
                    send_or_return!(self.ws.send_close(code, reason));
                    or_return!(closing.close_sent(config.close_grace));
                }
                msg = relayed.recv(), if closing.relay_open => match msg {
                    Some(Relayed::Frame { opcode, fin, payload, wire }) => {
                        if !closing.sent_close {
                            let (payload, rsv1) = self.outgoing(opcode, fin, payload, wire);
                            send_or_return!(self.ws.send_marked(Frame::new(fin, opcode, None, payload), rsv1));
                        }
                    }
                    Some(Relayed::Close(payload)) => {
                        closing.relay_open = false;
                        if !closing.sent_close {
                            send_or_return!(self.ws.send(Frame::close_raw(Payload::Borrowed(&payload))));
                        }
                        or_return!(closing.close_sent(config.close_grace));
                    }
                    Some(Relayed::Lost(code, reason)) => {
                        closing.relay_open = false;
                        if !closing.sent_close {
                            send_or_return!(self.ws.send_close(code, reason));
                        }
                        or_return!(closing.close_sent(config.close_grace));
                    }
                    None => closing.relay_open = false,
                },
                () = sleep_until_opt(closing.deadline), if closing.deadline.is_some() => {
                    if let (Some(payload), false) = (closing.peer_close.take(), closing.sent_close) {
                        // The other hop never answered: complete this hop's handshake ourselves.
                        send_or_return!(self.ws.send(Frame::close_raw(Payload::Borrowed(&payload))));
                    }
                    return;
                }
            }
        }
    }

    /// A relayed frame as this hop gets it: passed through compressed (RSV1 on a message's
    /// first frame), or encoded by [`Self::encode`]. The second value is RSV1.
    #[inline]
    fn outgoing(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: BytesMut,
        wire: Wire,
    ) -> (Payload<'static>, bool) {
        match wire {
            Wire::Deflated => (Payload::Bytes(payload), opcode != OpCode::Continuation),
            Wire::Plain => self.encode(opcode, fin, payload),
        }
    }

    /// After a send: on success, excuse a ping that sat behind it; on failure record why,
    /// raise `lost` for the other hop and stop.
    #[inline]
    fn sent(&mut self, result: Result<(), WriteFailed>, lost: &HopLost) -> Flow {
        let e = match result {
            Ok(()) => {
                // Our ping may have sat behind the data this send waited on.
                if self.ws.take_waited() {
                    if let Some(k) = self.keepalive.as_mut() {
                        k.excuse(Instant::now());
                    }
                }
                return Flow::Go;
            }
            Err(e) => e,
        };
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
        Flow::Stop
    }

    /// The keepalive timer fired: a ping to send, the peer given up, or nothing (a pong
    /// that waits behind data we chose not to read is not missed).
    fn ping_due(&mut self) -> Option<Due> {
        let k = self.keepalive.as_mut()?;
        let now = Instant::now();
        if self
            .held
            .peer_free_since(now)
            .is_some_and(|since| k.excuse(since))
        {
            return None;
        }
        Some(k.on_deadline(now))
    }

    /// A pong from this hop's peer: its round trip, when it answers our ping.
    fn pong(&mut self, payload: &[u8]) {
        let rtt = self
            .keepalive
            .as_mut()
            .and_then(|k| k.on_pong(payload, Instant::now()));
        if let (Some(rtt), Some(h)) = (rtt, &self.rtt) {
            h.record(rtt.as_secs_f64());
        }
    }
}

/// Whether a hop's writer goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

/// Where a hop's close handshake stands, and which of its writer's inputs are still open.
struct Closing {
    /// This hop's peer has been sent a Close.
    sent_close: bool,
    /// This hop's peer sent a Close (its payload), not answered yet.
    peer_close: Option<Bytes>,
    /// When the handshake is given up.
    deadline: Option<Instant>,
    own_open: bool,
    relay_open: bool,
}

impl Default for Closing {
    fn default() -> Self {
        Self {
            sent_close: false,
            peer_close: None,
            deadline: None,
            own_open: true,
            relay_open: true,
        }
    }
}

impl Closing {
    /// Either side has sent a Close: no more keepalive pings.
    #[inline]
    fn started(&self) -> bool {
        self.sent_close || self.peer_close.is_some()
    }

    /// This hop's peer has (or had) its Close: done if the peer's came first, else wait for
    /// it until the grace runs out.
    #[inline]
    fn close_sent(&mut self, grace: Duration) -> Flow {
        self.sent_close = true;
        if self.peer_close.is_some() {
            return Flow::Stop;
        }
        self.deadline = Some(Instant::now() + grace);
        Flow::Go
    }

    /// This hop's peer sent its Close: done if ours went first, else answer with the other
    /// hop's reply when it comes, or echo at the deadline.
    fn peer_closed(&mut self, payload: Bytes, grace: Duration) -> Flow {
        self.own_open = false;
        if self.sent_close {
            return Flow::Stop;
        }
        self.peer_close = Some(payload);
        self.deadline = Some(Instant::now() + grace);
        Flow::Go
    }
}

//! The bridge's writer: backend bytes → client frames, plus pings, pongs and the close
//! handshake, all from one loop that owns the client's writer.

use super::*;

/// Where the close handshake stands, from the writer's side.
enum Phase {
    Open,
    /// The client sent Close: backend bytes still flow until the backend's FIN
    /// or the deadline, then we echo the client's Close.
    ClientClosed {
        echo: Box<[u8]>,
        deadline: Instant,
    },
    /// We sent Close: wait for the client's until the deadline.
    GatewayClosed {
        code: u16,
        initiator: Initiator,
        reason: Cow<'static, str>,
        deadline: Instant,
    },
}

pub(super) struct Writer<'a, CW> {
    pub(super) ws: GuardedWriter<'a, CW>,
    pub(super) keepalive: Option<Keepalive>,
    /// Whether the client's reader is held back by the backend (its pongs then wait too).
    pub(super) held: Arc<Held>,
    pub(super) sent: u64,
    /// For backend bytes to the client (permessage-deflate negotiated).
    pub(super) deflater: Option<Deflater>,
    /// Recording of what the backend sends (`[route.record]`).
    pub(super) record: Option<Box<Tap>>,
    /// Live watchers of the session (one atomic load per message when there are none).
    pub(super) watch: &'a WatchPoint,
}

pub(super) type Ending = (u16, Initiator, Cow<'static, str>);

/// One turn of the writer's loop: `Ok` goes round again, `Err` ends the session so.
type Step = Result<(), Ending>;

/// The loop's state besides the writer.
struct State {
    phase: Phase,
    backend_open: bool,
    /// False once the client's side ended (its Close, a violation, or EOF): the reader is done.
    client_open: bool,
}

/// Backend reads: the buffer (allocated on the first backend bytes, sized to the traffic: an
/// idle session holds little), its next size, and the bandwidth cap.
struct Reads {
    buf: Vec<u8>,
    size: ReadSize,
    pacer: Pacer,
}

/// The drain's hard stop came while our Close waited for its answer.
fn stopped() -> Ending {
    (
        close_code::ABNORMAL,
        Initiator::Gateway,
        "drain deadline passed".into(),
    )
}

fn backend_sent_invalid_utf8() -> Ending {
    (
        close_code::INTERNAL_ERROR,
        Initiator::Backend,
        "backend sent invalid UTF-8".into(),
    )
}

/// Our Close is out: the ending it recorded (taken out of `phase`).
fn gateway_ending(phase: &mut Phase) -> Option<Ending> {
    if !matches!(phase, Phase::GatewayClosed { .. }) {
        return None;
    }
    match std::mem::replace(phase, Phase::Open) {
        Phase::GatewayClosed {
            code,
            initiator,
            reason,
            ..
        } => Some((code, initiator, reason)),
        _ => None,
    }
}

impl<CW: AsyncWrite + Unpin> Writer<'_, CW> {
    /// Backend bytes → client frames, plus pings, pongs and the close handshake.
    pub(super) async fn backend_to_client<BR: BackendSource>(
        &mut self,
        mut backend: BR,
        rx: flume::Receiver<FromClient>,
        config: &SessionSettings,
        metrics: &SessionMetrics,
        control: &SessionControl,
    ) -> Ending {
        let hard_stop = self.ws.hard_stop();
        // One stream for the session's life: it keeps its waiter registered between messages
        // (a fresh `recv` would register and drop one per loop).
        let mut rx = rx.into_stream();
        // Parked far away until a deadline needs it (an unarmed tokio timer costs nothing).
        let timer = tokio::time::sleep_until(Instant::now() + Duration::from_secs(1 << 30));
        tokio::pin!(timer);
        // Made once: a fresh wait per loop would join and leave the token's waiter list,
        // under its lock, on every message. The drain's hard stop comes only after the
        // shutdown, which cancels every session's control first; so it is watched only once
        // the session stopped accepting that (our Close is out), and then afresh each loop.
        let asked_to_close = control.cancelled();
        tokio::pin!(asked_to_close);
        let pacer = Pacer::new(config.bandwidth_bytes_per_sec);
        let mut reads = Reads {
            buf: Vec::new(),
            size: ReadSize::new(pacer.max_read(config.buffer_bytes)),
            pacer,
        };
        let mut st = State {
            phase: Phase::Open,
            backend_open: true,
            client_open: true,
        };
        loop {
            let ping_at = match (&st.phase, &self.keepalive) {
                (Phase::Open, Some(k)) => Some(k.deadline()),
                _ => None,
            };
            let close_at = match &st.phase {
                Phase::Open => None,
                Phase::ClientClosed { deadline, .. } | Phase::GatewayClosed { deadline, .. } => {
                    Some(*deadline)
                }
            };
            let wants_backend = st.backend_open && !matches!(st.phase, Phase::GatewayClosed { .. });
            // Over the bandwidth cap: no read until the pacer allows one.
            let paced_until = if wants_backend {
                reads.pacer.ready_at(Instant::now())
            } else {
                None
            };
            let may_read_backend = wants_backend && paced_until.is_none();
            let accepting_shutdown = !matches!(st.phase, Phase::GatewayClosed { .. });
            // One timer for the next of the three: armed once and moved only when that
            // changes, so a busy session does not register a timer per message.
            let next = [ping_at, paced_until, close_at].into_iter().flatten().min();
            if let Some(at) = next {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
            }
            let step = tokio::select! {
                biased;
                () = hard_stop.cancelled(), if !accepting_shutdown => Err(stopped()),
                // Timers first: a session busy with bulk data still pings on time, and a
                // close deadline holds however fast the backend talks.
                () = &mut timer, if next.is_some() => {
                    self.on_timer(&mut st.phase, ping_at, close_at, metrics).await
                }
                msg = rx.next(), if st.client_open => {
                    self.on_client(msg, &mut st, config.close_grace, metrics).await
                }
                () = &mut asked_to_close, if accepting_shutdown => {
                    let (code, reason) = control.reason();
                    match self.answer_client_close(&st.phase, metrics).await {
                        Ok(()) => {
                            let ending = (code, Initiator::Gateway, reason.into());
                            self.close_with(&mut st.phase, ending, config.close_grace, metrics).await
                        }
                        end => end,
                    }
                }
                ready = backend.ready(), if may_read_backend => {
                    match read_backend(ready, &mut backend, &mut reads, config.message_type) {
                        Ok(0) => Ok(()),
                        Ok(n) => self.forward(&mut reads, n, config.message_type, metrics, control).await,
                        Err(end) => self.backend_ended(end, &mut st, config.close_grace, metrics).await,
                    }
                }
            };
            if let Err(ending) = step {
                return ending;
            }
        }
    }

    /// A send's result: on success our ping may have sat behind the data it waited on (so
    /// its pong is excused); a failure is how the session ends.
    fn after_send(&mut self, result: Result<(), WriteFailed>, metrics: &SessionMetrics) -> Step {
        match result {
            Ok(()) => {
                if self.ws.take_waited() {
                    if let Some(k) = self.keepalive.as_mut() {
                        k.excuse(Instant::now());
                    }
                }
                Ok(())
            }
            Err(WriteFailed::Io) => Err((
                close_code::ABNORMAL,
                Initiator::Client,
                "client connection lost".into(),
            )),
            Err(WriteFailed::Stalled) => {
                metrics.keepalive_timed_out();
                Err((
                    close_code::ABNORMAL,
                    Initiator::Gateway,
                    "client stopped reading".into(),
                ))
            }
            Err(WriteFailed::Stopped) => Err(stopped()),
        }
    }

    /// Send our Close and wait `grace` for the answer. One Close per direction: once ours is
    /// out, later failures change nothing, and the first code stays the one recorded.
    async fn close_with(
        &mut self,
        phase: &mut Phase,
        (code, initiator, reason): Ending,
        grace: Duration,
        metrics: &SessionMetrics,
    ) -> Step {
        if matches!(phase, Phase::GatewayClosed { .. }) {
            return Ok(());
        }
        // Boxed, as every Close path here: once per session, and inline they would size
        // every idle session's task.
        let sent = Box::pin(self.ws.send_close(code, &reason)).await;
        self.after_send(sent, metrics)?;
        *phase = Phase::GatewayClosed {
            code,
            initiator,
            reason,
            deadline: Instant::now() + grace,
        };
        Ok(())
    }

    /// After the client's Close, any end of the backend's stream completes the handshake:
    /// echo the client's Close now and end.
    async fn answer_client_close(&mut self, phase: &Phase, metrics: &SessionMetrics) -> Step {
        let Phase::ClientClosed { echo, .. } = phase else {
            return Ok(());
        };
        let sent = Box::pin(self.ws.send(Frame::close_raw(Payload::Borrowed(echo)))).await;
        self.after_send(sent, metrics)?;
        Err(client_ending(echo))
    }

    /// The timer fired: a close deadline passed, the pacer's wait is over, or a ping is due.
    async fn on_timer(
        &mut self,
        phase: &mut Phase,
        ping_at: Option<Instant>,
        close_at: Option<Instant>,
        metrics: &SessionMetrics,
    ) -> Step {
        let now = Instant::now();
        if close_at.is_some_and(|at| at <= now) {
            if let Some(ending) = gateway_ending(phase) {
                return Err(ending);
            }
            // The backend kept talking past the grace period: finish the handshake anyway.
            return self.answer_client_close(phase, metrics).await;
        }
        // Otherwise the pacer's wait is over (the loop reads again), or a ping is due.
        if ping_at.is_none_or(|at| at > now) {
            return Ok(());
        }
        let Some(k) = self.keepalive.as_mut() else {
            return Ok(());
        };
        // A pong that waits behind data we chose not to read is not missed.
        if self
            .held
            .peer_free_since(now)
            .is_some_and(|since| k.excuse(since))
        {
            return Ok(());
        }
        match k.on_deadline(now) {
            Due::Ping(seq) => {
                let ping = Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&seq));
                let sent = self.ws.send(ping).await;
                self.after_send(sent, metrics)
            }
            Due::TimedOut => {
                metrics.keepalive_timed_out();
                // Best effort: the client may be gone, so do not wait on it for long.
                // Boxed, as are the other `try_close` calls: rare, and the largest
                // future here, it would size every idle session's task.
                Box::pin(
                    self.ws
                        .try_close(close_code::GOING_AWAY, "keepalive timeout"),
                )
                .await;
                Err((
                    close_code::GOING_AWAY,
                    Initiator::Gateway,
                    "keepalive timeout".into(),
                ))
            }
        }
    }

    /// What the client's reader task reported.
    async fn on_client(
        &mut self,
        msg: Option<FromClient>,
        st: &mut State,
        grace: Duration,
        metrics: &SessionMetrics,
    ) -> Step {
        match msg {
            Some(FromClient::Ping(payload)) => {
                if matches!(st.phase, Phase::GatewayClosed { .. }) {
                    return Ok(());
                }
                let sent = self.ws.send(Frame::pong(Payload::Borrowed(&payload))).await;
                self.after_send(sent, metrics)
            }
            Some(FromClient::Pong(payload)) => {
                let now = Instant::now();
                if let Some(rtt) = self
                    .keepalive
                    .as_mut()
                    .and_then(|k| k.on_pong(&payload, now))
                {
                    metrics.ping_rtt.record(rtt.as_secs_f64());
                }
                Ok(())
            }
            Some(FromClient::Close(echo)) => {
                st.client_open = false;
                if let Some(ending) = gateway_ending(&mut st.phase) {
                    return Err(ending);
                }
                if matches!(st.phase, Phase::Open) && st.backend_open {
                    let deadline = Instant::now() + grace;
                    st.phase = Phase::ClientClosed { echo, deadline };
                    return Ok(());
                }
                let sent = self
                    .ws
                    .send(Frame::close_raw(Payload::Borrowed(&echo)))
                    .await;
                self.after_send(sent, metrics)?;
                Err(client_ending(&echo))
            }
            Some(FromClient::Violation(code, reason)) => {
                if let Some(ending) = gateway_ending(&mut st.phase) {
                    return Err(ending);
                }
                Box::pin(self.ws.try_close(code, reason)).await;
                Err((code, Initiator::Client, reason.into()))
            }
            Some(FromClient::OverBudget) => {
                if let Some(ending) = gateway_ending(&mut st.phase) {
                    return Err(ending);
                }
                Box::pin(self.ws.try_close(close_code::TRY_AGAIN_LATER, OVER_BUDGET)).await;
                Err((
                    close_code::TRY_AGAIN_LATER,
                    Initiator::Gateway,
                    OVER_BUDGET.into(),
                ))
            }
            Some(FromClient::BackendStalled) => {
                self.backend_lost(st, "backend stopped reading", grace, metrics)
                    .await
            }
            Some(FromClient::BackendWriteFailed) => {
                self.backend_lost(st, "backend connection lost", grace, metrics)
                    .await
            }
            Some(FromClient::Gone) | None => Err(gateway_ending(&mut st.phase).unwrap_or((
                close_code::ABNORMAL,
                Initiator::Client,
                "client vanished without a Close".into(),
            ))),
        }
    }

    /// The backend is gone (or stopped reading): finish the client's close handshake if it
    /// started one, else close with 1011.
    async fn backend_lost(
        &mut self,
        st: &mut State,
        reason: &'static str,
        grace: Duration,
        metrics: &SessionMetrics,
    ) -> Step {
        st.backend_open = false;
        self.answer_client_close(&st.phase, metrics).await?;
        let ending = (
            close_code::INTERNAL_ERROR,
            Initiator::Backend,
            reason.into(),
        );
        self.close_with(&mut st.phase, ending, grace, metrics).await
    }

    /// How the backend's stream ended (or broke), and the close that follows.
    async fn backend_ended(
        &mut self,
        end: BackendEnd,
        st: &mut State,
        grace: Duration,
        metrics: &SessionMetrics,
    ) -> Step {
        match end {
            BackendEnd::Lost => {
                self.backend_lost(st, "backend connection lost", grace, metrics)
                    .await
            }
            BackendEnd::InvalidUtf8 => {
                st.backend_open = false;
                let ending = backend_sent_invalid_utf8();
                self.close_with(&mut st.phase, ending, grace, metrics).await
            }
            BackendEnd::Closed => {
                st.backend_open = false;
                self.answer_client_close(&st.phase, metrics).await?;
                let ending = (
                    close_code::NORMAL,
                    Initiator::Backend,
                    "backend closed the connection".into(),
                );
                self.close_with(&mut st.phase, ending, grace, metrics).await
            }
        }
    }

    /// Backend bytes → one client message: where every backend→client message crosses the
    /// bridge (counted, recorded and shown to watchers here). `ready`: the complete bytes at
    /// the front of the read buffer.
    async fn forward(
        &mut self,
        reads: &mut Reads,
        ready: usize,
        message_type: MessageType,
        metrics: &SessionMetrics,
        control: &SessionControl,
    ) -> Step {
        let opcode = match message_type {
            MessageType::Binary => OpCode::Binary,
            MessageType::Text => OpCode::Text,
        };
        let data = &reads.buf[..ready];
        let sent = match self
            .deflater
            .as_mut()
            .and_then(|d| d.compress_message(data))
        {
            Some(c) => {
                let frame = Frame::new(true, opcode, None, Payload::Owned(c));
                self.ws.send_marked(frame, true).await
            }
            None => {
                let frame = Frame::new(true, opcode, None, Payload::Borrowed(data));
                self.ws.send(frame).await
            }
        };
        self.after_send(sent, metrics)?;
        self.sent += ready as u64;
        metrics.bytes_to_client.increment(ready as u64);
        metrics.messages_to_client.increment(1);
        self.watch.publish(data);
        if let Some(tap) = self.record.as_mut() {
            // Required recordings end the session when they fail: through its close request,
            // so the close handshake runs as for an operator's close.
            if tap.record(data).await.is_err() {
                control.close(close_code::INTERNAL_ERROR, RECORDING_FAILED);
            }
        }
        // At most 3 bytes of a cut character stay for the next read.
        reads.buf.drain(..ready);
        reads.size.release_if_idle(&mut reads.buf);
        Ok(())
    }
}

/// How the backend's byte stream stopped.
enum BackendEnd {
    /// EOF.
    Closed,
    /// A read failed.
    Lost,
    /// Text mode: bytes that are not UTF-8 (or EOF inside a character).
    InvalidUtf8,
}

/// The backend has bytes (or its end) waiting: read them into `reads`. `Ok(n)`: the first
/// `n` bytes are ready to send (0: nothing yet, or only part of a character).
fn read_backend<BR: BackendSource>(
    ready: io::Result<()>,
    backend: &mut BR,
    reads: &mut Reads,
    message_type: MessageType,
) -> Result<usize, BackendEnd> {
    let read = ready.and_then(|()| {
        // The buffer is taken only now that bytes are waiting.
        reads.size.prepare(&mut reads.buf);
        backend.try_read_into(&mut reads.buf)
    });
    let n = match read {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
        Err(_) => return Err(BackendEnd::Lost),
        // Text mode: the backend ended inside a character.
        Ok(0) if !reads.buf.is_empty() => return Err(BackendEnd::InvalidUtf8),
        Ok(0) => return Err(BackendEnd::Closed),
        Ok(n) => n,
    };
    reads.size.after_read(n);
    reads.pacer.spent(n);
    let ready = match message_type {
        MessageType::Binary => reads.buf.len(),
        MessageType::Text => complete_prefix(&reads.buf).map_err(|_| BackendEnd::InvalidUtf8)?,
    };
    if ready == 0 {
        reads.size.release_if_idle(&mut reads.buf);
    }
    Ok(ready)
}

/// Backend read sizes follow the traffic: they double while reads fill the buffer (bulk
/// transfer) up to `buffer_bytes`, and halve when reads come back small (interactive).
#[derive(Debug)]
struct ReadSize {
    current: usize,
    max: usize,
}

impl ReadSize {
    const MIN: usize = 4096;

    fn new(max: usize) -> Self {
        Self {
            current: Self::MIN.min(max),
            max,
        }
    }

    /// Make room for the next read, giving memory back after a burst.
    fn prepare(&self, buf: &mut Vec<u8>) {
        if buf.capacity() > 2 * self.current.max(buf.len()) {
            buf.shrink_to(self.current.max(buf.len()));
        }
        buf.reserve_exact(self.current);
    }

    /// After a small read that emptied the buffer, free it: interactive and idle sessions
    /// hold no read buffer between messages (a fresh one is a cheap allocation).
    fn release_if_idle(&self, buf: &mut Vec<u8>) {
        if buf.is_empty() && self.current <= Self::MIN {
            *buf = Vec::new();
        }
    }

    fn after_read(&mut self, n: usize) {
        if n >= self.current {
            self.current = (self.current * 2).min(self.max);
        } else if n <= self.current / 4 {
            self.current = (self.current / 2).max(Self::MIN.min(self.max));
        }
    }
}

/// The client started the close: report its code (1005 "no code" when it sent none).
fn client_ending(echo: &[u8]) -> Ending {
    let code = close_payload_code(echo);
    let reason = String::from_utf8_lossy(echo.get(2..).unwrap_or_default()).into_owned();
    (code, Initiator::Client, reason.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_size_grows_with_bulk_and_shrinks_when_idle() {
        let mut size = ReadSize::new(64 * 1024);
        let mut buf = Vec::new();
        size.prepare(&mut buf);
        assert!(buf.capacity() >= 4096 && buf.capacity() < 8192);
        for _ in 0..6 {
            let n = size.current;
            size.after_read(n);
        }
        assert_eq!(size.current, 64 * 1024, "capped at buffer_bytes");
        size.prepare(&mut buf);
        assert!(buf.capacity() >= 64 * 1024);
        for _ in 0..6 {
            size.after_read(10);
        }
        assert_eq!(size.current, 4096);
        size.prepare(&mut buf);
        assert!(
            buf.capacity() < 16 * 1024,
            "memory given back after the burst"
        );
    }
}

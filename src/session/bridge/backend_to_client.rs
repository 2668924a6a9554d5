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
}

type Ending = (u16, Initiator, Cow<'static, str>);

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
        // Allocated on the first backend bytes, sized to the traffic: an idle session holds little.
        let mut buf: Vec<u8> = Vec::new();
        let mut pacer = Pacer::new(config.bandwidth_bytes_per_sec);
        let mut read_size = ReadSize::new(pacer.max_read(config.buffer_bytes));
        let mut phase = Phase::Open;
        let mut backend_open = true;
        // False once the client's side ended (its Close, a violation, or EOF): the reader is done.
        let mut client_open = true;
        let stopped: Ending = (
            close_code::ABNORMAL,
            Initiator::Gateway,
            "drain deadline passed".into(),
        );
        macro_rules! send_or_end {
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
                    Err(WriteFailed::Io) => {
                        return (
                            close_code::ABNORMAL,
                            Initiator::Client,
                            "client connection lost".into(),
                        )
                    }
                    Err(WriteFailed::Stalled) => {
                        metrics.keepalive_timed_out();
                        return (
                            close_code::ABNORMAL,
                            Initiator::Gateway,
                            "client stopped reading".into(),
                        );
                    }
                    Err(WriteFailed::Stopped) => return stopped,
                }
            };
        }
        // One Close per direction: once ours is out, later failures change nothing, and the
        // first code stays the one recorded.
        macro_rules! close_with {
            ($code:expr, $initiator:expr, $reason:expr) => {{
                if matches!(phase, Phase::GatewayClosed { .. }) {
                    continue;
                }
                let reason: Cow<'static, str> = $reason.into();
                send_or_end!(self.ws.send_close($code, &reason));
                phase = Phase::GatewayClosed {
                    code: $code,
                    initiator: $initiator,
                    reason,
                    deadline: Instant::now() + config.close_grace,
                };
            }};
        }
        // After the client's Close, any end of the backend's stream completes the handshake:
        // echo the client's Close now.
        macro_rules! answer_client_close {
            () => {
                if let Phase::ClientClosed { echo, .. } = &phase {
                    send_or_end!(self.ws.send(Frame::close_raw(Payload::Borrowed(echo))));
                    return client_ending(echo);
                }
            };
        }
        loop {
            let ping_at = match (&phase, &self.keepalive) {
                (Phase::Open, Some(k)) => Some(k.deadline()),
                _ => None,
            };
            let close_at = match &phase {
                Phase::Open => None,
                Phase::ClientClosed { deadline, .. } | Phase::GatewayClosed { deadline, .. } => {
                    Some(*deadline)
                }
            };
            let wants_backend = backend_open && !matches!(phase, Phase::GatewayClosed { .. });
            // Over the bandwidth cap: no read until the pacer allows one.
            let paced_until = if wants_backend {
                pacer.ready_at(Instant::now())
            } else {
                None
            };
            let read_backend = wants_backend && paced_until.is_none();
            let accepting_shutdown = !matches!(phase, Phase::GatewayClosed { .. });
            // One timer for the next of the three: armed once and moved only when that
            // changes, so a busy session does not register a timer per message.
            let next = [ping_at, paced_until, close_at].into_iter().flatten().min();
            if let Some(at) = next {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
            }
            tokio::select! {
                biased;
                () = hard_stop.cancelled(), if !accepting_shutdown => return stopped,
                // Timers first: a session busy with bulk data still pings on time, and a
                // close deadline holds however fast the backend talks.
                () = &mut timer, if next.is_some() => {
                    let now = Instant::now();
                    if close_at.is_some_and(|at| at <= now) {
                        match phase {
                            Phase::ClientClosed { echo, .. } => {
                                // The backend kept talking past the grace period: finish the handshake anyway.
                                send_or_end!(self.ws.send(Frame::close_raw(Payload::Borrowed(&echo))));
                                return client_ending(&echo);
                            }
                            Phase::GatewayClosed { code, initiator, reason, .. } => return (code, initiator, reason),
                            Phase::Open => unreachable!("no close deadline while open"),
                        }
                    }
                    // Otherwise the pacer's wait is over (the loop reads again), or a ping is due.
                    if ping_at.is_none_or(|at| at > now) {
                        continue;
                    }
                    let Some(k) = self.keepalive.as_mut() else { continue };
                    // A pong that waits behind data we chose not to read is not missed.
                    if self.held.peer_free_since(now).is_some_and(|since| k.excuse(since)) {
                        continue;
                    }
                    match k.on_deadline(now) {
                        Due::Ping(seq) => send_or_end!(self.ws.send(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&seq)))),
                        Due::TimedOut => {
                            metrics.keepalive_timed_out();
                            // Best effort: the client may be gone, so do not wait on it for long.
                            // Boxed, as are the other `try_close` calls: rare, and the largest
                            // future here, it would size every idle session's task.
                            Box::pin(self.ws.try_close(close_code::GOING_AWAY, "keepalive timeout")).await;
                            return (close_code::GOING_AWAY, Initiator::Gateway, "keepalive timeout".into());
                        }
                    }
                }
                msg = rx.next(), if client_open => match msg {
                    Some(FromClient::Ping(payload)) => {
                        if !matches!(phase, Phase::GatewayClosed { .. }) {
                            send_or_end!(self.ws.send(Frame::pong(Payload::Borrowed(&payload))));
                        }
                    }
                    Some(FromClient::Pong(payload)) => {
                        if let Some(rtt) = self.keepalive.as_mut().and_then(|k| k.on_pong(&payload, Instant::now())) {
                            metrics.ping_rtt.record(rtt.as_secs_f64());
                        }
                    }
                    Some(FromClient::Close(echo)) => { client_open = false; match phase {
                        Phase::Open if backend_open => {
                            phase = Phase::ClientClosed { echo, deadline: Instant::now() + config.close_grace };
                        }
                        Phase::Open | Phase::ClientClosed { .. } => {
                            send_or_end!(self.ws.send(Frame::close_raw(Payload::Borrowed(&echo))));
                            return client_ending(&echo);
                        }
                        Phase::GatewayClosed { code, initiator, reason, .. } => return (code, initiator, reason),
                    }},
                    Some(FromClient::Violation(code, reason)) => {
                        if let Phase::GatewayClosed { code, initiator, reason, .. } = phase {
                            return (code, initiator, reason);
                        }
                        Box::pin(self.ws.try_close(code, reason)).await;
                        return (code, Initiator::Client, reason.into());
                    }
                    Some(FromClient::OverBudget) => {
                        if let Phase::GatewayClosed { code, initiator, reason, .. } = phase {
                            return (code, initiator, reason);
                        }
                        Box::pin(self.ws.try_close(close_code::TRY_AGAIN_LATER, OVER_BUDGET)).await;
                        return (close_code::TRY_AGAIN_LATER, Initiator::Gateway, OVER_BUDGET.into());
                    }
                    Some(FromClient::BackendStalled) => {
                        backend_open = false;
                        answer_client_close!();
                        close_with!(close_code::INTERNAL_ERROR, Initiator::Backend, "backend stopped reading");
                    }
                    Some(FromClient::BackendWriteFailed) => {
                        backend_open = false;
                        answer_client_close!();
                        close_with!(close_code::INTERNAL_ERROR, Initiator::Backend, "backend connection lost");
                    }
                    Some(FromClient::Gone) | None => {
                        return match phase {
                            Phase::GatewayClosed { code, initiator, reason, .. } => (code, initiator, reason),
                            _ => (close_code::ABNORMAL, Initiator::Client, "client vanished without a Close".into()),
                        };
                    }
                },
                () = &mut asked_to_close, if accepting_shutdown => {
                    answer_client_close!();
                    let (code, reason) = control.reason();
                    close_with!(code, Initiator::Gateway, reason);
                }
                ready = backend.ready(), if read_backend => match ready.and_then(|()| {
                    // The buffer is taken only now that bytes are waiting.
                    read_size.prepare(&mut buf);
                    backend.try_read_into(&mut buf)
                }) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Ok(0) => {
                        backend_open = false;
                        if !buf.is_empty() {
                            // Text mode: the backend ended inside a character.
                            close_with!(close_code::INTERNAL_ERROR, Initiator::Backend, "backend sent invalid UTF-8");
                            continue;
                        }
                        answer_client_close!();
                        close_with!(close_code::NORMAL, Initiator::Backend, "backend closed the connection");
                    }
                    Ok(n) => {
                        read_size.after_read(n);
                        pacer.spent(n);
                        let ready = match config.message_type {
                            MessageType::Binary => buf.len(),
                            MessageType::Text => match complete_prefix(&buf) {
                                Ok(n) => n,
                                Err(_) => {
                                    backend_open = false;
                                    close_with!(close_code::INTERNAL_ERROR, Initiator::Backend, "backend sent invalid UTF-8");
                                    continue;
                                }
                            },
                        };
                        if ready > 0 {
                            let opcode = match config.message_type {
                                MessageType::Binary => OpCode::Binary,
                                MessageType::Text => OpCode::Text,
                            };
                            let data = &buf[..ready];
                            match self.deflater.as_mut().and_then(|d| d.compress_message(data)) {
                                Some(c) => send_or_end!(self.ws.send_marked(Frame::new(true, opcode, None, Payload::Owned(c)), true)),
                                None => send_or_end!(self.ws.send(Frame::new(true, opcode, None, Payload::Borrowed(data)))),
                            }
                            self.sent += ready as u64;
                            metrics.bytes_to_client.increment(ready as u64);
                            metrics.messages_to_client.increment(1);
                            // At most 3 bytes of a cut character stay for the next read.
                            buf.drain(..ready);
                        }
                        read_size.release_if_idle(&mut buf);
                    }
                    Err(_) => {
                        backend_open = false;
                        answer_client_close!();
                        close_with!(close_code::INTERNAL_ERROR, Initiator::Backend, "backend connection lost");
                    }
                },
            }
        }
    }
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

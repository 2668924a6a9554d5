//! The session's writer: empties the datagram queue into frames and owns the close
//! handshake, keepalive pings, the idle timeout and the end on ICMP errors.

use std::borrow::Cow;
use std::ops::ControlFlow;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};
use futures_util::StreamExt;
use tokio::io::AsyncWrite;
use tokio::time::Instant;

use super::{Activity, Event};
use crate::error::close_code;
use crate::metrics::{SessionMetrics, UdpMetrics};
use crate::session::bridge::{Initiator, OVER_BUDGET};
use crate::session::keepalive::{Due, Keepalive};
use crate::session::registry::SessionControl;
use crate::session::settings::SessionSettings;
use crate::ws::frames::{close_payload_code, GuardedWriter, WriteFailed};

type Ending = (u16, Initiator, Cow<'static, str>);

pub(super) struct Writer<'a, CW> {
    pub(super) ws: GuardedWriter<'a, CW>,
    pub(super) keepalive: Option<Keepalive>,
    pub(super) sent: u64,
}

/// The gateway sent its Close and waits for the client's until `deadline`.
struct Closing {
    code: u16,
    initiator: Initiator,
    reason: Cow<'static, str>,
    deadline: Instant,
}

impl<CW: AsyncWrite + Unpin> Writer<'_, CW> {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run(
        &mut self,
        events: flume::Receiver<Event>,
        queue: flume::Receiver<Bytes>,
        config: &SessionSettings,
        metrics: &SessionMetrics,
        udp: &UdpMetrics,
        activity: &Activity,
        control: &SessionControl,
    ) -> Ending {
        let hard_stop = self.ws.hard_stop();
        let mut events = events.into_stream();
        let mut queue = queue.into_stream();
        let timer = tokio::time::sleep_until(Instant::now() + Duration::from_secs(1 << 30));
        tokio::pin!(timer);
        let asked_to_close = control.cancelled();
        tokio::pin!(asked_to_close);
        let idle = config.udp.idle_timeout;
        let mut closing: Option<Closing> = None;
        let grace = config.close_grace;
        loop {
            let open = closing.is_none();
            let ping_at = match (open, &self.keepalive) {
                (true, Some(k)) => Some(k.deadline()),
                _ => None,
            };
            let idle_at = idle.filter(|_| open).map(|d| activity.last() + d);
            let close_at = closing.as_ref().map(|c| c.deadline);
            let next = [ping_at, idle_at, close_at].into_iter().flatten().min();
            if let Some(at) = next {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
            }
            let flow = tokio::select! {
                biased;
                () = hard_stop.cancelled(), if !open => ControlFlow::Break(stopped()),
                () = &mut timer, if next.is_some() => {
                    self.on_timer((ping_at, idle_at), &mut closing, grace, metrics).await
                }
                event = events.next() => self.on_event(event, &mut closing, grace, metrics).await,
                () = &mut asked_to_close, if open => {
                    let (code, reason) = control.reason();
                    self.close_with(&mut closing, (code, Initiator::Gateway, reason.into()), grace, metrics).await
                }
                datagram = queue.next(), if open => match datagram {
                    Some(datagram) => self.on_datagram(datagram, metrics, udp).await,
                    None => ControlFlow::Continue(()),
                },
            };
            if let ControlFlow::Break(ending) = flow {
                return ending;
            }
        }
    }

    /// After a send: excuse a ping that sat behind it, or end the session for the failure.
    #[inline]
    fn sent(
        &mut self,
        result: Result<(), WriteFailed>,
        metrics: &SessionMetrics,
    ) -> ControlFlow<Ending> {
        match result {
            Ok(()) => {
                if self.ws.take_waited() {
                    if let Some(k) = self.keepalive.as_mut() {
                        k.excuse(Instant::now());
                    }
                }
                ControlFlow::Continue(())
            }
            Err(WriteFailed::Io) => ControlFlow::Break((
                close_code::ABNORMAL,
                Initiator::Client,
                "client connection lost".into(),
            )),
            Err(WriteFailed::Stalled) => {
                metrics.keepalive_timed_out();
                ControlFlow::Break((
                    close_code::ABNORMAL,
                    Initiator::Gateway,
                    "client stopped reading".into(),
                ))
            }
            Err(WriteFailed::Stopped) => ControlFlow::Break(stopped()),
        }
    }

    /// Send the gateway's Close (once) and wait for the client's until the grace runs out.
    async fn close_with(
        &mut self,
        closing: &mut Option<Closing>,
        (code, initiator, reason): Ending,
        grace: Duration,
        metrics: &SessionMetrics,
    ) -> ControlFlow<Ending> {
        if closing.is_some() {
            return ControlFlow::Continue(());
        }
        let result = self.ws.send_close(code, &reason).await;
        self.sent(result, metrics)?;
        *closing = Some(Closing {
            code,
            initiator,
            reason,
            deadline: Instant::now() + grace,
        });
        ControlFlow::Continue(())
    }

    /// The timer fired: the close handshake's deadline, the idle timeout, or the keepalive.
    async fn on_timer(
        &mut self,
        (ping_at, idle_at): (Option<Instant>, Option<Instant>),
        closing: &mut Option<Closing>,
        grace: Duration,
        metrics: &SessionMetrics,
    ) -> ControlFlow<Ending> {
        let now = Instant::now();
        if let Some(c) = closing.take_if(|c| c.deadline <= now) {
            return ControlFlow::Break((c.code, c.initiator, c.reason));
        }
        if idle_at.is_some_and(|at| at <= now) {
            let idle = (
                close_code::NORMAL,
                Initiator::Gateway,
                "idle timeout".into(),
            );
            return self.close_with(closing, idle, grace, metrics).await;
        }
        if ping_at.is_none_or(|at| at > now) {
            return ControlFlow::Continue(());
        }
        let Some(k) = self.keepalive.as_mut() else {
            return ControlFlow::Continue(());
        };
        match k.on_deadline(now) {
            Due::Ping(seq) => {
                let ping = Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&seq));
                let result = self.ws.send(ping).await;
                self.sent(result, metrics)
            }
            Due::TimedOut => {
                metrics.keepalive_timed_out();
                Box::pin(
                    self.ws
                        .try_close(close_code::GOING_AWAY, "keepalive timeout"),
                )
                .await;
                ControlFlow::Break((
                    close_code::GOING_AWAY,
                    Initiator::Gateway,
                    "keepalive timeout".into(),
                ))
            }
        }
    }

    /// What the client reader or the backend reader reported.
    async fn on_event(
        &mut self,
        event: Option<Event>,
        closing: &mut Option<Closing>,
        grace: Duration,
        metrics: &SessionMetrics,
    ) -> ControlFlow<Ending> {
        match event {
            Some(Event::Ping(payload)) => {
                if closing.is_some() {
                    return ControlFlow::Continue(());
                }
                let result = self.ws.send(Frame::pong(Payload::Borrowed(&payload))).await;
                self.sent(result, metrics)
            }
            Some(Event::Pong(payload)) => {
                let rtt = self
                    .keepalive
                    .as_mut()
                    .and_then(|k| k.on_pong(&payload, Instant::now()));
                if let Some(rtt) = rtt {
                    metrics.ping_rtt.record(rtt.as_secs_f64());
                }
                ControlFlow::Continue(())
            }
            Some(Event::Close(echo)) => {
                if let Some(end) = answered(closing) {
                    return ControlFlow::Break(end);
                }
                let result = self
                    .ws
                    .send(Frame::close_raw(Payload::Borrowed(&echo)))
                    .await;
                self.sent(result, metrics)?;
                let code = close_payload_code(&echo);
                let reason =
                    String::from_utf8_lossy(echo.get(2..).unwrap_or_default()).into_owned();
                ControlFlow::Break((code, Initiator::Client, reason.into()))
            }
            Some(Event::Violation(code, reason)) => {
                if let Some(end) = answered(closing) {
                    return ControlFlow::Break(end);
                }
                Box::pin(self.ws.try_close(code, reason)).await;
                ControlFlow::Break((code, Initiator::Client, reason.into()))
            }
            Some(Event::OverBudget) => {
                if let Some(end) = answered(closing) {
                    return ControlFlow::Break(end);
                }
                Box::pin(self.ws.try_close(close_code::TRY_AGAIN_LATER, OVER_BUDGET)).await;
                ControlFlow::Break((
                    close_code::TRY_AGAIN_LATER,
                    Initiator::Gateway,
                    OVER_BUDGET.into(),
                ))
            }
            Some(Event::Unreachable) => {
                let reason = "backend unreachable (ICMP errors)";
                let ending = (
                    close_code::INTERNAL_ERROR,
                    Initiator::Backend,
                    reason.into(),
                );
                self.close_with(closing, ending, grace, metrics).await
            }
            Some(Event::BackendFailed) => {
                let reason = "backend socket failed";
                let ending = (
                    close_code::INTERNAL_ERROR,
                    Initiator::Backend,
                    reason.into(),
                );
                self.close_with(closing, ending, grace, metrics).await
            }
            Some(Event::Gone) | None => {
                ControlFlow::Break(answered(closing).unwrap_or_else(|| {
                    let reason = "client vanished without a Close";
                    (close_code::ABNORMAL, Initiator::Client, reason.into())
                }))
            }
        }
    }

    /// One datagram from the backend, as one binary message to the client.
    async fn on_datagram(
        &mut self,
        datagram: Bytes,
        metrics: &SessionMetrics,
        udp: &UdpMetrics,
    ) -> ControlFlow<Ending> {
        let n = datagram.len() as u64;
        let result = self
            .ws
            .send(Frame::binary(Payload::Borrowed(&datagram)))
            .await;
        self.sent(result, metrics)?;
        self.sent += n;
        metrics.bytes_to_client.increment(n);
        metrics.messages_to_client.increment(1);
        udp.to_client.increment(1);
        ControlFlow::Continue(())
    }
}

/// The end when the drain deadline passed.
fn stopped() -> Ending {
    (
        close_code::ABNORMAL,
        Initiator::Gateway,
        "drain deadline passed".into(),
    )
}

/// Once the gateway has sent its Close, the client's answer (or end) ends the session as
/// the gateway's close.
fn answered(closing: &mut Option<Closing>) -> Option<Ending> {
    closing.take().map(|c| (c.code, c.initiator, c.reason))
}

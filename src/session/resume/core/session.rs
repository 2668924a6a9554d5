//! The loop's state and what it does on each wake-up: pump the backend into the replay
//! buffer (kept until acknowledged), take control messages and resumes, send to the
//! attached connection, keep the heartbeat and the grace period.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::{new_token, Attach, Event, Feeds, Inputs, Link, Out, ResumeSettings, MAX_DATA_BYTES};
use crate::session::resume::protocol::{self, close, TOKEN_BYTES};
use crate::session::resume::ResumeMetrics;

/// The attached connection, as the loop uses it (its `stopped` is kept apart, awaited).
pub(super) struct Attached {
    pub(super) out: mpsc::Sender<Out>,
    kicked: CancellationToken,
    heard: Arc<AtomicU64>,
}

/// What woke the session's loop.
enum Step {
    Nothing,
    End((u16, &'static str)),
    Event(u64, Event),
    Attach(Attach),
    Detached,
    Expired,
    Send(mpsc::OwnedPermit<Out>),
    Read(io::Result<usize>),
    Heartbeat,
}

/// The replay buffer: backend bytes from offset `base` on, in DATA messages as sent.
struct Replay {
    chunks: VecDeque<Bytes>,
    /// Offset of the first payload byte of `chunks[0]`.
    base: u64,
    /// Offset after the last byte read from the backend.
    read: u64,
    /// What the client acknowledged (cumulative).
    acked: u64,
    /// Chunks already handed to the attached connection's writer.
    sent: usize,
}

impl Replay {
    fn held(&self) -> usize {
        (self.read - self.base) as usize
    }

    /// Forget what the client has received up to `offset` (within `acked..=read`).
    fn release(&mut self, offset: u64) {
        self.acked = self.acked.max(offset);
        while let Some(front) = self.chunks.front() {
            let len = (front.len() - 1) as u64;
            if self.base + len > self.acked {
                break;
            }
            self.base += len;
            self.chunks.pop_front();
            self.sent = self.sent.saturating_sub(1);
        }
    }

    /// Start sending again from `offset`: the first chunk is cut to begin there.
    fn rewind_to(&mut self, offset: u64) {
        self.release(offset);
        self.sent = 0;
        if let Some(front) = self.chunks.front_mut() {
            let skip = (offset - self.base) as usize;
            if skip > 0 {
                *front = protocol::data(&front[1 + skip..]);
                self.base = offset;
            }
        }
    }
}

/// The session's loop state: the replay buffer, the attached connection, what it owes it.
pub(super) struct Session<'a> {
    settings: &'a ResumeSettings,
    metrics: &'a ResumeMetrics,
    feeds: &'a Feeds,
    heartbeat_ms: u32,
    grace_ms: u32,
    token: [u8; TOKEN_BYTES],
    replay: Replay,
    pub(super) attached: Option<Attached>,
    /// The attached connection's reader has stopped (kept apart: it is awaited).
    stopped: Option<oneshot::Receiver<()>>,
    attach_no: u64,
    resumes: u64,
    bytes_to_client: u64,
    backend_done: bool,
    ack_due: bool,
    acked_sent: u64,
    pong_due: Option<u64>,
    grace_until: Option<Instant>,
    pings: u64,
    /// A connection silent for this long (milliseconds) is dead.
    silent_limit: u64,
}

impl<'a> Session<'a> {
    pub(super) fn new(
        settings: &'a ResumeSettings,
        metrics: &'a ResumeMetrics,
        feeds: &'a Feeds,
        first: Link,
    ) -> Self {
        let Link {
            out,
            kicked,
            stopped,
            heard,
        } = first;
        Session {
            settings,
            metrics,
            feeds,
            heartbeat_ms: settings.heartbeat.as_millis().min(u32::MAX as u128) as u32,
            grace_ms: settings.grace.as_millis().min(u32::MAX as u128) as u32,
            token: new_token(),
            replay: Replay {
                chunks: VecDeque::new(),
                base: 0,
                read: 0,
                acked: 0,
                sent: 0,
            },
            attached: Some(Attached { out, kicked, heard }),
            stopped: Some(stopped),
            attach_no: 0,
            resumes: 0,
            bytes_to_client: 0,
            backend_done: false,
            ack_due: false,
            acked_sent: 0,
            pong_due: None,
            grace_until: None,
            pings: 0,
            silent_limit: settings.heartbeat.as_millis() as u64 * 3,
        }
    }

    /// A WELCOME with the current token, reporting `accepted` client bytes.
    pub(super) fn welcome(&self, accepted: u64) -> Bytes {
        protocol::welcome(accepted, self.heartbeat_ms, self.grace_ms, &self.token)
    }

    /// The loop: until the session ends; then the attached connection is told. Returns the
    /// close code and reason, the bytes sent to clients and the resumes.
    pub(super) async fn pump<R: AsyncRead + Unpin>(
        mut self,
        mut inputs: Inputs<R>,
        stop: impl std::future::Future<Output = (u16, &'static str)>,
    ) -> (u16, &'static str, u64, u64) {
        tokio::pin!(stop);
        let mut chunk = BytesMut::new();
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (code, reason) = loop {
            if self.backend_done && self.replay.acked == self.replay.read && self.attached.is_some()
            {
                break (1000, "backend closed");
            }
            let room = self
                .settings
                .window_bytes
                .saturating_sub(self.replay.held());
            let can_read = !self.backend_done && room > 0;
            if can_read && chunk.is_empty() {
                let want = room.min(self.settings.read_bytes).min(MAX_DATA_BYTES);
                chunk.reserve(1 + want);
                chunk.put_u8(protocol::DATA);
            }
            let read_limit = room.min(self.settings.read_bytes).min(MAX_DATA_BYTES);
            let written_now = *inputs.written.borrow();
            let wants_send = self.attached.is_some()
                && (self.pong_due.is_some()
                    || written_now > self.acked_sent
                    || self.ack_due
                    || self.replay.sent < self.replay.chunks.len());
            let out_for_send = match (&self.attached, wants_send) {
                (Some(link), true) => Some(link.out.clone()),
                _ => None,
            };
            let grace_until = self.grace_until.filter(|_| self.attached.is_none());
            let stopped = &mut self.stopped;
            let mut limited = (&mut chunk).limit(read_limit);
            let step = tokio::select! {
                biased;
                end = &mut stop => Step::End(end),
                _ = inputs.write_failed.cancelled() => Step::End((1011, "backend write failed")),
                Some((n, event)) = inputs.events.recv() => Step::Event(n, event),
                Some(attach) = inputs.attaches.recv() => Step::Attach(attach),
                _ = async { stopped.as_mut().expect("guarded").await }, if stopped.is_some() => Step::Detached,
                _ = async { sleep_until(grace_until.expect("guarded")).await }, if grace_until.is_some() => Step::Expired,
                _ = inputs.written.changed() => Step::Nothing,
                permit = async { out_for_send.expect("guarded").reserve_owned().await }, if wants_send => match permit {
                    Ok(permit) => Step::Send(permit),
                    Err(_) => Step::Nothing,
                },
                read = inputs.backend_read.read_buf(&mut limited), if can_read => Step::Read(read),
                _ = heartbeat.tick() => Step::Heartbeat,
            };
            let end = match step {
                Step::Nothing => None,
                Step::End(end) => Some(end),
                Step::Event(n, event) => self.on_event(n, event),
                Step::Attach(attach) => {
                    self.on_attach(attach).await;
                    None
                }
                Step::Detached => {
                    self.attached = None;
                    self.stopped = None;
                    self.detached();
                    None
                }
                Step::Expired => {
                    self.metrics.expired();
                    Some((1001, "no client came back within the grace period"))
                }
                Step::Send(permit) => {
                    self.send(permit, written_now);
                    None
                }
                Step::Read(read) => self.on_read(read, &mut chunk),
                Step::Heartbeat => {
                    self.heartbeat();
                    None
                }
            };
            if let Some(end) = end {
                break end;
            }
        };
        self.say_end(code, reason).await;
        (code, reason, self.bytes_to_client, self.resumes)
    }

    /// A message from a client connection's reader; `Some` ends the session.
    fn on_event(&mut self, n: u64, event: Event) -> Option<(u16, &'static str)> {
        if n != self.attach_no || self.attached.is_none() {
            return None;
        }
        match event {
            Event::Ack(offset) => {
                if offset > self.replay.read {
                    return Some((close::PROTOCOL, "acknowledged bytes never sent"));
                }
                self.replay.release(offset);
                None
            }
            Event::Ping(nonce) => {
                self.pong_due = Some(nonce);
                None
            }
            Event::End => Some((1000, "client ended the session")),
            Event::Violation(reason) => Some((close::PROTOCOL, reason)),
        }
    }

    /// A connection asks to resume: check its token and offset, replace the attached one,
    /// replay from its offset with a new token.
    async fn on_attach(&mut self, attach: Attach) {
        let valid_token: bool = attach.token.ct_eq(&self.token).into();
        if !valid_token {
            self.metrics.refused("bad_token");
            let _ = attach.reply.send(Err(close::UNKNOWN_SESSION));
            return;
        }
        if attach.received < self.replay.acked || attach.received > self.replay.read {
            self.metrics.refused("offset_out_of_range");
            let _ = attach.reply.send(Err(close::OFFSET_OUT_OF_RANGE));
            return;
        }
        if let Some(old) = self.attached.take() {
            self.metrics.replaced();
            let _ = old.out.try_send(Out::Close(
                close::REPLACED,
                "replaced by a newer connection",
            ));
            old.kicked.cancel();
            // Its reader stops at the kick; only then is `accepted` final.
            if let Some(old_stopped) = self.stopped.take() {
                let _ = tokio::time::timeout(self.settings.close_grace, old_stopped).await;
            }
        } else {
            self.metrics.reattached();
        }
        self.grace_until = None;
        self.metrics.replayed(self.replay.read - attach.received);
        self.replay.rewind_to(attach.received);
        self.token = new_token();
        let welcome = self.welcome(self.feeds.accepted.load(Ordering::Acquire));
        let Link {
            out,
            kicked,
            stopped: link_stopped,
            heard,
        } = attach.link;
        heard.store(
            self.feeds.started.elapsed().as_millis() as u64,
            Ordering::Relaxed,
        );
        let _ = out.try_send(Out::Message(welcome));
        self.attach_no += 1;
        if attach
            .reply
            .send(Ok(self.feeds.feed(self.attach_no)))
            .is_ok()
        {
            self.resumes += 1;
            self.metrics.resumed();
            self.attached = Some(Attached { out, kicked, heard });
            self.stopped = Some(link_stopped);
            self.ack_due = true;
            self.pong_due = None;
        } else {
            self.detached();
        }
    }

    /// No connection attached: the grace period starts.
    fn detached(&mut self) {
        self.metrics.detached();
        self.grace_until = Some(Instant::now() + self.settings.grace);
    }

    /// Room in the attached connection's queue: a pong, an ACK, or the next replay chunk.
    fn send(&mut self, permit: mpsc::OwnedPermit<Out>, written_now: u64) {
        if let Some(nonce) = self.pong_due.take() {
            permit.send(Out::Message(protocol::numbered(protocol::PONG, nonce)));
        } else if written_now > self.acked_sent || self.ack_due {
            self.acked_sent = written_now;
            self.ack_due = false;
            permit.send(Out::Message(protocol::numbered(protocol::ACK, written_now)));
        } else {
            let message = self.replay.chunks[self.replay.sent].clone();
            self.replay.sent += 1;
            self.bytes_to_client += (message.len() - 1) as u64;
            permit.send(Out::Message(message));
        }
    }

    /// A backend read into `chunk`: a DATA message for the replay buffer, or the backend's
    /// end; `Some` ends the session.
    fn on_read(
        &mut self,
        read: io::Result<usize>,
        chunk: &mut BytesMut,
    ) -> Option<(u16, &'static str)> {
        match read {
            Ok(0) => {
                self.backend_done = true;
                chunk.clear();
                None
            }
            Ok(n) => {
                self.replay.read += n as u64;
                self.replay.chunks.push_back(chunk.split().freeze());
                None
            }
            Err(_) => Some((1011, "backend read failed")),
        }
    }

    /// Ping the attached connection, or drop it when it has been silent too long.
    fn heartbeat(&mut self) {
        if let Some(link) = &self.attached {
            let heard = link.heard.load(Ordering::Relaxed);
            let now = self.feeds.started.elapsed().as_millis() as u64;
            if now.saturating_sub(heard) > self.silent_limit {
                link.kicked.cancel();
            } else {
                self.pings += 1;
                let ping = protocol::numbered(protocol::PING, self.pings);
                let _ = link.out.try_send(Out::Message(ping));
            }
        }
    }

    /// The end: say so to the attached connection (END, then Close), so its client does
    /// not try to resume a session that is gone.
    async fn say_end(&mut self, code: u16, reason: &'static str) {
        if let Some(link) = self.attached.take() {
            let send = async {
                link.out.send(Out::Message(protocol::end())).await.ok()?;
                link.out.send(Out::Close(code, reason)).await.ok()
            };
            let _ = tokio::time::timeout(self.settings.close_grace, send).await;
            link.kicked.cancel();
        } else {
            self.metrics.reattached();
        }
    }
}

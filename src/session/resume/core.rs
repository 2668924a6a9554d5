//! A resumable session's backend side, which outlives its client connections: the backend
//! socket, the replay buffer of backend→client bytes not yet acknowledged, both directions'
//! offsets, the token, and the grace period while no client connection is attached.
//!
//! One loop owns all of it. A client connection joins by sending an [`Attach`]; its reader
//! feeds client bytes to the backend writer directly (so a slow backend pushes back on the
//! client's TCP) and its control messages to the loop; its writer drains what the loop sends.
//! The backend writer is its own future, so a backend that does not read cannot stop the
//! loop from reading it, acknowledging, or taking a resume.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::protocol::{self, close, TOKEN_BYTES};
use super::ResumeMetrics;

/// How a resumable session runs (the route's `[route.resume]` and session settings).
#[derive(Debug, Clone)]
pub struct ResumeSettings {
    /// How long a session waits for a client connection to come back.
    pub grace: Duration,
    /// Most unacknowledged backend→client bytes held; reading the backend stops at it.
    pub window_bytes: usize,
    /// Heartbeat interval; a connection silent for three of them is dead.
    pub heartbeat: Duration,
    /// Most backend bytes read at once.
    pub read_bytes: usize,
    /// A backend write without progress for this long ends the session (1011).
    pub backend_stall: Duration,
    /// How long an ending session waits to hand its END and Close to the client.
    pub close_grace: Duration,
    /// The gateway-wide bounds (`[resume]`), compiled into every resumable route.
    pub limits: super::ResumeLimits,
}

/// What a client connection's writer sends.
#[derive(Debug)]
pub enum Out {
    /// A protocol message (binary WebSocket message).
    Message(Bytes),
    /// A WebSocket Pong answering the client's Ping.
    Pong(Bytes),
    /// A Close frame; the writer ends after it.
    Close(u16, &'static str),
}

/// What a client connection's reader reports to the session, tagged with its attach number.
#[derive(Debug)]
pub enum Event {
    Ack(u64),
    Ping(u64),
    End,
    Violation(&'static str),
}

/// What the session keeps of its attached client connection.
pub struct Link {
    pub out: mpsc::Sender<Out>,
    /// Cancelled to stop the connection (replaced, dead, or the session ended).
    pub kicked: CancellationToken,
    /// Resolves once the connection's reader has stopped feeding the backend.
    pub stopped: oneshot::Receiver<()>,
    /// When the client was last heard from, in milliseconds since the session started.
    pub heard: Arc<AtomicU64>,
}

/// What a client connection's reader feeds once attached.
#[derive(Clone)]
pub struct Feed {
    pub attach: u64,
    pub to_backend: mpsc::Sender<Bytes>,
    /// Client bytes accepted for the backend (the offset a WELCOME reports).
    pub accepted: Arc<AtomicU64>,
    pub events: mpsc::Sender<(u64, Event)>,
    pub started: Instant,
}

/// A client connection asking to resume the session.
pub struct Attach {
    pub received: u64,
    pub token: [u8; TOKEN_BYTES],
    pub link: Link,
    /// The feed, or the close code refusing the resume.
    pub reply: oneshot::Sender<Result<Feed, u16>>,
}

/// How a resumable session ended.
#[derive(Debug)]
pub struct Outcome {
    pub code: u16,
    pub reason: &'static str,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub resumes: u64,
}

/// Client→backend bytes queued at most, in messages (each at most one client message).
const TO_BACKEND_MESSAGES: usize = 8;
/// Messages queued for a client connection's writer.
pub const OUT_MESSAGES: usize = 8;
/// Most backend bytes in one DATA message.
const MAX_DATA_BYTES: usize = 64 * 1024;

/// The backend side of one resumable session.
pub struct Core<R, W> {
    pub backend_read: R,
    pub backend_write: W,
    pub settings: ResumeSettings,
    pub metrics: ResumeMetrics,
}

fn new_token() -> [u8; TOKEN_BYTES] {
    let mut token = [0u8; TOKEN_BYTES];
    // The system's random source failing is not recoverable; an all-zero token would be
    // guessable, so refuse to run on.
    SystemRandom::new()
        .fill(&mut token)
        .expect("the system random source works");
    token
}

/// The attached connection, as the loop uses it (its `stopped` is kept apart, awaited).
struct Attached {
    out: mpsc::Sender<Out>,
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

impl<R, W> Core<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Run the session with its first client connection attached (its HELLO said it had
    /// received nothing); returns the first connection's feed through `first_feed`.
    pub async fn run(
        self,
        first: Link,
        first_feed: oneshot::Sender<Feed>,
        mut attaches: mpsc::Receiver<Attach>,
        stop: impl std::future::Future<Output = (u16, &'static str)>,
    ) -> Outcome {
        let Self {
            mut backend_read,
            backend_write,
            settings,
            metrics,
        } = self;
        tokio::pin!(stop);
        let started = Instant::now();
        let (to_backend, to_backend_rx) = mpsc::channel::<Bytes>(TO_BACKEND_MESSAGES);
        let (events_tx, mut events) = mpsc::channel::<(u64, Event)>(OUT_MESSAGES);
        let (written_tx, mut written) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let write_failed = CancellationToken::new();
        let finish = CancellationToken::new();
        let writer = write_backend(
            backend_write,
            to_backend_rx,
            written_tx,
            settings.backend_stall,
            finish.clone(),
            write_failed.clone(),
        );
        let feed = |attach: u64| Feed {
            attach,
            to_backend: to_backend.clone(),
            accepted: accepted.clone(),
            events: events_tx.clone(),
            started,
        };
        let heartbeat_ms = settings.heartbeat.as_millis().min(u32::MAX as u128) as u32;
        let grace_ms = settings.grace.as_millis().min(u32::MAX as u128) as u32;
        let mut token = new_token();
        let _ = first.out.try_send(Out::Message(protocol::welcome(
            0,
            heartbeat_ms,
            grace_ms,
            &token,
        )));
        let _ = first_feed.send(feed(0));

        let pump = async {
            let mut replay = Replay {
                chunks: VecDeque::new(),
                base: 0,
                read: 0,
                acked: 0,
                sent: 0,
            };
            let Link {
                out,
                kicked,
                stopped: first_stopped,
                heard,
            } = first;
            let mut attached = Some(Attached { out, kicked, heard });
            let mut stopped = Some(first_stopped);
            let mut attach_no = 0u64;
            let mut resumes = 0u64;
            let mut bytes_to_client = 0u64;
            let mut backend_done = false;
            let mut ack_due = false;
            let mut acked_sent = 0u64;
            let mut pong_due: Option<u64> = None;
            let mut grace_until: Option<Instant> = None;
            let mut chunk = BytesMut::new();
            let mut heartbeat = tokio::time::interval(settings.heartbeat);
            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut pings = 0u64;
            let silent_limit = settings.heartbeat.as_millis() as u64 * 3;

            let (code, reason) = loop {
                if backend_done && replay.acked == replay.read && attached.is_some() {
                    break (1000, "backend closed");
                }
                let room = settings.window_bytes.saturating_sub(replay.held());
                let can_read = !backend_done && room > 0;
                if can_read && chunk.is_empty() {
                    let want = room.min(settings.read_bytes).min(MAX_DATA_BYTES);
                    chunk.reserve(1 + want);
                    chunk.put_u8(protocol::DATA);
                }
                let read_limit = room.min(settings.read_bytes).min(MAX_DATA_BYTES);
                let written_now = *written.borrow();
                let wants_send = attached.is_some()
                    && (pong_due.is_some()
                        || written_now > acked_sent
                        || ack_due
                        || replay.sent < replay.chunks.len());
                let out_for_send = match (&attached, wants_send) {
                    (Some(link), true) => Some(link.out.clone()),
                    _ => None,
                };
                let mut limited = (&mut chunk).limit(read_limit);
                let step = tokio::select! {
                    biased;
                    end = &mut stop => Step::End(end),
                    _ = write_failed.cancelled() => Step::End((1011, "backend write failed")),
                    Some((n, event)) = events.recv() => Step::Event(n, event),
                    Some(attach) = attaches.recv() => Step::Attach(attach),
                    _ = async { stopped.as_mut().expect("guarded").await }, if stopped.is_some() => Step::Detached,
                    _ = async { sleep_until(grace_until.expect("guarded")).await }, if grace_until.is_some() && attached.is_none() => Step::Expired,
                    _ = written.changed() => Step::Nothing,
                    permit = async { out_for_send.expect("guarded").reserve_owned().await }, if wants_send => match permit {
                        Ok(permit) => Step::Send(permit),
                        Err(_) => Step::Nothing,
                    },
                    read = backend_read.read_buf(&mut limited), if can_read => Step::Read(read),
                    _ = heartbeat.tick() => Step::Heartbeat,
                };
                match step {
                    Step::Nothing => {}
                    Step::End(end) => break end,
                    Step::Event(n, event) => {
                        if n != attach_no || attached.is_none() {
                            continue;
                        }
                        match event {
                            Event::Ack(offset) => {
                                if offset > replay.read {
                                    break (close::PROTOCOL, "acknowledged bytes never sent");
                                }
                                replay.release(offset);
                            }
                            Event::Ping(nonce) => pong_due = Some(nonce),
                            Event::End => break (1000, "client ended the session"),
                            Event::Violation(reason) => break (close::PROTOCOL, reason),
                        }
                    }
                    Step::Attach(attach) => {
                        let valid_token: bool = attach.token.ct_eq(&token).into();
                        if !valid_token {
                            metrics.refused("bad_token");
                            let _ = attach.reply.send(Err(close::UNKNOWN_SESSION));
                            continue;
                        }
                        if attach.received < replay.acked || attach.received > replay.read {
                            metrics.refused("offset_out_of_range");
                            let _ = attach.reply.send(Err(close::OFFSET_OUT_OF_RANGE));
                            continue;
                        }
                        if let Some(old) = attached.take() {
                            metrics.replaced();
                            let _ = old.out.try_send(Out::Close(
                                close::REPLACED,
                                "replaced by a newer connection",
                            ));
                            old.kicked.cancel();
                            // Its reader stops at the kick; only then is `accepted` final.
                            if let Some(old_stopped) = stopped.take() {
                                let _ =
                                    tokio::time::timeout(settings.close_grace, old_stopped).await;
                            }
                        } else {
                            metrics.reattached();
                        }
                        grace_until = None;
                        metrics.replayed(replay.read - attach.received);
                        replay.rewind_to(attach.received);
                        token = new_token();
                        let welcome = protocol::welcome(
                            accepted.load(Ordering::Acquire),
                            heartbeat_ms,
                            grace_ms,
                            &token,
                        );
                        let Link {
                            out,
                            kicked,
                            stopped: link_stopped,
                            heard,
                        } = attach.link;
                        heard.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                        let _ = out.try_send(Out::Message(welcome));
                        attach_no += 1;
                        if attach.reply.send(Ok(feed(attach_no))).is_ok() {
                            resumes += 1;
                            metrics.resumed();
                            attached = Some(Attached { out, kicked, heard });
                            stopped = Some(link_stopped);
                            ack_due = true;
                            pong_due = None;
                        } else {
                            metrics.detached();
                            grace_until = Some(Instant::now() + settings.grace);
                        }
                    }
                    Step::Detached => {
                        attached = None;
                        stopped = None;
                        metrics.detached();
                        grace_until = Some(Instant::now() + settings.grace);
                    }
                    Step::Expired => {
                        metrics.expired();
                        break (1001, "no client came back within the grace period");
                    }
                    Step::Send(permit) => {
                        if let Some(nonce) = pong_due.take() {
                            permit.send(Out::Message(protocol::numbered(protocol::PONG, nonce)));
                        } else if written_now > acked_sent || ack_due {
                            acked_sent = written_now;
                            ack_due = false;
                            permit
                                .send(Out::Message(protocol::numbered(protocol::ACK, written_now)));
                        } else {
                            let message = replay.chunks[replay.sent].clone();
                            replay.sent += 1;
                            bytes_to_client += (message.len() - 1) as u64;
                            permit.send(Out::Message(message));
                        }
                    }
                    Step::Read(read) => match read {
                        Ok(0) => {
                            backend_done = true;
                            chunk.clear();
                        }
                        Ok(n) => {
                            replay.read += n as u64;
                            replay.chunks.push_back(chunk.split().freeze());
                        }
                        Err(_) => break (1011, "backend read failed"),
                    },
                    Step::Heartbeat => {
                        if let Some(link) = &attached {
                            let heard = link.heard.load(Ordering::Relaxed);
                            let now = started.elapsed().as_millis() as u64;
                            if now.saturating_sub(heard) > silent_limit {
                                link.kicked.cancel();
                            } else {
                                pings += 1;
                                let ping = protocol::numbered(protocol::PING, pings);
                                let _ = link.out.try_send(Out::Message(ping));
                            }
                        }
                    }
                }
            };
            // The end: say so to the attached connection (END, then Close), so its client
            // does not try to resume a session that is gone.
            if let Some(link) = attached.take() {
                let send = async {
                    link.out.send(Out::Message(protocol::end())).await.ok()?;
                    link.out.send(Out::Close(code, reason)).await.ok()
                };
                let _ = tokio::time::timeout(settings.close_grace, send).await;
                link.kicked.cancel();
            } else {
                metrics.reattached();
            }
            (code, reason, bytes_to_client, resumes)
        };
        let ((code, reason, bytes_to_client, resumes), ()) = tokio::join!(
            async {
                let ended = pump.await;
                finish.cancel();
                ended
            },
            writer
        );
        let bytes_to_backend = *written.borrow();
        Outcome {
            code,
            reason,
            bytes_to_backend,
            bytes_to_client,
            resumes,
        }
    }
}

/// Write client bytes to the backend as the attached connections feed them; `written` counts
/// what reached the backend socket (what the client is acknowledged). On `finish`, write
/// what was already accepted, then shut the backend's write side.
async fn write_backend<W: AsyncWrite + Unpin>(
    mut backend: W,
    mut from_client: mpsc::Receiver<Bytes>,
    written: watch::Sender<u64>,
    stall: Duration,
    finish: CancellationToken,
    failed: CancellationToken,
) {
    let mut write = async |mut bytes: Bytes| -> io::Result<()> {
        let len = bytes.len() as u64;
        while bytes.has_remaining() {
            let n = tokio::time::timeout(stall, backend.write_buf(&mut bytes))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "backend write stalled"))??;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        backend.flush().await?;
        written.send_modify(|w| *w += len);
        Ok(())
    };
    loop {
        let next = tokio::select! {
            biased;
            next = from_client.recv() => next,
            _ = finish.cancelled() => break,
        };
        let Some(bytes) = next else { break };
        if write(bytes).await.is_err() {
            failed.cancel();
            return;
        }
    }
    while let Ok(bytes) = from_client.try_recv() {
        if write(bytes).await.is_err() {
            failed.cancel();
            return;
        }
    }
    let _ = tokio::time::timeout(stall, backend.shutdown()).await;
}

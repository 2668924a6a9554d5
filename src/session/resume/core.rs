//! A resumable session's backend side, which outlives its client connections: the backend
//! socket, the replay buffer of backend→client bytes not yet acknowledged, both directions'
//! offsets, the token, and the grace period while no client connection is attached.
//!
//! One loop owns all of it. A client connection joins by sending an [`Attach`]; its reader
//! feeds client bytes to the backend writer directly (so a slow backend pushes back on the
//! client's TCP) and its control messages to the loop; its writer drains what the loop sends.
//! The backend writer is its own future, so a backend that does not read cannot stop the
//! loop from reading it, acknowledging, or taking a resume. This file holds what crosses
//! the loop's edge (settings, messages, the feed a connection gets) and starts it; the loop's
//! own state and steps are in `core/session.rs`.

mod session;

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::protocol::TOKEN_BYTES;
use super::ResumeMetrics;
use session::Session;

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
        attaches: mpsc::Receiver<Attach>,
        stop: impl std::future::Future<Output = (u16, &'static str)>,
    ) -> Outcome {
        let Self {
            backend_read,
            backend_write,
            settings,
            metrics,
        } = self;
        let (to_backend, to_backend_rx) = mpsc::channel::<Bytes>(TO_BACKEND_MESSAGES);
        let (events_tx, events) = mpsc::channel::<(u64, Event)>(OUT_MESSAGES);
        let (written_tx, written) = watch::channel(0u64);
        let feeds = Feeds {
            to_backend,
            accepted: Arc::new(AtomicU64::new(0)),
            events: events_tx,
            started: Instant::now(),
        };
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
        let session = Session::new(&settings, &metrics, &feeds, first);
        if let Some(link) = &session.attached {
            let _ = link.out.try_send(Out::Message(session.welcome(0)));
        }
        let _ = first_feed.send(feeds.feed(0));
        let inputs = Inputs {
            backend_read,
            events,
            attaches,
            written: written.clone(),
            write_failed,
        };
        let ((code, reason, bytes_to_client, resumes), ()) = tokio::join!(
            async {
                let ended = session.pump(inputs, stop).await;
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

/// What hands a client connection its [`Feed`] on attaching.
struct Feeds {
    to_backend: mpsc::Sender<Bytes>,
    accepted: Arc<AtomicU64>,
    events: mpsc::Sender<(u64, Event)>,
    started: Instant,
}

impl Feeds {
    fn feed(&self, attach: u64) -> Feed {
        Feed {
            attach,
            to_backend: self.to_backend.clone(),
            accepted: self.accepted.clone(),
            events: self.events.clone(),
            started: self.started,
        }
    }
}

/// What the session's loop waits on besides its own state.
struct Inputs<R> {
    backend_read: R,
    events: mpsc::Receiver<(u64, Event)>,
    attaches: mpsc::Receiver<Attach>,
    /// Client bytes that reached the backend socket.
    written: watch::Receiver<u64>,
    write_failed: CancellationToken,
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

//! One operator watching one live session: the admin listener's read-only WebSocket
//! (`GET /api/sessions/{id}/watch`) that carries the session's backend→client bytes — the
//! backlog first on terminal routes — and never anything the other way.
//!
//! The watcher's frames are read in a task of their own (the frame reader is not
//! cancel-safe): pings are answered, a Close is echoed, and a data message closes the watch
//! with 1008, as the session is not the watcher's to write to. Writes to the watcher race the
//! session letting go of it, so a watcher that stops reading is dropped (1013, counted)
//! without the session waiting on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, Role};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use metrics::gauge;
use tokio::io::{ReadHalf, WriteHalf};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::logsafe::Escaped;
use crate::metrics::WATCHERS_ACTIVE;
use crate::record::watch::{Next, Watcher};
use crate::session::registry::SessionEntry;
use crate::ws::close_code;
use crate::ws::frames::close_payload_code;
use crate::ws::reader::{FrameBudget, FrameReader, ReadError};
use crate::ws::writer::FrameWriter;

/// Largest frame a watcher may send (it has nothing to send but control frames).
const WATCHER_MAX_FRAME_BYTES: usize = 4096;
/// How long a watch's closing frame may take to write before the connection is dropped.
pub const WATCH_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Who watches, for the log: the admin connection's address, the credential it showed
/// (`bearer`, `cookie`, or `none` without `[admin] bearer_sha256`), its `User-Agent`.
#[derive(Debug, Clone)]
pub struct Who {
    pub peer: SocketAddr,
    pub credential: &'static str,
    pub user_agent: Option<String>,
}

/// What the watcher's reader saw.
enum FromWatcher {
    Ping(Vec<u8>),
    Close(Vec<u8>),
    /// A text or binary frame: the watcher tried to send to the session.
    Data,
    Violation(u16, &'static str),
    Gone,
}

/// How a watch ended.
struct Ending {
    code: u16,
    reason: &'static str,
}

type Io = TokioIo<Upgraded>;

/// `wsgate_watchers_active` of the session's route, up for as long as a watch runs.
struct Active(metrics::Gauge);

impl Active {
    fn open(route: &str) -> Self {
        let gauge = gauge!(WATCHERS_ACTIVE, "route" => route.to_owned());
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Run one watch from its `101` to its end, logged at both ends with who watched.
pub async fn serve(
    entry: Arc<SessionEntry>,
    watcher: Watcher,
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    who: Who,
    stop: CancellationToken,
) {
    let _active = Active::open(&entry.info.route);
    info!(
        session = entry.id,
        route = &*entry.info.route,
        watcher = %who.peer,
        credential = who.credential,
        user_agent = who.user_agent.as_deref().map(|u| Escaped(u).to_string()),
        backlog_bytes = watcher.backlog.len(),
        "watch started"
    );
    let (ending, sent) = tokio::select! {
        upgraded = upgrade => match upgraded {
            Ok(ws) => pump(ws.into_inner(), &watcher, &stop).await,
            Err(_) => (Ending { code: close_code::ABNORMAL, reason: "upgrade failed" }, 0),
        },
        () = stop.cancelled() => (Ending { code: close_code::GOING_AWAY, reason: "gateway shutting down" }, 0),
    };
    entry.watch.leave(watcher.id);
    info!(
        session = entry.id,
        route = &*entry.info.route,
        watcher = %who.peer,
        bytes_sent = sent,
        code = ending.code,
        reason = ending.reason,
        "watch ended"
    );
}

/// The backlog, then the session's output, until the session, the watcher or the gateway ends.
async fn pump(io: Io, watcher: &Watcher, stop: &CancellationToken) -> (Ending, u64) {
    let (read, write) = tokio::io::split(io);
    let (tx, rx) = flume::bounded(4);
    let reader = tokio::spawn(read_watcher(read, tx));
    let mut out = FrameWriter::new(write, Role::Server);
    let mut sent = 0u64;
    let ending = 'watch: {
        if !watcher.backlog.is_empty() {
            if !send(&mut out, &watcher.backlog, watcher).await {
                break 'watch dropped_or_lost(watcher);
            }
            sent += watcher.backlog.len() as u64;
        }
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    close(&mut out, close_code::GOING_AWAY, "gateway shutting down").await;
                    break 'watch Ending { code: close_code::GOING_AWAY, reason: "gateway shutting down" };
                }
                event = rx.recv_async() => match event {
                    Ok(FromWatcher::Ping(payload)) => {
                        let pong = Frame::pong(Payload::Owned(payload));
                        if out.write_frame(pong, false).await.is_err() || out.flush().await.is_err() {
                            break 'watch lost();
                        }
                    }
                    Ok(FromWatcher::Close(payload)) => {
                        let code = close_payload_code(&payload);
                        let echo = Frame::close_raw(Payload::Owned(payload));
                        let _ = tokio::time::timeout(WATCH_CLOSE_TIMEOUT, async {
                            out.write_frame(echo, false).await?;
                            out.flush().await
                        })
                        .await;
                        break 'watch Ending { code, reason: "the watcher closed" };
                    }
                    Ok(FromWatcher::Data) => {
                        close(&mut out, close_code::POLICY_VIOLATION, READ_ONLY).await;
                        break 'watch Ending { code: close_code::POLICY_VIOLATION, reason: READ_ONLY };
                    }
                    Ok(FromWatcher::Violation(code, reason)) => {
                        close(&mut out, code, reason).await;
                        break 'watch Ending { code, reason };
                    }
                    Ok(FromWatcher::Gone) | Err(_) => break 'watch lost(),
                },
                next = watcher.next() => match next {
                    Next::Data(chunk) => {
                        if !send(&mut out, &chunk, watcher).await {
                            break 'watch dropped_or_lost(watcher);
                        }
                        sent += chunk.len() as u64;
                    }
                    Next::Ended => {
                        close(&mut out, close_code::NORMAL, SESSION_ENDED).await;
                        break 'watch Ending { code: close_code::NORMAL, reason: SESSION_ENDED };
                    }
                    Next::TooSlow => break 'watch too_slow(&mut out).await,
                },
            }
        }
    };
    reader.abort();
    let _ = reader.await;
    (ending, sent)
}

const READ_ONLY: &str = "a watch is read-only";
const SESSION_ENDED: &str = "the session ended";
const TOO_SLOW: &str = "watcher fell behind the session";

fn lost() -> Ending {
    Ending {
        code: close_code::ABNORMAL,
        reason: "watcher connection lost",
    }
}

/// A write did not finish: the session let go of the watcher mid-write (its Close cannot
/// follow half a frame), or the connection failed.
fn dropped_or_lost(watcher: &Watcher) -> Ending {
    if watcher.too_slow() {
        Ending {
            code: close_code::TRY_AGAIN_LATER,
            reason: TOO_SLOW,
        }
    } else {
        lost()
    }
}

async fn too_slow(out: &mut FrameWriter<WriteHalf<Io>>) -> Ending {
    close(out, close_code::TRY_AGAIN_LATER, TOO_SLOW).await;
    Ending {
        code: close_code::TRY_AGAIN_LATER,
        reason: TOO_SLOW,
    }
}

/// One binary message to the watcher; false when the write failed or the session let go of
/// the watcher while it waited.
async fn send(out: &mut FrameWriter<WriteHalf<Io>>, data: &[u8], watcher: &Watcher) -> bool {
    let frame = Frame::new(true, OpCode::Binary, None, Payload::Borrowed(data));
    tokio::select! {
        r = async {
            out.write_frame(frame, false).await?;
            out.flush().await
        } => r.is_ok(),
        () = watcher.cut() => false,
    }
}

/// Our Close, best effort and bounded in time; then the write side is shut.
async fn close(out: &mut FrameWriter<WriteHalf<Io>>, code: u16, reason: &str) {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    let _ = tokio::time::timeout(WATCH_CLOSE_TIMEOUT, async {
        out.write_frame(Frame::close_raw(Payload::Owned(payload)), false)
            .await?;
        out.flush().await
    })
    .await;
}

/// The watcher's frames, in their own loop (`read_frame` is not cancel-safe).
async fn read_watcher(read: ReadHalf<Io>, tx: flume::Sender<FromWatcher>) {
    let mut frames = FrameReader::new(
        read,
        Role::Server,
        WATCHER_MAX_FRAME_BYTES,
        FrameBudget::unlimited(),
    );
    loop {
        let event = match frames.read_frame().await {
            Ok(frame) => match frame.opcode {
                OpCode::Ping => FromWatcher::Ping(frame.payload.to_vec()),
                OpCode::Pong => continue,
                OpCode::Close => FromWatcher::Close(frame.payload.to_vec()),
                OpCode::Text | OpCode::Binary | OpCode::Continuation => FromWatcher::Data,
            },
            Err(ReadError::Violation((code, reason))) => FromWatcher::Violation(code, reason),
            Err(ReadError::Gone(_) | ReadError::OverBudget) => FromWatcher::Gone,
        };
        let last = !matches!(event, FromWatcher::Ping(_));
        if tx.send_async(event).await.is_err() || last {
            return;
        }
    }
}

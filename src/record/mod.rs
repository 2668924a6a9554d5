//! Session recording: a route with `[route.record]` gets each session's bytes written to a
//! file (asciicast v2 for terminals, wsgate's raw format for anything), with metadata beside
//! it, without ever slowing the session down unless the route requires the recording.
//!
//! The session side holds a [`Recorder`] and one [`Tap`] per recorded direction; a tap copies
//! the bytes into a bounded queue and returns (policy `best_effort`: when the queue is full the
//! bytes are dropped and a gap is marked; `required`: the session waits for room and ends when
//! the recording fails). One writer task per recording encodes and writes in batches on the
//! blocking pool, hashes the file, and on close renames it, writes the metadata and runs the
//! retention sweep. Replay of both formats is in [`replay`], their export for noVNC's playback
//! page in [`websockify`]; live watchers of a session's output (with or without a recording)
//! are fed by [`watch`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use metrics::counter;
use tokio::task::JoinHandle;

use crate::config::{RecordConfig, RecordFormat, RecordPolicy};
use crate::metrics::{RECORDING_DROPPED_BYTES_TOTAL, RECORDING_FAILURES_TOTAL};

pub mod asciicast;
pub mod files;
pub mod raw;
pub mod replay;
mod sweep;
pub mod watch;
pub mod websockify;
mod writer;

/// A route's recording settings, compiled once per config (shared by its sessions).
#[derive(Debug)]
pub struct RecordSettings {
    pub route: Arc<str>,
    pub dir: PathBuf,
    pub format: RecordFormat,
    pub input: bool,
    pub policy: RecordPolicy,
    pub queue_chunks: usize,
    /// `None`: no cap.
    pub max_session_bytes: Option<u64>,
    pub max_session_duration: Option<Duration>,
    pub max_total_bytes: Option<u64>,
    pub max_age: Option<Duration>,
    pub min_free_bytes: u64,
    pub width: u16,
    pub height: u16,
    /// One retention sweep at a time per route.
    sweeping: AtomicBool,
}

impl RecordSettings {
    pub fn new(route: Arc<str>, c: &RecordConfig) -> Self {
        let nonzero = |n: u64| (n > 0).then_some(n);
        Self {
            route,
            dir: c.dir.clone(),
            format: c.format,
            input: c.input,
            policy: c.policy,
            queue_chunks: c.queue_chunks,
            max_session_bytes: nonzero(c.max_session_bytes),
            max_session_duration: nonzero(c.max_session_secs).map(Duration::from_secs),
            max_total_bytes: nonzero(c.max_total_bytes),
            max_age: nonzero(c.max_age_secs).map(Duration::from_secs),
            min_free_bytes: c.min_free_bytes,
            width: c.width,
            height: c.height,
            sweeping: AtomicBool::new(false),
        }
    }
}

/// What is known of a session when its recording starts. Never a secret: `identity` is the
/// name a credential proved (JWT subject, certificate name, token name), not the credential.
#[derive(Debug, Clone)]
pub struct SessionMeta {
    pub session_id: u64,
    pub backend: String,
    pub client: SocketAddr,
    pub identity: Option<String>,
    pub user_agent: Option<String>,
    pub subprotocol: Option<String>,
}

/// How the session ended, for the metadata.
#[derive(Debug, Clone, Default)]
pub struct Ending {
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub close_code: u16,
    /// `client`, `backend` or `gateway`.
    pub closed_by: &'static str,
}

/// A recording could not be created, or failed while the route requires it.
#[derive(Debug, thiserror::Error)]
#[error("session recording failed: {0}")]
pub struct RecordFailed(pub String);

/// Which way recorded bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToBackend,
    BackendToClient,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Self::ClientToBackend => "client_to_backend",
            Self::BackendToClient => "backend_to_client",
        }
    }
}

/// What the taps queue for the writer.
enum Chunk {
    Data {
        direction: Direction,
        at: Duration,
        bytes: Bytes,
        /// Bytes of this direction dropped since its last queued chunk: a gap goes first.
        dropped_before: u64,
    },
    Marker {
        at: Duration,
        text: String,
    },
    End(Box<Ending>),
}

/// What the session side and the writer share.
struct Shared {
    started: Instant,
    /// Every byte given to the taps, recorded or not.
    offered: AtomicU64,
    /// Bytes given to the taps until the recording stopped (what the caps count).
    recorded: AtomicU64,
    dropped: AtomicU64,
    /// Past a cap, or the writer is gone: the taps record nothing more.
    stopped: AtomicBool,
    truncated: AtomicBool,
    /// The writer failed (or could not keep the file).
    failed: AtomicBool,
}

/// One session's recording: make its taps, then [`Recorder::finish`] it when the session ends.
pub struct Recorder {
    settings: Arc<RecordSettings>,
    shared: Arc<Shared>,
    tx: flume::Sender<Chunk>,
    writer: JoinHandle<()>,
}

impl Recorder {
    /// Create the session's recording file and start its writer: [`Recorder::prepare`] and
    /// [`Pending::start`] at once.
    pub async fn start(
        settings: &Arc<RecordSettings>,
        meta: SessionMeta,
    ) -> Result<Option<Recorder>, RecordFailed> {
        Ok(Self::prepare(settings).await?.map(|p| p.start(meta)))
    }

    /// Create a session's recording file, before the session is accepted (it has no id yet).
    /// A file that cannot be created is an error under `required` (refuse the session) and
    /// `Ok(None)` under `best_effort` (logged and counted; the session goes on unrecorded).
    pub async fn prepare(settings: &Arc<RecordSettings>) -> Result<Option<Pending>, RecordFailed> {
        let started = Instant::now();
        let wall = SystemTime::now();
        let opened = {
            let settings = settings.clone();
            tokio::task::spawn_blocking(move || writer::open(&settings, wall)).await
        };
        match opened {
            Ok(Ok(file)) => Ok(Some(Pending {
                identity: None,
                user_agent: None,
                settings: settings.clone(),
                file: Some(file),
                started,
                wall,
            })),
            Ok(Err(e)) => Self::not_created(settings, e.to_string()),
            Err(e) => Self::not_created(settings, e.to_string()),
        }
    }

    fn not_created<T>(settings: &RecordSettings, error: String) -> Result<Option<T>, RecordFailed> {
        counter!(RECORDING_FAILURES_TOTAL, "route" => settings.route.to_string(), "stage" => "create")
            .increment(1);
        tracing::warn!(
            route = &*settings.route,
            dir = %settings.dir.display(),
            error,
            "session recording could not be created"
        );
        match settings.policy {
            RecordPolicy::Required => Err(RecordFailed(error)),
            RecordPolicy::BestEffort => Ok(None),
        }
    }

    /// The tap for client→backend bytes: `None` unless the route records input.
    pub fn input_tap(&self) -> Option<Tap> {
        self.settings
            .input
            .then(|| self.tap(Direction::ClientToBackend))
    }

    /// The tap for backend→client bytes.
    pub fn output_tap(&self) -> Tap {
        self.tap(Direction::BackendToClient)
    }

    fn tap(&self, direction: Direction) -> Tap {
        Tap {
            direction,
            settings: self.settings.clone(),
            shared: self.shared.clone(),
            tx: self.tx.clone(),
            dropped_pending: 0,
        }
    }

    /// Both taps, boxed for a pump to hold (an unrecorded session's pump holds two `None`s).
    pub fn taps(&self) -> Taps {
        Taps {
            input: self.input_tap().map(Box::new),
            output: Some(Box::new(self.output_tap())),
        }
    }

    /// The session ended: queue its ending (waiting for room), and wait until the file is
    /// closed, renamed and its metadata written.
    pub async fn finish(self, ending: Ending) {
        let _ = self.tx.send_async(Chunk::End(Box::new(ending))).await;
        drop(self.tx);
        let _ = self.writer.await;
    }

    /// Whether the recording failed (the writer could not write).
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }
}

/// A recording whose file exists, waiting for its session's id.
pub struct Pending {
    /// What the edge knew of the client, for [`SessionMeta`]: the name its credential
    /// proved (never the credential) and its `User-Agent`.
    pub identity: Option<String>,
    pub user_agent: Option<String>,
    settings: Arc<RecordSettings>,
    /// Taken by `start`; a pending recording dropped unstarted removes its file.
    file: Option<files::PartFile>,
    started: Instant,
    wall: SystemTime,
}

impl Pending {
    /// The session was accepted: start the writer.
    pub fn start(mut self, meta: SessionMeta) -> Recorder {
        let file = self.file.take().expect("a pending recording starts once");
        let shared = Arc::new(Shared {
            started: self.started,
            offered: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            truncated: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        });
        let settings = self.settings.clone();
        let (tx, rx) = flume::bounded(settings.queue_chunks);
        let writer = tokio::spawn(writer::run(
            settings.clone(),
            shared.clone(),
            meta,
            self.wall,
            file,
            rx,
        ));
        Recorder {
            settings,
            shared,
            tx,
            writer,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // The session never started (its upgrade failed): no empty recording is left.
        if let Some(f) = self.file.take() {
            let _ = std::fs::remove_file(&f.name.part);
            let _ = std::fs::remove_file(&f.name.metadata_part);
        }
    }
}

/// A session's taps as its pump holds them: `None` where that direction is not recorded.
#[derive(Default)]
pub struct Taps {
    /// Client→backend bytes (`input = true`).
    pub input: Option<Box<Tap>>,
    /// Backend→client bytes.
    pub output: Option<Box<Tap>>,
}

/// One direction's entry into a recording, held by the pump that moves those bytes.
pub struct Tap {
    direction: Direction,
    settings: Arc<RecordSettings>,
    shared: Arc<Shared>,
    tx: flume::Sender<Chunk>,
    dropped_pending: u64,
}

impl Tap {
    /// Record `data` as having passed now. Under `best_effort` this never waits; under
    /// `required` it waits for room in the queue and fails when the recording has failed
    /// (the session must then end).
    pub async fn record(&mut self, data: &[u8]) -> Result<(), RecordFailed> {
        if data.is_empty() {
            return Ok(());
        }
        self.shared
            .offered
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.shared.stopped.load(Ordering::Relaxed) {
            return self.after_stop(data.len() as u64);
        }
        let at = self.shared.started.elapsed();
        let len = data.len() as u64;
        let total = self.shared.recorded.fetch_add(len, Ordering::Relaxed) + len;
        let over_bytes = self.settings.max_session_bytes.is_some_and(|m| total > m);
        let over_time = self.settings.max_session_duration.is_some_and(|m| at > m);
        if over_bytes || over_time {
            self.dropped("cap", len);
            if !self.shared.stopped.swap(true, Ordering::Relaxed) {
                self.shared.truncated.store(true, Ordering::Relaxed);
                let text = format!(
                    "recording stopped: the session passed max_session_{} ({})",
                    if over_bytes { "bytes" } else { "secs" },
                    if over_bytes {
                        format!("{} bytes", self.settings.max_session_bytes.unwrap_or(0))
                    } else {
                        format!(
                            "{} s",
                            self.settings
                                .max_session_duration
                                .unwrap_or_default()
                                .as_secs()
                        )
                    }
                );
                let marker = Chunk::Marker { at, text };
                match self.settings.policy {
                    RecordPolicy::BestEffort => {
                        let _ = self.tx.try_send(marker);
                    }
                    RecordPolicy::Required => {
                        let _ = self.tx.send_async(marker).await;
                    }
                }
            }
            return Ok(());
        }
        let chunk = Chunk::Data {
            direction: self.direction,
            at,
            bytes: Bytes::copy_from_slice(data),
            dropped_before: self.dropped_pending,
        };
        match self.settings.policy {
            RecordPolicy::BestEffort => match self.tx.try_send(chunk) {
                Ok(()) => self.dropped_pending = 0,
                Err(flume::TrySendError::Full(_)) => {
                    self.dropped_pending += len;
                    self.dropped("queue_full", len);
                }
                Err(flume::TrySendError::Disconnected(_)) => {
                    self.shared.stopped.store(true, Ordering::Relaxed);
                    self.dropped("write_error", len);
                }
            },
            RecordPolicy::Required => {
                if self.tx.send_async(chunk).await.is_err() {
                    self.shared.stopped.store(true, Ordering::Relaxed);
                    self.dropped("write_error", len);
                    return Err(RecordFailed("the recording's writer stopped".into()));
                }
            }
        }
        Ok(())
    }

    fn after_stop(&self, len: u64) -> Result<(), RecordFailed> {
        if self.shared.failed.load(Ordering::Relaxed) {
            self.dropped("write_error", len);
            return match self.settings.policy {
                RecordPolicy::Required => {
                    Err(RecordFailed("the recording could not be written".into()))
                }
                RecordPolicy::BestEffort => Ok(()),
            };
        }
        let cause = if self.shared.truncated.load(Ordering::Relaxed) {
            "cap"
        } else {
            "write_error"
        };
        self.dropped(cause, len);
        Ok(())
    }

    fn dropped(&self, cause: &'static str, len: u64) {
        self.shared.dropped.fetch_add(len, Ordering::Relaxed);
        counter!(
            RECORDING_DROPPED_BYTES_TOTAL,
            "route" => self.settings.route.to_string(),
            "cause" => cause
        )
        .increment(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn meta(id: u64) -> SessionMeta {
        SessionMeta {
            session_id: id,
            backend: "tcp://127.0.0.1:22".into(),
            client: "127.0.0.1:5555".parse().unwrap(),
            identity: Some("alice".into()),
            user_agent: Some("test".into()),
            subprotocol: None,
        }
    }

    fn settings(dir: &Path, f: impl FnOnce(&mut RecordConfig)) -> Arc<RecordSettings> {
        let mut c = RecordConfig::new(dir);
        f(&mut c);
        Arc::new(RecordSettings::new("term".into(), &c))
    }

    /// Every finished recording under `dir`, with its metadata.
    fn recordings(dir: &Path) -> Vec<(PathBuf, serde_json::Value)> {
        let mut out = Vec::new();
        for date in std::fs::read_dir(dir).unwrap() {
            for route in std::fs::read_dir(date.unwrap().path()).unwrap() {
                for f in std::fs::read_dir(route.unwrap().path()).unwrap() {
                    let p = f.unwrap().path();
                    if p.extension().is_some_and(|e| e == "cast" || e == "wsrec") {
                        let m = std::fs::read(files::metadata_path(&p)).unwrap();
                        out.push((p, serde_json::from_slice(&m).unwrap()));
                    }
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn asciicast_keeps_split_characters_and_writes_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), |c| c.format = RecordFormat::Asciicast);
        let rec = Recorder::start(&s, meta(3)).await.unwrap().unwrap();
        assert!(rec.input_tap().is_none(), "input is off by default");
        let mut out = rec.output_tap();
        let text = "prompt € 𝄞 $ ";
        let (a, b) = text.as_bytes().split_at(10); // inside the 4-byte clef
        out.record(a).await.unwrap();
        out.record(b).await.unwrap();
        drop(out);
        rec.finish(Ending {
            bytes_to_client: text.len() as u64,
            close_code: 1000,
            closed_by: "client",
            ..Ending::default()
        })
        .await;
        let found = recordings(dir.path());
        assert_eq!(found.len(), 1);
        let (path, m) = &found[0];
        let body = std::fs::read_to_string(path).unwrap();
        let played: String = body
            .lines()
            .skip(1)
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v[1] == "o")
            .map(|v| v[2].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(played, text);
        assert_eq!(m["session_id"], 3);
        assert_eq!(m["identity"], "alice");
        assert_eq!(m["close_code"], 1000);
        assert_eq!(m["truncated"], false);
        let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(m["sha256"], hex);
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn past_the_byte_cap_a_marker_and_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), |c| c.max_session_bytes = 10);
        let rec = Recorder::start(&s, meta(4)).await.unwrap().unwrap();
        let mut out = rec.output_tap();
        out.record(b"12345678").await.unwrap();
        out.record(b"abcdefgh").await.unwrap();
        out.record(b"more").await.unwrap();
        drop(out);
        rec.finish(Ending::default()).await;
        let (path, m) = recordings(dir.path()).remove(0);
        let mut r = raw::Reader::open(std::io::BufReader::new(File::open(path).unwrap())).unwrap();
        let first = r.next_record().unwrap().unwrap();
        assert_eq!(first.payload, b"12345678");
        let marker = r.next_record().unwrap().unwrap();
        assert_eq!(marker.kind, raw::Kind::Marker);
        assert!(r.next_record().unwrap().is_none());
        assert_eq!(m["truncated"], true);
        assert_eq!(m["dropped_bytes"], 12);
        assert_eq!(m["recorded_bytes"], 8);
    }

    /// Regression: `recorded_bytes` was the bytes tapped before the stop less every dropped
    /// byte, so each chunk after a cap was taken off without having been added (down to 0).
    #[tokio::test]
    async fn chunks_after_a_cap_made_recorded_bytes_undercount() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), |c| c.max_session_bytes = 10);
        let rec = Recorder::start(&s, meta(8)).await.unwrap().unwrap();
        let mut out = rec.output_tap();
        out.record(b"12345678").await.unwrap();
        for _ in 0..5 {
            out.record(b"abcdefgh").await.unwrap();
        }
        drop(out);
        rec.finish(Ending::default()).await;
        let (_, m) = recordings(dir.path()).remove(0);
        assert_eq!(m["recorded_bytes"], 8, "{m}");
        assert_eq!(m["dropped_bytes"], 40, "{m}");
    }

    #[tokio::test]
    async fn best_effort_drops_and_marks_a_gap_when_the_queue_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), |c| c.queue_chunks = 1);
        let rec = Recorder::start(&s, meta(5)).await.unwrap().unwrap();
        let mut out = rec.output_tap();
        // The writer task cannot run in between (no await point yields to it on this
        // single-threaded test runtime): the second and third chunks find the queue full.
        for chunk in [&b"one"[..], b"two", b"three"] {
            out.record(chunk).await.unwrap();
        }
        tokio::task::yield_now().await;
        drop(out);
        rec.finish(Ending::default()).await;
        let (path, m) = recordings(dir.path()).remove(0);
        assert_eq!(m["dropped_bytes"], 8);
        assert!(m["gaps"].as_u64().unwrap() >= 1);
        let mut r = raw::Reader::open(std::io::BufReader::new(File::open(path).unwrap())).unwrap();
        let mut kinds = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            kinds.push(rec.kind);
        }
        assert_eq!(kinds, [raw::Kind::BackendToClient, raw::Kind::Marker]);
    }

    #[tokio::test]
    async fn an_unwritable_folder_refuses_a_required_session_and_not_a_best_effort_one() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"not a folder").unwrap();
        let required = settings(&blocker, |c| c.policy = RecordPolicy::Required);
        assert!(Recorder::start(&required, meta(6)).await.is_err());
        let best = settings(&blocker, |_| {});
        assert!(Recorder::start(&best, meta(7)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_quota_deletes_the_oldest_recordings() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), |c| c.max_total_bytes = 1500);
        for id in 0..4 {
            let rec = Recorder::start(&s, meta(id)).await.unwrap().unwrap();
            let mut out = rec.output_tap();
            out.record(&[b'x'; 400]).await.unwrap();
            drop(out);
            rec.finish(Ending::default()).await;
            // Distinct modification times, oldest first.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = recordings(dir.path());
        let ids: Vec<u64> = left
            .iter()
            .map(|(_, m)| m["session_id"].as_u64().unwrap())
            .collect();
        assert!(!ids.is_empty() && ids.len() < 4, "{ids:?}");
        assert!(ids.contains(&3), "the newest stays: {ids:?}");
        assert!(!ids.contains(&0), "the oldest goes: {ids:?}");
    }
}

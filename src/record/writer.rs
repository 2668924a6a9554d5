//! One recording's writer task: takes chunks from the session's bounded queue in batches,
//! encodes them (asciicast or raw), writes them on the blocking pool, hashes what it wrote,
//! and on the session's end renames the `.part`, writes the metadata and sweeps.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use metrics::{counter, gauge};
use ring::digest;

use super::asciicast::{self, Utf8Stream};
use super::files::{self, PartFile};
use super::raw::{self, Kind};
use super::{sweep, Chunk, Direction, Ending, RecordSettings, SessionMeta, Shared};
use crate::config::RecordFormat;
use crate::metrics::{
    RECORDINGS_ACTIVE, RECORDING_BYTES_WRITTEN_TOTAL, RECORDING_FAILURES_TOTAL,
    RECORDING_GAPS_TOTAL,
};

/// Most chunks encoded into one write.
const BATCH_CHUNKS: usize = 64;

/// Create the `.part` file for a session (blocking).
pub(super) fn open(settings: &RecordSettings, now: SystemTime) -> std::io::Result<PartFile> {
    let ext = match settings.format {
        RecordFormat::Asciicast => "cast",
        RecordFormat::Raw => "wsrec",
    };
    files::check_free_space(&settings.dir, settings.min_free_bytes)?;
    files::create(&settings.dir, &settings.route, ext, now)
}

/// The file and what is known about what went into it; moved to the blocking pool and back.
struct Sink {
    out: BufWriter<File>,
    sha256: digest::Context,
    written: u64,
}

impl Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.out.write_all(buf)?;
        self.sha256.update(buf);
        self.written += buf.len() as u64;
        Ok(())
    }
}

/// Turns chunks into the format's bytes.
struct Encoder {
    format: RecordFormat,
    output_text: Utf8Stream,
    input_text: Utf8Stream,
    /// Times never go backwards in the file, though the two directions queue independently.
    last_at: Duration,
    gaps: u64,
    gap_bytes_marked: u64,
    route: String,
}

impl Encoder {
    fn marker(&mut self, at: Duration, text: &str, out: &mut Vec<u8>) {
        let at = self.at(at);
        match self.format {
            RecordFormat::Asciicast => asciicast::event(at, "m", text, out),
            RecordFormat::Raw => raw::record(Kind::Marker, at, text.as_bytes(), out),
        }
    }

    fn at(&mut self, at: Duration) -> Duration {
        self.last_at = self.last_at.max(at);
        self.last_at
    }

    fn gap(&mut self, at: Duration, direction: Direction, bytes: u64, out: &mut Vec<u8>) {
        self.gaps += 1;
        self.gap_bytes_marked += bytes;
        counter!(RECORDING_GAPS_TOTAL, "route" => self.route.clone(), "cause" => "queue_full")
            .increment(1);
        let text = format!(
            "gap: {bytes} bytes {} not recorded (the recorder fell behind)",
            direction.label()
        );
        self.marker(at, &text, out);
    }

    fn data(&mut self, direction: Direction, at: Duration, bytes: &[u8], out: &mut Vec<u8>) {
        let at = self.at(at);
        match self.format {
            RecordFormat::Raw => {
                let kind = match direction {
                    Direction::ClientToBackend => Kind::ClientToBackend,
                    Direction::BackendToClient => Kind::BackendToClient,
                };
                raw::record(kind, at, bytes, out);
            }
            RecordFormat::Asciicast => {
                let (decoder, code) = match direction {
                    Direction::ClientToBackend => (&mut self.input_text, "i"),
                    Direction::BackendToClient => (&mut self.output_text, "o"),
                };
                let mut text = String::new();
                decoder.push(bytes, &mut text);
                if !text.is_empty() {
                    asciicast::event(at, code, &text, out);
                }
            }
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        let at = self.last_at;
        let mut text = String::new();
        self.output_text.finish(&mut text);
        if !text.is_empty() && self.format == RecordFormat::Asciicast {
            asciicast::event(at, "o", &text, out);
        }
        text.clear();
        self.input_text.finish(&mut text);
        if !text.is_empty() && self.format == RecordFormat::Asciicast {
            asciicast::event(at, "i", &text, out);
        }
    }
}

/// Write on the blocking pool; the sink comes back with the result.
/// `None`: the blocking task itself died (a panic), and the file with it.
async fn write(mut sink: Sink, buf: Vec<u8>) -> Option<(Sink, std::io::Result<()>)> {
    tokio::task::spawn_blocking(move || {
        let r = sink.write(&buf);
        (sink, r)
    })
    .await
    .ok()
}

/// Run one recording until the session's end (or the queue closes).
pub(super) async fn run(
    settings: Arc<RecordSettings>,
    shared: Arc<Shared>,
    meta: SessionMeta,
    wall_start: SystemTime,
    file: PartFile,
    rx: flume::Receiver<Chunk>,
) {
    let route = settings.route.to_string();
    let active = gauge!(RECORDINGS_ACTIVE, "route" => route.clone());
    active.increment(1.0);
    let written_total = counter!(RECORDING_BYTES_WRITTEN_TOTAL, "route" => route.clone());
    let PartFile { file, name } = file;
    let mut sink = Sink {
        out: BufWriter::with_capacity(64 * 1024, file),
        sha256: digest::Context::new(&digest::SHA256),
        written: 0,
    };
    let mut encoder = Encoder {
        format: settings.format,
        output_text: Utf8Stream::default(),
        input_text: Utf8Stream::default(),
        last_at: Duration::ZERO,
        gaps: 0,
        gap_bytes_marked: 0,
        route: route.clone(),
    };
    let title = format!("wsgate {} session {}", settings.route, meta.session_id);
    let header = match settings.format {
        RecordFormat::Asciicast => {
            let mut h = asciicast::header(
                settings.width,
                settings.height,
                files::unix_ms(wall_start) / 1000,
                &title,
            )
            .into_bytes();
            h.push(b'\n');
            h
        }
        RecordFormat::Raw => raw::header(&start_metadata(&settings, &meta, wall_start)),
    };
    let mut failure: Option<String> = None;
    let mut ending: Option<Ending> = None;
    let mut buf = header;
    let mut batch = Vec::with_capacity(BATCH_CHUNKS);
    'run: loop {
        let first = match rx.recv_async().await {
            Ok(c) => c,
            Err(_) => break,
        };
        batch.push(first);
        while batch.len() < BATCH_CHUNKS {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut end_now = false;
        for chunk in batch.drain(..) {
            match chunk {
                Chunk::Data {
                    direction,
                    at,
                    bytes,
                    dropped_before,
                } => {
                    if dropped_before > 0 {
                        encoder.gap(at, direction, dropped_before, &mut buf);
                    }
                    encoder.data(direction, at, &bytes, &mut buf);
                }
                Chunk::Marker { at, text } => {
                    counter!(RECORDING_GAPS_TOTAL, "route" => route.clone(), "cause" => "cap")
                        .increment(1);
                    encoder.marker(at, &text, &mut buf);
                }
                Chunk::End(e) => {
                    ending = Some(*e);
                    end_now = true;
                    break;
                }
            }
        }
        batch.clear();
        if end_now {
            let dropped = shared.dropped.load(Ordering::Relaxed);
            let unmarked = dropped.saturating_sub(encoder.gap_bytes_marked);
            if unmarked > 0 && !shared.truncated.load(Ordering::Relaxed) {
                let at = shared.started.elapsed();
                encoder.gap(at, Direction::BackendToClient, unmarked, &mut buf);
            }
            encoder.end(&mut buf);
        }
        if !buf.is_empty() {
            let out = std::mem::replace(&mut buf, Vec::with_capacity(16 * 1024));
            let len = out.len() as u64;
            let Some((s, r)) = write(sink, out).await else {
                shared.failed.store(true, Ordering::Relaxed);
                shared.stopped.store(true, Ordering::Relaxed);
                active.decrement(1.0);
                return;
            };
            sink = s;
            if let Err(e) = r {
                failure = Some(e.to_string());
                break 'run;
            }
            written_total.increment(len);
        }
        if end_now {
            break;
        }
    }
    if failure.is_some() {
        shared.failed.store(true, Ordering::Relaxed);
        shared.stopped.store(true, Ordering::Relaxed);
        // The taps see a closed queue from now on.
        drop(rx);
        counter!(RECORDING_FAILURES_TOTAL, "route" => route.clone(), "stage" => "write")
            .increment(1);
    }
    let ended = SystemTime::now();
    let part = name.clone();
    let session_id = meta.session_id;
    let finished = tokio::task::spawn_blocking(move || {
        let mut sink = sink;
        let flushed = sink
            .out
            .flush()
            .and_then(|()| sink.out.get_ref().sync_all());
        if let (Err(e), None) = (&flushed, &failure) {
            failure = Some(e.to_string());
        }
        let digest = sink.sha256.finish();
        let sha256: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        drop(sink.out);
        let published = files::publish(&part, session_id);
        (sink.written, sha256, failure, published)
    })
    .await;
    let Ok((file_bytes, sha256, failure, published)) = finished else {
        active.decrement(1.0);
        return;
    };
    if let Some(error) = &failure {
        tracing::warn!(
            route = &*settings.route,
            session_id = meta.session_id,
            error,
            "session recording failed; the file is kept as far as it was written"
        );
    }
    let final_path = match published {
        Ok(path) => path,
        Err(e) => {
            tracing::warn!(
                route = &*settings.route,
                session_id = meta.session_id,
                error = %e,
                file = %name.part.display(),
                "session recording could not be renamed; kept as .part"
            );
            name.part
        }
    };
    let mut metadata = start_metadata(&settings, &meta, wall_start);
    let ending = ending.unwrap_or_default();
    if let Some(m) = metadata.as_object_mut() {
        let extra = serde_json::json!({
            "file": final_path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "end": files::rfc3339(ended),
            "end_unix_ms": files::unix_ms(ended),
            "duration_secs": shared.started.elapsed().as_secs_f64(),
            "bytes_to_backend": ending.bytes_to_backend,
            "bytes_to_client": ending.bytes_to_client,
            "close_code": ending.close_code,
            "closed_by": ending.closed_by,
            "recorded_bytes": shared.recorded.load(Ordering::Relaxed)
                .saturating_sub(shared.dropped.load(Ordering::Relaxed)),
            "dropped_bytes": shared.dropped.load(Ordering::Relaxed),
            "gaps": encoder.gaps,
            "truncated": shared.truncated.load(Ordering::Relaxed) || failure.is_some(),
            "error": failure,
            "file_bytes": file_bytes,
            "sha256": sha256,
        });
        if let Some(extra) = extra.as_object() {
            m.extend(extra.clone());
        }
    }
    let meta_path = final_path.clone();
    let sweep_settings = settings.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = files::write_metadata(&meta_path, &metadata) {
            tracing::warn!(file = %meta_path.display(), error = %e, "recording metadata not written");
        }
        sweep::run(&sweep_settings, SystemTime::now());
    })
    .await;
    active.decrement(1.0);
}

/// What the metadata says from the session's start (the raw format's header line, and the
/// first half of the metadata file).
fn start_metadata(
    settings: &RecordSettings,
    meta: &SessionMeta,
    wall_start: SystemTime,
) -> serde_json::Value {
    serde_json::json!({
        "format": match settings.format {
            RecordFormat::Asciicast => "asciicast",
            RecordFormat::Raw => "raw",
        },
        "session_id": meta.session_id,
        "route": &*settings.route,
        "backend": meta.backend,
        "client": meta.client.to_string(),
        "identity": meta.identity,
        "user_agent": meta.user_agent,
        "subprotocol": meta.subprotocol,
        "input_recorded": settings.input,
        "start": files::rfc3339(wall_start),
        "start_unix_ms": files::unix_ms(wall_start),
    })
}

//! One recording's writer task: takes chunks from the session's bounded queue in batches,
//! encodes them (asciicast or raw), writes them on the blocking pool, hashes what it wrote,
//! and on the session's end renames the `.part`, writes the metadata and sweeps.

use std::fs::File;
use std::io::Write;
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
    RECORDINGS_ACTIVE, RECORDING_BYTES_WRITTEN_TOTAL, RECORDING_DROPPED_BYTES_TOTAL,
    RECORDING_FAILURES_TOTAL, RECORDING_GAPS_TOTAL,
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
/// Each batch is one write straight to the file (no buffer in between), so `written` is
/// what the file holds.
struct Sink {
    out: File,
    sha256: digest::Context,
    written: u64,
}

impl Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Err(e) = self.out.write_all(buf) {
            // The batch that did not fit is taken back whole: the file ends where a record
            // ends, and what the write took of a full disk is free again.
            let _ = self.out.set_len(self.written);
            return Err(e);
        }
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
    let PartFile {
        file,
        name,
        metadata: metadata_file,
    } = file;
    let sink = Sink {
        out: file,
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
    let header = file_header(&settings, &meta, wall_start);
    let written = write_chunks(sink, &mut encoder, header, &rx, &shared, &route).await;
    let Some(Written {
        sink,
        failure,
        ending,
        payload,
    }) = written
    else {
        // The blocking task died, and the file with it.
        shared.failed.store(true, Ordering::Relaxed);
        shared.stopped.store(true, Ordering::Relaxed);
        active.decrement(1.0);
        return;
    };
    drop(rx);
    if failure.is_some() {
        counter!(RECORDING_FAILURES_TOTAL, "route" => route.clone(), "stage" => "write")
            .increment(1);
    }
    let ended = SystemTime::now();
    let Some((closed, published)) = close_file(sink, failure, name.clone(), meta.session_id).await
    else {
        active.decrement(1.0);
        return;
    };
    if let Some(error) = &closed.failure {
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
    let ends = Ends {
        final_path: &final_path,
        ended,
        ending: ending.unwrap_or_default(),
        gaps: encoder.gaps,
        payload,
        closed,
    };
    let metadata = end_metadata(&settings, &meta, wall_start, &shared, ends);
    let meta_path = final_path.clone();
    let sweep_settings = settings.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let written =
            files::write_metadata(&meta_path, &metadata, metadata_file, &name.metadata_part);
        if let Err(e) = written {
            tracing::warn!(file = %meta_path.display(), error = %e, "recording metadata not written");
        }
        sweep::run(&sweep_settings, SystemTime::now());
    })
    .await;
    active.decrement(1.0);
}

/// The file's first line(s): an asciicast header, or the raw format's metadata line.
fn file_header(settings: &RecordSettings, meta: &SessionMeta, wall_start: SystemTime) -> Vec<u8> {
    match settings.format {
        RecordFormat::Asciicast => {
            let title = format!("wsgate {} session {}", settings.route, meta.session_id);
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
        RecordFormat::Raw => raw::header(&start_metadata(settings, meta, wall_start)),
    }
}

/// What [`write_chunks`] leaves.
struct Written {
    sink: Sink,
    /// Why writing stopped before the end.
    failure: Option<String>,
    /// How the session ended (`None`: its recorder went without saying).
    ending: Option<Ending>,
    /// Session bytes in the file.
    payload: u64,
}

/// Encode and write chunks in batches until the session's end (or the queue closes). When a
/// write fails the recording stops (the taps record nothing more) and what is still queued
/// is counted as dropped, until the session's end, which the metadata waits for. `None`:
/// the blocking task died.
async fn write_chunks(
    mut sink: Sink,
    encoder: &mut Encoder,
    header: Vec<u8>,
    rx: &flume::Receiver<Chunk>,
    shared: &Shared,
    route: &str,
) -> Option<Written> {
    let written_total = counter!(RECORDING_BYTES_WRITTEN_TOTAL, "route" => route.to_owned());
    let mut ending: Option<Ending> = None;
    let mut payload = 0u64;
    let mut buf = header;
    let mut batch = Vec::with_capacity(BATCH_CHUNKS);
    loop {
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
        let (end_now, batch_payload) =
            encode_batch(&mut batch, encoder, &mut buf, route, &mut ending);
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
            let (s, r) = write(sink, out).await?;
            sink = s;
            if let Err(e) = r {
                shared.failed.store(true, Ordering::Relaxed);
                shared.stopped.store(true, Ordering::Relaxed);
                let mut lost = batch_payload;
                if !end_now {
                    ending = until_the_end(rx, &mut lost).await;
                }
                counter!(RECORDING_DROPPED_BYTES_TOTAL, "route" => route.to_owned(), "cause" => "write_error")
                    .increment(lost);
                return Some(Written {
                    sink,
                    failure: Some(e.to_string()),
                    ending,
                    payload,
                });
            }
            written_total.increment(len);
        }
        payload += batch_payload;
        if end_now {
            break;
        }
    }
    Some(Written {
        sink,
        failure: None,
        ending,
        payload,
    })
}

/// After a failed write: take what the taps had queued before they saw the failure (adding
/// its bytes to `lost`) until the session's end.
async fn until_the_end(rx: &flume::Receiver<Chunk>, lost: &mut u64) -> Option<Ending> {
    while let Ok(chunk) = rx.recv_async().await {
        match chunk {
            Chunk::Data { bytes, .. } => *lost += bytes.len() as u64,
            Chunk::Marker { .. } => {}
            Chunk::End(e) => return Some(*e),
        }
    }
    None
}

/// Encode one batch into `buf`, emptying it: whether it held the session's end, and the
/// session bytes it held.
fn encode_batch(
    batch: &mut Vec<Chunk>,
    encoder: &mut Encoder,
    buf: &mut Vec<u8>,
    route: &str,
    ending: &mut Option<Ending>,
) -> (bool, u64) {
    let mut end_now = false;
    let mut payload = 0u64;
    for chunk in batch.drain(..) {
        match chunk {
            Chunk::Data {
                direction,
                at,
                bytes,
                dropped_before,
            } => {
                if dropped_before > 0 {
                    encoder.gap(at, direction, dropped_before, buf);
                }
                encoder.data(direction, at, &bytes, buf);
                payload += bytes.len() as u64;
            }
            Chunk::Marker { at, text } => {
                counter!(RECORDING_GAPS_TOTAL, "route" => route.to_owned(), "cause" => "cap")
                    .increment(1);
                encoder.marker(at, &text, buf);
            }
            Chunk::End(e) => {
                *ending = Some(*e);
                end_now = true;
                break;
            }
        }
    }
    batch.clear();
    (end_now, payload)
}

/// A recording file, flushed and synced.
struct Closed {
    file_bytes: u64,
    sha256: String,
    failure: Option<String>,
}

/// Flush, sync and publish the file on the blocking pool (its final name, or why it has
/// none); `None` if that task died.
async fn close_file(
    sink: Sink,
    mut failure: Option<String>,
    part: files::PartName,
    session_id: u64,
) -> Option<(Closed, std::io::Result<std::path::PathBuf>)> {
    tokio::task::spawn_blocking(move || {
        let sink = sink;
        let flushed = sink.out.sync_all();
        if let (Err(e), None) = (&flushed, &failure) {
            failure = Some(e.to_string());
        }
        let digest = sink.sha256.finish();
        let sha256: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        drop(sink.out);
        let published = files::publish(&part, session_id);
        let closed = Closed {
            file_bytes: sink.written,
            sha256,
            failure,
        };
        (closed, published)
    })
    .await
    .ok()
}

/// How a recording ended, for its metadata file.
struct Ends<'a> {
    final_path: &'a std::path::Path,
    ended: SystemTime,
    ending: Ending,
    gaps: u64,
    /// Session bytes in the file.
    payload: u64,
    closed: Closed,
}

/// The metadata file's content: the start's fields and the end's.
fn end_metadata(
    settings: &RecordSettings,
    meta: &SessionMeta,
    wall_start: SystemTime,
    shared: &Shared,
    ends: Ends<'_>,
) -> serde_json::Value {
    let Ends {
        final_path,
        ended,
        ending,
        gaps,
        payload,
        closed,
    } = ends;
    // Every byte the taps were given is in the file or was left out: what they counted as
    // dropped, and what was queued when a write failed.
    let offered = shared.offered.load(Ordering::Relaxed);
    let mut metadata = start_metadata(settings, meta, wall_start);
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
            "recorded_bytes": payload,
            "dropped_bytes": offered.saturating_sub(payload),
            "gaps": gaps,
            "truncated": shared.truncated.load(Ordering::Relaxed) || closed.failure.is_some(),
            "error": closed.failure,
            "file_bytes": closed.file_bytes,
            "sha256": closed.sha256,
        });
        if let Some(extra) = extra.as_object() {
            m.extend(extra.clone());
        }
    }
    metadata
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

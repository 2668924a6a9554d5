//! `wsgate replay FILE`: a recording (raw or asciicast) read back — printed, or played again
//! at real or another speed as a TCP stream or as a WebSocket server that an unmodified
//! client (noVNC, a terminal page) connects to as if the session were live. What the client
//! sends is read and thrown away: a replay cannot be steered.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::raw::{self, Kind};

/// One event read back from either format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: Duration,
    pub kind: Kind,
    pub data: Vec<u8>,
}

/// A recording opened for reading, either format (told apart by its first line).
pub struct Recording {
    source: Source,
    /// Raw: the metadata line; asciicast: the header.
    pub header: serde_json::Value,
    /// Asciicast: the backend sent text (frames replayed as text messages).
    pub is_text: bool,
}

enum Source {
    Raw(raw::Reader<BufReader<File>>),
    Cast(io::Lines<BufReader<File>>),
}

impl Recording {
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut input = BufReader::new(File::open(path)?);
        let starts_raw = input.fill_buf()?.starts_with(raw::MAGIC.as_bytes());
        if starts_raw {
            let reader = raw::Reader::open(input)?;
            return Ok(Self {
                header: reader.metadata.clone(),
                source: Source::Raw(reader),
                is_text: false,
            });
        }
        let mut lines = input.lines();
        let first = lines.next().transpose()?.unwrap_or_default();
        let header: serde_json::Value = serde_json::from_str(&first).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("neither a wsgate raw recording nor asciicast: {e}"),
            )
        })?;
        if header["version"] != 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "asciicast: only version 2 is read",
            ));
        }
        Ok(Self {
            header,
            source: Source::Cast(lines),
            is_text: true,
        })
    }

    /// The next event; `None` at the end.
    pub fn next_event(&mut self) -> io::Result<Option<Event>> {
        match &mut self.source {
            Source::Raw(r) => Ok(r.next_record()?.map(|r| Event {
                at: r.at,
                kind: r.kind,
                data: r.payload,
            })),
            Source::Cast(lines) => loop {
                let Some(line) = lines.next().transpose()? else {
                    return Ok(None);
                };
                if line.trim().is_empty() {
                    continue;
                }
                let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
                let v: serde_json::Value =
                    serde_json::from_str(&line).map_err(|e| bad(&format!("event line: {e}")))?;
                let at = v[0].as_f64().ok_or_else(|| bad("event without a time"))?;
                let kind = match v[1].as_str() {
                    Some("o") => Kind::BackendToClient,
                    Some("i") => Kind::ClientToBackend,
                    Some("m") => Kind::Marker,
                    // Resize and other events: not replayed.
                    _ => continue,
                };
                let text = v[2].as_str().unwrap_or_default();
                return Ok(Some(Event {
                    at: Duration::from_secs_f64(at.max(0.0)),
                    kind,
                    data: text.as_bytes().to_vec(),
                }));
            },
        }
    }
}

/// How fast a replay goes: `speed` times real time; 0 = no waiting at all.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub speed: f64,
    /// Waits longer than this (idle stretches) are cut to it.
    pub max_wait: Duration,
}

impl Pace {
    fn wait(&self, from: Duration, to: Duration) -> Duration {
        if self.speed <= 0.0 {
            return Duration::ZERO;
        }
        to.saturating_sub(from)
            .div_f64(self.speed)
            .min(self.max_wait)
    }
}

/// Print a listing: the header, then one line per event (time, direction, size, a preview).
pub fn print_listing(path: &Path, out: &mut impl Write) -> io::Result<()> {
    let mut rec = Recording::open(path)?;
    writeln!(out, "{}", rec.header)?;
    while let Some(e) = rec.next_event()? {
        let what = match e.kind {
            Kind::ClientToBackend => "client>backend",
            Kind::BackendToClient => "backend>client",
            Kind::Marker => "marker        ",
        };
        let preview: String = e
            .data
            .iter()
            .take(48)
            .flat_map(|b| std::ascii::escape_default(*b))
            .map(char::from)
            .collect();
        writeln!(
            out,
            "{:>12.6} {what} {:>8} bytes  {preview}",
            e.at.as_secs_f64(),
            e.data.len()
        )?;
    }
    Ok(())
}

/// Write the backend→client bytes, as they were sent, one after the other (`--cat`).
pub fn cat(path: &Path, out: &mut impl Write) -> io::Result<()> {
    let mut rec = Recording::open(path)?;
    while let Some(e) = rec.next_event()? {
        if e.kind == Kind::BackendToClient {
            out.write_all(&e.data)?;
        }
    }
    out.flush()
}

/// Play the recording's backend→client bytes to every TCP client that connects, each from
/// the start; after one client with `once`.
pub async fn serve_tcp(
    listener: TcpListener,
    path: PathBuf,
    pace: Pace,
    once: bool,
) -> io::Result<()> {
    loop {
        let (mut stream, peer) = listener.accept().await?;
        let path = path.clone();
        let play = async move {
            let mut rec = Recording::open(&path)?;
            let mut last = Duration::ZERO;
            while let Some(e) = rec.next_event()? {
                if e.kind != Kind::BackendToClient {
                    continue;
                }
                tokio::time::sleep(pace.wait(last, e.at)).await;
                last = e.at;
                stream.write_all(&e.data).await?;
            }
            stream.shutdown().await
        };
        if once {
            return play.await;
        }
        tokio::spawn(async move {
            if let Err(e) = play.await {
                eprintln!("replay to {peer}: {e}");
            }
        });
    }
}

/// Play the recording to every WebSocket client that connects (any path), each from the
/// start: one message per recorded backend→client chunk (binary for raw recordings, text for
/// asciicast), then a normal close. The first subprotocol the client offers is accepted, so
/// clients that insist on one (`binary`) connect as they would to the live route.
pub async fn serve_websocket(
    listener: TcpListener,
    path: PathBuf,
    pace: Pace,
    once: bool,
) -> io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let path = path.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let done_tx = std::sync::Mutex::new(Some(done_tx));
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let path = path.clone();
            let done = done_tx.lock().ok().and_then(|mut d| d.take());
            async move { upgrade(req, path, pace, done) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        if once {
            if let Err(e) = conn.await {
                eprintln!("replay to {peer}: {e}");
            }
            let _ = done_rx.await;
            return Ok(());
        }
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("replay to {peer}: {e}");
            }
        });
    }
}

type Answer = Response<Empty<Bytes>>;

fn upgrade(
    mut req: Request<Incoming>,
    path: PathBuf,
    pace: Pace,
    done: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<Answer, WebSocketError> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        let mut answer = Response::new(Empty::new());
        *answer.status_mut() = hyper::StatusCode::UPGRADE_REQUIRED;
        return Ok(answer);
    }
    let offered = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty());
    let (mut answer, fut) = fastwebsockets::upgrade::upgrade(&mut req)?;
    if let Some(p) = offered.and_then(|p| hyper::header::HeaderValue::from_str(&p).ok()) {
        answer.headers_mut().insert("sec-websocket-protocol", p);
    }
    tokio::spawn(async move {
        if let Err(e) = play_websocket(fut, &path, pace).await {
            eprintln!("replay: {e}");
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    });
    Ok(answer)
}

async fn play_websocket(
    fut: fastwebsockets::upgrade::UpgradeFut,
    path: &Path,
    pace: Pace,
) -> Result<(), WebSocketError> {
    let ws = fut.await?;
    let (mut read, mut write) = ws.split(tokio::io::split);
    // The client's frames are read and dropped (pings are answered by the reader's own
    // obligated sends, which go nowhere here: a replay has no keepalive duty).
    let drain = tokio::spawn(async move {
        let mut ignore = |_: Frame<'_>| async { Ok::<_, WebSocketError>(()) };
        while let Ok(frame) = read.read_frame(&mut ignore).await {
            if frame.opcode == OpCode::Close {
                break;
            }
        }
    });
    let mut rec = Recording::open(path).map_err(WebSocketError::IoError)?;
    let opcode = if rec.is_text {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    let mut last = Duration::ZERO;
    while let Some(e) = rec.next_event().map_err(WebSocketError::IoError)? {
        if e.kind != Kind::BackendToClient {
            continue;
        }
        tokio::time::sleep(pace.wait(last, e.at)).await;
        last = e.at;
        write
            .write_frame(Frame::new(true, opcode, None, Payload::Owned(e.data)))
            .await?;
    }
    write
        .write_frame(Frame::close(1000, b"end of recording"))
        .await?;
    // Give the client a moment to answer the close before the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_scales_and_caps_waits() {
        let p = Pace {
            speed: 2.0,
            max_wait: Duration::from_secs(5),
        };
        assert_eq!(
            p.wait(Duration::from_secs(1), Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(
            p.wait(Duration::ZERO, Duration::from_secs(60)),
            Duration::from_secs(5)
        );
        let fast = Pace {
            speed: 0.0,
            max_wait: Duration::from_secs(5),
        };
        assert_eq!(
            fast.wait(Duration::ZERO, Duration::from_secs(9)),
            Duration::ZERO
        );
    }

    #[test]
    fn both_formats_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let cast = dir.path().join("a.cast");
        std::fs::write(
            &cast,
            "{\"version\":2,\"width\":80,\"height\":24}\n[0.5, \"o\", \"h\u{e9}\"]\n[0.6, \"m\", \"gap\"]\n[0.7, \"r\", \"90x30\"]\n",
        )
        .unwrap();
        let mut out = Vec::new();
        cat(&cast, &mut out).unwrap();
        assert_eq!(out, "h\u{e9}".as_bytes());
        let rawf = dir.path().join("a.wsrec");
        let mut bytes = raw::header(&serde_json::json!({"route": "r"}));
        raw::record(
            Kind::BackendToClient,
            Duration::ZERO,
            b"\x00\x01",
            &mut bytes,
        );
        raw::record(Kind::ClientToBackend, Duration::ZERO, b"in", &mut bytes);
        std::fs::write(&rawf, bytes).unwrap();
        let mut out = Vec::new();
        cat(&rawf, &mut out).unwrap();
        assert_eq!(out, b"\x00\x01");
        let mut listing = Vec::new();
        print_listing(&rawf, &mut listing).unwrap();
        let listing = String::from_utf8(listing).unwrap();
        assert!(listing.contains("backend>client"), "{listing}");
    }
}

//! wsgate's raw recording format, version 1 (`.wsrec`), written and read here. The spec is in
//! docs/recording.md; in short:
//!
//! ```text
//! WSGATE-REC 1\n                     magic and version, one line
//! {"session_id":…,…}\n               the session's metadata, one JSON object on one line
//! records until the end of the file, each:
//!   kind   u8        1 client→backend, 2 backend→client, 3 marker (UTF-8 text)
//!   time   u64 BE    microseconds since the session started (monotonic clock)
//!   length u32 BE    payload bytes that follow
//!   payload
//! ```

use std::io::{self, BufRead};
use std::time::Duration;

/// The first line of every raw recording.
pub const MAGIC: &str = "WSGATE-REC";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ClientToBackend = 1,
    BackendToClient = 2,
    Marker = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::ClientToBackend),
            2 => Some(Self::BackendToClient),
            3 => Some(Self::Marker),
            _ => None,
        }
    }
}

/// The first two lines (with their newlines).
pub fn header(metadata: &serde_json::Value) -> Vec<u8> {
    format!("{MAGIC} {VERSION}\n{metadata}\n").into_bytes()
}

/// One record appended to `out`.
pub fn record(kind: Kind, at: Duration, payload: &[u8], out: &mut Vec<u8>) {
    out.push(kind as u8);
    out.extend_from_slice(&(at.as_micros().min(u64::MAX as u128) as u64).to_be_bytes());
    out.extend_from_slice(&(payload.len().min(u32::MAX as usize) as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub at: Duration,
    pub payload: Vec<u8>,
}

/// A raw recording being read: its metadata, then its records in order.
pub struct Reader<R> {
    input: R,
    pub metadata: serde_json::Value,
}

/// Largest record payload a reader accepts (the writer never writes one above the gateway's
/// frame and buffer limits; this only stops a corrupt length from allocating gigabytes).
const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;

impl<R: BufRead> Reader<R> {
    /// Read and check the magic line and the metadata line.
    pub fn open(mut input: R) -> io::Result<Self> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let mut line = String::new();
        input.read_line(&mut line)?;
        let Some(version) = line.trim_end().strip_prefix(MAGIC).map(str::trim) else {
            return Err(bad(format!("not a wsgate raw recording (no {MAGIC} line)")));
        };
        if version != VERSION.to_string() {
            return Err(bad(format!(
                "raw recording version {version}; this wsgate reads version {VERSION}"
            )));
        }
        line.clear();
        input.read_line(&mut line)?;
        let metadata = serde_json::from_str(line.trim_end())
            .map_err(|e| bad(format!("the metadata line is not JSON: {e}")))?;
        Ok(Self { input, metadata })
    }

    /// The next record; `None` at the end of the file. A record cut short (a recording
    /// whose gateway died) ends the file too.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        let mut head = [0u8; 13];
        match self.input.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let kind = Kind::from_byte(head[0]).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown record kind {}", head[0]),
            )
        })?;
        let micros = u64::from_be_bytes(head[1..9].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(head[9..13].try_into().unwrap_or_default()) as usize;
        if len > MAX_RECORD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record of {len} bytes"),
            ));
        }
        let mut payload = vec![0; len];
        match self.input.read_exact(&mut payload) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        Ok(Some(Record {
            kind,
            at: Duration::from_micros(micros),
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written() {
        let meta = serde_json::json!({"session_id": 7, "route": "vnc"});
        let mut file = header(&meta);
        record(
            Kind::BackendToClient,
            Duration::from_micros(5),
            b"\x00\xffRFB",
            &mut file,
        );
        record(Kind::Marker, Duration::from_secs(2), b"gap", &mut file);
        record(
            Kind::ClientToBackend,
            Duration::from_secs(3),
            b"",
            &mut file,
        );
        let mut r = Reader::open(&file[..]).unwrap();
        assert_eq!(r.metadata, meta);
        let a = r.next_record().unwrap().unwrap();
        assert_eq!(
            (a.kind, a.at, &a.payload[..]),
            (
                Kind::BackendToClient,
                Duration::from_micros(5),
                &b"\x00\xffRFB"[..]
            )
        );
        assert_eq!(r.next_record().unwrap().unwrap().kind, Kind::Marker);
        assert_eq!(r.next_record().unwrap().unwrap().payload, b"");
        assert!(r.next_record().unwrap().is_none());
    }

    #[test]
    fn other_files_and_versions_are_refused() {
        assert!(Reader::open(&b"hello\n{}\n"[..]).is_err());
        assert!(Reader::open(&b"WSGATE-REC 2\n{}\n"[..]).is_err());
    }

    #[test]
    fn a_record_cut_short_ends_the_file() {
        let mut file = header(&serde_json::json!({}));
        record(Kind::BackendToClient, Duration::ZERO, b"abcdef", &mut file);
        file.truncate(file.len() - 2);
        let mut r = Reader::open(&file[..]).unwrap();
        assert!(r.next_record().unwrap().is_none());
    }
}

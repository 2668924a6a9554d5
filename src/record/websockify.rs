//! `wsgate replay FILE --websockify-export`: a recording (raw or asciicast) written in the form
//! websockify's `--record` writes, which noVNC's own playback page (`tests/vnc_playback.html`
//! in noVNC's source) loads as a script.
//!
//! The form, as websockify writes it today (its "binary" encoding):
//!
//! ```text
//! var VNC_frame_data = [
//! '{MILLIS{DATA',      a message the server (backend) sent, MILLIS after the session began
//! '}MILLIS}DATA',      a message the client sent
//! 'EOF'];
//! ```
//!
//! `DATA` is a JavaScript string whose character codes are the message's bytes (0–255):
//! printable ASCII as is, `\\`, `\'`, `\t`, `\n`, `\r`, anything else `\xNN`, as Python's
//! `unicode_escape` of the bytes read as Latin-1 gives. Markers are left out.

use std::io::{self, Write};
use std::path::Path;

use super::raw::Kind;
use super::replay::Recording;

/// The first line of an export.
pub const PREFIX: &str = "var VNC_frame_data = [\n";
/// The last entry and the end of the array.
pub const SUFFIX: &str = "'EOF'];\n";

/// Write `path` as websockify's record form to `out`; the number of entries written.
pub fn export(path: &Path, out: &mut impl Write) -> io::Result<u64> {
    let mut rec = Recording::open(path)?;
    out.write_all(PREFIX.as_bytes())?;
    let mut entries = 0;
    let mut line = Vec::new();
    while let Some(e) = rec.next_event()? {
        let mark = match e.kind {
            Kind::BackendToClient => b'{',
            Kind::ClientToBackend => b'}',
            Kind::Marker => continue,
        };
        line.clear();
        line.push(b'\'');
        line.push(mark);
        line.extend_from_slice(e.at.as_millis().to_string().as_bytes());
        line.push(mark);
        escape(&e.data, &mut line);
        line.extend_from_slice(b"',\n");
        out.write_all(&line)?;
        entries += 1;
    }
    out.write_all(SUFFIX.as_bytes())?;
    out.flush()?;
    Ok(entries)
}

/// `data` as the inside of a single-quoted JavaScript string, one character per byte.
fn escape(data: &[u8], out: &mut Vec<u8>) {
    for &b in data {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\'' => out.extend_from_slice(b"\\'"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0x20..=0x7e => out.push(b),
            _ => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_is_escaped_to_ascii_that_javascript_reads_back() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut out = Vec::new();
        escape(&all, &mut out);
        assert!(out.iter().all(|b| (0x20..0x7f).contains(b)));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("\\x00\\x01"));
        assert!(text.contains(" !\"#$%&\\'()"));
        assert!(text.contains("[\\\\]"));
        assert!(text.ends_with("\\xfe\\xff"));
    }
}

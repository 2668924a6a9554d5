//! asciicast v2 (`.cast`): the header line and one JSON array per event, so that asciinema and
//! asciinema-player play a terminal route's recording. Bytes become text through an
//! incremental UTF-8 decoder: a character split across two reads stays whole.

use std::time::Duration;

/// Text from a stream of bytes, one chunk at a time: a character cut at the end of a chunk
/// waits for the next one; bytes that can never be UTF-8 become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    /// The start of a character the last chunk ended inside (at most 3 bytes).
    held: Vec<u8>,
}

impl Utf8Stream {
    /// The text `chunk` completes, appended to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut String) {
        let owned;
        let mut rest: &[u8] = if self.held.is_empty() {
            chunk
        } else {
            self.held.extend_from_slice(chunk);
            owned = std::mem::take(&mut self.held);
            &owned
        };
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    return;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        None => {
                            // Cut off at the end: the next chunk completes it.
                            self.held.extend_from_slice(after);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end of the stream: an unfinished character, as U+FFFD.
    pub fn finish(&mut self, out: &mut String) {
        if !self.held.is_empty() {
            self.held.clear();
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
}

/// The header line (without its newline).
pub fn header(width: u16, height: u16, unix_secs: u64, title: &str) -> String {
    serde_json::json!({
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": unix_secs,
        "title": title,
        "env": { "TERM": "xterm-256color" },
    })
    .to_string()
}

/// One event line with its newline: `[seconds, "o" | "i" | "m", text]`.
pub fn event(at: Duration, kind: &str, text: &str, out: &mut Vec<u8>) {
    use std::io::Write;
    let text = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
    // Writing into a Vec cannot fail.
    let _ = writeln!(out, "[{:.6}, \"{kind}\", {text}]", at.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> String {
        let mut d = Utf8Stream::default();
        let mut out = String::new();
        for c in chunks {
            d.push(c, &mut out);
        }
        d.finish(&mut out);
        out
    }

    #[test]
    fn a_character_split_across_chunks_stays_whole() {
        let text = "naïve €uro 𝄞 clef";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            assert_eq!(
                decode(&[&bytes[..cut], &bytes[cut..]]),
                text,
                "cut at {cut}"
            );
        }
        // One byte at a time.
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode(&singles), text);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        assert_eq!(decode(&[b"a\xffb"]), "a\u{fffd}b");
        assert_eq!(decode(&[b"a\xe2\x82"]), "a\u{fffd}");
        assert_eq!(decode(&[b"\xe2\x82", b"x"]), "\u{fffd}x");
    }

    #[test]
    fn events_are_json_arrays() {
        let mut out = Vec::new();
        event(
            Duration::from_millis(1500),
            "o",
            "a\"b\n\u{1b}[0m",
            &mut out,
        );
        let line = String::from_utf8(out).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v[0].as_f64(), Some(1.5));
        assert_eq!(v[1], "o");
        assert_eq!(v[2], "a\"b\n\u{1b}[0m");
        let h: serde_json::Value = serde_json::from_str(&header(80, 24, 7, "t")).unwrap();
        assert_eq!(h["version"], 2);
        assert_eq!(h["width"], 80);
    }
}

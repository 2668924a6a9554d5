//! Incremental UTF-8 checks for text messages that arrive, or leave, in pieces.

/// How much of `bytes` is complete UTF-8: `Ok(n)` means `bytes[..n]` is valid and
/// `bytes[n..]` is the start of a character cut short (at most 3 bytes).
pub fn complete_prefix(bytes: &[u8]) -> Result<usize, InvalidUtf8> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(bytes.len()),
        Err(e) if e.error_len().is_none() => Ok(e.valid_up_to()),
        Err(_) => Err(InvalidUtf8),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Validates one text message fed frame by frame, holding only the bytes of a
/// character split across frames, so no message is ever reassembled.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: [u8; 4],
    pending_len: usize,
}

impl Utf8Stream {
    /// Feed the next fragment; `fin` marks the message's last one.
    pub fn push(&mut self, mut data: &[u8], fin: bool) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            // Finish the character cut at the previous frame's end with at most 3 new bytes.
            let take = (4 - self.pending_len).min(data.len());
            let mut joined = self.pending;
            joined[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            let joined_len = self.pending_len + take;
            match std::str::from_utf8(&joined[..joined_len]) {
                Ok(_) => {
                    self.pending_len = 0;
                    data = &data[take..];
                }
                Err(e) if e.valid_up_to() > 0 => {
                    data = &data[e.valid_up_to() - self.pending_len..];
                    self.pending_len = 0;
                }
                Err(e) if e.error_len().is_none() && take == data.len() => {
                    // Still cut short: everything new joined the pending character.
                    self.pending = joined;
                    self.pending_len = joined_len;
                    return if fin { Err(InvalidUtf8) } else { Ok(()) };
                }
                Err(_) => return Err(InvalidUtf8),
            }
        }
        let valid = complete_prefix(data)?;
        let rest = &data[valid..];
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
        if fin && self.pending_len > 0 {
            self.pending_len = 0;
            return Err(InvalidUtf8);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_keeps_cut_character_back() {
        let s = "aé€😀".as_bytes();
        assert_eq!(complete_prefix(s), Ok(s.len()));
        assert_eq!(complete_prefix(&s[..s.len() - 1]), Ok(s.len() - 4));
        assert_eq!(complete_prefix(&[b'a', 0xff]), Err(InvalidUtf8));
    }

    #[test]
    fn every_split_of_valid_text_passes() {
        let s = "κόσμε-€-😀-ascii".as_bytes();
        for a in 0..=s.len() {
            for b in a..=s.len() {
                let mut v = Utf8Stream::default();
                v.push(&s[..a], false).unwrap();
                v.push(&s[a..b], false).unwrap();
                v.push(&s[b..], true).unwrap();
            }
        }
    }

    /// Regression: Autobahn 6.2.4 (one-byte fragments) failed with 1007 because a character
    /// still cut short after two fragments was forgotten.
    #[test]
    fn one_byte_fragments_pass() {
        let s = "κόσμε😀".as_bytes();
        let mut v = Utf8Stream::default();
        for (i, b) in s.iter().enumerate() {
            v.push(std::slice::from_ref(b), i + 1 == s.len()).unwrap();
        }
    }

    #[test]
    fn invalid_bytes_fail_at_the_frame_that_carries_them() {
        let mut v = Utf8Stream::default();
        v.push(&[0xce], false).unwrap();
        assert_eq!(v.push(&[0x41], false), Err(InvalidUtf8));
        let mut v = Utf8Stream::default();
        assert_eq!(
            v.push(&[0xed, 0xa0, 0x80], false),
            Err(InvalidUtf8),
            "surrogate"
        );
        let mut v = Utf8Stream::default();
        v.push(&[0xf0, 0x9f], false).unwrap();
        assert_eq!(
            v.push(&[], true),
            Err(InvalidUtf8),
            "message ends mid-character"
        );
    }
}

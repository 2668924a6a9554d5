//! Client-controlled text made safe for a log line: control characters escaped, so a close
//! reason, a path or a token's subject can never start a forged line or steer a terminal.

use std::fmt;

/// Displays a string with every control character (C0, DEL, C1, and the Unicode line and
/// paragraph separators) escaped as `\n`, `\r`, `\t` or `\u{…}`, and `\` as `\\` so that an
/// escape in the output always means an escape. Log every client-controlled field through it:
/// `reason = %Escaped(&reason)`.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        // Copy clean runs at once: most fields hold nothing to escape.
        while let Some(at) = rest.find(needs_escape) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\\' => f.write_str("\\\\")?,
                _ => write!(f, "{}", c.escape_default())?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\\' || c == '\u{2028}' || c == '\u{2029}'
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        for (raw, shown) in [
            ("plain text", "plain text"),
            ("bye\nFORGED", r"bye\nFORGED"),
            ("a\r\n\tb", r"a\r\n\tb"),
            ("\u{1b}[31mred", r"\u{1b}[31mred"),
            ("nul\0", r"nul\u{0}"),
            ("c1\u{85}", r"c1\u{85}"),
            ("ls\u{2028}", r"ls\u{2028}"),
            (r"back\slash", r"back\\slash"),
            ("héllo ✓", "héllo ✓"),
        ] {
            assert_eq!(Escaped(raw).to_string(), shown, "{raw:?}");
        }
    }
}

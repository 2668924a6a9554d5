//! The frame reader: RFC 6455 frames off a byte stream, holding no heap buffer between frames.
//!
//! fastwebsockets' reader keeps an 8 KiB buffer per connection for the connection's whole life
//! and does not check the masking rule; at 100,000 idle sessions the first costs most of a
//! gigabyte and the second lets a client skip masking. This reader keeps a small inline buffer
//! for headers and small frames, allocates a payload exactly once (and only for its size),
//! checks every rule of §5 that is a property of one frame, and hands out fastwebsockets
//! `Frame`s so the rest of the pipeline (and the writer) stays on fastwebsockets.

use std::io;

use bytes::BytesMut;
use fastwebsockets::{CloseCode, Frame, OpCode, Payload, Role};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::frames::Violation;
use crate::error::close_code;

/// Header bytes and small frames arrive here: one read usually brings a whole small frame.
const INLINE: usize = 512;

/// Why a read ended without a frame.
#[derive(Debug)]
pub enum ReadError {
    /// The stream ended or failed: the peer is gone.
    Gone(Option<io::Error>),
    /// The peer broke the protocol: close with this code.
    Violation(Violation),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Gone(Some(e))
    }
}

/// Reads frames from one peer. `read_frame` is not cancel-safe: run it in its own loop.
pub struct FrameReader<R> {
    stream: R,
    /// Server: frames must be masked (they come from a client); client: they must not be.
    expect_masked: bool,
    max_frame_bytes: usize,
    /// Boxed: the reader moves through several futures before it settles in its task.
    inline: Box<[u8; INLINE]>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `role` is ours: as a server we read a client's (masked) frames.
    pub fn new(stream: R, role: Role, max_frame_bytes: usize) -> Self {
        Self {
            stream,
            expect_masked: role == Role::Server,
            max_frame_bytes,
            inline: Box::new([0; INLINE]),
            start: 0,
            end: 0,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.inline[self.start..self.end]
    }

    /// Make sure `n` (≤ INLINE) bytes are buffered.
    async fn fill(&mut self, n: usize) -> Result<(), ReadError> {
        while self.end - self.start < n {
            if self.end == INLINE || self.start > 0 && self.end + n > INLINE {
                self.inline.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let read = self.stream.read(&mut self.inline[self.end..]).await?;
            if read == 0 {
                return Err(ReadError::Gone(None));
            }
            self.end += read;
        }
        Ok(())
    }

    /// The next frame, checked: reserved bits, opcode, masking, control-frame rules,
    /// size, and a Close frame's code and reason. Payloads come unmasked.
    pub async fn read_frame(&mut self) -> Result<Frame<'static>, ReadError> {
        self.fill(2).await?;
        let [b0, b1] = [self.buffered()[0], self.buffered()[1]];
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(violation(close_code::PROTOCOL_ERROR, "reserved bits set"));
        }
        let opcode = match b0 & 0x0f {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return Err(violation(close_code::PROTOCOL_ERROR, "unknown opcode")),
        };
        let masked = b1 & 0x80 != 0;
        if masked != self.expect_masked {
            let reason = if self.expect_masked {
                "unmasked frame from the client"
            } else {
                "masked frame from the server"
            };
            return Err(violation(close_code::PROTOCOL_ERROR, reason));
        }
        let extended = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header_len = 2 + extended + if masked { 4 } else { 0 };
        self.fill(header_len).await?;
        let header = &self.inline[self.start..self.start + header_len];
        let length = match extended {
            0 => u64::from(b1 & 0x7f),
            2 => u64::from(u16::from_be_bytes([header[2], header[3]])),
            _ => u64::from_be_bytes([
                header[2], header[3], header[4], header[5], header[6], header[7], header[8],
                header[9],
            ]),
        };
        let mask = masked.then(|| {
            let m = &header[2 + extended..2 + extended + 4];
            [m[0], m[1], m[2], m[3]]
        });
        let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
        if control && !fin {
            return Err(violation(
                close_code::PROTOCOL_ERROR,
                "fragmented control frame",
            ));
        }
        if control && length > 125 {
            return Err(violation(
                close_code::PROTOCOL_ERROR,
                "control frame over 125 bytes",
            ));
        }
        if length > self.max_frame_bytes as u64 {
            return Err(violation(close_code::TOO_BIG, "frame too big"));
        }
        self.start += header_len;

        let length = length as usize;
        let mut payload = BytesMut::with_capacity(length);
        let from_inline = length.min(self.end - self.start);
        payload.extend_from_slice(&self.inline[self.start..self.start + from_inline]);
        self.start += from_inline;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        while payload.len() < length {
            // Straight into the payload: a large frame is copied once, from the socket.
            let want = length - payload.len();
            let read = (&mut self.stream)
                .take(want as u64)
                .read_buf(&mut payload)
                .await?;
            if read == 0 {
                return Err(ReadError::Gone(None));
            }
        }
        if let Some(mask) = mask {
            fastwebsockets::unmask(&mut payload, mask);
        }
        if opcode == OpCode::Close {
            check_close(&payload)?;
        }
        Ok(Frame::new(fin, opcode, None, Payload::Bytes(payload)))
    }
}

fn violation(code: u16, reason: &'static str) -> ReadError {
    ReadError::Violation((code, reason))
}

/// A Close payload is empty, or a code that may be sent plus a UTF-8 reason (§5.5.1, §7.4).
fn check_close(payload: &[u8]) -> Result<(), ReadError> {
    match payload {
        [] => Ok(()),
        [_] => Err(violation(
            close_code::PROTOCOL_ERROR,
            "malformed close frame",
        )),
        [a, b, reason @ ..] => {
            if !CloseCode::from(u16::from_be_bytes([*a, *b])).is_allowed() {
                return Err(violation(close_code::PROTOCOL_ERROR, "invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(violation(
                    close_code::INVALID_PAYLOAD,
                    "invalid UTF-8 in a close reason",
                ));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client (masked) or server (unmasked) would send it.
    fn frame(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut f = vec![b0];
        let bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => f.push(bit | n as u8),
            n @ 126..=65535 => {
                f.push(bit | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(bit | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x11, 0x22, 0x33, 0x44];
        if masked {
            f.extend_from_slice(&mask);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    async fn read_all(
        bytes: Vec<u8>,
        role: Role,
        chunk: usize,
    ) -> Vec<Result<(OpCode, bool, Vec<u8>), String>> {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in bytes.chunks(chunk) {
                tx.write_all(piece).await.unwrap();
            }
        });
        let mut reader = FrameReader::new(rx, role, 1 << 20);
        let mut out = Vec::new();
        loop {
            match reader.read_frame().await {
                Ok(f) => out.push(Ok((f.opcode, f.fin, f.payload.to_vec()))),
                Err(ReadError::Gone(_)) => break,
                Err(ReadError::Violation((code, reason))) => {
                    out.push(Err(format!("{code} {reason}")));
                    break;
                }
            }
        }
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn frames_of_every_size_survive_any_chunking() {
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let stream = [
            frame(0x81, b"hello", true),
            frame(0x02, &big[..300], true),
            frame(0x80, &big[..0], true),
            frame(0x89, b"ping", true),
            frame(0x82, &big, true),
            frame(0x88, &[0x03, 0xe8, b'o', b'k'], true),
        ]
        .concat();
        for chunk in [1, 3, 7, 511, 512, 513, 4096, stream.len()] {
            let got = read_all(stream.clone(), Role::Server, chunk).await;
            let want = vec![
                Ok((OpCode::Text, true, b"hello".to_vec())),
                Ok((OpCode::Binary, false, big[..300].to_vec())),
                Ok((OpCode::Continuation, true, vec![])),
                Ok((OpCode::Ping, true, b"ping".to_vec())),
                Ok((OpCode::Binary, true, big.clone())),
                Ok((OpCode::Close, true, vec![0x03, 0xe8, b'o', b'k'])),
            ];
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn each_broken_rule_has_its_code() {
        let cases: &[(Vec<u8>, Role, &str)] = &[
            (
                frame(0x82, b"x", false),
                Role::Server,
                "1002 unmasked frame from the client",
            ),
            (
                frame(0x82, b"x", true),
                Role::Client,
                "1002 masked frame from the server",
            ),
            (
                frame(0xC2, b"x", true),
                Role::Server,
                "1002 reserved bits set",
            ),
            (frame(0x83, b"x", true), Role::Server, "1002 unknown opcode"),
            (frame(0x8B, b"x", true), Role::Server, "1002 unknown opcode"),
            (
                frame(0x09, b"x", true),
                Role::Server,
                "1002 fragmented control frame",
            ),
            (
                frame(0x89, &[0; 126], true),
                Role::Server,
                "1002 control frame over 125 bytes",
            ),
            (
                frame(0x88, &[3], true),
                Role::Server,
                "1002 malformed close frame",
            ),
            (
                frame(0x88, &[0x03, 0xec], true),
                Role::Server,
                "1002 invalid close code",
            ),
            (
                frame(0x88, &[0x03, 0xe8, 0xff], true),
                Role::Server,
                "1007 invalid UTF-8 in a close reason",
            ),
        ];
        for (bytes, role, want) in cases {
            let got = read_all(bytes.clone(), *role, 4096).await;
            assert_eq!(got, vec![Err(want.to_string())], "{want}");
        }
        let too_big = frame(0x82, &[0; 200], true);
        let mut r = FrameReader::new(&too_big[..], Role::Server, 199);
        assert!(matches!(
            r.read_frame().await,
            Err(ReadError::Violation((1009, _)))
        ));
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_gone() {
        let mut bytes = frame(0x82, &[7; 1000], true);
        bytes.truncate(600);
        let mut r = FrameReader::new(&bytes[..], Role::Server, 1 << 20);
        assert!(matches!(r.read_frame().await, Err(ReadError::Gone(None))));
    }
}

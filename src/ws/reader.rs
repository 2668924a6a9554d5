//! The frame reader: RFC 6455 frames off a byte stream, holding no heap buffer between frames.
//!
//! fastwebsockets' reader keeps an 8 KiB buffer per connection for the connection's whole life
//! and does not check the masking rule; at 100,000 idle sessions the first costs most of a
//! gigabyte and the second lets a client skip masking. This reader keeps a small inline buffer
//! for headers and small frames, grows a payload buffer as its bytes arrive (never on the
//! peer's word alone) within a process-wide [`FrameBudget`], checks every rule of §5 that is
//! a property of one frame, and hands out fastwebsockets `Frame`s so the rest of the pipeline
//! (and the writer) stays on fastwebsockets.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::BytesMut;
use fastwebsockets::{Frame, OpCode, Payload, Role};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::close_code;
use super::frames::Violation;

/// Header bytes and small frames arrive here: one read usually brings a whole small frame.
const INLINE: usize = 512;

/// A payload buffer starts at most this big and doubles as bytes arrive (capped at the frame's
/// length): a peer announcing a huge frame gets memory for what it sent, at most twice over.
/// Frames up to this size still take exactly one allocation of their own size.
const FIRST_STEP: usize = 64 * 1024;

/// The payload bytes all frame readers of a gateway may hold at once (`[limits]
/// frame_budget_bytes`). A reader charges each buffer step before it allocates it and gives
/// the charge back when it is asked for the next frame (the last one has been passed on by
/// then) or dropped. Payloads of up to `INLINE` bytes are not charged: they cost less than
/// the reader itself, which the connection limit already bounds.
#[derive(Debug)]
pub struct FrameBudget {
    limit: usize,
    used: AtomicUsize,
}

impl FrameBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// No budget (benchmarks, tests of other things).
    pub fn unlimited() -> Arc<Self> {
        Self::new(usize::MAX)
    }

    /// The most bytes it lets readers hold at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

const NON_MINIMAL: &str = "non-minimal frame length";

/// Why a read ended without a frame.
#[derive(Debug)]
pub enum ReadError {
    /// The stream ended or failed: the peer is gone.
    Gone(Option<io::Error>),
    /// The peer broke the protocol: close with this code.
    Violation(Violation),
    /// The frame budget cannot cover this frame: the gateway closes the session with 1013
    /// (Try Again Later). Logged here, once.
    OverBudget,
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
    budget: Arc<FrameBudget>,
    /// What this reader has charged to `budget` for the frame it is reading or last read.
    charged: usize,
    /// Boxed: the reader moves through several futures before it settles in its task.
    /// `None` while nothing is buffered and the stream has nothing to read: an idle session
    /// holds no read buffer (see [`ReadReady`]).
    inline: Option<Box<[u8; INLINE]>>,
    start: usize,
    end: usize,
    /// permessage-deflate was negotiated: RSV1 may mark a message's first frame.
    rsv1_allowed: bool,
    /// The last frame read had RSV1 set (its message is compressed).
    rsv1: bool,
}

/// A stream that can say when a read would not wait, so the frame reader takes its buffer
/// only when bytes are there. The default says "now": the reader then waits inside the read,
/// holding its buffer, as before.
pub trait ReadReady: AsyncRead + Unpin {
    /// Resolves when a read would return at once (bytes, end of stream or an error).
    /// Cancel-safe.
    fn read_ready(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

impl<T: AsyncRead> ReadReady for tokio::io::ReadHalf<T> {}
impl ReadReady for &[u8] {}
impl ReadReady for tokio::io::DuplexStream {}

impl<R: ReadReady> FrameReader<R> {
    /// `role` is ours: as a server we read a client's (masked) frames.
    pub fn new(stream: R, role: Role, max_frame_bytes: usize, budget: Arc<FrameBudget>) -> Self {
        Self {
            stream,
            expect_masked: role == Role::Server,
            max_frame_bytes,
            budget,
            charged: 0,
            inline: None,
            start: 0,
            end: 0,
            rsv1_allowed: false,
            rsv1: false,
        }
    }

    /// permessage-deflate was negotiated on this hop: accept RSV1 on a data message's first frame.
    pub fn allow_rsv1(&mut self) {
        self.rsv1_allowed = true;
    }

    /// Whether the last frame read had RSV1 set: its message is compressed.
    pub fn compressed(&self) -> bool {
        self.rsv1
    }

    /// Charge `n` more payload bytes to the budget, or refuse the frame.
    fn charge(&mut self, n: usize, length: u64) -> Result<(), ReadError> {
        if !self.budget.take(n) {
            tracing::warn!(
                frame_bytes = length,
                budget_bytes = self.budget.limit,
                "frame memory budget exhausted: closing the session with 1013"
            );
            return Err(ReadError::OverBudget);
        }
        self.charged += n;
        Ok(())
    }

    /// Whether the reader holds its read buffer now (an idle one should not).
    #[cfg(test)]
    pub(crate) fn holds_buffer(&self) -> bool {
        self.inline.is_some()
    }

    /// The bytes buffered (only called once some are).
    fn buffered(&self) -> &[u8] {
        self.inline
            .as_deref()
            .map_or(&[][..], |b| &b[self.start..self.end])
    }

    /// Make sure `n` (≤ INLINE) bytes are buffered.
    async fn fill(&mut self, n: usize) -> Result<(), ReadError> {
        while self.end - self.start < n {
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
                // Nothing buffered: if the stream has nothing either, give the buffer back
                // while waiting (a fresh one is a cheap allocation when bytes come).
                let ready = self.stream.read_ready();
                tokio::pin!(ready);
                if std::future::poll_fn(|cx| Poll::Ready(ready.as_mut().poll(cx)))
                    .await
                    .is_pending()
                {
                    self.inline = None;
                    ready.await?;
                }
            }
            let inline = self.inline.get_or_insert_with(|| Box::new([0; INLINE]));
            if self.end == INLINE || self.start > 0 && self.end + n > INLINE {
                inline.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let read = self.stream.read(&mut inline[self.end..]).await?;
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
        if self.charged > 0 {
            self.budget.give(std::mem::take(&mut self.charged));
        }
        let header = self.read_header().await?;
        let mut payload = self.read_payload(header.length).await?;
        if let Some(mask) = header.mask {
            fastwebsockets::unmask(&mut payload, mask);
        }
        if header.opcode == OpCode::Close {
            check_close(&payload)?;
        }
        Ok(Frame::new(
            header.fin,
            header.opcode,
            None,
            Payload::Bytes(payload),
        ))
    }

    /// A frame's header, read and checked, and consumed from the buffer.
    async fn read_header(&mut self) -> Result<Header, ReadError> {
        self.fill(2).await?;
        let [b0, b1] = [self.buffered()[0], self.buffered()[1]];
        let (fin, opcode, masked) = self.first_two_bytes(b0, b1)?;
        let extended = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header_len = 2 + extended + if masked { 4 } else { 0 };
        self.fill(header_len).await?;
        let header = &self.buffered()[..header_len];
        let length = payload_length(b1, extended, header)?;
        let mask = masked.then(|| {
            let m = &header[2 + extended..2 + extended + 4];
            [m[0], m[1], m[2], m[3]]
        });
        self.check_frame_rules(opcode, fin, length)?;
        self.start += header_len;
        Ok(Header {
            fin,
            opcode,
            mask,
            length,
        })
    }

    /// FIN, the opcode and the mask bit, with the reserved bits, opcode and masking rule
    /// checked (RSV1 is remembered for [`FrameReader::compressed`]).
    #[inline]
    fn first_two_bytes(&mut self, b0: u8, b1: u8) -> Result<(bool, OpCode, bool), ReadError> {
        let fin = b0 & 0x80 != 0;
        if b0 & 0x30 != 0 || b0 & 0x40 != 0 && !self.rsv1_allowed {
            return Err(violation(close_code::PROTOCOL_ERROR, "reserved bits set"));
        }
        self.rsv1 = b0 & 0x40 != 0;
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
        Ok((fin, opcode, masked))
    }

    /// The rules of one frame that need its opcode, FIN, RSV1 and length: compression marks,
    /// control frames whole and small, the frame size limit.
    #[inline]
    fn check_frame_rules(&self, opcode: OpCode, fin: bool, length: u64) -> Result<(), ReadError> {
        let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
        // RFC 7692 §6.1: compression is per message, marked on its first frame only.
        if self.rsv1 && control {
            return Err(violation(
                close_code::PROTOCOL_ERROR,
                "RSV1 on a control frame",
            ));
        }
        if self.rsv1 && opcode == OpCode::Continuation {
            return Err(violation(
                close_code::PROTOCOL_ERROR,
                "RSV1 on a continuation frame",
            ));
        }
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
        Ok(())
    }

    /// A payload of `length` bytes (already checked against the limit): what is buffered,
    /// then straight from the stream into a buffer grown as bytes arrive, within the budget.
    async fn read_payload(&mut self, announced: u64) -> Result<BytesMut, ReadError> {
        let length = announced as usize;
        let first = length.min(FIRST_STEP);
        if length > INLINE {
            self.charge(first, announced)?;
        }
        let mut payload = BytesMut::with_capacity(first);
        let from_inline = length.min(self.end - self.start);
        payload.extend_from_slice(&self.buffered()[..from_inline]);
        self.start += from_inline;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        while payload.len() < length {
            if payload.len() == payload.capacity() {
                // Full, and the peer has shown it is really sending: double, within the budget.
                // (A new buffer of exactly that size: `reserve` may round up past the frame.)
                let grown = (payload.capacity() * 2).min(length);
                self.charge(grown - payload.capacity(), announced)?;
                let mut bigger = BytesMut::with_capacity(grown);
                bigger.extend_from_slice(&payload);
                payload = bigger;
            }
            // Straight into the payload: one copy from the socket (plus the doublings').
            let want = payload.capacity() - payload.len();
            let read = (&mut self.stream)
                .take(want as u64)
                .read_buf(&mut payload)
                .await?;
            if read == 0 {
                return Err(ReadError::Gone(None));
            }
        }
        Ok(payload)
    }
}

/// A checked frame header.
#[derive(Clone, Copy)]
struct Header {
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    length: u64,
}

/// The payload length from the header's second byte and its `extended` length bytes,
/// checked: §5.2 "the minimal number of bytes MUST be used to encode the length", and the
/// most significant bit of a 64-bit length MUST be 0. Both are protocol errors, checked
/// before the size limit so a bad header is never reported as a big frame.
#[inline]
fn payload_length(b1: u8, extended: usize, header: &[u8]) -> Result<u64, ReadError> {
    let length = match extended {
        0 => u64::from(b1 & 0x7f),
        2 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        _ => u64::from_be_bytes([
            header[2], header[3], header[4], header[5], header[6], header[7], header[8], header[9],
        ]),
    };
    match extended {
        2 if length < 126 => Err(violation(close_code::PROTOCOL_ERROR, NON_MINIMAL)),
        8 if length >> 63 != 0 => Err(violation(
            close_code::PROTOCOL_ERROR,
            "frame length with the top bit set",
        )),
        8 if length <= 0xffff => Err(violation(close_code::PROTOCOL_ERROR, NON_MINIMAL)),
        _ => Ok(length),
    }
}

impl<R> Drop for FrameReader<R> {
    fn drop(&mut self) {
        self.budget.give(self.charged);
    }
}

fn violation(code: u16, reason: &'static str) -> ReadError {
    ReadError::Violation((code, reason))
}

/// Whether a peer may put `code` in a Close frame (RFC 6455 §7.4 and the IANA "WebSocket
/// Close Code Number Registry"): 1000-1003 and 1007-1014 are registered for the wire (1012
/// Service Restart, 1013 Try Again Later, 1014 Bad Gateway included: gateways send them);
/// 1004 is reserved, 1005, 1006 and 1015 are for reporting only and never sent; 1016-2999
/// are reserved for the protocol; 3000-3999 are registered for libraries and frameworks,
/// 4000-4999 are private use. (fastwebsockets' `CloseCode::is_allowed` refuses 1014.)
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
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
            if !is_valid_close_code(u16::from_be_bytes([*a, *b])) {
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
        let mut reader = FrameReader::new(rx, role, 1 << 20, FrameBudget::unlimited());
        let mut out = Vec::new();
        loop {
            match reader.read_frame().await {
                Ok(f) => out.push(Ok((f.opcode, f.fin, f.payload.to_vec()))),
                Err(ReadError::Gone(_)) => break,
                Err(ReadError::OverBudget) => {
                    out.push(Err("over budget".to_owned()));
                    break;
                }
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
        // RSV1 without permessage-deflate, and where it never belongs even with it.
        let bytes = frame(0xC1, b"x", true);
        let mut r = FrameReader::new(&bytes[..], Role::Server, 1 << 20, FrameBudget::unlimited());
        assert!(matches!(
            r.read_frame().await,
            Err(ReadError::Violation((1002, "reserved bits set")))
        ));
        for (b0, want) in [
            (0xC9, "RSV1 on a control frame"),
            (0xC8, "RSV1 on a control frame"),
            (0xC0, "RSV1 on a continuation frame"),
            (0xA2, "reserved bits set"),
        ] {
            let bytes = frame(b0, b"", true);
            let mut r =
                FrameReader::new(&bytes[..], Role::Server, 1 << 20, FrameBudget::unlimited());
            r.allow_rsv1();
            match r.read_frame().await {
                Err(ReadError::Violation((1002, reason))) => assert_eq!(reason, want),
                other => panic!("{b0:#x}: {:?}", other.map(|f| f.opcode)),
            }
        }
        let too_big = frame(0x82, &[0; 200], true);
        let mut r = FrameReader::new(&too_big[..], Role::Server, 199, FrameBudget::unlimited());
        assert!(matches!(
            r.read_frame().await,
            Err(ReadError::Violation((1009, _)))
        ));
    }

    /// Regression (issue 9 item 6): lengths in a longer encoding than needed were accepted,
    /// and a 64-bit length with the top bit set was answered 1009; RFC 6455 §5.2 makes both
    /// a protocol error (1002).
    #[tokio::test]
    async fn non_minimal_or_top_bit_lengths_close_1002() {
        let mask = [1, 2, 3, 4];
        let with_length = |len7: u8, extended: &[u8]| {
            let mut f = vec![0x82, 0x80 | len7];
            f.extend_from_slice(extended);
            f.extend_from_slice(&mask);
            f
        };
        let cases = [
            ("5 in 16 bits", with_length(126, &5u16.to_be_bytes()), 5),
            (
                "125 in 16 bits",
                with_length(126, &125u16.to_be_bytes()),
                125,
            ),
            ("0 in 64 bits", with_length(127, &0u64.to_be_bytes()), 0),
            (
                "65535 in 64 bits",
                with_length(127, &65535u64.to_be_bytes()),
                65535,
            ),
        ];
        for (what, mut bytes, len) in cases {
            bytes.extend(std::iter::repeat_n(0, len));
            let got = read_all(bytes, Role::Server, 4096).await;
            assert_eq!(
                got,
                vec![Err("1002 non-minimal frame length".to_owned())],
                "{what}"
            );
        }
        let top_bit = with_length(127, &(1u64 << 63 | 10).to_be_bytes());
        let mut r = FrameReader::new(
            &top_bit[..],
            Role::Server,
            1 << 20,
            FrameBudget::unlimited(),
        );
        assert!(matches!(
            r.read_frame().await,
            Err(ReadError::Violation((
                1002,
                "frame length with the top bit set"
            )))
        ));
        // The shortest encodings still pass at every boundary.
        for len in [125usize, 126, 65535, 65536] {
            let got = read_all(frame(0x82, &vec![9; len], true), Role::Server, 4096).await;
            assert_eq!(got, vec![Ok((OpCode::Binary, true, vec![9; len]))], "{len}");
        }
    }

    /// Regression (issue 9 item 10): Close 1014 (Bad Gateway, registered, and sent by this
    /// gateway itself) was refused with 1002. Every code is checked against the IANA
    /// registry: 1000-1003 and 1007-1014 may be sent, 1004-1006 and 1015 may not, 1016-2999
    /// are reserved, 3000-4999 are for libraries, applications and private use.
    #[test]
    fn close_codes_follow_the_iana_registry() {
        for code in 0..=u16::MAX {
            let want = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(is_valid_close_code(code), want, "{code}");
        }
    }

    #[tokio::test]
    async fn close_1012_to_1014_are_accepted_from_either_side() {
        for code in [1012u16, 1013, 1014] {
            for (role, masked) in [(Role::Server, true), (Role::Client, false)] {
                let payload = code.to_be_bytes();
                let got = read_all(frame(0x88, &payload, masked), role, 4096).await;
                assert_eq!(got, vec![Ok((OpCode::Close, true, payload.to_vec()))]);
            }
        }
    }

    /// Regression (issue 9 item 5): a frame's whole announced length was allocated (and so
    /// committed) when its header arrived. Buffers now grow with the bytes received, are
    /// charged to the budget, and the charge comes back with the next frame or the reader.
    #[tokio::test]
    async fn payload_memory_follows_the_bytes_received_within_the_budget() {
        let budget = FrameBudget::new(1 << 20);
        let mut announced = frame(0x82, &vec![5; 300_000], true);
        announced.truncate(14 + 100);
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        use tokio::io::AsyncWriteExt;
        tx.write_all(&announced).await.unwrap();
        let mut r = FrameReader::new(rx, Role::Server, 1 << 20, budget.clone());
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), r.read_frame());
        assert!(pending.await.is_err(), "the frame is incomplete");
        assert_eq!(
            budget.in_use(),
            FIRST_STEP,
            "300 kB announced, 100 bytes sent"
        );
        drop(r);
        assert_eq!(budget.in_use(), 0, "given back with the reader");

        // A whole frame: charged in doublings up to its length, given back on the next read.
        let big = frame(0x82, &vec![5; 300_000], true);
        let both = [big.clone(), frame(0x82, b"tiny", true)].concat();
        let mut r = FrameReader::new(&both[..], Role::Server, 1 << 20, budget.clone());
        let f = r.read_frame().await.unwrap();
        assert_eq!(f.payload.len(), 300_000);
        assert_eq!(budget.in_use(), 300_000);
        assert_eq!(&r.read_frame().await.unwrap().payload[..], b"tiny");
        assert_eq!(budget.in_use(), 0, "small frames are not charged");

        // Over the budget: refused, and nothing stays charged.
        let tight = FrameBudget::new(200_000);
        let mut r = FrameReader::new(&big[..], Role::Server, 1 << 20, tight.clone());
        assert!(matches!(r.read_frame().await, Err(ReadError::OverBudget)));
        drop(r);
        assert_eq!(tight.in_use(), 0);
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_gone() {
        let mut bytes = frame(0x82, &[7; 1000], true);
        bytes.truncate(600);
        let mut r = FrameReader::new(&bytes[..], Role::Server, 1 << 20, FrameBudget::unlimited());
        assert!(matches!(r.read_frame().await, Err(ReadError::Gone(None))));
    }

    /// Our writer's frames, RSV1 included, read back by our reader in both roles.
    #[tokio::test]
    async fn frames_read_back_with_their_rsv1_bit() {
        for (role, peer) in [(Role::Server, Role::Client), (Role::Client, Role::Server)] {
            let (a, b) = tokio::io::duplex(1 << 20);
            let mut w = crate::ws::writer::FrameWriter::new(a, role);
            let big = vec![7u8; 70_000];
            w.write_frame(Frame::text(fastwebsockets::Payload::Borrowed(b"hi")), true)
                .await
                .unwrap();
            w.write_frame(
                Frame::binary(fastwebsockets::Payload::Borrowed(&big)),
                false,
            )
            .await
            .unwrap();
            w.write_frame(Frame::close(1000, b""), false).await.unwrap();
            assert!(w
                .write_frame(
                    Frame::text(fastwebsockets::Payload::Borrowed(b"late")),
                    false
                )
                .await
                .is_err());
            let mut r = FrameReader::new(b, peer, 1 << 20, FrameBudget::unlimited());
            r.allow_rsv1();
            let f = r.read_frame().await.unwrap();
            assert_eq!((&f.payload[..], r.compressed()), (&b"hi"[..], true));
            let f = r.read_frame().await.unwrap();
            assert_eq!((f.payload.len(), r.compressed()), (70_000, false));
            assert_eq!(r.read_frame().await.unwrap().opcode, OpCode::Close);
        }
    }
}

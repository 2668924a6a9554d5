//! Rules shared by both bridges: message sequencing, UTF-8 and size across frames; guarded writes.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode};
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

use super::close_code;
use super::utf8::Utf8Stream;
use super::writer::FrameWriter;

/// A peer broke the protocol: the close code and a short reason for it.
pub type Violation = (u16, &'static str);

/// Checks that data frames form valid messages, streaming: continuation order,
/// UTF-8 of text (across frame boundaries), and the total size of a message.
#[derive(Debug)]
pub struct MessageCheck {
    max_message_bytes: usize,
    /// Inside a message: `Some(None)` binary (or one-frame text), `Some(Some(_))` fragmented text.
    current: Option<Option<Utf8Stream>>,
    length: usize,
}

impl MessageCheck {
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            max_message_bytes,
            current: None,
            length: 0,
        }
    }

    /// Check one data frame (Text, Binary or Continuation); `Ok(true)` when it ends a message.
    pub fn data_frame(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: &[u8],
    ) -> Result<bool, Violation> {
        let text = match opcode {
            OpCode::Text | OpCode::Binary if self.current.is_some() => {
                return Err((
                    close_code::PROTOCOL_ERROR,
                    "new message inside a fragmented one",
                ))
            }
            OpCode::Continuation if self.current.is_none() => {
                return Err((
                    close_code::PROTOCOL_ERROR,
                    "continuation frame without a message",
                ))
            }
            OpCode::Text => {
                self.length = 0;
                self.current.insert(Some(Utf8Stream::default()))
            }
            OpCode::Binary => {
                self.length = 0;
                self.current.insert(None)
            }
            OpCode::Continuation => self.current.get_or_insert(None),
            OpCode::Close | OpCode::Ping | OpCode::Pong => return Ok(false),
        };
        self.length = self.length.saturating_add(payload.len());
        if self.length > self.max_message_bytes {
            return Err((close_code::TOO_BIG, "message too big"));
        }
        if let Some(utf8) = text {
            if utf8.push(payload, fin).is_err() {
                return Err((
                    close_code::INVALID_PAYLOAD,
                    "invalid UTF-8 in a text message",
                ));
            }
        }
        if fin {
            self.current = None;
        }
        Ok(fin)
    }
}

/// Why a write to a peer did not complete.
#[derive(Debug)]
pub enum WriteFailed {
    /// The socket failed: the peer is gone.
    Io,
    /// The peer accepted nothing for a whole keepalive cycle.
    Stalled,
    /// The drain deadline passed.
    Stopped,
}

/// A WebSocket writer whose writes give up when the peer stops reading for `stall_limit`
/// or the drain deadline passes: a stuck peer can hold a session, never the process.
pub struct GuardedWriter<'a, W> {
    ws: FrameWriter<W>,
    stall_limit: Option<Duration>,
    hard_stop: &'a CancellationToken,
    /// A send had to wait for the peer to read (see `take_waited`).
    waited: bool,
}

impl<'a, W: AsyncWrite + Unpin> GuardedWriter<'a, W> {
    pub fn new(
        ws: FrameWriter<W>,
        stall_limit: Option<Duration>,
        hard_stop: &'a CancellationToken,
    ) -> Self {
        Self {
            ws,
            stall_limit,
            hard_stop,
            waited: false,
        }
    }

    /// Whether a send since the last call had to wait for the peer to read. A ping sent
    /// before such a wait may have sat behind our data: keepalive excuses its pong.
    pub fn take_waited(&mut self) -> bool {
        std::mem::take(&mut self.waited)
    }

    /// The token that ends the drain: a loop around this writer should watch it too.
    pub fn hard_stop(&self) -> &'a CancellationToken {
        self.hard_stop
    }

    /// Write and flush one frame.
    pub async fn send(&mut self, frame: Frame<'_>) -> Result<(), WriteFailed> {
        self.send_marked(frame, false).await
    }

    /// Write and flush one frame; `rsv1` marks the first frame of a compressed message.
    pub async fn send_marked(&mut self, frame: Frame<'_>, rsv1: bool) -> Result<(), WriteFailed> {
        // One future, built in place: every idle session's task is sized by this one.
        // Without a stall limit the timer is 30 years away and never armed in practice
        // (a timeout polls its future first; the timer is registered only if that blocks).
        let limit = self.stall_limit.unwrap_or(Duration::from_secs(1 << 30));
        let hard_stop = self.hard_stop;
        let write = tokio::time::timeout(limit, write_and_flush(&mut self.ws, frame, rsv1));
        tokio::pin!(write);
        // Most writes finish at once; only one that has to wait watches the drain deadline.
        let r = match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
            Poll::Ready(r) => r,
            Poll::Pending => {
                self.waited = true;
                tokio::select! {
                    biased;
                    () = hard_stop.cancelled() => return Err(WriteFailed::Stopped),
                    r = &mut write => r,
                }
            }
        };
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriteFailed::Io),
            Err(_) => Err(WriteFailed::Stalled),
        }
    }

    /// Send a Close with a code and reason.
    pub async fn send_close(&mut self, code: u16, reason: &str) -> Result<(), WriteFailed> {
        self.send(Frame::close(code, reason.as_bytes())).await
    }

    /// Best effort, for a peer that may be gone: a Close that waits at most a second.
    pub async fn try_close(&mut self, code: u16, reason: &str) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.send_close(code, reason)).await;
    }
}

async fn write_and_flush<W: AsyncWrite + Unpin>(
    ws: &mut FrameWriter<W>,
    frame: Frame<'_>,
    rsv1: bool,
) -> std::io::Result<()> {
    ws.write_frame(frame, rsv1).await?;
    ws.flush().await
}

/// The code in a Close frame's payload; 1005 ("no status") when it has none.
pub fn close_payload_code(payload: &[u8]) -> u16 {
    match payload {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 1005,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequencing() {
        let mut m = MessageCheck::new(1 << 20);
        assert_eq!(
            m.data_frame(OpCode::Continuation, true, b""),
            Err((1002, "continuation frame without a message"))
        );
        let mut m = MessageCheck::new(1 << 20);
        assert_eq!(m.data_frame(OpCode::Binary, false, b"a"), Ok(false));
        assert!(m.data_frame(OpCode::Text, true, b"b").is_err());
        let mut m = MessageCheck::new(1 << 20);
        assert_eq!(m.data_frame(OpCode::Text, false, "é".as_bytes()), Ok(false));
        assert_eq!(m.data_frame(OpCode::Continuation, true, b"!"), Ok(true));
        assert_eq!(m.data_frame(OpCode::Binary, true, b"x"), Ok(true));
    }

    #[test]
    fn message_size_counts_every_fragment() {
        let mut m = MessageCheck::new(10);
        assert_eq!(m.data_frame(OpCode::Binary, false, &[0; 6]), Ok(false));
        assert_eq!(
            m.data_frame(OpCode::Continuation, false, &[0; 5]),
            Err((1009, "message too big"))
        );
        let mut m = MessageCheck::new(10);
        for _ in 0..3 {
            assert_eq!(
                m.data_frame(OpCode::Binary, true, &[0; 10]),
                Ok(true),
                "limit is per message"
            );
        }
    }

    #[test]
    fn utf8_across_fragments() {
        let mut m = MessageCheck::new(100);
        let s = "€".as_bytes();
        assert_eq!(m.data_frame(OpCode::Text, false, &s[..1]), Ok(false));
        assert_eq!(m.data_frame(OpCode::Continuation, true, &s[1..]), Ok(true));
        assert_eq!(
            m.data_frame(OpCode::Text, false, &[0xff]),
            Err((1007, "invalid UTF-8 in a text message"))
        );
    }
}

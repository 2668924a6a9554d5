//! The frame writer: fastwebsockets' frame layout plus the RSV1 bit that marks a compressed
//! message (RFC 7692 §6), which fastwebsockets' own writer cannot set.

use std::io::{self, IoSlice};

use fastwebsockets::{Frame, OpCode, Role};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Header (at most 14 bytes) and payload go out in one vectored write when they can.
pub struct FrameWriter<W> {
    stream: W,
    /// A client masks what it sends (§5.3).
    mask: bool,
    /// After a Close nothing more may be sent (§5.5.1).
    closed: bool,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// `role` is ours: as a client we mask.
    pub fn new(stream: W, role: Role) -> Self {
        Self {
            stream,
            mask: role == Role::Client,
            closed: false,
        }
    }

    /// Write one frame; `rsv1` marks the first frame of a compressed message.
    pub async fn write_frame(&mut self, mut frame: Frame<'_>, rsv1: bool) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "frame after Close",
            ));
        }
        if frame.opcode == OpCode::Close {
            self.closed = true;
        }
        if self.mask {
            frame.mask();
        }
        let mut head = [0u8; 14];
        let n = frame.fmt_head(&mut head);
        if rsv1 {
            head[0] |= 0x40;
        }
        let (head, payload) = (&head[..n], &frame.payload[..]);
        let total = head.len() + payload.len();
        let mut written = self
            .stream
            .write_vectored(&[IoSlice::new(head), IoSlice::new(payload)])
            .await?;
        if written < head.len() {
            self.stream.write_all(&head[written..]).await?;
            written = head.len();
        }
        if written < total {
            self.stream
                .write_all(&payload[written - head.len()..])
                .await?;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        self.stream.flush().await
    }
}

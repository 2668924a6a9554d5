//! Stream plumbing: upgraded connections → split halves → frame reader and writer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use fastwebsockets::{after_handshake_split, Role, WebSocketRead, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A read half that first yields bytes already read past the HTTP request
/// (a client may send its first frame together with the upgrade request).
#[derive(Debug)]
pub struct Rewind<R> {
    prefix: Bytes,
    inner: R,
}

impl<R> Rewind<R> {
    pub fn new(prefix: Bytes, inner: R) -> Self {
        Self { prefix, inner }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Rewind<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// The masking rule of RFC 6455 §5.1, which fastwebsockets does not enforce: every frame
/// from a client is masked, no frame from a server is. Wraps the read half and follows the
/// frame headers in the byte stream (payloads are skipped, not inspected); a frame with the
/// wrong mask bit fails the read with [`MaskViolation`].
#[derive(Debug)]
pub struct MaskCheck<R> {
    inner: R,
    expect_masked: bool,
    /// Header bytes gathered so far (a header may arrive in pieces), or payload left to skip.
    header: [u8; 14],
    header_len: usize,
    payload_left: u64,
}

/// The error inside the `io::Error` a [`MaskCheck`] read fails with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MaskViolation(&'static str);

impl<R> MaskCheck<R> {
    /// `expect_masked`: true when reading from a client (we are the server).
    pub fn new(inner: R, expect_masked: bool) -> Self {
        Self {
            inner,
            expect_masked,
            header: [0; 14],
            header_len: 0,
            payload_left: 0,
        }
    }

    /// Follow frame boundaries through `bytes`, checking each header's mask bit.
    fn scan(&mut self, mut bytes: &[u8]) -> Result<(), MaskViolation> {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= skip;
                bytes = &bytes[skip as usize..];
                continue;
            }
            self.header[self.header_len] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            if self.header_len < 2 {
                continue;
            }
            let masked = self.header[1] & 0x80 != 0;
            let extended = match self.header[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let needed = 2 + extended + if masked { 4 } else { 0 };
            if self.header_len == 2 && masked != self.expect_masked {
                return Err(MaskViolation(if self.expect_masked {
                    "unmasked frame from the client"
                } else {
                    "masked frame from the server"
                }));
            }
            if self.header_len < needed {
                continue;
            }
            self.payload_left = match extended {
                0 => u64::from(self.header[1] & 0x7f),
                2 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                _ => u64::from_be_bytes(self.header[2..10].try_into().unwrap_or_default()),
            };
            self.header_len = 0;
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for MaskCheck<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        this.scan(&buf.filled()[before..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Poll::Ready(Ok(()))
    }
}

/// Is this read error a [`MaskViolation`]?
pub fn mask_violation(e: &io::Error) -> Option<&'static str> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<MaskViolation>())
        .map(|v| v.0)
}

/// An upgraded client connection, split for the two bridge directions.
pub enum ClientStream {
    /// Plain TCP: the socket itself, split without a lock.
    Tcp(Rewind<OwnedReadHalf>, OwnedWriteHalf),
    /// Anything else (TLS): hyper's type-erased stream behind `tokio::io::split`.
    Other(
        tokio::io::ReadHalf<TokioIo<Upgraded>>,
        tokio::io::WriteHalf<TokioIo<Upgraded>>,
    ),
}

impl ClientStream {
    pub fn new(upgraded: Upgraded) -> Self {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let (read, write) = parts.io.into_inner().into_split();
                // An empty leftover still pins hyper's whole read buffer: let it go.
                let early = if parts.read_buf.is_empty() {
                    Bytes::new()
                } else {
                    parts.read_buf
                };
                Self::Tcp(Rewind::new(early, read), write)
            }
            Err(upgraded) => {
                let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                Self::Other(read, write)
            }
        }
    }
}

/// Wrap two halves in a frame reader and writer with our settings: frames over
/// `max_frame_bytes` fail the read (fragments stream through, never reassembled),
/// pongs are ours to send, header and payload go out in one write.
pub fn websocket_halves<R, W>(
    read: R,
    write: W,
    role: Role,
    max_frame_bytes: usize,
) -> (WebSocketRead<MaskCheck<R>>, WebSocketWrite<W>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let read = MaskCheck::new(read, role == Role::Server);
    let (mut read, mut write) = after_handshake_split(read, write, role);
    // fastwebsockets rejects `len >= limit`; ours is inclusive.
    read.set_max_message_size(max_frame_bytes.saturating_add(1));
    read.set_auto_pong(false);
    write.set_writev(true);
    (read, write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(masked: bool, len: usize) -> Vec<u8> {
        let mut f = vec![0x82];
        let mask_bit = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(mask_bit | len as u8),
            126..=65535 => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0x80u8, len));
        f
    }

    #[test]
    fn mask_check_follows_frames_split_anywhere() {
        let stream: Vec<u8> = [
            frame(true, 5),
            frame(true, 300),
            frame(true, 70_000),
            frame(true, 0),
        ]
        .concat();
        for chunk in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let mut m = MaskCheck::new((), true);
            for piece in stream.chunks(chunk) {
                m.scan(piece).unwrap();
            }
            assert_eq!((m.header_len, m.payload_left), (0, 0), "chunk {chunk}");
        }
    }

    #[test]
    fn mask_check_rejects_the_wrong_mask_bit() {
        let stream = [frame(true, 200), frame(false, 3)].concat();
        let mut m = MaskCheck::new((), true);
        assert!(
            m.scan(&stream).is_err(),
            "unmasked client frame after a good one"
        );
        let mut m = MaskCheck::new((), false);
        assert!(m.scan(&frame(false, 10)).is_ok());
        assert!(m.scan(&frame(true, 10)).is_err(), "masked server frame");
    }

    #[tokio::test]
    async fn rewind_yields_the_prefix_first() {
        let mut r = Rewind::new(Bytes::from_static(b"head"), &b"-tail"[..]);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "head-tail");
    }
}

//! Stream plumbing: upgraded connections and HTTP/2 streams → split halves → frame reader and
//! writer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use fastwebsockets::Role;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::Interest;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::h2_stream::{H2Read, H2Write};
use crate::ws::reader::{FrameBudget, FrameReader, ReadReady};
use crate::ws::writer::FrameWriter;

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

/// The early bytes first; then the socket's readiness.
impl<R: ReadReady + Send> ReadReady for Rewind<R> {
    async fn read_ready(&mut self) -> io::Result<()> {
        if self.prefix.is_empty() {
            self.inner.read_ready().await
        } else {
            Ok(())
        }
    }
}

impl ReadReady for OwnedReadHalf {
    async fn read_ready(&mut self) -> io::Result<()> {
        self.readable().await
    }
}

/// A backend byte source the bridge can wait on without holding a buffer, so an idle
/// session keeps no read buffer at all (it is taken when bytes are waiting).
pub trait BackendSource: Unpin + Send {
    /// Wait until a read has something to return (bytes or EOF). Cancel-safe.
    fn ready(&mut self) -> impl std::future::Future<Output = io::Result<()>> + Send;
    /// Append what is waiting to `buf` (up to its spare capacity); `WouldBlock` if
    /// nothing was after all, `Ok(0)` at EOF.
    fn try_read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<usize>;
}

/// A socket's read half: readiness from the reactor, reads straight into the session's buffer.
macro_rules! socket_source {
    ($half:ty) => {
        impl BackendSource for $half {
            async fn ready(&mut self) -> io::Result<()> {
                self.readable().await
            }

            fn try_read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
                // A short read means the socket was drained: forget its readiness now, as tokio's
                // own `poll_read` does, instead of paying a second recv() that only says EAGAIN.
                // (Clearing is tied to the readiness event this read saw; a newer one is kept.)
                let room = buf.capacity() - buf.len();
                let mut got = None;
                let outcome = self.as_ref().try_io(Interest::READABLE, || {
                    let n = self.try_read_buf(buf)?;
                    got = Some(n);
                    if n > 0 && n < room {
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(n)
                    }
                });
                match got {
                    Some(n) => Ok(n),
                    None => outcome,
                }
            }
        }
    };
}

socket_source!(OwnedReadHalf);
socket_source!(tokio::net::unix::OwnedReadHalf);

/// Any other stream (TLS, in-memory): buffered, so readiness is "the buffer has bytes".
impl<R: AsyncRead + Unpin + Send> BackendSource for tokio::io::BufReader<R> {
    async fn ready(&mut self) -> io::Result<()> {
        use tokio::io::AsyncBufReadExt;
        self.fill_buf().await.map(|_| ())
    }

    fn try_read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let waiting = self.buffer();
        let n = waiting.len().min(buf.capacity() - buf.len());
        buf.extend_from_slice(&waiting[..n]);
        Pin::new(self).consume(n);
        Ok(n)
    }
}

/// A client connection after its `101` or `200`, split for the two bridge directions.
pub enum ClientStream {
    /// Plain TCP: the socket itself, split without a lock.
    Tcp(Rewind<OwnedReadHalf>, OwnedWriteHalf),
    /// An HTTP/2 stream (RFC 8441): h2's own halves, no lock and no task between.
    H2(H2Read, H2Write),
    /// Anything else (TLS): hyper's type-erased stream behind `tokio::io::split`.
    Other(
        tokio::io::ReadHalf<TokioIo<Upgraded>>,
        tokio::io::WriteHalf<TokioIo<Upgraded>>,
    ),
}

impl ClientStream {
    /// An HTTP/1.1 connection hyper handed over after the `101`.
    pub fn upgraded(upgraded: Upgraded) -> Self {
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

    /// An extended CONNECT's stream, after its `200` went out.
    pub fn h2(send: h2::SendStream<Bytes>, recv: h2::RecvStream) -> Self {
        let (read, write) = super::h2_stream::split(send, recv);
        Self::H2(read, write)
    }
}

/// Wrap two halves in our frame reader and writer: frames over
/// `max_frame_bytes` fail the read with 1009 (fragments stream through, never reassembled),
/// and header and payload go out in one write.
pub fn websocket_halves<R, W>(
    read: R,
    write: W,
    role: Role,
    max_frame_bytes: usize,
    budget: &Arc<FrameBudget>,
) -> (FrameReader<R>, FrameWriter<W>)
where
    R: ReadReady,
    W: AsyncWrite + Unpin,
{
    (
        FrameReader::new(read, role, max_frame_bytes, budget.clone()),
        FrameWriter::new(write, role),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// An idle plain session's reader holds no read buffer while it waits, and takes one
    /// when bytes come (issue 15: 512 bytes of every idle session).
    #[tokio::test]
    async fn an_idle_reader_over_a_socket_holds_no_buffer() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, _write) = server.into_split();
        let mut reader = FrameReader::new(
            Rewind::new(Bytes::new(), read),
            Role::Server,
            1 << 20,
            FrameBudget::unlimited(),
        );
        // A masked binary frame "hi" (mask 0, so the payload is as sent).
        let frame = [0x82, 0x82, 0, 0, 0, 0, b'h', b'i'];
        for _ in 0..2 {
            client.write_all(&frame).await.unwrap();
            let got = reader.read_frame().await.unwrap();
            assert_eq!(&got.payload[..], b"hi");
            let waited =
                tokio::time::timeout(std::time::Duration::from_millis(50), reader.read_frame())
                    .await;
            assert!(waited.is_err(), "no frame was sent");
            assert!(
                !reader.holds_buffer(),
                "the idle reader gave its buffer back"
            );
        }
    }

    #[tokio::test]
    async fn rewind_yields_the_prefix_first() {
        let mut r = Rewind::new(Bytes::from_static(b"head"), &b"-tail"[..]);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "head-tail");
    }
}

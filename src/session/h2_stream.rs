//! An HTTP/2 stream as a session's client connection (RFC 8441), straight on the `h2` crate:
//! reads take each DATA chunk as it arrives and give its window back as the frame reader
//! consumes it; writes go into the stream's send capacity, which h2 grants only as its send
//! buffer drains to the socket, so a slow client holds the session back instead of growing a
//! buffer. No task and no channel between the session and the connection.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ws::reader::ReadReady;

/// The stream's receiving half: DATA as the client sends it.
pub struct H2Read {
    recv: RecvStream,
    /// The rest of the last DATA chunk, not yet read (its window not yet released).
    chunk: Bytes,
}

/// The stream's sending half: END_STREAM when dropped (or shut down), so a session's end is
/// a clean end of the stream (h2 follows it with RST_STREAM(NO_ERROR) while the client
/// still sends, RFC 9113 §8.1).
pub struct H2Write {
    send: SendStream<Bytes>,
    ended: bool,
}

/// The two halves of an extended CONNECT's stream, after its `200`.
pub fn split(send: SendStream<Bytes>, recv: RecvStream) -> (H2Read, H2Write) {
    (
        H2Read {
            recv,
            chunk: Bytes::new(),
        },
        H2Write { send, ended: false },
    )
}

impl H2Read {
    /// Make sure a chunk is waiting: `Ok(false)` at the end of the stream (END_STREAM, or a
    /// reset with NO_ERROR or CANCEL, which is how clients end a WebSocket stream).
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        while self.chunk.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(false)),
                Some(Ok(data)) => self.chunk = data,
                Some(Err(e)) => {
                    return Poll::Ready(match e.reason() {
                        Some(Reason::NO_ERROR | Reason::CANCEL) => Ok(false),
                        _ => Err(io_error(e)),
                    })
                }
            }
        }
        Poll::Ready(Ok(true))
    }
}

impl AsyncRead for H2Read {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !ready!(self.poll_chunk(cx))? {
            return Poll::Ready(Ok(()));
        }
        let n = self.chunk.len().min(buf.remaining());
        buf.put_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        if self.chunk.is_empty() {
            // An empty slice still pins the buffer it was cut from: an idle session holds none.
            self.chunk = Bytes::new();
        }
        // What the session has taken is the client's to send again (WINDOW_UPDATE as h2 sees
        // fit); what it has not stays counted against the window.
        let _ = self.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

/// Ready once a DATA chunk (or the end) has arrived; the chunk waits in the reader.
impl ReadReady for H2Read {
    async fn read_ready(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_chunk(cx).map_ok(|_| ())).await
    }
}

impl H2Write {
    /// Send capacity for up to `want` bytes: what h2 has assigned to the stream, asked for
    /// only when there is something to send (a reservation held while idle would pin the
    /// connection's window).
    fn poll_capacity(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        loop {
            let capacity = self.send.capacity();
            if capacity > 0 {
                return Poll::Ready(Ok(capacity));
            }
            self.send.reserve_capacity(want);
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(send_error(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }
}

impl AsyncWrite for H2Write {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// A frame's header and payload in one DATA chunk, as much of them as the capacity takes.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_capacity(cx, total))?.min(total);
        let mut data = BytesMut::with_capacity(n);
        for b in bufs {
            let take = (n - data.len()).min(b.len());
            data.extend_from_slice(&b[..take]);
        }
        self.send
            .send_data(data.freeze(), false)
            .map_err(send_error)?;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// What was written is h2's to send: the connection writes it as soon as it runs.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.end();
        Poll::Ready(Ok(()))
    }
}

impl H2Write {
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            // A stream already reset or closed has nothing to end.
            let _ = self.send.send_data(Bytes::new(), true);
        }
    }
}

impl Drop for H2Write {
    fn drop(&mut self) {
        self.end();
    }
}

/// A failed send: the stream was reset (the client's or ours), or the connection broke.
fn send_error(e: h2::Error) -> io::Error {
    match e.reason() {
        Some(_) => io::Error::new(io::ErrorKind::BrokenPipe, e),
        None => io_error(e),
    }
}

/// The connection's own I/O error when that is what it was.
fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 connection failed"))
    } else {
        io::Error::other(e)
    }
}

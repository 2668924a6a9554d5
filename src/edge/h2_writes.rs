//! What h2 writes to a connection, gathered: h2 writes (and flushes) each DATA frame on its
//! own — 16 KiB for a browser, so four TLS writes, four sends and four wake-ups of the peer
//! per 64 KiB message where HTTP/1.1 makes one. Here the frames of one turn of the
//! connection go out in one write.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes gathered at most before they are written whatever h2 says, and what one connection
/// holds for it (taken while it writes, released when written): two 64 KiB messages with
/// their frame headers (one message alone is just over 64 KiB in 16 KiB DATA frames).
const GATHER_BYTES: usize = 128 * 1024;

/// A connection whose writes are gathered until h2 has nothing more to write in this turn.
///
/// h2 flushes after every DATA frame and once more when a turn of the connection has nothing
/// left to send. A flush that follows new writes is answered at once and the connection's
/// task woken to run again; the next flush with nothing new written in between (the end of
/// the turn, after the other ready tasks — sessions adding their own data — have run) writes
/// what was gathered. At most one extra turn of the connection's task per batch; no timer.
/// The first flush (the server's SETTINGS) is written at once.
pub struct GatheredWrites<IO> {
    io: IO,
    gathered: Vec<u8>,
    /// Something was gathered since the last flush.
    fresh: bool,
    /// The first flush (the server's preface, SETTINGS) went out: the client may wait for it.
    started: bool,
}

impl<IO> GatheredWrites<IO> {
    pub fn new(io: IO) -> Self {
        Self {
            io,
            gathered: Vec::new(),
            fresh: false,
            started: false,
        }
    }
}

impl<IO: AsyncWrite + Unpin> GatheredWrites<IO> {
    /// Write everything gathered to the connection; the buffer is let go when empty, so an
    /// idle connection holds none.
    fn poll_write_gathered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut written = 0;
        while written < self.gathered.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.gathered[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.gathered.drain(..written);
                    return Poll::Pending;
                }
            }
        }
        self.gathered = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for GatheredWrites<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for GatheredWrites<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.gathered.len() >= GATHER_BYTES {
            ready!(self.poll_write_gathered(cx))?;
        }
        let room = GATHER_BYTES - self.gathered.len();
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(room - n);
            self.gathered.extend_from_slice(&b[..take]);
            n += take;
        }
        self.fresh |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let fresh = std::mem::take(&mut self.fresh);
        if fresh && self.started && self.gathered.len() < GATHER_BYTES {
            // More may come in this turn: run the connection once more before writing.
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_write_gathered(cx))?;
        self.started = true;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_gathered(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

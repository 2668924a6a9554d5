//! permessage-deflate (RFC 7692) on the client side, with flate2 directly (not the gateway's
//! codec): for tests/compression.rs and the compressed session over HTTP/2 in tests/http2.rs.

use tokio::io::{AsyncRead, AsyncWrite};

use super::frames::{frame_bits, read_message, RawWs};

/// The client's compressor: raw deflate, sync flush, tail removed (RFC 7692 §7.2.1).
pub struct ClientDeflate(flate2::Compress);

impl Default for ClientDeflate {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientDeflate {
    pub fn new() -> Self {
        Self(flate2::Compress::new(flate2::Compression::default(), false))
    }

    pub fn piece(&mut self, data: &[u8], last: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 1024);
        let before = self.0.total_in();
        loop {
            let done = (self.0.total_in() - before) as usize;
            self.0
                .compress_vec(&data[done..], &mut out, flate2::FlushCompress::Sync)
                .unwrap();
            if (self.0.total_in() - before) as usize == data.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(64 * 1024);
        }
        if last {
            assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
            out.truncate(out.len() - 4);
        }
        out
    }
}

/// The client's decompressor, kept across messages (the gateway may take over its context).
pub struct ClientInflate(flate2::Decompress);

impl Default for ClientInflate {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientInflate {
    pub fn new() -> Self {
        Self(flate2::Decompress::new(false))
    }

    pub fn message(&mut self, payload: &[u8]) -> Vec<u8> {
        let input = [payload, &[0, 0, 0xff, 0xff]].concat();
        let mut out = Vec::with_capacity(input.len() * 8 + 1024);
        let before = self.0.total_in();
        loop {
            let done = (self.0.total_in() - before) as usize;
            self.0
                .decompress_vec(&input[done..], &mut out, flate2::FlushDecompress::Sync)
                .expect("the gateway's deflate stream decodes");
            if (self.0.total_in() - before) as usize == input.len() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(out.capacity().max(1024));
        }
    }
}

/// Read compressed or plain messages until `n` inflated bytes came back.
pub async fn read_echo<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut RawWs<S>,
    inflate: &mut ClientInflate,
    n: usize,
) -> (Vec<u8>, usize) {
    let (mut out, mut compressed) = (Vec::new(), 0);
    while out.len() < n {
        let (first, payload) = read_message(ws).await;
        if first & frame_bits::RSV1 != 0 {
            compressed += 1;
            out.extend_from_slice(&inflate.message(&payload));
        } else {
            out.extend_from_slice(&payload);
        }
    }
    (out, compressed)
}

//! The permessage-deflate codec (RFC 7692 §7.2): streaming inflate in bounded chunks, deflate
//! with the sync-flush tail removed, context kept or dropped per the agreement.
//!
//! Memory is the design constraint: a compressor with a 15-bit window holds about 260 KiB and a
//! decompressor about 40 KiB (zlib's layout, which zlib-rs keeps). Both are created on the
//! first compressed message in their direction, and with no context takeover they are dropped
//! after every message, so an idle session holds none. Inflated bytes come out in pieces of at
//! most `CHUNK`, so a compression bomb is stopped by the caller's size check after at most
//! `max_message_bytes + CHUNK` bytes were produced, never materialised whole.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::close_code;
use super::extensions::{Agreement, DeflatePolicy};
use super::frames::Violation;

/// The most inflated bytes handed out at once.
pub const CHUNK: usize = 16 * 1024;

/// What a sync flush ends with: removed after each compressed message, put back before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The receiving half: inflates one peer's compressed messages.
pub struct Inflater {
    window_bits: u8,
    keep_context: bool,
    /// `None` between messages when the context is not kept, and before the first message.
    state: Option<Box<Decompress>>,
}

impl Inflater {
    /// `window_bits`: the peer's LZ77 window (8..=15; 8 is decoded with 9, which is a superset).
    /// `keep_context`: false when the peer agreed to no context takeover.
    pub fn new(window_bits: u8, keep_context: bool) -> Self {
        Self {
            window_bits: window_bits.clamp(9, 15),
            keep_context,
            state: None,
        }
    }

    /// Whether a decompressor is allocated now (memory tests and metrics).
    pub fn is_allocated(&self) -> bool {
        self.state.is_some()
    }

    /// Inflate one frame's payload; `fin` when the frame ends its message. Pull the
    /// output with `Inflating::next_chunk`.
    pub fn frame<'a>(&'a mut self, payload: &'a [u8], fin: bool) -> Inflating<'a> {
        Inflating {
            inflater: self,
            input: payload,
            tail: if fin { TAIL.len() } else { 0 },
            fin,
            out: vec![0; (payload.len().saturating_mul(4) + 64).min(CHUNK)],
            produced: 0,
            full: false,
            ended: false,
        }
    }

    fn end_message(&mut self, stream_ended: bool) {
        if !self.keep_context {
            self.state = None;
        } else if stream_ended {
            // The peer closed its deflate stream (BFINAL): the next message starts a new one.
            if let Some(d) = self.state.as_mut() {
                d.reset(false);
            }
        }
    }
}

/// One frame being inflated.
pub struct Inflating<'a> {
    inflater: &'a mut Inflater,
    input: &'a [u8],
    /// Bytes of `TAIL` still to feed after the payload (message end only).
    tail: usize,
    fin: bool,
    /// Output space: small for a small frame, `CHUNK` once a frame fills it.
    out: Vec<u8>,
    produced: usize,
    /// The last call filled `out`: more output may be pending without more input.
    full: bool,
    /// The peer's deflate stream ended (BFINAL): anything after it is ignored.
    ended: bool,
}

impl Inflating<'_> {
    /// The next piece of inflated bytes (at most `CHUNK`); `None` once the frame is used up.
    /// Corrupt data is a 1007.
    pub fn next_chunk(&mut self) -> Result<Option<&[u8]>, Violation> {
        loop {
            let has_input = !self.ended && (!self.input.is_empty() || self.tail > 0);
            if !has_input && !self.full {
                if self.fin {
                    self.fin = false;
                    self.inflater.end_message(self.ended);
                }
                return Ok(None);
            }
            let bits = self.inflater.window_bits;
            let d = self
                .inflater
                .state
                .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, bits)));
            if self.full && self.out.len() < CHUNK {
                self.out.resize(CHUNK, 0);
            }
            let src = if self.ended {
                &[][..]
            } else if !self.input.is_empty() {
                self.input
            } else {
                &TAIL[TAIL.len() - self.tail..]
            };
            let (in_before, out_before) = (d.total_in(), d.total_out());
            let status = d
                .decompress(src, &mut self.out, FlushDecompress::Sync)
                .map_err(|_| bad_data())?;
            let consumed = (d.total_in() - in_before) as usize;
            let produced = (d.total_out() - out_before) as usize;
            if !self.input.is_empty() {
                self.input = &self.input[consumed..];
            } else if !self.ended {
                self.tail -= consumed;
            }
            self.full = produced == self.out.len();
            self.produced = produced;
            if status == Status::StreamEnd {
                self.ended = true;
                self.full = false;
            }
            if produced > 0 {
                return Ok(Some(&self.out[..self.produced]));
            }
            if consumed == 0 && !src.is_empty() && !self.ended {
                // No progress with input left: the data cannot be decoded.
                return Err(bad_data());
            }
        }
    }
}

fn bad_data() -> Violation {
    (close_code::INVALID_PAYLOAD, "invalid compressed data")
}

/// The sending half: compresses messages for one peer.
pub struct Deflater {
    level: u32,
    window_bits: u8,
    keep_context: bool,
    state: Option<Box<Compress>>,
    /// Whole messages still to send plain without trying, after attempts that saved nothing.
    skip: u8,
    /// The next skip: doubles (to 64) with each fruitless attempt, back to 0 on a saving one.
    backoff: u8,
}

impl Deflater {
    /// `window_bits`: the most the peer accepts (9..=15). `keep_context`: false with
    /// no context takeover (or to save memory: resetting is always safe for the sender).
    pub fn new(level: u8, window_bits: u8, keep_context: bool) -> Self {
        Self {
            level: u32::from(level.min(9)),
            window_bits: window_bits.clamp(9, 15),
            keep_context,
            state: None,
            skip: 0,
            backoff: 0,
        }
    }

    pub fn is_allocated(&self) -> bool {
        self.state.is_some()
    }

    /// Append the compressed form of `input`, one piece of a message, to `out`; each piece
    /// ends on a byte boundary (sync flush). At the message's end (`fin`) the flush's
    /// 00 00 ff ff tail is removed, as RFC 7692 §7.2.1 asks.
    pub fn compress(&mut self, input: &[u8], fin: bool, out: &mut Vec<u8>) {
        if input.is_empty() {
            // zlib emits nothing for a flush with no new input, and the receiver's appended
            // tail needs the header bits of an empty stored block before it: one 0x00 byte
            // (§7.2.3.6). Our stream is byte-aligned after every piece, so it fits anywhere.
            if fin {
                out.push(0x00);
                self.end_message();
            }
            return;
        }
        let (level, bits) = (self.level, self.window_bits);
        let c = self.state.get_or_insert_with(|| {
            Box::new(Compress::new_with_window_bits(
                Compression::new(level),
                false,
                bits,
            ))
        });
        let start = out.len();
        let mut pos = 0;
        loop {
            // Stored blocks cost 5 bytes per 64 KiB: this room always suffices for one pass.
            let room = input.len() - pos + (input.len() - pos) / 1024 + 64;
            if out.capacity() - out.len() < room {
                out.reserve(room);
            }
            let before = c.total_in();
            // Only a broken stream state can fail, and ours is never shared: treat as done.
            if c.compress_vec(&input[pos..], out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            pos += (c.total_in() - before) as usize;
            if pos == input.len() && out.len() < out.capacity() {
                break;
            }
        }
        if fin {
            if out[start..].ends_with(&TAIL) {
                out.truncate(out.len() - TAIL.len());
            }
            self.end_message();
        }
    }

    /// After a message was compressed but sent uncompressed: the peer's window lacks it,
    /// so ours must forget it too (a reset sender only refers to what the peer has).
    pub fn forget(&mut self) {
        match (&mut self.state, self.keep_context) {
            (Some(c), true) => c.reset(),
            _ => self.state = None,
        }
    }

    fn end_message(&mut self) {
        if !self.keep_context {
            self.state = None;
        }
    }
}

/// Messages shorter than this go out uncompressed: deflate cannot save anything worth a
/// compressor's time on them.
pub const MIN_COMPRESS: usize = 32;

impl Deflater {
    /// One whole message, compressed only if that makes it smaller (RFC 7692 §6.1 lets a
    /// sender choose per message); `None`: send it as it is. A stream that does not
    /// compress (video, TLS, already compressed data) is tried less and less often: a
    /// fruitless attempt costs 6-10 s of CPU per GB (docs/compression.md).
    pub fn compress_message(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        if payload.len() < MIN_COMPRESS {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        let mut out = Vec::new();
        self.compress(payload, true, &mut out);
        if out.len() < payload.len() {
            self.backoff = 0;
            return Some(out);
        }
        self.forget();
        self.backoff = (self.backoff.saturating_mul(2)).clamp(1, 64);
        self.skip = self.backoff;
        None
    }
}

/// One hop's codec settings, from the gateway's side of that hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopDeflate {
    pub level: u8,
    pub send_window_bits: u8,
    pub send_keep_context: bool,
    pub recv_window_bits: u8,
    pub recv_keep_context: bool,
}

impl HopDeflate {
    /// The client hop: the gateway answered the offer (it is the "server").
    pub fn server(a: &Agreement, policy: &DeflatePolicy) -> Self {
        Self {
            level: policy.level,
            send_window_bits: a.server_max_window_bits,
            send_keep_context: !a.server_no_context_takeover && policy.server_context_takeover,
            recv_window_bits: a.client_max_window_bits,
            recv_keep_context: !a.client_no_context_takeover,
        }
    }

    /// The backend hop: the gateway made the offer (it is the "client").
    pub fn client(a: &Agreement, policy: &DeflatePolicy) -> Self {
        Self {
            level: policy.level,
            send_window_bits: a.client_max_window_bits,
            send_keep_context: !a.client_no_context_takeover && policy.server_context_takeover,
            recv_window_bits: a.server_max_window_bits,
            recv_keep_context: !a.server_no_context_takeover,
        }
    }

    pub fn deflater(&self) -> Deflater {
        Deflater::new(self.level, self.send_window_bits, self.send_keep_context)
    }

    pub fn inflater(&self) -> Inflater {
        Inflater::new(self.recv_window_bits, self.recv_keep_context)
    }
}

/// Compression on the two hops of a relay, and in which directions compressed frames may
/// pass through unchanged: when the receiving peer can decode the sending peer's stream
/// (its window no larger, and reset wherever the receiver expects a reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayDeflate {
    pub client: Option<HopDeflate>,
    pub backend: Option<HopDeflate>,
    pub client_to_backend_as_is: bool,
    pub backend_to_client_as_is: bool,
}

impl RelayDeflate {
    pub fn new(
        client: Option<Agreement>,
        backend: Option<Agreement>,
        policy: Option<DeflatePolicy>,
    ) -> Self {
        let Some(policy) = policy else {
            return Self::default();
        };
        let (up, down) = match (&client, &backend) {
            (Some(c), Some(b)) => (
                c.client_max_window_bits <= b.client_max_window_bits
                    && (c.client_no_context_takeover || !b.client_no_context_takeover),
                b.server_max_window_bits <= c.server_max_window_bits
                    && (b.server_no_context_takeover || !c.server_no_context_takeover),
            ),
            _ => (false, false),
        };
        Self {
            client: client.map(|a| HopDeflate::server(&a, &policy)),
            backend: backend.map(|a| HopDeflate::client(&a, &policy)),
            client_to_backend_as_is: up,
            backend_to_client_as_is: down,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inflate_all(inf: &mut Inflater, frames: &[(&[u8], bool)]) -> Result<Vec<u8>, Violation> {
        let mut all = Vec::new();
        for (payload, fin) in frames {
            let mut f = inf.frame(payload, *fin);
            while let Some(chunk) = f.next_chunk()? {
                assert!(chunk.len() <= CHUNK);
                all.extend_from_slice(chunk);
            }
        }
        Ok(all)
    }

    /// Pieces of one message, the last one ending it, concatenated.
    fn def_pieces(def: &mut Deflater, pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            def.compress(p, i + 1 == pieces.len(), &mut out);
        }
        out
    }

    fn text(n: usize) -> Vec<u8> {
        let words = [
            "alpha ",
            "beta ",
            "gamma ",
            "{\"id\":42,\"ok\":true} ",
            "delta\n",
        ];
        words
            .iter()
            .cycle()
            .flat_map(|w| w.bytes())
            .take(n)
            .collect()
    }

    #[test]
    fn rfc_7692_examples() {
        // §7.2.3.1: "Hello" compressed, one frame.
        let mut inf = Inflater::new(15, true);
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate_all(&mut inf, &[(&hello, true)]).unwrap(), b"Hello");
        // §7.2.3.2: the second "Hello" refers back to the first (context takeover).
        let again = [0xf2, 0x00, 0x11, 0x00, 0x00];
        assert_eq!(inflate_all(&mut inf, &[(&again, true)]).unwrap(), b"Hello");
        // §7.2.3.1, fragmented: the compressed bytes split across frames.
        let mut inf = Inflater::new(15, false);
        let got = inflate_all(&mut inf, &[(&hello[..3], false), (&hello[3..], true)]).unwrap();
        assert_eq!(got, b"Hello");
        assert!(
            !inf.is_allocated(),
            "no context takeover: freed after the message"
        );
        // §7.2.3.6: an empty message is one 0x00 byte.
        assert_eq!(inflate_all(&mut inf, &[(&[0x00], true)]).unwrap(), b"");
    }

    #[test]
    fn round_trip_with_and_without_context() {
        for keep in [true, false] {
            for bits in [9, 12, 15] {
                let mut def = Deflater::new(6, bits, keep);
                let mut inf = Inflater::new(bits, keep);
                for n in [0, 1, 100, 5_000, 200_000] {
                    let msg = text(n);
                    let mut wire = Vec::new();
                    def.compress(&msg, true, &mut wire);
                    assert!(!wire.ends_with(&TAIL));
                    if n > 1000 {
                        assert!(
                            wire.len() < n / 4,
                            "text compresses ({n} -> {})",
                            wire.len()
                        );
                    }
                    assert_eq!(inflate_all(&mut inf, &[(&wire, true)]).unwrap(), msg);
                    assert_eq!(def.is_allocated(), keep && n > 0);
                    assert_eq!(inf.is_allocated(), keep);
                }
            }
        }
    }

    #[test]
    fn fragments_compress_and_inflate_piecewise() {
        let msg = text(50_000);
        let mut def = Deflater::new(1, 15, true);
        // Regression: an empty last piece after a flushed one was sent empty, so the
        // receiver's appended 00 00 ff ff lacked its stored-block header ("invalid stored
        // block lengths" in Python's zlib, behind a recompressing relay).
        let wire = def_pieces(&mut def, &[&msg[..5000], b""]);
        let mut inf = Inflater::new(15, true);
        assert_eq!(
            inflate_all(&mut inf, &[(&wire, true)]).unwrap(),
            &msg[..5000]
        );
        let mut frames = Vec::new();
        let pieces: Vec<&[u8]> = msg.chunks(7_000).collect();
        for (i, p) in pieces.iter().enumerate() {
            let mut wire = Vec::new();
            def.compress(p, i + 1 == pieces.len(), &mut wire);
            frames.push((wire, i + 1 == pieces.len()));
        }
        let frames: Vec<(&[u8], bool)> = frames.iter().map(|(w, f)| (&w[..], *f)).collect();
        assert_eq!(inflate_all(&mut inf, &frames).unwrap(), msg);
        // A forgotten context still decodes: the receiver's window is a superset.
        def.forget();
        let mut wire = Vec::new();
        def.compress(&msg[..1000], true, &mut wire);
        assert_eq!(
            inflate_all(&mut inf, &[(&wire, true)]).unwrap(),
            &msg[..1000]
        );
    }

    #[test]
    fn a_bomb_comes_out_in_bounded_chunks() {
        // 64 MiB of zeros is about 64 KiB compressed.
        let mut def = Deflater::new(9, 15, false);
        let mut wire = Vec::new();
        let zeros = vec![0u8; 1 << 20];
        for i in 0..64 {
            def.compress(&zeros, i == 63, &mut wire);
        }
        assert!(wire.len() < 100_000);
        let mut inf = Inflater::new(15, false);
        let mut f = inf.frame(&wire, true);
        let (mut seen, limit) = (0usize, 1 << 20);
        while let Some(chunk) = f.next_chunk().unwrap() {
            assert!(chunk.len() <= CHUNK);
            seen += chunk.len();
            if seen > limit {
                break;
            }
        }
        assert!(
            seen <= limit + CHUNK,
            "stopped within one chunk of the limit"
        );
    }

    #[test]
    fn pass_through_only_where_the_receiver_can_decode() {
        use crate::ws::extensions::{check_answer, negotiate};
        let policy = DeflatePolicy::default();
        let client = |offer: &str| negotiate([offer], &policy).unwrap();
        let backend = |answer: &str, c| check_answer([answer], c).unwrap();
        // Same defaults on both hops: both directions pass through.
        let c = client("permessage-deflate; client_max_window_bits");
        let r = RelayDeflate::new(Some(c), backend("permessage-deflate", &c), Some(policy));
        assert!(r.client_to_backend_as_is && r.backend_to_client_as_is);
        // Python websockets' defaults: 12-bit windows. Its compressor fits the client's
        // decoder; the client's 15-bit compressor does not fit its decoder.
        let b = backend(
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
            &c,
        );
        let r = RelayDeflate::new(Some(c), b, Some(policy));
        assert!(!r.client_to_backend_as_is && r.backend_to_client_as_is);
        // The backend wants the client to reset between messages, the client did not agree.
        let b = backend("permessage-deflate; client_no_context_takeover", &c);
        let r = RelayDeflate::new(Some(c), b, Some(policy));
        assert!(!r.client_to_backend_as_is && r.backend_to_client_as_is);
        // The client wants the server to reset: the offer says so, the backend must agree.
        let c = client("permessage-deflate; server_no_context_takeover");
        assert!(check_answer(["permessage-deflate"], &c).is_err());
        let b = backend("permessage-deflate; server_no_context_takeover", &c);
        let r = RelayDeflate::new(Some(c), b, Some(policy));
        assert!(r.client_to_backend_as_is && r.backend_to_client_as_is);
        // The backend declined: the gateway inflates and deflates.
        let r = RelayDeflate::new(Some(c), None, Some(policy));
        assert!(!r.client_to_backend_as_is && !r.backend_to_client_as_is);
        assert!(r.client.is_some() && r.backend.is_none());
    }

    #[test]
    fn incompressible_streams_are_tried_less_often() {
        let mut def = Deflater::new(1, 15, true);
        let mut x = 1u32;
        let mut noise = || {
            (0..4096)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect::<Vec<u8>>()
        };
        let tried = |def: &Deflater| def.skip;
        assert!(def.compress_message(&noise()).is_none());
        assert_eq!(tried(&def), 1);
        for _ in 0..200 {
            assert!(def.compress_message(&noise()).is_none());
        }
        assert!(def.skip <= 64 && def.backoff == 64);
        // Text again: compressed as soon as the next attempt comes.
        let msg = text(4096);
        let sent = (0..70).find_map(|_| def.compress_message(&msg));
        assert!(sent.is_some());
        assert_eq!(def.backoff, 0);
    }

    /// Regression (Autobahn 12.1.13, 12.1.16: 256- and 1024-byte fragments of a compressed
    /// message): a non-final frame whose output exactly filled the buffer made one more call
    /// with no input, which produced nothing and was taken for undecodable data (1007).
    #[test]
    fn output_that_exactly_fills_a_chunk_is_not_an_error() {
        let mut x = 7u32;
        let noise: Vec<u8> = (0..CHUNK)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let mut def = Deflater::new(1, 15, true);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        def.compress(&noise, false, &mut a);
        def.compress(b"", true, &mut b);
        let mut inf = Inflater::new(15, true);
        let got = inflate_all(&mut inf, &[(&a, false), (&b, true)]).unwrap();
        assert_eq!(got, noise);
    }

    #[test]
    fn corrupt_data_is_1007() {
        let mut inf = Inflater::new(15, true);
        // BTYPE 11 is reserved.
        let got = inflate_all(&mut inf, &[(&[0xff, 0xff, 0xff], true)]);
        assert_eq!(got.unwrap_err().0, 1007);
    }
}

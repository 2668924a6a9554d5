//! Just enough of a PNG decoder to read a browser's screenshot back: 8-bit RGB or RGBA,
//! not interlaced (what Chromium writes), inflated with the gateway's own `flate2`.

use std::io::Read;

/// A decoded image: `width` x `height` pixels, RGB.
pub struct Png {
    pub width: usize,
    pub height: usize,
    rgb: Vec<[u8; 3]>,
}

impl Png {
    /// Decode `data`; panics with the reason when it is not a PNG this reader knows.
    pub fn decode(data: &[u8]) -> Png {
        assert!(
            data.starts_with(b"\x89PNG\r\n\x1a\n"),
            "not a PNG: starts {:02x?}",
            &data[..data.len().min(8)]
        );
        let mut at = 8;
        let (mut width, mut height, mut channels) = (0, 0, 0);
        let mut idat = Vec::new();
        while at + 8 <= data.len() {
            let len = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            let kind = &data[at + 4..at + 8];
            let body = &data[at + 8..at + 8 + len];
            match kind {
                b"IHDR" => {
                    width = u32::from_be_bytes(body[0..4].try_into().unwrap()) as usize;
                    height = u32::from_be_bytes(body[4..8].try_into().unwrap()) as usize;
                    assert_eq!(body[8], 8, "bit depth");
                    channels = match body[9] {
                        2 => 3,
                        6 => 4,
                        other => panic!("colour type {other}"),
                    };
                    assert_eq!(body[12], 0, "interlaced");
                }
                b"IDAT" => idat.extend_from_slice(body),
                b"IEND" => break,
                _ => {}
            }
            at += 12 + len;
        }
        assert!(width > 0 && height > 0, "no IHDR");
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .expect("IDAT inflates");
        let stride = width * channels;
        assert_eq!(raw.len(), height * (stride + 1), "image data size");
        let mut rows = vec![0u8; height * stride];
        for y in 0..height {
            let filter = raw[y * (stride + 1)];
            let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
            let (before, now) = rows.split_at_mut(y * stride);
            let up = (y > 0).then(|| &before[(y - 1) * stride..]);
            let out = &mut now[..stride];
            for i in 0..stride {
                let a = if i >= channels { out[i - channels] } else { 0 };
                let b = up.map_or(0, |u| u[i]);
                let c = match up {
                    Some(u) if i >= channels => u[i - channels],
                    _ => 0,
                };
                let predicted = match filter {
                    0 => 0,
                    1 => a,
                    2 => b,
                    3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                    4 => paeth(a, b, c),
                    other => panic!("filter {other}"),
                };
                out[i] = line[i].wrapping_add(predicted);
            }
        }
        let rgb = rows
            .chunks_exact(channels)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        Png { width, height, rgb }
    }

    /// The pixel at `x`, `y`.
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        self.rgb[y * self.width + x]
    }

    /// How many different colours the image has (a uniform image has one).
    pub fn colours(&self) -> usize {
        let mut seen: Vec<[u8; 3]> = self.rgb.clone();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    let (pa, pb, pc) = (
        (p - i16::from(a)).abs(),
        (p - i16::from(b)).abs(),
        (p - i16::from(c)).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

//! What permessage-deflate costs the gateway: CPU seconds per GB compressed and inflated
//! (text-like and random payloads, a few message sizes) and memory per session that holds a
//! compressor and decompressor (context takeover) or none (no context takeover).
//!
//! Run: `cargo run --release --example compression_cost` (about a minute on one core).
//! CPU is this thread's own on-CPU time (/proc/thread-self/schedstat), so other load on the
//! machine does not inflate it; memory is this process's RSS growth over 2,000 sessions.

use std::hint::black_box;

use wsgate::ws::deflate::{Deflater, Inflater};

/// Nanoseconds this thread has run.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// JSON-ish lines with varying numbers: what chat, tickers and terminals send.
fn text_like(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 128);
    let mut i = 0u64;
    while out.len() < n {
        let line = format!(
            "{{\"seq\":{i},\"user\":\"user{}\",\"price\":{}.{:02},\"msg\":\"hello from the gateway\"}}\n",
            i % 97,
            1000 + (i * 7919) % 5000,
            i % 100
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(n);
    out
}

fn random(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn main() {
    const TOTAL: usize = 256 << 20;
    println!("CPU per GB of message bytes (one core), level 1, 15-bit windows, context takeover");
    println!(
        "{:<8} {:>7} {:>12} {:>12} {:>10}",
        "payload", "msg", "deflate s/GB", "inflate s/GB", "ratio"
    );
    for (name, make) in [
        ("text", text_like as fn(usize) -> Vec<u8>),
        ("random", random),
    ] {
        for size in [1024, 16 * 1024, 64 * 1024] {
            let data = make(TOTAL.min(64 << 20));
            let msgs: Vec<&[u8]> = data.chunks(size).collect();
            let mut def = Deflater::new(1, 15, true);
            let mut inf = Inflater::new(15, true);
            let (mut raw, mut wire, mut d_ns, mut i_ns) = (0usize, 0usize, 0u64, 0u64);
            while raw < TOTAL {
                // Timed per pass, not per message: reading the clock costs microseconds.
                let t = cpu_ns();
                let wires: Vec<Option<Vec<u8>>> =
                    msgs.iter().map(|m| def.compress_message(m)).collect();
                d_ns += cpu_ns() - t;
                let t = cpu_ns();
                for w in wires.iter().flatten() {
                    let mut f = inf.frame(w, true);
                    while let Some(chunk) = f.next_chunk().expect("our own stream") {
                        black_box(chunk);
                    }
                }
                i_ns += cpu_ns() - t;
                for (m, w) in msgs.iter().zip(&wires) {
                    raw += m.len();
                    wire += w.as_ref().map_or(m.len(), Vec::len);
                }
            }
            let per_gb = |ns: u64| ns as f64 / 1e9 / (raw as f64 / 1e9);
            println!(
                "{name:<8} {:>6}K {:>12.2} {:>12.2} {:>10.3}",
                size / 1024,
                per_gb(d_ns),
                per_gb(i_ns),
                wire as f64 / raw as f64
            );
        }
    }

    println!();
    println!("Memory per session after one 64 KiB text message each way (windows filled) (RSS growth / sessions)");
    const SESSIONS: usize = 2000;
    let msg = text_like(64 * 1024);
    for (label, keep) in [("no context takeover", false), ("context takeover", true)] {
        let before = rss_bytes();
        let mut sessions = Vec::with_capacity(SESSIONS);
        for _ in 0..SESSIONS {
            let mut def = Deflater::new(1, 15, keep);
            let mut inf = Inflater::new(15, keep);
            let wire = def.compress_message(&msg).expect("text compresses");
            let mut f = inf.frame(&wire, true);
            while let Some(chunk) = f.next_chunk().expect("our own stream") {
                black_box(chunk);
            }
            drop(f);
            sessions.push((def, inf));
        }
        let grown = rss_bytes().saturating_sub(before);
        println!(
            "{label:<20} {:>8.1} KiB per session (compressor held: {}, decompressor held: {})",
            grown as f64 / 1024.0 / SESSIONS as f64,
            sessions[0].0.is_allocated(),
            sessions[0].1.is_allocated()
        );
        drop(sessions);
    }
}

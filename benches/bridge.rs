//! The TCP bridge's hot path over in-memory streams: `bridge::run` between a WebSocket client
//! (`io::websocket_halves` over a `tokio::io::duplex` pair) and a byte backend (another duplex
//! pair with an in-task echo). No sockets, no TLS, no HTTP: what is measured is frame parsing,
//! unmasking, the two pumps, framing the backend's bytes and the echo, all on one thread.
//!
//! - `bridge/throughput/64KiB`: the client streams 64 KiB binary messages (pre-built, masked)
//!   while reading the echo; one iteration = one 64 KiB message there and back, so the
//!   reported rate is echoed payload per second (every byte crosses the bridge twice).
//! - `bridge/round_trip/32B`: one 32-byte message at a time, sent and read back; the time per
//!   iteration is the round trip.
//!
//! The backend's read half reaches the bridge through a `BufReader` of `buffer_bytes`, the
//! way the gateway reads a backend stream that is not a plain TCP socket.
//!
//! The settings are the embedded default config's (64 KiB backend reads, 16 MiB frames,
//! binary messages, keepalive every 20 s). Each `iter_custom` call runs one fresh session,
//! times only the message loop, then closes it with a 1000 Close and waits for the bridge to
//! finish; every wait is under a timeout, so a stuck bridge fails the run instead of hanging.
//!
//! `cargo bench --bench bridge -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fastwebsockets::Role;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf,
};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use wsgate::config::Config;
use wsgate::metrics::{Protocol, SessionMetrics};
use wsgate::session::bridge::{self, Outcome};
use wsgate::session::registry::SessionControl;
use wsgate::session::settings::SessionSettings;

/// In-memory pipe capacity per direction (a loopback socket buffers more; this keeps both
/// pumps and the echo taking turns on realistic chunk sizes).
const PIPE_BYTES: usize = 256 * 1024;
/// No single wait in a benchmark may take longer than this.
const STEP_LIMIT: Duration = Duration::from_secs(30);
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One client frame as it goes on the wire: FIN, `opcode`, masked with [`MASK`].
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    f
}

/// A deterministic, non-repeating-per-position payload.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// The client's reader: unmasked server frames, header by header.
struct ServerFrames<R> {
    read: BufReader<R>,
}

impl<R: AsyncRead + Unpin> ServerFrames<R> {
    /// Read one frame into `payload` (cleared first); returns its opcode.
    async fn next(&mut self, payload: &mut Vec<u8>) -> std::io::Result<u8> {
        let mut head = [0u8; 2];
        self.read.read_exact(&mut head).await?;
        assert_eq!(head[0] & 0x80, 0x80, "the gateway sends whole frames");
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7f {
            126 => usize::from(self.read.read_u16().await?),
            127 => usize::try_from(self.read.read_u64().await?).expect("frame fits in memory"),
            n => usize::from(n),
        };
        payload.clear();
        payload.resize(len, 0);
        self.read.read_exact(payload).await?;
        Ok(head[0] & 0x0f)
    }

    /// Read binary frames until `total` payload bytes arrived.
    async fn binary_bytes(&mut self, total: usize, scratch: &mut Vec<u8>) {
        let mut got = 0;
        while got < total {
            let op = self.next(scratch).await.expect("reading the echo");
            assert_eq!(op, 0x2, "expected a binary frame, got opcode {op:#x}");
            got += scratch.len();
        }
        assert_eq!(got, total, "the echo holds exactly what was sent");
    }
}

/// One bridged session: the client's two halves and the bridge task.
struct Session {
    write: WriteHalf<DuplexStream>,
    frames: ServerFrames<ReadHalf<DuplexStream>>,
    bridge: JoinHandle<Outcome>,
    echo: JoinHandle<()>,
}

/// The gateway's defaults, from the embedded config.
fn default_settings() -> (SessionSettings, usize) {
    let config = Config::embedded_default();
    let route = &config.routes[0];
    let settings = SessionSettings {
        buffer_bytes: config.buffer_bytes,
        max_frame_bytes: config.max_frame_bytes(route),
        max_message_bytes: config.max_message_bytes(route),
        message_type: route.message_type,
        watch_backlog_bytes: config.watch_backlog_bytes(route),
        ping_interval: config.ping_interval,
        pong_timeout: config.pong_timeout,
        close_grace: config.close_grace,
        backend_stall: config.backend_stall,
        bandwidth_bytes_per_sec: None,
        compression: None,
        udp: Default::default(),
        record: None,
        resume: None,
    };
    (settings, config.max_frame_bytes(route))
}

/// Start a session; call inside the runtime.
fn open(config: &SessionSettings, max_frame_bytes: usize) -> Session {
    let (client, gateway_client_side) = tokio::io::duplex(PIPE_BYTES);
    let (gateway_backend_side, backend) = tokio::io::duplex(PIPE_BYTES);

    // The backend: echo everything, then end its side when the gateway half-closes.
    let echo = tokio::spawn(async move {
        let (r, mut w) = tokio::io::split(backend);
        let mut r = BufReader::with_capacity(64 * 1024, r);
        let _ = tokio::io::copy_buf(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    });

    let (cr, cw) = tokio::io::split(gateway_client_side);
    let (ws_read, ws_write) = wsgate::session::io::websocket_halves(
        cr,
        cw,
        Role::Server,
        max_frame_bytes,
        &wsgate::ws::reader::FrameBudget::unlimited(),
    );
    let (br, bw) = tokio::io::split(gateway_backend_side);
    // An in-memory backend is read through a buffer, as the gateway reads any backend
    // stream that is not a plain TCP socket.
    let br = BufReader::with_capacity(config.buffer_bytes, br);
    let config = config.clone();
    let bridge = tokio::spawn(async move {
        // No metrics recorder is installed: every handle is a no-op, as with metrics off.
        let metrics = SessionMetrics::start("bench".into(), Protocol::Http1);
        let hard_stop = CancellationToken::new();
        let control = SessionControl::new(&CancellationToken::new());
        // Opened and unwatched, as every bridged session's.
        let watch = wsgate::record::watch::WatchPoint::default();
        watch.open(&"bench".into(), 0);
        bridge::run(
            ws_read,
            ws_write,
            br,
            bw,
            &config,
            None,
            &metrics,
            &control,
            &hard_stop,
            wsgate::record::Taps::default(),
            &watch,
        )
        .await
    });

    let (read, write) = tokio::io::split(client);
    Session {
        write,
        frames: ServerFrames {
            read: BufReader::with_capacity(64 * 1024, read),
        },
        bridge,
        echo,
    }
}

impl Session {
    /// Close 1000 from the client, read up to the gateway's Close, and wait for the bridge.
    async fn close(mut self) {
        let close = masked_frame(0x8, &1000u16.to_be_bytes());
        timeout(STEP_LIMIT, self.write.write_all(&close))
            .await
            .expect("sending Close timed out")
            .expect("sending Close");
        let mut scratch = Vec::new();
        loop {
            let op = timeout(STEP_LIMIT, self.frames.next(&mut scratch))
                .await
                .expect("waiting for the gateway's Close timed out")
                .expect("reading the gateway's Close");
            if op == 0x8 {
                assert_eq!(&scratch[..2], &1000u16.to_be_bytes(), "Close 1000 echoed");
                break;
            }
        }
        let outcome = timeout(STEP_LIMIT, self.bridge)
            .await
            .expect("the bridge did not end after the close handshake")
            .expect("bridge task");
        assert_eq!(outcome.code, 1000, "clean close: {}", outcome.reason);
        let _ = timeout(STEP_LIMIT, self.echo).await;
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

/// Before timing anything: one message of each size comes back byte for byte.
fn check_echo(rt: &Runtime, config: &SessionSettings, max_frame: usize) {
    rt.block_on(async {
        let mut s = open(config, max_frame);
        for len in [32, 64 * 1024, 300 * 1024] {
            let payload = pattern(len);
            s.write
                .write_all(&masked_frame(0x2, &payload))
                .await
                .unwrap();
            let mut echoed = Vec::with_capacity(len);
            let mut scratch = Vec::new();
            while echoed.len() < len {
                let op = timeout(STEP_LIMIT, s.frames.next(&mut scratch))
                    .await
                    .expect("echo timed out")
                    .unwrap();
                assert_eq!(op, 0x2);
                echoed.extend_from_slice(&scratch);
            }
            assert!(echoed == payload, "{len}-byte message echoed intact");
        }
        s.close().await;
    });
}

fn bench_bridge(c: &mut Criterion) {
    let rt = runtime();
    let (config, max_frame) = default_settings();
    check_echo(&rt, &config, max_frame);

    let mut group = c.benchmark_group("bridge");

    const BIG: usize = 64 * 1024;
    let big = masked_frame(0x2, &pattern(BIG));
    group.throughput(Throughput::Bytes(BIG as u64));
    group.bench_function("throughput/64KiB", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let Session {
                    mut write,
                    mut frames,
                    bridge,
                    echo,
                } = open(&config, max_frame);
                let total = BIG * iters as usize;
                let mut scratch = Vec::with_capacity(BIG);
                let started = Instant::now();
                let send = async {
                    for _ in 0..iters {
                        write.write_all(black_box(&big)).await.expect("sending");
                    }
                };
                let receive = frames.binary_bytes(total, &mut scratch);
                // Bounded: the whole batch must flow within STEP_LIMIT plus a generous rate floor.
                let limit = STEP_LIMIT + Duration::from_micros(iters.saturating_mul(1000));
                timeout(limit, async { tokio::join!(send, receive) })
                    .await
                    .expect("a throughput batch timed out");
                let took = started.elapsed();
                Session {
                    write,
                    frames,
                    bridge,
                    echo,
                }
                .close()
                .await;
                took
            })
        });
    });

    const SMALL: usize = 32;
    let small = masked_frame(0x2, &pattern(SMALL));
    group.throughput(Throughput::Elements(1));
    group.bench_function("round_trip/32B", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut s = open(&config, max_frame);
                let mut scratch = Vec::with_capacity(SMALL);
                let started = Instant::now();
                let rounds = async {
                    for _ in 0..iters {
                        s.write.write_all(black_box(&small)).await.expect("sending");
                        s.frames.binary_bytes(SMALL, &mut scratch).await;
                    }
                };
                let limit = STEP_LIMIT + Duration::from_micros(iters.saturating_mul(1000));
                timeout(limit, rounds)
                    .await
                    .expect("a round-trip batch timed out");
                let took = started.elapsed();
                s.close().await;
                took
            })
        });
    });

    group.finish();
}

criterion_group!(benches, bench_bridge);
criterion_main!(benches);

//! Hostile input over real sockets: every class gets its exact answer, and after each the same
//! gateway still serves a normal client (an echo round trip).
//!
//! One class lives elsewhere: a client that stops reading. Its session ends at the keepalive
//! stall limit and the gateway's buffering stays bounded; see tests/bridge.rs,
//! `keepalive_ends_a_session_whose_client_stops_reading_under_load`, and tests/backend_kinds.rs,
//! `slow_reader_bounds_buffering_and_loses_nothing`.
//!
//! Loopback only, bounded in count and time, no timing assertions: timeouts are set small and
//! each test only checks what happened, with generous limits on how long it may take.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::RwLock;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

use support::frame_bits::*;
use support::*;

/// Most tests share the process; the connection-flood tests need it to themselves, because
/// they read process-wide figures (`wsgate_connections_active`, RSS, open files).
static PROCESS: RwLock<()> = RwLock::const_new(());

const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A normal client still gets its bytes echoed and a clean close.
async fn assert_still_serves(gw: &TestGateway) {
    let mut ws = ws_client(&gw.url("/")).await;
    send_binary(&mut ws, b"still serving").await;
    assert_eq!(read_bytes(&mut ws, 13).await, b"still serving");
    futures_util::SinkExt::send(&mut ws, Message::Close(None))
        .await
        .unwrap();
    assert_eq!(expect_close(&mut ws).await.0, 1005);
    finish_close(&mut ws).await;
}

/// Upgrade, send `bytes` as they are, and return the gateway's Close (code, reason);
/// the gateway must then end the connection.
async fn close_for(gw: &TestGateway, bytes: &[u8]) -> (u16, String) {
    let mut ws = raw_ws_client(gw.addr, "/").await;
    ws.send(bytes).await;
    let close = ws.expect_close().await;
    ws.expect_end().await;
    close
}

/// The one-line head of a raw HTTP answer, and its body.
fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

/// A `/proc/self/status` figure in KiB (`VmRSS`).
fn proc_status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status"))
}

/// The soft limit on open files, from `/proc/self/limits`.
fn open_files_soft_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("Max open files in /proc/self/limits")
}

async fn connections_active(gw: &TestGateway) -> f64 {
    metric(
        &scrape(gw.admin.unwrap()).await,
        "wsgate_connections_active",
    )
    .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Malformed HTTP and bad upgrades.

#[tokio::test]
async fn malformed_http_gets_hypers_400_and_the_connection_closes() {
    let _shared = PROCESS.read().await;
    let gw = echo_gateway("hostile_http", "").await;
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Control: a\x01b\r\n\r\n",
        b"GET /a b c HTTP/1.1\r\n\r\n",
        // A TLS ClientHello's first bytes on a plain port.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let answer = read_until_closed(&mut s, Duration::from_secs(10)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 400 Bad Request",
            "{garbage:?}: {answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert_eq!(answer_body(&answer), "", "{garbage:?}");
        assert_still_serves(&gw).await;
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn bad_or_missing_key_is_400_and_a_wrong_version_is_426() {
    let _shared = PROCESS.read().await;
    let gw = echo_gateway("hostile_upgrade", "").await;
    let request = |key: Option<&str>, version: Option<&str>| {
        let mut r =
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n".to_owned();
        if let Some(k) = key {
            r.push_str(&format!("Sec-WebSocket-Key: {k}\r\n"));
        }
        if let Some(v) = version {
            r.push_str(&format!("Sec-WebSocket-Version: {v}\r\n"));
        }
        r + "\r\n"
    };
    let good = Some("dGhlIHNhbXBsZSBub25jZQ==");
    let v13 = Some("13");
    for (req, status, reason) in [
        (request(None, v13), 400, "missing Sec-WebSocket-Key"),
        (
            request(Some(""), v13),
            400,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ),
        (
            request(Some("c2hvcnQ="), v13),
            400,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ),
        (
            request(Some("dGhlIHNhbXBsZSBub25jZQ"), v13),
            400,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ),
        (
            request(Some("dGhlIHNhbXBsZSBub25jZQ==dGhl"), v13),
            400,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ),
        (
            // The last character carries bits past the 16 bytes: not base64 of 16 bytes.
            request(Some("AAAAAAAAAAAAAAAAAAAAAB=="), v13),
            400,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ),
        (
            request(Some("dGhlIHNhbXBsZSBub25j*Q=="), v13),
            400,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ),
        (
            request(good, None),
            426,
            "unsupported Sec-WebSocket-Version (this gateway speaks 13)",
        ),
        (
            request(good, Some("8")),
            426,
            "unsupported Sec-WebSocket-Version (this gateway speaks 13)",
        ),
        (
            request(good, Some("14")),
            426,
            "unsupported Sec-WebSocket-Version (this gateway speaks 13)",
        ),
        (
            request(good, Some("13, 8")),
            426,
            "unsupported Sec-WebSocket-Version (this gateway speaks 13)",
        ),
    ] {
        let (got, answer) = raw_http(gw.addr, &req).await;
        assert_eq!(got, status, "{req:?}: {answer}");
        assert_eq!(answer_body(&answer), format!("{reason}\n"), "{req:?}");
        if status == 426 {
            assert!(answer
                .to_ascii_lowercase()
                .contains("sec-websocket-version: 13"));
        }
        assert_still_serves(&gw).await;
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_request_heads_are_431() {
    let _shared = PROCESS.read().await;
    const MAX: usize = 4096;
    let gw = echo_gateway(
        "hostile_431",
        &format!("[limits]\nmax_header_bytes = {MAX}\n"),
    )
    .await;
    // A request head of exactly `max_header_bytes` is accepted...
    let base = upgrade_request("/", "X-Pad: \r\n").len();
    let exact = upgrade_request("/", &format!("X-Pad: {}\r\n", "a".repeat(MAX - base)));
    assert_eq!(exact.len(), MAX);
    let mut ws = raw_ws_client_with(gw.addr, &exact).await;
    ws.send(&client_frame(FIN | BINARY, b"exact")).await;
    assert_eq!(ws.read_bytes(5).await, b"exact");
    drop(ws);
    // ...one byte more is not; nor are many headers, a huge one, or a huge URI.
    let one_more = upgrade_request("/", &format!("X-Pad: {}\r\n", "a".repeat(MAX - base + 1)));
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let cases = [
        ("one byte over", one_more),
        ("101 headers", upgrade_request("/", &many)),
        (
            "1 MiB header",
            upgrade_request("/", &format!("Cookie: {}\r\n", "c".repeat(1 << 20))),
        ),
        (
            "64 KiB path",
            upgrade_request(&format!("/{}", "p".repeat(64 * 1024)), ""),
        ),
    ];
    for (what, req) in &cases {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        // The gateway may answer and close before reading all of it: a failed write is fine.
        let _ = s.write_all(req.as_bytes()).await;
        let answer = read_until_closed(&mut s, Duration::from_secs(10)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 431 Request Header Fields Too Large",
            "{what}: {answer}"
        );
        assert_still_serves(&gw).await;
    }
    gw.stop().await.unwrap();
}

/// Like `raw_ws_client`, with the whole request given.
async fn raw_ws_client_with(addr: SocketAddr, request: &str) -> RawWs {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    RawWs::from_upgraded(stream)
}

// ---------------------------------------------------------------------------------------------
// Slow and silent clients.

#[tokio::test]
async fn a_client_that_sends_nothing_is_cut_at_the_header_timeout() {
    let _shared = PROCESS.read().await;
    let gw = echo_gateway("hostile_silent", "[timeouts]\nheader_read_secs = 1\n").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(15)).await;
    assert!(
        answer.is_empty(),
        "hyper closes without an answer: {answer:?}"
    );
    assert_still_serves(&gw).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn slowloris_one_header_byte_per_second_is_cut_at_the_header_timeout() {
    let _shared = PROCESS.read().await;
    let gw = echo_gateway("hostile_slowloris", "[timeouts]\nheader_read_secs = 2\n").await;
    let request = upgrade_request("/", "");
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut read, mut write) = s.into_split();
    let sent = Arc::new(AtomicUsize::new(0));
    let dripper = {
        let (bytes, sent) = (request.clone().into_bytes(), sent.clone());
        tokio::spawn(async move {
            for b in bytes {
                if write.write_all(&[b]).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut answer))
        .await
        .expect("cut long before the request could complete")
        .ok();
    dripper.abort();
    let sent = sent.load(Ordering::Relaxed);
    assert!(
        answer.is_empty(),
        "no answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    println!(
        "slowloris cut after {sent} of {} request bytes",
        request.len()
    );
    assert!(
        sent >= 1,
        "the gateway read at least one byte before the cut"
    );
    assert!(sent < request.len() / 2, "sent {sent} bytes before the cut");
    assert_still_serves(&gw).await;
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Invalid frames: 1002, 1007, 1009.

#[tokio::test]
async fn reserved_bits_close_1002() {
    let _shared = PROCESS.read().await;
    let gw = echo_gateway("hostile_rsv", "").await;
    for rsv in [RSV1, RSV2, RSV3, RSV1 | RSV2 | RSV3] {
        let (code, reason) = close_for(&gw, &client_frame(FIN | rsv | BINARY, b"x")).await;
        assert_eq!(
            (code, reason.as_str()),
            (1002, "reserved bits set"),
            "rsv {rsv:#x}"
        );
        assert_still_serves(&gw).await;
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_opcodes_close_1002() {
    let _shared = PROCESS.read().await;
    let gw = echo_gateway("hostile_opcode", "").await;
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        let (code, reason) = close_for(&gw, &client_frame(FIN | opcode, b"x")).await;
        assert_eq!(code, 1002, "opcode {opcode:#x}: {reason}");
        assert_still_serves(&gw).await;
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_or_fragmented_control_frames_close_1002() {
    let _shared = PROCESS.read().await;
    let gw = echo_gateway("hostile_control", "").await;
    let close_126 = close_payload(1000, &"r".repeat(124));
    let cases: [(&str, Vec<u8>); 6] = [
        ("ping of 126 bytes", client_frame(FIN | PING, &[7; 126])),
        ("pong of 126 bytes", client_frame(FIN | PONG, &[7; 126])),
        ("close of 126 bytes", client_frame(FIN | CLOSE, &close_126)),
        ("fragmented ping", client_frame(PING, b"p")),
        ("fragmented pong", client_frame(PONG, b"p")),
        (
            "fragmented close",
            client_frame(CLOSE, &close_payload(1000, "")),
        ),
    ];
    for (what, frame) in &cases {
        let (code, reason) = close_for(&gw, frame).await;
        assert_eq!(code, 1002, "{what}: {reason}");
        assert_still_serves(&gw).await;
    }
    // A ping of exactly 125 bytes is fine and answered.
    let mut ws = raw_ws_client(gw.addr, "/").await;
    ws.send(&client_frame(FIN | PING, &[7; 125])).await;
    let pong = ws.read_frame().await.expect("a pong");
    assert_eq!((pong.opcode(), pong.payload.len()), (PONG, 125));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn unmasked_client_frames_close_1002() {
    let _shared = PROCESS.read().await;
    let gw = echo_gateway("hostile_unmasked", "").await;
    for frame in [
        vec![FIN | BINARY, 3, b'a', b'b', b'c'],
        vec![FIN | TEXT, 0],
        vec![FIN | PING, 1, b'p'],
        [
            client_frame(FIN | BINARY, b"masked first"),
            vec![FIN | BINARY, 1, b'x'],
        ]
        .concat(),
    ] {
        let (code, reason) = close_for(&gw, &frame).await;
        assert_eq!(
            (code, reason.as_str()),
            (1002, "unmasked frame from the client")
        );
        assert_still_serves(&gw).await;
    }
    gw.stop().await.unwrap();
}

/// Regression (issue 9 item 6): a length in a longer encoding than needed was accepted, and a
/// 64-bit length with its top bit set was answered 1009 "too big"; both are protocol errors.
#[tokio::test]
async fn non_minimal_or_top_bit_lengths_close_1002() {
    let _shared = PROCESS.read().await;
    let gw = echo_gateway("hostile_length_encoding", "").await;
    let header = |len7: u8, extended: &[u8]| {
        let mut f = vec![FIN | BINARY, 0x80 | len7];
        f.extend_from_slice(extended);
        f.extend_from_slice(&[1, 2, 3, 4]);
        f
    };
    let cases = [
        (
            "3 bytes in a 16-bit length",
            header(126, &3u16.to_be_bytes()),
            3,
        ),
        (
            "100 bytes in a 64-bit length",
            header(127, &100u64.to_be_bytes()),
            100,
        ),
        (
            "the top bit set",
            header(127, &(1u64 << 63 | 3).to_be_bytes()),
            3,
        ),
    ];
    for (what, mut bytes, len) in cases {
        bytes.extend(std::iter::repeat_n(0, len));
        let (code, reason) = close_for(&gw, &bytes).await;
        assert_eq!(code, 1002, "{what}: {reason}");
        assert_still_serves(&gw).await;
    }
    gw.stop().await.unwrap();
}

/// Regression (issue 9 item 10): a client's Close 1014 (registered, and sent by gateways) was
/// answered 1002. The valid codes follow the IANA registry; 1015 may never be sent.
#[tokio::test]
async fn invalid_close_codes_and_a_one_byte_close_close_1002() {
    let _shared = PROCESS.read().await;
    let gw = echo_gateway("hostile_close_code", "").await;
    for bad in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
    ] {
        let (code, reason) =
            close_for(&gw, &client_frame(FIN | CLOSE, &close_payload(bad, ""))).await;
        assert_eq!(code, 1002, "close code {bad}: {reason}");
        assert_still_serves(&gw).await;
    }
    let (code, reason) = close_for(&gw, &client_frame(FIN | CLOSE, &[0x03])).await;
    assert_eq!(code, 1002, "one-byte close payload: {reason}");
    assert_still_serves(&gw).await;
    // Valid codes are echoed, and so is an empty Close.
    for good in [1000u16, 1001, 1003, 1011, 1012, 1013, 1014, 3000, 4999] {
        let answer = close_for(&gw, &client_frame(FIN | CLOSE, &close_payload(good, "bye"))).await;
        assert_eq!(answer, (good, "bye".to_owned()));
    }
    assert_eq!(
        close_for(&gw, &client_frame(FIN | CLOSE, b"")).await.0,
        1005,
        "an empty Close is answered with an empty one"
    );
    assert_still_serves(&gw).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_utf8_in_text_or_a_close_reason_closes_1007() {
    let _shared = PROCESS.read().await;
    let gw = echo_gateway("hostile_utf8", "").await;
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(b"bye \xff");
    let cases: [(&str, Vec<u8>); 5] = [
        ("one frame", client_frame(FIN | TEXT, b"ok \xff\xfe")),
        ("a surrogate", client_frame(FIN | TEXT, b"\xed\xa0\x80")),
        (
            "an overlong encoding",
            client_frame(FIN | TEXT, b"\xc0\xaf"),
        ),
        (
            "split across fragments",
            [
                client_frame(TEXT, b"ab\xe2\x82"),
                client_frame(FIN | CONTINUATION, b"("),
            ]
            .concat(),
        ),
        ("a close reason", client_frame(FIN | CLOSE, &bad_reason)),
    ];
    for (what, bytes) in &cases {
        let (code, reason) = close_for(&gw, bytes).await;
        assert_eq!(code, 1007, "{what}: {reason}");
        assert_still_serves(&gw).await;
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_frames_and_messages_close_1009() {
    let _shared = PROCESS.read().await;
    let gw = echo_gateway(
        "hostile_size",
        "[limits]\nmax_frame_bytes = 1024\nmax_message_bytes = 2048\n",
    )
    .await;
    // The header alone announces too much: refused before any payload is read.
    let mut huge = vec![FIN | BINARY, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "frame of 1025 bytes",
            client_frame(FIN | BINARY, &[0; 1025]),
        ),
        ("frame announcing 2^62 bytes", huge),
        (
            "message of 3 x 1000 bytes",
            [
                client_frame(BINARY, &[0; 1000]),
                client_frame(CONTINUATION, &[0; 1000]),
                client_frame(FIN | CONTINUATION, &[0; 1000]),
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in &cases {
        let mut ws = raw_ws_client(gw.addr, "/").await;
        ws.send(bytes).await;
        // Echoed fragments of the message may come first; then the Close.
        let (code, reason) = ws.expect_close().await;
        assert_eq!(code, 1009, "{what}: {reason}");
        ws.expect_end().await;
        assert_still_serves(&gw).await;
    }
    gw.stop().await.unwrap();
}

/// Regression (issue 9 item 5): the frame reader allocated the whole announced payload when a
/// frame's header arrived, so many connections each announcing a 16 MiB frame and sending a few
/// bytes committed gigabytes (200 of them: 3.2 GB, fatal under `vm.overcommit_memory=2` or a
/// `LimitAS`). Buffers now grow as bytes arrive. The pages of a reserved-but-untouched buffer
/// are not resident, so the commit shows in `VmData` (what overcommit and `RLIMIT_DATA`
/// count), not in `VmRSS`; both are checked.
#[tokio::test]
async fn many_connections_announcing_huge_frames_commit_little_memory() {
    let _alone = PROCESS.write().await;
    const N: usize = 200;
    const ANNOUNCED: u64 = 16 << 20;
    let gw = echo_gateway(
        "hostile_announced",
        "[limits]\nmax_frame_bytes = 16777216\nmax_connections_per_ip = 0\n",
    )
    .await;
    let (data_before, rss_before) = (proc_status_kib("VmData"), proc_status_kib("VmRSS"));
    let mut header = vec![FIN | BINARY, 0x80 | 127];
    header.extend_from_slice(&ANNOUNCED.to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    header.extend_from_slice(&[0; 16]);
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        let mut ws = raw_ws_client(gw.addr, "/").await;
        ws.send(&header).await;
        clients.push(ws);
    }
    // Every session has read its header: a client in the same state would now be echoed.
    assert_still_serves(&gw).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (data_after, rss_after) = (proc_status_kib("VmData"), proc_status_kib("VmRSS"));
    let data_grew = data_after.saturating_sub(data_before);
    println!(
        "{N} connections announcing {ANNOUNCED} bytes each: VmData {data_before} -> \
         {data_after} KiB (+{data_grew} KiB), VmRSS {rss_before} -> {rss_after} KiB"
    );
    assert!(
        data_grew < 256 * 1024,
        "{N} announced 16 MiB frames committed {data_grew} KiB"
    );
    assert!(rss_after.saturating_sub(rss_before) < 256 * 1024);
    drop(clients);
    gw.stop().await.unwrap();
}

/// Regression (issue 9 item 5): nothing bounded the frame bytes all sessions hold at once.
/// Two clients each send 700 KiB of a 1 MiB frame under a 1.5 MiB budget: one is closed with
/// 1013 (Try Again Later: the gateway is out of frame memory, not the frame too big), the
/// other finishes its frame and gets it echoed.
#[tokio::test]
async fn frames_over_the_global_budget_close_1013() {
    let _shared = PROCESS.read().await;
    let gw = echo_gateway(
        "hostile_frame_budget",
        "[limits]\nmax_frame_bytes = 1048576\nframe_budget_bytes = 1572864\n",
    )
    .await;
    let frame = client_frame(FIN | BINARY, &pattern(0, 1 << 20));
    let cut = 14 + 700 * 1024;
    let mut a = raw_ws_client(gw.addr, "/").await;
    let mut b = raw_ws_client(gw.addr, "/").await;
    // Errors ignored: the refused client's connection may be reset under its writes.
    let _ = a.stream.write_all(&frame[..cut]).await;
    let _ = b.stream.write_all(&frame[..cut]).await;
    let (refused, mut kept) = tokio::select! {
        f = a.read_frame() => (f, b),
        f = b.read_frame() => (f, a),
    };
    let refused = refused.expect("a Close for the client over the budget");
    assert_eq!(refused.opcode(), CLOSE);
    assert_eq!(
        u16::from_be_bytes([refused.payload[0], refused.payload[1]]),
        1013,
        "{}",
        String::from_utf8_lossy(&refused.payload[2..])
    );
    kept.send(&frame[cut..]).await;
    assert!(kept.read_bytes(1 << 20).await == pattern(0, 1 << 20));
    expect_metric(
        gw.admin.unwrap(),
        "wsgate_closes_total{route=\"hostile_frame_budget\",code=\"1013\",initiator=\"gateway\"}",
        1.0,
    )
    .await;
    assert_still_serves(&gw).await;
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP and garbage on a TLS port (the handshake failure counter: tests/tls.rs).

#[tokio::test]
async fn plain_http_or_garbage_on_a_tls_port_is_dropped() {
    let _shared = PROCESS.read().await;
    wsgate::tls::install_crypto_provider();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert_file = {:?}\nkey_file = {:?}\n\
         [timeouts]\ntls_handshake_secs = 2\n{}",
        cert_file.display().to_string(),
        key_file.display().to_string(),
        route("hostile_tls", "/", &format!("tcp://{echo}")),
    ))
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let wss_still_serves = || async {
        let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            format!("wss://{}/", gw.addr),
            None,
            false,
            Some(Connector::Rustls(client.clone())),
        )
        .await
        .expect("wss upgrade");
        futures_util::SinkExt::send(&mut ws, Message::binary(&b"over tls"[..]))
            .await
            .unwrap();
        assert_eq!(read_bytes(&mut ws, 8).await, b"over tls");
    };
    let mut x: u32 = 0x9e37_79b9;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "a plain upgrade request",
            upgrade_request("/", "").into_bytes(),
        ),
        ("garbage", noise),
        (
            "a TLS record header, then nothing",
            vec![0x16, 0x03, 0x01, 0x40, 0x00],
        ),
        (
            "half a ClientHello",
            vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c],
        ),
    ];
    for (what, bytes) in &cases {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let answer = read_until_closed(&mut s, Duration::from_secs(15)).await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{what}: an HTTP answer on a TLS port"
        );
        // At most a TLS alert (5-byte record header + 2-byte alert).
        assert!(answer.len() <= 7, "{what}: {} bytes back", answer.len());
        wss_still_serves().await;
    }
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Floods of idle connections (need the process to themselves).

#[tokio::test]
async fn thousands_of_idle_connections_are_bounded_and_cut_at_the_header_timeout() {
    let _alone = PROCESS.write().await;
    // Two descriptors per connection (both ends live in this process), plus headroom.
    let soft = open_files_soft_limit();
    let n = 2000.min(soft.saturating_sub(512) / 2);
    assert!(
        n >= 100,
        "open-files soft limit {soft} is too low for this test"
    );
    let gw = echo_gateway(
        "hostile_idle_flood",
        &format!(
            "[timeouts]\nheader_read_secs = 8\n[limits]\nmax_connections = {}\nmax_connections_per_ip = 0\n",
            n + 50
        ),
    )
    .await;
    let base = connections_active(&gw).await;
    let rss_before = proc_status_kib("VmRSS");
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        idle.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    assert_eventually!(
        connections_active(&gw).await >= base + n as f64,
        "the gateway accepted all {n} idle connections"
    );
    let rss_after = proc_status_kib("VmRSS");
    let per_conn = rss_after.saturating_sub(rss_before) as f64 / n as f64;
    println!(
        "{n} idle connections: RSS {rss_before} KiB -> {rss_after} KiB, {per_conn:.1} KiB per \
         connection (both ends in this process)"
    );
    assert!(per_conn < 128.0, "{per_conn:.1} KiB per idle connection");
    // max_connections leaves room: a normal client is served while they are open.
    assert_still_serves(&gw).await;
    // Every idle connection is cut at the header timeout, without an answer.
    let mut cut = JoinSet::new();
    for mut s in idle {
        cut.spawn(async move { read_until_closed(&mut s, Duration::from_secs(60)).await });
    }
    while let Some(answer) = cut.join_next().await {
        assert!(
            answer.unwrap().is_empty(),
            "an idle connection got an answer"
        );
    }
    assert_eventually!(
        connections_active(&gw).await == base,
        "every idle connection was let go"
    );
    assert_still_serves(&gw).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn idle_connections_beyond_max_connections_wait_in_the_backlog() {
    let _alone = PROCESS.write().await;
    const MAX: usize = 20;
    const IDLE: usize = 60;
    let gw = echo_gateway(
        "hostile_idle_backlog",
        &format!("[timeouts]\nheader_read_secs = 1\n[limits]\nmax_connections = {MAX}\nmax_connections_per_ip = 0\n"),
    )
    .await;
    let base = connections_active(&gw).await;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        // The kernel completes the handshake for queued connections: connect never waits.
        idle.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    // Watch the gauge while the gateway works through them, MAX at a time, each cut at the
    // header timeout; a normal client queued behind them is served in its turn.
    let watch = {
        let admin = gw.admin.unwrap();
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            loop {
                let now = metric(&scrape(admin).await, "wsgate_connections_active").unwrap_or(0.0);
                peak = peak.max(now);
                tokio::time::sleep(Duration::from_millis(20)).await;
                if now <= base && peak > base {
                    return peak;
                }
            }
        })
    };
    let served = tokio::time::timeout(Duration::from_secs(60), assert_still_serves(&gw));
    let mut cut = JoinSet::new();
    for mut s in idle {
        cut.spawn(async move { read_until_closed(&mut s, Duration::from_secs(60)).await });
    }
    served.await.expect("the queued normal client was served");
    while let Some(answer) = cut.join_next().await {
        assert!(answer.unwrap().is_empty());
    }
    let peak = tokio::time::timeout(Duration::from_secs(30), watch)
        .await
        .expect("the gauge went back down")
        .unwrap();
    println!("{IDLE} idle connections under max_connections = {MAX}: peak {peak} open");
    assert!(
        peak - base <= MAX as f64,
        "peak {peak} over max_connections {MAX}"
    );
    assert_still_serves(&gw).await;
    gw.stop().await.unwrap();
}

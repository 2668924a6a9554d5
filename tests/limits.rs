//! Admission limits and pacing over real sockets: session caps (503/429 with `Retry-After`),
//! the per-address handshake rate, and the per-session bandwidth cap on both bridges.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::MaybeTlsStream;

use support::*;

/// How an upgrade attempt ended: the client, or the refusal's status and `Retry-After`.
type Attempt = Result<WsClient, (u16, Option<String>)>;

fn refusal(e: tungstenite::Error) -> (u16, Option<String>) {
    match e {
        tungstenite::Error::Http(resp) => (
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
        ),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

/// Try to open a WebSocket to `url`.
async fn try_ws(url: &str) -> Attempt {
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(ws, _)| ws)
        .map_err(refusal)
}

/// Try to open a WebSocket to `path` on `gw` from the loopback address `local` (any 127/8
/// address works on Linux), so one test can play several clients.
async fn try_ws_from(local: [u8; 4], gw: SocketAddr, path: &str) -> Attempt {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((local, 0)))
        .expect("bind a loopback address");
    let stream = socket.connect(gw).await.expect("connect");
    tokio_tungstenite::client_async(format!("ws://{gw}{path}"), MaybeTlsStream::Plain(stream))
        .await
        .map(|(ws, _)| ws)
        .map_err(refusal)
}

fn admitted(a: Attempt) -> WsClient {
    a.unwrap_or_else(|(status, _)| panic!("refused with {status}"))
}

/// Close cleanly and wait for the gateway's answer, so the session (and its slot) ends.
async fn close(mut ws: WsClient) {
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    })))
    .await
    .unwrap();
    assert_eq!(expect_close(&mut ws).await.0, 1000);
    finish_close(&mut ws).await;
}

// ---- Session caps --------------------------------------------------------------------------

#[tokio::test]
async fn global_cap_is_503_with_retry_after_until_a_session_ends() {
    let echo = tcp_echo_backend().await;
    let backend = format!("tcp://{echo}");
    let gw = spawn_gateway(&config_with(&format!(
        "[limits]\nmax_sessions = 2\nretry_after_secs = 7\n{}{}",
        route("cap_a", "/a", &backend),
        route("cap_b", "/b", &backend),
    )))
    .await;
    let mut first = admitted(try_ws(&gw.url("/a")).await);
    let second = admitted(try_ws(&gw.url("/b")).await);
    // Full on every route: the exact answer, with Retry-After and a reason in the body.
    let (status, answer) = raw_http(gw.addr, &upgrade_request("/a", "")).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer_header(&answer, "retry-after"), Some("7"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\nthe gateway is at capacity\n"),
        "{answer}"
    );
    assert_eq!(
        try_ws(&gw.url("/b")).await.err(),
        Some((503, Some("7".into())))
    );
    // Sessions already admitted are untouched.
    assert_echoes(&mut first, b"ping").await;
    // One ends: its slot is free again.
    close(second).await;
    let mut third = admitted(try_ws(&gw.url("/b")).await);
    assert_echoes(&mut third, b"ping").await;
    let admin = gw.admin.unwrap();
    expect_metric(admin, &rejections("cap_a", "over_capacity"), 1.0).await;
    expect_metric(admin, &rejections("cap_b", "over_capacity"), 1.0).await;
    close(first).await;
    close(third).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn route_cap_is_503_and_other_routes_still_serve() {
    let echo = tcp_echo_backend().await;
    let backend = format!("tcp://{echo}");
    // `max_sessions_per_route` for every route; `full` overrides it with 1, `open` with 0 (none).
    let gw = spawn_gateway(&config_with(&format!(
        "[limits]\nmax_sessions_per_route = 3\n{}max_sessions = 1\n{}max_sessions = 0\n{}",
        route("route_cap_full", "/full", &backend),
        route("route_cap_open", "/open", &backend),
        route("route_cap_default", "/default", &backend),
    )))
    .await;
    let held = admitted(try_ws(&gw.url("/full")).await);
    assert_eq!(
        try_ws(&gw.url("/full")).await.err(),
        Some((503, Some("5".into()))),
        "the default Retry-After is 5 s"
    );
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(admitted(try_ws(&gw.url("/open")).await));
    }
    let mut default = Vec::new();
    for _ in 0..3 {
        default.push(admitted(try_ws(&gw.url("/default")).await));
    }
    assert_eq!(
        try_ws(&gw.url("/default")).await.err().map(|e| e.0),
        Some(503)
    );
    assert_echoes(&mut open[0], b"ping").await;
    let admin = gw.admin.unwrap();
    expect_metric(admin, &rejections("route_cap_full", "route_full"), 1.0).await;
    expect_metric(admin, &rejections("route_cap_default", "route_full"), 1.0).await;
    for ws in open.into_iter().chain(default).chain([held]) {
        close(ws).await;
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn per_address_cap_is_429_and_other_addresses_still_serve() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&config_with(&format!(
        "[limits]\nmax_sessions_per_ip = 2\nretry_after_secs = 3\n{}",
        route("ip_cap", "/", &format!("tcp://{echo}")),
    )))
    .await;
    let a1 = admitted(try_ws_from([127, 0, 0, 1], gw.addr, "/").await);
    let a2 = admitted(try_ws_from([127, 0, 0, 1], gw.addr, "/").await);
    let (status, answer) = raw_http(gw.addr, &upgrade_request("/", "")).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer_header(&answer, "retry-after"), Some("3"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\ntoo many sessions from your address\n"),
        "{answer}"
    );
    // Another address has its own budget.
    let mut b1 = admitted(try_ws_from([127, 0, 0, 2], gw.addr, "/").await);
    let b2 = admitted(try_ws_from([127, 0, 0, 2], gw.addr, "/").await);
    assert_eq!(
        try_ws_from([127, 0, 0, 2], gw.addr, "/").await.err(),
        Some((429, Some("3".into())))
    );
    assert_echoes(&mut b1, b"ping").await;
    close(a1).await;
    let a3 = admitted(try_ws_from([127, 0, 0, 1], gw.addr, "/").await);
    expect_metric(gw.admin.unwrap(), &rejections("ip_cap", "ip_limit"), 2.0).await;
    for ws in [a2, a3, b1, b2] {
        close(ws).await;
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn handshake_rate_is_429_with_the_wait_in_retry_after() {
    let echo = tcp_echo_backend().await;
    // A burst of 3, then one handshake per 100 s.
    let gw = spawn_gateway(&config_with(&format!(
        "[limits]\nhandshakes_per_ip_per_sec = 0.01\nhandshake_burst_per_ip = 3\n{}",
        route("rate", "/", &format!("tcp://{echo}")),
    )))
    .await;
    for _ in 0..3 {
        close(admitted(try_ws_from([127, 0, 0, 3], gw.addr, "/").await)).await;
    }
    let Err((status, retry_after)) = try_ws_from([127, 0, 0, 3], gw.addr, "/").await else {
        panic!("the fourth handshake is admitted");
    };
    assert_eq!(status, 429);
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((90..=100).contains(&secs), "Retry-After {secs}");
    // Handshakes are counted, not sessions: closing them gave nothing back.
    assert_eq!(
        try_ws_from([127, 0, 0, 3], gw.addr, "/")
            .await
            .err()
            .map(|e| e.0),
        Some(429)
    );
    // Other addresses are not affected.
    let mut other = admitted(try_ws_from([127, 0, 0, 4], gw.addr, "/").await);
    assert_echoes(&mut other, b"ping").await;
    close(other).await;
    expect_metric(gw.admin.unwrap(), &rejections("rate", "rate_limited"), 2.0).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_dial_gives_its_slot_back() {
    let dead = refused_addr().await;
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&config_with(&format!(
        "[limits]\nmax_sessions = 1\n{}{}",
        route("slot_dead", "/dead", &format!("tcp://{dead}")),
        route("slot_live", "/live", &format!("tcp://{echo}")),
    )))
    .await;
    for _ in 0..3 {
        assert_eq!(try_ws(&gw.url("/dead")).await.err().map(|e| e.0), Some(502));
    }
    let mut ws = admitted(try_ws(&gw.url("/live")).await);
    assert_echoes(&mut ws, b"ping").await;
    close(ws).await;
    gw.stop().await.unwrap();
}

// ---- Bandwidth (paused clock: the pacer sleeps on tokio's clock) --------------------------

const RATE: usize = 64 * 1024;
const BULK: usize = 256 * 1024;

/// The least time `BULK` bytes take at `RATE`: all but the first burst (100 ms of traffic) and
/// the last read or two (16 KiB frames) are paid for by pacer sleeps.
const MIN_SECS: f64 = (BULK - 32 * 1024) as f64 / RATE as f64;

/// Move `BULK` bytes backend → client, then client → backend (16 KiB messages), and close.
/// Returns the virtual seconds each direction took.
async fn timed_both_ways(mut ws: WsClient, mut b: TcpStream) -> (f64, f64) {
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        b.write_all(&pattern(0, BULK)).await.unwrap();
        b
    });
    assert!(read_bytes(&mut ws, BULK).await == pattern(0, BULK));
    let down = started.elapsed().as_secs_f64();
    let mut b = writer.await.unwrap();

    let started = Instant::now();
    let sender = tokio::spawn(async move {
        for chunk in pattern(0, BULK).chunks(16 * 1024) {
            send_binary(&mut ws, chunk).await;
        }
        ws
    });
    let mut got = vec![0u8; BULK];
    b.read_exact(&mut got).await.unwrap();
    let up = started.elapsed().as_secs_f64();
    assert!(got == pattern(0, BULK));

    // Close from the client; the backend sees EOF and lets go, and the Close is answered.
    let mut ws = sender.await.unwrap();
    ws.send(Message::Close(None)).await.unwrap();
    let _ = b.read_to_end(&mut Vec::new()).await;
    drop(b);
    expect_close(&mut ws).await;
    finish_close(&mut ws).await;
    (down, up)
}

#[tokio::test(start_paused = true)]
async fn bandwidth_cap_paces_a_tcp_backend_both_ways() {
    tick_paused_clock();
    let (backend, mut accepted) = tcp_backend().await;
    let gw = spawn_gateway(&config_with(&format!(
        "{}bandwidth_bytes_per_sec = {RATE}\n[timeouts]\nping_interval_secs = 0\n",
        route("paced_tcp", "/", &format!("tcp://{backend}")),
    )))
    .await;
    let ws = ws_client(&gw.url("/")).await;
    let b = accepted.recv().await.unwrap();
    let (down, up) = timed_both_ways(ws, b).await;
    println!("{BULK} bytes at {RATE} B/s, TCP backend: down {down:.2} s, up {up:.2} s (virtual)");
    assert!(down >= MIN_SECS, "backend → client took {down} s");
    assert!(up >= MIN_SECS, "client → backend took {up} s");
    gw.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn bandwidth_cap_paces_a_websocket_backend_both_ways() {
    tick_paused_clock();
    // client → paced gateway → ws:// → unpaced gateway → TCP backend.
    let (backend, mut accepted) = tcp_backend().await;
    let inner = gateway_to("paced_inner", &format!("tcp://{backend}")).await;
    let outer = spawn_gateway(&config_with(&format!(
        "[limits]\nbandwidth_bytes_per_sec = {RATE}\n[timeouts]\nping_interval_secs = 0\n{}",
        route("paced_ws", "/", &format!("ws://{}/", inner.addr)),
    )))
    .await;
    let ws = ws_client(&outer.url("/")).await;
    let b = accepted.recv().await.unwrap();
    let (down, up) = timed_both_ways(ws, b).await;
    println!(
        "{BULK} bytes at {RATE} B/s, WebSocket backend: down {down:.2} s, up {up:.2} s (virtual)"
    );
    assert!(down >= MIN_SECS, "backend → client took {down} s");
    assert!(up >= MIN_SECS, "client → backend took {up} s");
    outer.stop().await.unwrap();
    inner.stop().await.unwrap();
}

#[tokio::test]
async fn an_unpaced_route_beside_a_paced_one_is_not_slowed() {
    let echo = tcp_echo_backend().await;
    let backend = format!("tcp://{echo}");
    // 1 KiB/s by default; this route turns it off.
    let gw = spawn_gateway(&config_with(&format!(
        "[limits]\nbandwidth_bytes_per_sec = 1024\n{}bandwidth_bytes_per_sec = 0\n",
        route("unpaced", "/", &backend),
    )))
    .await;
    let mut ws = ws_client(&gw.url("/")).await;
    // 1 MiB would take 17 minutes at 1 KiB/s: the 30 s limit proves the route is unpaced.
    let data = pattern(0, 1 << 20);
    tokio::time::timeout(Duration::from_secs(30), async {
        send_binary(&mut ws, &data).await;
        assert!(read_bytes(&mut ws, data.len()).await == data);
    })
    .await
    .expect("an unpaced route moves 1 MiB in well under 30 s");
    close(ws).await;
    gw.stop().await.unwrap();
}

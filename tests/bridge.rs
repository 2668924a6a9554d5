//! The bridge over real sockets: bytes both ways, lossless closes, errors mapped to close codes.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use support::frame_bits::*;
use support::*;

#[tokio::test]
async fn echoes_binary_both_ways() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("echo_both_ways", &format!("tcp://{echo}")).await;
    let mut ws = ws_client(&gw.url("/")).await;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    send_binary(&mut ws, &payload).await;
    assert_eq!(read_bytes(&mut ws, payload.len()).await, payload);
    gw.stop().await.unwrap();
}

// ---- Backend FIN -----------------------------------------------------------------------------

#[tokio::test]
async fn backend_fin_after_bulk_is_lossless_then_close_1000() {
    const N: usize = 1 << 20;
    let (backend, mut accepted) = tcp_backend().await;
    let gw = gateway_to("backend_fin_bulk", &format!("tcp://{backend}")).await;
    let mut ws = ws_client(&gw.url("/")).await;
    let mut b = accepted.recv().await.unwrap();
    tokio::spawn(async move {
        b.write_all(&pattern(0, N)).await.unwrap();
        b.shutdown().await.unwrap();
        // Hold the connection until the gateway lets go, so the FIN is all it sees.
        let mut sink = Vec::new();
        let _ = b.read_to_end(&mut sink).await;
    });
    let got = read_bytes(&mut ws, N).await;
    assert!(got == pattern(0, N), "1 MiB arrived intact and in order");
    assert_eq!(expect_close(&mut ws).await.0, 1000);
    finish_close(&mut ws).await;
    let admin = gw.admin.unwrap();
    expect_metric(admin, &closes("backend_fin_bulk", 1000, "backend"), 1.0).await;
    expect_metric(
        admin,
        "wsgate_bytes_total{route=\"backend_fin_bulk\",direction=\"backend_to_client\"}",
        N as f64,
    )
    .await;
    gw.stop().await.unwrap();
}

/// Regression (issue 9 item 9): after the gateway had sent its Close 1000 (the backend's FIN),
/// a protocol violation from the client made it send a second Close (1002) and record that
/// code instead of the first. One Close per direction; the first code is the one recorded.
#[tokio::test]
async fn one_close_per_direction_and_the_first_code_is_recorded() {
    let (backend, mut accepted) = tcp_backend().await;
    let gw = gateway_to("one_close", &format!("tcp://{backend}")).await;
    let mut ws = raw_ws_client(gw.addr, "/").await;
    let mut b = accepted.recv().await.unwrap();
    b.shutdown().await.unwrap();
    assert_eq!(
        ws.expect_close().await,
        (1000, "backend closed the connection".into())
    );
    // Instead of its Close, the client breaks the protocol (a reserved bit).
    ws.send(&client_frame(FIN | RSV1 | BINARY, b"x")).await;
    ws.expect_end().await;
    let admin = gw.admin.unwrap();
    expect_metric(admin, &closes("one_close", 1000, "backend"), 1.0).await;
    assert_eq!(
        metric(&scrape(admin).await, &closes("one_close", 1002, "client")),
        None,
        "the session is recorded once, with the first code"
    );
    gw.stop().await.unwrap();
}

// ---- Client Close: half-close, then the backend's last bytes ---------------------------------

#[tokio::test]
async fn client_close_half_closes_backend_which_may_still_answer() {
    const REPLY: usize = 100 * 1024;
    let (backend, mut accepted) = tcp_backend().await;
    let gw = gateway_to("client_close_half", &format!("tcp://{backend}")).await;
    let mut ws = ws_client(&gw.url("/")).await;
    let mut b = accepted.recv().await.unwrap();

    send_binary(&mut ws, b"last words").await;
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();

    // The backend gets the bytes, then EOF (read returns 0), and can still write.
    let mut got = Vec::new();
    timeout(Duration::from_secs(10), b.read_to_end(&mut got))
        .await
        .expect("backend sees EOF after the client's Close")
        .unwrap();
    assert_eq!(got, b"last words");
    b.write_all(&pattern(0, REPLY)).await.unwrap();
    b.shutdown().await.unwrap();

    // tungstenite keeps delivering data after sending its Close.
    assert!(read_bytes(&mut ws, REPLY).await == pattern(0, REPLY));
    assert_eq!(
        expect_close(&mut ws).await,
        (1000, "bye".to_owned()),
        "the client's Close is echoed"
    );
    finish_close(&mut ws).await;
    expect_metric(
        gw.admin.unwrap(),
        &closes("client_close_half", 1000, "client"),
        1.0,
    )
    .await;
    expect_metric(gw.admin.unwrap(), &active("client_close_half"), 0.0).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn client_close_completes_after_grace_when_backend_never_closes() {
    let (backend, mut accepted) = tcp_backend().await;
    let gw = gateway_with(
        "client_close_grace",
        &format!("tcp://{backend}"),
        "[timeouts]\nclose_grace_secs = 0.5\n",
    )
    .await;
    let mut ws = ws_client(&gw.url("/")).await;
    let mut b = accepted.recv().await.unwrap();
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await
    .unwrap();
    let mut got = Vec::new();
    timeout(Duration::from_secs(10), b.read_to_end(&mut got))
        .await
        .expect("backend sees EOF")
        .unwrap();
    assert!(got.is_empty());
    // The backend keeps its side open and silent: the grace period ends the wait.
    assert_eq!(expect_close(&mut ws).await.0, 1000);
    finish_close(&mut ws).await;
    expect_metric(
        gw.admin.unwrap(),
        &closes("client_close_grace", 1000, "client"),
        1.0,
    )
    .await;
    drop(b);
    gw.stop().await.unwrap();
}

// ---- Backend reset ---------------------------------------------------------------------------

#[tokio::test]
async fn backend_reset_closes_1011() {
    let (backend, mut accepted) = tcp_backend().await;
    let gw = gateway_to("backend_reset", &format!("tcp://{backend}")).await;
    let mut ws = ws_client(&gw.url("/")).await;
    let mut b = accepted.recv().await.unwrap();
    send_binary(&mut ws, b"hello").await;
    let mut got = [0u8; 5];
    b.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello", "the session is live");
    b.set_zero_linger().unwrap();
    drop(b); // RST
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 1011);
    assert!(!reason.is_empty(), "1011 carries a reason");
    finish_close(&mut ws).await;
    expect_metric(
        gw.admin.unwrap(),
        &closes("backend_reset", 1011, "backend"),
        1.0,
    )
    .await;
    gw.stop().await.unwrap();
}

// ---- Client vanishes -------------------------------------------------------------------------

#[tokio::test]
async fn client_vanishing_closes_backend_and_ends_session() {
    let (backend, mut accepted) = tcp_backend().await;
    let gw = gateway_to("client_vanishes", &format!("tcp://{backend}")).await;
    let admin = gw.admin.unwrap();
    let ws = ws_client(&gw.url("/")).await;
    let mut b = accepted.recv().await.unwrap();
    expect_metric(admin, &active("client_vanishes"), 1.0).await;
    drop(ws); // TCP FIN, no Close frame
    let mut buf = [0u8; 16];
    let read = timeout(Duration::from_secs(10), b.read(&mut buf))
        .await
        .expect("backend sees the end in time");
    assert!(matches!(read, Ok(0) | Err(_)), "EOF or error, got {read:?}");
    expect_metric(admin, &active("client_vanishes"), 0.0).await;
    expect_metric(admin, &closes("client_vanishes", 1006, "client"), 1.0).await;
    gw.stop().await.unwrap();
}

// ---- Frame size limit ------------------------------------------------------------------------

#[tokio::test]
async fn frame_over_max_frame_bytes_closes_1009() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_with(
        "frame_limit",
        &format!("tcp://{echo}"),
        "[limits]\nmax_frame_bytes = 1024\n",
    )
    .await;
    let mut ws = ws_client(&gw.url("/")).await;
    let ok = pattern(0, 1000);
    send_binary(&mut ws, &ok).await;
    assert_eq!(read_bytes(&mut ws, ok.len()).await, ok);
    send_binary(&mut ws, &pattern(0, 2000)).await;
    // Nothing of it comes back: the next message is the Close.
    match timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1009, "{f:?}"),
        other => panic!("expected Close 1009, got {other:?}"),
    }
    expect_metric(
        gw.admin.unwrap(),
        &closes("frame_limit", 1009, "client"),
        1.0,
    )
    .await;
    drop(ws);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn frame_of_exactly_max_frame_bytes_is_accepted() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_with(
        "frame_limit_exact",
        &format!("tcp://{echo}"),
        "[limits]\nmax_frame_bytes = 1024\n",
    )
    .await;
    let mut ws = raw_ws_client(gw.addr, "/").await;
    let data = pattern(0, 1024);
    ws.send(&client_frame(FIN | BINARY, &data)).await;
    assert_eq!(ws.read_bytes(1024).await, data);
    // One byte more is refused.
    ws.send(&client_frame(FIN | BINARY, &pattern(0, 1025)))
        .await;
    assert_eq!(ws.expect_close().await.0, 1009);
    ws.expect_end().await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn fragmented_message_over_the_frame_limit_streams_through() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_with(
        "fragmented_big",
        &format!("tcp://{echo}"),
        "[limits]\nmax_frame_bytes = 1024\n",
    )
    .await;
    let mut ws = raw_ws_client(gw.addr, "/").await;
    // 5 frames of 1000 bytes: one 5000-byte message, each frame under the limit.
    let data = pattern(0, 5000);
    let mut frames = Vec::new();
    for (i, chunk) in data.chunks(1000).enumerate() {
        let opcode = if i == 0 { BINARY } else { CONTINUATION };
        let fin = if i == 4 { FIN } else { 0 };
        frames.extend(client_frame(fin | opcode, chunk));
    }
    ws.send(&frames).await;
    assert_eq!(ws.read_bytes(data.len()).await, data);
    ws.send(&client_frame(FIN | CLOSE, &close_payload(1000, "")))
        .await;
    assert_eq!(ws.expect_close().await, (1000, String::new()));
    ws.expect_end().await;
    let admin = gw.admin.unwrap();
    expect_metric(admin, &closes("fragmented_big", 1000, "client"), 1.0).await;
    expect_metric(
        admin,
        "wsgate_messages_total{route=\"fragmented_big\",direction=\"client_to_backend\"}",
        1.0,
    )
    .await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn message_over_max_message_bytes_closes_1009_after_streaming_its_start() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_with(
        "message_limit",
        &format!("tcp://{echo}"),
        "[limits]\nmax_frame_bytes = 1024\nmax_message_bytes = 4096\n",
    )
    .await;
    let mut ws = raw_ws_client(gw.addr, "/").await;
    // Exactly the limit, in 4 frames of 1024: passes.
    let data = pattern(0, 4096);
    for (i, chunk) in data.chunks(1024).enumerate() {
        let opcode = if i == 0 { BINARY } else { CONTINUATION };
        let fin = if i == 3 { FIN } else { 0 };
        ws.send(&client_frame(fin | opcode, chunk)).await;
    }
    assert_eq!(ws.read_bytes(4096).await, data);
    // One byte over: the first 4096 bytes are streamed to the backend, the byte over the
    // limit is not, and the client gets 1009.
    let data = pattern(0, 4097);
    for (i, chunk) in data.chunks(1024).enumerate() {
        let opcode = if i == 0 { BINARY } else { CONTINUATION };
        let fin = if i == 4 { FIN } else { 0 };
        ws.send(&client_frame(fin | opcode, chunk)).await;
    }
    let mut echoed = Vec::new();
    let code = loop {
        let f = ws.read_frame().await.expect("a Close before the end");
        match f.opcode() {
            CLOSE => break u16::from_be_bytes([f.payload[0], f.payload[1]]),
            _ => echoed.extend_from_slice(&f.payload),
        }
    };
    assert_eq!(code, 1009);
    assert!(echoed.len() <= 4096, "{} bytes went through", echoed.len());
    assert_eq!(echoed[..], data[..echoed.len()]);
    ws.expect_end().await;
    expect_metric(
        gw.admin.unwrap(),
        &closes("message_limit", 1009, "client"),
        1.0,
    )
    .await;
    gw.stop().await.unwrap();
}

// ---- Client protocol errors ------------------------------------------------------------------

#[tokio::test]
async fn invalid_utf8_in_client_text_closes_1007() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("client_bad_utf8", &format!("tcp://{echo}")).await;
    // One frame.
    let mut ws = raw_ws_client(gw.addr, "/").await;
    ws.send(&client_frame(FIN | TEXT, &[0xff, 0xfe])).await;
    assert_eq!(ws.expect_close().await.0, 1007);
    ws.expect_end().await;
    // Fragmented: a valid start, then a continuation that breaks the character (€ is e2 82 ac).
    let mut ws = raw_ws_client(gw.addr, "/").await;
    ws.send(&client_frame(TEXT, b"ab\xe2\x82")).await;
    ws.send(&client_frame(FIN | CONTINUATION, b"(")).await;
    assert_eq!(ws.expect_close().await.0, 1007);
    ws.expect_end().await;
    expect_metric(
        gw.admin.unwrap(),
        &closes("client_bad_utf8", 1007, "client"),
        2.0,
    )
    .await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn fragmented_text_split_inside_a_character_passes() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("client_text_split", &format!("tcp://{echo}")).await;
    let mut ws = raw_ws_client(gw.addr, "/").await;
    let text = "café € 😀 ok".as_bytes();
    // Cut inside é (c3|a9), inside € (e2 82|ac) and inside 😀 (f0 9f|98 80).
    let e = text.iter().position(|&b| b == 0xc3).unwrap() + 1;
    let euro = text.iter().position(|&b| b == 0xe2).unwrap() + 2;
    let smile = text.iter().position(|&b| b == 0xf0).unwrap() + 2;
    let cuts = [0, e, euro, smile, text.len()];
    for (i, w) in cuts.windows(2).enumerate() {
        let opcode = if i == 0 { TEXT } else { CONTINUATION };
        let fin = if w[1] == text.len() { FIN } else { 0 };
        ws.send(&client_frame(fin | opcode, &text[w[0]..w[1]]))
            .await;
    }
    assert_eq!(ws.read_bytes(text.len()).await, text);
    ws.send(&client_frame(FIN | CLOSE, &close_payload(1000, "done")))
        .await;
    assert_eq!(ws.expect_close().await, (1000, "done".to_owned()));
    ws.expect_end().await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn text_character_split_across_three_frames_passes() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("client_text_split3", &format!("tcp://{echo}")).await;
    let mut ws = raw_ws_client(gw.addr, "/").await;
    // € (e2 82 ac) one byte per frame.
    ws.send(&client_frame(TEXT, b"\xe2")).await;
    ws.send(&client_frame(CONTINUATION, b"\x82")).await;
    ws.send(&client_frame(FIN | CONTINUATION, b"\xac")).await;
    assert_eq!(ws.read_bytes(3).await, "€".as_bytes());
    ws.send(&client_frame(FIN | CLOSE, &close_payload(1000, "")))
        .await;
    assert_eq!(ws.expect_close().await.0, 1000);
    ws.expect_end().await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn text_message_ending_inside_a_character_closes_1007() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("client_text_cut_end", &format!("tcp://{echo}")).await;
    let mut ws = raw_ws_client(gw.addr, "/").await;
    // "ab" then the first two bytes of € (e2 82 ac), and the message ends.
    ws.send(&client_frame(TEXT, b"ab\xe2")).await;
    ws.send(&client_frame(FIN | CONTINUATION, b"\x82")).await;
    // Our own Close right behind it: a gateway that let the message pass echoes this one (1000)
    // instead of sending 1007, so the test fails at once rather than by a timeout.
    ws.send(&client_frame(FIN | CLOSE, &close_payload(1000, "")))
        .await;
    assert_eq!(ws.expect_close().await.0, 1007);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn protocol_violations_close_1002() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("client_protocol", &format!("tcp://{echo}")).await;
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "continuation without a start",
            client_frame(FIN | CONTINUATION, b"orphan"),
        ),
        ("reserved bit set", client_frame(FIN | RSV1 | BINARY, b"x")),
        ("fragmented ping", client_frame(PING, b"p")),
        (
            "new message inside a fragmented one",
            [client_frame(BINARY, b"a"), client_frame(FIN | BINARY, b"b")].concat(),
        ),
    ];
    for (what, bytes) in &cases {
        let mut ws = raw_ws_client(gw.addr, "/").await;
        ws.send(bytes).await;
        let (code, reason) = ws.expect_close().await;
        assert_eq!(code, 1002, "{what}: {reason}");
        ws.expect_end().await;
    }
    expect_metric(
        gw.admin.unwrap(),
        &closes("client_protocol", 1002, "client"),
        cases.len() as f64,
    )
    .await;
    gw.stop().await.unwrap();
}

// ---- Text routes -----------------------------------------------------------------------------

#[tokio::test]
async fn text_route_never_splits_a_character() {
    let (backend, mut accepted) = tcp_backend().await;
    let gw = gateway_with(
        "text_route",
        &format!("tcp://{backend}"),
        "message_type = \"text\"\n",
    )
    .await;
    let mut ws = ws_client(&gw.url("/")).await;
    let mut b = accepted.recv().await.unwrap();
    let text = "héllo wörld € 😀 — ok";
    let bytes = text.as_bytes();
    let e = bytes.iter().position(|&b| b == 0xc3).unwrap() + 1;
    let euro = bytes.iter().position(|&b| b == 0xe2).unwrap() + 2;
    let smile = bytes.iter().position(|&b| b == 0xf0).unwrap() + 3;
    tokio::spawn(async move {
        let cuts = [0, e, euro, smile, bytes.len()];
        for w in cuts.windows(2) {
            b.write_all(&bytes[w[0]..w[1]]).await.unwrap();
            b.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        b.shutdown().await.unwrap();
        let _ = b.read_to_end(&mut Vec::new()).await;
    });
    let mut got = String::new();
    let mut messages = 0;
    let close = loop {
        match timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                got.push_str(&t);
                messages += 1;
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            other => panic!("only Text messages expected, got {other:?}"),
        }
    };
    println!("{messages} text message(s)");
    assert_eq!(got, text);
    assert_eq!(close, Some(1000));
    finish_close(&mut ws).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn text_route_backend_invalid_utf8_closes_1011() {
    let (backend, mut accepted) = tcp_backend().await;
    let gw = gateway_with(
        "text_route_bad",
        &format!("tcp://{backend}"),
        "message_type = \"text\"\n",
    )
    .await;
    // Invalid bytes mid-stream.
    let mut ws = ws_client(&gw.url("/")).await;
    let mut b = accepted.recv().await.unwrap();
    b.write_all(b"ok \xff\xfe").await.unwrap();
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 1011, "{reason}");
    finish_close(&mut ws).await;
    // The stream ends inside a character: the complete prefix is delivered, then 1011.
    let mut ws = ws_client(&gw.url("/")).await;
    let mut b2 = accepted.recv().await.unwrap();
    b2.write_all(b"ab\xe2\x82").await.unwrap();
    b2.shutdown().await.unwrap();
    assert_eq!(next_data(&mut ws).await.as_deref(), Some(&b"ab"[..]));
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 1011, "{reason}");
    finish_close(&mut ws).await;
    expect_metric(
        gw.admin.unwrap(),
        &closes("text_route_bad", 1011, "backend"),
        2.0,
    )
    .await;
    drop((b, b2));
    gw.stop().await.unwrap();
}

// ---- Keepalive (paused clock) ----------------------------------------------------------------

const KEEPALIVE_20S: &str = "[timeouts]\nping_interval_secs = 20\npong_timeout_secs = 20\n";

#[tokio::test(start_paused = true)]
async fn keepalive_answered_pings_keep_the_session_open() {
    tick_paused_clock();
    let echo = tcp_echo_backend().await;
    let gw = gateway_with(
        "keepalive_answered",
        &format!("tcp://{echo}"),
        KEEPALIVE_20S,
    )
    .await;
    let mut ws = ws_client(&gw.url("/")).await;
    // Polling answers each ping. The pong timeout equals the interval, so ping n+1 is only
    // sent if pong n arrived in time: 4 pings mean 3 answered pings (80 virtual seconds).
    let mut pings = 0;
    while pings < 4 {
        match timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("a ping within 60 s")
        {
            Some(Ok(Message::Ping(p))) => {
                assert_eq!(p.len(), 8, "sequence-number payload");
                pings += 1;
            }
            other => panic!("only pings expected, got {other:?}"),
        }
    }
    // Still bridged.
    send_binary(&mut ws, b"still here").await;
    assert_eq!(read_bytes(&mut ws, 10).await, b"still here");
    let page = scrape(gw.admin.unwrap()).await;
    let rtts = metric(
        &page,
        "wsgate_ping_rtt_seconds_count{route=\"keepalive_answered\"}",
    )
    .unwrap_or(0.0);
    assert!(rtts >= 3.0, "ping_rtt count {rtts}");
    assert_eq!(metric(&page, &active("keepalive_answered")), Some(1.0));
    // Registered with the route's other series (at 0), or absent: never counted.
    assert_eq!(
        metric(
            &page,
            "wsgate_keepalive_timeouts_total{route=\"keepalive_answered\"}"
        )
        .unwrap_or(0.0),
        0.0
    );
    ws.close(None).await.unwrap();
    assert_eq!(expect_close(&mut ws).await.0, 1005);
    finish_close(&mut ws).await;
    gw.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn keepalive_closes_a_client_that_never_answers() {
    tick_paused_clock();
    let (backend, mut accepted) = tcp_backend().await;
    let gw = gateway_with(
        "keepalive_silent",
        &format!("tcp://{backend}"),
        KEEPALIVE_20S,
    )
    .await;
    let admin = gw.admin.unwrap();
    // Never polled until the end, so never answers the ping.
    let mut ws = ws_client(&gw.url("/")).await;
    let mut b = accepted.recv().await.unwrap();
    let mut buf = [0u8; 16];
    let read = timeout(Duration::from_secs(120), b.read(&mut buf))
        .await
        .expect("the gateway lets go of the backend (ping at 20 s, timeout at 40 s)");
    assert_eq!(read.unwrap(), 0, "backend sees EOF");
    expect_metric(
        admin,
        "wsgate_keepalive_timeouts_total{route=\"keepalive_silent\"}",
        1.0,
    )
    .await;
    expect_metric(admin, &closes("keepalive_silent", 1001, "gateway"), 1.0).await;
    expect_metric(admin, &active("keepalive_silent"), 0.0).await;
    // What the client finds when it finally reads: the ping, then Close 1001.
    match timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
        Some(Ok(Message::Ping(_))) => {}
        other => panic!("expected the unanswered ping first, got {other:?}"),
    }
    assert_eq!(
        expect_close(&mut ws).await,
        (1001, "keepalive timeout".to_owned())
    );
    gw.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn keepalive_ends_a_session_whose_client_stops_reading_under_load() {
    tick_paused_clock();
    let (backend, mut accepted) = tcp_backend().await;
    let gw = gateway_with(
        "keepalive_stalled",
        &format!("tcp://{backend}"),
        KEEPALIVE_20S,
    )
    .await;
    let admin = gw.admin.unwrap();
    // Never read: once the socket buffers fill, the gateway's write to it blocks.
    let _ws = ws_client(&gw.url("/")).await;
    let mut b = accepted.recv().await.unwrap();
    // The backend floods until its writes fail: the gateway gave up on the stalled client
    // (no byte accepted for a whole ping cycle, 40 s) and dropped the backend connection.
    let flood = timeout(Duration::from_secs(300), async {
        let chunk = pattern(0, 64 * 1024);
        loop {
            if let Err(e) = b.write_all(&chunk).await {
                return e;
            }
        }
    })
    .await
    .expect("the gateway drops the session within 300 virtual seconds");
    println!("backend write failed: {flood}");
    expect_metric(
        admin,
        "wsgate_keepalive_timeouts_total{route=\"keepalive_stalled\"}",
        1.0,
    )
    .await;
    expect_metric(admin, &closes("keepalive_stalled", 1006, "gateway"), 1.0).await;
    expect_metric(admin, &active("keepalive_stalled"), 0.0).await;
    gw.stop().await.unwrap();
}

// ---- Backpressure ----------------------------------------------------------------------------

/// Regression (issue 9 item 7): while the client→backend direction waited on a backend that
/// was slow to read, the client's pongs sat unread behind its data, and after ping + pong
/// timeout the live client was closed 1001 "keepalive timeout" with bytes it had sent lost.
/// Backpressure now holds the client back without blaming it: the backend pauses reading for
/// 5 s against ping 1 s / pong 2 s, and the session survives and delivers every byte.
#[tokio::test]
async fn a_slow_backend_holds_the_client_back_without_killing_it() {
    const N: usize = 16 << 20;
    const CHUNK: usize = 64 * 1024;
    let listener = small_window_listener().await;
    let backend = listener.local_addr().unwrap();
    let gw = gateway_with(
        "slow_backend",
        &format!("tcp://{backend}"),
        "[timeouts]\nping_interval_secs = 1\npong_timeout_secs = 2\nbackend_stall_secs = 30\n",
    )
    .await;
    let (mut sink, mut stream) = ws_client(&gw.url("/")).await.split();
    let (mut b, _) = listener.accept().await.unwrap();
    let backend_side = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut got = Vec::with_capacity(N);
        // Until the gateway's FIN, which follows the client's Close.
        b.read_to_end(&mut got).await.unwrap();
        got
    });
    // The client reads all along, so tungstenite answers every ping as soon as it can write.
    let reader = tokio::spawn(async move {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                other => panic!("the client's session ended early: {other:?}"),
            }
        }
    });
    for offset in (0..N).step_by(CHUNK) {
        futures_util::SinkExt::send(&mut sink, Message::binary(pattern(offset as u64, CHUNK)))
            .await
            .expect("the gateway keeps the client's session open");
    }
    futures_util::SinkExt::send(
        &mut sink,
        Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        })),
    )
    .await
    .unwrap();
    let got = timeout(Duration::from_secs(60), backend_side)
        .await
        .expect("the backend got everything in time")
        .unwrap();
    assert_eq!(got.len(), N, "every byte reached the backend");
    assert!(got == pattern(0, N), "intact and in order");
    let close = timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(close, Some(1000), "the client's own Close, echoed");
    let admin = gw.admin.unwrap();
    expect_metric(admin, &closes("slow_backend", 1000, "client"), 1.0).await;
    assert_eq!(
        metric(
            &scrape(admin).await,
            "wsgate_keepalive_timeouts_total{route=\"slow_backend\"}"
        )
        .unwrap_or(0.0),
        0.0
    );
    gw.stop().await.unwrap();
}

/// Issue 9 item 7: a backend that stops reading altogether no longer hides behind the
/// client's keepalive: after `backend_stall_secs` without progress the session closes with
/// 1011 "backend stopped reading" (keepalive off here, so nothing else could end it).
#[tokio::test]
async fn a_stalled_backend_closes_the_session_1011_after_backend_stall_secs() {
    let listener = small_window_listener().await;
    let backend = listener.local_addr().unwrap();
    let gw = gateway_with(
        "stalled_backend",
        &format!("tcp://{backend}"),
        "[timeouts]\nping_interval_secs = 0\nbackend_stall_secs = 1\n",
    )
    .await;
    let (mut sink, mut stream) = ws_client(&gw.url("/")).await.split();
    let (_never_read, _) = listener.accept().await.unwrap();
    let writer = tokio::spawn(async move {
        let chunk = pattern(0, 64 * 1024);
        while futures_util::SinkExt::send(&mut sink, Message::binary(chunk.clone()))
            .await
            .is_ok()
        {}
    });
    let close = timeout(Duration::from_secs(30), async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(f))) => {
                    break f.map(|f| (u16::from(f.code), f.reason.to_string()))
                }
                Some(Ok(_)) => {}
                other => panic!("no Close: {other:?}"),
            }
        }
    })
    .await
    .expect("the gateway gives up on the stalled backend");
    assert_eq!(close, Some((1011, "backend stopped reading".to_owned())));
    writer.abort();
    expect_metric(
        gw.admin.unwrap(),
        &closes("stalled_backend", 1011, "backend"),
        1.0,
    )
    .await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn slow_reader_bounds_buffering_and_loses_nothing() {
    let (backend, mut accepted) = tcp_backend().await;
    let gw = gateway_with(
        "slow_reader",
        &format!("tcp://{backend}"),
        "[timeouts]\nping_interval_secs = 0\n",
    )
    .await;
    let mut ws = ws_client(&gw.url("/")).await;
    let mut b = accepted.recv().await.unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (written, stop) = (written.clone(), stop.clone());
        tokio::spawn(async move {
            let mut offset = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let chunk = pattern(offset, 64 * 1024);
                let n = b.write(&chunk).await.unwrap();
                offset += n as u64;
                written.store(offset, Ordering::Relaxed);
            }
            b.shutdown().await.unwrap();
            let _ = b.read_to_end(&mut Vec::new()).await;
            offset
        })
    };
    // Wait until the backend's writes stop progressing: unchanged for 1 s (30 s at most).
    let mut last = u64::MAX;
    let mut stable = 0;
    let stalled = timeout(Duration::from_secs(30), async {
        while stable < 20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = written.load(Ordering::Relaxed);
            if now == last {
                stable += 1;
            } else {
                (last, stable) = (now, 0);
            }
        }
        last
    })
    .await
    .expect("the backend's writes stall while the client does not read");
    println!(
        "backend wrote {stalled} bytes ({:.2} MiB) before backpressure stopped it",
        stalled as f64 / (1 << 20) as f64
    );
    assert!(stalled > 0);
    assert!(
        stalled < 16 << 20,
        "buffered {stalled} bytes for a client that does not read"
    );
    // Now read everything: every byte, in order, then the backend's FIN as Close 1000.
    stop.store(true, Ordering::Relaxed);
    let mut received = 0u64;
    let close = loop {
        match timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
            Some(Ok(Message::Binary(data))) => {
                assert!(
                    data[..] == pattern(received, data.len())[..],
                    "bytes at offset {received} intact"
                );
                received += data.len() as u64;
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close, Some(1000));
    finish_close(&mut ws).await;
    let total = writer.await.unwrap();
    assert_eq!(received, total, "lossless under backpressure");
    expect_metric(
        gw.admin.unwrap(),
        "wsgate_bytes_total{route=\"slow_reader\",direction=\"backend_to_client\"}",
        total as f64,
    )
    .await;
    gw.stop().await.unwrap();
}

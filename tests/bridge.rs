//! The bridge to TCP backends over real sockets: what only a byte stream has (FIN and half-close,
//! reset, text routes, message limits seen through an echo that keeps the client's frames).
//! Scenarios that hold for WebSocket backends too are in tests/backend_kinds.rs.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use support::frame_bits::*;
use support::*;

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

// ---- Message limits, with an echo that keeps the client's frames -------------------------

#[tokio::test]
async fn fragmented_message_over_the_frame_limit_streams_through() {
    let route = "fragmented_big";
    let echo = tcp_echo_backend().await;
    let gw = gateway_with(
        route,
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
    expect_metric(admin, &closes(route, 1000, "client"), 1.0).await;
    expect_metric(
        admin,
        &format!("wsgate_messages_total{{route=\"{route}\",direction=\"client_to_backend\"}}"),
        1.0,
    )
    .await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn message_over_max_message_bytes_closes_1009_after_streaming_its_start() {
    let route = "message_limit";
    let echo = tcp_echo_backend().await;
    let gw = gateway_with(
        route,
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
    expect_metric(gw.admin.unwrap(), &closes(route, 1009, "client"), 1.0).await;
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

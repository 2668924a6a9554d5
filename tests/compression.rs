//! permessage-deflate (RFC 7692) end to end: negotiation answers, compressed echo over a TCP
//! route, pass-through and recompression over WebSocket routes (Python `websockets` backend
//! with and without compression, a Rust backend without), RSV1 misuse, compression bombs.
//!
//! The client side compresses and inflates with flate2 directly, not with the gateway's codec.

mod support;

use std::time::Duration;

use support::*;
use wsgate::ops::reload::Trigger;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
use frame_bits::{FIN, RSV1};

fn text(n: usize) -> Vec<u8> {
    let line = b"{\"type\":\"tick\",\"symbol\":\"ACME\",\"price\":101.25,\"size\":300}\n";
    line.iter().copied().cycle().take(n).collect()
}

/// A route `/z` (compression on) and `/plain` (off), both to `backend`.
fn two_routes(backend: &str, extra: &str) -> String {
    config_with(&format!(
        "{}compression = \"on\"\n{extra}\n{}",
        route("z", "/z", backend),
        route("plain", "/plain", backend)
    ))
}

#[tokio::test]
async fn negotiation_answers_offers_and_declines_the_rest() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&two_routes(&format!("tcp://{echo}"), "")).await;
    let cases: &[(&str, &str, Option<&str>)] = &[
        // Chromium and Firefox.
        (
            "/z",
            "permessage-deflate; client_max_window_bits",
            Some("permessage-deflate"),
        ),
        (
            "/z",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=10"),
        ),
        // The first offer asks for an 8-bit window zlib cannot make: the second one is taken.
        (
            "/z",
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_no_context_takeover",
            Some("permessage-deflate; client_no_context_takeover"),
        ),
        // Duplicate and unknown parameters, other extensions: declined, still a 101.
        (
            "/z",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            None,
        ),
        ("/z", "permessage-deflate; x=1", None),
        ("/z", "x-webkit-deflate-frame", None),
        // Compression off: every offer declined.
        ("/plain", "permessage-deflate", None),
    ];
    for (path, offer, want) in cases {
        let (status, answer) =
            upgrade_with(gw.addr, path, &[("Sec-WebSocket-Extensions", offer)]).await;
        assert_eq!(status, 101, "{offer}: {answer}");
        assert_eq!(
            answer_header(&answer, "sec-websocket-extensions"),
            *want,
            "{path} {offer}"
        );
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn compressed_echo_over_a_tcp_route() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&two_routes(
        &format!("tcp://{echo}"),
        "message_type = \"text\"\nsubprotocols = []",
    ))
    .await;
    let (mut ws, head) = raw_ws_client_with(gw.addr, "/z", OFFER).await;
    assert_eq!(
        answer_header(&head, "sec-websocket-extensions"),
        Some("permessage-deflate")
    );
    let (mut def, mut inf) = (ClientDeflate::new(), ClientInflate::new());

    // One compressed text message, twice (the second leans on the first's context).
    for _ in 0..2 {
        let msg = text(20_000);
        let wire = def.piece(&msg, true);
        assert!(wire.len() < 2_000);
        ws.send(&client_frame(FIN | RSV1 | frame_bits::TEXT, &wire))
            .await;
        let (back, compressed) = read_echo(&mut ws, &mut inf, msg.len()).await;
        assert_eq!(back, msg);
        assert!(
            compressed > 0,
            "text-like backend bytes come back compressed"
        );
    }

    // A fragmented compressed message with a ping between its fragments.
    let msg = text(50_000);
    let (a, b) = msg.split_at(17_000);
    let (wa, wb) = (def.piece(a, false), def.piece(b, true));
    ws.send(&client_frame(RSV1 | frame_bits::TEXT, &wa)).await;
    ws.send(&client_frame(FIN | frame_bits::PING, b"mid")).await;
    ws.send(&client_frame(FIN | frame_bits::CONTINUATION, &wb))
        .await;
    let mut back = Vec::new();
    let mut pong = false;
    while back.len() < msg.len() {
        let f = ws.read_frame().await.expect("a frame");
        match f.opcode() {
            frame_bits::PONG => {
                assert_eq!(f.payload, b"mid");
                pong = true;
            }
            frame_bits::TEXT | frame_bits::BINARY if f.first & RSV1 != 0 => {
                back.extend_from_slice(&inf.message(&f.payload))
            }
            frame_bits::TEXT | frame_bits::BINARY => back.extend_from_slice(&f.payload),
            other => panic!("unexpected opcode {other}"),
        }
    }
    assert_eq!(back, msg);
    assert!(pong, "the ping inside the message was answered");

    // An uncompressed message on a compressed session is fine too; so is an empty one.
    ws.send(&client_frame(FIN | frame_bits::TEXT, b"plain text"))
        .await;
    let (back, _) = read_echo(&mut ws, &mut inf, 10).await;
    assert_eq!(back, b"plain text");
    ws.send(&client_frame(FIN | RSV1 | frame_bits::TEXT, &[0x00]))
        .await;

    ws.send(&client_frame(
        FIN | frame_bits::CLOSE,
        &close_payload(1000, ""),
    ))
    .await;
    assert_eq!(ws.expect_close().await.0, 1000);
    gw.stop().await.unwrap();
}

/// Reload: compression is part of the route each new session takes from the running
/// snapshot (the merge of hot reload could have left it fixed at start, or switched live
/// sessions mid-stream). Turned on by a reload, new sessions negotiate it while a session
/// that started without it carries on uncompressed; turned off again, new sessions are
/// declined while the compressed session keeps its agreement and its context to the end.
#[tokio::test]
async fn compression_follows_a_reload_for_new_sessions_only() {
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    let write_mode = |mode: &str| {
        let toml = config_with(&format!(
            "[reload]\nwatch = false\n{}compression = \"{mode}\"\nmessage_type = \"text\"\n",
            route("z", "/z", &echo)
        ));
        std::fs::write(&file, toml).expect("config written");
    };
    write_mode("off");
    let gw = spawn_gateway_from_file(&file).await;
    let (mut plain, head) = raw_ws_client_with(gw.addr, "/z", OFFER).await;
    assert_eq!(answer_header(&head, "sec-websocket-extensions"), None);

    write_mode("on");
    gw.reload.reload(Trigger::Api).await.expect("reload to on");
    let (mut deflated, head) = raw_ws_client_with(gw.addr, "/z", OFFER).await;
    assert_eq!(
        answer_header(&head, "sec-websocket-extensions"),
        Some("permessage-deflate"),
        "a new session negotiates after the reload"
    );
    let (mut def, mut inf) = (ClientDeflate::new(), ClientInflate::new());
    let msg = text(20_000);
    deflated
        .send(&client_frame(
            FIN | RSV1 | frame_bits::TEXT,
            &def.piece(&msg, true),
        ))
        .await;
    let (back, compressed) = read_echo(&mut deflated, &mut inf, msg.len()).await;
    assert_eq!(back, msg);
    assert!(
        compressed > 0,
        "the new session's echo comes back compressed"
    );
    plain
        .send(&client_frame(FIN | frame_bits::TEXT, &msg))
        .await;
    let (back, compressed) = read_echo(&mut plain, &mut ClientInflate::new(), msg.len()).await;
    assert_eq!(
        (back == msg, compressed),
        (true, 0),
        "the older session stays plain"
    );

    write_mode("off");
    gw.reload.reload(Trigger::Api).await.expect("reload to off");
    let (mut later, head) = raw_ws_client_with(gw.addr, "/z", OFFER).await;
    assert_eq!(
        answer_header(&head, "sec-websocket-extensions"),
        None,
        "declined again after the second reload"
    );
    deflated
        .send(&client_frame(
            FIN | RSV1 | frame_bits::TEXT,
            &def.piece(&msg, true),
        ))
        .await;
    let (back, compressed) = read_echo(&mut deflated, &mut inf, msg.len()).await;
    assert_eq!(back, msg);
    assert!(compressed > 0, "the compressed session keeps its agreement");

    for ws in [&mut plain, &mut deflated, &mut later] {
        ws.send(&client_frame(
            FIN | frame_bits::CLOSE,
            &close_payload(1000, ""),
        ))
        .await;
        assert_eq!(ws.expect_close().await.0, 1000);
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn incompressible_backend_bytes_go_out_plain() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&two_routes(&format!("tcp://{echo}"), "")).await;
    let (mut ws, _) = raw_ws_client_with(gw.addr, "/z", OFFER).await;
    let mut inf = ClientInflate::new();
    // Random bytes (a fixed-seed xorshift): deflate would only make them larger.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..30_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    ws.send(&client_frame(FIN | frame_bits::BINARY, &noise))
        .await;
    let (back, compressed) = read_echo(&mut ws, &mut inf, noise.len()).await;
    assert_eq!(back, noise);
    assert_eq!(compressed, 0, "no RSV1 where compressing saves nothing");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn rsv1_misuse_closes_with_1002() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&two_routes(&format!("tcp://{echo}"), "")).await;
    let mut def = ClientDeflate::new();
    let hello = def.piece(b"hello hello hello", true);
    // Without negotiation, RSV1 is just a reserved bit.
    let (mut ws, _) = raw_ws_client_with(gw.addr, "/z", "").await;
    ws.send(&client_frame(FIN | RSV1 | frame_bits::TEXT, &hello))
        .await;
    assert_eq!(ws.expect_close().await, (1002, "reserved bits set".into()));
    let (mut ws, _) = raw_ws_client_with(gw.addr, "/plain", OFFER).await;
    ws.send(&client_frame(FIN | RSV1 | frame_bits::TEXT, &hello))
        .await;
    assert_eq!(ws.expect_close().await.0, 1002);
    // Negotiated, but on a control frame or a continuation frame.
    let (mut ws, _) = raw_ws_client_with(gw.addr, "/z", OFFER).await;
    ws.send(&client_frame(FIN | RSV1 | frame_bits::PING, b"x"))
        .await;
    assert_eq!(
        ws.expect_close().await,
        (1002, "RSV1 on a control frame".into())
    );
    let (mut ws, _) = raw_ws_client_with(gw.addr, "/z", OFFER).await;
    ws.send(&client_frame(RSV1 | frame_bits::TEXT, &hello[..4]))
        .await;
    ws.send(&client_frame(
        FIN | RSV1 | frame_bits::CONTINUATION,
        &hello[4..],
    ))
    .await;
    assert_eq!(
        ws.expect_close().await,
        (1002, "RSV1 on a continuation frame".into())
    );
    // Garbage where deflate data should be.
    let (mut ws, _) = raw_ws_client_with(gw.addr, "/z", OFFER).await;
    ws.send(&client_frame(FIN | RSV1 | frame_bits::BINARY, &[0xff; 8]))
        .await;
    assert_eq!(ws.expect_close().await.0, 1007);
    gw.stop().await.unwrap();
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A 256 MiB message of zeros, about 256 KiB compressed, against a 1 MiB message limit:
/// closed with 1009, the backend got at most the limit, and the gateway never held the
/// inflated message (its RSS, this process's, grows by far less than the message).
#[tokio::test]
async fn a_compression_bomb_is_1009_with_memory_bounded() {
    let (backend, mut accepted) = tcp_backend().await;
    let gw = spawn_gateway(&two_routes(
        &format!("tcp://{backend}"),
        "max_message_bytes = 1048576\nmax_frame_bytes = 1048576",
    ))
    .await;
    let mut def = ClientDeflate::new();
    let zeros = vec![0u8; 1 << 20];
    let mut bomb = Vec::new();
    for i in 0..256 {
        bomb.extend_from_slice(&def.piece(&zeros, i == 255));
    }
    assert!(bomb.len() < 1 << 20, "{} bytes compressed", bomb.len());
    drop(zeros);

    let (mut ws, _) = raw_ws_client_with(gw.addr, "/z", OFFER).await;
    let mut server_side = accepted.recv().await.expect("the gateway dialed");
    let counting = tokio::spawn(async move {
        let mut n = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        use tokio::io::AsyncReadExt;
        while let Ok(k) = server_side.read(&mut buf).await {
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    });
    let before = rss_bytes();
    ws.send(&client_frame(FIN | RSV1 | frame_bits::BINARY, &bomb))
        .await;
    assert_eq!(ws.expect_close().await, (1009, "message too big".into()));
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 48 << 20, "RSS grew by {} MiB", grown >> 20);
    ws.send(&client_frame(
        FIN | frame_bits::CLOSE,
        &close_payload(1009, ""),
    ))
    .await;
    let got = tokio::time::timeout(Duration::from_secs(10), counting)
        .await
        .expect("the backend connection ends")
        .unwrap();
    assert!(got <= 1 << 20, "backend got {got} bytes");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn ws_route_recompresses_for_a_backend_without_compression() {
    let (backend, _seen) = ws_echo_backend().await;
    let gw = spawn_gateway(&two_routes(&format!("ws://{backend}/"), "")).await;
    let (mut ws, head) = raw_ws_client_with(gw.addr, "/z", OFFER).await;
    assert_eq!(
        answer_header(&head, "sec-websocket-extensions"),
        Some("permessage-deflate")
    );
    let (mut def, mut inf) = (ClientDeflate::new(), ClientInflate::new());
    for n in [100, 70_000] {
        let msg = text(n);
        let wire = def.piece(&msg, true);
        ws.send(&client_frame(FIN | RSV1 | frame_bits::TEXT, &wire))
            .await;
        let (first, payload) = read_message(&mut ws).await;
        assert_ne!(first & RSV1, 0, "recompressed for the client");
        assert_eq!(inf.message(&payload), msg);
    }
    gw.stop().await.unwrap();
}

/// Through a Python `websockets` backend, with its compression on (both hops agree: frames
/// pass through) and off (the gateway inflates and recompresses): echoes come back intact
/// and compressed, and the backend reports what its hop negotiated.
#[tokio::test]
async fn ws_route_to_python_websockets_with_and_without_compression() {
    let Some(python) = python_with_websockets_or_skip(
        "ws_route_to_python_websockets_with_and_without_compression",
    ) else {
        return;
    };
    for (mode, backend_ext) in [("on", "permessage-deflate"), ("off", "none")] {
        let mut peer = PythonPeer::start(&python, PYTHON_WS_ECHO, &[mode]);
        let port = peer.port().await;
        let gw = spawn_gateway(&two_routes(&format!("ws://127.0.0.1:{port}/"), "")).await;
        let (mut ws, _) = raw_ws_client_with(gw.addr, "/z", OFFER).await;
        let seen = peer.next_line().await;
        assert!(
            seen.starts_with(&format!("extensions {backend_ext}")),
            "{mode}: {seen}"
        );
        let (mut def, mut inf) = (ClientDeflate::new(), ClientInflate::new());
        for n in [5_000, 200_000, 5_000] {
            let msg = text(n);
            ws.send(&client_frame(
                FIN | RSV1 | frame_bits::TEXT,
                &def.piece(&msg, true),
            ))
            .await;
            let (back, compressed) = read_echo(&mut ws, &mut inf, msg.len()).await;
            assert_eq!(back, msg, "{mode}");
            assert!(compressed > 0, "{mode}: compressed towards the client");
        }
        // A fragmented compressed message.
        let msg = text(30_000);
        let (a, b) = msg.split_at(10_000);
        ws.send(&client_frame(RSV1 | frame_bits::TEXT, &def.piece(a, false)))
            .await;
        ws.send(&client_frame(
            FIN | frame_bits::CONTINUATION,
            &def.piece(b, true),
        ))
        .await;
        let (back, _) = read_echo(&mut ws, &mut inf, msg.len()).await;
        assert_eq!(back, msg, "{mode}: fragmented");
        ws.send(&client_frame(
            FIN | frame_bits::CLOSE,
            &close_payload(1000, ""),
        ))
        .await;
        assert_eq!(ws.expect_close().await.0, 1000);
        gw.stop().await.unwrap();
        peer.kill().await;
    }
}

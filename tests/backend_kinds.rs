//! Session scenarios that hold for every backend kind, written once and run for each: a TCP
//! backend (the bridge) and a WebSocket backend (the relay). `name::tcp` and `name::ws` are the
//! two runs of scenario `name`. What only one kind has stays in tests/bridge.rs (TCP) or
//! tests/ws_backend.rs (WebSocket).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use support::frame_bits::*;
use support::*;

for_each_backend_kind! {
    #[tokio::test]
    async fn echoes_binary_both_ways(kind) {
        let route = kind.route("echo_both_ways");
        let gw = gateway_to(&route, &kind.echo_backend().await).await;
        let mut ws = ws_client(&gw.url("/")).await;
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        send_binary(&mut ws, &payload).await;
        assert_eq!(read_bytes(&mut ws, payload.len()).await, payload);
        gw.stop().await.unwrap();
    }
}

for_each_backend_kind! {
    #[tokio::test]
    async fn frame_over_max_frame_bytes_closes_1009(kind) {
        let route = kind.route("frame_limit");
        let gw = gateway_with(
            &route,
            &kind.echo_backend().await,
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
        expect_metric(gw.admin.unwrap(), &closes(&route, 1009, "client"), 1.0).await;
        drop(ws);
        gw.stop().await.unwrap();
    }
}

for_each_backend_kind! {
    #[tokio::test]
    async fn frame_of_exactly_max_frame_bytes_is_accepted(kind) {
        let route = kind.route("frame_limit_exact");
        let gw = gateway_with(
            &route,
            &kind.echo_backend().await,
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
}

for_each_backend_kind! {
    #[tokio::test]
    async fn invalid_utf8_in_client_text_closes_1007(kind) {
        let route = kind.route("client_bad_utf8");
        let gw = gateway_to(&route, &kind.echo_backend().await).await;
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
        expect_metric(gw.admin.unwrap(), &closes(&route, 1007, "client"), 2.0).await;
        gw.stop().await.unwrap();
    }
}

for_each_backend_kind! {
    #[tokio::test]
    async fn fragmented_text_split_inside_a_character_passes(kind) {
        let route = kind.route("client_text_split");
        let gw = gateway_to(&route, &kind.echo_backend().await).await;
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
}

for_each_backend_kind! {
    #[tokio::test]
    async fn text_character_split_across_three_frames_passes(kind) {
        let route = kind.route("client_text_split3");
        let gw = gateway_to(&route, &kind.echo_backend().await).await;
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
}

for_each_backend_kind! {
    #[tokio::test]
    async fn text_message_ending_inside_a_character_closes_1007(kind) {
        let route = kind.route("client_text_cut_end");
        let gw = gateway_to(&route, &kind.echo_backend().await).await;
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
}

for_each_backend_kind! {
    #[tokio::test]
    async fn protocol_violations_close_1002(kind) {
        let route = kind.route("client_protocol");
        let gw = gateway_to(&route, &kind.echo_backend().await).await;
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
            &closes(&route, 1002, "client"),
            cases.len() as f64,
        )
        .await;
        gw.stop().await.unwrap();
    }
}

for_each_backend_kind! {
    #[tokio::test(start_paused = true)]
    async fn keepalive_answered_pings_keep_the_session_open(kind) {
        tick_paused_clock();
        let route = kind.route("keepalive_answered");
        let gw = gateway_with(&route, &kind.echo_backend().await, KEEPALIVE_20S).await;
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
            &format!("wsgate_ping_rtt_seconds_count{{route=\"{route}\"}}"),
        )
        .unwrap_or(0.0);
        assert!(rtts >= 3.0, "ping_rtt count {rtts}");
        assert_eq!(metric(&page, &active(&route)), Some(1.0));
        // Registered with the route's other series (at 0), or absent: never counted.
        assert_eq!(
            metric(
                &page,
                &keepalive_timeouts(&route)
            )
            .unwrap_or(0.0),
            0.0
        );
        ws.close(None).await.unwrap();
        assert_eq!(expect_close(&mut ws).await.0, 1005);
        finish_close(&mut ws).await;
        gw.stop().await.unwrap();
    }
}

for_each_backend_kind! {
    #[tokio::test(start_paused = true)]
    async fn keepalive_closes_a_client_that_never_answers(kind) {
        tick_paused_clock();
        let route = kind.route("keepalive_silent");
        let (backend, mut accepted) = kind.backend().await;
        let gw = gateway_with(&route, &backend, KEEPALIVE_20S).await;
        let admin = gw.admin.unwrap();
        // Never polled until the end, so never answers the ping.
        let mut ws = ws_client(&gw.url("/")).await;
        let mut b = accepted.recv().await.unwrap();
        // The gateway lets go of the backend (ping at 20 s, timeout at 40 s): EOF for TCP, a
        // Close for a WebSocket backend (which answers its own hop's pings while it reads).
        let end = b.expect_end(Duration::from_secs(120)).await;
        match kind {
            BackendKind::Tcp => assert_eq!(end, None, "backend sees EOF"),
            BackendKind::Ws => assert_eq!(end, Some((1001, "peer keepalive timeout".into()))),
        }
        expect_metric(
            admin,
            &keepalive_timeouts(&route),
            1.0,
        )
        .await;
        expect_metric(admin, &closes(&route, 1001, "gateway"), 1.0).await;
        expect_metric(admin, &active(&route), 0.0).await;
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
}

for_each_backend_kind! {
    /// Regression (issue 9 item 7): while the client→backend direction waited on a backend that
    /// was slow to read, the client's pongs sat unread behind its data, and after ping + pong
    /// timeout the live client was closed 1001 "keepalive timeout" with bytes it had sent lost.
    /// Backpressure now holds the client back without blaming it: the backend pauses reading for
    /// 5 s against ping 1 s / pong 2 s, and the session survives and delivers every byte.
    #[tokio::test]
    async fn a_slow_backend_holds_the_client_back_without_killing_it(kind) {
        const N: usize = 16 << 20;
        const CHUNK: usize = 64 * 1024;
        let route = kind.route("slow_backend");
        let listener = small_window_listener().await;
        let backend = kind.url(listener.local_addr().unwrap());
        let gw = gateway_with(
            &route,
            &backend,
            "[timeouts]\nping_interval_secs = 1\npong_timeout_secs = 2\nbackend_stall_secs = 30\n",
        )
        .await;
        // Accepting first: the gateway completes a WebSocket backend's handshake before its `101`.
        let backend_side = tokio::spawn(async move {
            let mut b = kind.accept(&listener).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            b.read_all().await
        });
        let (mut sink, mut stream) = ws_client(&gw.url("/")).await.split();
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
        assert_eq!(
            close,
            Some(1000),
            "the client's own Close, echoed (by the gateway for TCP, by the backend for WebSocket)"
        );
        let admin = gw.admin.unwrap();
        expect_metric(admin, &closes(&route, 1000, "client"), 1.0).await;
        assert_eq!(
            metric(
                &scrape(admin).await,
                &keepalive_timeouts(&route)
            )
            .unwrap_or(0.0),
            0.0
        );
        gw.stop().await.unwrap();
    }
}

for_each_backend_kind! {
    /// Issue 9 item 7: a backend that stops reading altogether no longer hides behind the
    /// client's keepalive: after `backend_stall_secs` without progress the session closes with
    /// 1011 "backend stopped reading" (keepalive off here, so nothing else could end it).
    #[tokio::test]
    async fn a_stalled_backend_closes_the_session_1011_after_backend_stall_secs(kind) {
        let route = kind.route("stalled_backend");
        let listener = small_window_listener().await;
        let backend = kind.url(listener.local_addr().unwrap());
        let gw = gateway_with(
            &route,
            &backend,
            "[timeouts]\nping_interval_secs = 0\nbackend_stall_secs = 1\n",
        )
        .await;
        let never_read = tokio::spawn(async move { kind.accept(&listener).await.unwrap() });
        let (mut sink, mut stream) = ws_client(&gw.url("/")).await.split();
        let _never_read = never_read.await.unwrap();
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
        // The bridge records the code it sent the client; the relay records its backend hop
        // as ended abnormally (1006).
        let recorded = match kind {
            BackendKind::Tcp => 1011,
            BackendKind::Ws => 1006,
        };
        expect_metric(gw.admin.unwrap(), &closes(&route, recorded, "backend"), 1.0).await;
        gw.stop().await.unwrap();
    }
}

for_each_backend_kind! {
    #[tokio::test]
    async fn slow_reader_bounds_buffering_and_loses_nothing(kind) {
        let route = kind.route("slow_reader");
        let (backend, mut accepted) = kind.backend().await;
        let gw = gateway_with(
            &route,
            &backend,
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
                b.finish().await;
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
        // Now read everything: every byte, in order, then the backend's end (TCP FIN, WebSocket
        // Close 1000) as Close 1000.
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
            &format!("wsgate_bytes_total{{route=\"{route}\",direction=\"backend_to_client\"}}"),
            total as f64,
        )
        .await;
        gw.stop().await.unwrap();
    }
}

for_each_backend_kind! {
    #[tokio::test]
    async fn client_vanishing_closes_backend_and_ends_session(kind) {
        let route = kind.route("client_vanishes");
        let (backend, mut accepted) = kind.backend().await;
        let gw = gateway_to(&route, &backend).await;
        let admin = gw.admin.unwrap();
        let ws = ws_client(&gw.url("/")).await;
        let mut b = accepted.recv().await.unwrap();
        expect_metric(admin, &active(&route), 1.0).await;
        drop(ws); // TCP FIN, no Close frame
        // A TCP backend sees the end of the stream; a WebSocket backend a Close 1001, then the end.
        let end = b.expect_end(Duration::from_secs(10)).await;
        match kind {
            BackendKind::Tcp => assert_eq!(end, None),
            BackendKind::Ws => assert_eq!(end, Some((1001, "client went away".into()))),
        }
        expect_metric(admin, &active(&route), 0.0).await;
        expect_metric(admin, &closes(&route, 1006, "client"), 1.0).await;
        gw.stop().await.unwrap();
    }
}

for_each_backend_kind! {
    #[tokio::test]
    async fn gateway_shutdown_closes_both_hops_with_1001(kind) {
        let route = kind.route("close_shutdown");
        let (backend, mut accepted) = kind.backend().await;
        let gw = gateway_to(&route, &backend).await;
        let mut client = ws_client(&gw.url("/")).await;
        let mut b = accepted.recv().await.unwrap();

        gw.shutdown.cancel();
        let backend_side = tokio::spawn(async move { b.expect_end(Duration::from_secs(10)).await });
        assert_eq!(
            expect_close(&mut client).await,
            (1001, "gateway shutting down".into())
        );
        finish_close(&mut client).await;
        // A TCP backend sees the end of the stream; a WebSocket backend the same Close first.
        let end = backend_side.await.unwrap();
        match kind {
            BackendKind::Tcp => assert_eq!(end, None),
            BackendKind::Ws => assert_eq!(end, Some((1001, "gateway shutting down".into()))),
        }
        gw.stop().await.unwrap();
    }
}

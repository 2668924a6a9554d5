//! Client-controlled text never forges a log line. Alone in its own test binary for the same
//! reason as `access_logs.rs`: `tracing` caches call-site interest process-wide.

mod support;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use support::*;

const SECRET: &[u8] = b"a shared secret of at least 32 bytes, for tests";

/// Regression (issue 9 item 4): the client's close reason (and the JWT subject recorded on the
/// connection's span) were logged with `%` formatting, so a reason holding a newline wrote a
/// second, forged log line. Control characters in client-controlled fields are escaped.
#[tokio::test]
async fn control_characters_from_clients_are_escaped_in_the_log() {
    // `#[tokio::test]` runs every task on this thread, so the capture sees the gateway's lines.
    let (logs, _guard) = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let gw = spawn_gateway(&config_with(&format!(
        "{}[route.auth.jwt]\nalgorithm = \"HS256\"\nsecret_file = {:?}\n",
        route("logesc", "/", &echo),
        secret.display().to_string()
    )))
    .await;
    let token = jwt_hs256(
        SECRET,
        &json!({"sub": "alice\nFORGED-SUBJECT level=ERROR", "exp": unix_now() + 600}),
    );
    let auth = format!("Bearer {token}");
    let (mut ws, _) = ws_client_with(&gw.url("/"), &[("Authorization", auth.as_str())])
        .await
        .unwrap();
    assert_echoes(&mut ws, b"hello").await;
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye\r\nFORGED-REASON level=ERROR\u{1b}[31m".into(),
    })))
    .await
    .unwrap();
    finish_close(&mut ws).await;
    drop(ws);
    gw.stop().await.unwrap();

    let text = logs.text();
    assert!(text.contains("session closed"), "capture works: {text}");
    for line in text.lines() {
        assert!(
            !line.starts_with("FORGED"),
            "a forged line: {line:?}\n{text}"
        );
        assert!(!line.contains('\u{1b}'), "an escape sequence: {line:?}");
    }
    assert!(text.contains(r"bye\r\nFORGED-REASON"), "{text}");
    assert!(text.contains(r"alice\nFORGED-SUBJECT"), "{text}");
}

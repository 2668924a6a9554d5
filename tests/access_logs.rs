//! The log never holds a query-string token. Alone in its own test binary on purpose:
//! `tracing` caches each call site's interest process-wide, and a call site first hit by a
//! concurrent test on another thread can miss this test's scoped subscriber.

mod support;

use support::*;

const TOKEN: &str = "tok-5e1f0c2d9a7b";

#[tokio::test]
async fn query_tokens_never_reach_the_log() {
    // `#[tokio::test]` runs every task on this thread, so the capture sees the gateway's lines.
    let (logs, _guard) = capture_logs();
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let gw = spawn_gateway(&config_with(&format!(
        "{}[route.auth]\nbearer_sha256 = [\"{}\"]\ntoken_sources = [\"query\"]\n",
        route("logq", "/", &echo),
        sha256_hex(TOKEN)
    )))
    .await;
    let (status, _) = upgrade_with(gw.addr, "/?access_token=not-the-secret-but-close", &[]).await;
    assert_eq!(status, 401);
    let mut ws = ws_client(&gw.url(&format!("/?x=1&access_token={TOKEN}"))).await;
    assert_echoes(&mut ws, b"logged?").await;
    drop(ws);
    gw.stop().await.unwrap();

    let text = logs.text();
    assert!(text.contains("upgrade rejected"), "capture works: {text}");
    assert!(text.contains("access_token=<redacted>"), "{text}");
    assert!(text.contains("session closed"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
    assert!(!text.contains("not-the-secret-but-close"), "{text}");
}

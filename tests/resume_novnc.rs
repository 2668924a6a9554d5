//! noVNC (Debian's, `WSGATE_NOVNC` or /usr/share/novnc) in headless Chromium, given a
//! `ResumableWebSocket` from `/.wsgate/resume.js` as its channel, against a real VNC server
//! (x11vnc on Xvfb) behind a resumable route, while a relay between the browser and the
//! gateway resets the connection three times: noVNC never disconnects, its input still
//! reaches the server after every resume, and the VNC server saw one client connection.
//! Without Chromium, noVNC, Xvfb or x11vnc the test fails under `CI` and prints a skip
//! otherwise.

mod support;

use std::sync::atomic::Ordering;

use serde_json::json;
use support::browser::*;
use support::resume::FaultRelay;
use support::*;

/// The page: noVNC's RFB over a ResumableWebSocket to `/vnc` on the page's own origin.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>resumable noVNC</title>
<script src="/.wsgate/resume.js"></script></head>
<body><div id="screen" style="width:320px;height:240px"></div>
<script type="module">
  import RFB from "./novnc/core/rfb.js";
  window.events = [];
  const ws = new ResumableWebSocket("ws://" + location.host + "/vnc");
  window.ws = ws;
  ws.addEventListener("resuming", () => window.events.push("resuming"));
  ws.addEventListener("resumed", () => window.events.push("resumed"));
  const rfb = new RFB(document.getElementById("screen"), ws);
  window.rfb = rfb;
  rfb.addEventListener("connect", () => window.events.push("connect"));
  rfb.addEventListener("disconnect", (e) => window.events.push("disconnect:" + e.detail.clean));
</script></body></html>
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn novnc_on_the_resume_library_keeps_its_vnc_session_through_cut_connections() {
    let test = "novnc_on_the_resume_library_keeps_its_vnc_session_through_cut_connections";
    let Some(novnc) = novnc_tools(test, &[]) else {
        return;
    };
    let Some(browser) = Browser::start(test, None).await else {
        return;
    };
    let desktop = VncDesktop::start(320, 240).await;
    // A relay in front of the VNC server, never cut: it counts the gateway's connections.
    let backend = FaultRelay::start(desktop.addr).await;
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), PAGE).unwrap();
    std::os::unix::fs::symlink(&novnc, web.path().join("novnc")).unwrap();
    let gw = spawn_gateway(&config_with(&format!(
        "[web]\nroot = {:?}\nfollow_external_symlinks = true\n\n{}[route.resume]\n\
         grace_secs = 30\nheartbeat_secs = 1\n",
        web.path().display().to_string(),
        route("vnc", "/vnc", &format!("tcp://{}", backend.addr))
    )))
    .await;
    let relay = FaultRelay::start(gw.addr).await;
    browser
        .client()
        .goto(&format!("http://{}/", relay.addr))
        .await
        .expect("page loads");
    browser
        .eventually(
            "noVNC connects",
            "return window.events.includes('connect');",
            json!(null),
        )
        .await;

    for round in 0..3 {
        relay.cut();
        browser
            .eventually(
                "the channel resumes",
                "return window.events.filter(e => e === 'resumed').length > arguments[0];",
                json!(round),
            )
            .await;
        // Input after the resume reaches the VNC server: the gateway acknowledges it once it
        // is written to the backend.
        let acked = browser
            .client()
            .execute(
                "window.rfb.sendKey(0xffe1, 'ShiftLeft'); return window.ws._acked;",
                vec![],
            )
            .await
            .unwrap();
        browser
            .eventually(
                "the key reaches the VNC server",
                "return window.ws._acked > arguments[0];",
                acked,
            )
            .await;
    }
    let events = browser
        .client()
        .execute("return window.events;", vec![])
        .await
        .unwrap();
    let events: Vec<String> = serde_json::from_value(events).unwrap();
    assert!(
        !events.iter().any(|e| e.starts_with("disconnect")),
        "noVNC disconnected: {events:?}"
    );
    let state = browser
        .client()
        .execute("return window.rfb._rfbConnectionState;", vec![])
        .await
        .unwrap();
    assert_eq!(state, json!("connected"), "{events:?}");
    let size = browser
        .client()
        .execute(
            "return [window.rfb._fbWidth, window.rfb._fbHeight];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        size,
        json!([320, 240]),
        "noVNC has the X display's framebuffer"
    );
    assert_eq!(
        backend.accepted.load(Ordering::SeqCst),
        1,
        "the VNC server saw one client connection"
    );
    browser.screenshot("resume-novnc").await;
    browser.quit().await;
    gw.stop().await.unwrap();
}

//! The browser library `/.wsgate/resume.js` in a real browser (Debian's Chromium, headless)
//! against a real shell: a terminal-style page types commands into `/bin/sh` behind a
//! resumable route while a fault-injecting relay between the browser and the gateway resets
//! the connection several times, once while the shell is still producing output and once
//! right before the page sends. The page never sees `close`, every output line arrives
//! exactly once, and the shell's PID never changes: one backend connection, one shell.
//! Without Chromium the test fails under `CI` and prints a skip otherwise.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use support::browser::*;
use support::resume::FaultRelay;
use support::*;

/// The page: a ResumableWebSocket to `/shell` on the page's own origin; what the shell writes
/// is appended to `window.out`, the library's events to `window.events`.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>resumable shell</title>
<script src="/.wsgate/resume.js"></script></head>
<body><pre id="term"></pre>
<script>
  window.out = "";
  window.events = [];
  const decoder = new TextDecoder();
  const ws = new ResumableWebSocket("ws://" + location.host + "/shell");
  ws.binaryType = "arraybuffer";
  window.ws = ws;
  ws.onopen = () => window.events.push("open");
  ws.onmessage = (e) => {
    window.out += decoder.decode(new Uint8Array(e.data), { stream: true });
    document.getElementById("term").textContent = window.out;
  };
  ws.onclose = (e) => window.events.push("close:" + e.code);
  ws.addEventListener("resuming", () => window.events.push("resuming"));
  ws.addEventListener("resumed", () => window.events.push("resumed"));
  // A terminal sends keystrokes: here, a whole line at a time.
  window.type = (line) => ws.send(line + "\n");
</script></body></html>
"#;

/// `window.out`'s lines that start with `prefix`.
fn lines_with(out: &str, prefix: &str) -> usize {
    out.lines().filter(|l| l.starts_with(prefix)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_page_on_the_resume_library_survives_cut_connections_with_one_shell() {
    let test = "a_shell_page_on_the_resume_library_survives_cut_connections_with_one_shell";
    let Some(browser) = Browser::start(test, None).await else {
        return;
    };
    let (shell, accepted, mut pids) = shell_service().await;
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), PAGE).unwrap();
    let gw = spawn_gateway(&config_with(&format!(
        "[web]\nroot = {:?}\n\n{}[route.resume]\ngrace_secs = 30\nheartbeat_secs = 1\n",
        web.path().display().to_string(),
        route("shell", "/shell", &format!("tcp://{shell}"))
    )))
    .await;
    // The browser reaches the gateway only through the relay (page and WebSocket alike).
    let relay = FaultRelay::start(gw.addr).await;
    let origin = format!("http://{}", relay.addr);
    browser
        .client()
        .goto(&format!("{origin}/"))
        .await
        .expect("page loads");
    browser
        .eventually(
            "the session opens",
            "return window.events.includes('open');",
            json!(null),
        )
        .await;
    let pid = tokio::time::timeout(Duration::from_secs(10), pids.recv())
        .await
        .expect("a shell started")
        .expect("its pid");
    let type_line = |line: String| {
        let client = browser.client().clone();
        async move {
            client
                .execute("window.type(arguments[0]); return true;", vec![json!(line)])
                .await
                .expect("typed");
        }
    };
    let out = || async {
        browser
            .client()
            .execute("return window.out;", vec![])
            .await
            .expect("read output")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    type_line("echo pid=$$".to_owned()).await;
    browser
        .eventually(
            "the shell answers",
            "return window.out.includes('pid=' + arguments[0]);",
            json!(pid),
        )
        .await;

    const CUTS: usize = 4;
    for round in 0..CUTS {
        // Output the shell writes while the connection is down (the library waits 100 ms
        // before its first reconnect) is replayed after the resume.
        type_line(format!("sleep 0.05; echo late-{round} pid=$$")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        relay.cut();
        // Typed while the library is resuming (or right after): kept and sent once.
        type_line(format!("echo typed-{round} pid=$$")).await;
        browser
            .eventually(
                "the session resumes",
                "return window.events.filter(e => e === 'resumed').length > arguments[0];",
                json!(round),
            )
            .await;
        for what in ["late", "typed"] {
            browser
                .eventually(
                    &format!("{what} output of round {round} arrives"),
                    "return window.out.includes(arguments[0]);",
                    json!(format!("{what}-{round} pid={pid}")),
                )
                .await;
        }
    }
    // Let any stray duplicate arrive before counting.
    type_line("echo done".to_owned()).await;
    browser
        .eventually(
            "the last line",
            "return window.out.includes('done');",
            json!(null),
        )
        .await;
    let text = out().await;
    for round in 0..CUTS {
        for what in ["late", "typed"] {
            assert_eq!(
                lines_with(&text, &format!("{what}-{round} pid={pid}")),
                1,
                "{what}-{round} exactly once:\n{text}"
            );
        }
    }
    assert!(
        text.lines()
            .filter(|l| l.contains("pid="))
            .all(|l| l.ends_with(&format!("pid={pid}"))),
        "every line came from the one shell {pid}:\n{text}"
    );
    let events = browser
        .client()
        .execute("return window.events;", vec![])
        .await
        .unwrap();
    let events: Vec<String> = serde_json::from_value(events).unwrap();
    assert!(
        !events.iter().any(|e| e.starts_with("close")),
        "the page saw a close: {events:?}"
    );
    let resumed = events.iter().filter(|e| *e == "resumed").count();
    assert!(resumed >= CUTS, "{events:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one backend connection");
    assert!(
        relay.accepted.load(Ordering::SeqCst) > CUTS,
        "the relay carried the reconnections"
    );
    browser.screenshot("resume-shell").await;

    // Closing the page's socket ends the session: the gateway closes the backend, the shell
    // reads EOF and exits.
    browser
        .client()
        .execute("window.ws.close(); return true;", vec![])
        .await
        .unwrap();
    browser
        .eventually(
            "the session ends cleanly",
            "return window.events.includes('close:1000');",
            json!(null),
        )
        .await;
    browser.quit().await;
    gw.stop().await.unwrap();
}

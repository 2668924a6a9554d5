//! A real xterm.js terminal on the browser library `/.wsgate/resume.js`: Debian's Chromium
//! (headless) loads a page with npm's `@xterm/xterm` and `@xterm/addon-attach`, hands a
//! `ResumableWebSocket` to `new AttachAddon(socket)` unchanged, and types into `/bin/sh` behind
//! a resumable route while a fault-injecting relay between the browser and the gateway resets
//! the connection several times. The attach addon disposes itself on `close` or `error` and
//! throws on a send while `readyState` is CONNECTING; through the cuts it never does either,
//! every output line lands in the terminal's buffer exactly once, and the shell's PID never
//! changes: one backend connection, one shell.
//!
//! Needs `node` and `npm` (the test runs `npm ci` for tests/xterm/ in `<target>/tmp/xterm`,
//! again only when the lock file changes) and Chromium; without them it prints why and
//! passes, except under `CI`, where it fails.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use support::browser::*;
use support::resume::FaultRelay;
use support::*;

/// tests/xterm/ installed with `npm ci` in the target folder; `None` (after saying why) when
/// node or npm is missing outside CI.
fn xterm_packages(test: &str) -> Option<PathBuf> {
    let install = || -> Result<PathBuf, String> {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/xterm");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("xterm");
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(source.join(file), dir.join(file))
                .map_err(|e| format!("copying tests/xterm/{file}: {e}"))?;
        }
        for tool in ["node", "npm"] {
            let found = std::process::Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                return Err(format!(
                    "no `{tool}` on PATH (Debian: apt-get install nodejs npm)"
                ));
            }
        }
        // `npm ci` again only when the lock file changed since the last install.
        let lock = std::fs::read(dir.join("package-lock.json")).unwrap_or_default();
        let stamp = dir.join("node_modules/.wsgate-lock");
        if std::fs::read(&stamp).ok().as_deref() != Some(&lock[..]) {
            let out = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .output()
                .map_err(|e| format!("running npm ci: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "npm ci in {} failed: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            std::fs::write(&stamp, &lock).map_err(|e| format!("writing the stamp: {e}"))?;
        }
        Ok(dir.join("node_modules/@xterm"))
    };
    match install() {
        Ok(dir) => Some(dir),
        Err(msg) if std::env::var_os("CI").is_some() => {
            panic!("{test}: {msg}; CI must run the xterm.js test")
        }
        Err(msg) => {
            eprintln!("SKIPPED {test}: {msg}");
            None
        }
    }
}

/// The page: an xterm.js `Terminal` with the attach addon on a `ResumableWebSocket` to
/// `/shell` on the page's own origin, attached at once, as xterm.js's own demo does with a
/// plain WebSocket. The socket's events go to `window.events`; the addon's `dispose` is
/// recorded there too (it runs on the socket's `close` or `error`).
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>xterm.js resumable shell</title>
<link rel="stylesheet" href="/xterm/xterm.css">
<script src="/xterm/xterm.js"></script>
<script src="/xterm/addon-attach.js"></script>
<script src="/.wsgate/resume.js"></script></head>
<body><div id="terminal"></div>
<script>
  window.events = [];
  // A pipe, not a pty: the shell writes bare "\n".
  const term = new Terminal({ convertEol: true, cols: 100, rows: 40, scrollback: 1000 });
  term.open(document.getElementById("terminal"));
  window.term = term;
  const ws = new ResumableWebSocket("ws://" + location.host + "/shell");
  window.ws = ws;
  const addon = new AttachAddon.AttachAddon(ws);
  const dispose = addon.dispose.bind(addon);
  addon.dispose = () => { window.events.push("addon-disposed"); dispose(); };
  term.loadAddon(addon);
  ws.addEventListener("open", () => window.events.push("open"));
  ws.addEventListener("close", (e) => window.events.push("close:" + e.code));
  ws.addEventListener("error", () => window.events.push("error"));
  ws.addEventListener("resuming", () => window.events.push("resuming"));
  ws.addEventListener("resumed", () => window.events.push("resumed"));
  // The terminal's text, wrapped rows joined.
  window.screen = () => {
    const buffer = term.buffer.active;
    let text = "";
    for (let y = 0; y < buffer.length; y++) {
      const line = buffer.getLine(y);
      if (y > 0 && !line.isWrapped) text += "\n";
      text += line.translateToString(true);
    }
    return text;
  };
</script></body></html>
"#;

/// The terminal's lines that start with `prefix`.
fn lines_with(text: &str, prefix: &str) -> usize {
    text.lines().filter(|l| l.starts_with(prefix)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xterm_js_terminal_with_the_attach_addon_survives_cut_connections_with_one_shell() {
    let test = "an_xterm_js_terminal_with_the_attach_addon_survives_cut_connections_with_one_shell";
    let Some(packages) = xterm_packages(test) else {
        return;
    };
    let Some(browser) = Browser::start(test, None).await else {
        return;
    };
    let (shell, accepted, mut pids) = shell_service().await;
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), PAGE).unwrap();
    std::fs::create_dir(web.path().join("xterm")).unwrap();
    for (from, to) in [
        ("xterm/lib/xterm.js", "xterm.js"),
        ("xterm/css/xterm.css", "xterm.css"),
        ("addon-attach/lib/addon-attach.js", "addon-attach.js"),
    ] {
        std::fs::copy(packages.join(from), web.path().join("xterm").join(to))
            .unwrap_or_else(|e| panic!("copying @xterm/{from}: {e}"));
    }
    let gw = spawn_gateway(&config_with(&format!(
        "[web]\nroot = {:?}\n\n{}[route.resume]\ngrace_secs = 30\nheartbeat_secs = 1\n",
        web.path().display().to_string(),
        route("shell", "/shell", &format!("tcp://{shell}"))
    )))
    .await;
    // The browser reaches the gateway only through the relay (page and WebSocket alike).
    let relay = FaultRelay::start(gw.addr).await;
    browser
        .client()
        .goto(&format!("http://{}/", relay.addr))
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
    // Input as the user's keystrokes: `term.input` fires the terminal's `onData`, which the
    // attach addon sends (and where it would throw were the socket CONNECTING). A pipe
    // shell reads lines, so the line ends in "\n" rather than the Enter key's "\r".
    let type_line = |line: String| {
        let client = browser.client().clone();
        async move {
            client
                .execute(
                    "window.term.input(arguments[0] + '\\n', true); return true;",
                    vec![json!(line)],
                )
                .await
                .expect("typed into the terminal");
        }
    };
    type_line("echo pid=$$".to_owned()).await;
    browser
        .eventually(
            "the shell answers in the terminal",
            "return window.screen().includes('pid=' + arguments[0]);",
            json!(pid),
        )
        .await;

    const CUTS: usize = 4;
    for round in 0..CUTS {
        // Output the shell writes while the connection is down is replayed after the resume.
        type_line(format!("sleep 0.05; echo late-{round} pid=$$")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        relay.cut();
        // Typed while the library is resuming (or right after): the addon sees OPEN, the
        // library keeps the bytes and sends them once.
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
                    &format!("{what} output of round {round} reaches the terminal"),
                    "return window.screen().includes(arguments[0]);",
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
            "return window.screen().includes('done');",
            json!(null),
        )
        .await;
    let text = browser
        .client()
        .execute("return window.screen();", vec![])
        .await
        .expect("read the terminal buffer");
    let text = text.as_str().unwrap_or_default().to_owned();
    for round in 0..CUTS {
        for what in ["late", "typed"] {
            assert_eq!(
                lines_with(&text, &format!("{what}-{round} pid={pid}")),
                1,
                "{what}-{round} exactly once in the terminal:\n{text}"
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
        .expect("read the events");
    let events: Vec<String> = serde_json::from_value(events).expect("a list of strings");
    assert!(
        !events
            .iter()
            .any(|e| e.starts_with("close") || e == "error" || e == "addon-disposed"),
        "the addon saw a close or an error, or disposed itself: {events:?}"
    );
    let resumed = events.iter().filter(|e| *e == "resumed").count();
    assert!(resumed >= CUTS, "{events:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one backend connection");
    assert!(
        relay.accepted.load(Ordering::SeqCst) > CUTS,
        "the relay carried the reconnections"
    );
    browser.screenshot("resume-xterm").await;

    // Closing the socket ends the session and, as with a plain WebSocket, the addon
    // disposes itself.
    browser
        .client()
        .execute("window.ws.close(); return true;", vec![])
        .await
        .expect("close the socket");
    browser
        .eventually(
            "the session ends and the addon lets go",
            "return window.events.includes('close:1000') \
             && window.events.includes('addon-disposed');",
            json!(null),
        )
        .await;
    browser.quit().await;
    gw.stop().await.unwrap();
}

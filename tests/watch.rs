//! Live watch through the real gateway: a real shell behind a TCP service, driven by a
//! WebSocket client, watched read-only on the admin listener (`/api/sessions/{id}/watch`) by
//! one or two watchers; what a watcher sends never reaches the shell; a terminal route's
//! watcher gets the output so far; a watcher that never reads is dropped while the session
//! moves all its bytes; the answers for no token, an unknown session and a plain GET; the
//! status page's xterm.js served from the binary.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "watch-test-admin-token";

/// `wsgate_watchers_active` of `route` (the metrics are the test process's: each test has
/// its own route name).
fn watchers_active(route: &str) -> String {
    format!("wsgate_watchers_active{{route=\"{route}\"}}")
}

/// A gateway with route `name` at `/` to `backend`, the admin listener behind [`TOKEN`],
/// plus `extra` TOML after the route.
async fn watched_gateway(name: &str, backend: SocketAddr, extra: &str) -> TestGateway {
    spawn_gateway(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\
         bearer_sha256 = \"{}\"\n\n{}{extra}\n",
        sha256_hex(TOKEN),
        route(name, "/", &format!("tcp://{backend}")),
    ))
    .await
}

fn bearer() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

/// The one live session's id.
async fn only_session(admin: SocketAddr) -> u64 {
    let (auth, value) = bearer();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer) =
            admin_request(admin, "GET", "/api/sessions", &[(auth, &value)]).await;
        assert_eq!(status, 200, "{answer}");
        let list: serde_json::Value = serde_json::from_str(answer_body(&answer)).unwrap();
        if let Some(s) = list["sessions"].as_array().and_then(|a| a.first()) {
            assert_eq!(s["watchable"], true, "a tcp:// session can be watched: {s}");
            return s["id"].as_u64().unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no session listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A watcher of session `id`, with the admin token.
async fn watcher(admin: SocketAddr, id: u64) -> WsClient {
    let (auth, value) = bearer();
    let url = format!("ws://{admin}/api/sessions/{id}/watch");
    ws_client_with(&url, &[(auth, &value)])
        .await
        .expect("the watch upgrade succeeds")
        .0
}

/// Run `command` in the shell through the client; returns what the client read up to and
/// including `until`.
async fn run(client: &mut WsClient, command: &str, until: &str) -> String {
    client
        .send(Message::binary(format!("{command}\n").into_bytes()))
        .await
        .unwrap();
    read_until(client, until).await
}

/// Data messages until their text contains `needle`; all of it.
async fn read_until(ws: &mut WsClient, needle: &str) -> String {
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match next_data(ws).await {
            Some(b) => seen.extend_from_slice(&b),
            None => panic!(
                "ended before {needle:?}; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn two_watchers_see_the_shell_live_and_a_watcher_cannot_type_into_it() {
    let shell = shell_backend().await;
    let gw = watched_gateway("two_watchers", shell, "").await;
    let admin = gw.admin.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut client = ws_client(&gw.url("/")).await;
    run(&mut client, "echo before-watch", "before-watch\n").await;
    let id = only_session(admin).await;

    let mut first = watcher(admin, id).await;
    let mut second = watcher(admin, id).await;
    expect_metric(admin, &watchers_active("two_watchers"), 2.0).await;
    let seen_by_client = run(&mut client, "echo live-$((6*7))", "live-42\n").await;
    assert!(seen_by_client.contains("live-42"));
    // Both watchers get the shell's output from the moment they joined (no backlog on a
    // route that is not a terminal route).
    for w in [&mut first, &mut second] {
        let seen = read_until(w, "live-42\n").await;
        assert!(!seen.contains("before-watch"), "{seen:?}");
    }

    // The first watcher tries to type a command: the watch is closed with 1008, and the
    // shell never runs it.
    let marker = dir.path().join("typed-by-watcher");
    first
        .send(Message::binary(
            format!("touch {}\n", marker.display()).into_bytes(),
        ))
        .await
        .unwrap();
    let (code, reason) = expect_close(&mut first).await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "a watch is read-only"),
        "a watcher that sends is refused"
    );
    expect_metric(admin, &watchers_active("two_watchers"), 1.0).await;
    let after = run(&mut client, "echo after-$((1+1))", "after-2\n").await;
    assert!(
        !after.contains("touch"),
        "the session saw nothing of the watcher: {after:?}"
    );
    let listed = run(
        &mut client,
        &format!("ls {} | wc -l; echo listed", dir.path().display()),
        "listed\n",
    )
    .await;
    assert!(
        listed.trim_start().starts_with('0'),
        "the shell never ran the watcher's command: {listed:?}"
    );
    assert!(!marker.exists());
    // The other watcher still watches, and saw exactly the client's commands' output.
    let seen = read_until(&mut second, "listed\n").await;
    assert!(
        seen.contains("after-2") && !seen.contains("touch"),
        "{seen:?}"
    );

    // The session ends: its watcher is told with 1000.
    client.send(Message::Close(None)).await.unwrap();
    let (code, _) = expect_close(&mut second).await;
    assert_eq!(code, 1000);
    expect_metric(admin, &watchers_active("two_watchers"), 0.0).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_terminal_routes_watcher_gets_the_output_so_far_first() {
    let shell = shell_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = watched_gateway(
        "terminal",
        shell,
        &format!(
            "[route.record]\ndir = {:?}\nformat = \"asciicast\"\n",
            dir.path().display().to_string()
        ),
    )
    .await;
    let admin = gw.admin.unwrap();
    let mut client = ws_client(&gw.url("/")).await;
    run(&mut client, "echo early-$((2*3))", "early-6\n").await;
    let id = only_session(admin).await;
    let mut late = watcher(admin, id).await;
    let backlog = read_until(&mut late, "early-6\n").await;
    assert!(backlog.contains("early-6"), "{backlog:?}");
    run(&mut client, "echo later", "later\n").await;
    read_until(&mut late, "later\n").await;
    drop(client);
    let (code, _) = expect_close(&mut late).await;
    assert_eq!(code, 1000);
    gw.stop().await.unwrap();
}

/// The bytes of a session that a watcher never reads: far more than the watcher's queue
/// and both sockets' buffers hold.
const BULK_BYTES: usize = 96 << 20;

#[tokio::test]
async fn a_watcher_that_never_reads_is_dropped_and_the_session_moves_every_byte() {
    let (backend, mut accepted) = tcp_backend().await;
    let gw = watched_gateway("bulk", backend, "").await;
    let admin = gw.admin.unwrap();
    let mut client = ws_client(&gw.url("/")).await;
    let mut conn = accepted.recv().await.unwrap();
    let id = only_session(admin).await;

    // A watcher that upgrades and then never reads a byte.
    let mut stalled = TcpStream::connect(admin).await.unwrap();
    stalled
        .write_all(
            upgrade_request(
                &format!("/api/sessions/{id}/watch"),
                &format!("Authorization: Bearer {TOKEN}\r\n"),
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = [0u8; 12];
    stalled.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    expect_metric(admin, &watchers_active("bulk"), 1.0).await;

    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < BULK_BYTES {
            let chunk = pattern(sent as u64, 256 * 1024);
            conn.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        conn
    });
    let mut got = 0usize;
    while got < BULK_BYTES {
        let data = next_data(&mut client).await.expect("the session goes on");
        assert_eq!(data, pattern(got as u64, data.len()), "at offset {got}");
        got += data.len();
    }
    let _conn = writer.await.unwrap();
    assert_eq!(got, BULK_BYTES);
    expect_metric(admin, "wsgate_watchers_dropped_total{route=\"bulk\"}", 1.0).await;
    expect_metric(admin, &watchers_active("bulk"), 0.0).await;
    drop(stalled);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_watch_needs_the_token_a_live_session_and_a_websocket_and_is_logged() {
    let (logs, _guard) = capture_logs();
    let shell = shell_backend().await;
    let gw = watched_gateway("answers", shell, "").await;
    let admin = gw.admin.unwrap();
    let mut client = ws_client(&gw.url("/")).await;
    run(&mut client, "echo up", "up\n").await;
    let id = only_session(admin).await;
    let path = format!("/api/sessions/{id}/watch");
    let auth = format!("Bearer {TOKEN}");

    let (status, answer) = upgrade_with(admin, &path, &[]).await;
    assert_eq!(status, 401, "no token: {answer}");
    let (status, _) = upgrade_with(admin, &path, &[("Authorization", "Bearer wrong")]).await;
    assert_eq!(status, 401, "a wrong token");
    let (status, answer) = upgrade_with(
        admin,
        "/api/sessions/999999/watch",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(status, 404, "unknown session: {answer}");
    let (status, answer) = admin_request(admin, "GET", &path, &[("Authorization", &auth)]).await;
    assert_eq!(status, 426, "a plain GET: {answer}");
    let (status, answer) = upgrade_with(
        admin,
        &path,
        &[("Authorization", &auth), ("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(status, 403, "another site's page: {answer}");

    // A watch that works, logged with who watched: the connection's address, the credential
    // it showed, its User-Agent; and its end.
    let mut watch = TcpStream::connect(admin).await.unwrap();
    let from = watch.local_addr().unwrap();
    watch
        .write_all(
            upgrade_request(
                &path,
                &format!("Authorization: {auth}\r\nUser-Agent: on-call-laptop\r\n"),
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = [0u8; 12];
    watch.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    drop(watch);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !logs.text().contains("watch ended") {
        assert!(tokio::time::Instant::now() < deadline, "{}", logs.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = logs.text();
    let started = text
        .lines()
        .find(|l| l.contains("watch started"))
        .expect("the watch's start is logged");
    for field in [
        format!("session={id}"),
        format!("watcher={from}"),
        "credential=\"bearer\"".to_owned(),
        "user_agent=\"on-call-laptop\"".to_owned(),
    ] {
        assert!(started.contains(&field), "{field} in {started}");
    }
    assert!(!text.contains(TOKEN), "the token is never logged");
    client.send(Message::Close(None)).await.unwrap();
    while client.next().await.is_some() {}
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_session_on_a_websocket_backend_is_watched_message_by_message() {
    let (backend, _handshakes) = ws_echo_backend().await;
    let gw = spawn_gateway(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\
         bearer_sha256 = \"{}\"\n\n{}",
        sha256_hex(TOKEN),
        route("relayed", "/", &format!("ws://{backend}/")),
    ))
    .await;
    let admin = gw.admin.unwrap();
    let mut client = ws_client(&gw.url("/")).await;
    assert_echoes(&mut client, b"before the watch").await;
    let id = only_session(admin).await;
    let mut watching = watcher(admin, id).await;
    client
        .send(Message::text("text through the relay"))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut client).await.unwrap(),
        b"text through the relay"
    );
    assert_echoes(&mut client, &[0, 1, 2, 255]).await;
    assert_eq!(
        next_data(&mut watching).await.unwrap(),
        b"text through the relay",
        "what the backend sent after the watch began, and nothing from before it"
    );
    assert_eq!(next_data(&mut watching).await.unwrap(), [0, 1, 2, 255]);
    watching
        .send(Message::text("from the watcher"))
        .await
        .unwrap();
    assert_eq!(expect_close(&mut watching).await.0, 1008);
    assert_echoes(&mut client, b"still only the client's own").await;
    gw.stop().await.unwrap();
}

/// Both hops compress, so the relay passes the backend's compressed frames through as they
/// are: the watcher still gets the messages' text, inflated.
#[tokio::test]
async fn a_watcher_of_a_compressed_relay_gets_the_messages_inflated() {
    let test = "a_watcher_of_a_compressed_relay_gets_the_messages_inflated";
    let Some(python) = python_with_websockets_or_skip(test) else {
        return;
    };
    let mut peer = PythonPeer::start(&python, PYTHON_WS_ECHO, &["on"]);
    let port = peer.port().await;
    let gw = spawn_gateway(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\
         bearer_sha256 = \"{}\"\n\n{}compression = \"on\"\n",
        sha256_hex(TOKEN),
        route("z", "/z", &format!("ws://127.0.0.1:{port}/")),
    ))
    .await;
    let admin = gw.admin.unwrap();
    let (mut ws, _) = raw_ws_client_with(
        gw.addr,
        "/z",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    )
    .await;
    let seen = peer.next_line().await;
    assert!(seen.starts_with("extensions permessage-deflate"), "{seen}");
    let id = only_session(admin).await;
    let mut watching = watcher(admin, id).await;
    let (mut def, mut inf) = (ClientDeflate::new(), ClientInflate::new());
    let msg: Vec<u8> = b"{\"tick\":\"ACME\",\"price\":101.25}\n"
        .iter()
        .copied()
        .cycle()
        .take(50_000)
        .collect();
    ws.send(&client_frame(
        frame_bits::FIN | frame_bits::RSV1 | frame_bits::TEXT,
        &def.piece(&msg, true),
    ))
    .await;
    let (back, compressed) = read_echo(&mut ws, &mut inf, msg.len()).await;
    assert_eq!(back, msg);
    assert!(compressed > 0, "the echo came compressed");
    assert_eq!(read_bytes(&mut watching, msg.len()).await, msg);
    gw.stop().await.unwrap();
    peer.kill().await;
}

/// A terminal route that is not recorded keeps a backlog when it sets
/// `watch_backlog_bytes`; a late watcher gets the newest part of what was sent.
#[tokio::test]
async fn an_unrecorded_route_with_watch_backlog_bytes_keeps_that_much() {
    let (backend, mut accepted) = tcp_backend().await;
    let gw = watched_gateway("backlog", backend, "watch_backlog_bytes = 1000\n").await;
    let admin = gw.admin.unwrap();
    let mut client = ws_client(&gw.url("/")).await;
    let mut conn = accepted.recv().await.unwrap();
    let sent = pattern(0, 5000);
    conn.write_all(&sent).await.unwrap();
    assert_eq!(read_bytes(&mut client, sent.len()).await, sent);
    let id = only_session(admin).await;
    let mut late = watcher(admin, id).await;
    assert_eq!(
        next_data(&mut late).await.unwrap(),
        &sent[sent.len() - 1000..],
        "the last 1000 bytes, in one message"
    );
    conn.write_all(b"then live").await.unwrap();
    assert_eq!(next_data(&mut late).await.unwrap(), b"then live");
    gw.stop().await.unwrap();
}

/// The status page's watch view is xterm.js served from the binary: the page loads it and its
/// stylesheet from `/assets/vendor/`, each answers with its content type and the vendored
/// file byte for byte (nosniff, so a wrong type would stop the browser running it), and,
/// like the page's other assets, only with the admin token.
#[tokio::test]
async fn the_watch_views_xterm_js_is_served_from_the_binary_behind_the_token() {
    let shell = shell_backend().await;
    let gw = watched_gateway("vendor", shell, "").await;
    let admin = gw.admin.unwrap();
    let (auth, value) = bearer();
    let (status, page) = admin_request(admin, "GET", "/", &[(auth, &value)]).await;
    assert_eq!(status, 200, "{page}");
    for (path, content_type, file) in [
        (
            "/assets/vendor/xterm.js",
            "text/javascript; charset=utf-8",
            include_str!("../src/ops/status/vendor/xterm.js"),
        ),
        (
            "/assets/vendor/xterm.css",
            "text/css; charset=utf-8",
            include_str!("../src/ops/status/vendor/xterm.css"),
        ),
    ] {
        assert!(
            page.contains(&format!("\"{path}\"")),
            "the page loads {path}"
        );
        let (status, answer) = admin_request(admin, "GET", path, &[]).await;
        assert_eq!(status, 401, "{path} without the token: {answer}");
        let (status, answer) = admin_request(admin, "GET", path, &[(auth, &value)]).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(answer_header(&answer, "content-type"), Some(content_type));
        assert_eq!(
            answer_header(&answer, "x-content-type-options"),
            Some("nosniff")
        );
        assert!(answer_body(&answer) == file, "{path} is the vendored file");
    }
    gw.stop().await.unwrap();
}

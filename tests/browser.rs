//! End-to-end tests in a real browser: Debian's Chromium, headless, driven through WebDriver
//! (Debian's chromedriver) against a gateway on loopback. Screenshots land in
//! `<target>/browser-screenshots/` for CI to keep.
//!
//! Chromium and chromedriver are found on `PATH` (or named by `WSGATE_CHROMIUM` and
//! `WSGATE_CHROMEDRIVER`). Without them a test prints why and passes, except under `CI`, where it
//! fails: `.ci/run` installs both.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use fantoccini::Locator;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, PublicKeyData};
use serde_json::json;
use support::browser::*;
use support::*;

/// A server certificate for `127.0.0.1` and `localhost` from a CA made for the test, written
/// to a temp dir, and the base64 SHA-256 of its public key (what Chromium is told to trust).
struct TestPki {
    _dir: tempfile::TempDir,
    cert_file: PathBuf,
    key_file: PathBuf,
    spki_sha256: String,
}

fn test_pki() -> TestPki {
    let ca = test_ca("wsgate browser-test CA");
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.is_ca = IsCa::ExplicitNoCa;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("server.pem");
    let key_file = dir.path().join("server-key.pem");
    // Leaf then CA: the chain a real deployment serves.
    std::fs::write(&cert_file, format!("{}{}", cert.pem(), ca.pem())).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
    TestPki {
        _dir: dir,
        cert_file,
        key_file,
        spki_sha256: base64::engine::general_purpose::STANDARD.encode(digest.as_ref()),
    }
}

/// A script for [`Browser::eventually`]: whether the status page's open watch terminal (the
/// xterm.js `Terminal` the page exposes as `window.wsgateWatchTerminal`) has `arguments[0]`
/// in its buffer, scrollback included, read as text (escape sequences are never text there).
const WATCH_BUFFER_HAS: &str = "const t = window.wsgateWatchTerminal; if (!t) return false; \
     const b = t.buffer.active; let text = ''; \
     for (let i = 0; i < b.length; i++) text += b.getLine(i).translateToString(true) + '\\n'; \
     return text.includes(arguments[0]);";

/// The token route `/secure` of [`wss_console_gateway`] accepts.
const SECURE_TOKEN: &str = "browser-test-token";

/// A gateway with a `wss` listener serving the console, an admin listener, route `echo` at
/// `/echo` to a TCP echo, and route `secure` at `/secure` to the same echo behind a bearer
/// token ([`SECURE_TOKEN`]).
async fn wss_console_gateway(pki: &TestPki) -> TestGateway {
    let echo = tcp_echo_backend().await;
    spawn_gateway(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nconsole = true\n\n[listener.tls]\n\
         cert_file = {:?}\nkey_file = {:?}\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n{}\n{}\
         [route.auth]\nbearer_sha256 = [\"{}\"]\n",
        pki.cert_file.display().to_string(),
        pki.key_file.display().to_string(),
        route("echo", "/echo", &format!("tcp://{echo}")),
        route("secure", "/secure", &format!("tcp://{echo}")),
        sha256_hex(SECURE_TOKEN),
    ))
    .await
}

impl Browser {
    async fn by_id(&self, id: &str) -> fantoccini::elements::Element {
        self.client()
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
    }

    async fn click(&self, id: &str) {
        self.by_id(id).await.click().await.expect("click");
    }

    async fn type_into(&self, id: &str, text: &str) {
        let e = self.by_id(id).await;
        e.clear().await.expect("clear");
        e.send_keys(text).await.expect("type");
    }

    /// Open the console at `origin`, wait for its route list, pick `path`, type `token` (sent
    /// as a `bearer.` subprotocol, the console's default) and connect.
    async fn console_connect(&self, origin: &str, path: &str, token: Option<&str>) {
        self.client()
            .goto(&format!("{origin}/"))
            .await
            .expect("console page");
        self.eventually(
            "route list loads",
            "return Array.from(document.querySelectorAll('#route option')).some(o => o.value === arguments[0]);",
            json!(path),
        )
        .await;
        self.client()
            .execute(
                "const r = document.getElementById('route'); r.value = arguments[0]; \
                 r.dispatchEvent(new Event('change'));",
                vec![json!(path)],
            )
            .await
            .expect("route chosen");
        if let Some(token) = token {
            self.type_into("token", token).await;
        }
        self.click("connect").await;
        self.eventually(
            "console connects",
            "return document.getElementById('state').dataset.state === 'open';",
            json!(null),
        )
        .await;
    }

    /// The console's close code once the socket closed, and the reason.
    async fn console_close(&self) -> (u64, String) {
        let v = self
            .eventually(
                "console shows the close",
                "const s = document.getElementById('state'); \
                 return s.dataset.state === 'closed' && [Number(s.dataset.closeCode), s.dataset.closeReason];",
                json!(null),
            )
            .await;
        (
            v[0].as_u64().expect("numeric close code"),
            v[1].as_str().unwrap_or_default().to_owned(),
        )
    }
}

/// The console over `wss://` with a certificate from a test CA: its URL is the page's own
/// origin, an echoed message shows in the log with its round trip, and the close code the
/// console asked for comes back from the gateway and is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_over_wss_echoes_a_message_and_shows_the_close_code() {
    let pki = test_pki();
    let test = "console_over_wss_echoes_a_message_and_shows_the_close_code";
    let Some(browser) = Browser::start(test, Some(&pki.spki_sha256)).await else {
        return;
    };
    let gw = wss_console_gateway(&pki).await;
    let origin = format!("https://127.0.0.1:{}", gw.addr.port());
    browser.console_connect(&origin, "/echo", None).await;
    let url: String = browser
        .by_id("url")
        .await
        .prop("value")
        .await
        .expect("url value")
        .unwrap_or_default();
    assert_eq!(url, format!("wss://127.0.0.1:{}/echo", gw.addr.port()));

    browser.type_into("message", "hello from chromium").await;
    browser.click("send").await;
    let line = browser
        .eventually(
            "the echo shows in the log",
            "const l = Array.from(document.querySelectorAll('#log li.in')).find(li => li.textContent.includes(arguments[0])); \
             return l ? l.textContent : null;",
            json!("hello from chromium"),
        )
        .await;
    let line = line.as_str().unwrap();
    assert!(line.contains("19 B"), "{line}");
    assert!(line.contains("rtt "), "round trip shown: {line}");
    browser.screenshot("console-echo").await;

    browser.type_into("close-code", "4321").await;
    browser.click("disconnect").await;
    let (code, reason) = browser.console_close().await;
    assert_eq!(
        code, 4321,
        "the gateway answers the browser's Close with its code"
    );
    assert_eq!(reason, "closed from the console");
    browser.screenshot("console-closed").await;
    browser.quit().await;
    gw.stop().await.unwrap();
}

/// The console's token (as a `bearer.` subprotocol) opens a route that needs one, and binary
/// messages typed as hex come back as the same bytes.
///
/// Regression: offering only `bearer.<token>` made Chromium fail the handshake (1006), since
/// the gateway never selects that entry and the browser rejects an offer answered with none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sends_a_token_and_hex_binary() {
    let pki = test_pki();
    let test = "console_sends_a_token_and_hex_binary";
    let Some(browser) = Browser::start(test, Some(&pki.spki_sha256)).await else {
        return;
    };
    let gw = wss_console_gateway(&pki).await;
    let origin = format!("https://127.0.0.1:{}", gw.addr.port());
    browser
        .console_connect(&origin, "/secure", Some(SECURE_TOKEN))
        .await;
    browser.click("format-hex").await;
    browser.type_into("message", "00 ff 68 69").await;
    browser.click("send").await;
    let line = browser
        .eventually(
            "the binary echo shows in the log",
            "const l = document.querySelector('#log li.in'); return l ? l.textContent : null;",
            json!(null),
        )
        .await;
    assert!(
        line.as_str().unwrap().contains("← binary 4 B  00 ff 68 69"),
        "{line}"
    );
    browser.screenshot("console-token-hex").await;
    browser.quit().await;
    gw.stop().await.unwrap();
}

/// The status page lists a browser's live session; an API `DELETE` with a code closes it:
/// the browser sees that code and the page drops the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_a_session_until_the_api_closes_it_with_the_code_asked_for() {
    let pki = test_pki();
    let test = "status_page_shows_a_session_until_the_api_closes_it_with_the_code_asked_for";
    let Some(browser) = Browser::start(test, Some(&pki.spki_sha256)).await else {
        return;
    };
    let gw = wss_console_gateway(&pki).await;
    let admin = gw.admin.unwrap();
    let console_tab = browser.client().window().await.expect("window");
    browser
        .console_connect(
            &format!("https://127.0.0.1:{}", gw.addr.port()),
            "/echo",
            None,
        )
        .await;
    let id = live_sessions(admin).await[0]["id"].as_u64().expect("id");

    let status_tab = browser.client().new_window(true).await.expect("new tab");
    browser
        .client()
        .switch_to_window(status_tab.handle)
        .await
        .expect("status tab");
    browser
        .client()
        .goto(&format!("http://{admin}/"))
        .await
        .expect("status page");
    let row = browser
        .eventually(
            "the session shows on the status page",
            "const r = document.querySelector(`#session-rows tr[data-session-id=\"${arguments[0]}\"]`); \
             return r ? r.textContent : null;",
            json!(id),
        )
        .await;
    assert!(row.as_str().unwrap().contains("echo"), "{row}");
    browser
        .eventually(
            "the route counts one session",
            "return document.getElementById('sessions').textContent === '1';",
            json!(null),
        )
        .await;
    browser.screenshot("status-live-session").await;

    let (status, answer) = admin_request(
        admin,
        "DELETE",
        &format!("/api/sessions/{id}?code=4242"),
        &[],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    browser
        .eventually(
            "the row goes away",
            "return !document.querySelector(`#session-rows tr[data-session-id=\"${arguments[0]}\"]`) \
             && document.querySelector('#recent-closes') .textContent.includes('4242');",
            json!(id),
        )
        .await;
    browser.screenshot("status-after-delete").await;

    browser
        .client()
        .switch_to_window(console_tab)
        .await
        .expect("console tab");
    let (code, reason) = browser.console_close().await;
    assert_eq!((code, reason.as_str()), (4242, "closed by the operator"));
    browser.screenshot("console-closed-by-operator").await;
    browser.quit().await;
    gw.stop().await.unwrap();
}

/// The status page's watch button shows a live shell session's output in an xterm.js
/// terminal: the browser signs in with the admin token (`/?token=`, then the cookie), opens
/// the session's watch WebSocket from the page, and what a WebSocket client makes a real
/// `/bin/sh` print appears in the terminal's buffer and on screen, its colour escapes drawn
/// as colour (red cells), not shown as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_watch_shows_a_live_shell_sessions_output() {
    let test = "status_page_watch_shows_a_live_shell_sessions_output";
    let Some(browser) = Browser::start(test, None).await else {
        return;
    };
    const ADMIN_TOKEN: &str = "browser-watch-admin-token";
    let shell = shell_backend().await;
    let gw = spawn_gateway(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\
         bearer_sha256 = \"{}\"\n\n{}",
        sha256_hex(ADMIN_TOKEN),
        route("shell", "/shell", &format!("tcp://{shell}")),
    ))
    .await;
    let admin = gw.admin.unwrap();
    let mut client = ws_client(&gw.url("/shell")).await;
    let run = |command: &str| {
        tokio_tungstenite::tungstenite::Message::binary(format!("{command}\n").into_bytes())
    };
    use futures_util::SinkExt;
    client.send(run("echo ready")).await.unwrap();
    assert!(String::from_utf8_lossy(&next_data(&mut client).await.unwrap()).contains("ready"));
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, answer) =
        admin_request(admin, "GET", "/api/sessions", &[("Authorization", &auth)]).await;
    assert_eq!(status, 200, "{answer}");
    let list: serde_json::Value = serde_json::from_str(answer_body(&answer)).unwrap();
    let id = list["sessions"][0]["id"]
        .as_u64()
        .expect("the session is listed");

    browser
        .client()
        .goto(&format!("http://{admin}/?token={ADMIN_TOKEN}"))
        .await
        .expect("status page");
    browser
        .eventually(
            "the session's watch button is clicked",
            "const b = document.querySelector(`#session-rows tr[data-session-id=\"${arguments[0]}\"] button.watch`); \
             if (b) b.click(); return !!b;",
            json!(id),
        )
        .await;
    browser
        .eventually(
            "the watch opens",
            "return document.getElementById('watch-state').textContent === 'watching (read-only)';",
            json!(null),
        )
        .await;
    browser
        .eventually(
            "the watch view is an xterm.js terminal that takes no input",
            "const t = window.wsgateWatchTerminal; \
             return !!t && !!document.querySelector('#watch-terminal .xterm .xterm-rows') \
               && t.options.disableStdin === true && t.cols === 100 && t.rows === 30;",
            json!(null),
        )
        .await;
    client
        .send(run("echo from-the-shell-$((6*7))"))
        .await
        .unwrap();
    browser
        .eventually(
            "the shell's output is in the terminal's buffer",
            WATCH_BUFFER_HAS,
            json!("from-the-shell-42"),
        )
        .await;
    client
        .send(run(r"printf 'plain \033[31mRED\033[0m after\n'"))
        .await
        .unwrap();
    browser
        .eventually(
            "the coloured line is in the buffer, its escapes interpreted",
            WATCH_BUFFER_HAS,
            json!("plain RED after"),
        )
        .await;
    let screen = browser
        .eventually(
            "the coloured line is drawn on the terminal's screen",
            "const rows = document.querySelector('#watch-terminal .xterm-rows'); \
             if (!rows || !rows.textContent.includes('RED')) return null; \
             const red = [...rows.querySelectorAll('span')] \
               .filter((s) => s.textContent.includes('RED')) \
               .map((s) => s.className); \
             return { rows: rows.textContent, red };",
            json!(null),
        )
        .await;
    let (rows, red) = (&screen["rows"], &screen["red"]);
    let rows = rows.as_str().expect("rows text");
    assert!(
        rows.contains("from-the-shell-42") && rows.contains("RED"),
        "the screen shows the output: {rows:?}"
    );
    assert!(
        !rows.contains("[31m") && !rows.contains('\u{1b}'),
        "no escape sequence shown as text: {rows:?}"
    );
    assert!(
        red.as_array().is_some_and(|c| c.iter().any(|c| c
            .as_str()
            .is_some_and(|c| c.split_whitespace().any(|k| k == "xterm-fg-1")))),
        "RED is drawn in the terminal's red (xterm-fg-1): {red}"
    );
    browser.screenshot("status-watch-live-shell").await;
    // The page's own watch is one open watch.
    expect_metric(admin, "wsgate_watchers_active{route=\"shell\"}", 1.0).await;
    client
        .send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await
        .unwrap();
    browser
        .eventually(
            "the watch view says the session ended",
            "return document.getElementById('watch-state').textContent.startsWith('ended: 1000');",
            json!(null),
        )
        .await;
    browser.quit().await;
    gw.stop().await.unwrap();
}

/// Chromium loads the console over HTTP/2 (ALPN `h2`, the listener's default) and, since the
/// gateway advertises SETTINGS_ENABLE_CONNECT_PROTOCOL, opens the page's WebSocket as an
/// extended CONNECT on that same connection (RFC 8441): the gateway counts it under
/// `protocol="h2"`, and the echo comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_websocket_rides_the_pages_http2_connection() {
    let pki = test_pki();
    let test = "console_websocket_rides_the_pages_http2_connection";
    let Some(browser) = Browser::start(test, Some(&pki.spki_sha256)).await else {
        return;
    };
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nconsole = true\n\n[listener.tls]\n\
         cert_file = {:?}\nkey_file = {:?}\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n{}",
        pki.cert_file.display().to_string(),
        pki.key_file.display().to_string(),
        route("browser_h2", "/h2echo", &format!("tcp://{echo}")),
    ))
    .await;
    let admin = gw.admin.unwrap();
    let origin = format!("https://127.0.0.1:{}", gw.addr.port());
    browser.console_connect(&origin, "/h2echo", None).await;
    let page_protocol = browser
        .client()
        .execute(
            "return performance.getEntriesByType('navigation')[0].nextHopProtocol;",
            vec![],
        )
        .await
        .expect("navigation timing");
    assert_eq!(page_protocol, json!("h2"), "the page came over HTTP/2");

    browser.type_into("message", "hello over h2").await;
    browser.click("send").await;
    browser
        .eventually(
            "the echo shows in the log",
            "return Array.from(document.querySelectorAll('#log li.in')).some(li => li.textContent.includes(arguments[0]));",
            json!("hello over h2"),
        )
        .await;
    let page = scrape(admin).await;
    assert_eq!(
        metric(
            &page,
            r#"wsgate_sessions_total{route="browser_h2",protocol="h2"}"#
        ),
        Some(1.0),
        "the WebSocket rode HTTP/2: {page}"
    );
    assert_eq!(
        metric(
            &page,
            r#"wsgate_sessions_total{route="browser_h2",protocol="http1"}"#
        ),
        Some(0.0)
    );
    browser.screenshot("console-h2-echo").await;
    browser.type_into("close-code", "4000").await;
    browser.click("disconnect").await;
    assert_eq!(browser.console_close().await.0, 4000);
    browser.quit().await;
    gw.stop().await.unwrap();
}

/// A TCP relay in front of `to` that reports, per connection once it ends, the bytes it
/// carried (from the client, to the client): what really crossed the wire.
async fn counting_relay(
    to: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::Receiver<(u64, u64)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut upstream) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                if let Ok(counts) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                {
                    let _ = tx.send(counts).await;
                }
            });
        }
    });
    (addr, rx)
}

/// Chromium negotiates permessage-deflate with a route that has `compression = "on"`: the
/// page sees the gateway's `Sec-WebSocket-Extensions` answer in `ws.extensions`, a 100 KB
/// text message comes back intact from a TCP echo, and a relay between browser and gateway
/// shows that both directions crossed the wire compressed (Chromium compresses what it sends,
/// the gateway what the backend sent), each under a fifth of the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_negotiates_permessage_deflate_and_its_echo_works() {
    let test = "chromium_negotiates_permessage_deflate_and_its_echo_works";
    let Some(browser) = Browser::start(test, None).await else {
        return;
    };
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nconsole = true\n\n{}\
         compression = \"on\"\nmessage_type = \"text\"\nsubprotocols = []\n",
        route("z", "/z", &format!("tcp://{echo}")),
    ))
    .await;
    let (relay, mut wire) = counting_relay(gw.addr).await;
    browser
        .client()
        .goto(&format!("http://127.0.0.1:{}/", gw.addr.port()))
        .await
        .expect("a page of the gateway's origin");
    const LINE: &str = "{\"type\":\"tick\",\"symbol\":\"ACME\",\"price\":101.25,\"size\":300}\n";
    const LINES: usize = 1700;
    const MESSAGE_BYTES: usize = LINE.len() * LINES;
    browser
        .client()
        .execute(
            "const [url, line, times] = arguments; \
             const msg = line.repeat(times); \
             const t = window.deflateTest = { extensions: null, got: '', done: false, closed: null, error: null }; \
             const ws = window.deflateSocket = new WebSocket(url); \
             ws.onopen = () => { t.extensions = ws.extensions; ws.send(msg); }; \
             ws.onmessage = (e) => { t.got += e.data; if (t.got.length >= msg.length) t.done = t.got === msg ? 'same' : 'different'; }; \
             ws.onerror = () => { t.error = 'error'; }; \
             ws.onclose = (e) => { t.closed = e.code; };",
            vec![
                json!(format!("ws://127.0.0.1:{}/z", relay.port())),
                json!(LINE),
                json!(LINES),
            ],
        )
        .await
        .expect("page script runs");
    let outcome = browser
        .eventually(
            "the echo comes back",
            "const t = window.deflateTest; return (t.done || t.error || t.closed !== null) && [t.done, t.extensions, t.error, t.closed];",
            json!(null),
        )
        .await;
    browser.screenshot("permessage-deflate-echo").await;
    assert_eq!(
        outcome,
        json!(["same", "permessage-deflate", null, null]),
        "[echo, ws.extensions, error, close code]"
    );
    browser
        .client()
        .execute("window.deflateSocket.close(1000);", vec![])
        .await
        .expect("close");
    browser
        .eventually(
            "the close completes",
            "return window.deflateTest.closed === 1000;",
            json!(null),
        )
        .await;
    let (from_browser, to_browser) = tokio::time::timeout(Duration::from_secs(10), wire.recv())
        .await
        .expect("the relayed connection ends after the close")
        .expect("relay counts");
    assert!(
        from_browser < (MESSAGE_BYTES / 5) as u64 && to_browser < (MESSAGE_BYTES / 5) as u64,
        "{MESSAGE_BYTES} B message: {from_browser} B from the browser, {to_browser} B to it"
    );
    browser.quit().await;
    gw.stop().await.unwrap();
}

/// The console page and its WebSocket on a name whose certificate came from an ACME CA
/// (Debian's pebble, validated over TLS-ALPN-01 on the gateway's listener): Chromium reaches
/// `https://a.acme.test:PORT/` (the name mapped to 127.0.0.1) and is accepted only by the
/// issued certificate's key, so the page and the echo prove the ACME certificate is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_on_an_acme_name_echoes_over_the_issued_certificate() {
    use rustls::pki_types::pem::PemObject;
    let test = "console_on_an_acme_name_echoes_over_the_issued_certificate";
    if !pebble_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki();
    // pebble's own HTTPS listener: a leaf for 127.0.0.1 from a CA the gateway is told of.
    let ca = test_ca("wsgate browser acme test CA");
    let (cert, key) = leaf_signed_by(&ca);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let pebble_cert = dir.path().join("pebble.pem");
    let pebble_key = dir.path().join("pebble-key.pem");
    std::fs::write(&pebble_cert, &cert).unwrap();
    std::fs::write(&pebble_key, &key).unwrap();
    let mut trust = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&ca_file).unwrap() {
        trust.add(c.unwrap()).unwrap();
    }
    let port = free_port();
    let pebble = Pebble::start(
        dir.path(),
        &pebble_cert,
        &pebble_key,
        (port, free_port()),
        None,
    );
    let _root = pebble.root(&trust).await;
    let state = dir.path().join("state");
    let name = "a.acme.test";
    let gw = spawn_gateway(&format!(
        "[[listener]]\naddress = \"127.0.0.1:{port}\"\nconsole = true\n\n[listener.tls]\n\
         cert_file = {:?}\nkey_file = {:?}\n\n[acme]\ndirectory_url = \"{}\"\n\
         names = [\"{name}\"]\nstate_dir = {:?}\nca_file = {:?}\nretry_secs = 1\n\n\
         [[route]]\nname = \"echo\"\npath = \"/echo\"\nbackend = \"builtin:echo\"\n",
        pki.cert_file.display().to_string(),
        pki.key_file.display().to_string(),
        pebble.directory,
        state.display().to_string(),
        ca_file.display().to_string(),
    ))
    .await;
    // The issued key, once the certificate is in the state folder.
    let key_file = state.join(format!("{name}-key.pem"));
    let cert_file = state.join(format!("{name}.pem"));
    let issued = tokio::time::timeout(Duration::from_secs(120), async {
        while !cert_file.exists() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let log = std::fs::read_to_string(dir.path().join("pebble.log")).unwrap_or_default();
    assert!(
        issued.is_ok(),
        "no certificate for {name} from pebble; its log:\n{log}"
    );
    // Installed for serving right after its files are written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let key = KeyPair::from_pem(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
    let spki = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());

    let Some(browser) = Browser::start_with(
        test,
        Some(&spki),
        &[format!("--host-resolver-rules=MAP {name} 127.0.0.1")],
    )
    .await
    else {
        return;
    };
    let origin = format!("https://{name}:{port}");
    browser.console_connect(&origin, "/echo", None).await;
    browser.type_into("message", "hello over ACME").await;
    browser.click("send").await;
    browser
        .eventually(
            "the echo shows in the log",
            "const l = Array.from(document.querySelectorAll('#log li.in')).find(li => li.textContent.includes(arguments[0])); \
             return l ? l.textContent : null;",
            json!("hello over ACME"),
        )
        .await;
    browser.screenshot("console-acme-name").await;
    browser.quit().await;
    gw.stop().await.unwrap();
}

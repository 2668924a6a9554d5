//! The HTTP side of the gateway over real sockets: routing, upgrade checks, subprotocols,
//! the backend dial before the `101`, the admin listener and the metric labels.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use support::*;

/// The sample nonce of RFC 6455 §1.3, as sent by `upgrade_request`, and its accept value.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

/// A request from its first line and header lines.
fn request(first_line: &str, headers: &[(&str, &str)]) -> String {
    let mut r = format!("{first_line}\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// The usual upgrade headers without the one named `omit` (`""` keeps them all).
fn upgrade_headers_without(omit: &str) -> Vec<(&'static str, &'static str)> {
    [
        ("Host", "localhost"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ]
    .into_iter()
    .filter(|(k, _)| !k.eq_ignore_ascii_case(omit))
    .collect()
}

/// The usual upgrade headers with `name` replaced by `value`.
fn upgrade_headers_with(name: &str, value: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut h = upgrade_headers_without(name);
    let name = upgrade_headers_without("")
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(k, _)| k)
        .expect("a standard header");
    h.push((name, value));
    h
}

/// Send a Close 1000 and read until the gateway's answer, so the session ends at once.
async fn close_normally(ws: &mut WsClient) {
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    })))
    .await
    .expect("send Close");
    assert_eq!(expect_close(ws).await, (1000, String::new()));
}

/// A fresh client gets its bytes echoed through `url`, then closes cleanly.
async fn assert_echo_round_trip(url: &str) {
    let mut ws = ws_client(url).await;
    send_binary(&mut ws, b"still serving").await;
    assert_eq!(read_bytes(&mut ws, 13).await, b"still serving");
    close_normally(&mut ws).await;
}

/// Which backend (by greeting) a WebSocket to `url` reaches.
async fn served_by(url: &str) -> String {
    let mut ws = ws_client(url).await;
    let greeting = next_data(&mut ws).await.expect("the backend's greeting");
    close_normally(&mut ws).await;
    String::from_utf8(greeting).unwrap()
}

/// A loopback listener whose accept queue is full: a further connect hangs in SYN-SENT
/// (Linux drops SYNs to a listener with a full accept queue). Holds its sockets while alive.
struct Blackhole {
    addr: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

/// Fill a `listen(0)` socket's accept queue until a probe connect hangs; `None` if one never does.
async fn blackhole() -> Option<Blackhole> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => queued.push(s),
            Ok(Err(_)) => return None,
            // This connect hangs: so will the gateway's.
            Err(_) => {
                return Some(Blackhole {
                    addr,
                    _listener: listener,
                    _queued: queued,
                })
            }
        }
    }
    None
}

async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    raw_http(
        admin,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// 1. Routing.

#[tokio::test]
async fn unknown_path_is_404_with_its_reason() {
    let echo = tcp_echo_backend().await;
    let backend = format!("tcp://{echo}");
    let gw = spawn_gateway(&config_with(&format!(
        "{}{}",
        route("nf_exact", "/vnc", &backend),
        route("nf_prefix", "/apps/", &backend),
    )))
    .await;
    for path in ["/other", "/", "/vnc2", "/vnc/", "/apps", "/APPS/x"] {
        let (status, answer) = raw_http(gw.addr, &upgrade_request(path, "")).await;
        assert_eq!(status, 404, "{path}: {answer}");
        assert_eq!(answer_body(&answer), "no route for this path\n", "{path}");
        assert_eq!(
            answer_header(&answer, "content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(answer_header(&answer, "upgrade"), None, "{path}: {answer}");
    }
    let page = scrape(gw.admin.unwrap()).await;
    assert!(
        metric(
            &page,
            r#"wsgate_upgrade_rejections_total{route="none",reason="no_route"}"#
        )
        .unwrap_or(0.0)
            >= 6.0,
        "{page}"
    );
    // The routed paths still work.
    assert_echo_round_trip(&gw.url("/vnc")).await;
    assert_echo_round_trip(&gw.url("/apps/x")).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn exact_beats_prefix_longest_prefix_wins_query_ignored() {
    let mut routes = String::new();
    for (name, path) in [
        ("rt_root", "/"),
        ("rt_apps", "/apps/"),
        ("rt_apps_deep", "/apps/deep/"),
        ("rt_apps_special", "/apps/special"),
        ("rt_vnc", "/vnc"),
    ] {
        let backend = greeting_backend(name).await;
        routes.push_str(&route(name, path, &format!("tcp://{backend}")));
    }
    let gw = spawn_gateway(&config_with(&routes)).await;
    for (path, expected) in [
        ("/vnc", "rt_vnc"),
        ("/vnc?token=x", "rt_vnc"),
        ("/vnc?token=x&other=/apps/", "rt_vnc"),
        ("/vnc/x", "rt_root"),
        ("/vncx", "rt_root"),
        ("/apps/special", "rt_apps_special"),
        ("/apps/special?x=1", "rt_apps_special"),
        ("/apps/special/more", "rt_apps"),
        ("/apps/other", "rt_apps"),
        ("/apps/", "rt_apps"),
        ("/apps/deep/x", "rt_apps_deep"),
        ("/apps/deep/", "rt_apps_deep"),
        ("/apps/deep", "rt_apps"),
        ("/apps", "rt_root"),
        ("/", "rt_root"),
        ("/?q=1", "rt_root"),
        ("/zzz", "rt_root"),
    ] {
        assert_eq!(served_by(&gw.url(path)).await, expected, "{path}");
    }
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 2. Upgrade checks.

#[tokio::test]
async fn malformed_upgrades_get_exact_answers_and_the_gateway_keeps_serving() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("bad_req", &format!("tcp://{echo}")).await;
    let get = "GET / HTTP/1.1";
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "POST",
            request("POST / HTTP/1.1", &upgrade_headers_without("")),
            400,
            "a WebSocket upgrade must be a GET",
        ),
        (
            "HTTP/1.0",
            request("GET / HTTP/1.0", &upgrade_headers_without("")),
            400,
            "a WebSocket upgrade needs HTTP/1.1",
        ),
        (
            "no Upgrade",
            request(get, &upgrade_headers_without("Upgrade")),
            400,
            "missing Upgrade: websocket",
        ),
        (
            "Upgrade: h2c",
            request(get, &upgrade_headers_with("Upgrade", "h2c")),
            400,
            "missing Upgrade: websocket",
        ),
        (
            "no Connection",
            request(get, &upgrade_headers_without("Connection")),
            400,
            "missing Connection: Upgrade",
        ),
        (
            "Connection: keep-alive",
            request(get, &upgrade_headers_with("Connection", "keep-alive")),
            400,
            "missing Connection: Upgrade",
        ),
        (
            "no key",
            request(get, &upgrade_headers_without("Sec-WebSocket-Key")),
            400,
            "missing Sec-WebSocket-Key",
        ),
        (
            "short key",
            request(get, &upgrade_headers_with("Sec-WebSocket-Key", "short")),
            400,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ),
        (
            "key not base64",
            request(
                get,
                &upgrade_headers_with("Sec-WebSocket-Key", "!!!!!!!!!!!!!!!!!!!!!!=="),
            ),
            400,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ),
        (
            "no version",
            request(get, &upgrade_headers_without("Sec-WebSocket-Version")),
            426,
            "unsupported Sec-WebSocket-Version (this gateway speaks 13)",
        ),
        (
            "version 8",
            request(get, &upgrade_headers_with("Sec-WebSocket-Version", "8")),
            426,
            "unsupported Sec-WebSocket-Version (this gateway speaks 13)",
        ),
    ];
    let (mut bad_requests, mut bad_versions) = (0.0, 0.0);
    for (what, req, status, reason) in &cases {
        let (got, answer) = raw_http(gw.addr, req).await;
        assert_eq!(got, *status, "{what}: {answer}");
        assert_eq!(
            answer_body(&answer),
            format!("{reason}\n"),
            "{what}: {answer}"
        );
        assert_eq!(
            answer_header(&answer, "content-type"),
            Some("text/plain; charset=utf-8"),
            "{what}"
        );
        assert_eq!(
            answer_header(&answer, "sec-websocket-accept"),
            None,
            "{what}"
        );
        if *status == 426 {
            bad_versions += 1.0;
            assert_eq!(
                answer_header(&answer, "sec-websocket-version"),
                Some("13"),
                "{what}: {answer}"
            );
            // RFC 9110 §15.5.22: a 426 names the protocol to switch to.
            assert_eq!(
                answer_header(&answer, "upgrade"),
                Some("websocket"),
                "{what}: {answer}"
            );
        } else {
            bad_requests += 1.0;
        }
        // The same gateway still serves a proper client.
        assert_echo_round_trip(&gw.url("/")).await;
    }
    let page = scrape(gw.admin.unwrap()).await;
    assert_eq!(
        metric(
            &page,
            r#"wsgate_upgrade_rejections_total{route="bad_req",reason="bad_request"}"#
        ),
        Some(bad_requests),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            r#"wsgate_upgrade_rejections_total{route="bad_req",reason="bad_version"}"#
        ),
        Some(bad_versions),
        "{page}"
    );
    assert_eq!(
        metric(&page, r#"wsgate_sessions_total{route="bad_req"}"#),
        Some(cases.len() as f64),
        "one session per round trip, none for the rejections: {page}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn connection_and_upgrade_tokens_are_case_insensitive_lists() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("conn_tokens", &format!("tcp://{echo}")).await;
    for (name, value) in [
        ("Connection", "keep-alive, Upgrade"),
        ("Connection", "upgrade"),
        ("Connection", "Upgrade,keep-alive"),
        ("Upgrade", "WebSocket"),
    ] {
        let headers = upgrade_headers_with(name, value);
        let (status, answer) = raw_http(gw.addr, &request("GET / HTTP/1.1", &headers)).await;
        assert_eq!(status, 101, "{name}: {value}: {answer}");
        assert_eq!(answer_header(&answer, "sec-websocket-accept"), Some(ACCEPT));
        assert!(
            answer_header(&answer, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
            "{answer}"
        );
        assert!(
            answer_header(&answer, "connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")),
            "{answer}"
        );
    }
    // The same header through a real client, with a round trip.
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(gw.url("/"))
            .unwrap();
    req.headers_mut()
        .insert("Connection", "keep-alive, Upgrade".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.expect("101");
    assert_eq!(resp.status(), 101);
    send_binary(&mut ws, b"multi-token").await;
    assert_eq!(read_bytes(&mut ws, 11).await, b"multi-token");
    close_normally(&mut ws).await;
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 3. Subprotocols.

#[tokio::test]
async fn subprotocol_is_the_clients_first_accepted_offer_and_never_invented() {
    let echo = tcp_echo_backend().await;
    let backend = format!("tcp://{echo}");
    let gw = spawn_gateway(&config_with(&format!(
        "{}{}subprotocols = [\"mqtt\", \"binary\"]\n",
        route("sp_default", "/d", &backend),
        route("sp_mqtt", "/m", &backend),
    )))
    .await;

    // Through a real client, which also fails the handshake on a protocol it did not offer.
    for (path, offer, chosen) in [
        ("/d", "binary", "binary"),
        ("/d", "base64, binary", "binary"),
        ("/d", "base64,binary", "binary"),
        ("/m", "binary, mqtt", "binary"),
        ("/m", "mqtt, binary", "mqtt"),
        ("/m", "chat, mqtt", "mqtt"),
    ] {
        let (mut ws, got) = ws_client_offering(&gw.url(path), offer).await;
        assert_eq!(got.as_deref(), Some(chosen), "{path} offering {offer}");
        send_binary(&mut ws, b"sp").await;
        assert_eq!(read_bytes(&mut ws, 2).await, b"sp");
        close_normally(&mut ws).await;
    }

    // Raw: the exact header in the 101, or its absence.
    for (path, offer_lines, chosen) in [
        ("/d", "Sec-WebSocket-Protocol: chat\r\n", None),
        ("/d", "", None),
        ("/d", "Sec-WebSocket-Protocol: mqtt\r\n", None),
        ("/d", "Sec-WebSocket-Protocol: BINARY\r\n", None),
        ("/m", "Sec-WebSocket-Protocol: chat, base64\r\n", None),
        ("/m", "", None),
        (
            "/d",
            "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: binary\r\n",
            Some("binary"),
        ),
        (
            "/m",
            "Sec-WebSocket-Protocol:  binary ,mqtt\r\n",
            Some("binary"),
        ),
    ] {
        let (status, answer) = raw_http(gw.addr, &upgrade_request(path, offer_lines)).await;
        assert_eq!(status, 101, "{path} {offer_lines:?}: {answer}");
        assert_eq!(
            answer_header(&answer, "sec-websocket-protocol"),
            chosen,
            "{path} {offer_lines:?}: {answer}"
        );
    }
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 4. The backend dial happens before the 101.

#[tokio::test]
async fn refused_backend_is_502_without_upgrade() {
    let refused = refused_addr().await;
    let gw = gateway_to("dial_refused", &format!("tcp://{refused}")).await;
    let (status, answer) = raw_http(gw.addr, &upgrade_request("/", "")).await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer_body(&answer), "backend refused the connection\n");
    assert_eq!(answer_header(&answer, "upgrade"), None, "{answer}");
    assert_eq!(
        answer_header(&answer, "sec-websocket-accept"),
        None,
        "{answer}"
    );
    // A real client sees the HTTP error, not a WebSocket.
    match tokio_tungstenite::connect_async(gw.url("/")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 502)
        }
        Err(e) => panic!("expected an HTTP 502, got {e}"),
        Ok(_) => panic!("expected an HTTP 502, got a WebSocket"),
    }
    let page = scrape(gw.admin.unwrap()).await;
    assert_eq!(
        metric(
            &page,
            r#"wsgate_upgrade_rejections_total{route="dial_refused",reason="backend_refused"}"#
        ),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        metric(&page, r#"wsgate_sessions_total{route="dial_refused"}"#),
        Some(0.0),
        "no session started: {page}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn backend_connect_timeout_is_504() {
    let Some(hole) = blackhole().await else {
        eprintln!("SKIPPED: no connect to a full accept queue hangs on this machine");
        return;
    };
    let gw = spawn_gateway(&config_with(&format!(
        "{}\n[timeouts]\nbackend_connect_secs = 0.3\n",
        route("dial_timeout", "/", &format!("tcp://{}", hole.addr)),
    )))
    .await;
    let (status, answer) = raw_http(gw.addr, &upgrade_request("/", "")).await;
    assert_eq!(status, 504, "{answer}");
    assert_eq!(answer_body(&answer), "backend did not answer in time\n");
    assert_eq!(answer_header(&answer, "upgrade"), None, "{answer}");
    let page = scrape(gw.admin.unwrap()).await;
    assert_eq!(
        metric(
            &page,
            r#"wsgate_upgrade_rejections_total{route="dial_timeout",reason="backend_timeout"}"#
        ),
        Some(1.0),
        "{page}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn successful_dial_is_timed_per_route() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("dial_ok", &format!("tcp://{echo}")).await;
    assert_echo_round_trip(&gw.url("/")).await;
    assert_echo_round_trip(&gw.url("/x")).await;
    let page = scrape(gw.admin.unwrap()).await;
    assert_eq!(
        metric(
            &page,
            r#"wsgate_backend_connect_seconds_count{route="dial_ok"}"#
        ),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            r#"wsgate_backend_connect_seconds_bucket{route="dial_ok",le="+Inf"}"#
        ),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        metric(&page, r#"wsgate_sessions_total{route="dial_ok"}"#),
        Some(2.0),
        "{page}"
    );
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 5. The admin listener.

#[tokio::test]
async fn admin_endpoints_answer_and_histograms_render_as_histograms() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("adm_basic", &format!("tcp://{echo}")).await;
    let admin = gw.admin.unwrap();

    let (status, answer) = admin_get(admin, "/healthz").await;
    assert_eq!((status, answer_body(&answer)), (200, "ok\n"), "{answer}");
    let (status, answer) = admin_get(admin, "/readyz").await;
    assert_eq!((status, answer_body(&answer)), (200, "ready\n"), "{answer}");
    let (status, answer) = admin_get(admin, "/nope").await;
    assert_eq!(
        (status, answer_body(&answer)),
        (404, "not found\n"),
        "{answer}"
    );
    let (status, answer) = raw_http(
        admin,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405, "{answer}");
    // The admin listener does not route WebSockets.
    let (status, _) = raw_http(admin, &upgrade_request("/", "")).await;
    assert_eq!(status, 404);

    assert_echo_round_trip(&gw.url("/")).await;
    let (status, page) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        answer_header(&page, "content-type")
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")),
        "{page}"
    );
    let lines: Vec<&str> = page.lines().collect();
    for name in [
        "wsgate_backend_connect_seconds",
        "wsgate_session_duration_seconds",
    ] {
        assert!(
            lines.contains(&format!("# TYPE {name} histogram").as_str()),
            "{name} is not a histogram: {page}"
        );
        assert!(
            !lines.contains(&format!("# TYPE {name} summary").as_str()),
            "{page}"
        );
    }
    assert!(
        page.contains(r#"wsgate_backend_connect_seconds_bucket{route="adm_basic",le="#),
        "{page}"
    );
    assert!(
        lines.contains(&"# TYPE wsgate_sessions_total counter"),
        "{page}"
    );
    assert!(
        lines.contains(&"# TYPE wsgate_sessions_active gauge"),
        "{page}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn readyz_is_503_while_draining() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&config_with(&format!(
        "{}\n[timeouts]\nshutdown_grace_secs = 2\nclose_grace_secs = 1\n",
        route("adm_drain", "/", &format!("tcp://{echo}")),
    )))
    .await;
    let admin = gw.admin.unwrap();
    assert_eq!(admin_get(admin, "/readyz").await.0, 200);

    // A session held open by a client that will not answer the 1001 Close.
    let mut ws = ws_client(&gw.url("/")).await;
    send_binary(&mut ws, b"hold").await;
    assert_eq!(read_bytes(&mut ws, 4).await, b"hold");

    gw.shutdown.cancel();
    assert_eventually!(
        {
            let (status, answer) = admin_get(admin, "/readyz").await;
            status == 503 && answer_body(&answer) == "draining\n"
        },
        "/readyz never answered 503 draining"
    );
    // Liveness is not readiness: still alive while draining.
    let (status, answer) = admin_get(admin, "/healthz").await;
    assert_eq!(status, 200, "{answer}");

    tokio::time::timeout(Duration::from_secs(30), gw.task)
        .await
        .expect("drain ends in time")
        .expect("no panic")
        .expect("run returns Ok");
    // The held client was told why.
    assert_eq!(
        expect_close(&mut ws).await,
        (1001, "gateway shutting down".to_owned())
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Metric labels.

#[tokio::test]
async fn session_metrics_are_labelled_by_route_only() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("m_labels", &format!("tcp://{echo}")).await;
    let admin = gw.admin.unwrap();
    let mut ws = ws_client(&gw.url("/")).await;

    let binary: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    send_binary(&mut ws, b"hello").await;
    send_binary(&mut ws, &binary).await;
    ws.send(Message::text("héllo")).await.unwrap();
    let sent = 5 + binary.len() + "héllo".len();
    assert_eq!(read_bytes(&mut ws, sent).await.len(), sent);

    let page = scrape(admin).await;
    assert_eq!(
        metric(&page, r#"wsgate_sessions_active{route="m_labels"}"#),
        Some(1.0),
        "{page}"
    );

    close_normally(&mut ws).await;
    drop(ws);
    let closes = r#"wsgate_closes_total{route="m_labels",code="1000",initiator="client"}"#;
    let active = r#"wsgate_sessions_active{route="m_labels"}"#;
    assert_eventually!(
        {
            let page = scrape(admin).await;
            metric(&page, closes) == Some(1.0) && metric(&page, active) == Some(0.0)
        },
        "the close was not recorded: {}",
        scrape(admin).await
    );
    let page = scrape(admin).await;
    for (series, value) in [
        (r#"wsgate_sessions_total{route="m_labels"}"#, 1.0),
        (active, 0.0),
        (closes, 1.0),
        (
            r#"wsgate_bytes_total{route="m_labels",direction="client_to_backend"}"#,
            sent as f64,
        ),
        (
            r#"wsgate_bytes_total{route="m_labels",direction="backend_to_client"}"#,
            sent as f64,
        ),
        (
            r#"wsgate_messages_total{route="m_labels",direction="client_to_backend"}"#,
            3.0,
        ),
        (
            r#"wsgate_backend_connect_seconds_count{route="m_labels"}"#,
            1.0,
        ),
        (
            r#"wsgate_session_duration_seconds_count{route="m_labels"}"#,
            1.0,
        ),
    ] {
        assert_eq!(metric(&page, series), Some(value), "{series}: {page}");
    }
    let client_port = gw.addr.port().to_string();
    for line in page.lines() {
        assert!(!line.contains("127.0.0.1"), "an address in a label: {line}");
        assert!(
            !line.contains(&format!(":{client_port}")),
            "a port in a label: {line}"
        );
    }
    gw.stop().await.unwrap();
}

/// Regression (issue 9 item 17): the `code` label of `wsgate_closes_total` took any code a
/// client sent, so one unauthenticated client could create thousands of series. Registered
/// codes keep their number; 3000-3999 and 4000-4999 fold into `3xxx` and `4xxx`.
#[tokio::test]
async fn close_code_labels_are_bounded() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("m_close_codes", &format!("tcp://{echo}")).await;
    let admin = gw.admin.unwrap();
    let codes: Vec<u16> = (4000..4040).chain(3000..3010).chain([1000, 1001]).collect();
    for &code in &codes {
        let mut ws = ws_client(&gw.url("/")).await;
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        })))
        .await
        .expect("send Close");
        assert_eq!(expect_close(&mut ws).await.0, code, "the echo of {code}");
    }
    let series = |page: &str| -> Vec<String> {
        page.lines()
            .filter(|l| l.starts_with(r#"wsgate_closes_total{route="m_close_codes""#))
            .map(str::to_owned)
            .collect()
    };
    let client = |code: &str| {
        format!(r#"wsgate_closes_total{{route="m_close_codes",code="{code}",initiator="client"}}"#)
    };
    assert_eventually!(
        metric(&scrape(admin).await, &client("4xxx")) == Some(40.0),
        "4xxx codes not folded: {:?}",
        series(&scrape(admin).await)
    );
    let page = scrape(admin).await;
    assert_eq!(metric(&page, &client("3xxx")), Some(10.0), "{page}");
    assert_eq!(metric(&page, &client("1000")), Some(1.0), "{page}");
    assert_eq!(metric(&page, &client("1001")), Some(1.0), "{page}");
    assert_eq!(series(&page).len(), 4, "{:?}", series(&page));
    gw.stop().await.unwrap();
}

/// Regression (issue 9 item 18): `/metrics` was empty on a fresh gateway: a configured route's
/// series appeared only after its first event. They are registered at start, at zero, with
/// `wsgate_build_info{version}` = 1.
#[tokio::test]
async fn a_fresh_gateway_exports_every_route_at_zero_and_its_build_info() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&config_with(&format!(
        "{}{}",
        route("m_fresh_a", "/a", &format!("tcp://{echo}")),
        route("m_fresh_b", "/b", &format!("tcp://{echo}")),
    )))
    .await;
    let page = scrape(gw.admin.unwrap()).await;
    for route in ["m_fresh_a", "m_fresh_b"] {
        for series in [
            format!(r#"wsgate_sessions_active{{route="{route}"}}"#),
            format!(r#"wsgate_sessions_total{{route="{route}"}}"#),
            format!(r#"wsgate_bytes_total{{route="{route}",direction="client_to_backend"}}"#),
            format!(r#"wsgate_bytes_total{{route="{route}",direction="backend_to_client"}}"#),
            format!(r#"wsgate_messages_total{{route="{route}",direction="client_to_backend"}}"#),
            format!(r#"wsgate_keepalive_timeouts_total{{route="{route}"}}"#),
            format!(r#"wsgate_auth_failures_total{{route="{route}"}}"#),
            format!(r#"wsgate_backend_connect_seconds_count{{route="{route}"}}"#),
            format!(r#"wsgate_session_duration_seconds_count{{route="{route}"}}"#),
        ] {
            assert_eq!(metric(&page, &series), Some(0.0), "{series}: {page}");
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        metric(
            &page,
            &format!(r#"wsgate_build_info{{version="{version}"}}"#)
        ),
        Some(1.0),
        "{page}"
    );
    assert!(page.contains("wsgate_connections_active"), "{page}");
    assert!(
        page.contains("wsgate_tls_handshake_failures_total"),
        "{page}"
    );
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// IPv6 loopback end to end: listener, admin and a bracketed backend address.

#[tokio::test]
async fn ipv6_listener_and_backend() {
    let Ok(backend) = TcpListener::bind("[::1]:0").await else {
        eprintln!("SKIPPED: no IPv6 loopback on this machine");
        return;
    };
    let backend_addr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let gw = spawn_gateway(&format!(
        "[[listener]]\naddress = \"[::1]:0\"\n\n[admin]\naddress = \"[::1]:0\"\n\n{}",
        route("v6_route", "/", &format!("tcp://{backend_addr}")),
    ))
    .await;
    assert!(gw.addr.is_ipv6());
    assert_echo_round_trip(&gw.url("/")).await;
    let page = scrape(gw.admin.unwrap()).await;
    assert_eq!(
        metric(&page, r#"wsgate_sessions_total{route="v6_route"}"#),
        Some(1.0),
        "{page}"
    );
    assert!(!page.contains("::1"), "an address in a label: {page}");
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The connection gauge.

#[tokio::test]
async fn upgraded_connections_still_count_as_active_connections() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("conn_gauge", &format!("tcp://{echo}")).await;
    let admin = gw.admin.unwrap();
    let mut clients = Vec::new();
    for i in 0..3u8 {
        let mut ws = ws_client(&gw.url("/")).await;
        send_binary(&mut ws, &[i]).await;
        assert_eq!(read_bytes(&mut ws, 1).await, [i]);
        clients.push(ws);
    }
    let page = scrape(admin).await;
    assert_eq!(
        metric(&page, r#"wsgate_sessions_active{route="conn_gauge"}"#),
        Some(3.0),
        "{page}"
    );
    // Three client sockets are open on the public listener (other tests can only add more).
    let open = metric(&page, "wsgate_connections_active").unwrap_or(0.0);
    assert!(
        open >= 3.0,
        "wsgate_connections_active is {open} with 3 live sessions"
    );
    for mut ws in clients {
        close_normally(&mut ws).await;
    }
    gw.stop().await.unwrap();
}

//! WebSocket backends (`ws://`, `wss://`) over real sockets: the frame relay, the backend
//! handshake (path, headers, subprotocols, strictness), close codes end to end, per-hop
//! keepalive, and peers we did not write (Python's `websockets`, a backend behind TLS).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use support::frame_bits::*;
use support::*;

/// The limit on every wait in this file: outcomes are bounded, never timed.
const WAIT: Duration = Duration::from_secs(10);

type BackendWs = WebSocketStream<TcpStream>;

// ---- Backends --------------------------------------------------------------------------------

/// How a test backend answers the client's subprotocol offer (`None`: no header).
type Pick = fn(Option<&str>) -> Option<String>;

fn pick_nothing(_offer: Option<&str>) -> Option<String> {
    None
}

/// Picks `chat.v1` when it is offered.
fn pick_chat_v1(offer: Option<&str>) -> Option<String> {
    offer
        .filter(|o| o.split(',').any(|p| p.trim() == "chat.v1"))
        .map(|_| "chat.v1".to_owned())
}

/// A tokio-tungstenite backend: each handshake request it accepted goes to the test with its
/// WebSocket, for the test to drive.
async fn ws_backend(pick: Pick) -> (SocketAddr, mpsc::Receiver<(Request, BackendWs)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut seen = None;
                // The signature is tungstenite's `Callback`.
                #[allow(clippy::result_large_err)]
                let callback = |req: &Request, mut resp: Response| {
                    let offer = req
                        .headers()
                        .get("sec-websocket-protocol")
                        .map(|v| v.to_str().unwrap());
                    if let Some(p) = pick(offer) {
                        resp.headers_mut()
                            .insert("sec-websocket-protocol", p.parse().unwrap());
                    }
                    seen = Some(req.clone());
                    Ok(resp)
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
                    let _ = tx.send((seen.expect("the callback ran"), ws)).await;
                }
            });
        }
    });
    (addr, rx)
}

/// Echo every data message, as it came (text stays text), until the peer closes.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>) {
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// A tokio-tungstenite echo backend; the handshake request of each connection goes to the test.
async fn ws_echo_backend_picking(pick: Pick) -> (SocketAddr, mpsc::Receiver<Request>) {
    let (addr, mut accepted) = ws_backend(pick).await;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some((req, ws)) = accepted.recv().await {
            tokio::spawn(echo(ws));
            let _ = tx.send(req).await;
        }
    });
    (addr, rx)
}

/// A backend that answers the handshake by hand: it reads the request head and writes
/// `answer(accept)` in one write, `accept` being the right `Sec-WebSocket-Accept` for the
/// request's key. Each connection then goes to the test, unread past the request head.
async fn handcrafted_backend(
    answer: fn(&str) -> Vec<u8>,
) -> (SocketAddr, mpsc::Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                let key = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("sec-websocket-key")
                            .then(|| value.trim().to_owned())
                    })
                    .expect("the gateway sent a Sec-WebSocket-Key");
                let accept = derive_accept_key(key.as_bytes());
                if stream.write_all(&answer(&accept)).await.is_ok() {
                    let _ = tx.send(stream).await;
                }
            });
        }
    });
    (addr, rx)
}

/// An HTTP request head, read byte by byte so nothing after it is consumed.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(timeout(WAIT, stream.read_u8()).await.ok()?.ok()?);
    }
    String::from_utf8(head).ok()
}

/// A `101` with the usual headers and the given `accept`, plus `extra` header lines.
fn switching(accept: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// One frame as a server writes it (unmasked); `first` is `FIN | RSV* | opcode`.
fn server_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let mut out = vec![first, payload.len() as u8];
    out.extend_from_slice(payload);
    out
}

/// Frames a client (here the gateway, towards its backend) sent, unmasked:
/// (`FIN | RSV* | opcode`, payload) each.
fn masked_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes[1] & 0x80 != 0, "client frames are masked");
        let (len, at) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let mask = &bytes[at..at + 4];
        let payload = bytes[at + 4..at + 4 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        out.push((bytes[0], payload));
        bytes = &bytes[at + 4 + len..];
    }
    out
}

/// The next item from a backend's channel (10 s limit).
async fn accepted<T>(rx: &mut mpsc::Receiver<T>) -> T {
    timeout(WAIT, rx.recv())
        .await
        .expect("the backend got a connection in time")
        .expect("the backend is running")
}

// ---- Messages and metrics --------------------------------------------------------------------

/// The next data or Close message, skipping pings and pongs; `None` once the connection ended.
async fn next_msg<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Option<Message> {
    loop {
        match timeout(WAIT, ws.next()).await.expect("a message in time") {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            Some(Err(_)) | None => return None,
        }
    }
}

fn close_msg(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// The code and reason of a Close message; panics on anything else.
fn close_of(msg: Option<Message>) -> (u16, String) {
    match msg {
        Some(Message::Close(Some(f))) => (u16::from(f.code), f.reason.to_string()),
        Some(Message::Close(None)) => (1005, String::new()),
        other => panic!("expected a Close, got {other:?}"),
    }
}

/// The connection ends (EOF, reset or a completed close) within 10 s, with no data before it.
async fn expect_ended<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) {
    if let Some(m) = next_msg(ws).await {
        panic!("expected the connection to end, got {m:?}");
    }
}

/// The upgrade of `path` failed with `status`: no `101`, no upgrade headers; returns the answer.
async fn expect_refused_upgrade(gw: &TestGateway, path: &str, extra: &str, status: u16) -> String {
    let (got, answer) = raw_http(gw.addr, &upgrade_request(path, extra)).await;
    assert_eq!(got, status, "{answer}");
    let head = answer.to_ascii_lowercase();
    assert!(!head.contains("\r\nupgrade:"), "{answer}");
    assert!(!head.contains("\r\nsec-websocket-accept:"), "{answer}");
    answer
}

// ---- 1. Frames ---------------------------------------------------------------------------------

#[tokio::test]
async fn relays_text_and_binary_both_ways_keeping_their_type() {
    let (backend, mut backends) = ws_backend(pick_nothing).await;
    let gw = gateway_to("wsb_types", &format!("ws://{backend}/")).await;
    let mut client = ws_client(&gw.url("/")).await;
    let (_, mut b) = accepted(&mut backends).await;

    // Client to backend.
    client.send(Message::text("héllo ✓")).await.unwrap();
    assert_eq!(next_msg(&mut b).await, Some(Message::text("héllo ✓")));
    client
        .send(Message::binary(vec![0u8, 1, 254, 255]))
        .await
        .unwrap();
    assert_eq!(
        next_msg(&mut b).await,
        Some(Message::binary(vec![0u8, 1, 254, 255]))
    );
    client.send(Message::text("")).await.unwrap();
    assert_eq!(next_msg(&mut b).await, Some(Message::text("")));

    // Backend to client.
    b.send(Message::text("from the backend")).await.unwrap();
    assert_eq!(
        next_msg(&mut client).await,
        Some(Message::text("from the backend"))
    );
    b.send(Message::binary(vec![9u8; 70_000])).await.unwrap();
    assert_eq!(
        next_msg(&mut client).await,
        Some(Message::binary(vec![9u8; 70_000]))
    );

    // 3 MiB round trips, started from each side: the backend echoes one, the client the other.
    let big = pattern(0, 3 << 20);
    let backend_echo = tokio::spawn(async move {
        let m = next_msg(&mut b).await.expect("the big message");
        b.send(m).await.unwrap();
        b
    });
    client.send(Message::binary(big.clone())).await.unwrap();
    let back = next_msg(&mut client).await;
    assert!(
        back == Some(Message::binary(big.clone())),
        "client's 3 MiB came back altered"
    );
    let mut b = backend_echo.await.unwrap();

    let big_text = "ü".repeat(3 << 19); // 3 MiB of two-byte characters
    let client_echo = tokio::spawn(async move {
        let m = next_msg(&mut client).await.expect("the big text");
        client.send(m).await.unwrap();
        client
    });
    b.send(Message::text(big_text.clone())).await.unwrap();
    let back = next_msg(&mut b).await;
    assert!(
        back == Some(Message::text(big_text)),
        "backend's 3 MiB text came back altered"
    );
    let mut client = client_echo.await.unwrap();

    client.send(close_msg(1000, "")).await.unwrap();
    assert_eq!(close_of(next_msg(&mut b).await), (1000, String::new()));
    assert_eq!(close_of(next_msg(&mut client).await), (1000, String::new()));
    expect_ended(&mut client).await;
    gw.stop().await.unwrap();
}

/// Keepalive off, so the only pings on the wire are the test's own.
const NO_KEEPALIVE: &str = "[timeouts]\nping_interval_secs = 0\n";

#[tokio::test]
async fn pings_are_answered_per_hop_never_relayed() {
    let (backend, mut backends) = ws_backend(pick_nothing).await;
    let gw = gateway_with("wsb_ping_hops", &format!("ws://{backend}/"), NO_KEEPALIVE).await;
    let mut client = ws_client(&gw.url("/")).await;
    let (_, mut b) = accepted(&mut backends).await;

    // Raw reads (pings and pongs included): each side sees only its own hop's control frames.
    client.send(Message::Ping("c1".into())).await.unwrap();
    let got = timeout(WAIT, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::Pong("c1".into()));
    b.send(Message::Ping("b1".into())).await.unwrap();
    let got = timeout(WAIT, b.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(
        got,
        Message::Pong("b1".into()),
        "the client's ping is not relayed"
    );
    b.send(Message::text("data")).await.unwrap();
    let got = timeout(WAIT, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        Message::text("data"),
        "the backend's ping is not relayed"
    );
}

#[tokio::test]
async fn fragments_stream_through_frame_by_frame_both_ways() {
    let (backend, mut conns) = handcrafted_backend(|accept| switching(accept, "")).await;
    let gw = gateway_with("wsb_fragments", &format!("ws://{backend}/"), NO_KEEPALIVE).await;
    let mut client = raw_ws_client(gw.addr, "/").await;
    let mut b = accepted(&mut conns).await;
    let e_acute = "é".as_bytes(); // split between the two fragments

    // Client to backend: a text message in two fragments with a ping between them. The gateway
    // answers the ping itself and passes each fragment on as it came (opcode and FIN).
    client.send(&client_frame(TEXT, &[b'h', e_acute[0]])).await;
    client.send(&client_frame(FIN | PING, b"p")).await;
    let pong = client.read_frame().await.expect("the gateway's pong");
    assert_eq!((pong.first, pong.payload), (FIN | PONG, b"p".to_vec()));
    client
        .send(&client_frame(FIN | CONTINUATION, &[e_acute[1], b'!']))
        .await;
    let mut sent = vec![0; (6 + 2) + (6 + 2)];
    timeout(WAIT, b.read_exact(&mut sent))
        .await
        .expect("both fragments in time")
        .unwrap();
    assert_eq!(
        masked_frames(&sent),
        vec![
            (TEXT, vec![b'h', e_acute[0]]),
            (FIN | CONTINUATION, vec![e_acute[1], b'!']),
        ]
    );

    // Backend to client, the same way round.
    b.write_all(&server_frame(BINARY, b"ab")).await.unwrap();
    b.write_all(&server_frame(FIN | PING, b"q")).await.unwrap();
    b.write_all(&server_frame(CONTINUATION, b"cd"))
        .await
        .unwrap();
    b.write_all(&server_frame(FIN | CONTINUATION, b"e"))
        .await
        .unwrap();
    for (first, payload) in [
        (BINARY, &b"ab"[..]),
        (CONTINUATION, b"cd"),
        (FIN | CONTINUATION, b"e"),
    ] {
        let f = client.read_frame().await.expect("a fragment");
        assert_eq!((f.first, f.payload), (first, payload.to_vec()));
    }
    let mut pong = vec![0; 6 + 1];
    timeout(WAIT, b.read_exact(&mut pong))
        .await
        .expect("the gateway's pong in time")
        .unwrap();
    assert_eq!(masked_frames(&pong), vec![(FIN | PONG, b"q".to_vec())]);
}

// ---- 2. Path mapping ---------------------------------------------------------------------------

#[tokio::test]
async fn maps_request_paths_onto_the_backend_url() {
    let (backend, mut seen) = ws_echo_backend_picking(pick_nothing).await;
    let gw = spawn_gateway(&config_with(&format!(
        "{}{}{}",
        route("wsb_path_prefix", "/apps/", &format!("ws://{backend}/base")),
        route("wsb_path_exact", "/exact", &format!("ws://{backend}/base")),
        route(
            "wsb_path_query",
            "/merged/",
            &format!("ws://{backend}/base?k=v")
        ),
    )))
    .await;
    let kept = spawn_gateway(&config_with(&format!(
        "{}strip_path_prefix = false\n",
        route("wsb_path_kept", "/apps/", &format!("ws://{backend}/base"))
    )))
    .await;

    for (url, expected) in [
        (gw.url("/apps/x/y?t=1"), "/base/x/y?t=1"),
        (gw.url("/apps/"), "/base"),
        (gw.url("/exact?t=1"), "/base?t=1"),
        (gw.url("/exact"), "/base"),
        (gw.url("/merged/x?t=1"), "/base/x?k=v&t=1"),
        (kept.url("/apps/x/y?t=1"), "/base/apps/x/y?t=1"),
    ] {
        let mut ws = ws_client(&url).await;
        let req = accepted(&mut seen).await;
        assert_eq!(req.uri().to_string(), expected, "for {url}");
        // The session works on the mapped path, too.
        send_binary(&mut ws, b"ping").await;
        assert_eq!(next_data(&mut ws).await.as_deref(), Some(&b"ping"[..]));
    }
}

/// Regression (issue 9 item 1): request paths were routed and mapped raw, so
/// `/public/../admin/secret` matched the open `/public/` route, got `101`, and the backend
/// received `GET /public/../admin/secret`: any backend that resolves dot-segments let a client
/// escape its route and its auth. Dot-segments (plain or percent-encoded, any case), empty
/// segments and encoded slashes are refused with 400 before routing; the backend sees nothing.
#[tokio::test]
async fn dot_segments_empty_segments_and_encoded_slashes_are_refused_before_routing() {
    let (backend, mut seen) = ws_echo_backend_picking(pick_nothing).await;
    let gw = spawn_gateway(&config_with(&format!(
        "{}{}[route.auth]\nbearer_sha256 = [\"{}\"]\n",
        route(
            "wsb_norm_public",
            "/public/",
            &format!("ws://{backend}/public")
        ),
        route(
            "wsb_norm_admin",
            "/admin/",
            &format!("ws://{backend}/admin")
        ),
        sha256_hex("tok-admin-only"),
    )))
    .await;
    for path in [
        "/public/../admin/secret",
        "/public/%2e%2e/admin/secret",
        "/public/%2E%2E/admin/secret",
        "/public/.%2e/admin/secret",
        "/public/%2e./admin/secret",
        "/public/./x",
        "/public/%2e/x",
        "/public/..",
        "/public/x/..",
        "/public//admin/secret",
        "//public/x",
        "/public/..%2fadmin/secret",
        "/public/a%2fb",
        "/public/a%2Fb",
        "/public/a%5cb",
        "/public/file%2ejs",
    ] {
        let (status, answer) = raw_http(gw.addr, &upgrade_request(path, "")).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(
            answer_body(&answer).contains("path"),
            "{path}: the reason names the path: {answer}"
        );
    }
    // Not dot-segments: dots inside a segment pass, and escapes of characters that are not
    // unreserved pass undecoded.
    for (path, expected) in [
        ("/public/a..b/x.y", "/public/a..b/x.y"),
        ("/public/caf%C3%A9", "/public/caf%C3%A9"),
        ("/public/...", "/public/..."),
    ] {
        let (status, answer) = raw_http(gw.addr, &upgrade_request(path, "")).await;
        assert_eq!(status, 101, "{path}: {answer}");
        let req = accepted(&mut seen).await;
        assert_eq!(req.uri().to_string(), expected, "for {path}");
    }
    assert!(
        seen.try_recv().is_err(),
        "the backend saw only the paths the router matched"
    );
    let page = scrape(gw.admin.unwrap()).await;
    assert_eq!(
        metric(
            &page,
            r#"wsgate_upgrade_rejections_total{route="none",reason="bad_path"}"#
        ),
        Some(16.0),
        "{page}"
    );
    gw.stop().await.unwrap();
}

// ---- 3. Headers --------------------------------------------------------------------------------

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    let mut values = req.headers().get_all(name).iter();
    let first = values.next().map(|v| v.to_str().unwrap());
    assert!(values.next().is_none(), "{name} sent more than once");
    first
}

#[tokio::test]
async fn forwards_listed_headers_and_sets_x_forwarded() {
    let (backend, mut seen) = ws_echo_backend_picking(pick_nothing).await;
    let gw = spawn_gateway(&config_with(&format!(
        "{}{}forward_headers = [\"X-Custom\"]\n",
        route("wsb_hdr_default", "/default", &format!("ws://{backend}/")),
        route("wsb_hdr_custom", "/custom", &format!("ws://{backend}/")),
    )))
    .await;
    let connect = |path: &str, forwarded_for: Option<&str>| {
        let mut req = gw.url(path).into_client_request().unwrap();
        let h = req.headers_mut();
        h.insert("Cookie", "session=abc; theme=dark".parse().unwrap());
        h.insert("Authorization", "Bearer t0k3n".parse().unwrap());
        h.insert("User-Agent", "wsgate-test/1.0".parse().unwrap());
        h.insert("X-Secret", "hunter2".parse().unwrap());
        h.insert("X-Custom", "custom-value".parse().unwrap());
        // Browsers always offer compression; the backend must not see an offer we cannot honour.
        h.insert(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits"
                .parse()
                .unwrap(),
        );
        if let Some(v) = forwarded_for {
            h.insert("X-Forwarded-For", v.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    let gw_host = gw.addr.to_string();
    let backend_host = backend.to_string();

    // Default list: cookie, authorization, user-agent.
    let (_ws1, _) = connect("/default", Some("203.0.113.7")).await.unwrap();
    let req = accepted(&mut seen).await;
    assert_eq!(header(&req, "cookie"), Some("session=abc; theme=dark"));
    assert_eq!(header(&req, "authorization"), Some("Bearer t0k3n"));
    assert_eq!(header(&req, "user-agent"), Some("wsgate-test/1.0"));
    assert_eq!(header(&req, "x-secret"), None);
    assert_eq!(header(&req, "x-custom"), None);
    assert_eq!(
        header(&req, "x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(header(&req, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(&req, "x-forwarded-host"), Some(gw_host.as_str()));
    assert_eq!(header(&req, "host"), Some(backend_host.as_str()));
    assert_eq!(header(&req, "sec-websocket-extensions"), None);

    // No incoming X-Forwarded-For: the client's address alone.
    let (_ws2, _) = connect("/default", None).await.unwrap();
    let req = accepted(&mut seen).await;
    assert_eq!(header(&req, "x-forwarded-for"), Some("127.0.0.1"));

    // `forward_headers = ["X-Custom"]`: that one only; X-Forwarded-* as always.
    let (_ws3, _) = connect("/custom", None).await.unwrap();
    let req = accepted(&mut seen).await;
    assert_eq!(header(&req, "x-custom"), Some("custom-value"));
    for name in ["cookie", "authorization", "user-agent", "x-secret"] {
        assert_eq!(header(&req, name), None, "{name}");
    }
    assert_eq!(header(&req, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(&req, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(&req, "x-forwarded-host"), Some(gw_host.as_str()));
}

#[tokio::test]
async fn every_incoming_x_forwarded_for_line_is_kept() {
    let (backend, mut seen) = ws_echo_backend_picking(pick_nothing).await;
    let gw = gateway_to("wsb_hdr_xff_lines", &format!("ws://{backend}/")).await;
    // Two header lines are one list (RFC 9110 §5.3), as proxies in front of us may send it.
    let (status, answer) = raw_http(
        gw.addr,
        &upgrade_request(
            "/",
            "X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For: 203.0.113.7\r\n",
        ),
    )
    .await;
    assert_eq!(status, 101, "{answer}");
    let req = accepted(&mut seen).await;
    assert_eq!(
        header(&req, "x-forwarded-for"),
        Some("198.51.100.1, 203.0.113.7, 127.0.0.1")
    );
}

/// Regression (issue 9 item 3): the default `forward_headers` copied `Authorization` and
/// `Cookie` to a WebSocket backend even when the gateway had consumed them as the route's
/// credential (while `bearer.` subprotocol entries and query tokens were stripped). A
/// credential the gateway checked is now kept from the backend unless the route sets
/// `forward_credentials = true`; other cookies and headers still go through.
#[tokio::test]
async fn checked_credentials_stay_with_the_gateway_unless_the_route_forwards_them() {
    const TOKEN: &str = "tok-fwd-0c2d9a7b";
    let (backend, mut seen) = ws_echo_backend_picking(pick_nothing).await;
    let auth = |name: &str, path: &str, extra: &str| {
        format!(
            "{}{extra}[route.origin]\nallow = [\"https://app.example\"]\nallow_missing = true\n\
             [route.auth]\nbearer_sha256 = [\"{}\"]\ntoken_sources = [\"header\", \"cookie\"]\n",
            route(name, path, &format!("ws://{backend}/")),
            sha256_hex(TOKEN)
        )
    };
    let gw = spawn_gateway(&config_with(&format!(
        "{}{}",
        auth("wsb_cred_kept", "/kept", ""),
        auth("wsb_cred_fwd", "/fwd", "forward_credentials = true\n"),
    )))
    .await;
    let bearer = format!("Bearer {TOKEN}");
    let cookie = format!("theme=dark; wsgate_token={TOKEN}; lang=en");

    // The token in the header: no Authorization upstream; the cookies it did not use stay.
    let (_ws1, _) = ws_client_with(
        &gw.url("/kept"),
        &[
            ("Authorization", bearer.as_str()),
            ("Cookie", "theme=dark"),
            ("User-Agent", "wsgate-test/1.0"),
        ],
    )
    .await
    .unwrap();
    let req = accepted(&mut seen).await;
    assert_eq!(header(&req, "authorization"), None, "{req:?}");
    assert_eq!(header(&req, "cookie"), Some("theme=dark"));
    assert_eq!(header(&req, "user-agent"), Some("wsgate-test/1.0"));

    // The token in the auth cookie: that cookie is dropped, the others are kept.
    let (_ws2, _) = ws_client_with(&gw.url("/kept"), &[("Cookie", cookie.as_str())])
        .await
        .unwrap();
    let req = accepted(&mut seen).await;
    assert_eq!(
        header(&req, "cookie"),
        Some("theme=dark; lang=en"),
        "{req:?}"
    );

    // `forward_credentials = true`: both as the client sent them.
    let (_ws3, _) = ws_client_with(
        &gw.url("/fwd"),
        &[
            ("Authorization", bearer.as_str()),
            ("Cookie", cookie.as_str()),
        ],
    )
    .await
    .unwrap();
    let req = accepted(&mut seen).await;
    assert_eq!(header(&req, "authorization"), Some(bearer.as_str()));
    assert_eq!(header(&req, "cookie"), Some(cookie.as_str()));
    gw.stop().await.unwrap();
}

// ---- 4. Subprotocols ---------------------------------------------------------------------------

#[tokio::test]
async fn the_backend_chooses_the_subprotocol_from_the_clients_offer() {
    let (picky, mut picky_seen) = ws_echo_backend_picking(pick_chat_v1).await;
    let (silent, mut silent_seen) = ws_echo_backend_picking(pick_nothing).await;
    let gw = spawn_gateway(&config_with(&format!(
        "{}{}",
        route("wsb_proto_pick", "/pick", &format!("ws://{picky}/")),
        route("wsb_proto_none", "/none", &format!("ws://{silent}/")),
    )))
    .await;

    // The offer reaches the backend as sent; its choice comes back in the 101.
    let (mut ws, chosen) = ws_client_offering(&gw.url("/pick"), "chat.v2, chat.v1").await;
    assert_eq!(chosen.as_deref(), Some("chat.v1"));
    let req = accepted(&mut picky_seen).await;
    assert_eq!(
        header(&req, "sec-websocket-protocol"),
        Some("chat.v2, chat.v1")
    );
    send_binary(&mut ws, b"x").await;
    assert_eq!(next_data(&mut ws).await.as_deref(), Some(&b"x"[..]));

    // The backend picks nothing: the 101 has no Sec-WebSocket-Protocol (the route's own list,
    // `["binary"]` by default, plays no part for a WebSocket backend).
    let (status, answer) = raw_http(
        gw.addr,
        &upgrade_request("/none", "Sec-WebSocket-Protocol: chat.v1, binary\r\n"),
    )
    .await;
    assert_eq!(status, 101, "{answer}");
    assert!(
        !answer
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol"),
        "{answer}"
    );
    let req = accepted(&mut silent_seen).await;
    assert_eq!(
        header(&req, "sec-websocket-protocol"),
        Some("chat.v1, binary")
    );

    // No offer: none reaches the backend.
    let _ws = ws_client(&gw.url("/none")).await;
    let req = accepted(&mut silent_seen).await;
    assert_eq!(header(&req, "sec-websocket-protocol"), None);
}

#[tokio::test]
async fn a_subprotocol_the_client_did_not_offer_is_a_502() {
    let (backend, _conns) =
        handcrafted_backend(|accept| switching(accept, "Sec-WebSocket-Protocol: chat.v9\r\n"))
            .await;
    let gw = gateway_to("wsb_proto_unoffered", &format!("ws://{backend}/")).await;
    expect_refused_upgrade(&gw, "/", "Sec-WebSocket-Protocol: chat.v1\r\n", 502).await;
    // Offering nothing at all is no better.
    expect_refused_upgrade(&gw, "/", "", 502).await;
    expect_metric(
        gw.admin.unwrap(),
        &rejections("wsb_proto_unoffered", "backend_handshake"),
        2.0,
    )
    .await;
}

// ---- 5. Handshake strictness -------------------------------------------------------------------

#[tokio::test]
async fn a_backend_refusing_the_upgrade_is_a_502() {
    let (backend, _conns) = handcrafted_backend(|_| {
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\nConnection: close\r\n\r\nnope\n".into()
    })
    .await;
    let gw = gateway_to("wsb_hs_403", &format!("ws://{backend}/")).await;
    let answer = expect_refused_upgrade(&gw, "/", "", 502).await;
    assert!(
        answer.ends_with("backend refused the WebSocket upgrade\n"),
        "{answer}"
    );
    let admin = gw.admin.unwrap();
    expect_metric(admin, &rejections("wsb_hs_403", "backend_rejected"), 1.0).await;
    let page = scrape(admin).await;
    assert_eq!(
        metric(&page, "wsgate_sessions_total{route=\"wsb_hs_403\"}"),
        Some(0.0),
        "registered at start, never counted"
    );
}

#[tokio::test]
async fn a_wrong_accept_key_is_a_502() {
    // The RFC's example answer, for a key the gateway did not send.
    let (backend, _conns) =
        handcrafted_backend(|_| switching("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "")).await;
    let gw = gateway_to("wsb_hs_accept", &format!("ws://{backend}/")).await;
    expect_refused_upgrade(&gw, "/", "", 502).await;
    expect_metric(
        gw.admin.unwrap(),
        &rejections("wsb_hs_accept", "backend_handshake"),
        1.0,
    )
    .await;
}

#[tokio::test]
async fn connection_keep_alive_upgrade_is_accepted() {
    let (backend, mut conns) = handcrafted_backend(|accept| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes()
    })
    .await;
    let gw = gateway_to("wsb_hs_keepalive", &format!("ws://{backend}/")).await;
    let mut client = ws_client(&gw.url("/")).await;
    let stream = accepted(&mut conns).await;
    let mut b = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;

    client.send(Message::text("up")).await.unwrap();
    assert_eq!(next_msg(&mut b).await, Some(Message::text("up")));
    b.send(Message::binary(b"down".to_vec())).await.unwrap();
    assert_eq!(
        next_msg(&mut client).await,
        Some(Message::binary(b"down".to_vec()))
    );
}

#[tokio::test]
async fn a_frame_sent_along_with_the_101_is_not_lost() {
    // Backends may greet at once: the frame arrives in the same segment as the 101.
    let (backend, _conns) = handcrafted_backend(|accept| {
        let mut answer = switching(accept, "");
        answer.extend(server_frame(FIN | TEXT, b"welcome"));
        answer
    })
    .await;
    let gw = gateway_to("wsb_hs_greeting", &format!("ws://{backend}/")).await;
    let mut client = ws_client(&gw.url("/")).await;
    assert_eq!(next_msg(&mut client).await, Some(Message::text("welcome")));
}

#[tokio::test]
async fn an_extension_the_gateway_did_not_offer_is_a_502() {
    let (backend, _conns) = handcrafted_backend(|accept| {
        switching(accept, "Sec-WebSocket-Extensions: permessage-deflate\r\n")
    })
    .await;
    let gw = gateway_to("wsb_hs_extension", &format!("ws://{backend}/")).await;
    expect_refused_upgrade(&gw, "/", "", 502).await;
    expect_metric(
        gw.admin.unwrap(),
        &rejections("wsb_hs_extension", "backend_handshake"),
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_refused_backend_is_a_502() {
    let gone = refused_addr().await;
    let gw = gateway_to("wsb_hs_refused", &format!("ws://{gone}/")).await;
    expect_refused_upgrade(&gw, "/", "", 502).await;
    expect_metric(
        gw.admin.unwrap(),
        &rejections("wsb_hs_refused", "backend_refused"),
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_backend_that_never_answers_the_handshake_is_a_504() {
    // Accepts TCP, reads nothing, answers nothing; the connections stay open in `_conns`.
    let (backend, _conns) = tcp_backend().await;
    let gw = gateway_with(
        "wsb_hs_silent",
        &format!("ws://{backend}/"),
        "[timeouts]\nbackend_connect_secs = 0.5\n",
    )
    .await;
    expect_refused_upgrade(&gw, "/", "", 504).await;
    expect_metric(
        gw.admin.unwrap(),
        &rejections("wsb_hs_silent", "backend_timeout"),
        1.0,
    )
    .await;
}

// ---- 6. Close codes end to end -----------------------------------------------------------------

/// Close tests wait a minute for the other side's answer, so a Close that arrives within the
/// 10-15 s test limits is the peer's own, never the gateway answering on its behalf.
const LONG_GRACE: &str = "[timeouts]\nclose_grace_secs = 60\n";

#[tokio::test]
async fn a_client_close_code_reaches_the_backend_and_its_reply_the_client() {
    let (backend, mut backends) = ws_backend(pick_nothing).await;
    let gw = gateway_with("wsb_close_client", &format!("ws://{backend}/"), LONG_GRACE).await;
    let mut client = ws_client(&gw.url("/")).await;
    let (_, mut b) = accepted(&mut backends).await;

    client.send(close_msg(4001, "bye")).await.unwrap();
    // tungstenite answers with the same code and reason when it reads on after the Close.
    let backend_side = tokio::spawn(async move {
        let got = close_of(next_msg(&mut b).await);
        expect_ended(&mut b).await;
        got
    });
    assert_eq!(close_of(next_msg(&mut client).await), (4001, "bye".into()));
    // Both hops' handshakes are complete: each connection ends.
    expect_ended(&mut client).await;
    assert_eq!(backend_side.await.unwrap(), (4001, "bye".into()));
    expect_metric(
        gw.admin.unwrap(),
        &closes("wsb_close_client", "4xxx", "client"),
        1.0,
    )
    .await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn backend_data_sent_before_its_close_reply_still_reaches_the_client() {
    let (backend, mut conns) = handcrafted_backend(|accept| switching(accept, "")).await;
    let gw = gateway_with(
        "wsb_close_last_words",
        &format!("ws://{backend}/"),
        "[timeouts]\nclose_grace_secs = 60\nping_interval_secs = 0\n",
    )
    .await;
    let mut client = ws_client(&gw.url("/")).await;
    let mut b = accepted(&mut conns).await;

    client.send(close_msg(4001, "bye")).await.unwrap();
    let mut close = vec![0; 6 + 5];
    timeout(WAIT, b.read_exact(&mut close))
        .await
        .expect("the client's Close in time")
        .unwrap();
    assert_eq!(
        masked_frames(&close),
        vec![(FIN | CLOSE, close_payload(4001, "bye"))]
    );
    // Data after the peer's Close, before the reply, is legal (RFC 6455 §5.5.1).
    b.write_all(&server_frame(FIN | TEXT, b"last words"))
        .await
        .unwrap();
    b.write_all(&server_frame(FIN | CLOSE, &close_payload(4001, "bye")))
        .await
        .unwrap();
    assert_eq!(
        next_msg(&mut client).await,
        Some(Message::text("last words"))
    );
    assert_eq!(close_of(next_msg(&mut client).await), (4001, "bye".into()));
    expect_ended(&mut client).await;
}

#[tokio::test]
async fn a_backend_close_code_reaches_the_client_and_its_reply_the_backend() {
    let (backend, mut backends) = ws_backend(pick_nothing).await;
    let gw = gateway_with("wsb_close_backend", &format!("ws://{backend}/"), LONG_GRACE).await;
    let mut client = ws_client(&gw.url("/")).await;
    let (_, mut b) = accepted(&mut backends).await;

    b.send(close_msg(4002, "later")).await.unwrap();
    assert_eq!(
        close_of(next_msg(&mut client).await),
        (4002, "later".into())
    );
    // The client's reply is written when it reads on; the backend gets it through the gateway.
    let client_done = tokio::spawn(async move { expect_ended(&mut client).await });
    assert_eq!(close_of(next_msg(&mut b).await), (4002, "later".into()));
    expect_ended(&mut b).await;
    client_done.await.unwrap();
    expect_metric(
        gw.admin.unwrap(),
        &closes("wsb_close_backend", "4xxx", "backend"),
        1.0,
    )
    .await;
    gw.stop().await.unwrap();
}

/// Regression (issue 9 item 10): a backend's Close 1014 (what a gateway in front of it sends
/// when its own backend fails) was taken for a protocol violation, so chained gateways broke.
#[tokio::test]
async fn a_backend_close_1014_is_relayed_to_the_client() {
    let (backend, mut backends) = ws_backend(pick_nothing).await;
    let gw = gateway_with("wsb_close_1014", &format!("ws://{backend}/"), LONG_GRACE).await;
    // A raw client: tungstenite itself takes 1014 for a protocol violation.
    let mut client = raw_ws_client(gw.addr, "/").await;
    let (_, mut b) = accepted(&mut backends).await;

    b.send(close_msg(1014, "upstream failed")).await.unwrap();
    assert_eq!(
        client.expect_close().await,
        (1014, "upstream failed".into())
    );
    client
        .send(&client_frame(
            FIN | CLOSE,
            &close_payload(1014, "upstream failed"),
        ))
        .await;
    client.expect_end().await;
    assert_eq!(
        close_of(next_msg(&mut b).await),
        (1014, "upstream failed".into())
    );
    expect_metric(
        gw.admin.unwrap(),
        &closes("wsb_close_1014", "1014", "backend"),
        1.0,
    )
    .await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_backend_that_closes_and_leaves_at_once_still_delivers_its_code() {
    let (backend, mut backends) = ws_backend(pick_nothing).await;
    let gw = gateway_to("wsb_close_and_leave", &format!("ws://{backend}/")).await;
    let mut client = ws_client(&gw.url("/")).await;
    let (_, mut b) = accepted(&mut backends).await;

    b.send(close_msg(4003, "gone now")).await.unwrap();
    drop(b); // no wait for the reply
    assert_eq!(expect_close(&mut client).await, (4003, "gone now".into()));
    finish_close(&mut client).await;
    expect_metric(
        gw.admin.unwrap(),
        &closes("wsb_close_and_leave", "4xxx", "backend"),
        1.0,
    )
    .await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_backend_that_vanishes_closes_the_client_with_1011() {
    let (backend, mut backends) = ws_backend(pick_nothing).await;
    let gw = gateway_to("wsb_close_backend_lost", &format!("ws://{backend}/")).await;
    let mut client = ws_client(&gw.url("/")).await;
    let (_, b) = accepted(&mut backends).await;

    drop(b); // TCP FIN, no Close frame
    assert_eq!(
        close_of(next_msg(&mut client).await),
        (1011, "backend connection lost".into())
    );
    expect_ended(&mut client).await;
    expect_metric(
        gw.admin.unwrap(),
        &closes("wsb_close_backend_lost", "1006", "backend"),
        1.0,
    )
    .await;
    gw.stop().await.unwrap();
}

// ---- 7. Per-hop keepalive (real time, small values) --------------------------------------------

const FAST_KEEPALIVE: &str = "[timeouts]\nping_interval_secs = 0.2\npong_timeout_secs = 0.3\n";

#[tokio::test]
async fn the_gateway_pings_the_backend_and_an_answering_backend_stays() {
    let (backend, mut backends) = ws_backend(pick_nothing).await;
    let gw = gateway_with(
        "wsb_keepalive_ok",
        &format!("ws://{backend}/"),
        FAST_KEEPALIVE,
    )
    .await;
    let mut client = ws_client(&gw.url("/")).await;
    let (_, mut b) = accepted(&mut backends).await;

    // The client reads all along, so tungstenite answers the gateway's pings on that hop too.
    let client_reads = tokio::spawn(async move {
        let m = next_msg(&mut client).await;
        (client, m)
    });
    // tungstenite answers each ping with a pong as it reads on.
    let mut pings = Vec::new();
    while pings.len() < 3 {
        match timeout(WAIT, b.next()).await.expect("a ping in time") {
            Some(Ok(Message::Ping(p))) => pings.push(p.to_vec()),
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    // Payloads are the keepalive's sequence numbers: each ping was answered in time.
    assert_eq!(
        pings,
        [1u64, 2, 3].map(|n| n.to_be_bytes().to_vec()).to_vec()
    );
    b.send(Message::text("still here")).await.unwrap();
    let (mut client, m) = client_reads.await.unwrap();
    assert_eq!(m, Some(Message::text("still here")));

    client.send(close_msg(1000, "")).await.unwrap();
    assert_eq!(close_of(next_msg(&mut b).await), (1000, String::new()));
    assert_eq!(close_of(next_msg(&mut client).await), (1000, String::new()));
    let page = scrape(gw.admin.unwrap()).await;
    // Registered with the route's other series (at 0), or absent: never counted.
    assert_eq!(
        metric(
            &page,
            "wsgate_keepalive_timeouts_total{route=\"wsb_keepalive_ok\"}"
        )
        .unwrap_or(0.0),
        0.0
    );
}

#[tokio::test]
async fn a_backend_that_stops_reading_is_closed_and_the_client_gets_1011() {
    let (backend, mut conns) = handcrafted_backend(|accept| switching(accept, "")).await;
    let gw = gateway_with(
        "wsb_keepalive_dead",
        &format!("ws://{backend}/"),
        FAST_KEEPALIVE,
    )
    .await;
    let mut client = ws_client(&gw.url("/")).await;
    // The backend completed the handshake; from here on it reads nothing and answers nothing.
    let mut silent = accepted(&mut conns).await;

    // relay.rs: the backend hop's keepalive times out; the client hop gets 1011, as for any
    // lost backend, with the reason naming the keepalive. (expect_close reads, so the client
    // keeps answering its own hop's pings meanwhile.)
    assert_eq!(
        expect_close(&mut client).await,
        (1011, "peer keepalive timeout".into())
    );
    finish_close(&mut client).await;

    // What the backend was sent, read only now: one ping, unanswered, then Close 1001.
    let mut sent = Vec::new();
    timeout(WAIT, silent.read_to_end(&mut sent))
        .await
        .expect("the gateway ends the backend connection")
        .unwrap();
    assert_eq!(
        masked_frames(&sent),
        vec![
            (FIN | PING, 1u64.to_be_bytes().to_vec()),
            (FIN | CLOSE, close_payload(1001, "keepalive timeout")),
        ]
    );
    let admin = gw.admin.unwrap();
    expect_metric(
        admin,
        "wsgate_keepalive_timeouts_total{route=\"wsb_keepalive_dead\"}",
        1.0,
    )
    .await;
    expect_metric(admin, &closes("wsb_keepalive_dead", "1001", "gateway"), 1.0).await;
    gw.stop().await.unwrap();
}

/// Regression (issue 9 item 8): when the client hop's writer gave up (here: the client stopped
/// reading), it told the backend's writer with a `try_send` on a one-frame channel that the
/// client's own data kept full, so the signal was dropped and the session went on relaying
/// with the backend never told. The backend now gets its Close 1001.
#[tokio::test]
async fn a_dead_client_hop_always_ends_the_relay_session() {
    let (backend, mut backends) = ws_backend(pick_nothing).await;
    let gw = gateway_with(
        "wsb_dead_client_hop",
        &format!("ws://{backend}/"),
        "[timeouts]\nping_interval_secs = 0.2\npong_timeout_secs = 0.3\n",
    )
    .await;
    // A client that floods the backend and never reads a byte.
    let mut client = raw_ws_client(gw.addr, "/").await;
    let flood = tokio::spawn(async move {
        let frame = client_frame(FIN | BINARY, &[7; 64 * 1024]);
        while client.stream.write_all(&frame).await.is_ok() {}
    });
    let (_, b) = accepted(&mut backends).await;
    let (mut b_sink, mut b_stream) = b.split();
    // The backend floods the client too, so the client hop's writer stalls.
    let backend_flood = tokio::spawn(async move {
        while b_sink
            .send(Message::binary(vec![9; 64 * 1024]))
            .await
            .is_ok()
        {}
    });
    // The backend reads slowly: the client's frames keep the relay channel full.
    let close = timeout(Duration::from_secs(30), async {
        loop {
            match b_stream.next().await {
                Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
                other => panic!("the backend's connection ended without a Close: {other:?}"),
            }
        }
    })
    .await
    .expect("the backend is told the session ended");
    assert_eq!(close, Some(1001));
    flood.abort();
    backend_flood.abort();
    gw.stop().await.unwrap();
}

// ---- 8. A third-party backend: Python's `websockets` -------------------------------------------

/// An echo server on a free loopback port: prints the port, then `closed CODE REASON` for each
/// connection as it ends, CODE and REASON being those of the Close it received.
const PYTHON_ECHO: &str = r#"
import asyncio, sys
import websockets

async def echo(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass
    print("closed", ws.close_code, ws.close_reason, flush=True)

async def main():
    async with websockets.serve(echo, "127.0.0.1", 0, max_size=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
"#;

#[tokio::test]
async fn relays_to_a_python_websockets_backend() {
    let Some(python) = python_with_websockets_or_skip("relays_to_a_python_websockets_backend")
    else {
        return;
    };
    let mut peer = PythonPeer::start(&python, PYTHON_ECHO, &[]);
    let port = peer.port().await;

    let gw = gateway_with("wsb_python", &format!("ws://127.0.0.1:{port}/"), LONG_GRACE).await;
    let mut ws = ws_client(&gw.url("/")).await;
    ws.send(Message::text("héllo from rust")).await.unwrap();
    assert_eq!(
        next_msg(&mut ws).await,
        Some(Message::text("héllo from rust"))
    );
    let data = pattern(7, 1 << 20);
    ws.send(Message::binary(data.clone())).await.unwrap();
    let back = next_msg(&mut ws).await;
    assert!(
        back == Some(Message::binary(data)),
        "1 MiB came back altered"
    );

    ws.send(close_msg(4000, "done")).await.unwrap();
    assert_eq!(close_of(next_msg(&mut ws).await), (4000, "done".into()));
    expect_ended(&mut ws).await;
    assert_eq!(peer.next_line().await, "closed 4000 done");
    expect_metric(
        gw.admin.unwrap(),
        &closes("wsb_python", "4xxx", "client"),
        1.0,
    )
    .await;
    gw.stop().await.unwrap();
    peer.kill().await;
}

// ---- 9. wss:// backends ------------------------------------------------------------------------

/// A tokio-tungstenite echo backend behind tokio-rustls, serving the PKI's leaf.
async fn wss_echo_backend(pki: &Pki) -> SocketAddr {
    let config = wsgate::tls::server_config(
        &wsgate::config::TlsConfig::new(pki.cert_file.clone(), pki.key_file.clone()),
        false,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A gateway that does not trust the certificate fails here; that is the test.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                if let Ok(ws) = tokio_tungstenite::accept_async(tls).await {
                    echo(ws).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn wss_backends_are_verified_against_the_configured_roots() {
    let pki = pki();
    let backend = wss_echo_backend(&pki).await;
    let url = format!("wss://localhost:{}/", backend.port());
    let ca = pki.ca_file.display().to_string();
    let gw = spawn_gateway(&config_with(&format!(
        "{}tls_ca_file = {ca:?}\n{}{}insecure_skip_verify = true\n",
        route("wsb_wss_ca", "/ca", &url),
        route("wsb_wss_roots", "/roots", &url),
        route("wsb_wss_insecure", "/insecure", &url),
    )))
    .await;

    for path in ["/ca", "/insecure"] {
        let mut ws = ws_client(&gw.url(path)).await;
        ws.send(Message::text(format!("over tls via {path}")))
            .await
            .unwrap();
        assert_eq!(
            next_msg(&mut ws).await,
            Some(Message::text(format!("over tls via {path}")))
        );
        send_binary(&mut ws, &pattern(0, 100_000)).await;
        assert_eq!(read_bytes(&mut ws, 100_000).await, pattern(0, 100_000));
        ws.send(close_msg(1000, "")).await.unwrap();
        assert_eq!(close_of(next_msg(&mut ws).await), (1000, String::new()));
    }

    // The built-in Mozilla roots do not include the test CA.
    expect_refused_upgrade(&gw, "/roots", "", 502).await;
    expect_metric(
        gw.admin.unwrap(),
        &rejections("wsb_wss_roots", "backend_handshake"),
        1.0,
    )
    .await;
    gw.stop().await.unwrap();
}

//! Access-control hardening: the client address behind a load balancer comes from the one
//! header the operator names; no request path reaches a backend that could read it as
//! another route's; `forward_headers` never carries identity or hop-by-hop headers; and the
//! bandwidth cap counts what the backend receives, compressed or not.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use support::frame_bits::{FIN, RSV1};
use support::*;

// ---- The client's address behind an HTTP load balancer ----------------------------------

/// A gateway whose listener trusts 127.0.0.1 to write the client into `header`, with `/` to a
/// [`proxy_reading_backend`] that reports the client address the gateway sent it.
async fn gateway_trusting(header: &str) -> TestGateway {
    let backend = proxy_reading_backend().await;
    spawn_gateway(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nforwarded_header = \"{header}\"\n\
         trusted_proxies = [\"127.0.0.1\"]\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         {}send_proxy_protocol = \"v2\"\n",
        route("who", "/", &format!("tcp://{backend}"))
    ))
    .await
}

/// The client address the backend was told for a session opened with `headers`.
async fn client_seen_with(gw: &TestGateway, headers: &[(&str, &str)]) -> String {
    let (mut ws, _) = ws_client_with(&gw.url("/"), headers)
        .await
        .expect("upgrade");
    let report = next_data(&mut ws).await.expect("the backend's report");
    let report = String::from_utf8(report).expect("UTF-8 report");
    report
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Behind nginx, HAProxy or an AWS ALB (which append to `X-Forwarded-For` and pass
/// `Forwarded` on untouched) a client's own `Forwarded: for=` used to win and choose its
/// address. Now only the header the operator named counts, whatever else the client sends.
#[tokio::test]
async fn a_client_forwarded_header_cannot_choose_its_address() {
    let spoofed = [
        ("Forwarded", "for=6.6.6.6"),
        ("X-Forwarded-For", "7.7.7.7, 198.51.100.9"),
        ("X-Real-IP", "8.8.8.8"),
    ];
    let xff = gateway_trusting("x-forwarded-for").await;
    assert_eq!(client_seen_with(&xff, &spoofed).await, "198.51.100.9:0");
    let without = client_seen_with(&xff, &[("Forwarded", "for=6.6.6.6")]).await;
    assert!(
        without.starts_with("127.0.0.1:") && without != "127.0.0.1:0",
        "without X-Forwarded-For the balancer's own address stands, got {without}"
    );
    xff.stop().await.unwrap();

    let forwarded = gateway_trusting("forwarded").await;
    assert_eq!(client_seen_with(&forwarded, &spoofed).await, "6.6.6.6:0");
    forwarded.stop().await.unwrap();

    let real_ip = gateway_trusting("x-real-ip").await;
    assert_eq!(client_seen_with(&real_ip, &spoofed).await, "8.8.8.8:0");
    real_ip.stop().await.unwrap();
}

/// The switch that believed `Forwarded` before `X-Forwarded-For` is refused with what to
/// write instead, so an upgrade cannot silently keep the old precedence.
#[test]
fn forwarded_headers_switch_is_refused_naming_forwarded_header() {
    let old = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nforwarded_headers = true\n\
         trusted_proxies = [\"10.0.0.1\"]\n\n{}",
        route("echo", "/", "builtin:echo")
    );
    let e = format!(
        "{:#}",
        wsgate::Config::from_toml(&old).expect_err("refused")
    );
    assert!(
        e.contains("listener[0].forwarded_headers: replaced by forwarded_header"),
        "{e}"
    );
    assert!(e.contains("x-forwarded-for"), "{e}");
}

// ---- Request paths ----------------------------------------------------------------------

/// `/admin/` needs a token; `/` is open; both reach the same WebSocket backend.
async fn gateway_with_admin_behind_a_token() -> TestGateway {
    let (backend, _seen) = ws_echo_backend().await;
    let backend = format!("ws://{backend}/");
    spawn_gateway(&config_with(&format!(
        "{}[route.auth]\nbearer_sha256 = [\"{}\"]\n\n{}",
        route("admin", "/admin/", &backend),
        sha256_hex("s3cret"),
        route("public", "/", &backend),
    )))
    .await
}

async fn status_of(gw: &TestGateway, path: &str) -> u16 {
    raw_http(gw.addr, &upgrade_request(path, "")).await.0
}

/// `/pub/..\admin/secret` used to be served by the open route (101), and a WHATWG URL parser
/// in the backend (Node's `new URL(req.url, base)`) reads it as `/admin/secret`.
#[tokio::test]
async fn a_raw_backslash_cannot_escape_the_route() {
    let gw = gateway_with_admin_behind_a_token().await;
    assert_eq!(status_of(&gw, "/admin/secret").await, 401);
    assert_eq!(status_of(&gw, "/pub/ok").await, 101);
    for path in [
        "/pub/..\\admin/secret",
        "/pub\\..\\admin/secret",
        "/pub/..%5Cadmin/secret",
    ] {
        assert_eq!(status_of(&gw, path).await, 400, "{path}");
    }
    gw.stop().await.unwrap();
}

/// `/%61dmin/secret` used to miss the `/admin/` prefix and reach the open route, while a
/// decoding backend (Go, ASGI) sees `/admin/secret`. The same for path parameters that
/// Tomcat and Spring strip (`/..;/`), double-encoded dots and overlong UTF-8 dots.
#[tokio::test]
async fn percent_encoded_unreserved_characters_cannot_miss_the_route() {
    let gw = gateway_with_admin_behind_a_token().await;
    for path in [
        "/%61dmin/secret",
        "/%41dmin/secret",
        "/admin%2Fsecret",
        "/pub/%2e%2e/admin/secret",
        "/pub/..;/admin/secret",
        "/admin;jsessionid=x/secret",
        "/pub/%252e%252e/admin/secret",
        "/pub/%c0%ae%c0%ae/admin/secret",
        "/pub/%00",
    ] {
        assert_eq!(status_of(&gw, path).await, 400, "{path}");
    }
    // Escapes that cannot be confused with the path's structure still pass.
    assert_eq!(status_of(&gw, "/pub/caf%C3%A9%20au%20lait").await, 101);
    gw.stop().await.unwrap();
}

// ---- Headers to WebSocket backends --------------------------------------------------------

/// `forward_headers` used to accept `Forwarded` (a backend then believed a client-forged
/// `for=`) and `Proxy-Connection`; both are refused at load like `X-Forwarded-*`.
#[test]
fn forward_headers_refuses_forwarded_and_proxy_connection() {
    for name in ["Forwarded", "proxy-connection", "X-Real-IP"] {
        let text = config_with(&format!(
            "{}forward_headers = [\"cookie\", \"{name}\"]\n",
            route("chat", "/chat", "ws://127.0.0.1:9/")
        ));
        let e = format!(
            "{:#}",
            wsgate::Config::from_toml(&text).expect_err("refused")
        );
        assert!(
            e.contains(&format!("route[0].forward_headers: \"{name}\"")),
            "{name}: {e}"
        );
    }
}

/// A WebSocket backend that sends each client, as its first message, the request headers
/// of its handshake (`name: value` lines, names lower-case).
async fn header_reporting_backend() -> SocketAddr {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = String::new();
                #[allow(clippy::result_large_err)]
                let callback = |req: &Request, resp: Response| {
                    for (k, v) in req.headers() {
                        seen += &format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes()));
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, callback).await else {
                    return;
                };
                if ws.send(Message::text(seen)).await.is_err() {
                    return;
                }
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    addr
}

/// Headers the client lists in `Connection` are hop-by-hop (RFC 9110 §7.6.1) and used to
/// reach WebSocket backends all the same when `forward_headers` named them.
#[tokio::test]
async fn headers_named_in_connection_are_not_forwarded() {
    let backend = header_reporting_backend().await;
    let gw = spawn_gateway(&config_with(&format!(
        "{}forward_headers = [\"cookie\", \"x-tenant\", \"user-agent\"]\n",
        route("chat", "/chat", &format!("ws://{backend}/"))
    )))
    .await;
    let (mut ws, _) = raw_ws_client_with(
        gw.addr,
        "/chat",
        "Connection: X-Tenant, cookie\r\nX-Tenant: acme\r\nCookie: a=b\r\nUser-Agent: t/1\r\n",
    )
    .await;
    let (_, seen) = read_message(&mut ws).await;
    let seen = String::from_utf8(seen).expect("UTF-8 report");
    assert!(seen.contains("user-agent: t/1"), "{seen}");
    assert!(!seen.contains("x-tenant"), "{seen}");
    assert!(!seen.contains("cookie"), "{seen}");
    gw.stop().await.unwrap();
}

// ---- The bandwidth cap and compression (paused clock: the pacer sleeps on tokio's clock) -

const RATE: usize = 64 * 1024;
/// Zeros: a few hundred bytes once compressed.
const INFLATED: usize = 256 * 1024;
/// The least time `INFLATED` bytes take at `RATE`, less the first burst and a last piece.
const MIN_SECS: f64 = (INFLATED - 32 * 1024) as f64 / RATE as f64;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// Send one compressed message of `INFLATED` zeros on `/z` of `gw`, read it whole from the
/// TCP backend connection `b`, and return the virtual seconds that took.
async fn seconds_to_deliver_a_compressed_message(
    gw: &TestGateway,
    accepted: &mut tokio::sync::mpsc::Receiver<tokio::net::TcpStream>,
) -> f64 {
    let (mut ws, head) = raw_ws_client_with(gw.addr, "/z", OFFER).await;
    assert_eq!(
        answer_header(&head, "sec-websocket-extensions"),
        Some("permessage-deflate")
    );
    let mut b = accepted.recv().await.expect("the backend was dialed");
    let wire = ClientDeflate::new().piece(&vec![0u8; INFLATED], true);
    assert!(wire.len() < 4096, "{} bytes compressed", wire.len());
    let started = Instant::now();
    ws.send(&client_frame(FIN | RSV1 | frame_bits::BINARY, &wire))
        .await;
    let mut got = vec![0u8; INFLATED];
    tokio::time::timeout(Duration::from_secs(60), b.read_exact(&mut got))
        .await
        .expect("the message arrives in time")
        .expect("the backend reads it");
    assert!(got.iter().all(|&x| x == 0));
    started.elapsed().as_secs_f64()
}

/// A compressed message used to be charged its wire size (a few hundred bytes) and reach a
/// TCP backend inflated and unpaced: hundreds of times the cap.
#[tokio::test(start_paused = true)]
async fn compression_cannot_bypass_the_bandwidth_cap() {
    tick_paused_clock();
    let (backend, mut accepted) = tcp_backend().await;
    let gw = spawn_gateway(&config_with(&format!(
        "{}compression = \"on\"\nbandwidth_bytes_per_sec = {RATE}\n\
         [timeouts]\nping_interval_secs = 0\n",
        route("z", "/z", &format!("tcp://{backend}")),
    )))
    .await;
    let secs = seconds_to_deliver_a_compressed_message(&gw, &mut accepted).await;
    println!("{INFLATED} inflated bytes at {RATE} B/s, TCP backend: {secs:.2} s (virtual)");
    assert!(secs >= MIN_SECS, "took {secs} s");
    gw.stop().await.unwrap();
}

/// The same over a WebSocket backend: client → paced gateway (compression on the client
/// hop) → ws:// → unpaced gateway → TCP backend.
#[tokio::test(start_paused = true)]
async fn compression_cannot_bypass_the_bandwidth_cap_to_a_websocket_backend() {
    tick_paused_clock();
    let (backend, mut accepted) = tcp_backend().await;
    let inner = gateway_to("inner", &format!("tcp://{backend}")).await;
    let outer = spawn_gateway(&config_with(&format!(
        "{}compression = \"on\"\nbandwidth_bytes_per_sec = {RATE}\n\
         [timeouts]\nping_interval_secs = 0\n",
        route("z", "/z", &format!("ws://{}/", inner.addr)),
    )))
    .await;
    let secs = seconds_to_deliver_a_compressed_message(&outer, &mut accepted).await;
    println!("{INFLATED} inflated bytes at {RATE} B/s, WebSocket backend: {secs:.2} s (virtual)");
    assert!(secs >= MIN_SECS, "took {secs} s");
    outer.stop().await.unwrap();
    inner.stop().await.unwrap();
}

//! WebSockets over HTTP/2 (RFC 8441) beside HTTP/1.1 on one TLS listener: a real hyper h2
//! client sends extended CONNECTs over tokio-rustls (ALPN `h2`), then speaks WebSocket
//! (fastwebsockets, client role) on each stream, through the real gateway to real backends.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::ext::Protocol;
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::Connector;

use support::*;

type H2Ws = WebSocket<TokioIo<Upgraded>>;

/// An HTTP/2 connection to a gateway: TLS with ALPN `h2` only, or h2c with prior knowledge.
struct H2Conn {
    send: SendRequest<Empty<Bytes>>,
}

impl H2Conn {
    async fn tls(addr: SocketAddr, pki: &Pki) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = TlsConnector::from(client_config(&pki.ca, &[b"h2"]))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "the listener offers h2"
        );
        Self::handshake(tls).await
    }

    async fn h2c(addr: SocketAddr) -> Self {
        Self::handshake(TcpStream::connect(addr).await.unwrap()).await
    }

    async fn handshake<IO>(io: IO) -> Self
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake");
        // The server's SETTINGS arrive after the handshake: drive the connection and tell
        // when ENABLE_CONNECT_PROTOCOL has been seen.
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        // hyper updates the flag from its own connection task, without waking this one:
        // look at it on a short tick until it is set.
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = tick.tick() => {}
                }
                if conn.is_extended_connect_protocol_enabled() {
                    let _ = seen_tx.send(());
                    break;
                }
            }
            let _ = conn.await;
        });
        tokio::time::timeout(Duration::from_secs(10), seen_rx)
            .await
            .expect("SETTINGS in time")
            .expect("the gateway advertises SETTINGS_ENABLE_CONNECT_PROTOCOL");
        Self { send }
    }

    /// An extended CONNECT for a WebSocket at `path` with extra `headers`: the status, the
    /// chosen subprotocol, and on `200` the client-role WebSocket on that stream.
    async fn websocket(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Option<String>, Option<H2Ws>) {
        self.connect(path, "websocket", headers).await
    }

    async fn connect(
        &mut self,
        path: &str,
        protocol: &'static str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Option<String>, Option<H2Ws>) {
        self.try_connect(path, protocol, headers)
            .await
            .expect("the connection takes a stream and answers")
    }

    /// Like `websocket`, but a refused stream or a closed connection is an `Err`.
    async fn try_websocket(
        &mut self,
        path: &str,
    ) -> Result<(StatusCode, Option<String>, Option<H2Ws>), hyper::Error> {
        self.try_connect(path, "websocket", &[]).await
    }

    async fn try_connect(
        &mut self,
        path: &str,
        protocol: &'static str,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Option<String>, Option<H2Ws>), hyper::Error> {
        let (status, answer, stream) = self.stream(path, protocol, headers).await?;
        let chosen = answer
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        let ws = stream.map(|s| WebSocket::after_handshake(s, Role::Client));
        Ok((status, chosen, ws))
    }

    /// An extended CONNECT: the status, the answer's headers, and on `200` the stream.
    async fn stream(
        &mut self,
        path: &str,
        protocol: &'static str,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, hyper::HeaderMap, Option<TokioIo<Upgraded>>), hyper::Error> {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("https://localhost{path}"))
            .header("sec-websocket-version", "13");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let mut req = req.body(Empty::new()).unwrap();
        req.extensions_mut().insert(Protocol::from_static(protocol));
        self.send.ready().await?;
        let mut resp = self.send.send_request(req).await?;
        let status = resp.status();
        let answer = resp.headers().clone();
        if status != StatusCode::OK {
            return Ok((status, answer, None));
        }
        let upgraded = hyper::upgrade::on(&mut resp).await?;
        Ok((status, answer, Some(TokioIo::new(upgraded))))
    }

    /// A WebSocket that must open.
    async fn open(&mut self, path: &str) -> H2Ws {
        let (status, _, ws) = self.websocket(path, &[]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        ws.unwrap()
    }
}

async fn send(ws: &mut H2Ws, data: &[u8]) {
    ws.write_frame(Frame::binary(Payload::Borrowed(data)))
        .await
        .expect("frame sent");
}

/// Read data frames until `n` payload bytes arrived.
async fn receive(ws: &mut H2Ws, n: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(n);
    tokio::time::timeout(Duration::from_secs(10), async {
        while got.len() < n {
            let frame = ws.read_frame().await.expect("a frame");
            match frame.opcode {
                OpCode::Binary | OpCode::Text | OpCode::Continuation => {
                    got.extend_from_slice(&frame.payload)
                }
                OpCode::Close => panic!("closed after {} of {n} bytes", got.len()),
                _ => {}
            }
        }
    })
    .await
    .expect("the echo arrived in time");
    got
}

async fn echoes(ws: &mut H2Ws, data: &[u8]) {
    send(ws, data).await;
    assert_eq!(receive(ws, data.len()).await, data);
}

/// The close code of the next Close frame (data frames before it are skipped).
async fn close_code(ws: &mut H2Ws) -> u16 {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let frame = ws.read_frame().await.expect("a frame");
            if frame.opcode == OpCode::Close {
                return u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
            }
        }
    })
    .await
    .expect("a Close in time")
}

async fn close_normally(ws: &mut H2Ws) {
    ws.write_frame(Frame::close(1000, b"")).await.unwrap();
    assert_eq!(close_code(ws).await, 1000);
}

fn sessions_over(route: &str, protocol: &str) -> String {
    format!("wsgate_sessions_total{{route=\"{route}\",protocol=\"{protocol}\"}}")
}

fn active_over(route: &str, protocol: &str) -> String {
    format!("wsgate_sessions_active{{route=\"{route}\",protocol=\"{protocol}\"}}")
}

#[tokio::test]
async fn h2_websocket_to_a_tcp_echo_beside_http1_wss_on_the_same_listener() {
    let pki = pki();
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&tls_config(
        &pki.cert_file,
        &pki.key_file,
        &route("h2_tcp", "/", &format!("tcp://{echo}")),
    ))
    .await;
    let admin = gw.admin.unwrap();

    let mut h2 = H2Conn::tls(gw.addr, &pki).await;
    let (status, chosen, ws) = h2
        .websocket("/", &[("sec-websocket-protocol", "binary")])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        chosen.as_deref(),
        Some("binary"),
        "subprotocol choice as over HTTP/1.1"
    );
    let mut ws = ws.unwrap();
    echoes(&mut ws, &pattern(0, 100_000)).await;
    expect_metric(admin, &active_over("h2_tcp", "h2"), 1.0).await;

    // HTTP/1.1 wss on the same listener, for a client that offers only http/1.1.
    let (mut ws1, resp) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://{}/", gw.addr),
        None,
        false,
        Some(Connector::Rustls(client_config(&pki.ca, &[b"http/1.1"]))),
    )
    .await
    .expect("wss upgrade over HTTP/1.1");
    assert_eq!(resp.status(), 101);
    assert_echoes(&mut ws1, b"over http/1.1").await;
    let page = scrape(admin).await;
    assert_eq!(
        metric(&page, &sessions_over("h2_tcp", "h2")),
        Some(1.0),
        "{page}"
    );
    assert_eq!(metric(&page, &sessions_over("h2_tcp", "http1")), Some(1.0));
    assert_eq!(
        metric(&page, "wsgate_sessions_total{route=\"h2_tcp\"}"),
        Some(2.0)
    );

    close_normally(&mut ws).await;
    expect_metric(admin, &active_over("h2_tcp", "h2"), 0.0).await;
    let page = scrape(admin).await;
    assert_eq!(
        metric(&page, "wsgate_closes_total{route=\"h2_tcp\",code=\"1000\"}"),
        Some(1.0)
    );
    drop(ws1);
    gw.stop().await.unwrap();
}

/// The protocol a client offering `h2, http/1.1` gets from a listener.
async fn negotiated(addr: SocketAddr, pki: &Pki) -> Option<Vec<u8>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(client_config(&pki.ca, &[b"h2", b"http/1.1"]))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

#[tokio::test]
async fn h2_is_preferred_by_default_and_off_with_http2_false() {
    let pki = pki();
    let echo_route = route("h2_pref", "/", "builtin:echo");
    let on = spawn_gateway(&tls_config(&pki.cert_file, &pki.key_file, &echo_route)).await;
    assert_eq!(negotiated(on.addr, &pki).await.as_deref(), Some(&b"h2"[..]));
    let off = spawn_gateway(
        &tls_config(&pki.cert_file, &pki.key_file, &echo_route)
            .replace("[listener.tls]", "http2 = false\n\n[listener.tls]"),
    )
    .await;
    assert_eq!(
        negotiated(off.addr, &pki).await.as_deref(),
        Some(&b"http/1.1"[..])
    );
    on.stop().await.unwrap();
    off.stop().await.unwrap();
}

#[tokio::test]
async fn h2_websocket_to_a_websocket_backend_forwards_the_handshake() {
    let pki = pki();
    let (backend, mut seen) = ws_echo_backend().await;
    let gw = spawn_gateway(&tls_config(
        &pki.cert_file,
        &pki.key_file,
        &route("h2_ws", "/app/", &format!("ws://{backend}/up/")),
    ))
    .await;
    let mut h2 = H2Conn::tls(gw.addr, &pki).await;
    let (status, chosen, ws) = h2
        .websocket(
            "/app/feed?x=1",
            &[("sec-websocket-protocol", "chat, binary")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(chosen.as_deref(), Some("binary"), "the backend's choice");
    let hs = seen.recv().await.unwrap();
    assert_eq!(hs.path, "/up/feed?x=1");
    assert_eq!(hs.protocols.as_deref(), Some("chat, binary"));
    let mut ws = ws.unwrap();
    echoes(&mut ws, &pattern(7, 300_000)).await;
    close_normally(&mut ws).await;
    gw.stop().await.unwrap();
}

/// Two sessions share one connection; the first one's backend never reads, so its stream
/// window fills and its writer stalls. The second keeps flowing both ways: a stalled stream
/// holds its own window, not the connection's.
#[tokio::test]
async fn a_stalled_session_does_not_stall_its_neighbour_on_the_same_connection() {
    let pki = pki();
    let echo = tcp_echo_backend().await;
    let (sink, mut sink_conns) = tcp_backend().await;
    let gw = spawn_gateway(&tls_config(
        &pki.cert_file,
        &pki.key_file,
        &format!(
            "{}{}[http2]\nstream_window_bytes = 65535\nconnection_window_bytes = 1048576\n",
            route("stalled", "/stalled", &format!("tcp://{sink}")),
            route("flowing", "/flowing", &format!("tcp://{echo}"))
        ),
    ))
    .await;
    let mut h2 = H2Conn::tls(gw.addr, &pki).await;
    let mut stalled = h2.open("/stalled").await;
    let _held = sink_conns
        .recv()
        .await
        .expect("the gateway dialed the sink");
    // More than the sink's socket buffers and the stream window can take.
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..1024 {
            send(&mut stalled, &chunk).await;
        }
    });
    let mut flowing = h2.open("/flowing").await;
    for i in 0..16 {
        echoes(&mut flowing, &pattern(i * 65_536, 65_536)).await;
    }
    assert!(
        !writer.is_finished(),
        "the stalled session really is stalled"
    );
    close_normally(&mut flowing).await;
    writer.abort();
    gw.stop().await.unwrap();
}

/// Every access check answers an extended CONNECT with the status it gives an HTTP/1.1
/// upgrade, and the RFC 8441 checks give 426 (no Upgrade header, which h2 forbids) and 501.
#[tokio::test]
async fn access_failures_answer_with_the_http1_statuses() {
    const TOKEN: &str = "tok-h2";
    let pki = pki();
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&tls_config(
        &pki.cert_file,
        &pki.key_file,
        &format!(
            "{}[route.origin]\nallow = [\"https://app.example.com\"]\n\
             [route.auth]\nbearer_sha256 = [\"{}\"]\ntoken_sources = [\"header\", \"subprotocol\"]\n\
             {}[limits]\nmax_sessions_per_ip = 2\n",
            route("guarded", "/guarded", &format!("tcp://{echo}")),
            sha256_hex(TOKEN),
            route("open", "/open", &format!("tcp://{echo}")),
        ),
    ))
    .await;
    let admin = gw.admin.unwrap();
    let mut h2 = H2Conn::tls(gw.addr, &pki).await;
    let origin = ("origin", "https://app.example.com");
    let auth = format!("Bearer {TOKEN}");
    let status = |r: (StatusCode, Option<String>, Option<H2Ws>)| r.0;
    assert_eq!(status(h2.websocket("/nowhere", &[]).await), 404);
    assert_eq!(
        status(h2.websocket("/guarded", &[]).await),
        403,
        "no origin"
    );
    assert_eq!(
        status(
            h2.websocket("/guarded", &[("origin", "https://evil.example")])
                .await
        ),
        403
    );
    assert_eq!(status(h2.websocket("/guarded", &[origin]).await), 401);
    assert_eq!(
        status(
            h2.websocket("/guarded", &[origin, ("authorization", "Bearer wrong")])
                .await
        ),
        401
    );
    assert_eq!(status(h2.connect("/open", "webtransport", &[]).await), 501);
    // Sec-WebSocket-Version is still required; the 426 must reach the client (a response
    // with HTTP/1.1's Upgrade header would be reset by h2 instead).
    let mut no_version = Request::builder()
        .method(Method::CONNECT)
        .uri("https://localhost/open")
        .body(Empty::new())
        .unwrap();
    no_version
        .extensions_mut()
        .insert(Protocol::from_static("websocket"));
    let resp = h2.send.send_request(no_version).await.expect("an answer");
    assert_eq!(resp.status(), 426);
    assert_eq!(resp.headers()["sec-websocket-version"], "13");

    // Credentials in the `bearer.` subprotocol: accepted, never chosen.
    let offer = format!("bearer.{TOKEN}, binary");
    let (st, chosen, ws1) = h2
        .websocket("/guarded", &[origin, ("sec-websocket-protocol", &offer)])
        .await;
    assert_eq!((st, chosen.as_deref()), (StatusCode::OK, Some("binary")));
    let (st, _, ws2) = h2
        .websocket("/guarded", &[origin, ("authorization", &auth)])
        .await;
    assert_eq!(st, StatusCode::OK);
    // Both sessions ride one connection, and each counts against the address's cap.
    let (st, _, _) = h2.websocket("/open", &[]).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    let mut ws1 = ws1.unwrap();
    echoes(&mut ws1, b"granted").await;
    let page = scrape(admin).await;
    for (reason, n) in [
        ("origin", 2.0),
        ("unauthorized", 2.0),
        ("bad_protocol", 1.0),
    ] {
        assert_eq!(
            metric(
                &page,
                &format!("wsgate_upgrade_rejections_total{{reason=\"{reason}\"}}")
            ),
            Some(n),
            "{reason}: {page}"
        );
    }
    drop(ws2);
    gw.stop().await.unwrap();
}

/// A client that resets one stream ends that session only; its neighbour goes on.
#[tokio::test]
async fn a_reset_stream_ends_only_its_session() {
    let pki = pki();
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&tls_config(
        &pki.cert_file,
        &pki.key_file,
        &route("h2_reset", "/", &format!("tcp://{echo}")),
    ))
    .await;
    let admin = gw.admin.unwrap();
    let mut h2 = H2Conn::tls(gw.addr, &pki).await;
    let mut keep = h2.open("/").await;
    let mut gone = h2.open("/").await;
    echoes(&mut gone, b"before the reset").await;
    expect_metric(admin, &active_over("h2_reset", "h2"), 2.0).await;
    // Dropping both halves of the stream sends RST_STREAM(CANCEL).
    drop(gone);
    expect_metric(admin, &active_over("h2_reset", "h2"), 1.0).await;
    echoes(&mut keep, b"still here").await;
    close_normally(&mut keep).await;
    expect_metric(admin, &active_over("h2_reset", "h2"), 0.0).await;
    gw.stop().await.unwrap();
}

/// On shutdown the connection gets GOAWAY (no new streams) and every session on it a 1001.
#[tokio::test]
async fn shutdown_sends_goaway_and_1001_on_every_stream() {
    let pki = pki();
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&tls_config(
        &pki.cert_file,
        &pki.key_file,
        &route("h2_drain", "/", &format!("tcp://{echo}")),
    ))
    .await;
    let mut h2 = H2Conn::tls(gw.addr, &pki).await;
    let mut a = h2.open("/").await;
    let mut b = h2.open("/").await;
    echoes(&mut a, b"a").await;
    echoes(&mut b, b"b").await;
    gw.shutdown.cancel();
    assert_eq!(close_code(&mut a).await, 1001);
    assert_eq!(close_code(&mut b).await, 1001);
    // After GOAWAY the connection opens no new session.
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(10), h2.try_websocket("/"))
        .await
        .expect("an answer in time")
        .unwrap_or((StatusCode::SERVICE_UNAVAILABLE, None, None));
    assert_ne!(status, StatusCode::OK, "a new stream after GOAWAY");
    a.write_frame(Frame::close(1001, b"")).await.ok();
    b.write_frame(Frame::close(1001, b"")).await.ok();
    tokio::time::timeout(Duration::from_secs(30), gw.task)
        .await
        .expect("gateway drained in time")
        .unwrap()
        .unwrap();
}

/// h2c with prior knowledge on a plain listener (`h2c = true`), where HTTP/1.1 keeps working.
#[tokio::test]
async fn h2c_with_prior_knowledge_beside_http1_on_a_plain_listener() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(
        &config_with(&route("h2c", "/", &format!("tcp://{echo}"))).replacen(
            "\n\n[admin]",
            "\nh2c = true\n\n[admin]",
            1,
        ),
    )
    .await;
    let mut h2 = H2Conn::h2c(gw.addr).await;
    let mut ws = h2.open("/").await;
    echoes(&mut ws, b"over h2c").await;
    let mut ws1 = ws_client(&gw.url("/")).await;
    assert_echoes(&mut ws1, b"over http/1.1").await;
    let page = scrape(gw.admin.unwrap()).await;
    assert_eq!(metric(&page, &sessions_over("h2c", "h2")), Some(1.0));
    assert_eq!(metric(&page, &sessions_over("h2c", "http1")), Some(1.0));
    close_normally(&mut ws).await;
    drop(ws1);
    gw.stop().await.unwrap();
}

/// A listener without `h2c` answers the HTTP/2 preface as a bad HTTP/1.1 request.
#[tokio::test]
async fn a_plain_listener_without_h2c_does_not_speak_http2() {
    let gw = gateway_to("no_h2c", "builtin:echo").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(&[0, 0]),
        "no HTTP/2 SETTINGS frame: {answer:?}"
    );
    gw.stop().await.unwrap();
}

/// `POST /reload` on the admin listener, which must succeed.
async fn reload(admin: SocketAddr) {
    let (status, answer) = admin_request(admin, "POST", "/reload", &[]).await;
    assert_eq!(status, 200, "{answer}");
}

/// Reload meets HTTP/2 (issues 10 and 12 merged): a reload rebuilds each TLS listener's
/// rustls config, ALPN list included, and `[http2]`; a connection keeps what was current when
/// it was accepted. Guards against a listener that kept its start-up acceptor, so that
/// `http2 = false` never took effect on a running gateway, and against h2 connections that
/// kept the start-up `[http2]` limits. Here: `http2 = false` makes new TLS clients negotiate
/// http/1.1 while the h2 connection from before keeps its sessions and opens new streams;
/// turning it back on with `max_concurrent_streams = 1` gives new connections h2 with the
/// new limit (a second stream waits for the first to end), and sessions open and echo on
/// the reloaded listener.
#[tokio::test]
async fn reload_switches_http2_and_its_limits_for_new_connections_only() {
    let pki = pki();
    let echo = tcp_echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    let on = tls_config(
        &pki.cert_file,
        &pki.key_file,
        &format!(
            "[reload]\nwatch = false\n\n{}",
            route("h2_reload", "/", &format!("tcp://{echo}"))
        ),
    );
    let off = on.replace("[listener.tls]", "http2 = false\n\n[listener.tls]");
    let one_stream = format!("{on}\n[http2]\nmax_concurrent_streams = 1\n");
    std::fs::write(&file, &on).unwrap();
    let gw = spawn_gateway_from_file(&file).await;
    let admin = gw.admin.unwrap();
    let mut before = H2Conn::tls(gw.addr, &pki).await;
    let mut live = before.open("/").await;
    echoes(&mut live, b"before the reload").await;

    std::fs::write(&file, &off).unwrap();
    reload(admin).await;
    assert_eq!(
        negotiated(gw.addr, &pki).await.as_deref(),
        Some(&b"http/1.1"[..]),
        "after http2 = false a new client offering h2 and http/1.1 gets http/1.1"
    );
    let (mut ws1, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://{}/", gw.addr),
        None,
        false,
        Some(Connector::Rustls(client_config(
            &pki.ca,
            &[b"h2", b"http/1.1"],
        ))),
    )
    .await
    .expect("wss over HTTP/1.1 after the reload");
    assert_echoes(&mut ws1, b"over http/1.1").await;
    echoes(&mut live, &pattern(1, 100_000)).await;
    let mut second = before.open("/").await;
    echoes(&mut second, b"a new stream on the old connection").await;

    std::fs::write(&file, &one_stream).unwrap();
    reload(admin).await;
    let mut after = H2Conn::tls(gw.addr, &pki).await;
    let mut first = after.open("/").await;
    echoes(&mut first, b"h2 after the reload").await;
    // The client holds the next CONNECT until the gateway's SETTINGS allow another stream.
    let mut waiting = tokio::spawn(async move {
        let ws = after.open("/").await;
        (after, ws)
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "a second stream opened past max_concurrent_streams = 1"
    );
    // The connection from before the reload keeps its limit of 100.
    let mut third = before.open("/").await;
    echoes(&mut third, b"three on the old connection").await;
    close_normally(&mut first).await;
    drop(first);
    let (_after, mut next) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the second stream opens once the first ended")
        .unwrap();
    echoes(&mut next, b"the next stream").await;

    let page = scrape(admin).await;
    assert_eq!(
        metric(&page, &sessions_over("h2_reload", "h2")),
        Some(5.0),
        "{page}"
    );
    assert_eq!(
        metric(&page, &sessions_over("h2_reload", "http1")),
        Some(1.0)
    );
    for ws in [&mut live, &mut second, &mut third, &mut next] {
        close_normally(ws).await;
    }
    drop(ws1);
    gw.stop().await.unwrap();
}

/// `h2c` follows a reload too: it is read from the snapshot a connection is accepted under.
/// Turned on by a reload, a plain listener serves HTTP/2 with prior knowledge on its next
/// connection, and HTTP/1.1 keeps working beside it.
#[tokio::test]
async fn reload_turns_h2c_on_for_new_connections() {
    let echo = tcp_echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    let plain = config_with(&format!(
        "[reload]\nwatch = false\n\n{}",
        route("h2c_reload", "/", &format!("tcp://{echo}"))
    ));
    std::fs::write(&file, &plain).unwrap();
    let gw = spawn_gateway_from_file(&file).await;
    let mut ws1 = ws_client(&gw.url("/")).await;
    std::fs::write(
        &file,
        plain.replacen("\n\n[admin]", "\nh2c = true\n\n[admin]", 1),
    )
    .unwrap();
    reload(gw.admin.unwrap()).await;
    let mut h2 = H2Conn::h2c(gw.addr).await;
    let mut ws = h2.open("/").await;
    echoes(&mut ws, b"h2c after the reload").await;
    assert_echoes(&mut ws1, b"http/1.1 from before").await;
    close_normally(&mut ws).await;
    drop(ws1);
    gw.stop().await.unwrap();
}

/// permessage-deflate over an extended CONNECT (RFC 8441 streams carry
/// `Sec-WebSocket-Extensions` as headers, as HTTP/1.1 does): the `200` carries the gateway's
/// answer, a compressed text message is inflated for the TCP backend, and the backend's
/// bytes come back compressed (RSV1) on the same stream, twice (the context is kept). A
/// route with compression off declines the same offer on the same connection.
#[tokio::test]
async fn permessage_deflate_over_an_h2_extended_connect() {
    let pki = pki();
    let echo = tcp_echo_backend().await;
    let backend = format!("tcp://{echo}");
    let gw = spawn_gateway(&tls_config(
        &pki.cert_file,
        &pki.key_file,
        &format!(
            "{}compression = \"on\"\nmessage_type = \"text\"\nsubprotocols = []\n{}",
            route("z", "/z", &backend),
            route("plain", "/plain", &backend)
        ),
    ))
    .await;
    let mut h2 = H2Conn::tls(gw.addr, &pki).await;
    let offer = [(
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits",
    )];
    let (status, answer, _) = h2.stream("/plain", "websocket", &offer).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer.get("sec-websocket-extensions"), None);
    let (status, answer, stream) = h2.stream("/z", "websocket", &offer).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer
            .get("sec-websocket-extensions")
            .map(|v| v.to_str().unwrap()),
        Some("permessage-deflate")
    );
    let mut ws = RawWs::from_upgraded(stream.expect("the stream"));
    let (mut deflate, mut inflate) = (ClientDeflate::new(), ClientInflate::new());
    let line = b"{\"type\":\"tick\",\"symbol\":\"ACME\",\"price\":101.25,\"size\":300}\n";
    let msg: Vec<u8> = line.iter().copied().cycle().take(20_000).collect();
    for _ in 0..2 {
        let wire = deflate.piece(&msg, true);
        assert!(wire.len() < msg.len() / 5);
        ws.send(&client_frame(
            frame_bits::FIN | frame_bits::RSV1 | frame_bits::TEXT,
            &wire,
        ))
        .await;
        let (back, compressed) = read_echo(&mut ws, &mut inflate, msg.len()).await;
        assert_eq!(back, msg);
        assert!(compressed > 0, "the echo comes back compressed over h2");
    }
    ws.send(&client_frame(
        frame_bits::FIN | frame_bits::CLOSE,
        &close_payload(1000, ""),
    ))
    .await;
    assert_eq!(ws.expect_close().await.0, 1000);
    gw.stop().await.unwrap();
}

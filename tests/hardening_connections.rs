//! Connection hardening, each test named after the defect it guards: an HTTP/2 slowloris
//! (a partial preface held a slot forever, over h2c and over TLS with ALPN `h2`), one address
//! holding every connection slot, idle HTTP/2 connections never closed, the process running
//! out of file descriptors (a backend dial's EMFILE), and the admin accept loop spinning on
//! EMFILE. Real gateways on loopback; the descriptor tests run the real binary under a
//! lowered `ulimit -n`.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use support::*;

/// The start of HTTP/2's client preface, short of its end.
const PARTIAL_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// A plain listener that also speaks h2c, with `extra` TOML.
fn h2c_config(extra: &str) -> String {
    config_with(extra).replacen("\n\n[admin]", "\nh2c = true\n\n[admin]", 1)
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.x).
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.expect("connect")
}

/// Whether the gateway closes `stream` (EOF or reset, whatever it sent first) within `limit`.
async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Slowloris defect guarded: a connection that sent only part of the HTTP/2 preface on an
/// h2c listener was never timed out, so `max_connections` of them locked every client out.
#[tokio::test]
async fn h2c_partial_preface_is_closed_at_the_header_deadline_and_a_client_is_served() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&h2c_config(&format!(
        "[timeouts]\nheader_read_secs = 1\n[limits]\nmax_connections = 4\n\
         max_connections_per_ip = 0\n{}",
        route("echo", "/", &format!("tcp://{echo}"))
    )))
    .await;
    let admin = gw.admin.unwrap();
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(PARTIAL_PREFACE).await.unwrap();
        slow.push(s);
    }
    // Queued behind them in the accept queue (first in, first accepted): served once the
    // deadline frees their slots.
    let client = tokio::spawn({
        let url = gw.url("/");
        async move {
            let mut ws = ws_client(&url).await;
            assert_echoes(&mut ws, b"served").await;
        }
    });
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "a partial preface is closed at header_read_secs"
        );
    }
    tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .expect("the legitimate client is served")
        .unwrap();
    // Metrics are per process: other tests here add their own timeouts.
    let page = scrape(admin).await;
    assert!(
        metric(
            &page,
            "wsgate_connection_timeouts_total{phase=\"first_request\"}"
        ) >= Some(4.0),
        "{page}"
    );
}

/// The same slowloris over TLS: ALPN `h2` negotiated, then only part of the preface.
#[tokio::test]
async fn tls_alpn_h2_partial_preface_is_closed_at_the_header_deadline() {
    let pki = pki();
    let gw = spawn_gateway(&tls_config(
        &pki.cert_file,
        &pki.key_file,
        &format!(
            "[timeouts]\nheader_read_secs = 1\n[limits]\nmax_connections = 2\n\
             max_connections_per_ip = 0\n{}",
            route("echo", "/", "builtin:echo")
        ),
    ))
    .await;
    let mut slow = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(gw.addr).await.unwrap();
        let mut tls = TlsConnector::from(client_config(&pki.ca, &[b"h2"]))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        tls.write_all(PARTIAL_PREFACE).await.unwrap();
        tls.flush().await.unwrap();
        slow.push(tls);
    }
    let served = tokio::spawn({
        let ca = pki.ca.clone();
        let addr = gw.addr;
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let tls = TlsConnector::from(client_config(&ca, &[b"h2"]))
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .expect("TLS handshake");
            let (send, _done) = h2_handshake(tls).await;
            send
        }
    });
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "a partial preface over TLS is closed at header_read_secs"
        );
    }
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("a legitimate h2 client is served")
        .unwrap();
}

/// Defect guarded: there was no cap on connections per address, so one address could take
/// every slot under `max_connections`.
#[tokio::test]
async fn one_address_cannot_hold_every_connection_slot() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&config_with(&format!(
        "[timeouts]\nheader_read_secs = 30\n[limits]\nmax_connections = 6\n\
         max_connections_per_ip = 2\n{}",
        route("echo", "/", &format!("tcp://{echo}"))
    )))
    .await;
    let admin = gw.admin.unwrap();
    let mut hogs = Vec::new();
    for _ in 0..6 {
        hogs.push(connect_from("127.0.0.2", gw.addr).await);
    }
    // Two stay (idle, under the 30 s header deadline); the other four are closed at once.
    let mut closed = 0;
    for s in &mut hogs {
        if closed_within(s, Duration::from_millis(1500)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 4, "connections past the cap are closed");
    let page = scrape(admin).await;
    assert_eq!(
        metric(
            &page,
            "wsgate_connections_refused_total{reason=\"ip_limit\"}"
        ),
        Some(4.0)
    );
    // Another address is served at once.
    let mut ws = tokio::time::timeout(Duration::from_secs(5), ws_client(&gw.url("/")))
        .await
        .expect("a client from another address is served");
    assert_echoes(&mut ws, b"another address").await;
}

/// An h2 handshake over `io`: the request sender, and a receiver that resolves when the
/// connection ends (GOAWAY and close, or an error).
async fn h2_handshake<IO>(
    io: IO,
) -> (
    SendRequest<Empty<Bytes>>,
    tokio::sync::oneshot::Receiver<()>,
)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .expect("HTTP/2 handshake");
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    // hyper sets the extended CONNECT flag from its own task without waking this one: look
    // on a short tick until the server's SETTINGS allowed it (or the connection ended).
    tokio::spawn(async move {
        let mut conn = std::pin::pin!(conn);
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut seen = Some(seen_tx);
        loop {
            tokio::select! {
                _ = conn.as_mut() => break,
                _ = tick.tick() => {}
            }
            if conn.is_extended_connect_protocol_enabled() {
                if let Some(tx) = seen.take() {
                    let _ = tx.send(());
                }
            }
        }
        let _ = done_tx.send(());
    });
    // A connection the gateway closes before SETTINGS (a slot freed late) just ends here.
    let _ = tokio::time::timeout(Duration::from_secs(10), seen_rx).await;
    (send, done_rx)
}

/// An extended CONNECT for a WebSocket at `path`; the upgraded stream on `200`.
async fn h2_websocket(
    send: &mut SendRequest<Empty<Bytes>>,
    path: &str,
) -> TokioIo<hyper::upgrade::Upgraded> {
    let mut req = hyper::Request::builder()
        .method(hyper::Method::CONNECT)
        .uri(format!("http://localhost{path}"))
        .header("sec-websocket-version", "13")
        .body(Empty::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    send.ready().await.expect("connection ready");
    let mut resp = send.send_request(req).await.expect("an answer");
    assert_eq!(resp.status(), hyper::StatusCode::OK);
    TokioIo::new(hyper::upgrade::on(&mut resp).await.expect("upgraded"))
}

/// Defect guarded: an HTTP/2 connection with no stream that answered PINGs was never
/// closed. Now it gets GOAWAY after `http2.idle_timeout_secs` with nothing open; a
/// connection carrying a session is not idle, however long the session.
#[tokio::test]
async fn idle_h2_connection_gets_goaway_and_is_closed() {
    let gw = spawn_gateway(&h2c_config(&format!(
        "[timeouts]\nheader_read_secs = 1\n[http2]\nidle_timeout_secs = 1\n{}",
        route("echo", "/", "builtin:echo")
    )))
    .await;
    let admin = gw.admin.unwrap();

    // A session outlives the idle timeout on its connection.
    let (mut send, mut done) = h2_handshake(TcpStream::connect(gw.addr).await.unwrap()).await;
    let stream = h2_websocket(&mut send, "/").await;
    let mut ws = fastwebsockets::WebSocket::after_handshake(stream, fastwebsockets::Role::Client);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        done.try_recv().is_err(),
        "a connection with a session is not idle"
    );
    ws.write_frame(fastwebsockets::Frame::binary(
        fastwebsockets::Payload::Borrowed(b"still here"),
    ))
    .await
    .expect("frame sent");
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.read_frame())
        .await
        .expect("echo in time")
        .expect("a frame");
    assert_eq!(&echoed.payload[..], b"still here");
    // Once the session ends, the connection is idle: GOAWAY, then closed.
    drop(ws);
    tokio::time::timeout(Duration::from_secs(6), &mut done)
        .await
        .expect("the idle connection is closed after its session ended")
        .ok();

    // A connection that never opens a stream is closed too (the hyper client answers PINGs).
    let (_send, done) = h2_handshake(TcpStream::connect(gw.addr).await.unwrap()).await;
    tokio::time::timeout(Duration::from_secs(6), done)
        .await
        .expect("an h2 connection without streams is closed")
        .ok();
    let page = scrape(admin).await;
    assert!(
        metric(&page, "wsgate_connection_timeouts_total{phase=\"idle\"}") >= Some(1.0),
        "{page}"
    );
}

// ---------------------------------------------------------------------------------------------
// Out of file descriptors: the real binary under a lowered `ulimit -n`.

/// The gateway binary started by `sh -c 'ulimit -n {nofile}; exec wsgate --config …'`.
struct Limited {
    child: Child,
    public: SocketAddr,
    admin: SocketAddr,
    stderr: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Limited {
    async fn start(nofile: u32, backend: SocketAddr) -> Self {
        Self::start_with(nofile, backend, "").await
    }

    /// With `listener` TOML lines added to the public listener (`h2c = true`).
    async fn start_with(nofile: u32, backend: SocketAddr, listener: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("gw.toml");
        std::fs::write(
            &config,
            format!(
                "[[listener]]\naddress = \"{public}\"\n{listener}\n[admin]\naddress = \"{admin}\"\n\
                 [reload]\nwatch = false\n{}",
                route("echo", "/", &format!("tcp://{backend}"))
            ),
        )
        .unwrap();
        let stderr = dir.path().join("stderr.log");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" --config \"$1\""))
            .arg(env!("CARGO_BIN_EXE_wsgate"))
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("sh runs");
        wait_for_listener(admin).await;
        wait_for_listener(public).await;
        Self {
            child,
            public,
            admin,
            stderr,
            _dir: dir,
        }
    }

    /// User plus system CPU time of the gateway so far, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which may hold spaces) start at field 3.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kept-alive admin connection that scrapes `/metrics` without a new descriptor.
struct Scraper(TcpStream);

impl Scraper {
    async fn open(admin: SocketAddr) -> Self {
        Self(TcpStream::connect(admin).await.unwrap())
    }

    async fn page(&mut self) -> String {
        self.0
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut chunk = [0u8; 8192];
            loop {
                let n = self.0.read(&mut chunk).await.expect("admin answers");
                assert!(n > 0, "admin connection closed");
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .to_ascii_lowercase()
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        return;
                    }
                }
            }
        })
        .await
        .expect("scrape in time");
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Defects guarded: `max_connections` did not bound descriptors and running out of them
/// locked everyone out (nothing counted, nothing said), and the admin accept loop spun on
/// EMFILE (`continue` without a back-off: one pending scrape burned most of a core).
///
/// Under `ulimit -n 64` the gateway warns that its caps do not fit and lowers them; the
/// descriptors left are then used up by idle admin connections (which the budget's reserve
/// is for). An upgrade on a connection accepted before gets 503 `no_descriptors`, counted;
/// the admin accept loop backs off instead of spinning; once descriptors are free again a
/// new client is served.
#[tokio::test]
async fn running_out_of_descriptors_degrades_with_a_503_and_the_admin_loop_backs_off() {
    let echo = tcp_echo_backend().await;
    let gw = Limited::start(64, echo).await;
    let mut scraper = Scraper::open(gw.admin).await;
    // A client connection accepted while descriptors remain (the lowered cap is 1).
    let mut client = TcpStream::connect(gw.public).await.unwrap();
    assert_eventually!(
        metric(&scraper.page().await, "wsgate_connections_active") == Some(1.0),
        "the client connection is accepted"
    );
    // Use up every descriptor left: admin connections until the gateway stops accepting.
    let mut hogs = Vec::new();
    for _ in 0..80 {
        hogs.push(TcpStream::connect(gw.admin).await.unwrap());
    }
    assert_eventually!(
        metric(
            &scraper.page().await,
            "wsgate_descriptors_exhausted_total{stage=\"admin_accept\"}"
        ) > Some(0.0),
        "the admin listener runs out of descriptors"
    );

    // The admin accept loop waits between tries instead of spinning on the pending ones.
    let before = (gw.cpu_ticks(), scraper.page().await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = (gw.cpu_ticks(), scraper.page().await);
    let ticks = after.0 - before.0;
    assert!(
        ticks < 100,
        "an idle gateway out of descriptors used {ticks} ticks of CPU in 2 s (a spin uses ~200)"
    );
    let tries = |page: &str| {
        metric(
            page,
            "wsgate_descriptors_exhausted_total{stage=\"admin_accept\"}",
        )
        .unwrap()
    };
    let retries = tries(&after.1) - tries(&before.1);
    assert!(
        (1.0..=60.0).contains(&retries),
        "accept retried {retries} times in 2 s: about every 100 ms"
    );

    // The backend dial finds no descriptor: 503 with a reason, counted, not a lock-up.
    client
        .write_all(upgrade_request("/", "").as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let page = scraper.page().await;
    assert_eq!(
        metric(
            &page,
            "wsgate_descriptors_exhausted_total{stage=\"backend\"}"
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            "wsgate_upgrade_rejections_total{reason=\"no_descriptors\"}"
        ),
        Some(1.0)
    );

    // Descriptors free again (once the gateway has accepted and closed what the hogs left
    // in its backlog): a new client is served.
    drop(hogs);
    drop(client);
    let url = format!("ws://{}/", gw.public);
    let mut ws = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((ws, _)) => return ws,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("served once descriptors are free");
    assert_echoes(&mut ws, b"back").await;
    drop(ws);
    drop(scraper);

    let log = std::fs::read_to_string(&gw.stderr).unwrap();
    assert!(
        log.contains("RLIMIT_NOFILE"),
        "the start warns that the caps do not fit: {log}"
    );
    assert!(log.contains("out of file descriptors"), "{log}");
}

/// Defect guarded: `max_connections` did not bound descriptors, since one HTTP/2 connection
/// carries up to `max_concurrent_streams` sessions with a backend socket each; two h2c
/// connections used up a 120-descriptor limit and every other client was locked out. Now the
/// sessions are capped at what the limit holds beside the connections (120 − 100 reserved:
/// 10 connections and 10 sessions): the rest get 503, nothing runs out, and another client is
/// still answered at once.
#[tokio::test]
async fn h2c_sessions_cannot_use_up_the_descriptor_limit() {
    let echo = tcp_echo_backend().await;
    let gw = Limited::start_with(120, echo, "h2c = true").await;
    let mut opened = Vec::new();
    let mut refused = 0;
    let mut conns = Vec::new();
    for _ in 0..2 {
        let (mut send, done) = h2_handshake(TcpStream::connect(gw.public).await.unwrap()).await;
        for _ in 0..60 {
            let mut req = hyper::Request::builder()
                .method(hyper::Method::CONNECT)
                .uri("http://localhost/")
                .header("sec-websocket-version", "13")
                .body(Empty::new())
                .unwrap();
            req.extensions_mut()
                .insert(hyper::ext::Protocol::from_static("websocket"));
            send.ready().await.expect("connection ready");
            let mut resp = send.send_request(req).await.expect("an answer");
            match resp.status() {
                hyper::StatusCode::OK => {
                    opened.push(hyper::upgrade::on(&mut resp).await.expect("upgraded"))
                }
                hyper::StatusCode::SERVICE_UNAVAILABLE => refused += 1,
                other => panic!("unexpected {other}"),
            }
        }
        conns.push((send, done));
    }
    assert!(
        opened.len() <= 10,
        "{} sessions opened under a 120-descriptor limit",
        opened.len()
    );
    assert_eq!(opened.len() + refused, 120);
    // Another client is answered at once (503 while the sessions last), not locked out.
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(5),
        raw_http(gw.public, &upgrade_request("/", "")),
    )
    .await
    .expect("another client is answered");
    assert_eq!(status, 503);
    let mut scraper = Scraper::open(gw.admin).await;
    let page = scraper.page().await;
    for stage in ["backend", "accept", "admin_accept"] {
        assert_eq!(
            metric(
                &page,
                &format!("wsgate_descriptors_exhausted_total{{stage=\"{stage}\"}}")
            ),
            Some(0.0),
            "{page}"
        );
    }
    // Once they end, a new client is served.
    drop(opened);
    drop(conns);
    let url = format!("ws://{}/", gw.public);
    let mut ws = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((ws, _)) => return ws,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("served once the sessions ended");
    assert_echoes(&mut ws, b"served").await;
}

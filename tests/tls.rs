//! `wss://` listeners over real sockets, with a CA and a leaf generated at test time.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream};
use wsgate::{Config, Gateway};

use support::*;

const FAILURES: &str = "wsgate_tls_handshake_failures_total";

/// Tests that make handshakes fail hold this, so each can count its own failures exactly
/// (the counter is process-wide).
static FAILURE_COUNTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `wss://` client to 127.0.0.1 (checked against the leaf's IP SAN).
async fn wss_client(addr: SocketAddr, config: Arc<ClientConfig>) -> WsClient {
    let (ws, resp) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://{addr}/"),
        None,
        false,
        Some(Connector::Rustls(config)),
    )
    .await
    .expect("wss upgrade succeeds");
    assert_eq!(resp.status(), 101);
    ws
}

/// ALPN and TLS version the client negotiated.
fn negotiated(ws: &WsClient) -> (Option<Vec<u8>>, Option<rustls::ProtocolVersion>) {
    match ws.get_ref() {
        MaybeTlsStream::Rustls(tls) => {
            let conn = tls.get_ref().1;
            (
                conn.alpn_protocol().map(<[u8]>::to_vec),
                conn.protocol_version(),
            )
        }
        _ => panic!("not a TLS stream"),
    }
}

async fn echo_and_close(ws: &mut WsClient, data: &[u8]) {
    send_binary(ws, data).await;
    assert_eq!(read_bytes(ws, data.len()).await, data);
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    })))
    .await
    .unwrap();
    assert_eq!(expect_close(ws).await, (1000, String::new()));
}

async fn failures(admin: SocketAddr) -> f64 {
    metric(&scrape(admin).await, FAILURES).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn wss_echo_round_trip_with_a_test_ca() {
    let pki = pki();
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&tls_config(
        &pki.cert_file,
        &pki.key_file,
        &route("tls_echo", "/", &format!("tcp://{echo}")),
    ))
    .await;

    // By IP address, offering the usual ALPN list.
    let mut ws = wss_client(gw.addr, client_config(&pki.ca, &[b"http/1.1"])).await;
    assert_eq!(negotiated(&ws).0.as_deref(), Some(&b"http/1.1"[..]));
    echo_and_close(&mut ws, b"over wss").await;

    // By name (`localhost`), over a socket we connected to 127.0.0.1 ourselves.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async_tls_with_config(
        format!("wss://localhost:{}/", gw.addr.port()),
        tcp,
        None,
        Some(Connector::Rustls(client_config(&pki.ca, &[b"http/1.1"]))),
    )
    .await
    .expect("wss upgrade by name");
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    echo_and_close(&mut ws, &payload).await;

    let page = scrape(gw.admin.unwrap()).await;
    assert_eq!(
        metric(&page, r#"wsgate_sessions_total{route="tls_echo"}"#),
        Some(2.0),
        "{page}"
    );
    gw.stop().await.unwrap();
}

/// Behind an L4 balancer the PROXY header comes first, in clear; the TLS handshake then
/// runs on the same socket, and the backend hears of the client the header named.
#[tokio::test]
async fn a_proxy_header_precedes_the_tls_handshake() {
    let pki = pki();
    let backend = proxy_reading_backend().await;
    let toml = tls_config(
        &pki.cert_file,
        &pki.key_file,
        &format!(
            "{}send_proxy_protocol = \"v2\"\n",
            route("tls_proxied", "/", &format!("tcp://{backend}"))
        ),
    )
    .replacen(
        "address = \"127.0.0.1:0\"\n",
        "address = \"127.0.0.1:0\"\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\n",
        1,
    );
    let gw = spawn_gateway(&toml).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.9 198.51.100.1 40009 443\r\n")
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async_tls_with_config(
        format!("wss://localhost:{}/", gw.addr.port()),
        tcp,
        None,
        Some(Connector::Rustls(client_config(&pki.ca, &[b"http/1.1"]))),
    )
    .await
    .expect("wss upgrade after a PROXY header");
    let seen = next_data(&mut ws).await.expect("the backend's report");
    assert_eq!(seen, b"203.0.113.9:40009 198.51.100.1:443");
    echo_and_close(&mut ws, b"over wss, proxied").await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn alpn_settles_on_http11_and_tls12_still_works() {
    let pki = pki();
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&tls_config(
        &pki.cert_file,
        &pki.key_file,
        &route("tls_alpn", "/", &format!("tcp://{echo}")),
    ))
    .await;

    // A client that offers only http/1.1 gets it (one that offers h2 gets h2: tests/http2.rs).
    let mut ws = wss_client(gw.addr, client_config(&pki.ca, &[b"http/1.1"])).await;
    let (alpn, version) = negotiated(&ws);
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    echo_and_close(&mut ws, b"alpn").await;

    // A client without ALPN is served too.
    let mut ws = wss_client(gw.addr, client_config(&pki.ca, &[])).await;
    assert_eq!(negotiated(&ws).0, None);
    echo_and_close(&mut ws, b"no alpn").await;

    // A TLS 1.2-only client.
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let tls12 =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let mut ws = wss_client(gw.addr, Arc::new(tls12)).await;
    assert_eq!(negotiated(&ws).1, Some(rustls::ProtocolVersion::TLSv1_2));
    echo_and_close(&mut ws, b"tls12").await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn plain_http_and_garbage_on_the_tls_port_are_dropped_and_counted() {
    let _serial = FAILURE_COUNTER.lock().await;
    let pki = pki();
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&tls_config(
        &pki.cert_file,
        &pki.key_file,
        &route("tls_garbage", "/", &format!("tcp://{echo}")),
    ))
    .await;
    let admin = gw.admin.unwrap();
    let before = failures(admin).await;

    // A plain-HTTP WebSocket upgrade: no HTTP answer, just the end of the connection.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(upgrade_request("/", "").as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "an HTTP answer on a TLS port: {}",
        String::from_utf8_lossy(&answer)
    );
    assert_eventually!(
        failures(admin).await == before + 1.0,
        "plain HTTP was not counted as a handshake failure"
    );
    let mut ws = wss_client(gw.addr, client_config(&pki.ca, &[b"http/1.1"])).await;
    echo_and_close(&mut ws, b"after plain http").await;

    // Deterministic garbage whose first byte is no TLS record type.
    let mut x: u32 = 0x2545_f491;
    let garbage: Vec<u8> = std::iter::once(0xa5)
        .chain((0..1023).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        }))
        .collect();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&garbage).await.unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(!answer.starts_with(b"HTTP/"));
    assert_eventually!(
        failures(admin).await == before + 2.0,
        "garbage was not counted as a handshake failure"
    );
    let mut ws = wss_client(gw.addr, client_config(&pki.ca, &[b"http/1.1"])).await;
    echo_and_close(&mut ws, b"after garbage").await;

    // Proper clients were not counted.
    assert_eq!(failures(admin).await, before + 2.0);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn silent_tls_client_is_cut_after_the_handshake_timeout() {
    let _serial = FAILURE_COUNTER.lock().await;
    let pki = pki();
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&tls_config(
        &pki.cert_file,
        &pki.key_file,
        &format!(
            "{}\n[timeouts]\ntls_handshake_secs = 0.5\n",
            route("tls_silent", "/", &format!("tcp://{echo}"))
        ),
    ))
    .await;
    let admin = gw.admin.unwrap();
    let before = failures(admin).await;

    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(answer.is_empty(), "the server sent {answer:?}");
    assert_eventually!(
        failures(admin).await == before + 1.0,
        "the timed-out handshake was not counted"
    );

    let mut ws = wss_client(gw.addr, client_config(&pki.ca, &[b"http/1.1"])).await;
    echo_and_close(&mut ws, b"after the silent one").await;
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Bad TLS material fails `bind`, naming the file.

async fn bind_error(toml: &str) -> String {
    let config = Config::from_toml(toml).expect("the config itself is valid");
    match Gateway::bind(config).await {
        Ok(_) => panic!("bind succeeded with bad TLS material"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn missing_cert_file_fails_bind_naming_the_file() {
    let pki = pki();
    let missing = pki.dir.path().join("no-such-cert.pem");
    let err = bind_error(&tls_config(
        &missing,
        &pki.key_file,
        &route("tls_missing_cert", "/", "builtin:echo"),
    ))
    .await;
    assert!(
        err.contains(&missing.display().to_string()),
        "error does not name {}: {err}",
        missing.display()
    );
}

#[tokio::test]
async fn missing_key_file_fails_bind_naming_the_file() {
    let pki = pki();
    let missing = pki.dir.path().join("no-such-key.pem");
    let err = bind_error(&tls_config(
        &pki.cert_file,
        &missing,
        &route("tls_missing_key", "/", "builtin:echo"),
    ))
    .await;
    assert!(
        err.contains(&missing.display().to_string()),
        "error does not name {}: {err}",
        missing.display()
    );
}

#[tokio::test]
async fn cert_file_without_a_certificate_fails_bind_naming_the_file() {
    let pki = pki();
    // The key's PEM where the certificate should be.
    let err = bind_error(&tls_config(
        &pki.key_file,
        &pki.key_file,
        &route("tls_no_cert_block", "/", "builtin:echo"),
    ))
    .await;
    assert!(
        err.contains(&pki.key_file.display().to_string()) && err.contains("CERTIFICATE"),
        "{err}"
    );
}

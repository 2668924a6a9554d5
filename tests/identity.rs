//! Client identity behind load balancers: PROXY v1/v2 headers accepted only from trusted
//! sources, forwarded headers believed only from trusted peers, and the resulting address
//! used by per-address limits and sent on to byte backends in a PROXY v2 header.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::MaybeTlsStream;

use support::*;

/// A gateway whose one listener has `listener_keys`, with route `/` to a
/// [`proxy_reading_backend`] that is sent PROXY v2, and `[limits]` `limits`.
async fn gateway_reporting_clients(listener_keys: &str, limits: &str) -> TestGateway {
    let backend = proxy_reading_backend().await;
    spawn_gateway(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n{listener_keys}\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [limits]\n{limits}\n\n{}send_proxy_protocol = \"v2\"\n",
        route("who", "/", &format!("tcp://{backend}"))
    ))
    .await
}

/// A WebSocket over a connection that first sends `preamble` (a PROXY header, or nothing).
async fn ws_after(
    addr: SocketAddr,
    preamble: &[u8],
    headers: &[(&str, &str)],
) -> Result<(WsClient, SocketAddr), tokio_tungstenite::tungstenite::Error> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    tcp.write_all(preamble).await.unwrap();
    let mut req = format!("ws://{addr}/").into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().append(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)).await?;
    Ok((ws, local))
}

/// What the backend reported for the session `ws` opened.
async fn seen_by_backend(ws: &mut WsClient) -> String {
    String::from_utf8(next_data(ws).await.expect("the backend's report")).unwrap()
}

/// A PROXY v2 header for TCP over IPv4, written by hand from the specification.
fn proxy_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (source, destination) else {
        panic!("IPv4 only");
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // AF_INET, STREAM
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}

/// Whether the gateway closed `addr`'s connection after `preamble` and an upgrade request,
/// without answering.
async fn closed_without_answer(addr: SocketAddr, preamble: &[u8]) -> bool {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(preamble).await;
    let _ = tcp.write_all(upgrade_request("/", "").as_bytes()).await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn proxy_v1_and_v2_from_a_trusted_source_become_the_client_address() {
    let gw = gateway_reporting_clients(
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.0/8\"]",
        "max_sessions_per_ip = 1",
    )
    .await;
    let v1 = b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 443\r\n";
    let (mut a, _) = ws_after(gw.addr, v1, &[]).await.unwrap();
    assert_eq!(
        seen_by_backend(&mut a).await,
        "203.0.113.7:40001 198.51.100.1:443"
    );
    let source: SocketAddr = "203.0.113.8:40002".parse().unwrap();
    let destination: SocketAddr = "198.51.100.1:443".parse().unwrap();
    let (mut b, _) = ws_after(gw.addr, &proxy_v2(source, destination), &[])
        .await
        .unwrap();
    assert_eq!(
        seen_by_backend(&mut b).await,
        "203.0.113.8:40002 198.51.100.1:443"
    );
    assert_echoes(&mut b, b"after the header").await;

    // Per-address limits count the client the header named, not the balancer: a second
    // session from 203.0.113.7 is over max_sessions_per_ip = 1.
    let again = ws_after(gw.addr, v1, &[]).await;
    assert!(
        matches!(&again, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 429),
        "{again:?}"
    );
    drop((a, b));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_proxy_header_from_an_untrusted_source_is_refused() {
    let gw = gateway_reporting_clients(
        "proxy_protocol = true\ntrusted_proxies = [\"192.0.2.0/24\"]",
        "",
    )
    .await;
    let v1 = b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 443\r\n";
    assert!(closed_without_answer(gw.addr, v1).await);
    let v2 = proxy_v2(
        "203.0.113.7:1".parse().unwrap(),
        "198.51.100.1:2".parse().unwrap(),
    );
    assert!(closed_without_answer(gw.addr, &v2).await);
    expect_metric(
        gw.admin.unwrap(),
        "wsgate_proxy_protocol_refused_total{reason=\"untrusted_header\"}",
        2.0,
    )
    .await;
    // Without a header an untrusted source is a direct client, known by its own address.
    let (mut ws, local) = ws_after(gw.addr, b"", &[]).await.unwrap();
    assert_eq!(
        seen_by_backend(&mut ws).await,
        format!("{local} {}", gw.addr)
    );
    drop(ws);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_trusted_source_without_a_proxy_header_is_refused() {
    let gw = gateway_reporting_clients(
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]",
        "",
    )
    .await;
    assert!(closed_without_answer(gw.addr, b"").await);
    assert!(closed_without_answer(gw.addr, b"PROXY TCP4 garbage here\r\n").await);
    let page = scrape(gw.admin.unwrap()).await;
    assert_eq!(
        metric(
            &page,
            "wsgate_proxy_protocol_refused_total{reason=\"missing_header\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            "wsgate_proxy_protocol_refused_total{reason=\"bad_header\"}"
        ),
        Some(1.0)
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn forwarded_header_is_believed_only_from_trusted_peers() {
    let trusting = gateway_reporting_clients(
        "forwarded_header = \"x-forwarded-for\"\ntrusted_proxies = [\"127.0.0.1\"]",
        "",
    )
    .await;
    // The right-most address our balancer did not add itself; a spoofed left part is ignored.
    let (mut ws, _) = ws_after(
        trusting.addr,
        b"",
        &[("X-Forwarded-For", "6.6.6.6, 198.51.100.9, 127.0.0.1")],
    )
    .await
    .unwrap();
    assert_eq!(
        seen_by_backend(&mut ws).await,
        format!("198.51.100.9:0 {}", trusting.addr)
    );
    drop(ws);
    let (mut ws, _) = ws_after(
        trusting.addr,
        b"",
        &[("X-Forwarded-For", "198.51.100.10:5555")],
    )
    .await
    .unwrap();
    assert_eq!(
        seen_by_backend(&mut ws).await,
        format!("198.51.100.10:5555 {}", trusting.addr)
    );
    drop(ws);
    trusting.stop().await.unwrap();

    let distrusting = gateway_reporting_clients(
        "forwarded_header = \"x-forwarded-for\"\ntrusted_proxies = [\"192.0.2.1\"]",
        "",
    )
    .await;
    let (mut ws, local) = ws_after(
        distrusting.addr,
        b"",
        &[("X-Forwarded-For", "198.51.100.9")],
    )
    .await
    .unwrap();
    assert_eq!(
        seen_by_backend(&mut ws).await,
        format!("{local} {}", distrusting.addr)
    );
    drop(ws);
    distrusting.stop().await.unwrap();
}

#[tokio::test]
async fn a_plain_listener_sends_the_client_socket_address_in_proxy_v2() {
    let gw = gateway_reporting_clients("", "").await;
    // A client's own PROXY header on a listener without proxy_protocol is just bad HTTP.
    let (status, _) = raw_http(
        gw.addr,
        &format!(
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n{}",
            upgrade_request("/", "")
        ),
    )
    .await;
    assert_eq!(status, 400);
    let (mut ws, local) = ws_after(gw.addr, b"", &[]).await.unwrap();
    assert_eq!(
        seen_by_backend(&mut ws).await,
        format!("{local} {}", gw.addr)
    );
    assert_echoes(&mut ws, b"bytes after the header are the client's").await;
    drop(ws);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_header_split_over_segments_is_waited_for_and_a_stalled_one_times_out() {
    let gw = gateway_reporting_clients(
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]",
        "",
    )
    .await;
    // The sender should write the header at once, but a split one still works.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.7 ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tcp.write_all(b"198.51.100.1 40001 443\r\n").await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{}/", gw.addr), MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
    assert_eq!(
        seen_by_backend(&mut ws).await,
        "203.0.113.7:40001 198.51.100.1:443"
    );
    drop(ws);
    gw.stop().await.unwrap();

    // A header that never completes costs its connection slot for header_read_secs only.
    let backend = proxy_reading_backend().await;
    let gw = spawn_gateway(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n\
         trusted_proxies = [\"127.0.0.1\"]\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [timeouts]\nheader_read_secs = 0.3\n\n{}",
        route("who", "/", &format!("tcp://{backend}"))
    ))
    .await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.").await.unwrap();
    let mut buf = [0u8; 16];
    let end = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
    assert!(matches!(end, Ok(Ok(0) | Err(_))), "{end:?}");
    expect_metric(
        gw.admin.unwrap(),
        "wsgate_proxy_protocol_refused_total{reason=\"timeout\"}",
        1.0,
    )
    .await;
    gw.stop().await.unwrap();
}

//! WebSocket clients as a browser would be (tokio-tungstenite): connect, send, read, close.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type WsClient = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Open a WebSocket to `url` with the default client.
pub async fn ws_client(url: &str) -> WsClient {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade succeeds");
    ws
}

/// Open a WebSocket offering `protocols`; returns the client and the selected subprotocol.
pub async fn ws_client_offering(url: &str, protocols: &str) -> (WsClient, Option<String>) {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade succeeds");
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    (ws, chosen)
}

/// The next data message's bytes (text or binary), skipping pings and pongs.
pub async fn next_data(ws: &mut WsClient) -> Option<Vec<u8>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("message in time")?
        {
            Ok(Message::Binary(b)) => return Some(b.to_vec()),
            Ok(Message::Text(t)) => return Some(t.as_bytes().to_vec()),
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => continue,
            Ok(Message::Close(_)) | Err(_) => return None,
        }
    }
}

/// Read data messages until `n` bytes have arrived; returns them.
pub async fn read_bytes(ws: &mut WsClient, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next_data(ws).await {
            Some(b) => out.extend_from_slice(&b),
            None => panic!("stream ended after {} of {n} bytes", out.len()),
        }
    }
    out
}

/// Read until the server's Close arrives; returns its code and reason.
pub async fn expect_close(ws: &mut WsClient) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before Close: {e}"),
            None => panic!("stream ended without Close"),
        }
    }
}

pub async fn send_binary(ws: &mut WsClient, data: &[u8]) {
    ws.send(Message::binary(data.to_vec())).await.expect("send");
}

/// `len` bytes of the deterministic stream used by bulk tests, starting at stream offset `offset`.
/// The period (251) is prime, so a lost, repeated or reordered chunk shows up as a mismatch.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|i| (i % 251) as u8)
        .collect()
}

/// After the server's Close: keep reading so tungstenite sends its reply, and expect the
/// server to end the connection (within 10 s).
pub async fn finish_close(ws: &mut WsClient) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await
    .expect("the server ends the connection after the close handshake");
}

/// Open a WebSocket to `url` with extra request headers; returns the client and the selected
/// subprotocol, or the client's error when the upgrade fails.
pub async fn ws_client_with(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(WsClient, Option<String>), tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().append(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    Ok((ws, chosen))
}

/// Bytes sent, then echoed back through `ws`.
pub async fn assert_echoes(ws: &mut WsClient, data: &[u8]) {
    send_binary(ws, data).await;
    assert_eq!(read_bytes(ws, data.len()).await, data);
}

/// The greeting of the backend a WebSocket to `url` (with `headers`) reaches.
pub async fn greeting_via(url: &str, headers: &[(&str, &str)]) -> String {
    let (mut ws, _) = ws_client_with(url, headers)
        .await
        .unwrap_or_else(|e| panic!("{url}: upgrade failed: {e}"));
    let greeting = next_data(&mut ws).await.expect("the backend's greeting");
    String::from_utf8(greeting).unwrap()
}

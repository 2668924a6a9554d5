//! Virtual hosts: routes chosen by the request's host (exact names, one-label wildcards,
//! case and port ignored, HTTP/2 `:authority`), certificates chosen by SNI on one listener,
//! and `421` when the host and the connection's SNI disagree where that matters.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send an upgrade for `path` with `Host: host` (none when `None`) on `stream`; the answer's
/// status and head, and the stream positioned after the head.
async fn upgrade_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    host: Option<&str>,
) -> (u16, String, RawWs<S>) {
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\n{host}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    // Byte by byte up to the blank line, so nothing of the session is read here.
    let mut head = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
    })
    .await
    .expect("an answer in time");
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, RawWs::from_upgraded(stream))
}

/// Which backend a plain upgrade to `path` with `Host: host` reaches (its greeting), or the
/// answer's status when it is not `101`.
async fn served_by(addr: SocketAddr, path: &str, host: Option<&str>) -> Result<String, u16> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    greeting_of(upgrade_on(stream, path, host).await).await
}

async fn greeting_of<S: AsyncRead + AsyncWrite + Unpin>(
    (status, _, mut ws): (u16, String, RawWs<S>),
) -> Result<String, u16> {
    if status != 101 {
        return Err(status);
    }
    let (_, greeting) = read_message(&mut ws).await;
    Ok(String::from_utf8(greeting).expect("a text greeting"))
}

fn hosted_route(name: &str, path: &str, hosts: &str, backend: SocketAddr) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\npath = \"{path}\"\nhosts = [{hosts}]\n\
         backend = \"tcp://{backend}\"\n"
    )
}

#[tokio::test]
async fn routes_follow_the_host_exact_names_before_wildcards_before_any_host() {
    let exact = greeting_backend("exact").await;
    let wildcard = greeting_backend("wildcard").await;
    let any = greeting_backend("any").await;
    let gw = spawn_gateway(&config_with(&format!(
        "{}{}{}",
        hosted_route("exact", "/", "\"vnc.desk.example\"", exact),
        hosted_route("wildcard", "/", "\"*.desk.example\"", wildcard),
        route("any", "/", &format!("tcp://{any}")),
    )))
    .await;
    let at = |host: &'static str| served_by(gw.addr, "/s", Some(host));
    assert_eq!(at("vnc.desk.example").await.as_deref(), Ok("exact"));
    // Case and port do not matter.
    assert_eq!(at("VNC.Desk.Example:8443").await.as_deref(), Ok("exact"));
    assert_eq!(at("other.desk.example").await.as_deref(), Ok("wildcard"));
    // A wildcard covers exactly one label: not two, not none.
    assert_eq!(at("a.b.desk.example").await.as_deref(), Ok("any"));
    assert_eq!(at("desk.example").await.as_deref(), Ok("any"));
    assert_eq!(at("elsewhere.example").await.as_deref(), Ok("any"));
    // HTTP/1.0 style: no Host at all only reaches routes without hosts.
    assert_eq!(served_by(gw.addr, "/s", None).await.as_deref(), Ok("any"));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_host_only_route_is_not_found_for_other_hosts() {
    let vnc = greeting_backend("vnc").await;
    let gw = spawn_gateway(&config_with(&hosted_route(
        "vnc",
        "/vnc",
        "\"vnc.example\"",
        vnc,
    )))
    .await;
    assert_eq!(
        served_by(gw.addr, "/vnc", Some("vnc.example"))
            .await
            .as_deref(),
        Ok("vnc")
    );
    assert_eq!(
        served_by(gw.addr, "/vnc", Some("mqtt.example")).await,
        Err(404)
    );
    assert_eq!(
        served_by(gw.addr, "/vnc", Some("127.0.0.1:80")).await,
        Err(404)
    );
    gw.stop().await.unwrap();
}

#[test]
fn two_routes_for_the_same_host_and_path_are_a_config_error_naming_both() {
    let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"first\"\npath = \"/a\"\nhosts = [\"x.example\", \"*.example\"]\nbackend = \"builtin:echo\"\n\
         [[route]]\nname = \"second\"\npath = \"/a\"\nhosts = [\"*.EXAMPLE\"]\nbackend = \"builtin:echo\"\n";
    let e = format!("{:#}", wsgate::Config::from_toml(text).unwrap_err());
    assert!(e.contains("\"first\"") && e.contains("\"second\""), "{e}");
    // The same path for different hosts, or an exact name under a wildcard, is fine.
    let ok = text.replace("[\"*.EXAMPLE\"]", "[\"y.example\"]");
    wsgate::Config::from_toml(&ok).expect("different hosts may share a path");
    for bad in [
        "x.example:443",
        "*",
        "a.*.example",
        "exa mple",
        "-x.example",
    ] {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\n\
             hosts = [\"{bad}\"]\nbackend = \"builtin:echo\"\n"
        );
        let e = format!("{:#}", wsgate::Config::from_toml(&text).unwrap_err());
        assert!(e.contains("route[0].hosts[0]"), "{bad}: {e}");
    }
}

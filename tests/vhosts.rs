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

// ---- Certificates by SNI, and 421 ------------------------------------------------------------

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A test CA and the certificates it signs, as PEM files in one folder.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            ca: test_ca("wsgate vhosts test CA"),
        }
    }

    /// A server certificate for `names`, written as `{file}.pem` and `{file}-key.pem`.
    fn leaf(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_file = self.dir.path().join(format!("{file}.pem"));
        let key_file = self.dir.path().join(format!("{file}-key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    fn ca_file(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    /// A client trusting the CA, offering `alpn`; `sni = false` sends no server name.
    fn client(&self, alpn: &[&[u8]], sni: bool) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.enable_sni = sni;
        TlsConnector::from(Arc::new(config))
    }
}

fn toml_path(p: &std::path::Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The certificates of the SNI test listener: `a.example` alone, `*.wild.example`, and the
/// default `default.example`; `tls_extra` goes into `[listener.tls]`.
fn sni_listener(pki: &Pki, tls_extra: &str) -> String {
    let (default_cert, default_key) = pki.leaf("default", &["default.example"]);
    let (a_cert, a_key) = pki.leaf("a", &["a.example"]);
    let (wild_cert, wild_key) = pki.leaf("wild", &["*.wild.example"]);
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[listener.tls]\ncert_file = {}\nkey_file = {}\n\
         {tls_extra}\n\n\
         [[listener.tls.certificates]]\ncert_file = {}\nkey_file = {}\n\n\
         [[listener.tls.certificates]]\ncert_file = {}\nkey_file = {}\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n",
        toml_path(&default_cert),
        toml_path(&default_key),
        toml_path(&a_cert),
        toml_path(&a_key),
        toml_path(&wild_cert),
        toml_path(&wild_key),
    )
}

/// A TLS connection to `addr` asking for `sni` (none when `None`; the certificate is then
/// checked against `default.example`).
async fn tls_to(
    pki: &Pki,
    addr: SocketAddr,
    sni: Option<&str>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.unwrap_or("default.example").to_owned()).unwrap();
    pki.client(alpn, sni.is_some()).connect(name, tcp).await
}

/// The DNS names of the certificate the server presented on `tls`.
fn served_names(tls: &TlsStream<TcpStream>) -> Vec<String> {
    let certs: &[CertificateDer<'_>] = tls.get_ref().1.peer_certificates().expect("a certificate");
    wsgate::tls::certificate_names(&certs[0]).unwrap()
}

#[tokio::test]
async fn each_sni_name_gets_its_certificate_and_clients_without_sni_the_default() {
    let pki = Pki::new();
    let gw = spawn_gateway(&format!(
        "{}{}",
        sni_listener(&pki, ""),
        route("echo", "/", "builtin:echo")
    ))
    .await;
    for (sni, expected) in [
        (Some("a.example"), "a.example"),
        (Some("A.Example"), "a.example"),
        (Some("x.wild.example"), "*.wild.example"),
        (None, "default.example"),
    ] {
        let tls = tls_to(&pki, gw.addr, sni, &[b"http/1.1"])
            .await
            .unwrap_or_else(|e| panic!("{sni:?}: {e}"));
        assert_eq!(served_names(&tls), [expected], "SNI {sni:?}");
    }
    // A name no certificate covers gets the default one, which its client then refuses.
    let e = tls_to(&pki, gw.addr, Some("a.b.wild.example"), &[b"http/1.1"])
        .await
        .expect_err("the default certificate does not cover a.b.wild.example");
    assert!(e.to_string().contains("certificate"), "{e}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn without_sni_refuse_fails_the_handshake_of_clients_without_sni() {
    let pki = Pki::new();
    let gw = spawn_gateway(&format!(
        "{}{}",
        sni_listener(&pki, "without_sni = \"refuse\""),
        route("echo", "/", "builtin:echo")
    ))
    .await;
    assert!(tls_to(&pki, gw.addr, None, &[b"http/1.1"]).await.is_err());
    let tls = tls_to(&pki, gw.addr, Some("a.example"), &[b"http/1.1"])
        .await
        .expect("a client with SNI still gets its certificate");
    assert_eq!(served_names(&tls), ["a.example"]);
    gw.stop().await.unwrap();
}

/// Upgrade `path` with `Host: host` over a TLS connection that asked for `sni`.
async fn over_tls(
    pki: &Pki,
    addr: SocketAddr,
    sni: Option<&str>,
    host: &str,
) -> Result<String, u16> {
    let tls = tls_to(pki, addr, sni, &[b"http/1.1"]).await.expect("TLS");
    greeting_of(upgrade_on(tls, "/s", Some(host)).await).await
}

#[tokio::test]
async fn a_host_that_another_certificate_serves_is_misdirected_421() {
    let pki = Pki::new();
    let a = greeting_backend("a").await;
    let wild = greeting_backend("wild").await;
    let gw = spawn_gateway(&format!(
        "{}{}{}",
        sni_listener(&pki, ""),
        hosted_route("a", "/", "\"a.example\"", a),
        hosted_route("wild", "/", "\"*.wild.example\"", wild),
    ))
    .await;
    let sni_a = Some("a.example");
    assert_eq!(
        over_tls(&pki, gw.addr, sni_a, "a.example").await.as_deref(),
        Ok("a")
    );
    assert_eq!(
        over_tls(&pki, gw.addr, sni_a, "A.EXAMPLE:443")
            .await
            .as_deref(),
        Ok("a")
    );
    // The wildcard's names are another certificate's: not on a connection opened for a.example.
    assert_eq!(
        over_tls(&pki, gw.addr, sni_a, "x.wild.example").await,
        Err(421)
    );
    // One certificate covers both wildcard names: one connection may serve both (HTTP/2
    // coalescing does this), since the listener is not strict without client-certificate routes.
    let sni_x = Some("x.wild.example");
    assert_eq!(
        over_tls(&pki, gw.addr, sni_x, "y.wild.example")
            .await
            .as_deref(),
        Ok("wild")
    );
    assert_eq!(over_tls(&pki, gw.addr, sni_x, "a.example").await, Err(421));
    // Without SNI the default certificate was served: a.example's host is elsewhere.
    assert_eq!(over_tls(&pki, gw.addr, None, "a.example").await, Err(421));
    let page = scrape(gw.admin.unwrap()).await;
    assert!(
        metric(
            &page,
            "wsgate_upgrade_rejections_total{route=\"none\",reason=\"misdirected\"}"
        )
        .is_some_and(|n| n >= 3.0),
        "{page}"
    );
    assert!(
        metric(
            &page,
            "wsgate_certificate_not_after_timestamp_seconds{name=\"a.example\"}"
        )
        .is_some_and(|t| t > unix_now() as f64),
        "{page}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn where_a_route_requires_client_certificates_the_host_must_be_the_sni_name() {
    let pki = Pki::new();
    // One certificate for both names, so only the strict rule can tell them apart.
    let (cert, key) = pki.leaf("both", &["public.example", "secure.example"]);
    let public = greeting_backend("public").await;
    let listener = |strict: &str| {
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[listener.tls]\ncert_file = {}\n\
             key_file = {}\nclient_ca_file = {}\nclient_auth = \"optional\"\n{strict}\n\n\
             [admin]\naddress = \"127.0.0.1:0\"\n\n\
             [[route]]\nname = \"secure\"\npath = \"/\"\nhosts = [\"secure.example\"]\n\
             backend = \"builtin:echo\"\n[route.auth]\nclient_cert_required = true\n\n{}",
            toml_path(&cert),
            toml_path(&key),
            toml_path(&pki.ca_file()),
            hosted_route("public", "/", "\"public.example\"", public),
        )
    };
    let gw = spawn_gateway(&listener("")).await;
    let sni = Some("public.example");
    assert_eq!(
        over_tls(&pki, gw.addr, sni, "public.example")
            .await
            .as_deref(),
        Ok("public")
    );
    // CVE-2018-21246's shape: an unprotected name in the handshake, a protected one in Host.
    assert_eq!(
        over_tls(&pki, gw.addr, sni, "secure.example").await,
        Err(421)
    );
    gw.stop().await.unwrap();

    // Turned off, the same request reaches the route, whose own check refuses it.
    let gw = spawn_gateway(&listener("strict_sni_host = false")).await;
    let status = over_tls(&pki, gw.addr, sni, "secure.example").await;
    assert!(matches!(status, Err(401 | 403)), "{status:?}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn http2_routes_each_stream_by_its_authority() {
    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper::ext::Protocol;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let pki = Pki::new();
    let x = greeting_backend("x").await;
    let y = greeting_backend("y").await;
    let gw = spawn_gateway(&format!(
        "{}{}{}",
        sni_listener(&pki, ""),
        hosted_route("x", "/", "\"x.wild.example\"", x),
        hosted_route("y", "/", "\"y.wild.example\"", y),
    ))
    .await;
    let tls = tls_to(&pki, gw.addr, Some("x.wild.example"), &[b"h2"])
        .await
        .expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
        .await
        .expect("HTTP/2 handshake");
    let (enabled_tx, enabled_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut conn = std::pin::pin!(conn);
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        loop {
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = tick.tick() => {}
            }
            if conn.is_extended_connect_protocol_enabled() {
                let _ = enabled_tx.send(());
                break;
            }
        }
        let _ = conn.await;
    });
    tokio::time::timeout(Duration::from_secs(10), enabled_rx)
        .await
        .expect("SETTINGS in time")
        .expect("extended CONNECT enabled");
    let mut streams = Vec::new();
    for host in ["x.wild.example", "y.wild.example", "a.example"] {
        let mut req = hyper::Request::builder()
            .method(hyper::Method::CONNECT)
            .uri(format!("https://{host}/s"))
            .header("sec-websocket-version", "13")
            .body(Empty::new())
            .unwrap();
        req.extensions_mut()
            .insert(Protocol::from_static("websocket"));
        send.ready().await.unwrap();
        let mut resp = send.send_request(req).await.expect("an answer");
        let status = resp.status().as_u16();
        if status != 200 {
            streams.push(Err(status));
            continue;
        }
        let upgraded = hyper::upgrade::on(&mut resp).await.expect("the stream");
        let mut ws = RawWs::from_upgraded(TokioIo::new(upgraded));
        let (_, greeting) = read_message(&mut ws).await;
        streams.push(Ok(String::from_utf8(greeting).unwrap()));
    }
    // Two names of one certificate on one connection, each to its route; a name of another
    // certificate is misdirected, and the browser opens a connection for it.
    assert_eq!(streams, [Ok("x".to_owned()), Ok("y".to_owned()), Err(421)]);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_renewed_certificate_file_replaces_that_certificate_alone() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wsgate.toml");
    std::fs::write(
        &config,
        format!(
            "{}[reload]\nwatch = true\nwatch_debounce_ms = 50\n\n{}",
            sni_listener(&pki, ""),
            route("echo", "/", "builtin:echo")
        ),
    )
    .unwrap();
    let gw = spawn_gateway_from_file(&config).await;
    let served = |sni: &'static str| {
        let pki = &pki;
        let addr = gw.addr;
        async move {
            let tls = tls_to(pki, addr, Some(sni), &[b"http/1.1"])
                .await
                .expect("TLS");
            tls.get_ref().1.peer_certificates().unwrap()[0]
                .as_ref()
                .to_vec()
        }
    };
    let a_before = served("a.example").await;
    let wild_before = served("x.wild.example").await;
    // Written the way certbot and cert-manager do: the files replaced, nothing else touched.
    pki.leaf("wild", &["*.wild.example"]);
    let renewed = tokio::time::timeout(Duration::from_secs(10), async {
        while served("x.wild.example").await == wild_before {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        renewed.is_ok(),
        "the file watch picked up the wildcard's new files"
    );
    assert_eq!(
        served("a.example").await,
        a_before,
        "a.example's certificate unchanged"
    );
    gw.stop().await.unwrap();
}

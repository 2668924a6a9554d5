//! Automatic certificates against a real ACME server: Debian's `pebble`, its challenge port
//! pointed at the gateway's TLS listener, names resolved to 127.0.0.1 by
//! `pebble-challtestsrv`. The gateway proves each name with TLS-ALPN-01 (or HTTP-01 on a
//! plain listener), serves the issued certificates, keeps them in its state folder, and
//! serves them again after a restart while pebble is stopped.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A TLS connection to `addr` for `name`, verified against `root`.
async fn tls_for(
    addr: SocketAddr,
    name: &str,
    root: &CertificateDer<'static>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    client(roots)
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
}

/// A WebSocket echo over TLS for `name` (SNI and Host), verified against `root`.
async fn echo_over(addr: SocketAddr, name: &str, root: &CertificateDer<'static>) {
    let mut tls = tls_for(addr, name, root).await.expect("verified TLS");
    let request = format!(
        "GET /echo HTTP/1.1\r\nHost: {name}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tls.read(&mut byte).await.unwrap(), 1, "answer cut short");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = RawWs::from_upgraded(tls);
    ws.send(&client_frame(
        frame_bits::FIN | frame_bits::BINARY,
        name.as_bytes(),
    ))
    .await;
    let (_, echoed) = read_message(&mut ws).await;
    assert_eq!(echoed, name.as_bytes());
}

const NAMES: [&str; 2] = ["a.acme.test", "b.acme.test"];

fn gateway_config(port: u16, pki: &Path, pebble_dir: &str, state: &Path) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:{port}\"\n\n[listener.tls]\ncert_file = {}\n\
         key_file = {}\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [acme]\ndirectory_url = \"{pebble_dir}\"\nnames = [\"{}\", \"{}\"]\nstate_dir = {}\n\
         ca_file = {}\nretry_secs = 1\n\n\
         [[route]]\nname = \"echo\"\npath = \"/echo\"\nbackend = \"builtin:echo\"\n",
        toml_path(&pki.join("gateway.pem")),
        toml_path(&pki.join("gateway-key.pem")),
        NAMES[0],
        NAMES[1],
        toml_path(state),
        toml_path(&pki.join("ca.pem")),
    )
}

#[tokio::test]
async fn certificates_from_pebble_are_served_kept_and_served_again_after_a_restart() {
    if !pebble_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca("wsgate acme test CA");
    let (cert, key) = leaf_signed_by(&ca);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let pebble_cert = write(dir.path(), "pebble.pem", &cert);
    let pebble_key = write(dir.path(), "pebble-key.pem", &key);
    write(dir.path(), "gateway.pem", &cert);
    write(dir.path(), "gateway-key.pem", &key);
    let mut trust = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca_file).unwrap() {
        trust.add(c.unwrap()).unwrap();
    }

    // The gateway's TLS port is pebble's TLS-ALPN-01 port: validation is real.
    let port = free_port();
    let mut pebble = Pebble::start(
        dir.path(),
        &pebble_cert,
        &pebble_key,
        (port, free_port()),
        None,
    );
    let root = pebble.root(&trust).await;
    let state = dir.path().join("state");
    let gw = spawn_gateway(&gateway_config(port, dir.path(), &pebble.directory, &state)).await;
    let addr = gw.addr;

    // Until issued, the default certificate (not pebble's) is served.
    for name in NAMES {
        let issued = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                if tls_for(addr, name, &root).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        let log = std::fs::read_to_string(dir.path().join("pebble.log")).unwrap_or_default();
        assert!(
            issued.is_ok(),
            "no certificate for {name} from pebble; its log:\n{log}"
        );
        echo_over(addr, name, &root).await;
    }
    let page = scrape(gw.admin.unwrap()).await;
    assert!(
        metric(&page, "wsgate_acme_orders_total{result=\"issued\"}").is_some_and(|n| n >= 2.0),
        "{page}"
    );
    assert!(
        metric(
            &page,
            "wsgate_certificate_not_after_timestamp_seconds{name=\"a.acme.test\"}"
        )
        .is_some_and(|t| t > unix_now() as f64),
        "{page}"
    );
    // The state folder: the account and each certificate, owner-only.
    use std::os::unix::fs::PermissionsExt;
    for file in [
        "account.json",
        "a.acme.test.pem",
        "a.acme.test-key.pem",
        "b.acme.test-key.pem",
    ] {
        let mode = std::fs::metadata(state.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    gw.stop().await.unwrap();

    // pebble gone, a new gateway: the certificates come from the state folder.
    pebble.stop();
    let gw = spawn_gateway(&gateway_config(0, dir.path(), &pebble.directory, &state)).await;
    let addr = gw.addr;
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        while tls_for(addr, NAMES[1], &root).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "the stored certificate is served after a restart"
    );
    echo_over(addr, NAMES[1], &root).await;
    gw.stop().await.unwrap();
}

/// The certificate served for `name` (its DER), once one chaining to `root` is.
async fn served_certificate(
    addr: SocketAddr,
    name: &str,
    root: &CertificateDer<'static>,
) -> Option<Vec<u8>> {
    let tls = tls_for(addr, name, root).await.ok()?;
    let certs = tls.get_ref().1.peer_certificates()?;
    Some(certs[0].as_ref().to_vec())
}

#[tokio::test]
async fn a_short_lived_certificate_is_renewed_while_a_session_stays_open() {
    if !pebble_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca("wsgate acme renewal test CA");
    let (cert, key) = leaf_signed_by(&ca);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let pebble_cert = write(dir.path(), "pebble.pem", &cert);
    let pebble_key = write(dir.path(), "pebble-key.pem", &key);
    write(dir.path(), "gateway.pem", &cert);
    write(dir.path(), "gateway-key.pem", &key);
    let mut trust = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca_file).unwrap() {
        trust.add(c.unwrap()).unwrap();
    }
    let port = free_port();
    // Twelve-second certificates: renewed about eight seconds after each order.
    let pebble = Pebble::start(
        dir.path(),
        &pebble_cert,
        &pebble_key,
        (port, free_port()),
        Some(12),
    );
    let root = pebble.root(&trust).await;
    let state = dir.path().join("state");
    let gw = spawn_gateway(&gateway_config(port, dir.path(), &pebble.directory, &state)).await;
    let name = NAMES[0];
    let first = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(cert) = served_certificate(gw.addr, name, &root).await {
                return cert;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a first certificate from pebble");

    // A session on the first certificate.
    let mut tls = tls_for(gw.addr, name, &root).await.expect("verified TLS");
    let request = format!(
        "GET /echo HTTP/1.1\r\nHost: {name}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tls.read(&mut byte).await.unwrap(), 1, "answer cut short");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let mut session = RawWs::from_upgraded(tls);

    let renewed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match served_certificate(gw.addr, name, &root).await {
                Some(cert) if cert != first => return cert,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    })
    .await;
    let log = std::fs::read_to_string(dir.path().join("pebble.log")).unwrap_or_default();
    assert!(renewed.is_ok(), "no renewal; pebble's log:\n{log}");
    // The session opened before the renewal carries on.
    session
        .send(&client_frame(
            frame_bits::FIN | frame_bits::BINARY,
            b"still here",
        ))
        .await;
    let (_, echoed) = read_message(&mut session).await;
    assert_eq!(echoed, b"still here");
    echo_over(gw.addr, name, &root).await;
    gw.stop().await.unwrap();
}

/// `challenge = "http-01"`: pebble validates each name over plain HTTP on the gateway's
/// plain listener (`/.well-known/acme-challenge/TOKEN`), and the certificate is served on
/// the TLS listener; a token nobody asked for is 404.
#[tokio::test]
async fn http_01_on_a_plain_listener_gets_a_certificate_served_on_the_tls_one() {
    if !pebble_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca("wsgate acme http-01 test CA");
    let (cert, key) = leaf_signed_by(&ca);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let pebble_cert = write(dir.path(), "pebble.pem", &cert);
    let pebble_key = write(dir.path(), "pebble-key.pem", &key);
    write(dir.path(), "gateway.pem", &cert);
    write(dir.path(), "gateway-key.pem", &key);
    let mut trust = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca_file).unwrap() {
        trust.add(c.unwrap()).unwrap();
    }
    // pebble's TLS-ALPN-01 port is nobody's: only HTTP-01 can succeed.
    let (tls_port, plain_port) = (free_port(), free_port());
    let pebble = Pebble::start(
        dir.path(),
        &pebble_cert,
        &pebble_key,
        (free_port(), plain_port),
        None,
    );
    let root = pebble.root(&trust).await;
    let state = dir.path().join("state");
    let config = gateway_config(tls_port, dir.path(), &pebble.directory, &state).replace(
        "retry_secs = 1\n",
        &format!(
            "retry_secs = 1\nchallenge = \"http-01\"\n\n[[listener]]\naddress = \"127.0.0.1:{plain_port}\"\n"
        ),
    );
    let gw = spawn_gateway(&config).await;
    let tls_addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let plain_addr: SocketAddr = format!("127.0.0.1:{plain_port}").parse().unwrap();

    // A token no order asked for: 404 on the plain listener.
    let mut tcp = TcpStream::connect(plain_addr).await.unwrap();
    tcp.write_all(
        b"GET /.well-known/acme-challenge/nobody-asked HTTP/1.1\r\nHost: a.acme.test\r\n\
          Connection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");

    for name in NAMES {
        let issued = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                if tls_for(tls_addr, name, &root).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        let log = std::fs::read_to_string(dir.path().join("pebble.log")).unwrap_or_default();
        assert!(
            issued.is_ok(),
            "no certificate for {name} over HTTP-01; pebble's log:\n{log}"
        );
        echo_over(tls_addr, name, &root).await;
    }
    let log = std::fs::read_to_string(dir.path().join("pebble.log")).unwrap_or_default();
    assert!(
        log.contains("Attempting to validate w/ HTTP: http://a.acme.test:"),
        "pebble validated over http-01; its log:\n{log}"
    );
    gw.stop().await.unwrap();
}

/// A reload that changes `[acme]` restarts its client: a name added is ordered and served,
/// a name removed stops being served (its clients get the default certificate again), and
/// a name kept keeps its certificate.
#[tokio::test]
async fn a_reload_adds_and_removes_acme_names() {
    if !pebble_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca("wsgate acme reload test CA");
    let (cert, key) = leaf_signed_by(&ca);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let pebble_cert = write(dir.path(), "pebble.pem", &cert);
    let pebble_key = write(dir.path(), "pebble-key.pem", &key);
    write(dir.path(), "gateway.pem", &cert);
    write(dir.path(), "gateway-key.pem", &key);
    let mut trust = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca_file).unwrap() {
        trust.add(c.unwrap()).unwrap();
    }
    let port = free_port();
    let pebble = Pebble::start(
        dir.path(),
        &pebble_cert,
        &pebble_key,
        (port, free_port()),
        None,
    );
    let root = pebble.root(&trust).await;
    let state = dir.path().join("state");
    let both = gateway_config(port, dir.path(), &pebble.directory, &state);
    let only = |name: &str| {
        both.replace(
            &format!("names = [\"{}\", \"{}\"]", NAMES[0], NAMES[1]),
            &format!("names = [\"{name}\"]"),
        )
    };
    let file = dir.path().join("wsgate.toml");
    std::fs::write(&file, only(NAMES[0])).unwrap();
    let gw = spawn_gateway_from_file(&file).await;
    let addr = gw.addr;
    let served = |name: &'static str, root: CertificateDer<'static>| async move {
        tokio::time::timeout(Duration::from_secs(120), async {
            while served_certificate(addr, name, &root).await.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .is_ok()
    };
    assert!(served(NAMES[0], root.clone()).await, "{} issued", NAMES[0]);
    assert!(
        served_certificate(addr, NAMES[1], &root).await.is_none(),
        "{} is not an ACME name yet",
        NAMES[1]
    );
    let first = served_certificate(addr, NAMES[0], &root).await;

    std::fs::write(&file, both.clone()).unwrap();
    let reloaded = gw.reload.reload(wsgate::ops::reload::Trigger::Signal).await;
    assert!(reloaded.is_ok(), "{reloaded:?}");
    assert!(served(NAMES[1], root.clone()).await, "{} added", NAMES[1]);
    assert_eq!(
        served_certificate(addr, NAMES[0], &root).await,
        first,
        "a kept name keeps its certificate"
    );

    std::fs::write(&file, only(NAMES[1])).unwrap();
    let reloaded = gw.reload.reload(wsgate::ops::reload::Trigger::Signal).await;
    assert!(reloaded.is_ok(), "{reloaded:?}");
    assert!(
        served_certificate(addr, NAMES[0], &root).await.is_none(),
        "a removed name gets the default certificate"
    );
    echo_over(addr, NAMES[1], &root).await;
    gw.stop().await.unwrap();
}

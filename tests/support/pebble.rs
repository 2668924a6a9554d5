//! Debian's `pebble` ACME test server and its `pebble-challtestsrv` DNS on loopback, for the
//! tests that obtain real certificates (tests/acme.rs, the browser test on an ACME name).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{free_port, wait_for_listener};

/// A process of this test's, killed when dropped.
pub struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether Debian's pebble is installed; under `CI=true` its absence fails the test.
pub fn pebble_installed() -> bool {
    let found = Command::new("pebble")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "pebble is not installed: apt-get install pebble (.ci/run installs it)"
        );
        eprintln!("SKIPPED: pebble is not installed (apt-get install pebble)");
    }
    found
}

/// pebble and its DNS on loopback, validating TLS-ALPN-01 on `ports.0` and HTTP-01 on
/// `ports.1`.
pub struct Pebble {
    pub directory: String,
    pub management: SocketAddr,
    _dns: Running,
    process: Option<Running>,
}

impl Pebble {
    /// `validity_secs`: the lifetime of the certificates it issues (`None`: pebble's five years).
    pub fn start(
        dir: &Path,
        cert: &Path,
        key: &Path,
        (tls_port, http_port): (u16, u16),
        validity_secs: Option<u64>,
    ) -> Self {
        let dns_port = free_port();
        let dns = Running(
            Command::new("pebble-challtestsrv")
                .args([
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                    "-dns01",
                    &format!("127.0.0.1:{dns_port}"),
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    &format!("127.0.0.1:{}", free_port()),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("pebble-challtestsrv starts"),
        );
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": listen.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        if let Some(secs) = validity_secs {
            config["pebble"]["certificateValidityPeriod"] = secs.into();
        }
        let config_file = dir.join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
        let process = Running(
            Command::new("pebble")
                .arg("-config")
                .arg(&config_file)
                .arg("-dnsserver")
                .arg(format!("127.0.0.1:{dns_port}"))
                // Validation at once instead of after a random sleep of up to 15 s. Its
                // default badNonce rejections (5 % of requests) stay on.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("pebble starts"),
        );
        Self {
            directory: format!("https://{listen}/dir"),
            management,
            _dns: dns,
            process: Some(process),
        }
    }

    /// The root that pebble's issued certificates chain to (it makes a new one each start).
    pub async fn root(&self, trust: &rustls::RootCertStore) -> CertificateDer<'static> {
        wait_for_listener(self.management).await;
        let tcp = TcpStream::connect(self.management).await.unwrap();
        let mut tls = client(trust.clone())
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .expect("TLS to pebble's management port");
        tls.write_all(b"GET /roots/0 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        CertificateDer::pem_slice_iter(&answer)
            .next()
            .expect("a root certificate in the answer")
            .expect("PEM")
    }

    pub fn stop(&mut self) {
        self.process = None;
    }
}

pub fn client(roots: rustls::RootCertStore) -> TlsConnector {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

//! The command line as users type it, run through the real binary: websockify's command
//! lines (positional form, token file, `--web`, `--cert`/`--key`/`--ssl-only`) work unchanged
//! but for the program name, listen addresses in every form, the printed URLs, `config
//! --from-flags`, `--version`, `--help`, completions and the man page.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use support::*;
use tokio::process::{Child, Command};
use tokio::time::timeout;
use tokio_tungstenite::Connector;

/// A running `wsgate` process and the start-up lines it printed.
struct Wsgate {
    child: Child,
    lines: Vec<String>,
}

impl Wsgate {
    /// The first printed URL with this scheme (`ws`, `wss`, `http`), up to the route path.
    fn url(&self, scheme: &str) -> String {
        let prefix = format!("wsgate: {scheme}://");
        let line = self
            .lines
            .iter()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {scheme}:// line in {:?}", self.lines));
        line["wsgate: ".len()..]
            .split_whitespace()
            .next()
            .expect("a URL")
            .to_owned()
    }

    fn addr(&self, scheme: &str) -> SocketAddr {
        let url = self.url(scheme);
        let rest = url.split_once("://").expect("scheme").1;
        rest.split('/')
            .next()
            .expect("authority")
            .parse()
            .expect("IP:PORT")
    }
}

/// Start the binary with `args` and read its stdout until a line contains `until`.
async fn wsgate(args: &[&str], until: &str) -> Wsgate {
    let (child, lines) = start_binary(None, args, until).await;
    Wsgate { child, lines }
}

/// Run the binary to completion (bounded): exit code, stdout, stderr.
async fn wsgate_output(args: &[&str]) -> (Option<i32>, String, String) {
    let out = timeout(
        Duration::from_secs(20),
        Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("wsgate finishes")
    .expect("wsgate runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn stop(mut w: Wsgate) {
    let _ = w.child.start_kill();
    let _ = timeout(Duration::from_secs(10), w.child.wait()).await;
}

#[tokio::test]
async fn websockify_positional_form_bridges_every_path_to_the_tcp_target() {
    let echo = tcp_echo_backend().await;
    let gw = wsgate(&["127.0.0.1:0", &echo.to_string()], "ws://").await;
    let url = gw.url("ws");
    assert!(url.ends_with('/'), "{url}");
    for path in ["websockify", "", "any/path?x=1"] {
        let mut ws = ws_client(&format!("{url}{path}")).await;
        assert_echoes(&mut ws, b"vnc bytes").await;
    }
    stop(gw).await;
}

/// Issue 14: `0.0.0.0` was printed as the URL to use. Also guards: the start-up lines
/// panicked the gateway once stdout was closed (this test stops reading after the first URL).
#[tokio::test]
async fn a_bare_port_listens_everywhere_and_prints_urls_a_user_can_open() {
    let echo = tcp_echo_backend().await;
    let gw = wsgate(&["0", &echo.to_string()], "ws://127.0.0.1:").await;
    let urls: Vec<&String> = gw.lines.iter().filter(|l| l.contains("://")).collect();
    assert!(
        urls.iter().all(|l| !l.contains("0.0.0.0")),
        "a wildcard address was printed: {urls:?}"
    );
    let mut ws = ws_client(&gw.url("ws")).await;
    assert_echoes(&mut ws, b"through loopback").await;
    stop(gw).await;
}

#[tokio::test]
async fn listen_takes_names_and_ipv6_and_admin_takes_a_port() {
    let echo = tcp_echo_backend().await;
    let route = format!("/vnc=tcp://{echo}");
    let gw = wsgate(
        &["--listen", "localhost:0", "--route", &route, "--admin", "0"],
        "admin http://",
    )
    .await;
    assert!(
        gw.url("ws").starts_with("ws://127.0.0.1:"),
        "{:?}",
        gw.lines
    );
    let admin = gw
        .lines
        .iter()
        .find(|l| l.contains("admin http://127.0.0.1:"));
    assert!(admin.is_some(), "{:?}", gw.lines);
    let mut ws = ws_client(&gw.url("ws")).await;
    assert_echoes(&mut ws, b"named").await;
    stop(gw).await;

    // [::1] where this machine has IPv6 loopback.
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let gw = wsgate(&["--listen", "[::1]:0", "--route", &route], "ws://").await;
        assert!(gw.url("ws").starts_with("ws://[::1]:"), "{:?}", gw.lines);
        let mut ws = ws_client(&gw.url("ws")).await;
        assert_echoes(&mut ws, b"v6").await;
        stop(gw).await;
    }
}

#[tokio::test]
async fn websockify_token_file_form_picks_the_target_per_token() {
    let echo = tcp_echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.cfg");
    std::fs::write(&tokens, format!("# desktops\ndesk-42: {echo}\n")).unwrap();
    let tokens = tokens.display().to_string();
    for args in [
        vec![
            "--token-plugin",
            "TokenFile",
            "--token-source",
            &tokens,
            "127.0.0.1:0",
        ],
        vec!["--target-config", &tokens, "127.0.0.1:0"],
    ] {
        let gw = wsgate(&args, "ws://").await;
        let url = gw.url("ws");
        let mut ws = ws_client(&format!("{url}websockify?token=desk-42")).await;
        assert_echoes(&mut ws, b"desk").await;
        let (status, _) = upgrade_with(gw.addr("ws"), "/websockify?token=nope", &[]).await;
        assert_eq!(status, 404);
        stop(gw).await;
    }
}

#[tokio::test]
async fn web_serves_files_with_their_types_and_nothing_outside_the_folder() {
    let echo = tcp_echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("novnc");
    std::fs::create_dir_all(web.join("app")).unwrap();
    std::fs::write(web.join("vnc.html"), "<!doctype html><title>noVNC</title>").unwrap();
    std::fs::write(web.join("app/ui.js"), "export const ui = 1;").unwrap();
    std::fs::write(web.join("app/index.html"), "app index").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "outside the web root").unwrap();
    let web_arg = web.display().to_string();
    let gw = wsgate(
        &["--web", &web_arg, "127.0.0.1:0", &echo.to_string()],
        "http://",
    )
    .await;
    let addr = gw.addr("ws");
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");

    let (status, answer) = raw_http(addr, &get("/vnc.html")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer_header(&answer, "content-type"), Some("text/html"));
    assert!(answer.ends_with("<title>noVNC</title>"), "{answer}");
    let (status, answer) = raw_http(addr, &get("/app/ui.js")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer_header(&answer, "content-type").is_some_and(|t| t.contains("javascript")),
        "{answer}"
    );
    let (status, answer) = raw_http(addr, &get("/app/")).await;
    assert_eq!(
        (status, answer_body(&answer)),
        (200, "app index"),
        "{answer}"
    );
    let (status, _) = raw_http(addr, &get("/missing.html")).await;
    assert_eq!(status, 404);
    for escape in [
        "/../secret.txt",
        "/app/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "//etc/passwd",
    ] {
        let (status, answer) = raw_http(addr, &get(escape)).await;
        assert_ne!(status, 200, "{escape}: {answer}");
        assert!(
            !answer.contains("outside the web root"),
            "{escape}: {answer}"
        );
    }
    // Upgrades still reach the route, on any path.
    let mut ws = ws_client(&format!("{}websockify", gw.url("ws"))).await;
    assert_echoes(&mut ws, b"beside the files").await;
    stop(gw).await;
}

/// Debian's noVNC package, served as websockify users serve it: the page, its ES modules
/// with a JavaScript type (browsers refuse modules served otherwise), its styles.
#[tokio::test]
async fn web_serves_debians_novnc_as_websockify_does() {
    let dir = std::env::var("WSGATE_NOVNC").unwrap_or_else(|_| "/usr/share/novnc".to_owned());
    if !Path::new(&dir).join("vnc.html").is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: noVNC's files are missing from {dir} (.ci/run installs Debian's novnc)"
        );
        eprintln!("skipped: no noVNC in {dir} (apt-get install novnc, or set WSGATE_NOVNC)");
        return;
    }
    let echo = tcp_echo_backend().await;
    let gw = wsgate(
        &["--web", &dir, "127.0.0.1:0", &echo.to_string()],
        "http://",
    )
    .await;
    let addr = gw.addr("ws");
    for (path, kind) in [
        ("/vnc.html", "text/html"),
        ("/app/ui.js", "javascript"),
        ("/core/rfb.js", "javascript"),
        ("/app/styles/base.css", "text/css"),
    ] {
        let (status, answer) = raw_http(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 200, "{path}: {}", &answer[..answer.len().min(300)]);
        let content_type = answer_header(&answer, "content-type").unwrap_or_default();
        assert!(
            content_type.contains(kind),
            "{path}: content-type {content_type:?}"
        );
    }
    // noVNC's own WebSocket path reaches the target.
    let mut ws = ws_client(&format!("{}websockify", gw.url("ws"))).await;
    assert_echoes(&mut ws, b"RFB 003.008\n").await;
    stop(gw).await;
}

/// A certificate signed by a test CA, written as websockify users keep it: one PEM file
/// with the chain and the key, and the same as two files.
/// Returns the CA (and the path of its PEM), the certificate, the key and the combined file.
fn server_pki(dir: &Path) -> (CertificateDer<'static>, String, String, String, String) {
    let ca = test_ca("wsgate cli test CA");
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.is_ca = IsCa::ExplicitNoCa;
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca).unwrap();
    let (cert_file, key_file, combined) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("self.pem"),
    );
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::write(&combined, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let s = |p: std::path::PathBuf| p.display().to_string();
    (
        ca.der().clone(),
        s(ca_file),
        s(cert_file),
        s(key_file),
        s(combined),
    )
}

/// A rustls client trusting only `ca`, without a client certificate.
fn client_config(ca: &CertificateDer<'static>) -> Arc<ClientConfig> {
    wsgate::tls::install_crypto_provider();
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

async fn wss_echo(url: &str, ca: &CertificateDer<'static>) {
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(Connector::Rustls(client_config(ca))),
    )
    .await
    .expect("wss upgrade");
    assert_echoes(&mut ws, b"over tls").await;
}

#[tokio::test]
async fn websockify_tls_flags_cert_key_ssl_only_and_verify_client() {
    let echo = tcp_echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_file, cert, key, combined) = server_pki(dir.path());
    let echo = echo.to_string();
    for args in [
        vec![
            "--cert",
            &cert,
            "--key",
            &key,
            "--ssl-only",
            "127.0.0.1:0",
            &echo,
        ],
        // websockify's default: the key inside the certificate file.
        vec!["--cert", &combined, "127.0.0.1:0", &echo],
    ] {
        let gw = wsgate(&args, "wss://").await;
        wss_echo(&gw.url("wss"), &ca).await;
        // Plain HTTP on the TLS port gets no WebSocket.
        let (status, _) = upgrade_with(gw.addr("wss"), "/", &[]).await;
        assert_ne!(status, 101);
        stop(gw).await;
    }
    // --verify-client: a client without a certificate fails the TLS handshake.
    let args = [
        "--cert",
        &combined,
        "--verify-client",
        "--cafile",
        &ca_file,
        "127.0.0.1:0",
        &echo,
    ];
    let gw = wsgate(&args, "wss://").await;
    let refused = tokio_tungstenite::connect_async_tls_with_config(
        gw.url("wss"),
        None,
        false,
        Some(Connector::Rustls(client_config(&ca))),
    )
    .await;
    assert!(
        refused.is_err(),
        "a client without a certificate was let in"
    );
    stop(gw).await;

    let (code, _, err) = wsgate_output(&["--ssl-only", "127.0.0.1:0", &echo]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--ssl-only needs --cert"), "{err}");
}

#[tokio::test]
async fn quick_mode_mistakes_exit_2_with_a_hint() {
    for (args, hint) in [
        (vec!["6080"], "no target"),
        (
            vec![
                "--token-plugin",
                "TokenRedis",
                "--token-source",
                "x",
                "6080",
            ],
            "only TokenFile",
        ),
        (vec!["--listen", "1", "2", "h:1"], "given twice"),
        (vec!["--listen", "nonsense"], "expected PORT, HOST:PORT"),
    ] {
        let (code, _, err) = wsgate_output(&args).await;
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(hint), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn config_from_flags_prints_a_file_that_runs_the_same_gateway() {
    let echo = tcp_echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let echo = echo.to_string();
    let (code, toml, err) = wsgate_output(&[
        "config",
        "--from-flags",
        "--heartbeat",
        "5",
        "127.0.0.1:0",
        &echo,
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(toml.starts_with("# wsgate configuration"), "{toml}");
    assert!(
        toml.contains(&format!("backend = \"tcp://{echo}\"")),
        "{toml}"
    );
    let file = dir.path().join("wsgate.toml");
    std::fs::write(&file, &toml).unwrap();
    let file = file.display().to_string();
    let (code, out, err) = wsgate_output(&["check", &file]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let gw = wsgate(&["--config", &file], "ws://").await;
    let mut ws = ws_client(&format!("{}websockify", gw.url("ws"))).await;
    assert_echoes(&mut ws, b"from the file").await;
    stop(gw).await;
}

#[tokio::test]
async fn version_help_completions_and_man_page() {
    let (code, version, _) = wsgate_output(&["--version"]).await;
    assert_eq!(code, Some(0));
    assert!(version.starts_with("wsgate 0."), "{version}");
    assert!(version.contains("(git "), "{version}");

    let (code, help, _) = wsgate_output(&["--help"]).await;
    assert_eq!(code, Some(0));
    for form in [
        "tcp://",
        "ws://",
        "wss://",
        "builtin:echo",
        "With no arguments",
        "[LISTEN_HOST:]LISTEN_PORT",
    ] {
        assert!(help.contains(form), "--help lacks {form:?}:\n{help}");
    }

    for (shell, marker) in [
        ("bash", "_wsgate()"),
        ("zsh", "#compdef wsgate"),
        ("fish", "complete -c wsgate"),
    ] {
        let (code, script, err) = wsgate_output(&["completions", shell]).await;
        assert_eq!(code, Some(0), "{err}");
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("token-source"),
            "{shell} completion lacks a flag"
        );
    }

    let (code, man, err) = wsgate_output(&["man"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(man.contains(".TH wsgate"), "{man}");
    assert!(man.contains("ssl\\-only"), "{man}");
}

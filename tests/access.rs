//! Access control over real sockets: the Origin allowlist, bearer tokens from every source,
//! JWTs (HS256, ES256, RS256), client certificates, token-file and claim targets, and the
//! egress allowlist. Each check answers before the backend is dialed, with its own status,
//! body and metric reason.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use serde_json::json;
use tempfile::TempDir;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::Connector;

use support::*;

const TOKEN: &str = "tok-5e1f0c2d9a7b";
const SECRET: &[u8] = b"a shared secret of at least 32 bytes, for tests";

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

/// A path as a TOML string.
fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Write `contents` to `dir/name`.
fn write(dir: &TempDir, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// `[route.auth.jwt]` for HS256 with the test secret, issuer and audience.
fn hs256_auth(dir: &TempDir) -> String {
    let secret = write(dir, "jwt-secret", [SECRET, b"\n"].concat());
    format!(
        "[route.auth.jwt]\nalgorithm = \"HS256\"\nsecret_file = {}\nissuer = \"https://issuer.test\"\naudience = \"wsgate-test\"\n",
        toml_path(&secret)
    )
}

/// Claims the HS256 route accepts, plus `extra`.
fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({
        "sub": "alice",
        "iss": "https://issuer.test",
        "aud": "wsgate-test",
        "exp": unix_now() + 600,
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// ---------------------------------------------------------------------------------------------
// Origin.

#[tokio::test]
async fn origin_allowlist_exact_pattern_and_missing() {
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let gw = spawn_gateway(&config_with(&format!(
        "{}[route.origin]\nallow = [\"https://app.example.com\", \"https://*.example.org\"]\n\n\
         {}[route.origin]\nallow = [\"https://app.example.com\"]\nallow_missing = true\n",
        route("origin_strict", "/strict", &echo),
        route("origin_lenient", "/lenient", &echo),
    )))
    .await;
    for (path, origin, status) in [
        ("/strict", Some("https://app.example.com"), 101),
        ("/strict", Some("https://a.b.example.org"), 101),
        ("/strict", Some("https://example.org"), 403),
        ("/strict", Some("https://app.example.com.evil.net"), 403),
        ("/strict", Some("http://app.example.com"), 403),
        ("/strict", None, 403),
        ("/lenient", None, 101),
        ("/lenient", Some("https://evil.example"), 403),
    ] {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
        let (s, answer) = upgrade_with(gw.addr, path, &headers).await;
        assert_eq!(s, status, "{path} {origin:?}: {answer}");
        if status == 403 {
            assert_eq!(answer_body(&answer), "origin not allowed\n");
        }
    }
    let admin = gw.admin.unwrap();
    expect_metric(admin, &rejections("origin_strict", "origin"), 4.0).await;
    expect_metric(admin, &rejections("origin_lenient", "origin"), 1.0).await;

    let (mut ws, _) = ws_client_with(&gw.url("/strict"), &[("Origin", "https://app.example.com")])
        .await
        .unwrap();
    assert_echoes(&mut ws, b"from an allowed page").await;
    drop(ws);
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Static bearer tokens.

/// A route taking the static token from every source, browsers from one origin allowed.
fn all_sources_route(name: &str, path: &str, backend: &str) -> String {
    format!(
        "{}[route.origin]\nallow = [\"https://app.example.com\"]\nallow_missing = true\n\
         [route.auth]\nbearer_sha256 = [\"{}\"]\ntoken_sources = [\"header\", \"subprotocol\", \"cookie\", \"query\"]\n",
        route(name, path, backend),
        sha256_hex(TOKEN)
    )
}

#[tokio::test]
async fn bearer_token_from_header_cookie_subprotocol_and_query() {
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let gw = spawn_gateway(&config_with(&all_sources_route("bearer_all", "/b", &echo))).await;
    let auth = bearer(TOKEN);
    let cookie = format!("theme=dark; wsgate_token={TOKEN}");
    for (url, headers) in [
        (gw.url("/b"), vec![("Authorization", auth.as_str())]),
        (gw.url("/b"), vec![("Cookie", cookie.as_str())]),
        (gw.url(&format!("/b?access_token={TOKEN}")), vec![]),
    ] {
        let (mut ws, _) = ws_client_with(&url, &headers)
            .await
            .unwrap_or_else(|e| panic!("{url} {headers:?}: {e}"));
        assert_echoes(&mut ws, b"authorized").await;
    }

    // The subprotocol carrier: another offer is still chosen; the token is never echoed.
    let offer = format!("bearer.{TOKEN}, binary");
    let (status, answer) =
        upgrade_with(gw.addr, "/b", &[("Sec-WebSocket-Protocol", offer.as_str())]).await;
    assert_eq!(status, 101, "{answer}");
    assert_eq!(
        answer_header(&answer, "sec-websocket-protocol"),
        Some("binary")
    );
    assert!(!answer.contains(TOKEN), "{answer}");
    let only_token = format!("bearer.{TOKEN}");
    let (status, answer) = upgrade_with(
        gw.addr,
        "/b",
        &[("Sec-WebSocket-Protocol", only_token.as_str())],
    )
    .await;
    assert_eq!(status, 101, "{answer}");
    assert_eq!(
        answer_header(&answer, "sec-websocket-protocol"),
        None,
        "not an offer"
    );
    let (mut ws, chosen) =
        ws_client_with(&gw.url("/b"), &[("Sec-WebSocket-Protocol", offer.as_str())])
            .await
            .unwrap();
    assert_eq!(chosen.as_deref(), Some("binary"));
    assert_echoes(&mut ws, b"browser path").await;
    drop(ws);

    // Missing and wrong tokens: 401 with a challenge; the origin check still comes first.
    let wrong = bearer("tok-wrong");
    for (headers, body) in [
        (vec![], "missing bearer token\n"),
        (vec![("Authorization", wrong.as_str())], "invalid token\n"),
        (
            vec![("Sec-WebSocket-Protocol", "bearer.tok-wrong")],
            "invalid token\n",
        ),
    ] {
        let (status, answer) = upgrade_with(gw.addr, "/b", &headers).await;
        assert_eq!(status, 401, "{headers:?}: {answer}");
        assert_eq!(answer_header(&answer, "www-authenticate"), Some("Bearer"));
        assert_eq!(answer_body(&answer), body);
    }
    let (status, _) = upgrade_with(
        gw.addr,
        "/b",
        &[
            ("Origin", "https://evil.example"),
            ("Cookie", cookie.as_str()),
        ],
    )
    .await;
    assert_eq!(status, 403, "a cookie from another site is refused");
    let admin = gw.admin.unwrap();
    expect_metric(admin, &rejections("bearer_all", "unauthorized"), 3.0).await;
    expect_metric(admin, &rejections("bearer_all", "origin"), 1.0).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn consumed_credentials_are_not_forwarded_to_websocket_backends() {
    let (ws_addr, mut seen) = ws_echo_backend().await;
    let gw = spawn_gateway(&config_with(&all_sources_route(
        "bearer_ws",
        "/w",
        &format!("ws://{ws_addr}/"),
    )))
    .await;

    let offer = format!("bearer.{TOKEN}, binary");
    let (mut ws, chosen) =
        ws_client_with(&gw.url("/w"), &[("Sec-WebSocket-Protocol", offer.as_str())])
            .await
            .unwrap();
    assert_eq!(chosen.as_deref(), Some("binary"), "the backend's choice");
    assert_echoes(&mut ws, b"relayed").await;
    let handshake = seen.recv().await.unwrap();
    assert_eq!(
        handshake.protocols.as_deref(),
        Some("binary"),
        "{handshake:?}"
    );
    drop(ws);

    let (mut ws, _) = ws_client_with(&gw.url(&format!("/w?room=7&access_token={TOKEN}")), &[])
        .await
        .unwrap();
    assert_echoes(&mut ws, b"relayed").await;
    let handshake = seen.recv().await.unwrap();
    assert_eq!(handshake.path, "/?room=7", "{handshake:?}");
    assert_eq!(handshake.protocols, None);
    drop(ws);
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// JWT.

#[tokio::test]
async fn jwt_hs256_claims_and_signature_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let gw = spawn_gateway(&config_with(&format!(
        "{}{}",
        route("jwt_hs", "/", &echo),
        hs256_auth(&dir)
    )))
    .await;
    let now = unix_now();
    let cases = [
        (jwt_hs256(SECRET, &claims(json!({}))), 101, ""),
        (
            jwt_hs256(SECRET, &claims(json!({"exp": now - 3600}))),
            401,
            "token expired\n",
        ),
        (
            jwt_hs256(SECRET, &claims(json!({"nbf": now + 3600}))),
            401,
            "token not yet valid\n",
        ),
        (
            jwt_hs256(SECRET, &claims(json!({"aud": "another-service"}))),
            401,
            "invalid token\n",
        ),
        (
            jwt_hs256(SECRET, &claims(json!({"iss": "https://evil.test"}))),
            401,
            "invalid token\n",
        ),
        (
            jwt_hs256(
                b"a different secret that is also long enough",
                &claims(json!({})),
            ),
            401,
            "invalid token\n",
        ),
    ];
    for (token, status, body) in &cases {
        let auth = bearer(token);
        let (s, answer) = upgrade_with(gw.addr, "/", &[("Authorization", auth.as_str())]).await;
        assert_eq!(s, *status, "{answer}");
        if *status == 401 {
            assert_eq!(answer_body(&answer), *body);
        }
    }
    // The browser path: the JWT as a `bearer.` subprotocol entry.
    let offer = format!("bearer.{}, binary", cases[0].0);
    let (mut ws, chosen) =
        ws_client_with(&gw.url("/"), &[("Sec-WebSocket-Protocol", offer.as_str())])
            .await
            .unwrap();
    assert_eq!(chosen.as_deref(), Some("binary"));
    assert_echoes(&mut ws, b"jwt").await;
    drop(ws);
    expect_metric(
        gw.admin.unwrap(),
        &rejections("jwt_hs", "unauthorized"),
        5.0,
    )
    .await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn jwt_es256_and_rs256_with_public_keys() {
    let dir = tempfile::tempdir().unwrap();
    let es_key = KeyPair::generate().unwrap();
    let es_pub = write(&dir, "es256.pem", es_key.public_key_pem());
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt");
    let rs_private = PrivateKeyDer::from_pem_file(fixtures.join("rs256-private.pem")).unwrap();
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let gw = spawn_gateway(&config_with(&format!(
        "{}[route.auth.jwt]\nalgorithm = \"ES256\"\npublic_key_file = {}\n\n\
         {}[route.auth.jwt]\nalgorithm = \"RS256\"\npublic_key_file = {}\n",
        route("jwt_es", "/es", &echo),
        toml_path(&es_pub),
        route("jwt_rs", "/rs", &echo),
        toml_path(&fixtures.join("rs256-public.pem")),
    )))
    .await;
    let c = json!({"sub": "svc", "exp": unix_now() + 600});
    let es = jwt_es256(&es_key.serialize_der(), &c);
    let rs = jwt_rs256(rs_private.secret_der(), &c);
    for (path, token, status) in [
        ("/es", &es, 101),
        ("/rs", &rs, 101),
        ("/es", &rs, 401),
        ("/rs", &es, 401),
    ] {
        let auth = bearer(token);
        let (s, answer) = upgrade_with(gw.addr, path, &[("Authorization", auth.as_str())]).await;
        assert_eq!(s, status, "{path}: {answer}");
    }
    // A token signed by another ES256 key fails.
    let other = jwt_es256(&KeyPair::generate().unwrap().serialize_der(), &c);
    let auth = bearer(&other);
    let (s, _) = upgrade_with(gw.addr, "/es", &[("Authorization", auth.as_str())]).await;
    assert_eq!(s, 401);
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Client certificates (mTLS).

/// A test CA, a server leaf for 127.0.0.1, and client leaves it issues on demand.
struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    cert_file: PathBuf,
    key_file: PathBuf,
    ca_file: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let ca = test_ca("wsgate access test CA");
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf.signed_by(&key, &ca).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_file = write(&dir, "server.pem", leaf.pem());
        let key_file = write(&dir, "server-key.pem", key.serialize_pem());
        let ca_file = write(&dir, "ca.pem", ca.pem());
        Self {
            dir,
            ca,
            cert_file,
            key_file,
            ca_file,
        }
    }

    /// A `wss` listener asking for client certificates (`client_auth`), plus `extra`.
    fn config(&self, client_auth: &str, extra: &str) -> String {
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[listener.tls]\ncert_file = {}\nkey_file = {}\n\
             client_ca_file = {}\nclient_auth = \"{client_auth}\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n{extra}\n",
            toml_path(&self.cert_file),
            toml_path(&self.key_file),
            toml_path(&self.ca_file),
        )
    }

    /// A client that trusts the CA, presenting a certificate for `cn` (and `email`) if given.
    fn client(&self, identity: Option<(&str, &str)>) -> Arc<ClientConfig> {
        wsgate::tls::install_crypto_provider();
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cn, email)) => {
                let key = KeyPair::generate().unwrap();
                let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
                params.distinguished_name.push(DnType::CommonName, cn);
                params.subject_alt_names = vec![SanType::Rfc822Name(email.try_into().unwrap())];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                let cert = params.signed_by(&key, &self.ca).unwrap();
                let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
                builder
                    .with_client_auth_cert(vec![CertificateDer::from(cert.der().to_vec())], key)
                    .unwrap()
            }
        };
        Arc::new(config)
    }
}

/// Upgrade over `wss` to `path`: `Ok(ws)` on 101, `Err(status)` on an HTTP answer,
/// `Err(0)` when the TLS handshake or connection failed.
async fn wss(addr: SocketAddr, path: &str, config: Arc<ClientConfig>) -> Result<WsClient, u16> {
    match tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://{addr}{path}"),
        None,
        false,
        Some(Connector::Rustls(config)),
    )
    .await
    {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(_) => Err(0),
    }
}

#[tokio::test]
async fn mtls_required_listener_refuses_clients_without_a_certificate() {
    let pki = Pki::new();
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let gw = spawn_gateway(&pki.config("required", &route("mtls_req", "/", &echo))).await;
    let mut ws = wss(
        gw.addr,
        "/",
        pki.client(Some(("alice", "alice@example.com"))),
    )
    .await
    .expect("a certificate from the CA is accepted");
    assert_echoes(&mut ws, b"mutual").await;
    drop(ws);
    assert_eq!(
        wss(gw.addr, "/", pki.client(None)).await.err(),
        Some(0),
        "no certificate, no connection"
    );
    let _ = &pki.dir;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn routes_can_require_a_certificate_and_its_name() {
    let pki = Pki::new();
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let gw = spawn_gateway(&pki.config(
        "optional",
        &format!(
            "{}\n{}[route.auth]\nclient_cert_required = true\n\n{}[route.auth]\nclient_cert_names = [\"alice\", \"carol@example.com\"]\n",
            route("mtls_open", "/open", &echo),
            route("mtls_any", "/any", &echo),
            route("mtls_named", "/named", &echo),
        ),
    ))
    .await;
    let anonymous = pki.client(None);
    let alice = pki.client(Some(("alice", "alice@example.com")));
    let bob = pki.client(Some(("bob", "bob@example.com")));
    let carol = pki.client(Some(("Carol C.", "carol@example.com")));
    for (path, client, expected) in [
        ("/open", &anonymous, 101),
        ("/any", &anonymous, 401),
        ("/named", &anonymous, 401),
        ("/any", &bob, 101),
        ("/named", &bob, 403),
        ("/named", &alice, 101),
        ("/named", &carol, 101),
    ] {
        let got = match wss(gw.addr, path, client.clone()).await {
            Ok(_) => 101,
            Err(status) => status,
        };
        assert_eq!(got, expected, "{path}");
    }
    let admin = gw.admin.unwrap();
    expect_metric(admin, &rejections("mtls_named", "forbidden"), 1.0).await;
    expect_metric(admin, &rejections("mtls_named", "unauthorized"), 1.0).await;
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Targets: token files and claims.

#[tokio::test]
async fn websockify_token_file_selects_the_target_and_follows_edits() {
    let (a, b, c) = (
        greeting_backend("A").await,
        greeting_backend("B").await,
        greeting_backend("C").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(
        &dir,
        "tokens.cfg",
        format!("# noVNC targets\nvnc-a: {a}\n\nvnc-b: {b}\n"),
    );
    let gw = spawn_gateway(&config_with(&format!(
        "[[route]]\nname = \"tokens\"\npath = \"/websockify\"\n[route.target]\ntoken_file = {}\n",
        toml_path(&tokens)
    )))
    .await;
    assert_eq!(
        greeting_via(&gw.url("/websockify?token=vnc-a"), &[]).await,
        "A"
    );
    assert_eq!(
        greeting_via(&gw.url("/websockify?token=vnc-b"), &[]).await,
        "B"
    );

    // Unknown and missing tokens look exactly like an unknown path.
    let (_, unknown_path) = upgrade_with(gw.addr, "/elsewhere", &[]).await;
    for path in [
        "/websockify?token=vnc-z",
        "/websockify",
        "/websockify?token=",
    ] {
        let (status, answer) = upgrade_with(gw.addr, path, &[]).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(answer_body(&answer), answer_body(&unknown_path), "{path}");
    }
    expect_metric(
        gw.admin.unwrap(),
        &rejections("tokens", "unknown_token"),
        3.0,
    )
    .await;

    // An edit takes effect without a restart.
    std::fs::write(&tokens, format!("vnc-a: {a}\nvnc-c: {c}\n")).unwrap();
    assert_eventually!(
        upgrade_with(gw.addr, "/websockify?token=vnc-c", &[])
            .await
            .0
            == 101,
        "the new token works after the edit"
    );
    assert_eq!(
        greeting_via(&gw.url("/websockify?token=vnc-c"), &[]).await,
        "C"
    );
    let (status, _) = upgrade_with(gw.addr, "/websockify?token=vnc-b", &[]).await;
    assert_eq!(status, 404, "a removed token is gone");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn signed_claim_names_the_target() {
    let (a, b) = (greeting_backend("A").await, greeting_backend("B").await);
    let dir = tempfile::tempdir().unwrap();
    let gw = spawn_gateway(&config_with(&format!(
        "[[route]]\nname = \"claims\"\npath = \"/desk\"\n{}[route.target]\njwt_claim = \"wsgate_target\"\n",
        hs256_auth(&dir)
    )))
    .await;
    for (target, greeting) in [(a, "A"), (b, "B")] {
        let token = jwt_hs256(
            SECRET,
            &claims(json!({"wsgate_target": target.to_string()})),
        );
        let auth = bearer(&token);
        assert_eq!(
            greeting_via(&gw.url("/desk"), &[("Authorization", auth.as_str())]).await,
            greeting
        );
    }
    for (extra, body) in [
        (json!({}), "token names no target\n"),
        (
            json!({"wsgate_target": "ws://127.0.0.1:1"}),
            "token names no valid target\n",
        ),
        (json!({"wsgate_target": 5900}), "token names no target\n"),
    ] {
        let auth = bearer(&jwt_hs256(SECRET, &claims(extra)));
        let (status, answer) =
            upgrade_with(gw.addr, "/desk", &[("Authorization", auth.as_str())]).await;
        assert_eq!(status, 403, "{answer}");
        assert_eq!(answer_body(&answer), body);
    }
    // The client cannot name a target itself: an unsigned claim is just an invalid token.
    let forged = jwt_hs256(
        b"the attacker's own secret, long enough",
        &claims(json!({"wsgate_target": a.to_string()})),
    );
    let auth = bearer(&forged);
    let (status, _) = upgrade_with(
        gw.addr,
        "/desk?token=x",
        &[("Authorization", auth.as_str())],
    )
    .await;
    assert_eq!(status, 401);
    expect_metric(gw.admin.unwrap(), &rejections("claims", "forbidden"), 3.0).await;
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Egress.

#[tokio::test]
async fn egress_allowlist_applies_to_every_dial_after_resolution() {
    let (a, b) = (greeting_backend("A").await, greeting_backend("B").await);
    let (ws_addr, _seen) = ws_echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(&dir, "tokens.cfg", format!("ok: {a}\nout: {b}\n"));
    let gw = spawn_gateway(&config_with(&format!(
        "[egress]\nallow = [\"127.0.0.1/32:{}\", \"[::1]:1\"]\n\n{}{}{}{}{}\
         [[route]]\nname = \"eg_tokens\"\npath = \"/t\"\n[route.target]\ntoken_file = {}\n",
        a.port(),
        route("eg_ok", "/ok", &format!("tcp://{a}")),
        route("eg_port", "/port", &format!("tcp://{b}")),
        route(
            "eg_name_ok",
            "/name-ok",
            &format!("tcp://localhost:{}", a.port())
        ),
        route("eg_name", "/name", &format!("tcp://localhost:{}", b.port())),
        route("eg_ws", "/ws", &format!("ws://{ws_addr}/")),
        toml_path(&tokens),
    )))
    .await;
    assert_eq!(greeting_via(&gw.url("/ok"), &[]).await, "A");
    assert_eq!(
        greeting_via(&gw.url("/name-ok"), &[]).await,
        "A",
        "resolved, then allowed"
    );
    assert_eq!(greeting_via(&gw.url("/t?token=ok"), &[]).await, "A");
    for (path, route) in [
        ("/port", "eg_port"),
        ("/name", "eg_name"),
        ("/ws", "eg_ws"),
        ("/t?token=out", "eg_tokens"),
    ] {
        let (status, answer) = upgrade_with(gw.addr, path, &[]).await;
        assert_eq!(status, 403, "{path}: {answer}");
        assert_eq!(answer_body(&answer), "backend address not allowed\n");
        expect_metric(gw.admin.unwrap(), &rejections(route, "egress_denied"), 1.0).await;
    }
    gw.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Credential guessing.

/// Regression (issue 9 item 2): the per-address handshake rate applied after the access and
/// target checks, so static bearer tokens and token-file tokens could be tried at line rate.
/// Failed credentials and unknown tokens now spend a per-address budget
/// (`[limits] auth_failures_per_ip_per_min`, `auth_failure_burst_per_ip`), checked before the
/// credential: an exhausted address gets 429 with `Retry-After`, even with the right token,
/// and the failures are counted in `wsgate_auth_failures_total{route}`.
#[tokio::test]
async fn failed_credentials_spend_a_per_address_budget_checked_before_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let echo = tcp_echo_backend().await;
    let tokens = write(&dir, "tokens.cfg", format!("vnc-a: {echo}\n"));
    let gw = spawn_gateway(&config_with(&format!(
        "[limits]\nauth_failures_per_ip_per_min = 1\nauth_failure_burst_per_ip = 3\n\n\
         {}[route.auth]\nbearer_sha256 = [\"{}\"]\n\n\
         [[route]]\nname = \"guess_tokens\"\npath = \"/websockify\"\n[route.target]\ntoken_file = {}\n\n{}",
        route("guess_bearer", "/b", &format!("tcp://{echo}")),
        sha256_hex(TOKEN),
        toml_path(&tokens),
        route("guess_open", "/open", &format!("tcp://{echo}")),
    )))
    .await;
    let good = bearer(TOKEN);
    // A good token spends nothing.
    for _ in 0..5 {
        let (status, answer) =
            upgrade_with(gw.addr, "/b", &[("Authorization", good.as_str())]).await;
        assert_eq!(status, 101, "{answer}");
    }
    // Three failures across both kinds of credential: a wrong bearer, unknown tokens.
    let wrong = bearer("tok-guess-1");
    let (status, _) = upgrade_with(gw.addr, "/b", &[("Authorization", wrong.as_str())]).await;
    assert_eq!(status, 401);
    for guess in ["/websockify?token=guess-1", "/websockify?token=guess-2"] {
        let (status, _) = upgrade_with(gw.addr, guess, &[]).await;
        assert_eq!(status, 404, "{guess}");
    }
    // The budget is spent: 429 with Retry-After, whatever the credential, on both routes.
    for (path, headers) in [
        ("/b", vec![("Authorization", wrong.as_str())]),
        ("/b", vec![("Authorization", good.as_str())]),
        ("/websockify?token=vnc-a", vec![]),
    ] {
        let (status, answer) = upgrade_with(gw.addr, path, &headers).await;
        assert_eq!(status, 429, "{path} {headers:?}: {answer}");
        let retry: u64 = answer_header(&answer, "retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
    }
    // A route without credentials is not affected.
    let (status, answer) = upgrade_with(gw.addr, "/open", &[]).await;
    assert_eq!(status, 101, "{answer}");

    let admin = gw.admin.unwrap();
    expect_metric(
        admin,
        r#"wsgate_auth_failures_total{route="guess_bearer"}"#,
        1.0,
    )
    .await;
    expect_metric(
        admin,
        r#"wsgate_auth_failures_total{route="guess_tokens"}"#,
        2.0,
    )
    .await;
    expect_metric(admin, &rejections("guess_bearer", "auth_rate_limited"), 2.0).await;
    expect_metric(admin, &rejections("guess_tokens", "auth_rate_limited"), 1.0).await;
    gw.stop().await.unwrap();
}

/// Regression (issue 9 item 2): the budget is on by default; `0` turns it off.
#[tokio::test]
async fn the_auth_failure_budget_is_on_by_default_and_zero_disables_it() {
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let protected = |name: &str| {
        format!(
            "{}[route.auth]\nbearer_sha256 = [\"{}\"]\n",
            route(name, "/", &echo),
            sha256_hex(TOKEN)
        )
    };
    let wrong = bearer("tok-wrong");
    let by_default = spawn_gateway(&config_with(&protected("guess_default"))).await;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let (status, _) =
            upgrade_with(by_default.addr, "/", &[("Authorization", wrong.as_str())]).await;
        statuses.push(status);
    }
    assert_eq!(statuses[0], 401);
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    by_default.stop().await.unwrap();

    let off = spawn_gateway(&config_with(&format!(
        "[limits]\nauth_failures_per_ip_per_min = 0\n{}",
        protected("guess_off")
    )))
    .await;
    for _ in 0..30 {
        let (status, _) = upgrade_with(off.addr, "/", &[("Authorization", wrong.as_str())]).await;
        assert_eq!(status, 401);
    }
    off.stop().await.unwrap();
}

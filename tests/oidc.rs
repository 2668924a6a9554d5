//! JWTs from a real OpenID provider: npm's `oidc-provider` (tests/oidc/provider.mjs) runs on
//! loopback, the gateway finds its keys through discovery or `jwks_url`, and the tokens it
//! issues (client credentials grant, JWT access tokens for a resource indicator) open
//! sessions; key rotation, forged `kid` floods, an unreachable provider, and tokens that must
//! be refused (wrong `aud` or `iss`, expired, `alg: none`, HMAC signed with the public key).
//!
//! Needs `node` and `npm`: the first test runs `npm ci` for tests/oidc/ in
//! `<target>/tmp/oidc-provider`. Without them a test prints why and passes, except under `CI`,
//! where it fails.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wsgate::ops::reload::Trigger;

use support::*;

/// The audience the provider puts in tokens for the resource `urn:wsgate:gateway`.
const AUDIENCE: &str = "urn:wsgate:gateway";
const CLIENT: &str = "wsgate-test:wsgate-test-secret-0123456789abcdef";

/// tests/oidc/ installed with `npm ci` in the target folder, once per test binary; `None`
/// (after saying why) when node or npm is missing outside CI.
fn provider_dir(test: &str) -> Option<&'static Path> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = DIR.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oidc-provider");
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for file in ["package.json", "package-lock.json", "provider.mjs"] {
            std::fs::copy(source.join(file), dir.join(file))
                .map_err(|e| format!("copying tests/oidc/{file}: {e}"))?;
        }
        for tool in ["node", "npm"] {
            let found = std::process::Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                return Err(format!(
                    "no `{tool}` on PATH (Debian: apt-get install nodejs npm)"
                ));
            }
        }
        // `npm ci` again only when the lock file changed since the last install.
        let lock = std::fs::read(dir.join("package-lock.json")).unwrap_or_default();
        let stamp = dir.join("node_modules/.wsgate-lock");
        if std::fs::read(&stamp).ok().as_deref() != Some(&lock[..]) {
            let out = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .output()
                .map_err(|e| format!("running npm ci: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "npm ci in {} failed: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            std::fs::write(&stamp, &lock).map_err(|e| format!("writing the stamp: {e}"))?;
        }
        Ok(dir)
    });
    match result {
        Ok(dir) => Some(dir.as_path()),
        Err(msg) if std::env::var_os("CI").is_some() => {
            panic!("{test}: {msg}; CI must run the OpenID provider tests")
        }
        Err(msg) => {
            eprintln!("SKIPPED {test}: {msg}");
            None
        }
    }
}

/// A running `oidc-provider`; killed when dropped.
struct Provider {
    child: Child,
    issuer: String,
    addr: SocketAddr,
}

impl Provider {
    /// Start the provider (`env`: extra environment, such as `JWKS_MAX_AGE`); `None` when
    /// node is missing outside CI.
    async fn start(test: &str, env: &[(&str, &str)]) -> Option<Self> {
        let dir = provider_dir(test)?;
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(dir)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        // Generous: on a busy two-core machine node loads oidc-provider slowly while other
        // test binaries run (it took over 30 s once).
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .expect("the provider says where it listens within 120 s")
            .expect("reading the provider's stdout")
            .expect("the provider printed a line");
        let info: Value = serde_json::from_str(&line).expect("a JSON line");
        let port = info["port"].as_u64().expect("port") as u16;
        Some(Self {
            child,
            issuer: info["issuer"].as_str().expect("issuer").to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    async fn request(&self, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{headers}\
             Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        raw_http(self.addr, &request).await
    }

    async fn json(&self, method: &str, path: &str) -> Value {
        let (status, answer) = self.request(method, path, "", "").await;
        assert_eq!(status, 200, "{method} {path}: {answer}");
        serde_json::from_str(answer_body(&answer)).expect("JSON")
    }

    /// A JWT access token for `resource` (its `aud`), by the client credentials grant.
    async fn token(&self, resource: &str) -> String {
        let basic = base64::engine::general_purpose::STANDARD.encode(CLIENT);
        let (status, answer) = self
            .request(
                "POST",
                "/token",
                &format!(
                    "Authorization: Basic {basic}\r\n\
                     Content-Type: application/x-www-form-urlencoded\r\n"
                ),
                &format!("grant_type=client_credentials&scope=ws&resource={resource}"),
            )
            .await;
        assert_eq!(status, 200, "token request: {answer}");
        let body: Value = serde_json::from_str(answer_body(&answer)).expect("token JSON");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// Requests to the provider's key set so far.
    async fn jwks_requests(&self) -> u64 {
        self.json("GET", "/test/stats").await["jwks"]
            .as_u64()
            .expect("count")
    }

    /// A new signing key (new `kid`) replaces the old one; returns its `kid`.
    async fn rotate(&self) -> String {
        self.json("POST", "/test/rotate").await["kid"]
            .as_str()
            .expect("kid")
            .to_owned()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A gateway whose route `/` to the built-in echo takes JWTs checked with `jwt` (the body of
/// `[route.auth.jwt]`); no failure budget, so floods reach the key set.
async fn gateway_with_jwt(jwt: &str) -> TestGateway {
    spawn_gateway(&config_with(&format!(
        "[limits]\nauth_failures_per_ip_per_min = 0\n\n{}\n[route.auth.jwt]\n{jwt}\n",
        route("oidc", "/", "builtin:echo")
    )))
    .await
}

/// Discovery from the provider's issuer, `leeway_secs = 0`, and the given cooldown.
fn discovery(provider: &Provider, cooldown_secs: u64) -> String {
    format!(
        "issuer = \"{}\"\naudience = \"{AUDIENCE}\"\nleeway_secs = 0\nrefresh_cooldown_secs = {cooldown_secs}\n",
        provider.issuer
    )
}

/// The status of an upgrade carrying `Authorization: Bearer token`.
async fn upgrade_status(gw: &TestGateway, token: &str) -> u16 {
    upgrade_with(
        gw.addr,
        "/",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
    .0
}

fn header_of(token: &str) -> Value {
    let head = token.split('.').next().expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).expect("base64url")).expect("JSON")
}

/// `token` with its header replaced by `header` (signature kept, so no longer valid).
fn with_header(token: &str, header: &str) -> String {
    let mut parts = token.splitn(2, '.');
    let _ = parts.next();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        parts.next().expect("rest")
    )
}

async fn scrape_gw(gw: &TestGateway) -> String {
    scrape(gw.admin.expect("admin listener")).await
}

#[tokio::test]
async fn provider_tokens_open_sessions_and_survive_key_rotation() {
    let test = "provider_tokens_open_sessions_and_survive_key_rotation";
    let Some(provider) = Provider::start(test, &[]).await else {
        return;
    };
    let gw = gateway_with_jwt(&discovery(&provider, 1)).await;
    // The key set was fetched at start: the first token needs no fetch.
    let fetched = provider.jwks_requests().await;
    assert_eq!(fetched, 1, "one key set fetch at start");
    let token = provider.token(AUDIENCE).await;
    assert_eq!(upgrade_status(&gw, &token).await, 101);
    assert_eq!(
        provider.jwks_requests().await,
        1,
        "a known kid needs no fetch"
    );

    // The provider rotates: a token with the new kid works without a reload.
    let new_kid = provider.rotate().await;
    let rotated = provider.token(AUDIENCE).await;
    assert_eq!(header_of(&rotated)["kid"], new_kid.as_str());
    assert_eventually!(
        upgrade_status(&gw, &rotated).await == 101,
        "a token signed with the rotated key is accepted"
    );
    let page = scrape_gw(&gw).await;
    assert!(
        metric(
            &page,
            r#"wsgate_jwks_refreshes_total{route="oidc",result="ok"}"#
        ) >= Some(2.0),
        "{page}"
    );
    assert_eq!(
        metric(&page, r#"wsgate_jwks_keys{route="oidc"}"#),
        Some(1.0)
    );
    gw.stop().await.unwrap();
    provider.stop().await;
}

#[tokio::test]
async fn a_flood_of_forged_kids_fetches_at_most_once_per_cooldown() {
    let test = "a_flood_of_forged_kids_fetches_at_most_once_per_cooldown";
    let Some(provider) = Provider::start(test, &[]).await else {
        return;
    };
    let cooldown = 3;
    let gw = gateway_with_jwt(&discovery(&provider, cooldown)).await;
    let token = provider.token(AUDIENCE).await;
    // Past the cooldown of the start fetch, so the flood may cause one fetch.
    tokio::time::sleep(Duration::from_secs(cooldown) + Duration::from_millis(200)).await;
    let before = provider.jwks_requests().await;
    let started = Instant::now();
    let flood: Vec<_> = (0..60)
        .map(|i| {
            let forged = with_header(
                &token,
                &format!(r#"{{"alg":"RS256","typ":"at+jwt","kid":"forged-{i}"}}"#),
            );
            let addr = gw.addr;
            tokio::spawn(async move {
                upgrade_with(addr, "/", &[("authorization", &format!("Bearer {forged}"))])
                    .await
                    .0
            })
        })
        .collect();
    for task in flood {
        assert_eq!(task.await.unwrap(), 401, "forged kid refused");
    }
    let after = provider.jwks_requests().await;
    let periods = started.elapsed().as_secs() / cooldown;
    let fetches = after - before;
    assert!(
        (1..=1 + periods).contains(&fetches),
        "{fetches} key set fetches for 60 forged kids in {:?} (cooldown {cooldown} s)",
        started.elapsed()
    );
    // The real token still works, without another fetch.
    assert_eq!(upgrade_status(&gw, &token).await, 101);
    gw.stop().await.unwrap();
    provider.stop().await;
}

#[tokio::test]
async fn keys_stay_while_the_provider_is_unreachable() {
    let test = "keys_stay_while_the_provider_is_unreachable";
    let Some(provider) = Provider::start(test, &[]).await else {
        return;
    };
    let gw = gateway_with_jwt(&discovery(&provider, 1)).await;
    let token = provider.token(AUDIENCE).await;
    assert_eq!(upgrade_status(&gw, &token).await, 101);
    provider.stop().await;

    // An unknown kid makes the gateway try the provider, which is gone.
    let forged = with_header(&token, r#"{"alg":"RS256","kid":"after-the-outage"}"#);
    let admin = gw.admin.unwrap();
    assert_eventually!(
        {
            assert_eq!(upgrade_status(&gw, &forged).await, 401);
            metric(
                &scrape(admin).await,
                r#"wsgate_jwks_refreshes_total{route="oidc",result="error"}"#,
            ) >= Some(1.0)
        },
        "a failed fetch is counted"
    );
    // The last good keys still verify the provider's tokens.
    assert_eq!(upgrade_status(&gw, &token).await, 101);
    let page = scrape(admin).await;
    assert_eq!(
        metric(&page, r#"wsgate_jwks_keys{route="oidc"}"#),
        Some(1.0)
    );
    assert!(
        metric(&page, r#"wsgate_jwks_age_seconds{route="oidc"}"#).is_some(),
        "{page}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn tokens_the_route_must_not_take_are_refused() {
    let test = "tokens_the_route_must_not_take_are_refused";
    let Some(provider) = Provider::start(test, &[]).await else {
        return;
    };
    let gw = gateway_with_jwt(&discovery(&provider, 1)).await;
    let good = provider.token(AUDIENCE).await;
    assert_eq!(upgrade_status(&gw, &good).await, 101);

    // Another audience, signed by the same provider.
    let other = provider.token("urn:wsgate:other").await;
    assert_eq!(upgrade_status(&gw, &other).await, 401, "wrong aud");

    // Expired (a 1 s token, no leeway).
    let short = provider.token("urn:wsgate:short").await;
    let short_route = gateway_with_jwt(&format!(
        "issuer = \"{}\"\naudience = \"urn:wsgate:short\"\nleeway_secs = 0\n",
        provider.issuer
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (status, answer) = upgrade_with(
        short_route.addr,
        "/",
        &[("authorization", &format!("Bearer {short}"))],
    )
    .await;
    assert_eq!(status, 401, "expired: {answer}");

    // `alg: none`, with and without the real kid, and an empty signature.
    let kid = header_of(&good)["kid"].as_str().unwrap().to_owned();
    let claims = good.split('.').nth(1).unwrap();
    for header in [
        format!(r#"{{"alg":"none","kid":"{kid}"}}"#),
        r#"{"alg":"none"}"#.to_owned(),
    ] {
        let none = format!("{}.{claims}.", URL_SAFE_NO_PAD.encode(&header));
        assert_eq!(upgrade_status(&gw, &none).await, 401, "{header}");
    }

    // HS256 with the provider's public key as the secret (algorithm confusion), in the
    // forms an attacker would try: the JWK's JSON and the raw modulus.
    let jwk = provider.json("GET", "/test/public-jwk").await;
    let modulus = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    for secret in [jwk.to_string().into_bytes(), modulus] {
        let input = format!(
            "{}.{claims}",
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#))
        );
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            input.as_bytes(),
        );
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert_eq!(upgrade_status(&gw, &forged).await, 401, "HS256 confusion");
    }
    short_route.stop().await.unwrap();
    gw.stop().await.unwrap();

    // The right keys (jwks_url) but another issuer required: refused.
    let wrong_iss = gateway_with_jwt(&format!(
        "jwks_url = \"{}/jwks\"\nissuer = \"https://id.example.com\"\naudience = \"{AUDIENCE}\"\n",
        provider.issuer
    ))
    .await;
    assert_eq!(upgrade_status(&wrong_iss, &good).await, 401, "wrong iss");
    wrong_iss.stop().await.unwrap();
    // The same keys without an issuer requirement: accepted (so the refusal above was `iss`).
    let any_iss = gateway_with_jwt(&format!(
        "jwks_url = \"{}/jwks\"\naudience = \"{AUDIENCE}\"\n",
        provider.issuer
    ))
    .await;
    assert_eq!(upgrade_status(&any_iss, &good).await, 101);
    any_iss.stop().await.unwrap();
    provider.stop().await;
}

#[tokio::test]
async fn max_age_is_honoured_within_the_configured_bounds() {
    let test = "max_age_is_honoured_within_the_configured_bounds";
    let Some(provider) = Provider::start(test, &[("JWKS_MAX_AGE", "1")]).await else {
        return;
    };
    // max-age=1 raised to refresh_min_secs = 30: no fetch after the start's.
    let bounded = gateway_with_jwt(&format!(
        "{}refresh_min_secs = 30\n",
        discovery(&provider, 1)
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        provider.jwks_requests().await,
        1,
        "max-age raised to the minimum"
    );
    bounded.stop().await.unwrap();
    // With refresh_min_secs = 1 the provider's max-age of 1 s applies.
    let follows = gateway_with_jwt(&format!(
        "{}refresh_min_secs = 1\n",
        discovery(&provider, 1)
    ))
    .await;
    assert_eventually!(
        provider.jwks_requests().await >= 4,
        "the key set is fetched again every max-age"
    );
    follows.stop().await.unwrap();
    provider.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fetches_key_sets_only_when_asked() {
    let test = "check_fetches_key_sets_only_when_asked";
    let Some(provider) = Provider::start(test, &[]).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        config_with(&format!(
            "{}\n[route.auth.jwt]\n{}",
            route("oidc", "/", "builtin:echo"),
            discovery(&provider, 1)
        )),
    )
    .unwrap();
    let check = |fetch: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"));
        cmd.arg("check").arg(&file);
        if fetch {
            cmd.arg("--fetch-keys");
        }
        cmd.output().expect("wsgate runs")
    };
    let fetched = tokio::task::block_in_place(|| check(true));
    let out = String::from_utf8_lossy(&fetched.stdout);
    assert!(fetched.status.success(), "{out}");
    assert!(
        out.contains("route oidc: key set fetched, 1 usable key(s)"),
        "{out}"
    );
    provider.stop().await;
    let offline = tokio::task::block_in_place(|| check(false));
    assert!(
        offline.status.success(),
        "the check stays offline by default"
    );
    let unreachable = tokio::task::block_in_place(|| check(true));
    let err = String::from_utf8_lossy(&unreachable.stderr);
    assert!(!unreachable.status.success());
    assert!(
        err.contains("route oidc") && err.contains("discovery document"),
        "{err}"
    );
}

#[tokio::test]
async fn a_reload_keeps_unchanged_key_sets_and_fetches_changed_ones() {
    let test = "a_reload_keeps_unchanged_key_sets_and_fetches_changed_ones";
    let Some(provider) = Provider::start(test, &[]).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    let write = |jwt: &str| {
        std::fs::write(
            &file,
            config_with(&format!(
                "{}\n[route.auth.jwt]\n{jwt}",
                route("oidc", "/", "builtin:echo")
            )),
        )
        .unwrap()
    };
    write(&discovery(&provider, 1));
    let gw = spawn_gateway_from_file(&file).await;
    assert_eq!(provider.jwks_requests().await, 1);
    gw.reload.reload(Trigger::Api).await.expect("reload");
    assert_eq!(
        provider.jwks_requests().await,
        1,
        "unchanged settings keep the keys"
    );
    let token = provider.token(AUDIENCE).await;
    assert_eq!(upgrade_status(&gw, &token).await, 101);
    // Changed settings: a new key set, fetched before the new config takes requests.
    write(&discovery(&provider, 2));
    gw.reload.reload(Trigger::Api).await.expect("reload");
    assert_eq!(
        provider.jwks_requests().await,
        2,
        "changed settings fetch again"
    );
    assert_eq!(upgrade_status(&gw, &token).await, 101);
    gw.stop().await.unwrap();
    provider.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Browser sign-in: Debian's Chromium through the provider's development login form.

/// The sign-in's steps in the browser (support::browser has the rest).
impl Browser {
    /// The text of `#out` once it is no longer `connecting`, for up to 15 s.
    async fn outcome(&self) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let text = self
                .client()
                .execute(
                    "const e = document.getElementById('out'); return e ? e.textContent : '';",
                    vec![],
                )
                .await
                .map(|v| v.as_str().unwrap_or("").to_owned())
                .unwrap_or_default();
            if !text.is_empty() && text != "connecting" {
                return text;
            }
            if tokio::time::Instant::now() > deadline {
                let url = self.client().current_url().await.map(|u| u.to_string());
                panic!("the page did not report its WebSocket within 15 s (at {url:?})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sign in on the provider's development pages (login form, then consent) as `login`,
    /// until the browser is back at `home`.
    async fn sign_in_at_provider(&self, login: &str, home: &str) {
        use fantoccini::Locator;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut submitted = String::new();
        loop {
            let url = self.client().current_url().await.expect("url").to_string();
            if url.starts_with(home) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let text = self
                    .client()
                    .execute(
                        "return document.body ? document.body.innerText : ''",
                        vec![],
                    )
                    .await
                    .unwrap_or_default();
                panic!("still not back at {home} after the provider's pages (at {url}): {text}");
            }
            // One submit per page: wait for the browser to leave a page it submitted.
            if url == submitted {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let Ok(button) = self
                .client()
                .find(Locator::Css("button[type=submit]"))
                .await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if let Ok(field) = self.client().find(Locator::Css("input[name=login]")).await {
                field.send_keys(login).await.expect("login typed");
                let password = self
                    .client()
                    .find(Locator::Css("input[name=password]"))
                    .await
                    .expect("password field");
                password.send_keys("any").await.expect("password typed");
            }
            button.click().await.expect("submit");
            submitted = url;
        }
    }
}

/// The page the browser opens: a WebSocket to `/desk` (the built-in echo), `#out` says
/// `echo:hello` when it works and `closed` when it does not.
const DESK_PAGE: &str = r#"<!doctype html>
<title>desk</title>
<div id="out">connecting</div>
<script>
  const out = document.getElementById("out");
  const ws = new WebSocket(`ws://${location.host}/desk`);
  ws.onopen = () => ws.send("hello");
  ws.binaryType = "arraybuffer";
  ws.onmessage = (e) => {
    const text = typeof e.data === "string" ? e.data : new TextDecoder().decode(e.data);
    out.textContent = "echo:" + text;
    ws.close();
  };
  ws.onclose = () => { if (out.textContent === "connecting") out.textContent = "closed"; };
</script>
"#;

/// What a sign-in gateway needs on disk: the page, the client secret, the cookie keys.
struct SigninFiles {
    dir: tempfile::TempDir,
}

impl SigninFiles {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("web")).unwrap();
        std::fs::write(dir.path().join("web/desk.html"), DESK_PAGE).unwrap();
        std::fs::write(
            dir.path().join("client-secret"),
            "wsgate-test-secret-0123456789abcdef\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("cookie-keys"),
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
        )
        .unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A gateway on `port` with `[signin]` at `provider`, the page folder, route `/desk` to the
/// built-in echo for the signed-in users `rules` allow, and route `/ops` for group `ops` only.
async fn signin_gateway(
    provider: &Provider,
    files: &SigninFiles,
    port: u16,
    protect_web: bool,
    rules: &str,
) -> TestGateway {
    spawn_gateway(&format!(
        "[[listener]]\naddress = \"127.0.0.1:{port}\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [web]\nroot = {web:?}\n\n\
         [signin]\nissuer = \"{issuer}\"\nclient_id = \"wsgate-test\"\n\
         client_secret_file = {secret:?}\nredirect_url = \"http://127.0.0.1:{port}/.wsgate/callback\"\n\
         cookie_keys_file = {keys:?}\nprotect_web = {protect_web}\n\n\
         {route}\n[route.origin]\nallow = [\"http://127.0.0.1:{port}\"]\n\n\
         [route.auth.signin]\n{rules}\n\n\
         {ops}\n[route.origin]\nallow = [\"http://127.0.0.1:{port}\"]\n\n\
         [route.auth.signin]\nallow_groups = [\"ops\"]\n",
        web = files.path("web"),
        issuer = provider.issuer,
        secret = files.path("client-secret"),
        keys = files.path("cookie-keys"),
        route = route("desk", "/desk", "builtin:echo"),
        ops = route("ops", "/ops", "builtin:echo"),
    ))
    .await
}

/// The status of an upgrade to `/desk` from the gateway's own page, with `cookie`.
async fn desk_upgrade(gw: &TestGateway, cookie: Option<&str>) -> u16 {
    upgrade_to(gw, "/desk", cookie).await
}

/// The status of an upgrade to `path` from the gateway's own page, with `cookie`.
async fn upgrade_to(gw: &TestGateway, path: &str, cookie: Option<&str>) -> u16 {
    let origin = format!("http://{}", gw.addr);
    let mut headers = vec![("origin", origin.as_str())];
    let cookie = cookie.map(|c| format!("wsgate_session={c}"));
    if let Some(c) = &cookie {
        headers.push(("cookie", c.as_str()));
    }
    upgrade_with(gw.addr, path, &headers).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_at_the_provider_and_its_websocket_works_until_sign_out() {
    let test = "a_browser_signs_in_at_the_provider_and_its_websocket_works_until_sign_out";
    let port = free_port();
    let redirect = format!("http://127.0.0.1:{port}/.wsgate/callback");
    let Some(provider) = Provider::start(test, &[("REDIRECT_URI", &redirect)]).await else {
        return;
    };
    let Some(browser) = Browser::start(test, None).await else {
        return;
    };
    let files = SigninFiles::new();
    let gw = signin_gateway(
        &provider,
        &files,
        port,
        false,
        "allow_email_domains = [\"example.test\"]",
    )
    .await;
    let home = format!("http://127.0.0.1:{port}/");
    let page = format!("{home}desk.html");

    // Not signed in: the page's WebSocket is refused.
    browser.client().goto(&page).await.expect("page");
    assert_eq!(
        browser.outcome().await,
        "closed",
        "no session, no WebSocket"
    );
    assert_eq!(desk_upgrade(&gw, None).await, 401);

    // Sign in through the provider's login form, back to the page: the WebSocket works.
    browser
        .client()
        .goto(&format!("{home}.wsgate/signin?return=/desk.html"))
        .await
        .expect("sign-in");
    browser.sign_in_at_provider("alice", &home).await;
    assert_eq!(browser.client().current_url().await.unwrap().as_str(), page);
    let outcome = browser.outcome().await;
    assert_eq!(outcome, "echo:hello", "signed in");

    // The cookie is what the upgrade checks: as the browser holds it, it passes; with one
    // character changed, it is refused.
    let cookie = browser
        .client()
        .get_named_cookie("wsgate_session")
        .await
        .expect("session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Lax)");
    let value = cookie.value().to_owned();
    assert_eq!(desk_upgrade(&gw, Some(&value)).await, 101);
    let mut tampered = value.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(
        desk_upgrade(&gw, Some(&tampered)).await,
        401,
        "tampered cookie"
    );
    // A route whose rules leave this user out: signed in, but not allowed.
    assert_eq!(
        upgrade_to(&gw, "/ops", Some(&value)).await,
        403,
        "not in group ops"
    );

    // Key rotation: a new key in front keeps the cookie working; removing its key ends it.
    let old_key = std::fs::read_to_string(files.path("cookie-keys")).unwrap();
    let new_key = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    std::fs::write(files.path("cookie-keys"), format!("{new_key}\n{old_key}")).unwrap();
    let rotated = signin_gateway(&provider, &files, free_port(), false, "").await;
    assert_eq!(desk_upgrade(&rotated, Some(&value)).await, 101, "rotated");
    rotated.stop().await.unwrap();
    std::fs::write(files.path("cookie-keys"), format!("{new_key}\n")).unwrap();
    let retired = signin_gateway(&provider, &files, free_port(), false, "").await;
    assert_eq!(
        desk_upgrade(&retired, Some(&value)).await,
        401,
        "key removed"
    );
    retired.stop().await.unwrap();
    std::fs::write(files.path("cookie-keys"), old_key).unwrap();

    // The session API names the signed-in user.
    let (_ws, _) = ws_client_with(
        &format!("ws://{}/desk", gw.addr),
        &[
            ("origin", &format!("http://{}", gw.addr)),
            ("cookie", &format!("wsgate_session={value}")),
        ],
    )
    .await
    .expect("a session with the cookie");
    let admin = gw.admin.unwrap();
    assert_eventually!(
        {
            // `Host` names the admin listener, as a browser on it would.
            let (_, answer) = raw_http(
                admin,
                &format!(
                    "GET /api/sessions HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
                ),
            )
            .await;
            let sessions: Value = serde_json::from_str(answer_body(&answer)).unwrap_or(Value::Null);
            sessions["sessions"][0]["user"] == "alice@example.test"
        },
        "the session API names the signed-in user"
    );

    // Sign out: the cookie is gone and the page's WebSocket is refused again.
    browser
        .client()
        .goto(&format!("{home}.wsgate/signout?return=/desk.html"))
        .await
        .expect("sign-out");
    assert_eq!(browser.outcome().await, "closed", "signed out");
    assert!(browser
        .client()
        .get_named_cookie("wsgate_session")
        .await
        .is_err());
    browser.quit().await;
    gw.stop().await.unwrap();
    provider.stop().await;
}

#[tokio::test]
async fn sign_in_rules_protected_pages_and_return_paths() {
    let test = "sign_in_rules_protected_pages_and_return_paths";
    let port = free_port();
    let redirect = format!("http://127.0.0.1:{port}/.wsgate/callback");
    let Some(provider) = Provider::start(test, &[("REDIRECT_URI", &redirect)]).await else {
        return;
    };
    let files = SigninFiles::new();
    let gw = signin_gateway(&provider, &files, port, true, "allow_groups = [\"desk\"]").await;
    // A protected page without a session: to the sign-in, coming back to the page.
    let (status, answer) = raw_http(
        gw.addr,
        "GET /desk.html?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 302, "{answer}");
    assert_eq!(
        answer_header(&answer, "location"),
        Some("/.wsgate/signin?return=%2Fdesk.html%3Fx%3D1")
    );
    // The sign-in sends the browser to the provider with state, nonce and an S256 challenge,
    // and keeps them in a flow cookie; a return path to another site becomes `/`.
    let (status, answer) = raw_http(
        gw.addr,
        "GET /.wsgate/signin?return=//evil.example/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 302, "{answer}");
    let location = answer_header(&answer, "location").unwrap();
    assert!(
        location.starts_with(&format!("{}/auth?", provider.issuer)),
        "{location}"
    );
    for param in [
        "state=",
        "nonce=",
        "code_challenge=",
        "code_challenge_method=S256",
    ] {
        assert!(location.contains(param), "{param} in {location}");
    }
    let flow = answer_header(&answer, "set-cookie").unwrap();
    assert!(flow.starts_with("wsgate_session_flow="), "{flow}");
    assert!(
        flow.contains("HttpOnly") && flow.contains("SameSite=Lax"),
        "{flow}"
    );
    // A callback without this browser's flow cookie, or with another state, is refused.
    let (status, _) = raw_http(
        gw.addr,
        "GET /.wsgate/callback?code=x&state=y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "no flow cookie");
    let flow_value = flow.split(';').next().unwrap();
    let (status, _) = raw_http(
        gw.addr,
        &format!(
            "GET /.wsgate/callback?code=x&state=forged HTTP/1.1\r\nHost: x\r\nCookie: {flow_value}\r\n\
             Connection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 400, "state mismatch");
    gw.stop().await.unwrap();
    provider.stop().await;
}

/// Regression: the sign-in's session cookie went, with every other cookie in the default
/// `forward_headers`, to the WebSocket backends of routes that never checked it, so such a
/// backend held a cookie that signed it in as the user on every `[route.auth.signin]`
/// route. Now neither the session cookie nor the flow cookie reaches a backend; only a
/// route that checks the session cookie and sets `forward_credentials` passes it on.
#[tokio::test]
async fn the_signins_cookies_reach_no_websocket_backend() {
    use wsgate::policy::sealed::CookieKeys;
    use wsgate::policy::signin::Identity;
    let (backend, mut seen) = ws_echo_backend().await;
    let files = SigninFiles::new();
    // No provider is needed: the cookie is sealed here, with the gateway's key.
    let issuer = format!("http://{}", refused_addr().await);
    let origin = "http://app.example";
    let signin_route = |name: &str, path: &str, extra: &str| {
        format!(
            "{}{extra}[route.origin]\nallow = [\"{origin}\"]\n\n[route.auth.signin]\n\n",
            route(name, path, &format!("ws://{backend}/"))
        )
    };
    let gw = spawn_gateway(&config_with(&format!(
        "[signin]\nissuer = \"{issuer}\"\nclient_id = \"wsgate-test\"\n\
         client_secret_file = {secret:?}\n\
         redirect_url = \"http://127.0.0.1:9/.wsgate/callback\"\n\
         cookie_keys_file = {keys:?}\n\n{open}{checked}{forwarded}",
        secret = files.path("client-secret"),
        keys = files.path("cookie-keys"),
        open = route("open", "/open", &format!("ws://{backend}/")),
        checked = signin_route("checked", "/checked", ""),
        forwarded = signin_route("forwarded", "/forwarded", "forward_credentials = true\n"),
    )))
    .await;
    let keys = CookieKeys::load(Path::new(&files.path("cookie-keys"))).unwrap();
    let who = Identity {
        sub: "ann".into(),
        email: Some("ann@example.com".into()),
        email_verified: true,
        name: None,
        groups: vec![],
        exp: u64::MAX / 2,
    };
    let session = keys
        .seal("wsgate_session", &serde_json::to_vec(&who).unwrap())
        .unwrap();
    let cookie = format!("theme=dark; wsgate_session={session}; wsgate_session_flow=f; lang=en");
    let headers = [("Origin", origin), ("Cookie", cookie.as_str())];
    for (path, expected) in [
        ("/open", "theme=dark; lang=en".to_owned()),
        ("/checked", "theme=dark; lang=en".to_owned()),
        (
            "/forwarded",
            format!("theme=dark; wsgate_session={session}; lang=en"),
        ),
    ] {
        let (_ws, _) = ws_client_with(&gw.url(path), &headers)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let got = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("the backend's handshake within 10 s")
            .expect("a handshake");
        assert_eq!(got.cookie.as_deref(), Some(expected.as_str()), "{path}");
    }
    gw.stop().await.unwrap();
}

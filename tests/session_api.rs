//! The admin listener's session API and status page, over real sockets: list, inspect and close
//! sessions (the client sees the code), drain routes (503, then 1001), the bearer token, and the
//! browser console's serving rules on a public listener.

mod support;

use support::*;

async fn echo_route_gateway(extra: &str) -> (TestGateway, std::net::SocketAddr) {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&config_with(&format!(
        "{extra}\n{}",
        route("echo", "/echo", &format!("tcp://{echo}"))
    )))
    .await;
    let admin = gw.admin.expect("admin listener");
    (gw, admin)
}

#[tokio::test]
async fn sessions_are_listed_with_their_route_client_and_bytes() {
    let (gw, admin) = echo_route_gateway("").await;
    let mut ws = ws_client(&gw.url("/echo")).await;
    assert_echoes(&mut ws, b"twelve bytes").await;
    let local = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s.local_addr().unwrap(),
        _ => unreachable!("plain ws"),
    };

    let list = live_sessions(admin).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let s = &list[0];
    assert_eq!(s["route"], "echo");
    assert_eq!(s["client"], local.to_string());
    assert!(s["backend"]
        .as_str()
        .unwrap()
        .starts_with("tcp://127.0.0.1:"));
    assert_eq!(s["bytes_to_backend"], 12);
    assert_eq!(s["bytes_to_client"], 12);
    let one = admin_json(admin, &format!("/api/sessions/{}", s["id"])).await;
    assert_eq!(one["id"], s["id"]);

    let status = admin_json(admin, "/api/status").await;
    assert_eq!(status["sessions"], 1);
    assert_eq!(status["routes"][0]["name"], "echo");
    assert_eq!(status["routes"][0]["sessions"], 1);
    drop(ws);
    assert_eventually!(
        live_sessions(admin).await.is_empty(),
        "session left the registry"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn sessions_page_by_id() {
    let (gw, admin) = echo_route_gateway("").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(ws_client(&gw.url("/echo")).await);
    }
    assert_eventually!(live_sessions(admin).await.len() == 3, "three sessions");
    let page = admin_json(admin, "/api/sessions?limit=2").await;
    assert_eq!(page["sessions"].as_array().unwrap().len(), 2);
    let next = page["next_after"].as_u64().expect("a next page");
    let rest = admin_json(admin, &format!("/api/sessions?limit=2&after={next}")).await;
    assert_eq!(rest["sessions"].as_array().unwrap().len(), 1);
    assert!(rest["next_after"].is_null());
    drop(clients);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn delete_closes_a_session_with_the_code_asked_for_or_1008() {
    let (gw, admin) = echo_route_gateway("").await;
    for (query, code) in [("?code=4001", 4001), ("", 1008)] {
        let mut ws = ws_client(&gw.url("/echo")).await;
        assert_echoes(&mut ws, b"hi").await;
        let id = live_sessions(admin).await[0]["id"].clone();
        let (status, answer) =
            admin_request(admin, "DELETE", &format!("/api/sessions/{id}{query}"), &[]).await;
        assert_eq!(status, 202, "{answer}");
        let (got, reason) = expect_close(&mut ws).await;
        assert_eq!(got, code);
        assert_eq!(reason, "closed by the operator");
        finish_close(&mut ws).await;
        assert_eventually!(live_sessions(admin).await.is_empty(), "session gone");
    }
    let status = admin_json(admin, "/api/status").await;
    assert_eq!(status["closes_by_code"]["4001"], 1, "{status}");
    assert_eq!(status["closes_by_code"]["1008"], 1, "{status}");
    gw.stop().await.unwrap();
}

/// Sessions to a WebSocket backend go through the relay, which takes the same close request.
#[tokio::test]
async fn delete_closes_a_relayed_session_too() {
    let (backend, _seen) = ws_echo_backend().await;
    let gw = spawn_gateway(&config_with(&route(
        "relayed",
        "/ws",
        &format!("ws://{backend}/"),
    )))
    .await;
    let admin = gw.admin.unwrap();
    let mut ws = ws_client(&gw.url("/ws")).await;
    assert_echoes(&mut ws, b"relayed").await;
    let s = &live_sessions(admin).await[0];
    assert_eq!(s["backend"], format!("ws://{backend}/"));
    let (status, _) = admin_request(
        admin,
        "DELETE",
        &format!("/api/sessions/{}?code=4002", s["id"]),
        &[],
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        expect_close(&mut ws).await,
        (4002, "closed by the operator".to_owned())
    );
    gw.stop().await.unwrap();
}

/// The status page's backend column comes from handshakes: failing after a refused dial,
/// ok again once one works.
#[tokio::test]
async fn backend_health_follows_the_handshakes() {
    let dead = refused_addr().await;
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&config_with(&format!(
        "{}\n{}",
        route("dead", "/dead", &format!("tcp://{dead}")),
        route("echo", "/echo", &format!("tcp://{echo}"))
    )))
    .await;
    let admin = gw.admin.unwrap();
    let backend =
        |status: &serde_json::Value, route: usize| status["routes"][route]["backend"].clone();
    assert_eq!(
        backend(&admin_json(admin, "/api/status").await, 0)["state"],
        "unknown"
    );
    for _ in 0..2 {
        let (status, _) = upgrade_with(gw.addr, "/dead", &[]).await;
        assert_eq!(status, 502);
    }
    let mut ws = ws_client(&gw.url("/echo")).await;
    assert_echoes(&mut ws, b"up").await;
    let status = admin_json(admin, "/api/status").await;
    let dead_backend = backend(&status, 0);
    assert_eq!(dead_backend["state"], "failing", "{status}");
    assert_eq!(dead_backend["consecutive_failures"], 2);
    assert_eq!(dead_backend["last_error"], "backend_refused");
    assert_eq!(backend(&status, 1)["state"], "ok", "{status}");
    drop(ws);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_sessions_routes_and_bad_codes_are_refused() {
    let (gw, admin) = echo_route_gateway("").await;
    for (method, path, want) in [
        ("GET", "/api/sessions/999", 404),
        ("DELETE", "/api/sessions/999", 404),
        ("GET", "/api/sessions/not-a-number", 404),
        ("POST", "/api/routes/nope/drain", 404),
        ("GET", "/api/nothing", 404),
        ("PUT", "/api/sessions", 405),
    ] {
        let (status, answer) = admin_request(admin, method, path, &[]).await;
        assert_eq!(status, want, "{method} {path}: {answer}");
    }
    let ws = ws_client(&gw.url("/echo")).await;
    let id = live_sessions(admin).await[0]["id"].clone();
    for bad in ["1006", "1005", "999", "5000", "x"] {
        let (status, _) = admin_request(
            admin,
            "DELETE",
            &format!("/api/sessions/{id}?code={bad}"),
            &[],
        )
        .await;
        assert_eq!(status, 400, "code {bad}");
    }
    // A page on another site may not change state (the browser names it in Origin).
    let (status, _) = admin_request(
        admin,
        "DELETE",
        &format!("/api/sessions/{id}"),
        &[("Origin", "https://elsewhere.example")],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(live_sessions(admin).await.len(), 1);
    drop(ws);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_drained_route_refuses_new_sessions_and_closes_live_ones_with_1001() {
    let (gw, admin) = echo_route_gateway("").await;
    let mut live = ws_client(&gw.url("/echo")).await;
    assert_echoes(&mut live, b"before").await;

    // A long grace: new sessions are refused at once, the live one keeps working.
    let (status, answer) =
        admin_request(admin, "POST", "/api/routes/echo/drain?grace_secs=3600", &[]).await;
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = upgrade_with(gw.addr, "/echo", &[]).await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer_body(&answer).contains("draining"), "{answer}");
    assert_echoes(&mut live, b"during the grace").await;
    let status_page = admin_json(admin, "/api/status").await;
    assert_eq!(status_page["routes"][0]["draining"], true);

    // Reopened, then drained again with no grace: the live session gets 1001 now.
    let (status, _) = admin_request(admin, "DELETE", "/api/routes/echo/drain", &[]).await;
    assert_eq!(status, 200);
    let mut again = ws_client(&gw.url("/echo")).await;
    assert_echoes(&mut again, b"open again").await;
    let (status, _) =
        admin_request(admin, "POST", "/api/routes/echo/drain?grace_secs=0", &[]).await;
    assert_eq!(status, 202);
    for ws in [&mut live, &mut again] {
        let (code, reason) = expect_close(ws).await;
        assert_eq!((code, reason.as_str()), (1001, "route drained"));
        finish_close(ws).await;
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn the_api_and_pages_need_the_admin_token_when_one_is_set() {
    let digest = sha256_hex("s3cret-admin");
    let toml = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\
         bearer_sha256 = \"{digest}\"\n\n{}",
        route("echo", "/echo", "builtin:echo")
    );
    let gw = spawn_gateway(&toml).await;
    let admin = gw.admin.unwrap();
    for path in [
        "/",
        "/assets/status.js",
        "/api/sessions",
        "/api/config",
        "/api/status",
    ] {
        let (status, answer) = admin_request(admin, "GET", path, &[]).await;
        assert_eq!(status, 401, "{path}: {answer}");
        assert_eq!(answer_header(&answer, "www-authenticate"), Some("Bearer"));
        let (status, _) =
            admin_request(admin, "GET", path, &[("Authorization", "Bearer wrong")]).await;
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, answer) = admin_request(
            admin,
            "GET",
            path,
            &[("Authorization", "Bearer s3cret-admin")],
        )
        .await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    let (status, _) = admin_request(admin, "POST", "/api/routes/echo/drain", &[]).await;
    assert_eq!(status, 401, "no drain without the token");
    // Scrapers and probes stay open.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let (status, _) = admin_request(admin, "GET", path, &[]).await;
        assert_eq!(status, 200, "{path}");
    }
    // A browser trades `?token=` for a cookie, then the page works without the header.
    let (status, answer) = admin_request(admin, "GET", "/?token=s3cret-admin", &[]).await;
    assert_eq!(status, 303, "{answer}");
    let cookie = answer_header(&answer, "set-cookie").expect("cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let pair = cookie.split(';').next().unwrap();
    let (status, _) = admin_request(admin, "GET", "/api/status", &[("Cookie", pair)]).await;
    assert_eq!(status, 200);
    let (status, _) = admin_request(admin, "GET", "/?token=nope", &[]).await;
    assert_eq!(status, 401);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn pages_carry_strict_headers_and_the_config_has_no_secrets() {
    let (gw, admin) = echo_route_gateway("").await;
    let (status, answer) = admin_request(admin, "GET", "/", &[]).await;
    assert_eq!(status, 200);
    let csp = answer_header(&answer, "content-security-policy").expect("CSP");
    // Scripts from this listener only, never inline (inline styles are xterm.js's cells).
    let script_src = csp
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("script-src"))
        .expect("a script-src directive");
    assert_eq!(script_src, "script-src 'self'", "{csp}");
    assert_eq!(
        answer_header(&answer, "x-content-type-options"),
        Some("nosniff")
    );
    let (_, answer) = admin_request(admin, "GET", "/api/sessions", &[]).await;
    assert_eq!(answer_header(&answer, "cache-control"), Some("no-store"));
    let config = admin_json(admin, "/api/config").await;
    assert_eq!(config["route"][0]["name"], "echo", "{config}");
    gw.stop().await.unwrap();
}

/// The console is opt-in per listener, answers plain GETs at `/`, and never takes an upgrade
/// from a route on `/`.
#[tokio::test]
async fn the_console_serves_plain_gets_and_leaves_upgrades_to_the_routes() {
    let echo = tcp_echo_backend().await;
    let toml = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nconsole = true\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n\n{}",
        route("root", "/", &format!("tcp://{echo}"))
    );
    let config = wsgate::Config::from_toml(&toml).unwrap();
    let gateway = wsgate::Gateway::bind(config).await.unwrap();
    let urls = gateway.public_urls();
    let (with, without) = (urls[0].0, urls[1].0);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(gateway.run(shutdown.clone()));

    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (status, page) = raw_http(with, &get("/")).await;
    assert_eq!(status, 200, "{page}");
    assert!(answer_body(&page).contains("wsgate console"));
    let (status, routes) = raw_http(with, &get("/_wsgate/routes.json")).await;
    assert_eq!(status, 200);
    assert_eq!(answer_body(&routes), r#"[{"path":"/","prefix":true}]"#);
    // The route on `/` still gets every upgrade, on both listeners.
    for addr in [with, without] {
        let mut ws = ws_client(&format!("ws://{addr}/")).await;
        assert_echoes(&mut ws, b"through the root route").await;
    }
    // Without the console, a plain GET is the route's answer: not an upgrade.
    let (status, _) = raw_http(without, &get("/")).await;
    assert_eq!(status, 400);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

//! Hardening of what surrounds the sessions, each test named after the defect it guards:
//! static files (streamed under a cap, no off-site redirect, `nosniff`, no symlink out of the
//! root), the admin listener (`Host` names, reload behind the token, backend URL secrets
//! redacted), a half-written config file, and active checks that cannot undo an ejection.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::time::{timeout, Instant};

use support::*;

/// A folder with `app/index.html`, `page.html` and `secret.txt` beside it (outside).
fn web_folder() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(root.join("app")).unwrap();
    std::fs::write(root.join("app/index.html"), "app index").unwrap();
    std::fs::write(root.join("page.html"), "<p>page</p>").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "outside the web root").unwrap();
    (dir, root)
}

fn web_config(root: &Path, extra: &str) -> String {
    config_with(&format!(
        "{}\n[web]\nroot = \"{}\"\n{extra}\n",
        route("e", "/ws", "builtin:echo"),
        root.display()
    ))
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

/// Open redirect: `GET //app` answered `307 Location: //app/`, which a browser reads as
/// `http://app/`; every folder of the web root became an off-site redirect.
#[tokio::test]
async fn web_redirect_never_leaves_the_gateways_origin() {
    let (_dir, root) = web_folder();
    let gw = spawn_gateway(&web_config(&root, "")).await;
    for path in ["//app", "//app/", "/\\app", "/%5capp", "//app/index.html"] {
        let (status, answer) = raw_http(gw.addr, &get(path)).await;
        let location = answer_header(&answer, "location").unwrap_or("");
        assert!(
            !location.starts_with("//") && !location.starts_with("/\\"),
            "{path}: {answer}"
        );
        assert!(!(300..400).contains(&status), "{path}: {answer}");
    }
    // The folder redirect itself still works, on this origin.
    let (status, answer) = raw_http(gw.addr, &get("/app")).await;
    assert_eq!(status, 307, "{answer}");
    assert_eq!(answer_header(&answer, "location"), Some("/app/"));
    gw.stop().await.unwrap();
}

/// Static files carried no `X-Content-Type-Options: nosniff`, so a browser could sniff an
/// uploaded text file into a script or page.
#[tokio::test]
async fn web_files_carry_nosniff() {
    let (_dir, root) = web_folder();
    let gw = spawn_gateway(&web_config(&root, "")).await;
    for path in ["/page.html", "/app/", "/missing"] {
        let (_, answer) = raw_http(gw.addr, &get(path)).await;
        assert_eq!(
            answer_header(&answer, "x-content-type-options"),
            Some("nosniff"),
            "{path}: {answer}"
        );
    }
    gw.stop().await.unwrap();
}

/// Symlinks inside the web root were followed out of it: a link to `../secret.txt` (or to
/// a folder outside) served what lies outside the root.
#[cfg(unix)]
#[tokio::test]
async fn web_symlink_out_of_the_root_is_not_followed() {
    let (dir, root) = web_folder();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
    std::os::unix::fs::symlink(root.join("page.html"), root.join("inside.html")).unwrap();
    let gw = spawn_gateway(&web_config(&root, "")).await;
    for path in ["/leak.txt", "/up/secret.txt"] {
        let (status, answer) = raw_http(gw.addr, &get(path)).await;
        assert_eq!(status, 404, "{path}: {answer}");
        assert!(!answer.contains("outside the web root"), "{path}: {answer}");
    }
    // A link that stays inside is served.
    let (status, answer) = raw_http(gw.addr, &get("/inside.html")).await;
    assert_eq!((status, answer_body(&answer)), (200, "<p>page</p>"));
    gw.stop().await.unwrap();
    // Configured, links out are followed.
    let gw = spawn_gateway(&web_config(&root, "follow_external_symlinks = true")).await;
    let (status, answer) = raw_http(gw.addr, &get("/leak.txt")).await;
    assert_eq!(
        (status, answer_body(&answer)),
        (200, "outside the web root")
    );
    gw.stop().await.unwrap();
}

/// The real binary, started with `args`; its stdout lines up to one containing `until`.
async fn start_wsgate(args: &[&str], until: &str) -> (Child, Vec<String>) {
    start_binary(None, args, until).await
}

/// The address in a start-up line `wsgate: http://IP:PORT/ -> …`.
fn printed_addr(lines: &[String], prefix: &str) -> SocketAddr {
    let line = lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}"));
    line[prefix.len()..]
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// The resident memory of process `pid`, in bytes (`VmRSS` in /proc/PID/status).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS line")
        * 1024
}

/// A GET of `path` from a socket with a small receive buffer that reads the status line
/// and then nothing more.
async fn non_reading_get(addr: SocketAddr, path: &str) -> (TcpStream, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 12];
    timeout(Duration::from_secs(20), s.read_exact(&mut head))
        .await
        .expect("the status line in time")
        .expect("the status line");
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// Static files were read whole into memory per request (up to 16 MiB), and clients that
/// did not read pinned them: one client with 21 connections pinned 1.5 GiB with an 8 MiB
/// file. Now files stream in small pieces and `[web] max_responses` caps the answers in
/// flight; the answer past the cap is a `503`. The gateway's resident memory, with every
/// slot held by a client that does not read an 8 MiB file, stays far below one copy per
/// client.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn web_files_are_streamed_and_clients_that_do_not_read_pin_little_memory() {
    const CLIENTS: usize = 32;
    const FILE: usize = 8 * 1024 * 1024;
    let (dir, root) = web_folder();
    std::fs::write(root.join("big.bin"), vec![0x5a; FILE]).unwrap();
    let file = dir.path().join("wsgate.toml");
    std::fs::write(
        &file,
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\n{}\n[web]\nroot = \"{}\"\n",
            route("e", "/ws", "builtin:echo"),
            root.display()
        ),
    )
    .unwrap();
    let (mut child, lines) = start_wsgate(&["--config", file.to_str().unwrap()], "files in").await;
    let pid = child.id().expect("a pid");
    let addr = printed_addr(&lines, "wsgate: http://");
    let before = rss_bytes(pid);

    let mut held = Vec::new();
    for _ in 0..CLIENTS {
        let (s, head) = non_reading_get(addr, "/big.bin").await;
        assert_eq!(
            head, "HTTP/1.1 200",
            "every answer within the cap is served"
        );
        held.push(s);
    }
    // Let the gateway fill whatever it would buffer, then take the peak of a few samples.
    let mut peak = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_bytes(pid));
    }
    let grown = peak.saturating_sub(before);
    eprintln!(
        "RSS {} MiB before, peak {} MiB with {CLIENTS} clients not reading",
        before / (1024 * 1024),
        peak / (1024 * 1024)
    );
    // Buffered whole, 32 answers would hold 256 MiB; streamed they hold a piece each.
    assert!(
        grown < (CLIENTS * FILE / 4) as u64,
        "RSS grew by {} MiB with {CLIENTS} clients not reading an 8 MiB file",
        grown / (1024 * 1024)
    );
    drop(held);
    let _ = child.start_kill();
    let _ = timeout(Duration::from_secs(10), child.wait()).await;
}

/// Static responses were not counted against any limit: every client that did not read
/// held a file in memory. Now `[web] max_responses` caps the answers in flight (`503` past
/// it), and a slot comes back when its client goes.
#[tokio::test]
async fn web_answers_in_flight_are_capped_by_max_responses() {
    let (_dir, root) = web_folder();
    std::fs::write(root.join("big.bin"), vec![0x5a; 8 * 1024 * 1024]).unwrap();
    let gw = spawn_gateway(&web_config(&root, "max_responses = 2")).await;
    let (a, head_a) = non_reading_get(gw.addr, "/big.bin").await;
    let (b, head_b) = non_reading_get(gw.addr, "/big.bin").await;
    assert_eq!(
        (head_a.as_str(), head_b.as_str()),
        ("HTTP/1.1 200", "HTTP/1.1 200")
    );
    let (status, answer) = raw_http(gw.addr, &get("/page.html")).await;
    assert_eq!(status, 503, "past [web] max_responses: {answer}");
    assert_eq!(answer_header(&answer, "retry-after"), Some("1"));
    drop((a, b));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = raw_http(gw.addr, &get("/page.html")).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.stop().await.unwrap();
}

/// A request to the admin listener carrying `host` in `Host`.
async fn admin_with_host(
    admin: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    extra: &str,
) -> (u16, String) {
    raw_http(
        admin,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n"
        ),
    )
    .await
}

/// DNS rebinding: the admin listener never checked `Host`, and its same-origin check
/// compared `Origin` with `Host`, so a page on `rebind.attacker.example` (now resolving to
/// 127.0.0.1) read `/api/config` and `/api/sessions`, closed a session and drained a route.
#[tokio::test]
async fn admin_refuses_a_rebound_host_and_cross_origin_changes() {
    let gw = spawn_gateway(&config_with(&route("e", "/", "builtin:echo"))).await;
    let admin = gw.admin.unwrap();
    let port = admin.port();
    let evil = format!("rebind.attacker.example:{port}");
    for (method, path) in [
        ("GET", "/api/config"),
        ("GET", "/api/sessions"),
        ("GET", "/"),
        ("POST", "/api/routes/e/drain"),
        ("DELETE", "/api/sessions/1"),
        ("POST", "/reload"),
    ] {
        let (status, answer) = admin_with_host(admin, method, path, &evil, "").await;
        assert_eq!(status, 421, "{method} {path}: {answer}");
    }
    // The listener's own names are served.
    for host in [admin.to_string(), format!("localhost:{port}")] {
        let (status, answer) = admin_with_host(admin, "GET", "/api/config", &host, "").await;
        assert_eq!(status, 200, "{host}: {answer}");
    }
    // Scrapers and probes reach /metrics by any name.
    let (status, _) = admin_with_host(admin, "GET", "/metrics", "prometheus-target", "").await;
    assert_eq!(status, 200);
    // A state change from another origin is refused even with a good Host.
    let (status, answer) = admin_with_host(
        admin,
        "POST",
        "/api/routes/e/drain",
        &admin.to_string(),
        "Origin: https://evil.example\r\n",
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    gw.stop().await.unwrap();

    // A name the operator lists is served too (a proxy, a DNS name for the admin port).
    let gw = spawn_gateway(&config_with(&route("e", "/", "builtin:echo")).replace(
        "[admin]\naddress = \"127.0.0.1:0\"\n",
        "[admin]\naddress = \"127.0.0.1:0\"\nallowed_hosts = [\"gw-admin.internal\"]\n",
    ))
    .await;
    let admin = gw.admin.unwrap();
    let host = format!("gw-admin.internal:{}", admin.port());
    let (status, answer) = admin_with_host(admin, "GET", "/api/config", &host, "").await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = admin_with_host(admin, "GET", "/api/config", "other.internal", "").await;
    assert_eq!(status, 421);
    gw.stop().await.unwrap();
}

/// `POST /reload` needed no token and had no Origin check, even with `[admin]
/// bearer_sha256` set: any local process or page could make the gateway reload.
#[tokio::test]
async fn reload_requires_the_admin_token_and_the_same_origin() {
    let token = "admin-token-1";
    let gw = spawn_gateway(&config_with(&route("e", "/", "builtin:echo")).replace(
        "[admin]\naddress = \"127.0.0.1:0\"\n",
        &format!(
            "[admin]\naddress = \"127.0.0.1:0\"\nbearer_sha256 = \"{}\"\n",
            sha256_hex(token)
        ),
    ))
    .await;
    let admin = gw.admin.unwrap();
    let (status, answer) = admin_request(admin, "POST", "/reload", &[]).await;
    assert_eq!(status, 401, "{answer}");
    let bearer = format!("Bearer {token}");
    let (status, answer) = admin_request(
        admin,
        "POST",
        "/reload",
        &[
            ("Authorization", &bearer),
            ("Origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) =
        admin_request(admin, "POST", "/reload", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200, "{answer}");
    gw.stop().await.unwrap();
}

/// A secret in a backend URL's query (`?api_key=…`) appeared unredacted in `/api/config`
/// and in the start-up lines, although query values are said to be redacted.
#[tokio::test]
async fn backend_url_query_secret_is_redacted_in_the_api_and_start_up_lines() {
    let secret = "s3cret-api-key";
    let backend = format!("ws://127.0.0.1:9/feed?api_key={secret}&v=2");
    let gw = spawn_gateway(&config_with(&route("feed", "/feed", &backend))).await;
    let config = admin_json(gw.admin.unwrap(), "/api/config")
        .await
        .to_string();
    assert!(!config.contains(secret), "{config}");
    assert!(config.contains("api_key=<redacted>"), "{config}");
    gw.stop().await.unwrap();

    let route_flag = format!("/feed={backend}");
    let (mut child, lines) = start_wsgate(
        &["--listen", "127.0.0.1:0", "--route", &route_flag],
        "/feed",
    )
    .await;
    let all = lines.join("\n");
    assert!(!all.contains(secret), "{all}");
    assert!(all.contains("api_key=<redacted>"), "{all}");
    let _ = child.start_kill();
    let _ = timeout(Duration::from_secs(10), child.wait()).await;
}

/// A half-written config file failed open: the watcher reloaded after its quiet time, and
/// a file rewritten in place by a writer that paused longer, cut before `[route.auth]`, was
/// still valid, so the route ran without authentication until the rest arrived.
#[tokio::test]
async fn half_written_config_never_serves_a_route_without_its_auth() {
    const QUIET_MS: u64 = 100;
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    let head = config_with(&format!(
        "[reload]\nwatch_debounce_ms = {QUIET_MS}\n\n[limits]\nauth_failures_per_ip_per_min = 0\n\n{}",
        route("r", "/", &echo)
    ));
    let auth = |token: &str| {
        format!(
            "[route.auth]\nbearer_sha256 = [\"{}\"]\n",
            sha256_hex(token)
        )
    };
    std::fs::write(&file, format!("{head}{}", auth("old-token"))).unwrap();
    let gw = spawn_gateway_from_file(&file).await;
    let admin = gw.admin.unwrap();
    let open_upgrade = |addr| async move { upgrade_with(addr, "/", &[]).await.0 };
    assert_eq!(open_upgrade(gw.addr).await, 401);

    // A slow writer: the first part, then a pause of many quiet times, then the rest.
    std::fs::write(&file, &head).unwrap();
    let pause_until = Instant::now() + Duration::from_millis(QUIET_MS * 12);
    while Instant::now() < pause_until {
        assert_eq!(
            open_upgrade(gw.addr).await,
            401,
            "the half-written file opened the route"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The watcher's reload of the half file was refused, and said so.
    let refused = metric(
        &scrape(admin).await,
        "wsgate_config_reloads_total{result=\"error\"}",
    );
    assert!(refused.unwrap_or(0.0) >= 1.0, "no refused reload counted");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut f, auth("new-token").as_bytes()).unwrap();
    drop(f);
    // The complete file is applied (the new token opens the route); never without auth.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(open_upgrade(gw.addr).await, 401);
        let (status, _) =
            upgrade_with(gw.addr, "/", &[("Authorization", "Bearer new-token")]).await;
        if status == 101 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the complete file never applied: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An operator's reload may still remove the auth on purpose.
    std::fs::write(&file, &head).unwrap();
    let (ok, _) = gw
        .reload
        .reload(wsgate::ops::reload::Trigger::Signal)
        .await
        .map_or((false, String::new()), |s| (true, s));
    assert!(ok, "SIGHUP applies what the operator wrote");
    assert_eq!(open_upgrade(gw.addr).await, 101);
    gw.stop().await.unwrap();
}

/// A backend that accepts TCP and never answers a byte (a hung WebSocket server).
async fn hung_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

/// Active checks undid passive ejection: the check was a bare TCP connect whose success
/// ended the ejection, so a `ws://` backend that accepts TCP but hangs its handshake came
/// back every interval and clients kept paying `backend_connect_secs` for it.
#[tokio::test]
async fn active_check_does_not_bring_back_a_websocket_backend_that_hangs_its_handshake() {
    let hung = format!("ws://{}/", hung_backend().await);
    let (good_addr, mut seen) = ws_echo_backend().await;
    tokio::spawn(async move { while seen.recv().await.is_some() {} });
    let good = format!("ws://{good_addr}/");
    let gw = spawn_gateway(&config_with(&format!(
        "[timeouts]\nbackend_connect_secs = 0.5\n\n[[route]]\nname = \"p\"\npath = \"/\"\n\
         backends = [\"{hung}\", \"{good}\"]\n[route.health]\neject_secs = 600\n\
         max_eject_secs = 600\ncheck_interval_secs = 0.1\ncheck_timeout_secs = 0.3\n"
    )))
    .await;
    let admin = gw.admin.unwrap();
    let up = |b: &str| format!("wsgate_backend_up{{route=\"p\",backend=\"{b}\"}}");
    // Sessions get through (via the good backend); the hung one is ejected, by a session's
    // dial or by a check.
    for _ in 0..2 {
        let mut ws = ws_client(&gw.url("/")).await;
        assert_echoes(&mut ws, b"through the pool").await;
    }
    expect_metric(admin, &up(&hung), 0.0).await;
    // Many check intervals later it is still out: no check brought it back.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let page = scrape(admin).await;
        assert_eq!(
            metric(&page, &up(&hung)),
            Some(0.0),
            "a check undid the ejection"
        );
        assert_eq!(
            metric(&page, &up(&good)),
            Some(1.0),
            "the good backend passes its checks"
        );
    }
    gw.stop().await.unwrap();
}

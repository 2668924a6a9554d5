//! Hitless reload on a real gateway over loopback: live sessions keep streaming, new requests
//! see the new config, broken files are refused, certificates rotate, listeners come and go;
//! and the real binary reloads on SIGHUP and writes JSON logs.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::Connector;
use wsgate::ops::reload::Trigger;

use support::*;

const RELOADS: &str = "wsgate_config_reloads_total";

/// `POST /reload` on the admin listener: (status, body).
async fn post_reload(admin: SocketAddr) -> (u16, String) {
    let (status, answer) = admin_request(admin, "POST", "/reload", &[]).await;
    (status, answer_body(&answer).to_owned())
}

/// `wsgate reload --admin ADDR` with the real binary: (exit 0, what it printed).
async fn wsgate_reload(admin: SocketAddr) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["reload", "--admin", &admin.to_string()])
        .output()
        .await
        .expect("wsgate reload runs");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

/// The hash `wsgate_config_info` shows for a file holding `text`.
fn hash_of(text: &str) -> String {
    sha256_hex(text)[..16].to_owned()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Send and read back `chunks` chunks of the checksummed stream from `offset`.
async fn stream_through(ws: &mut WsClient, offset: &mut u64, chunks: usize) {
    const CHUNK: usize = 64 * 1024;
    for _ in 0..chunks {
        send_binary(ws, &pattern(*offset, CHUNK)).await;
        assert_eq!(read_bytes(ws, CHUNK).await, pattern(*offset, CHUNK));
        *offset += CHUNK as u64;
    }
}

/// Reload defect guarded: the running gateway read one `Arc<Snapshot>` fixed at start, so
/// routes changed only with a restart, which dropped every session. Now a reload swaps the
/// snapshot under a session that is mid-stream (a chunk in flight while it happens): not a
/// byte lost, the session stays, and new requests see the new routes (the built-in echo
/// service included).
#[tokio::test]
async fn reload_keeps_a_streaming_session_and_switches_routes() {
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    let before = config_with(&format!(
        "[reload]\nwatch = false\n{}{}",
        route("a", "/a", &echo),
        route("e", "/e", "builtin:echo")
    ));
    write(&file, &before);
    let gw = spawn_gateway_from_file(&file).await;
    let admin = gw.admin.unwrap();
    expect_metric(
        admin,
        &format!("wsgate_config_info{{hash=\"{}\"}}", hash_of(&before)),
        1.0,
    )
    .await;

    let mut ws = ws_client(&gw.url("/a")).await;
    let mut offset = 0;
    stream_through(&mut ws, &mut offset, 8).await;

    // A chunk in flight while the config changes under it.
    send_binary(&mut ws, &pattern(offset, 4096)).await;
    let after = config_with(&format!(
        "[reload]\nwatch = false\n{}{}",
        route("b", "/b", &echo),
        route("e", "/e", "builtin:echo")
    ));
    write(&file, &after);
    let (ok, said) = wsgate_reload(admin).await;
    assert!(ok, "{said}");
    assert!(
        said.starts_with("reloaded: ") && said.contains("2 route(s)"),
        "{said}"
    );
    assert_eq!(read_bytes(&mut ws, 4096).await, pattern(offset, 4096));
    offset += 4096;

    assert_eq!(
        upgrade_with(gw.addr, "/a", &[]).await.0,
        404,
        "route a is gone"
    );
    let names: Vec<_> = admin_json(admin, "/api/config").await["route"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["b", "e"], "the admin API shows the running config");
    assert_echoes(&mut ws_client(&gw.url("/b")).await, b"new route").await;
    assert_echoes(&mut ws_client(&gw.url("/e")).await, b"built-in echo").await;
    let page = scrape(admin).await;
    assert_eq!(
        metric(
            &page,
            &format!("wsgate_config_info{{hash=\"{}\"}}", hash_of(&after))
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            &format!("wsgate_config_info{{hash=\"{}\"}}", hash_of(&before))
        ),
        Some(0.0)
    );
    assert!(metric(&page, &format!("{RELOADS}{{result=\"success\"}}")).unwrap() >= 1.0);
    assert!(metric(&page, "wsgate_config_last_reload_success_timestamp_seconds").unwrap() > 1.7e9);

    // The session that started on route a streams on, to the end.
    stream_through(&mut ws, &mut offset, 8).await;
    finish_close_from_client(&mut ws).await;
    gw.stop().await.unwrap();
}

/// The client closes normally and waits for the gateway's answer.
async fn finish_close_from_client(ws: &mut WsClient) {
    ws.close(None).await.expect("send close");
    finish_close(ws).await;
}

/// An invalid file is refused: the answer and the error name the bad key, the error is
/// counted, and the running config keeps serving (the only test here that fails a reload,
/// so the process-wide error counter moves by exactly one).
#[tokio::test]
async fn a_broken_file_is_refused_and_the_old_config_serves() {
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    let good = config_with(&format!(
        "[reload]\nwatch = false\n{}",
        route("a", "/a", &echo)
    ));
    write(&file, &good);
    let gw = spawn_gateway_from_file(&file).await;
    let admin = gw.admin.unwrap();
    let errors = |page: &str| metric(page, &format!("{RELOADS}{{result=\"error\"}}"));
    let errors_before = errors(&scrape(admin).await).expect("registered at zero");
    let mut live = ws_client(&gw.url("/a")).await;
    assert_echoes(&mut live, b"before").await;

    write(&file, &format!("{good}\n[limits]\nmax_frame_bytes = 3\n"));
    let (status, body) = post_reload(admin).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("limits.max_frame_bytes"), "{body}");
    assert!(body.contains("running config stays"), "{body}");

    // Through the library handle and `wsgate reload` as well: the same refusal.
    let why = gw.reload.reload(Trigger::Api).await.unwrap_err();
    assert!(why.contains("limits.max_frame_bytes"), "{why}");
    let (ok, said) = wsgate_reload(admin).await;
    assert!(!ok && said.contains("limits.max_frame_bytes"), "{said}");
    assert_eq!(errors(&scrape(admin).await), Some(errors_before + 3.0));

    assert_echoes(&mut live, b"after").await;
    drop(live);
    assert_echoes(
        &mut ws_client(&gw.url("/a")).await,
        b"new client, old config",
    )
    .await;
    assert_eq!(
        metric(
            &scrape(admin).await,
            &format!("wsgate_config_info{{hash=\"{}\"}}", hash_of(&good))
        ),
        Some(1.0),
        "the old config still runs"
    );
    gw.stop().await.unwrap();
}

/// A rustls client that trusts only `ca`.
fn trusting(ca: &CertificateDer<'static>) -> Arc<ClientConfig> {
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

async fn wss(addr: SocketAddr, config: Arc<ClientConfig>) -> Option<WsClient> {
    tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://{addr}/"),
        None,
        false,
        Some(Connector::Rustls(config)),
    )
    .await
    .ok()
    .map(|(ws, _)| ws)
}

/// Replace `path` the way certbot and editors do: write a new file, rename it over the old.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    write(&tmp, text);
    std::fs::rename(&tmp, path).unwrap();
}

/// Certificate rotation without a restart: renewed files (renamed into place) are picked up
/// by the file watcher; a new TLS client meets the new certificate while a TLS session that
/// started on the old one carries on.
#[tokio::test]
async fn renewed_certificate_files_are_served_to_new_clients_old_sessions_continue() {
    let echo = tcp_echo_backend().await;
    let (old_ca, new_ca) = (test_ca("old CA"), test_ca("new CA"));
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (pem, key_pem) = leaf_signed_by(&old_ca);
    write(&cert, &pem);
    write(&key, &key_pem);
    let file = dir.path().join("wsgate.toml");
    write(
        &file,
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert_file = {:?}\nkey_file = {:?}\n\n\
             [admin]\naddress = \"127.0.0.1:0\"\n\n[reload]\nwatch_debounce_ms = 100\n\n{}",
            cert.display().to_string(),
            key.display().to_string(),
            route("t", "/", &format!("tcp://{echo}")),
        ),
    );
    let gw = spawn_gateway_from_file(&file).await;
    let mut old_session = wss(gw.addr, trusting(old_ca.der()))
        .await
        .expect("old cert");
    assert_echoes(&mut old_session, b"on the old certificate").await;

    let (pem, key_pem) = leaf_signed_by(&new_ca);
    replace(&key, &key_pem);
    replace(&cert, &pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut new_session = loop {
        if let Some(ws) = wss(gw.addr, trusting(new_ca.der())).await {
            break ws;
        }
        assert!(
            Instant::now() < deadline,
            "no new certificate served 10 s after the files changed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_echoes(&mut new_session, b"on the new certificate").await;
    assert!(
        wss(gw.addr, trusting(old_ca.der())).await.is_none(),
        "new clients no longer get the old certificate"
    );
    let mut offset = 0;
    stream_through(&mut old_session, &mut offset, 4).await;
    // Gone without a Close: the drain need not wait for them.
    drop((old_session, new_session));
    gw.stop().await.unwrap();
}

/// Listeners added by a reload accept; listeners removed stop accepting while their
/// sessions and the sessions on unchanged listeners carry on. A route on the built-in echo
/// service that first appears in a reload starts the service.
#[tokio::test]
async fn listeners_added_and_removed_by_reload() {
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    let one = config_with(&format!(
        "[reload]\nwatch = false\n{}",
        route("a", "/", &echo)
    ));
    write(&file, &one);
    let gw = spawn_gateway_from_file(&file).await;
    let mut first = ws_client(&gw.url("/")).await;
    assert_echoes(&mut first, b"first listener").await;

    let two = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n{one}{}",
        route("e", "/e", "builtin:echo")
    );
    write(&file, &two);
    let summary = gw.reload.reload(Trigger::Api).await.expect("reload");
    assert!(summary.contains("1 added, 0 removed"), "{summary}");
    let urls = gw.listeners.urls();
    assert_eq!(urls.len(), 2, "{urls:?}");
    assert_eq!(urls[0].0, gw.addr, "the kept listener keeps its socket");
    let added = urls[1].0;
    let mut second = ws_client(&format!("ws://{added}/")).await;
    assert_echoes(&mut second, b"second listener").await;
    assert_echoes(&mut ws_client(&format!("ws://{added}/e")).await, b"echo").await;

    write(&file, &one);
    let summary = gw.reload.reload(Trigger::Api).await.expect("reload");
    assert!(summary.contains("0 added, 1 removed"), "{summary}");
    assert_eq!(gw.listeners.urls().len(), 1);
    timeout(Duration::from_secs(10), async {
        while TcpStream::connect(added).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the removed listener stops accepting");
    assert_echoes(&mut second, b"session on the removed listener").await;
    assert_echoes(&mut first, b"session on the kept listener").await;
    assert_echoes(&mut ws_client(&gw.url("/")).await, b"kept listener").await;
    // Gone without a Close: the drain need not wait for them.
    drop((first, second));
    gw.stop().await.unwrap();
}

/// In the per-core mode a listener added by a reload gets a socket on every worker: its
/// sessions land on both workers and echo; removing it stops every worker's socket.
#[tokio::test]
async fn per_core_listener_added_by_reload_accepts_on_every_worker() {
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    let one = config_with(&format!(
        "[reload]\nwatch = false\n[runtime]\nmode = \"per-core\"\nworker_threads = 2\n{}",
        route("a", "/", &echo)
    ));
    write(&file, &one);
    let gw = spawn_gateway_from_file(&file).await;
    let admin = gw.admin.expect("admin listener");

    write(
        &file,
        &format!("[[listener]]\naddress = \"127.0.0.1:0\"\n{one}"),
    );
    let summary = gw.reload.reload(Trigger::Api).await.expect("reload");
    assert!(summary.contains("1 added, 0 removed"), "{summary}");
    let added = gw.listeners.urls()[1].0;
    let mut sessions = sessions_on_every_worker(&format!("ws://{added}/"), admin, 2).await;

    write(&file, &one);
    let summary = gw.reload.reload(Trigger::Api).await.expect("reload");
    assert!(summary.contains("0 added, 1 removed"), "{summary}");
    // Refused only once no worker's socket is left: the kernel sends new connections to
    // whichever of the address's sockets remain.
    timeout(Duration::from_secs(10), async {
        while TcpStream::connect(added).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the removed listener stops accepting on every worker");
    for ws in &mut sessions {
        assert_echoes(ws, b"session on the removed listener").await;
    }
    assert_echoes(&mut ws_client(&gw.url("/")).await, b"kept listener").await;
    drop(sessions);
    gw.stop().await.unwrap();
}

/// The real binary: start it on `file` with `args`, stderr captured.
fn spawn_binary(file: &Path, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("--config")
        .arg(file)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("wsgate starts")
}

async fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let status = tokio::process::Command::new("kill")
        .args([name, &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

/// Connect to `url` until it upgrades, for up to 10 s.
async fn eventually_ws(url: &str) -> WsClient {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(url).await {
            return ws;
        }
        assert!(Instant::now() < deadline, "{url} did not upgrade in 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 9 item 11 guarded: SIGHUP killed the process at once (exit 129, no Close frames).
/// Now it reloads: a new route appears, the live session is untouched, a broken file is
/// refused with an error line naming the key; the process exits 0 on SIGTERM afterwards.
/// With `--log-format json` every stderr line is one JSON object: start, reload (success and
/// error), one access line per session with its fields, shutdown.
#[tokio::test]
async fn sighup_reloads_the_binary_and_json_logs_tell_the_story() {
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let head = format!(
        "[[listener]]\naddress = \"{listen}\"\n[admin]\naddress = \"{admin}\"\n[reload]\nwatch = false\n"
    );
    write(&file, &format!("{head}{}", route("a", "/a", &echo)));
    let child = spawn_binary(&file, &["--log-format", "json", "--log-level", "info"]);
    wait_for_listener(listen).await;
    let mut live = ws_client(&format!("ws://{listen}/a")).await;
    assert_echoes(&mut live, b"before SIGHUP").await;

    write(
        &file,
        &format!(
            "{head}{}{}",
            route("a", "/a", &echo),
            route("b", "/b", &echo)
        ),
    );
    signal(&child, "-HUP").await;
    let mut added = eventually_ws(&format!("ws://{listen}/b")).await;
    assert_echoes(&mut added, b"after SIGHUP").await;
    assert_echoes(&mut live, b"still here").await;

    write(
        &file,
        &format!("{head}{}max_sesions = 3\n", route("a", "/a", &echo)),
    );
    signal(&child, "-HUP").await;
    expect_metric(admin, &format!("{RELOADS}{{result=\"error\"}}"), 1.0).await;
    assert_echoes(
        &mut ws_client(&format!("ws://{listen}/b")).await,
        b"old config",
    )
    .await;

    finish_close_from_client(&mut live).await;
    finish_close_from_client(&mut added).await;
    signal(&child, "-TERM").await;
    let out = timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("wsgate exits after SIGTERM")
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |what: &dyn Fn(&serde_json::Value) -> bool| {
        lines
            .iter()
            .find(|l| what(l))
            .unwrap_or_else(|| panic!("no such line in:\n{log}"))
            .clone()
    };
    let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    find(&|l| s(l, "event") == "start");
    let ok = find(&|l| s(l, "event") == "reload" && s(l, "message").starts_with("config reloaded"));
    assert_eq!(s(&ok, "trigger"), "sighup");
    let refused = find(&|l| s(l, "event") == "reload" && s(l, "level") == "ERROR");
    assert!(s(&refused, "error").contains("max_sesions"), "{refused}");
    find(&|l| s(l, "event") == "shutdown");
    let access = find(&|l| s(l, "message") == "session closed" && s(l, "route") == "a");
    for key in [
        "timestamp",
        "session_id",
        "client",
        "backend",
        "bytes_to_backend",
        "bytes_to_client",
        "messages_to_backend",
        "messages_to_client",
        "duration_ms",
        "code",
        "closed_by",
        "reason",
    ] {
        assert!(!access[key].is_null(), "access line lacks {key}: {access}");
    }
    assert_eq!(access["bytes_to_backend"], 23, "{access}");
    assert_eq!(access["messages_to_backend"], 2, "{access}");
    assert_eq!(access["code"], 1005, "a Close without a code: {access}");
    assert_eq!(s(&access, "closed_by"), "client");
    assert!(s(&access, "client").starts_with("127.0.0.1:"), "{access}");
}

/// Issue 9 item 16 guarded: logs carried ANSI colour codes when stderr was not a terminal
/// (journald, `docker logs`, Kubernetes).
#[tokio::test]
async fn text_logs_have_no_colour_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    write(
        &file,
        &format!(
            "[[listener]]\naddress = \"{listen}\"\n{}",
            route("e", "/", "builtin:echo")
        ),
    );
    let child = spawn_binary(&file, &[]);
    wait_for_listener(listen).await;
    signal(&child, "-TERM").await;
    let out = timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("wsgate exits after SIGTERM")
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("gateway starting"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in piped logs: {log:?}"
    );
}

/// Reload defect guarded: admission built from scratch on a reload would forget the sessions
/// already running, so a full gateway admitted a whole new quota after every reload. The
/// counts carry over: the old session still holds its place under the same cap, a raised cap
/// admits exactly the difference, and a slot freed by the old session is seen by the new caps.
#[tokio::test]
async fn session_caps_count_sessions_from_before_a_reload() {
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    let with_cap = |n: usize| {
        config_with(&format!(
            "[reload]\nwatch = false\n[limits]\nmax_sessions = {n}\n{}",
            route("capped", "/", &echo)
        ))
    };
    write(&file, &with_cap(1));
    let gw = spawn_gateway_from_file(&file).await;
    let mut old = ws_client(&gw.url("/")).await;
    assert_echoes(&mut old, b"holds the only slot").await;
    assert_eq!(upgrade_with(gw.addr, "/", &[]).await.0, 503);

    gw.reload.reload(Trigger::Api).await.expect("same file");
    assert_eq!(upgrade_with(gw.addr, "/", &[]).await.0, 503, "still full");

    write(&file, &with_cap(2));
    gw.reload.reload(Trigger::Api).await.expect("raised cap");
    let mut second = ws_client(&gw.url("/")).await;
    assert_echoes(&mut second, b"the one new slot").await;
    assert_eq!(upgrade_with(gw.addr, "/", &[]).await.0, 503, "2 of 2");

    drop(old);
    let deadline = Instant::now() + Duration::from_secs(10);
    while upgrade_with(gw.addr, "/", &[]).await.0 != 101 {
        assert!(
            Instant::now() < deadline,
            "the old session's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(second);
    gw.stop().await.unwrap();
}

/// Access rules and tokens are part of the reload: a rotated bearer token works from the
/// reload on and the retired one is refused, while a session admitted with the retired
/// token carries on.
#[tokio::test]
async fn rotated_tokens_apply_to_new_requests_only() {
    let echo = format!("tcp://{}", tcp_echo_backend().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    let with_token = |token: &str| {
        config_with(&format!(
            "[reload]\nwatch = false\n{}[route.auth]\nbearer_sha256 = [\"{}\"]\n",
            route("auth", "/", &echo),
            sha256_hex(token)
        ))
    };
    let bearer = |token: &str| format!("Bearer {token}");
    write(&file, &with_token("old-token-3f9a"));
    let gw = spawn_gateway_from_file(&file).await;
    let old = bearer("old-token-3f9a");
    let new = bearer("new-token-81c2");
    let (mut live, _) = ws_client_with(&gw.url("/"), &[("Authorization", old.as_str())])
        .await
        .expect("the old token is accepted");
    assert_echoes(&mut live, b"admitted with the old token").await;

    write(&file, &with_token("new-token-81c2"));
    gw.reload.reload(Trigger::Api).await.expect("reload");
    let retired = upgrade_with(gw.addr, "/", &[("Authorization", old.as_str())]).await;
    assert_eq!(retired.0, 401, "the retired token");
    let current = upgrade_with(gw.addr, "/", &[("Authorization", new.as_str())]).await;
    assert_eq!(current.0, 101, "the new token");
    assert_echoes(&mut live, b"still bridged").await;
    drop(live);
    gw.stop().await.unwrap();
}

/// A listener's trust in forwarded headers follows a reload, as its certificate does (the
/// merge of reloads with per-listener trust could have frozen the trust of the start).
#[tokio::test]
async fn listener_trust_follows_a_reload() {
    let backend = proxy_reading_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    let with_trust = |keys: &str| {
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n{keys}\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
             [reload]\nwatch = false\n\n{}send_proxy_protocol = \"v2\"\n",
            route("who", "/", &format!("tcp://{backend}"))
        )
    };
    write(&file, &with_trust(""));
    let gw = spawn_gateway_from_file(&file).await;
    let forwarded = [("X-Forwarded-For", "198.51.100.9")];
    let (mut ws, _) = ws_client_with(&gw.url("/"), &forwarded).await.unwrap();
    let seen = String::from_utf8(next_data(&mut ws).await.expect("the backend's report")).unwrap();
    assert!(seen.starts_with("127.0.0.1:"), "not trusted yet: {seen}");
    drop(ws);

    write(
        &file,
        &with_trust("forwarded_header = \"x-forwarded-for\"\ntrusted_proxies = [\"127.0.0.1\"]"),
    );
    gw.reload.reload(Trigger::Api).await.expect("reload");
    let (mut ws, _) = ws_client_with(&gw.url("/"), &forwarded).await.unwrap();
    let seen = String::from_utf8(next_data(&mut ws).await.expect("the backend's report")).unwrap();
    assert!(
        seen.starts_with("198.51.100.9:"),
        "trusted after the reload: {seen}"
    );
    drop(ws);
    gw.stop().await.unwrap();
}

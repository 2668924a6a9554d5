//! Graceful shutdown: sessions get 1001, the drain ends when they answer or at the deadline,
//! and the real binary exits 0 on SIGTERM.

mod support;

use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use support::*;

#[tokio::test]
async fn shutdown_closes_sessions_1001_and_drains_when_they_answer() {
    let echo = tcp_echo_backend().await;
    // Long graces: only the clients' answers can end this drain within the 10 s bound below.
    let gw = spawn_gateway(&config_with(&format!(
        "{}\n[timeouts]\nclose_grace_secs = 60\nshutdown_grace_secs = 60\n",
        route("shutdown_drain", "/", &format!("tcp://{echo}"))
    )))
    .await;
    let mut clients = Vec::new();
    for i in 0..3u8 {
        let mut ws = ws_client(&gw.url("/")).await;
        send_binary(&mut ws, &[i; 10]).await;
        assert_eq!(read_bytes(&mut ws, 10).await, [i; 10]);
        clients.push(ws);
    }

    gw.shutdown.cancel();
    for ws in &mut clients {
        let (code, reason) = expect_close(ws).await;
        assert_eq!(code, 1001);
        assert!(reason.contains("shutting down"), "{reason}");
    }
    // Not accepting any more, while the sessions are still draining.
    assert_eventually!(
        TcpStream::connect(gw.addr).await.is_err(),
        "the listener still accepts after shutdown"
    );
    // Answering the Close (tungstenite does while it is read) ends each session.
    for ws in &mut clients {
        finish_close(ws).await;
    }
    timeout(Duration::from_secs(10), gw.task)
        .await
        .expect("the drain ends once every client answered, long before the 60 s grace")
        .expect("no panic")
        .expect("run returns Ok");
    // Each session ended with the client's answer (a session dropped at the drain deadline
    // would be 1006). The admin listener is gone with the gateway: read the recorder directly.
    let page = wsgate::metrics::install().render();
    assert_eq!(
        metric(&page, &closes("shutdown_drain", 1001, "gateway")),
        Some(3.0)
    );
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "refused after shutdown"
    );
}

#[tokio::test]
async fn drain_deadline_ends_run_when_a_client_never_answers() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&config_with(&format!(
        "{}\n[timeouts]\nclose_grace_secs = 60\nshutdown_grace_secs = 1\n",
        route("shutdown_deadline", "/", &format!("tcp://{echo}"))
    )))
    .await;
    let mut ws = ws_client(&gw.url("/")).await;
    send_binary(&mut ws, b"hi").await;
    assert_eq!(read_bytes(&mut ws, 2).await, b"hi");
    // From here on the client reads nothing, so it never answers the 1001.
    gw.shutdown.cancel();
    timeout(Duration::from_secs(20), gw.task)
        .await
        .expect("run returns after the drain deadline")
        .expect("no panic")
        .expect("run returns Ok");
    // The session was dropped at the deadline (recorded as 1006 by the gateway), after its
    // 1001 went out. The admin listener is gone with the gateway: read the recorder directly.
    let page = wsgate::metrics::install().render();
    assert_eq!(
        metric(&page, &closes("shutdown_deadline", 1006, "gateway")),
        Some(1.0)
    );
    assert_eq!(
        expect_close(&mut ws).await,
        (1001, "gateway shutting down".to_owned())
    );
    match timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the connection ends")
    {
        None | Some(Err(_)) => {}
        Some(Ok(m)) => panic!("nothing after the Close, got {m:?}"),
    }
}

#[tokio::test]
async fn binary_exits_0_on_sigterm_after_closing_sessions_1001() {
    let echo = tcp_echo_backend().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args([
            "--listen",
            &listen,
            "--route",
            &format!("/=tcp://{echo}"),
            "--admin",
            &admin,
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("wsgate starts");
    wait_for_listener(listen.parse().unwrap()).await;

    let mut ws = ws_client(&format!("ws://{listen}/")).await;
    send_binary(&mut ws, b"ping me").await;
    assert_eq!(read_bytes(&mut ws, 7).await, b"ping me");

    let pid = child.id().expect("running").to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());

    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 1001);
    assert!(reason.contains("shutting down"), "{reason}");
    finish_close(&mut ws).await;

    let out = timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("wsgate exits after SIGTERM")
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
}

/// The per-core mode drains every worker: sessions spread over both workers' runtimes all
/// get 1001 when the shutdown starts, and `run` returns once they answered, with every
/// worker thread joined.
#[tokio::test]
async fn per_core_shutdown_closes_sessions_on_every_worker_1001() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&config_with(&format!(
        "{}\n[timeouts]\nclose_grace_secs = 60\nshutdown_grace_secs = 60\n\
         [runtime]\nmode = \"per-core\"\nworker_threads = 2\n",
        route("per_core_drain", "/", &format!("tcp://{echo}"))
    )))
    .await;
    let admin = gw.admin.expect("admin listener");
    let mut clients = sessions_on_every_worker(&gw.url("/"), admin, 2).await;
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_echoes(ws, format!("still there {i}").as_bytes()).await;
    }

    gw.shutdown.cancel();
    for ws in &mut clients {
        let (code, reason) = expect_close(ws).await;
        assert_eq!(code, 1001);
        assert!(reason.contains("shutting down"), "{reason}");
    }
    for ws in &mut clients {
        finish_close(ws).await;
    }
    timeout(Duration::from_secs(10), gw.task)
        .await
        .expect("the drain ends once every client answered, long before the 60 s grace")
        .expect("no panic")
        .expect("run returns Ok");
    let page = wsgate::metrics::install().render();
    assert_eq!(
        metric(&page, &closes("per_core_drain", 1001, "gateway")),
        Some(clients.len() as f64)
    );
    assert_eq!(worker_sessions(&page, 2), [0.0, 0.0], "{page}");
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "no worker accepts after shutdown"
    );
}

/// The real binary in the per-core mode (`--runtime-mode per-core --worker-threads 2`):
/// sessions on both workers get 1001 on SIGTERM and the process exits 0.
#[tokio::test]
async fn per_core_binary_exits_0_on_sigterm_after_closing_sessions_on_every_worker() {
    let echo = tcp_echo_backend().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args([
            "--listen",
            &listen,
            "--route",
            &format!("/=tcp://{echo}"),
            "--admin",
            &admin,
            "--runtime-mode",
            "per-core",
            "--worker-threads",
            "2",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("wsgate starts");
    wait_for_listener(listen.parse().unwrap()).await;
    wait_for_listener(admin.parse().unwrap()).await;

    let mut clients =
        sessions_on_every_worker(&format!("ws://{listen}/"), admin.parse().unwrap(), 2).await;

    let pid = child.id().expect("running").to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());

    for ws in &mut clients {
        let (code, reason) = expect_close(ws).await;
        assert_eq!(code, 1001);
        assert!(reason.contains("shutting down"), "{reason}");
        finish_close(ws).await;
    }

    let out = timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("wsgate exits after SIGTERM")
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("runtime=per-core"), "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
}

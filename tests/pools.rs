//! Backend pools (`backends = [...]`): failover before the `101`, ejection seen in
//! `wsgate_backend_up`, active checks that bring a backend back, round-robin spread,
//! sessions per backend; and `unix:` backends.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

use support::*;

/// A route `p` at `/` over `backends` (TOML array items), with `extra` route keys.
fn pool_route(backends: &[String], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[route]]\nname = \"p\"\npath = \"/\"\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    )
}

fn tcp(addr: SocketAddr) -> String {
    format!("tcp://{addr}")
}

fn up(backend: &str) -> String {
    format!("wsgate_backend_up{{route=\"p\",backend=\"{backend}\"}}")
}

/// Also guards a defect: pools registered their gauges in `Gateway::bind`, before `run`
/// installed the recorder, so `wsgate_backend_up` never appeared (seen when this test ran
/// first in its process, as in the real binary always).
#[tokio::test]
async fn a_dead_first_backend_fails_over_to_the_next_and_is_ejected() {
    let dead = tcp(refused_addr().await);
    let live = tcp(greeting_backend("second").await);
    let gw = spawn_gateway(&config_with(&pool_route(
        &[dead.clone(), live.clone()],
        "[route.health]\neject_secs = 60",
    )))
    .await;
    let admin = gw.admin.unwrap();
    expect_metric(admin, &up(&dead), 1.0).await;
    // Round robin would give the first session to `dead`: it still gets its 101, via `live`.
    for _ in 0..4 {
        assert_eq!(greeting_via(&gw.url("/"), &[]).await, "second");
    }
    expect_metric(admin, &up(&dead), 0.0).await;
    expect_metric(admin, &up(&live), 1.0).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn every_backend_dead_is_a_502() {
    let a = tcp(refused_addr().await);
    let b = tcp(refused_addr().await);
    let gw = spawn_gateway(&config_with(&pool_route(&[a.clone(), b.clone()], ""))).await;
    let (status, _) = upgrade_with(gw.addr, "/", &[]).await;
    assert_eq!(status, 502);
    let page = scrape(gw.admin.unwrap()).await;
    assert_eq!(metric(&page, &up(&a)), Some(0.0));
    assert_eq!(metric(&page, &up(&b)), Some(0.0));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn an_active_check_brings_a_revived_backend_back() {
    let dead_addr = released_addr().await;
    let dead = tcp(dead_addr);
    let live = tcp(greeting_backend("live").await);
    let gw = spawn_gateway(&config_with(&pool_route(
        &[dead.clone(), live],
        "[route.health]\neject_secs = 600\nmax_eject_secs = 600\ncheck_interval_secs = 0.1\ncheck_timeout_secs = 1",
    )))
    .await;
    let admin = gw.admin.unwrap();
    // The check finds it dead without any session trying it.
    expect_metric(admin, &up(&dead), 0.0).await;
    // Revived: the next check restores it long before its 600 s ejection would end.
    let revived = tokio::net::TcpListener::bind(dead_addr).await.unwrap();
    expect_metric(admin, &up(&dead), 1.0).await;
    drop(revived);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn round_robin_spreads_sessions_and_counts_them_per_backend() {
    let a = greeting_backend("a").await;
    let b = greeting_backend("b").await;
    let c = greeting_backend("c").await;
    let gw = spawn_gateway(&config_with(&pool_route(&[tcp(a), tcp(b), tcp(c)], ""))).await;
    let mut held = Vec::new();
    let mut spread: HashMap<String, usize> = HashMap::new();
    for _ in 0..6 {
        let (mut ws, _) = ws_client_with(&gw.url("/"), &[]).await.unwrap();
        let name = String::from_utf8(next_data(&mut ws).await.unwrap()).unwrap();
        *spread.entry(name).or_default() += 1;
        held.push(ws);
    }
    assert_eq!(
        spread,
        HashMap::from([("a".into(), 2), ("b".into(), 2), ("c".into(), 2)])
    );
    let active = |addr| {
        format!(
            "wsgate_backend_sessions_active{{route=\"p\",backend=\"{}\"}}",
            tcp(addr)
        )
    };
    let admin = gw.admin.unwrap();
    expect_metric(admin, &active(a), 2.0).await;
    expect_metric(admin, &active(c), 2.0).await;
    drop(held);
    expect_metric(admin, &active(b), 0.0).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn least_sessions_sends_new_sessions_to_the_emptiest_backend() {
    let a = greeting_backend("a").await;
    let b = greeting_backend("b").await;
    let gw = spawn_gateway(&config_with(&pool_route(
        &[tcp(a), tcp(b)],
        "balance = \"least_sessions\"",
    )))
    .await;
    let (mut first, _) = ws_client_with(&gw.url("/"), &[]).await.unwrap();
    let first_name = String::from_utf8(next_data(&mut first).await.unwrap()).unwrap();
    // While `first` is open its backend has one session, the other none: the next three
    // sessions, each closed before the next, all go to the other one.
    for _ in 0..3 {
        let (mut ws, _) = ws_client_with(&gw.url("/"), &[]).await.unwrap();
        let name = String::from_utf8(next_data(&mut ws).await.unwrap()).unwrap();
        assert_ne!(name, first_name);
        ws.close(None).await.unwrap();
        finish_close(&mut ws).await;
        let other = if first_name == "a" { b } else { a };
        expect_metric(
            gw.admin.unwrap(),
            &format!(
                "wsgate_backend_sessions_active{{route=\"p\",backend=\"{}\"}}",
                tcp(other)
            ),
            0.0,
        )
        .await;
    }
    drop(first);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn unix_socket_backends_carry_bytes_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let gw = gateway_to("unix", &format!("unix:{}", path.display())).await;
    let mut ws = ws_client(&gw.url("/")).await;
    assert_echoes(&mut ws, b"over a unix socket").await;
    let big = pattern(0, 300_000);
    send_binary(&mut ws, &big).await;
    assert_eq!(read_bytes(&mut ws, big.len()).await, big);
    drop(ws);

    // A pool of unix sockets fails over too: the first path has no listener.
    let missing = dir.path().join("missing.sock");
    let gw2 = spawn_gateway(&config_with(&pool_route(
        &[
            format!("unix:{}", missing.display()),
            format!("unix:{}", path.display()),
        ],
        "",
    )))
    .await;
    let mut ws = ws_client(&gw2.url("/")).await;
    assert_echoes(&mut ws, b"second socket").await;
    drop(ws);
    gw.stop().await.unwrap();
    gw2.stop().await.unwrap();
}

//! Resumable sessions behind a real load balancer: Debian's `haproxy` in HTTP mode in front
//! of two gateways, routing on the session id in the URL (`balance url_param wsgate_session`,
//! `hash-type consistent`) as docs/resume.md advises. Connections cut by a fault-injecting
//! relay between the client and haproxy resume on the replica that owns the session, over the
//! same backend connection; a resume that reaches a replica without the session, directly or
//! through haproxy once the owner is gone, is refused with 4404. `.ci/run` installs haproxy;
//! without it this test fails under `CI` and prints a skip otherwise.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use support::resume::*;
use support::*;

const ROUTE: &str = "r";

/// `haproxy` on PATH or in /usr/sbin, or `None` (then the test panics under CI and skips
/// elsewhere).
fn haproxy() -> Option<&'static str> {
    for bin in ["haproxy", "/usr/sbin/haproxy"] {
        let found = std::process::Command::new(bin)
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return Some(bin);
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("haproxy is not installed, and CI is set: .ci/run installs Debian's haproxy");
    }
    eprintln!(
        "SKIPPED: haproxy is not installed (apt-get install haproxy); set CI to fail instead"
    );
    None
}

/// A TCP echo backend that counts the connections it accepted: a resume must not dial again.
async fn counting_echo_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, accepted)
}

/// A gateway with the resumable route `/r` to `backend`.
async fn replica(backend: SocketAddr) -> TestGateway {
    spawn_gateway(&config_with(&format!(
        "{}[route.resume]\ngrace_secs = 30\nheartbeat_secs = 1\n",
        route(ROUTE, "/r", &format!("tcp://{backend}"))
    )))
    .await
}

/// haproxy in HTTP mode on a loopback frontend, hashing the `wsgate_session` query parameter
/// consistently over `replicas`, with fast health checks so a stopped replica is noticed.
async fn start_haproxy(bin: &str, dir: &Path, replicas: &[&TestGateway]) -> (Child, SocketAddr) {
    let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let servers: String = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "    server wsgate{i} {} check inter 100ms fall 2 rise 1\n",
                r.addr
            )
        })
        .collect();
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n    maxconn 256\n\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n\
             \x20   timeout server 60s\n    timeout tunnel 60s\n    timeout check 2s\n\n\
             frontend ws\n    bind {front}\n    default_backend wsgates\n\n\
             backend wsgates\n    balance url_param wsgate_session\n    hash-type consistent\n{servers}"
        ),
    )
    .unwrap();
    let check = std::process::Command::new(bin)
        .args(["-c", "-f"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new(bin)
        .args(["-db", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy starts");
    wait_for_listener(front).await;
    (child, front)
}

/// `wsgate_resumes_total` for `result`, as the process's metrics recorder has it (the two
/// in-process replicas share it, so this is their sum).
async fn resumes(admin: SocketAddr, result: &str) -> f64 {
    metric(
        &scrape(admin).await,
        &format!("wsgate_resumes_total{{route=\"{ROUTE}\",result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Send `data` and read it back through the session's echo.
async fn echo_through(s: &mut ResumeSession, data: &[u8]) {
    s.send(data).await.expect("send");
    let mut got: Vec<u8> = Vec::new();
    while got.len() < data.len() {
        got.extend(s.recv().await.expect("echo"));
    }
    assert_eq!(got, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_routes_resumes_to_the_owning_replica_and_a_stranger_refuses_with_4404() {
    let Some(bin) = haproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Each replica has its own backend, so a backend's connections tell which replica
    // started a session (in-process gateways share one metrics recorder).
    let backends = [counting_echo_backend().await, counting_echo_backend().await];
    let dialled = |i: usize| backends[i].1.load(Ordering::SeqCst);
    let replicas = [replica(backends[0].0).await, replica(backends[1].0).await];
    let admin = replicas[0].admin.unwrap();
    let (_haproxy, front) = start_haproxy(bin, dir.path(), &[&replicas[0], &replicas[1]]).await;
    // The fault: a relay between the client and haproxy that resets every connection on cut.
    let relay = FaultRelay::start(front).await;

    // Sessions with random ids (seeded): note which replica started each.
    let mut seed = 0x0a11_ce5e_ed00_0021_u64;
    let mut sessions = Vec::new();
    let mut owners = Vec::new();
    for i in 0..12 {
        let before = [dialled(0), dialled(1)];
        let id = new_session_id(&mut seed);
        let mut s = ResumeSession::start(&relay.url("/r"), &id).await;
        echo_through(&mut s, format!("hello {i}").as_bytes()).await;
        let after = [dialled(0), dialled(1)];
        let owner = match (after[0] - before[0], after[1] - before[1]) {
            (1, 0) => 0,
            (0, 1) => 1,
            other => panic!("session {id} started on neither or both replicas: {other:?}"),
        };
        owners.push(owner);
        sessions.push(s);
    }
    assert!(
        owners.contains(&0) && owners.contains(&1),
        "the hash put every session on one replica: {owners:?}"
    );
    let owned = [
        owners.iter().filter(|&&o| o == 0).count(),
        owners.iter().filter(|&&o| o == 1).count(),
    ];
    assert_eq!([dialled(0), dialled(1)], owned);
    let resumed_before = resumes(admin, "resumed").await;

    // Three cuts; every session resumes through haproxy on its owner and echoes on. Resumed
    // in reverse order: a balancer that ignored the id (round robin) would not happen to send
    // each one to the replica that had it when it started.
    for round in 0..3 {
        relay.cut();
        for (i, s) in sessions.iter_mut().enumerate().rev() {
            s.resume(Duration::from_secs(10))
                .await
                .unwrap_or_else(|code| panic!("session {i} did not resume: {code}"));
            echo_through(s, format!("round {round} session {i}").as_bytes()).await;
        }
    }
    // A resume that reached the other replica would have been refused: every one landed on
    // its owner, and no resume dialled a backend again.
    assert_eq!(resumes(admin, "resumed").await, resumed_before + 36.0);
    assert_eq!(
        [dialled(0), dialled(1)],
        owned,
        "no resume dialled the backend again"
    );

    // A resume sent straight to the replica that does not own the session: 4404.
    let refusals = resumes(admin, "unknown_session").await;
    let s = &sessions[0];
    let stranger = &replicas[1 - owners[0]];
    let (mut ws, chosen) = resume_connect(&session_url(&stranger.url("/r"), &s.id, true))
        .await
        .expect("upgrade");
    assert_eq!(chosen.as_deref(), Some(SUBPROTOCOL));
    ws.send(Message::binary(hello(s.received, Some(&s.token))))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, 4404);
    assert_eq!(resumes(admin, "unknown_session").await, refusals + 1.0);

    // The owner of session 0 goes away; haproxy's health check notices and the hash sends the
    // session's resume to the survivor, which refuses it with 4404 (the client gives up).
    let survivor_index = 1 - owners[0];
    let [first, second] = replicas;
    let (owner, survivor) = if survivor_index == 1 {
        (first, second)
    } else {
        (second, first)
    };
    owner.stop().await.expect("the owner stops");
    let admin = survivor.admin.unwrap();
    let refusals = resumes(admin, "unknown_session").await;
    let id = sessions[0].id.clone();
    let code = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            relay.cut();
            match sessions[0].resume(Duration::from_millis(500)).await {
                Err(code) if code >= 4000 => return code,
                // haproxy has not marked the owner down yet: its connection fails.
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the resume of {id} was never refused"));
    assert_eq!(
        code, 4404,
        "the survivor refuses a session it does not have"
    );
    assert_eq!(resumes(admin, "unknown_session").await, refusals + 1.0);
    // The survivor's own sessions carry on.
    for (s, &o) in sessions.iter_mut().zip(&owners) {
        if o == survivor_index {
            s.resume(Duration::from_secs(10)).await.expect("resumed");
            echo_through(s, b"still here").await;
        }
    }
    survivor.stop().await.unwrap();
}

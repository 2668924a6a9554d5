//! Resumable sessions stay inside their bounds: many detached sessions that never come back,
//! each holding a full replay window, cost the process about what `[resume]` caps allow and no
//! more, the next one over the buffer cap is refused with 4429, and they are all gone (backend
//! connections closed) once their grace runs out. Also the refusals tests/resume.rs leaves
//! out: an offset below what the client acknowledged, and malformed HELLOs.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use support::resume::*;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// The test process's resident set, in bytes (Linux `/proc/self/status`).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/self/status")
        * 1024
}

/// A backend that writes without end to every connection until it is closed; it counts the
/// connections it accepted and those that ended (the gateway closed them).
async fn firehose_backend() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let (a, e) = (accepted.clone(), ended.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let e = e.clone();
            tokio::spawn(async move {
                let block = pattern(0, 64 * 1024);
                while s.write_all(&block).await.is_ok() {}
                e.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, ended)
}

/// Read DATA without acknowledging until `n` stream bytes arrived; PINGs are answered.
async fn read_unacknowledged(ws: &mut WsClient, n: u64) {
    let mut got = 0u64;
    while got < n {
        let m = next_message(ws).await.expect("DATA up to the window");
        if m.first() == Some(&DATA) {
            got += (m.len() - 1) as u64;
        }
    }
    assert_eq!(
        got, n,
        "the gateway sent more than the window unacknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_detached_sessions_with_full_windows_stay_within_the_caps_and_expire() {
    const SESSIONS: u64 = 200;
    const WINDOW: u64 = 512 << 10;
    let (backend, accepted, ended) = firehose_backend().await;
    // All clients share 127.0.0.1; a detached session keeps its connection's slot, so the
    // per-address connection cap (100 by default) is lifted.
    let gw = spawn_gateway(&config_with(&format!(
        "{}[route.resume]\ngrace_secs = 20\nheartbeat_secs = 1\nwindow_bytes = {WINDOW}\n\n\
         [resume]\nmax_sessions = 10000\nmax_sessions_per_address = 10000\n\
         max_buffered_bytes = {}\n\n\
         [limits]\nmax_connections_per_ip = 0\n",
        route("m", "/m", &format!("tcp://{backend}")),
        SESSIONS * WINDOW
    )))
    .await;
    let admin = gw.admin.unwrap();
    // Warm up (allocator arenas, the gateway's first session) before the baseline.
    {
        let mut s = ResumeSession::start(&gw.url("/m"), "warmup").await;
        s.end().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = rss_bytes();

    let mut seed = 0x00de_7ac4_ed5e_5510_u64;
    let filling = std::time::Instant::now();
    for i in 0..SESSIONS {
        let id = new_session_id(&mut seed);
        let mut s = ResumeSession::start(&gw.url("/m"), &id).await;
        let ws = s.ws.as_mut().expect("connected");
        read_unacknowledged(ws, WINDOW).await;
        if i == 0 {
            // The window is full: nothing more comes until an ACK (PINGs only).
            let quiet = tokio::time::timeout(Duration::from_millis(300), async {
                loop {
                    let m = next_message(ws).await.expect("connected");
                    if m.first() == Some(&DATA) && m.len() > 1 {
                        return m.len();
                    }
                }
            })
            .await;
            assert!(quiet.is_err(), "DATA beyond a full window: {quiet:?}");
        }
        // The client goes away without END and never comes back.
        drop(s.ws.take());
    }
    expect_metric(admin, "wsgate_resume_detached_sessions", SESSIONS as f64).await;
    println!("{SESSIONS} windows filled in {:?}", filling.elapsed());
    let held = rss_bytes().saturating_sub(baseline);
    let reserved = SESSIONS * WINDOW;
    println!(
        "memory: {SESSIONS} detached sessions with full {} KiB windows: RSS +{:.1} MiB \
         ({:.0} KiB per session; the windows alone are {} MiB)",
        WINDOW >> 10,
        held as f64 / 1048576.0,
        held as f64 / 1024.0 / SESSIONS as f64,
        reserved >> 20
    );
    assert!(
        held <= reserved + reserved / 2 + (32 << 20),
        "RSS grew by {held} bytes for {reserved} bytes of windows"
    );

    // The buffer cap is reached: the next session is refused with 4429.
    let (mut ws, _) = resume_connect(&session_url(&gw.url("/m"), "one-too-many", false))
        .await
        .expect("upgrade");
    ws.send(Message::binary(hello(0, None))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 4429);
    expect_metric(
        admin,
        "wsgate_resumes_total{route=\"m\",result=\"limit_buffer\"}",
        1.0,
    )
    .await;
    let dialled = accepted.load(Ordering::SeqCst);
    assert!(dialled as u64 > SESSIONS, "{dialled} backend connections");

    // Nobody comes back: after the grace period every backend connection is closed and the
    // sessions are forgotten.
    tokio::time::timeout(Duration::from_secs(40), async {
        while ended.load(Ordering::SeqCst) < dialled {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every backend connection closed after the grace period");
    expect_metric(admin, "wsgate_resume_detached_sessions", 0.0).await;
    expect_metric(
        admin,
        "wsgate_resumes_total{route=\"m\",result=\"expired\"}",
        SESSIONS as f64,
    )
    .await;
    // And the reservations are back: a new session starts.
    let mut s = ResumeSession::start(&gw.url("/m"), "after-expiry").await;
    s.end().await;
    gw.stop().await.unwrap();
}

/// An echo route's gateway and a started session on it.
async fn echo_session() -> (TestGateway, ResumeSession) {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&config_with(&format!(
        "{}[route.resume]\ngrace_secs = 5\nheartbeat_secs = 1\n",
        route("r", "/r", &format!("tcp://{echo}"))
    )))
    .await;
    let mut seed = 0x0bad_0ff5_e7a1_1111_u64;
    let id = new_session_id(&mut seed);
    let s = ResumeSession::start(&gw.url("/r"), &id).await;
    (gw, s)
}

/// The close code a connection to `url` gets after sending `first` as its first message.
async fn refused_after(url: &str, first: Message) -> u16 {
    let (mut ws, chosen) = resume_connect(url).await.expect("upgrade");
    assert_eq!(chosen.as_deref(), Some(SUBPROTOCOL));
    ws.send(first).await.unwrap();
    close_code(&mut ws).await
}

#[tokio::test]
async fn a_resume_below_what_the_client_acknowledged_is_refused_with_4416() {
    let (gw, mut s) = echo_session().await;
    s.send(b"0123456789").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 10 {
        got.extend(s.recv().await.expect("echo"));
    }
    // The client acknowledges all 10 bytes, so the gateway may drop them from its buffer.
    s.ack().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let url = session_url(&gw.url("/r"), &s.id, true);
    let code = refused_after(&url, Message::binary(hello(4, Some(&s.token)))).await;
    assert_eq!(code, 4416);
    expect_metric(
        gw.admin.unwrap(),
        "wsgate_resumes_total{route=\"r\",result=\"offset_out_of_range\"}",
        1.0,
    )
    .await;
    // The refused attempt did not take the session: its own client still echoes.
    s.send(b"more").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        got.extend(s.recv().await.expect("echo"));
    }
    assert_eq!(got, b"more");
}

#[tokio::test]
async fn malformed_hellos_are_refused_with_4400() {
    let (gw, s) = echo_session().await;
    let resume_url = session_url(&gw.url("/r"), &s.id, true);
    let new_url = |id: &str| session_url(&gw.url("/r"), id, false);
    let cases: Vec<(String, Message, &str)> = vec![
        // A resume without the token.
        (
            resume_url.clone(),
            Message::binary(hello(0, None)),
            "resume without token",
        ),
        // A new session that claims bytes or carries a token.
        (
            new_url("n1"),
            Message::binary(hello(5, None)),
            "new session with an offset",
        ),
        (
            new_url("n2"),
            Message::binary(hello(0, Some(&[1u8; 32]))),
            "new session with a token",
        ),
        // Not a HELLO at all, a HELLO of the wrong length, a text message.
        (
            new_url("n3"),
            Message::binary(vec![DATA, 1, 2, 3]),
            "DATA first",
        ),
        (
            new_url("n4"),
            Message::binary(vec![HELLO, 0, 0]),
            "short HELLO",
        ),
        (new_url("n5"), Message::text("hello"), "text message"),
    ];
    let count = cases.len();
    for (url, first, what) in cases {
        assert_eq!(refused_after(&url, first).await, 4400, "{what}");
    }
    expect_metric(
        gw.admin.unwrap(),
        "wsgate_resumes_total{route=\"r\",result=\"bad_hello\"}",
        count as f64,
    )
    .await;
}

//! Resumable sessions through the real gateway, driven by a client written from
//! docs/resume.md and a relay that cuts the connection: every byte arrives once, in order,
//! over one backend connection; every refusal has its close code; a client that does not ask
//! gets the ordinary session.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use support::resume::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use wsgate::ops::reload::Trigger;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The backend→client stream is the shared pattern shifted, so the directions differ.
fn backend_pattern(offset: u64, len: usize) -> Vec<u8> {
    pattern(offset + 101, len)
}

/// A backend that, on each connection, sends `n` bytes of `backend_pattern` while reading and
/// checking `n` bytes of `pattern` from the client; it reports the connection count and, per
/// connection, whether the client's stream was exact.
async fn stream_backend(
    n: u64,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    tokio::sync::mpsc::Receiver<Result<(), String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = stream.into_split();
                let writer = tokio::spawn(async move {
                    let mut off = 0u64;
                    while off < n {
                        let len = (n - off).min(32 * 1024) as usize;
                        if w.write_all(&backend_pattern(off, len)).await.is_err() {
                            return;
                        }
                        off += len as u64;
                    }
                    // Keep the write side open: the session ends with the client's END.
                    std::future::pending::<()>().await;
                });
                let mut off = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                let verdict = loop {
                    match r.read(&mut buf).await {
                        Ok(0) => {
                            break if off == n {
                                Ok(())
                            } else {
                                Err(format!("EOF after {off} of {n} bytes"))
                            }
                        }
                        Ok(k) => {
                            if off + k as u64 > n {
                                break Err(format!("more than {n} bytes"));
                            }
                            if buf[..k] != pattern(off, k)[..] {
                                break Err(format!("wrong bytes at {off}"));
                            }
                            off += k as u64;
                        }
                        Err(e) => break Err(format!("read failed at {off}: {e}")),
                    }
                };
                writer.abort();
                let _ = tx.send(verdict).await;
            });
        }
    });
    (addr, connections, rx)
}

fn resume_route(name: &str, backend: &str, resume: &str) -> String {
    format!(
        "{}\n[route.resume]\n{resume}\n",
        route(name, &format!("/{name}"), backend)
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The flagship: a checksummed stream each way through many forced drops at random points.
/// Sizes: `RESUME_STREAM_MIB` each way and `RESUME_DROPS` drops; under `CI` 256 MiB and 100
/// drops, else 16 MiB and 24 drops. `RESUME_SEED` picks the drop points (printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksummed_stream_each_way_survives_forced_drops_on_one_backend_connection() {
    let ci = std::env::var_os("CI").is_some();
    let n = env_or("RESUME_STREAM_MIB", if ci { 256 } else { 16 }) << 20;
    let drops = env_or("RESUME_DROPS", if ci { 100 } else { 24 });
    let mut seed = env_or("RESUME_SEED", 0x5eed_1234_abcd_ef01) | 1;
    println!(
        "stream: {} MiB each way, {drops} drops, RESUME_SEED={seed:#x}",
        n >> 20
    );
    let started = std::time::Instant::now();
    let (backend, connections, mut verdicts) = stream_backend(n).await;
    let gw = spawn_gateway(&config_with(&resume_route(
        "stream",
        &format!("tcp://{backend}"),
        "grace_secs = 30\nheartbeat_secs = 2",
    )))
    .await;
    let relay = FaultRelay::start(gw.addr).await;
    let mut cuts: Vec<u64> = (0..drops).map(|_| xorshift(&mut seed) % n).collect();
    cuts.sort_unstable();
    cuts.reverse();

    let id = new_session_id(&mut seed);
    let mut s = ResumeSession::start(&relay.url("/stream"), &id).await;
    let mut received_ok = 0u64;
    const CHUNK: u64 = 64 * 1024;
    const MAX_KEPT: u64 = 1 << 20;
    // One cut per connection: a cut point reached while the last cut is not resumed yet waits
    // for the resume, so every drop breaks a live connection and `drops` resumes follow.
    let mut cuts_done = 0u64;
    while s.received < n || s.acked < n || !cuts.is_empty() {
        if let Some(&cut) = cuts.last() {
            if s.received >= cut && cuts_done == s.resumes {
                cuts.pop();
                relay.cut();
                cuts_done += 1;
            }
        }
        let mut broken = false;
        if s.sent < n && s.sent - s.acked < MAX_KEPT {
            let len = (n - s.sent).min(CHUNK) as usize;
            let chunk = pattern(s.sent, len);
            broken = s.send(&chunk).await.is_err();
        }
        if !broken {
            match s.recv().await {
                Ok(data) => {
                    assert!(
                        data == backend_pattern(received_ok, data.len()),
                        "backend→client bytes wrong at offset {received_ok}"
                    );
                    received_ok += data.len() as u64;
                }
                Err(code) if code >= 4000 => panic!("the gateway refused with {code}"),
                Err(_) => broken = true,
            }
        }
        if broken {
            s.resume(Duration::from_secs(20))
                .await
                .expect("the session resumes");
        }
    }
    assert_eq!(received_ok, n);
    s.ack().await;
    let code = s.end().await;
    assert_eq!(code, 1000, "END answered with END and 1000");
    let verdict = tokio::time::timeout(Duration::from_secs(20), verdicts.recv())
        .await
        .expect("the backend saw the end")
        .expect("a verdict");
    assert_eq!(verdict, Ok(()), "client→backend stream exact");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one backend connection"
    );
    assert_eq!(s.resumes, drops, "every drop was resumed");
    let mut times = s.resume_times.clone();
    times.sort_unstable();
    println!(
        "resume figures: {} MiB each way in {:?}, {} resumes after {drops} cuts; resume time p50 {:?}, p99 {:?}, max {:?}",
        n >> 20,
        started.elapsed(),
        s.resumes,
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().copied().unwrap_or_default(),
    );
    let text = scrape(gw.admin.unwrap()).await;
    assert!(text.contains("wsgate_resumes_total{route=\"stream\",result=\"resumed\"}"));
    gw.stop().await.unwrap();
}

/// A started session on an echo route, for the refusal tests.
async fn echo_session(extra: &str) -> (TestGateway, ResumeSession) {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&config_with(&format!(
        "{}{extra}",
        resume_route(
            "r",
            &format!("tcp://{echo}"),
            "grace_secs = 5\nheartbeat_secs = 1"
        )
    )))
    .await;
    let mut seed = 0x1234_5678_9abc_def1;
    let id = new_session_id(&mut seed);
    let s = ResumeSession::start(&gw.url("/r"), &id).await;
    (gw, s)
}

/// Send `data` and read it back through the session's echo.
async fn echo_through(s: &mut ResumeSession, data: &[u8]) {
    s.send(data).await.unwrap();
    let mut got: Vec<u8> = Vec::new();
    while got.len() < data.len() {
        got.extend(s.recv().await.expect("echo"));
    }
    assert_eq!(got, data);
}

/// A resume attempt's close code.
async fn resume_refusal(url: &str, id: &str, hello_message: Vec<u8>) -> u16 {
    let (mut ws, chosen) = resume_connect(&session_url(url, id, true))
        .await
        .expect("upgrade");
    assert_eq!(chosen.as_deref(), Some(SUBPROTOCOL));
    ws.send(Message::binary(hello_message)).await.unwrap();
    close_code(&mut ws).await
}

#[tokio::test]
async fn an_unknown_session_is_refused_with_4404() {
    let (gw, _s) = echo_session("").await;
    let code = resume_refusal(&gw.url("/r"), "neverexisted", hello(0, Some(&[7u8; 32]))).await;
    assert_eq!(code, 4404);
}

#[tokio::test]
async fn a_wrong_token_is_refused_with_4404_and_the_session_carries_on() {
    let (gw, mut s) = echo_session("").await;
    echo_through(&mut s, b"before").await;
    let mut wrong = s.token;
    wrong[0] ^= 1;
    let code = resume_refusal(&gw.url("/r"), &s.id, hello(s.received, Some(&wrong))).await;
    assert_eq!(code, 4404);
    echo_through(&mut s, b"after").await;
    let text = scrape(gw.admin.unwrap()).await;
    assert!(
        text.contains("wsgate_resumes_total{route=\"r\",result=\"bad_token\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn an_offset_beyond_what_was_sent_is_refused_with_4416() {
    let (gw, mut s) = echo_session("").await;
    echo_through(&mut s, b"12345").await;
    let code = resume_refusal(
        &gw.url("/r"),
        &s.id,
        hello(s.received + 100, Some(&s.token)),
    )
    .await;
    assert_eq!(code, 4416);
}

#[tokio::test]
async fn a_newer_attach_replaces_the_live_connection_with_4409() {
    let (gw, mut s) = echo_session("").await;
    echo_through(&mut s, b"one").await;
    let mut old = s.ws.take().unwrap();
    // The same client resumes while its old connection still looks alive.
    s.resume(Duration::from_secs(5)).await.expect("resumed");
    assert_eq!(close_code(&mut old).await, 4409);
    echo_through(&mut s, b"two").await;
    let text = scrape(gw.admin.unwrap()).await;
    assert!(
        text.contains("wsgate_resumes_total{route=\"r\",result=\"replaced\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_session_whose_grace_ran_out_is_gone() {
    let (backend, mut conns) = tcp_backend().await;
    let gw = spawn_gateway(&config_with(&resume_route(
        "g",
        &format!("tcp://{backend}"),
        "grace_secs = 0.3\nheartbeat_secs = 1",
    )))
    .await;
    let mut s = ResumeSession::start(&gw.url("/g"), "graceid").await;
    let mut conn = conns.recv().await.expect("backend dialled");
    drop(s.ws.take());
    // The backend connection closes when the grace period ends.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("backend closed in time");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert_eq!(s.resume(Duration::from_secs(2)).await, Err(4404));
    let text = scrape(gw.admin.unwrap()).await;
    assert!(
        text.contains("wsgate_resumes_total{route=\"g\",result=\"expired\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_live_id_cannot_start_a_second_session() {
    let (gw, s) = echo_session("").await;
    let (mut ws, _) = resume_connect(&session_url(&gw.url("/r"), &s.id, false))
        .await
        .unwrap();
    ws.send(Message::binary(hello(0, None))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 4412);
}

#[tokio::test]
async fn resumable_session_caps_refuse_with_4429() {
    for (limits, label) in [
        ("max_sessions = 1", "limit_sessions"),
        ("max_sessions_per_address = 1", "limit_address"),
        ("max_buffered_bytes = 3000000", "limit_buffer"),
    ] {
        let (gw, _first) = echo_session(&format!("\n[resume]\n{limits}\n")).await;
        let (mut ws, _) = resume_connect(&session_url(&gw.url("/r"), "second", false))
            .await
            .unwrap();
        ws.send(Message::binary(hello(0, None))).await.unwrap();
        assert_eq!(close_code(&mut ws).await, 4429, "{limits}");
        let text = scrape(gw.admin.unwrap()).await;
        assert!(
            text.contains(&format!(
                "wsgate_resumes_total{{route=\"r\",result=\"{label}\"}} 1"
            )),
            "{limits}: {text}"
        );
    }
}

/// Access checks run again on a resume: a token removed from the config by a reload cannot
/// resume the session it started.
#[tokio::test]
async fn revoked_credentials_cannot_resume() {
    let echo = tcp_echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    let write = |digests: &str| {
        let toml = config_with(&format!(
            "[reload]\nwatch = false\n{}\n[route.auth]\nbearer_sha256 = [{digests}]\ntoken_sources = [\"query\"]\n",
            resume_route("a", &format!("tcp://{echo}"), "grace_secs = 10")
        ));
        std::fs::write(&file, toml).unwrap();
    };
    write(&format!("\"{}\"", sha256_hex("alice-token")));
    let gw = spawn_gateway_from_file(&file).await;
    let base = format!("{}?access_token=alice-token", gw.url("/a"));
    let mut s = ResumeSession::start(&base, "revoked").await;
    echo_through(&mut s, b"hi").await;
    write(&format!("\"{}\"", sha256_hex("bob-token")));
    gw.reload.reload(Trigger::Api).await.expect("reloaded");
    drop(s.ws.take());
    let refused = resume_connect(&session_url(&base, "revoked", true)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert!(
                matches!(response.status().as_u16(), 401 | 403),
                "{}",
                response.status()
            );
        }
        other => panic!("a revoked token resumed: {:?}", other.map(|(_, p)| p)),
    }
}

/// A client that does not offer the subprotocol gets the ordinary session on a resumable
/// route: raw bytes, the route's own subprotocol.
#[tokio::test]
async fn a_client_without_the_subprotocol_gets_an_ordinary_session() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&config_with(&resume_route(
        "p",
        &format!("tcp://{echo}"),
        "",
    )))
    .await;
    let (mut ws, chosen) = ws_client_offering(&gw.url("/p?wsgate_session=x"), "binary").await;
    assert_eq!(chosen.as_deref(), Some("binary"));
    assert_echoes(&mut ws, b"\x03plain bytes, no framing").await;
    // And a route without [route.resume] does not answer the resume subprotocol.
    let gw2 = spawn_gateway(&config_with(&route("q", "/q", &format!("tcp://{echo}")))).await;
    let (mut ws, chosen) =
        ws_client_offering(&gw2.url("/q?wsgate_session=x"), "wsgate.resume.v1, binary").await;
    assert_eq!(chosen.as_deref(), Some("binary"));
    assert_echoes(&mut ws, b"raw").await;
}

#[tokio::test]
async fn resume_on_a_websocket_backend_is_refused_at_config_check() {
    let toml = config_with(&resume_route("w", "ws://127.0.0.1:9/x", ""));
    let error = wsgate::Config::from_toml(&toml).unwrap_err().to_string();
    assert!(
        error.contains("route[0].resume") && error.contains("WebSocket backend"),
        "{error}"
    );
}

#[tokio::test]
async fn the_client_library_is_served_on_listeners() {
    let echo = tcp_echo_backend().await;
    let gw = spawn_gateway(&config_with(&route("q", "/q", &format!("tcp://{echo}")))).await;
    let (status, response) = raw_http(
        gw.addr,
        "GET /.wsgate/resume.js HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        response
            .to_ascii_lowercase()
            .contains("content-type: text/javascript"),
        "{response}"
    );
    assert!(response.contains("ResumableWebSocket") && response.contains("wsgate.resume.v1"));
}

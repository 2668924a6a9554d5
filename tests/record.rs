//! Session recording through the real gateway: a terminal-like session recorded as asciicast
//! and played by the real asciinema CLI, a binary session recorded raw and re-emitted by
//! `wsgate replay` to a WebSocket client, caps, the best-effort queue, the required policy,
//! and the files' permissions.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::SinkExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Write `pieces` to the backend socket one by one, each flushed and given time to be read
/// on its own (so a character split between two pieces reaches the gateway in two reads).
async fn write_pieces(backend: &mut TcpStream, pieces: &[&[u8]]) {
    for p in pieces {
        backend.write_all(p).await.unwrap();
        backend.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// A recording made by the recorder itself (no gateway): `chunks` as backend→client bytes.
async fn recorded(dir: &Path, format: &str, chunks: &[&[u8]]) -> (PathBuf, serde_json::Value) {
    use wsgate::record::{Ending, RecordSettings, Recorder, SessionMeta};
    let mut c: wsgate::config::RecordConfig = toml::from_str(&format!(
        "dir = {:?}\nformat = {format:?}\nmin_free_bytes = 0\n",
        dir.display().to_string()
    ))
    .unwrap();
    c.width = 80;
    let settings = std::sync::Arc::new(RecordSettings::new("lib".into(), &c));
    let meta = SessionMeta {
        session_id: 1,
        backend: "tcp://127.0.0.1:1".into(),
        client: "127.0.0.1:2".parse().unwrap(),
        identity: None,
        user_agent: None,
        subprotocol: None,
    };
    let rec = Recorder::start(&settings, meta).await.unwrap().unwrap();
    let mut tap = rec.output_tap();
    for c in chunks {
        tap.record(c).await.unwrap();
    }
    drop(tap);
    rec.finish(Ending::default()).await;
    recordings(dir, 1).await.remove(0)
}

#[tokio::test]
async fn the_recorders_asciicast_plays_in_asciinema_with_split_characters_whole() {
    let dir = tempfile::tempdir().unwrap();
    let text = "héllo → 𝄞\r\n";
    let b = text.as_bytes();
    let (cast, _) = recorded(
        dir.path(),
        "asciicast",
        &[&b[..2], &b[2..9], &b[9..13], &b[13..]],
    )
    .await;
    let Some(asciinema) = asciinema() else { return };
    let out = std::process::Command::new(&asciinema[0])
        .args(&asciinema[1..])
        .arg("cat")
        .arg(&cast)
        .output()
        .unwrap();
    assert!(out.status.success(), "asciinema cat: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);
}

#[tokio::test]
async fn wsgate_replay_lists_cats_and_serves_a_raw_recording_over_websocket_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
    let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    let (file, _) = recorded(dir.path(), "raw", &refs).await;
    let all: Vec<u8> = chunks.concat();
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("replay")
        .arg(&file)
        .output()
        .unwrap();
    assert!(list.status.success());
    let listing = String::from_utf8_lossy(&list.stdout);
    assert_eq!(listing.matches("backend>client").count(), 5, "{listing}");
    let cat = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("replay")
        .arg(&file)
        .arg("--cat")
        .output()
        .unwrap();
    assert_eq!(cat.stdout, all);
    // A WebSocket client gets one binary message per recorded chunk, then a normal close.
    let (mut server, url) =
        replay_server(&file, &["--ws", "127.0.0.1:0", "--speed", "0", "--once"]).await;
    let (mut viewer, chosen) = ws_client_offering(&url, "binary").await;
    assert_eq!(chosen.as_deref(), Some("binary"));
    for c in &chunks {
        assert_eq!(next_data(&mut viewer).await.as_ref(), Some(c));
    }
    assert_eq!(expect_close(&mut viewer).await.0, 1000);
    assert!(server.wait().await.unwrap().success());
    // The same bytes as a TCP stream.
    let (mut server, url) =
        replay_server(&file, &["--tcp", "127.0.0.1:0", "--speed", "0", "--once"]).await;
    let addr = url.trim_start_matches("tcp://").trim_end_matches('/');
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, all);
    assert!(server.wait().await.unwrap().success());
}

#[tokio::test]
async fn a_terminal_session_recorded_as_asciicast_plays_in_asciinema_as_the_client_saw_it() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, mut accepted) = tcp_backend().await;
    let gw = recorded_gateway(
        "rec_term",
        &format!("tcp://{backend}"),
        dir.path(),
        "format = \"asciicast\"\nwidth = 100\nheight = 30",
    )
    .await;
    let mut ws = ws_client(&gw.url("/")).await;
    let mut shell = accepted.recv().await.unwrap();
    let text = "login: ok\r\n\u{1b}[32mgrüße\u{1b}[0m → 𝄞 naïve €\r\n$ ";
    let bytes = text.as_bytes();
    // Cuts inside "ü" (2 bytes), "→" (3 bytes) and "𝄞" (4 bytes).
    let u = text.find('ü').unwrap() + 1;
    let arrow = text.find('→').unwrap() + 2;
    let clef = text.find('𝄞').unwrap() + 3;
    write_pieces(
        &mut shell,
        &[
            &bytes[..u],
            &bytes[u..arrow],
            &bytes[arrow..clef],
            &bytes[clef..],
        ],
    )
    .await;
    // The client types; with input off this is not in the recording.
    ws.send(Message::binary(b"secret-password\r".to_vec()))
        .await
        .unwrap();
    let mut typed = vec![0u8; 16];
    shell.read_exact(&mut typed).await.unwrap();
    shell.shutdown().await.unwrap();
    let seen = read_to_close(&mut ws).await;
    assert_eq!(String::from_utf8(seen.clone()).unwrap(), text);

    let found = recordings(dir.path(), 1).await;
    let (cast, meta) = &found[0];
    assert!(cast.to_string_lossy().ends_with(".cast"), "{cast:?}");
    assert_eq!(meta["route"], "rec_term");
    assert_eq!(meta["format"], "asciicast");
    assert_eq!(meta["bytes_to_client"], bytes.len());
    assert_eq!(meta["input_recorded"], false);
    let body = std::fs::read_to_string(cast).unwrap();
    assert!(!body.contains("secret-password"), "input recorded: {body}");
    let header: serde_json::Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(
        (header["version"].as_u64(), header["width"].as_u64()),
        (Some(2), Some(100))
    );

    let Some(asciinema) = asciinema() else { return };
    let out = tokio::process::Command::new(&asciinema[0])
        .args(&asciinema[1..])
        .arg("cat")
        .arg(cast)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "asciinema cat: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        text,
        "asciinema's playback differs from what the client saw"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_binary_session_recorded_raw_is_replayed_by_wsgate_replay_to_a_websocket_client() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, mut accepted) = tcp_backend().await;
    let gw = recorded_gateway(
        "rec_raw",
        &format!("tcp://{backend}"),
        dir.path(),
        "input = true",
    )
    .await;
    let mut ws = ws_client(&gw.url("/")).await;
    let mut server = accepted.recv().await.unwrap();
    let all: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    write_pieces(&mut server, &[&all[..10], &all[10..40_000], &all[40_000..]]).await;
    send_binary(&mut ws, b"\x00client\xff").await;
    let mut got = [0u8; 8];
    server.read_exact(&mut got).await.unwrap();
    server.shutdown().await.unwrap();
    let seen = read_to_close(&mut ws).await;
    assert_eq!(seen, all);

    let found = recordings(dir.path(), 1).await;
    let (file, meta) = &found[0];
    assert_eq!(meta["format"], "raw");
    assert_eq!(meta["bytes_to_backend"], 8);
    assert_eq!(meta["truncated"], false);
    assert_eq!(meta["dropped_bytes"], 0);

    let (mut replay, url) =
        replay_server(file, &["--ws", "127.0.0.1:0", "--speed", "0", "--once"]).await;
    let mut viewer = ws_client(&url).await;
    let replayed = read_to_close(&mut viewer).await;
    assert_eq!(replayed.len(), all.len());
    assert!(replayed == all, "the replay differs from the session");
    let status = tokio::time::timeout(Duration::from_secs(10), replay.wait())
        .await
        .expect("--once exits after its client")
        .unwrap();
    assert!(status.success());
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn past_max_session_bytes_the_recording_stops_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, mut accepted) = tcp_backend().await;
    let gw = recorded_gateway(
        "rec_cap",
        &format!("tcp://{backend}"),
        dir.path(),
        "max_session_bytes = 1000",
    )
    .await;
    let mut ws = ws_client(&gw.url("/")).await;
    let mut server = accepted.recv().await.unwrap();
    let all = pattern(0, 5000);
    write_pieces(&mut server, &[&all[..600], &all[600..]]).await;
    server.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut ws).await, all);
    let (file, meta) = recordings(dir.path(), 1).await.remove(0);
    assert_eq!(meta["truncated"], true);
    assert_eq!(meta["bytes_to_client"], 5000);
    assert_eq!(meta["dropped_bytes"], 4400);
    let mut r = wsgate::record::replay::Recording::open(&file).unwrap();
    let mut payload = Vec::new();
    let mut markers = 0;
    while let Some(e) = r.next_event().unwrap() {
        match e.kind {
            wsgate::record::raw::Kind::Marker => markers += 1,
            _ => payload.extend_from_slice(&e.data),
        }
    }
    assert_eq!(payload, &all[..600]);
    assert_eq!(markers, 1);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn best_effort_with_a_tiny_queue_never_holds_the_session_back_and_accounts_for_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, mut accepted) = tcp_backend().await;
    let gw = recorded_gateway(
        "rec_tiny",
        &format!("tcp://{backend}"),
        dir.path(),
        "queue_chunks = 1",
    )
    .await;
    let mut ws = ws_client(&gw.url("/")).await;
    let mut server = accepted.recv().await.unwrap();
    let all = pattern(0, 4 << 20);
    let writer = tokio::spawn(async move {
        for piece in all.chunks(16 * 1024) {
            server.write_all(piece).await.unwrap();
        }
        server.shutdown().await.unwrap();
    });
    let seen = read_to_close(&mut ws).await;
    writer.await.unwrap();
    assert_eq!(seen, pattern(0, 4 << 20));
    let (file, meta) = recordings(dir.path(), 1).await.remove(0);
    let recorded = meta["recorded_bytes"].as_u64().unwrap();
    let dropped = meta["dropped_bytes"].as_u64().unwrap();
    assert_eq!(recorded + dropped, 4 << 20, "{meta}");
    let mut r = wsgate::record::replay::Recording::open(&file).unwrap();
    let (mut in_file, mut markers) = (0u64, 0u64);
    while let Some(e) = r.next_event().unwrap() {
        match e.kind {
            wsgate::record::raw::Kind::Marker => markers += 1,
            _ => in_file += e.data.len() as u64,
        }
    }
    assert_eq!(in_file, recorded);
    assert_eq!(markers, meta["gaps"].as_u64().unwrap());
    assert_eq!(dropped > 0, markers > 0, "every drop is marked: {meta}");
    eprintln!("tiny queue: {recorded} bytes recorded, {dropped} dropped in {markers} gaps");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn the_required_policy_refuses_a_session_whose_recording_cannot_be_created() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the folder should be: nothing can be created under it.
    let blocked = dir.path().join("not-a-folder");
    std::fs::write(&blocked, b"x").unwrap();
    let echo = tcp_echo_backend().await;
    let gw = recorded_gateway(
        "rec_required",
        &format!("tcp://{echo}"),
        &blocked,
        "policy = \"required\"",
    )
    .await;
    let (status, answer) = upgrade_with(gw.addr, "/", &[]).await;
    assert_eq!(status, 503, "{answer}");
    // The same under best_effort: the session runs unrecorded.
    let gw2 = recorded_gateway("rec_best", &format!("tcp://{echo}"), &blocked, "").await;
    let mut ws = ws_client(&gw2.url("/")).await;
    assert_echoes(&mut ws, b"still works").await;
    gw.stop().await.unwrap();
    gw2.stop().await.unwrap();
}

#[tokio::test]
async fn recordings_are_private_and_a_second_session_never_overwrites_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let echo = tcp_echo_backend().await;
    let gw = recorded_gateway("rec_files", &format!("tcp://{echo}"), dir.path(), "").await;
    for n in 0..2u8 {
        let mut ws = ws_client(&gw.url("/")).await;
        assert_echoes(&mut ws, &[n; 10]).await;
        ws.close(None).await.unwrap();
        finish_close(&mut ws).await;
    }
    let found = recordings(dir.path(), 2).await;
    assert_ne!(found[0].0, found[1].0);
    for (file, meta) in &found {
        for path in [
            file.clone(),
            PathBuf::from(format!("{}.json", file.display())),
        ] {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{path:?}");
        }
        let folder = std::fs::metadata(file.parent().unwrap()).unwrap();
        assert_eq!(folder.permissions().mode() & 0o777, 0o700);
        assert_eq!(file.parent().unwrap().file_name().unwrap(), "rec_files");
        let digest = ring_free_sha256(&std::fs::read(file).unwrap());
        assert_eq!(meta["sha256"], digest);
        assert!(!file.with_extension("wsrec.part").exists());
    }
    gw.stop().await.unwrap();
}

/// SHA-256 by `sha256sum` (coreutils), so the metadata's digest is checked by another tool.
fn ring_free_sha256(data: &[u8]) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

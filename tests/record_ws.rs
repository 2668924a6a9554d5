//! Session recording on routes to WebSocket backends, through the real gateway and a real
//! WebSocket echo backend: both directions of the frame relay recorded raw and as asciicast,
//! each file played back by `wsgate replay --cat` (and the asciicast by the real asciinema
//! CLI when it is installed) equal to what the client received, a session compressed on the
//! client hop recorded as the inflated message data, and the export for noVNC's playback page
//! (`wsgate replay --websockify-export`) read back the way that page reads it.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// A gateway with route `name` at `/` to a fresh WebSocket echo backend, recorded into `dir`
/// with `record` keys; `route_extra`: more keys of the route itself.
async fn recorded_ws_gateway(
    name: &str,
    dir: &Path,
    route_extra: &str,
    record: &str,
) -> TestGateway {
    let (backend, _seen) = ws_echo_backend().await;
    spawn_gateway(&config_with(&format!(
        "{}{route_extra}\n[route.record]\ndir = {:?}\nmin_free_bytes = 0\n{record}\n",
        route(name, "/", &format!("ws://{backend}/")),
        dir.display().to_string()
    )))
    .await
}

/// The one finished recording under `dir` (file, metadata), waiting up to 10 s: the metadata
/// is written just after the session's close.
async fn the_recording(dir: &Path) -> (PathBuf, serde_json::Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut found = Vec::new();
        let walk = |d: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(d)
                .map(|r| r.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        for date in walk(dir) {
            for route in walk(&date) {
                for file in walk(&route) {
                    if file.extension().is_some_and(|e| e == "json") {
                        let meta: serde_json::Value =
                            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
                        found.push((file.with_extension(""), meta));
                    }
                }
            }
        }
        if let Some(one) = found.pop() {
            assert!(found.is_empty(), "more than one recording: {found:?}");
            return one;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no finished recording under {} after 10 s",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `wsgate replay FILE --cat`: what the recording says the backend sent the client.
fn replay_cat(file: &Path) -> Vec<u8> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("replay")
        .arg(file)
        .arg("--cat")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "wsgate replay --cat: {out:?}");
    out.stdout
}

/// A raw recording's records of `kind`, each payload on its own.
fn raw_records(file: &Path, kind: wsgate::record::raw::Kind) -> Vec<Vec<u8>> {
    let f = std::fs::File::open(file).unwrap();
    let mut r = wsgate::record::raw::Reader::open(std::io::BufReader::new(f)).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        if rec.kind == kind {
            out.push(rec.payload);
        }
    }
    out
}

#[tokio::test]
async fn a_ws_route_recorded_raw_keeps_both_directions_and_replays_what_the_client_received() {
    let dir = tempfile::tempdir().unwrap();
    let gw = recorded_ws_gateway("wsraw", dir.path(), "", "format = \"raw\"\ninput = true").await;
    let mut ws = ws_client(&gw.url("/")).await;
    let messages: Vec<Vec<u8>> = vec![
        (0..=255u8).collect(),
        b"second message".to_vec(),
        vec![0xA5; 70_000],
    ];
    let mut received = Vec::new();
    for m in &messages {
        ws.send(Message::Binary(m.clone().into())).await.unwrap();
        let echoed = next_data(&mut ws).await.expect("the echo");
        assert_eq!(&echoed, m);
        received.extend_from_slice(&echoed);
    }
    ws.close(None).await.unwrap();
    finish_close(&mut ws).await;
    let (file, meta) = the_recording(dir.path()).await;
    assert!(file.extension().is_some_and(|e| e == "wsrec"), "{file:?}");
    assert_eq!(meta["format"], "raw");
    assert_eq!(meta["input_recorded"], true);
    assert!(
        meta["backend"].as_str().unwrap().starts_with("ws://"),
        "{meta}"
    );
    assert_eq!(meta["bytes_to_client"], received.len());
    assert_eq!(meta["recorded_bytes"], 2 * received.len());
    assert_eq!(meta["dropped_bytes"], 0);
    // One record per message each way: each message went in one frame.
    use wsgate::record::raw::Kind;
    assert_eq!(raw_records(&file, Kind::ClientToBackend), messages);
    assert_eq!(raw_records(&file, Kind::BackendToClient), messages);
    let replayed = replay_cat(&file);
    assert!(
        replayed == received,
        "the replay differs from what the client received"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_ws_route_recorded_as_asciicast_plays_back_what_the_client_received() {
    let dir = tempfile::tempdir().unwrap();
    let gw = recorded_ws_gateway(
        "wscast",
        dir.path(),
        "",
        "format = \"asciicast\"\ninput = true",
    )
    .await;
    let mut ws = ws_client(&gw.url("/")).await;
    let lines = ["$ echo héllo\r\n", "héllo → 𝄞\r\n", "€ done\r\n"];
    let mut received = Vec::new();
    for l in lines {
        ws.send(Message::Text((*l).into())).await.unwrap();
        let echoed = next_data(&mut ws).await.expect("the echo");
        assert_eq!(echoed, l.as_bytes());
        received.extend_from_slice(&echoed);
    }
    ws.close(None).await.unwrap();
    finish_close(&mut ws).await;
    let (file, meta) = the_recording(dir.path()).await;
    assert!(file.extension().is_some_and(|e| e == "cast"), "{file:?}");
    assert_eq!(meta["format"], "asciicast");
    let body = std::fs::read_to_string(&file).unwrap();
    let events: Vec<serde_json::Value> = body
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |kind: &str| -> String {
        events
            .iter()
            .filter(|e| e[1] == kind)
            .map(|e| e[2].as_str().unwrap().to_owned())
            .collect()
    };
    let text: String = lines.concat();
    assert_eq!(of("o"), text, "output events");
    assert_eq!(of("i"), text, "input events (input = true)");
    assert_eq!(replay_cat(&file), received);
    if let Some(asciinema) = asciinema() {
        let out = std::process::Command::new(&asciinema[0])
            .args(&asciinema[1..])
            .arg("cat")
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "asciinema cat: {out:?}");
        assert_eq!(out.stdout, received);
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_ws_route_records_no_input_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let gw = recorded_ws_gateway("wsout", dir.path(), "", "format = \"asciicast\"").await;
    let mut ws = ws_client(&gw.url("/")).await;
    ws.send(Message::Text("secret\r\n".into())).await.unwrap();
    assert_eq!(next_data(&mut ws).await.expect("the echo"), b"secret\r\n");
    ws.close(None).await.unwrap();
    finish_close(&mut ws).await;
    let (file, meta) = the_recording(dir.path()).await;
    assert_eq!(meta["input_recorded"], false);
    let body = std::fs::read_to_string(&file).unwrap();
    let kinds: Vec<String> = body
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()[1].to_string())
        .collect();
    assert!(kinds.iter().all(|k| k == "\"o\""), "{kinds:?}");
    assert_eq!(replay_cat(&file), b"secret\r\n");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_ws_route_under_the_required_policy_is_refused_when_its_recording_cannot_be_made() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the folder should be: nothing can be created under it.
    let blocked = dir.path().join("not-a-folder");
    std::fs::write(&blocked, b"x").unwrap();
    let gw = recorded_ws_gateway("wsreq", &blocked, "", "policy = \"required\"").await;
    let (status, answer) = upgrade_with(gw.addr, "/", &[]).await;
    assert_eq!(status, 503, "{answer}");
    gw.stop().await.unwrap();
    // Under best_effort the session runs unrecorded.
    let gw = recorded_ws_gateway("wsbest", &blocked, "", "").await;
    let mut ws = ws_client(&gw.url("/")).await;
    assert_echoes(&mut ws, b"still works").await;
    ws.close(None).await.unwrap();
    finish_close(&mut ws).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn compression_on_the_client_hop_still_records_inflated_data() {
    let dir = tempfile::tempdir().unwrap();
    let gw = recorded_ws_gateway(
        "wsz",
        dir.path(),
        "compression = \"on\"",
        "format = \"raw\"\ninput = true",
    )
    .await;
    let (mut ws, head) = raw_ws_client_with(gw.addr, "/", OFFER).await;
    assert_eq!(
        answer_header(&head, "sec-websocket-extensions"),
        Some("permessage-deflate"),
        "{head}"
    );
    let (mut def, mut inf) = (ClientDeflate::new(), ClientInflate::new());
    let line = b"{\"type\":\"tick\",\"symbol\":\"ACME\",\"price\":101.25,\"size\":300}\n";
    let messages: Vec<Vec<u8>> = [100usize, 70_000]
        .iter()
        .map(|&n| line.iter().copied().cycle().take(n).collect())
        .collect();
    let mut received = Vec::new();
    let mut compressed_answers = 0;
    for m in &messages {
        let wire = def.piece(m, true);
        assert!(wire.len() < m.len());
        ws.send(&client_frame(
            frame_bits::FIN | frame_bits::RSV1 | frame_bits::TEXT,
            &wire,
        ))
        .await;
        let (first, payload) = read_message(&mut ws).await;
        let echoed = if first & frame_bits::RSV1 != 0 {
            compressed_answers += 1;
            inf.message(&payload)
        } else {
            payload
        };
        assert_eq!(&echoed, m);
        received.extend_from_slice(&echoed);
    }
    assert!(
        compressed_answers > 0,
        "the gateway compressed for the client"
    );
    ws.send(&client_frame(
        frame_bits::FIN | frame_bits::CLOSE,
        &close_payload(1000, "bye"),
    ))
    .await;
    assert_eq!(ws.expect_close().await.0, 1000);
    let (file, meta) = the_recording(dir.path()).await;
    assert_eq!(meta["dropped_bytes"], 0);
    use wsgate::record::raw::Kind;
    let sent: Vec<u8> = raw_records(&file, Kind::ClientToBackend).concat();
    assert!(
        sent == messages.concat(),
        "client→backend records are the inflated messages"
    );
    let replayed = replay_cat(&file);
    assert!(
        replayed == received,
        "the replay differs from what the client received"
    );
    gw.stop().await.unwrap();
}

/// How noVNC's playback page (`tests/playback-ui.js` in noVNC's source) turns a websockify
/// record file into frames, run by Node.js on the file: load it as a script, tell the encoding
/// from the first entry, drop everything from `'EOF'`, then per entry `fromClient` (a leading
/// `}`), the time (digits after the first character) and the data (from after the first `{`
/// past index 0, one byte per character). Client entries' data is also read past their second
/// `}` (`client_data`), since noVNC's own split only suits server entries (it skips the
/// others when playing).
const NOVNC_PLAYBACK_PARSE: &str = r#"
const fs = require('fs');
const vm = require('vm');
const ctx = {};
vm.runInNewContext(fs.readFileSync(process.argv[1], 'latin1'), ctx);
const frames = ctx.VNC_frame_data;
const first = frames[0];
const start = first.indexOf('{', 1) + 1;
const encoding = first.slice(start, start + 4) === 'UkZC' ? 'base64' : 'binary';
const out = [];
for (let i = 0; i < frames.length; i++) {
    const frame = frames[i];
    if (frame === 'EOF') {
        if (i !== frames.length - 1) throw new Error('entries after EOF');
        break;
    }
    const dataIdx = frame.indexOf('{', 1) + 1;
    const time = parseInt(frame.slice(1, dataIdx - 1));
    const bytes = (s) => Array.from(s, (c) => {
        const code = c.charCodeAt(0);
        if (code > 255) throw new Error('a character above 255');
        return code;
    });
    out.push({
        fromClient: frame[0] === '}',
        timestamp: time,
        data: bytes(frame.slice(dataIdx)),
        client_data: bytes(frame.slice(frame.indexOf('}', 1) + 1)),
    });
}
process.stdout.write(JSON.stringify({ encoding, frames: out }));
"#;

/// Node.js for the playback check; under `CI=true` missing is a failure (`.ci/run` installs
/// Node.js for tests/oidc.rs).
fn node() -> Option<&'static str> {
    let works = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Some("node");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but no node: the websockify export is parsed as noVNC's playback page does"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED the websockify export check: no node"
    );
    None
}

#[tokio::test]
async fn the_websockify_export_parses_as_novnc_playback_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let gw = recorded_ws_gateway("wsvnc", dir.path(), "", "format = \"raw\"\ninput = true").await;
    let mut ws = ws_client(&gw.url("/")).await;
    // The first server message is an RFB greeting, as in a VNC session; then every byte,
    // quotes, backslashes and line ends among them.
    let messages: Vec<Vec<u8>> = vec![
        b"RFB 003.008\n".to_vec(),
        (0..=255u8).rev().collect(),
        b"it's a \\ 'quoted' \"line\"\r\n</script>".to_vec(),
    ];
    for m in &messages {
        ws.send(Message::Binary(m.clone().into())).await.unwrap();
        assert_eq!(&next_data(&mut ws).await.expect("the echo"), m);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    ws.close(None).await.unwrap();
    finish_close(&mut ws).await;
    let (file, _) = the_recording(dir.path()).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("replay")
        .arg(&file)
        .arg("--websockify-export")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wsgate replay --websockify-export: {out:?}"
    );
    let text = String::from_utf8(out.stdout).expect("the export is ASCII");
    assert!(text.is_ascii());
    assert!(text.starts_with("var VNC_frame_data = [\n"), "{text}");
    assert!(text.ends_with("'EOF'];\n"), "{text}");
    gw.stop().await.unwrap();

    let Some(node) = node() else { return };
    let js = dir.path().join("export.js");
    std::fs::write(&js, &text).unwrap();
    let parsed = std::process::Command::new(node)
        .arg("-e")
        .arg(NOVNC_PLAYBACK_PARSE)
        .arg(&js)
        .output()
        .unwrap();
    assert!(parsed.status.success(), "node: {parsed:?}");
    let v: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    assert_eq!(v["encoding"], "binary");
    let frames = v["frames"].as_array().unwrap();
    let bytes = |d: &serde_json::Value| -> Vec<u8> {
        d.as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect()
    };
    let server: Vec<Vec<u8>> = frames
        .iter()
        .filter(|f| f["fromClient"] == false)
        .map(|f| bytes(&f["data"]))
        .collect();
    let client: Vec<Vec<u8>> = frames
        .iter()
        .filter(|f| f["fromClient"] == true)
        .map(|f| bytes(&f["client_data"]))
        .collect();
    assert_eq!(server, messages, "server frames, as noVNC plays them");
    assert_eq!(client, messages, "client frames");
    // Each client message comes before its echo; times in milliseconds, never decreasing.
    assert_eq!(frames[0]["fromClient"], true);
    let times: Vec<u64> = frames
        .iter()
        .map(|f| f["timestamp"].as_u64().expect("an integer time"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(times.last().unwrap() >= &30, "{times:?}");
}

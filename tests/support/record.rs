//! Recorded routes: a gateway that records, the finished recordings under its folder, and
//! `wsgate replay` serving one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::*;

/// A gateway with route `name` at `/` to `backend`, recorded into `dir` with `record` keys.
pub async fn recorded_gateway(name: &str, backend: &str, dir: &Path, record: &str) -> TestGateway {
    spawn_gateway(&config_with(&format!(
        "{}\n[route.record]\ndir = {:?}\n{record}\n",
        route(name, "/", backend),
        dir.display().to_string()
    )))
    .await
}

/// Finished recordings under `dir` (the file and its parsed metadata), waiting up to 10 s for
/// `n` of them: the metadata is written just after the session's close.
pub async fn recordings(dir: &Path, n: usize) -> Vec<(PathBuf, serde_json::Value)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = finished_recordings(dir);
        if found.len() >= n {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} recordings under {} after 10 s: {:?}",
            found.len(),
            dir.display(),
            files_under(dir)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The recordings under `dir` that have their metadata, by session id.
pub fn finished_recordings(dir: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let mut out = Vec::new();
    for file in files_under(dir) {
        if file.extension().is_some_and(|e| e == "json") {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            out.push((file.with_extension(""), meta));
        }
    }
    out.sort_by_key(|(_, m)| m["session_id"].as_u64());
    out
}

/// Every file in the `DATE/ROUTE/` folders under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let walk = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for date in walk(dir) {
        for route in walk(&date) {
            out.extend(walk(&route));
        }
    }
    out.sort();
    out
}

/// Read every data message until the server closes; everything concatenated.
pub async fn read_to_close(ws: &mut WsClient) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = next_data(ws).await {
        out.extend_from_slice(&b);
    }
    out
}

/// Start `wsgate replay FILE ARGS…` serving on a free port; the URL it printed.
pub async fn replay_server(file: &Path, args: &[&str]) -> (tokio::process::Child, String) {
    let mut replay = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("replay")
        .arg(file)
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(replay.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("replay prints its address")
        .unwrap()
        .unwrap();
    let url = first
        .strip_prefix("replaying on ")
        .unwrap_or_else(|| panic!("first line: {first}"))
        .to_owned();
    (replay, url)
}

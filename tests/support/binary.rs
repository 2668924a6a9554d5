//! The real `wsgate` binary as a child process, for what only the program shows: its command
//! line, its start-up lines, its working directory and its process limits.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// Start the binary with `args` (in `cwd` when given) and read its stdout until a line
/// contains `until` (20 s at most); the child and the lines read so far.
pub async fn start_binary(cwd: Option<&Path>, args: &[&str], until: &str) -> (Child, Vec<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let mut child = command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("wsgate starts");
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut lines = Vec::new();
    let found = timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = out.next_line().await {
            let done = line.contains(until);
            lines.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "wsgate {args:?} never printed {until:?}; printed {lines:?}"
    );
    (child, lines)
}

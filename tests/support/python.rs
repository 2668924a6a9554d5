//! Peers we did not write, run by Python (the `websockets` library): found once, started the
//! same way by every test that needs one.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// The Python that runs `websockets` peers: `WSGATE_PYTHON` when set (CI sets it, and then it
/// must work), else `python3` if it can import `websockets`, else none.
pub fn python_with_websockets() -> Option<String> {
    let (python, required) = match std::env::var("WSGATE_PYTHON") {
        Ok(p) if !p.is_empty() => (p, true),
        _ => ("python3".to_owned(), false),
    };
    let works = std::process::Command::new(&python)
        .args(["-c", "import websockets"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        works || !required,
        "WSGATE_PYTHON={python} cannot import websockets"
    );
    works.then_some(python)
}

/// [`python_with_websockets`], or `None` after a `SKIPPED` line naming `test` on stderr.
pub fn python_with_websockets_or_skip(test: &str) -> Option<String> {
    let python = python_with_websockets();
    if python.is_none() {
        // Straight to stderr: the test harness captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: no python3 with the `websockets` module (pip install websockets, \
             or set WSGATE_PYTHON)"
        );
    }
    python
}

/// A Python script running as a child process, its stdout read line by line; killed on drop.
pub struct PythonPeer {
    pub child: Child,
    out: Lines<BufReader<ChildStdout>>,
    _dir: tempfile::TempDir,
}

impl PythonPeer {
    /// Run `script` (Python source) with `args`.
    pub fn start(python: &str, script: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.py");
        std::fs::write(&path, script).unwrap();
        let mut child = tokio::process::Command::new(python)
            .arg(&path)
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python starts");
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            out,
            _dir: dir,
        }
    }

    /// The next line the script printed (10 s limit).
    pub async fn next_line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), self.out.next_line())
            .await
            .expect("the Python peer prints in time")
            .unwrap()
            .expect("the Python peer is running")
    }

    /// The next line, as the port the script listens on.
    pub async fn port(&mut self) -> u16 {
        self.next_line().await.parse().expect("the port")
    }

    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// A Python `websockets` echo server on a free port (printed first), with compression per its
/// argument (`on`/`off`); it prints the extensions its hop negotiated for each connection.
pub const PYTHON_WS_ECHO: &str = r#"
import asyncio, sys
import websockets

compression = None if sys.argv[1] == "off" else "deflate"

async def echo(ws):
    print("extensions", ws.response.headers.get("Sec-WebSocket-Extensions", "none"), flush=True)
    try:
        async for message in ws:
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass

async def main():
    async with websockets.serve(echo, "127.0.0.1", 0, max_size=None, compression=compression) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
"#;

/// The command that runs the asciinema CLI (`asciinema` 2.4 from PyPI): `WSGATE_PYTHON -m
/// asciinema` (CI installs it beside `websockets`), else `python3 -m asciinema`, else
/// `asciinema` on the PATH. Under `CI=true` a missing asciinema fails the test.
pub fn asciinema() -> Option<Vec<String>> {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("WSGATE_PYTHON") {
        if !p.is_empty() {
            candidates.push(vec![p, "-m".into(), "asciinema".into()]);
        }
    }
    candidates.push(vec!["python3".into(), "-m".into(), "asciinema".into()]);
    candidates.push(vec!["asciinema".into()]);
    for c in candidates {
        let works = std::process::Command::new(&c[0])
            .args(&c[1..])
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            return Some(c);
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but no asciinema CLI: install it with pip install 'asciinema==2.4.*' \
         (into WSGATE_PYTHON's environment)"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED the asciinema playback check: no asciinema CLI (pip install 'asciinema==2.4.*')"
    );
    None
}

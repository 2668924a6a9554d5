//! Real component: Debian's `haproxy` as the L4 load balancer, sending PROXY v2
//! (`send-proxy-v2`) to two wsgate processes (the real binary). Sessions spread over both,
//! the backend and the access log see the test client's own address and port, and a rolling
//! restart of one replica (SIGTERM drain) loses no byte of the other's sessions while new
//! sessions land on the survivor. `.ci/run` installs haproxy; without it this test fails
//! when `CI` is set and prints a skip otherwise.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;
use tokio_util::sync::CancellationToken;

use support::*;

const ROUTE: &str = "lb";
const CHUNK: usize = 997;

/// `haproxy` on PATH, or `None` (then the test panics under CI and skips elsewhere).
fn haproxy() -> Option<&'static str> {
    let found = std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("haproxy");
    }
    if std::env::var_os("CI").is_some() {
        panic!("haproxy is not installed, and CI is set: .ci/run installs Debian's haproxy");
    }
    eprintln!(
        "SKIPPED: haproxy is not installed (apt-get install haproxy); set CI to fail instead"
    );
    None
}

/// One wsgate process behind the balancer, its log in a file.
struct Replica {
    listen: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Replica {
    async fn start(dir: &Path, name: &str, backend: SocketAddr) -> Self {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[[listener]]\naddress = \"{listen}\"\nproxy_protocol = true\n\
                 trusted_proxies = [\"127.0.0.1\"]\n\n[admin]\naddress = \"{admin}\"\n\n\
                 [timeouts]\nshutdown_grace_secs = 10\nclose_grace_secs = 2\n\n\
                 [[route]]\nname = \"{ROUTE}\"\npath = \"/\"\nbackend = \"tcp://{backend}\"\n\
                 send_proxy_protocol = \"v2\"\n"
            ),
        )
        .unwrap();
        Self::spawn(listen, admin, config, dir.join(format!("{name}.log"))).await
    }

    async fn spawn(listen: SocketAddr, admin: SocketAddr, config: PathBuf, log: PathBuf) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .expect("wsgate starts");
        wait_for_listener(admin).await;
        Self {
            listen,
            admin,
            config,
            log,
            child,
        }
    }

    /// SIGTERM, then wait for the drain to finish and the process to exit 0.
    async fn stop(&mut self) {
        let pid = self.child.id().expect("running").to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(kill.success());
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the replica drains and exits")
            .unwrap();
        assert_eq!(status.code(), Some(0), "{}", self.log_text());
    }

    /// The same replica again, on the same ports and config.
    async fn restart(self) -> Self {
        Self::spawn(self.listen, self.admin, self.config, self.log).await
    }

    async fn sessions_total(&self) -> f64 {
        metric(
            &scrape(self.admin).await,
            &format!("wsgate_sessions_total{{route=\"{ROUTE}\"}}"),
        )
        .unwrap_or(0.0)
    }

    async fn sessions_active(&self) -> f64 {
        metric(
            &scrape(self.admin).await,
            &format!("wsgate_sessions_active{{route=\"{ROUTE}\"}}"),
        )
        .unwrap_or(0.0)
    }

    /// The replica's log without colour codes.
    fn log_text(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                chars.by_ref().find(|&c| c == 'm');
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// haproxy in TCP mode on a loopback frontend, `leastconn` over `replicas` (what suits
/// long-lived sessions; `roundrobin` gave 3 + 1 now and then, its position moved by the
/// health checks) with PROXY v2 to each (health checks send it too) and redispatch when one
/// refuses.
async fn start_haproxy(bin: &str, dir: &Path, replicas: &[&Replica]) -> (Child, SocketAddr) {
    let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let servers: String = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "    server wsgate{i} {} send-proxy-v2 check check-send-proxy inter 100ms fall 3 rise 1\n",
                r.listen
            )
        })
        .collect();
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n    maxconn 256\n\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n\
             \x20   timeout server 60s\n    timeout check 2s\n    retries 3\n    option redispatch 1\n\n\
             frontend ws\n    bind {front}\n    default_backend wsgates\n\n\
             backend wsgates\n    balance leastconn\n{servers}"
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

/// A WebSocket through the balancer; returns it, the client's own address, and what the
/// backend said it saw as the client (from wsgate's PROXY v2 header).
async fn session_via(front: SocketAddr) -> (WsClient, SocketAddr, String) {
    let tcp = TcpStream::connect(front).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{front}/"), MaybeTlsStream::Plain(tcp))
            .await
            .expect("upgrade through haproxy");
    let seen = String::from_utf8(next_data(&mut ws).await.expect("the backend's report")).unwrap();
    (ws, local, seen)
}

/// How a streaming session ended.
#[derive(Debug, PartialEq)]
enum Ended {
    /// Stopped by the test after this many bytes, every one echoed back intact.
    Stopped(u64),
    /// The gateway closed it with this code.
    Closed(u16),
}

/// Send the pattern stream in chunks and check each echo, until `stop` (then close
/// normally) or the gateway's Close. `progress` counts verified bytes.
async fn stream(mut ws: WsClient, stop: CancellationToken, progress: Arc<AtomicU64>) -> Ended {
    let mut offset = 0u64;
    loop {
        if stop.is_cancelled() {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
            return Ended::Stopped(offset);
        }
        let chunk = pattern(offset, CHUNK);
        if ws.send(Message::binary(chunk.clone())).await.is_err() {
            return Ended::Closed(1006);
        }
        let mut got = Vec::with_capacity(CHUNK);
        while got.len() < CHUNK {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => got.extend_from_slice(&b),
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Ended::Closed(f.map_or(1005, |f| u16::from(f.code)))
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("at byte {offset}: {other:?}"),
            }
        }
        assert_eq!(got, chunk, "echo mismatch at byte {offset}");
        offset += CHUNK as u64;
        progress.store(offset, Ordering::Relaxed);
        // Paced: four streams flat out on a shared 2-core box starve haproxy's health
        // checks and the processes under test.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_spreads_sessions_passes_the_client_address_and_survives_a_rolling_restart() {
    let Some(bin) = haproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let backend = proxy_reading_backend().await;
    let a = Replica::start(dir.path(), "a", backend).await;
    let mut b = Replica::start(dir.path(), "b", backend).await;
    let (_haproxy, front) = start_haproxy(bin, dir.path(), &[&a, &b]).await;

    // Four sessions, two per replica; each one's backend saw the test client's own
    // address and port, carried haproxy → wsgate → backend in PROXY v2 headers.
    let stop = CancellationToken::new();
    let mut sessions = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (ws, local, seen) = session_via(front).await;
        let source = seen.split(' ').next().unwrap_or_default().to_owned();
        assert_eq!(source, local.to_string(), "backend saw {seen}");
        clients.push(local);
        let progress = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(stream(ws, stop.clone(), progress.clone()));
        sessions.push((task, progress));
    }
    let mut spread: (f64, f64);
    assert_eventually!(
        {
            spread = (a.sessions_active().await, b.sessions_active().await);
            spread == (2.0, 2.0)
        },
        "sessions did not spread 2 + 2 over the replicas: {spread:?}"
    );

    // Rolling restart of `a`: its sessions get 1001, `b`'s stream on untouched.
    let mut a = a;
    a.stop().await;
    let b_before = b.sessions_total().await;
    let progress_at_restart: Vec<u64> = sessions
        .iter()
        .map(|(_, p)| p.load(Ordering::Relaxed))
        .collect();
    // New sessions while `a` is down all land on `b`, with the right client address.
    for _ in 0..3 {
        let (mut ws, local, seen) = session_via(front).await;
        assert!(seen.starts_with(&format!("{local} ")), "backend saw {seen}");
        assert_echoes(&mut ws, b"new session on the survivor").await;
        ws.close(None).await.unwrap();
        finish_close(&mut ws).await;
    }
    assert_eq!(b.sessions_total().await, b_before + 3.0);
    // `b`'s sessions kept streaming through all of it.
    let mut survivors = 0;
    for ((task, progress), at_restart) in sessions.iter().zip(&progress_at_restart) {
        if !task.is_finished() {
            let moved_on = at_restart + 20 * CHUNK as u64;
            assert_eventually!(
                progress.load(Ordering::Relaxed) > moved_on,
                "a session on the survivor stalled"
            );
            survivors += 1;
        }
    }
    assert_eq!(survivors, 2);

    // `a` comes back and gets new sessions again.
    let a = a.restart().await;
    assert_eventually!(
        {
            let (mut ws, _, _) = session_via(front).await;
            ws.close(None).await.unwrap();
            finish_close(&mut ws).await;
            a.sessions_total().await >= 1.0
        },
        "haproxy sent nothing to the restarted replica"
    );

    stop.cancel();
    let mut ended = Vec::new();
    for (task, _) in sessions {
        ended.push(task.await.expect("no echo mismatch"));
    }
    let closed_1001 = ended.iter().filter(|e| **e == Ended::Closed(1001)).count();
    let stopped = ended
        .iter()
        .filter(|e| matches!(e, Ended::Stopped(n) if *n > 0))
        .count();
    assert_eq!((closed_1001, stopped), (2, 2), "{ended:?}");

    // The access log names each client by its own address (from the PROXY header), not
    // haproxy's.
    let mut a = a;
    a.stop().await;
    b.stop().await;
    let logs = format!("{}{}", a.log_text(), b.log_text());
    for client in clients {
        assert!(
            logs.lines()
                .any(|l| l.contains("session closed") && l.contains(&format!("client={client}"))),
            "no session-closed line for client={client}:\n{logs}"
        );
    }
}

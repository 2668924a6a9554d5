//! A real shell behind a TCP service: what a terminal route puts behind the gateway.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// A TCP service that runs a real `/bin/sh` per connection, its stdin, stdout and stderr on
/// the socket (what `socat TCP-LISTEN:…,fork EXEC:sh,stderr` gives a terminal route).
pub async fn shell_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let socket = stream.into_std().unwrap();
            socket.set_nonblocking(false).unwrap();
            let out = socket.try_clone().unwrap();
            let err = socket.try_clone().unwrap();
            let mut child = std::process::Command::new("/bin/sh")
                .stdin(Stdio::from(std::os::fd::OwnedFd::from(socket)))
                .stdout(Stdio::from(std::os::fd::OwnedFd::from(out)))
                .stderr(Stdio::from(std::os::fd::OwnedFd::from(err)))
                .spawn()
                .expect("/bin/sh runs");
            // Reaped when it exits (the session's end closes its stdin).
            tokio::task::spawn_blocking(move || child.wait());
        }
    });
    addr
}

/// A shell service: each TCP connection gets its own `/bin/sh` reading commands from the
/// socket and writing its output (stdout and stderr) back. Counts the connections; sends the
/// PID of every shell it started.
pub async fn shell_service() -> (
    SocketAddr,
    Arc<AtomicUsize>,
    tokio::sync::mpsc::UnboundedReceiver<u32>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let (pids, pid_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let mut child = tokio::process::Command::new("/bin/sh")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("/bin/sh starts");
            let _ = pids.send(child.id().unwrap_or_default());
            let (mut from_client, to_client) = socket.into_split();
            let to_client = Arc::new(tokio::sync::Mutex::new(to_client));
            let mut stdin = child.stdin.take().expect("piped");
            let mut stdout = child.stdout.take().expect("piped");
            let mut stderr = child.stderr.take().expect("piped");
            tokio::spawn(async move {
                let input = async {
                    let _ = tokio::io::copy(&mut from_client, &mut stdin).await;
                    drop(stdin);
                };
                let out = {
                    let to_client = to_client.clone();
                    async move {
                        let mut buf = vec![0u8; 4096];
                        while let Ok(n @ 1..) =
                            tokio::io::AsyncReadExt::read(&mut stdout, &mut buf).await
                        {
                            if to_client.lock().await.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                };
                let err = async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n @ 1..) =
                        tokio::io::AsyncReadExt::read(&mut stderr, &mut buf).await
                    {
                        if to_client.lock().await.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::join!(input, out, err);
                let _ = child.wait().await;
            });
        }
    });
    (addr, accepted, pid_rx)
}

//! A real shell behind a TCP service: what a terminal route puts behind the gateway.

use std::net::SocketAddr;
use std::process::Stdio;

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

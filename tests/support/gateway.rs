//! A real gateway on loopback ports, in this test's runtime: configs, spawn, stop; and the
//! clock and port helpers tests need around a gateway or a gateway process.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wsgate::{Config, Gateway};

/// A gateway running in this test's runtime.
pub struct TestGateway {
    /// The first public listener.
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// The public listeners as reloads change them.
    pub listeners: wsgate::gateway::BoundListeners,
    pub reload: wsgate::ops::reload::ReloadHandle,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// SIGTERM, in-process: cancel and wait for `run` to return.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("gateway drained in time")
            .expect("gateway task did not panic")
    }
}

/// A config with one plain listener and the admin listener on free ports, plus `extra` TOML
/// (routes, `[timeouts]`, `[limits]`).
pub fn config_with(extra: &str) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n{extra}\n"
    )
}

/// One route `name` at `path` to `backend`.
pub fn route(name: &str, path: &str, backend: &str) -> String {
    format!("[[route]]\nname = \"{name}\"\npath = \"{path}\"\nbackend = \"{backend}\"\n")
}

/// Start a gateway from TOML text.
pub async fn spawn_gateway(toml: &str) -> TestGateway {
    let gateway = bind_retrying(|| async {
        Gateway::bind(Config::from_toml(toml).expect("test config is valid")).await
    })
    .await;
    run_gateway(gateway)
}

/// Start a gateway from a config file, which its reloads read again.
pub async fn spawn_gateway_from_file(path: &std::path::Path) -> TestGateway {
    run_gateway(bind_retrying(|| Gateway::bind_file(path)).await)
}

/// Bind, trying again for up to 2 s while an address is in use: a port a test picked with
/// [`free_port`] (and wrote into a config) can be held for a moment by a parallel test's
/// own `free_port` probe (`acme::a_reload_adds_and_removes_acme_names` failed that way once).
async fn bind_retrying<F, Fut>(bind: F) -> Gateway
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Gateway>>,
{
    let mut tries = 0;
    loop {
        match bind().await {
            Ok(gateway) => return gateway,
            Err(e) if tries < 40 && in_use(&e) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("gateway binds: {e:?}"),
        }
    }
}

fn in_use(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    })
}

fn run_gateway(gateway: Gateway) -> TestGateway {
    let addr = gateway.public_urls()[0].0;
    let admin = gateway.admin_addr();
    let listeners = gateway.bound_listeners();
    let reload = gateway.reload_handle();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway.run(shutdown.clone()));
    TestGateway {
        addr,
        admin,
        shutdown,
        task,
        listeners,
        reload,
    }
}

/// A gateway with a single route `/` named `name` to `backend`.
pub async fn gateway_to(name: &str, backend: &str) -> TestGateway {
    spawn_gateway(&config_with(&route(name, "/", backend))).await
}

/// A gateway with one route `/` named `name` to `backend`, plus TOML after the route (keys
/// such as `message_type = ...` continue the route table; `[timeouts]`/`[limits]` start new ones).
pub async fn gateway_with(name: &str, backend: &str, extra: &str) -> TestGateway {
    spawn_gateway(&config_with(&format!(
        "{}{extra}\n",
        route(name, "/", backend)
    )))
    .await
}

/// A gateway with one route `/` named `name` to a fresh TCP echo backend, plus `extra` TOML
/// (`[timeouts]`, `[limits]`).
pub async fn echo_gateway(name: &str, extra: &str) -> TestGateway {
    let echo = super::tcp_echo_backend().await;
    spawn_gateway(&config_with(&format!(
        "{}\n{extra}\n",
        route(name, "/", &format!("tcp://{echo}"))
    )))
    .await
}

/// Keepalive at 20 s for ping and pong: under a paused clock, a ping at 20 s and a timeout at
/// 40 s of virtual time.
pub const KEEPALIVE_20S: &str = "[timeouts]\nping_interval_secs = 20\npong_timeout_secs = 20\n";

/// Under a paused clock tokio jumps to the next timer whenever the runtime parks, even when that
/// park also delivered socket readiness. A 1 ms ticker caps every jump, so a loopback round trip
/// costs a few virtual milliseconds while idle waits (a ping due in 20 s) still pass at once.
pub fn tick_paused_clock() {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}

/// A free loopback port (bound, then released) for a process that binds it itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Retry connecting to `addr` until something listens there, for up to 10 s.
pub async fn wait_for_listener(addr: SocketAddr) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("nothing listens on {addr} after 10 s"));
}

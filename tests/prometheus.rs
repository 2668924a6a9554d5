//! A real Prometheus (Debian's `prometheus`) scrapes a running gateway: the exposition format,
//! the admin listener and the route labels work for the scraper users run, and the shipped
//! alert rules (deploy/prometheus-rules.yml) load into it.
//!
//! Needs `prometheus` on PATH (or WSGATE_PROMETHEUS naming the binary); .ci/run installs it.
//! Without it the test fails when CI is set, and says it skipped otherwise.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// The prometheus binary, or None when it is not installed.
fn prometheus_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WSGATE_PROMETHEUS") {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
}

/// A Prometheus server on loopback, killed (and reaped) when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    /// Start `binary` scraping `target`'s /metrics every second, with its storage in `dir`.
    fn start(binary: &Path, dir: &Path, target: SocketAddr) -> Self {
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus-rules.yml");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: wsgate\n    static_configs:\n      - targets: [\"{target}\"]\n",
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Self { child, addr, log }
    }

    /// Until `/-/ready` answers 200 (it answers 503 while its storage opens), 30 s at most;
    /// panics with its log if it exits first.
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                let request = "GET /-/ready HTTP/1.0\r\nHost: localhost\r\n\r\n";
                if raw_http(self.addr, request).await.0 == 200 {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.logs());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus not ready on {} in 30 s:\n{}",
                self.addr,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `result` array of an instant query through the HTTP API.
    async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        // HTTP/1.0: the answer is not chunked and ends with the connection.
        let (status, answer) = raw_http(
            self.addr,
            &format!("GET /api/v1/query?query={promql} HTTP/1.0\r\nHost: localhost\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let body: serde_json::Value = serde_json::from_str(answer_body(&answer))
            .unwrap_or_else(|e| panic!("query answer is not JSON ({e}): {answer}"));
        assert_eq!(body["status"], "success", "{body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// What it logged (to stderr), for a failure message.
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn prometheus_scrapes_sessions_by_route() {
    let Some(binary) = prometheus_binary() else {
        if std::env::var_os("CI").is_some() {
            panic!("prometheus is not installed (apt-get install prometheus; .ci/run does)");
        }
        eprintln!("SKIPPED prometheus_scrapes_sessions_by_route: no prometheus on PATH (apt-get install prometheus, or set WSGATE_PROMETHEUS)");
        return;
    };

    let backend = tcp_echo_backend().await;
    let gateway = gateway_to("scraped", &format!("tcp://{backend}")).await;
    let admin = gateway.admin.expect("an admin listener");
    let mut ws = ws_client(&gateway.url("/")).await;
    assert_echoes(&mut ws, b"scrape me").await;
    ws.close(None).await.unwrap();
    finish_close(&mut ws).await;

    let dir = tempfile::tempdir().unwrap();
    let mut prometheus = Prometheus::start(&binary, dir.path(), admin);
    prometheus.wait_ready().await;

    // Startup, then a scrape every second: 60 s is generous for a loaded machine.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let series = loop {
        let result = prometheus.query("wsgate_sessions_total").await;
        // Per route there is a series per protocol (the `h2` one at 0 here): taking the first
        // match read the h2 series.
        let found = result.into_iter().find(|s| {
            s["metric"]["route"] == "scraped"
                && s["metric"]["protocol"] == "http1"
                && s["metric"]["job"] == "wsgate"
        });
        match found {
            Some(series) => break series,
            None if tokio::time::Instant::now() > deadline => panic!(
                "no wsgate_sessions_total{{route=\"scraped\"}} in Prometheus after 60 s\n{}",
                prometheus.logs()
            ),
            None => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    // An instant vector sample is [timestamp, "value"].
    assert_eq!(series["value"][1], "1", "{series}");
    assert_eq!(series["metric"]["instance"], admin.to_string(), "{series}");

    // The alert rules loaded: Prometheus lists every group of the file.
    let (status, rules) = raw_http(
        prometheus.addr,
        "GET /api/v1/rules HTTP/1.0\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{rules}");
    assert!(
        rules.contains("\"WsgateBackendDown\"") && rules.contains("\"WsgateReloadFailed\""),
        "deploy/prometheus-rules.yml not loaded: {rules}\n{}",
        prometheus.logs()
    );

    drop(prometheus);
    gateway.stop().await.unwrap();
}

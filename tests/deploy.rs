//! The Grafana dashboard and the alert rules in `deploy/` query only metrics a live gateway
//! exports: a renamed metric or a typo would leave a panel empty and an alert silent forever.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Metrics the deploy files already query that no wsgate build exports yet. Each is planned
/// by the operations work (issue 10); the test fails once one appears in `/metrics` or among
/// the names in `src/`, so the entry is removed (and the test made to produce it) then.
const PLANNED: &[(&str, &str)] = &[];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `wsgate_*` name in `text`.
fn wsgate_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("wsgate_") {
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if len > "wsgate_".len() {
            names.insert(tail[..len].to_owned());
        }
        rest = &tail[len..];
    }
    names
}

/// The dashboard's panels and variables, checked for shape; returns every metric it names.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = repo().join("deploy/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let panels = dashboard["panels"].as_array().expect("a panels array");
    let mut names = BTreeSet::new();
    let mut queries = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().expect("every panel has a title");
        let targets = panel["targets"]
            .as_array()
            .expect("every panel has targets");
        assert!(!targets.is_empty(), "panel {title:?} queries nothing");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            let found = wsgate_names(expr);
            assert!(
                !found.is_empty(),
                "panel {title:?}: {expr} names no wsgate metric"
            );
            names.extend(found);
            queries += 1;
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        names.extend(wsgate_names(&variable.to_string()));
    }
    assert!(queries >= 10, "only {queries} queries in the dashboard");
    names
}

fn rules_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus-rules.yml"))
        .expect("deploy/prometheus-rules.yml");
    wsgate_names(&text)
}

/// Metric names on a `/metrics` page (histograms as their `_bucket`, `_sum`, `_count` series).
fn exported(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| l.starts_with("wsgate_"))
        .map(|l| l[..l.find(['{', ' ']).unwrap_or(l.len())].to_owned())
        .collect()
}

/// The text of every `.rs` file under `dir`.
fn rust_sources(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()) {
        if entry.is_dir() {
            text += &rust_sources(&entry);
        } else if entry.extension().is_some_and(|e| e == "rs") {
            text += &std::fs::read_to_string(&entry).unwrap();
        }
    }
    text
}

/// A self-signed `localhost` certificate and key, as PEM files in `dir`.
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    (cert_file, key_file)
}

#[tokio::test]
async fn dashboard_and_alert_rules_query_only_exported_metrics() {
    let mut queried = dashboard_metrics();
    queried.extend(rules_metrics());
    let planned: BTreeSet<String> = PLANNED.iter().map(|(n, _)| n.to_string()).collect();

    // One gateway for sessions (pings every 200 ms, a silent client gone 1 s later), one
    // with a TLS listener for a failed handshake. The recorder is process-wide: one page
    // shows both.
    let backend = tcp_echo_backend().await;
    // A pool route, for the per-backend series.
    let gateway = spawn_gateway(&config_with(&format!(
        "[timeouts]\nping_interval_secs = 0.2\npong_timeout_secs = 1\n\n{}\n\
         [[route]]\nname = \"pool\"\npath = \"/pool\"\nbackends = [\"tcp://{backend}\"]\n",
        route("echo", "/echo", &format!("tcp://{backend}"))
    )))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = self_signed(dir.path());
    let tls_gateway = spawn_gateway(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[listener.tls]\ncert_file = {:?}\n\
         key_file = {:?}\n\n{}",
        cert_file.display().to_string(),
        key_file.display().to_string(),
        route("echo", "/echo", &format!("tcp://{backend}"))
    ))
    .await;
    let admin = gateway.admin.expect("an admin listener");

    // A session that answers pings (tungstenite pongs while it is read) and moves data; one
    // that never answers (keepalive timeout, then its close); a request no route takes; a
    // TLS listener spoken to in plain HTTP.
    let mut answering = ws_client(&gateway.url("/echo")).await;
    assert_echoes(&mut answering, b"deploy").await;
    // Read on its own task: however slow the scrapes below, its pongs are never late.
    let answering = tokio::spawn(async move { while let Some(Ok(_)) = answering.next().await {} });
    let silent = raw_ws_client(gateway.addr, "/echo").await;
    let (status, _) = upgrade_with(gateway.addr, "/nowhere", &[]).await;
    assert_eq!(status, 404);
    let mut plain = TcpStream::connect(tls_gateway.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read(&mut [0u8; 64])).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let names = loop {
        let names = exported(&scrape(admin).await);
        let missing: Vec<_> = queried.difference(&names).collect();
        let waiting_for_planned_only = missing.iter().all(|n| planned.contains(*n));
        if waiting_for_planned_only || tokio::time::Instant::now() > deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(silent);
    assert!(!answering.is_finished(), "the answering session ended");

    let missing: Vec<_> = queried
        .difference(&names)
        .filter(|n| !planned.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/ queries metrics the gateway does not export: {missing:?}\nexported: {names:?}"
    );
    let source = rust_sources(&repo().join("src"));
    for (name, what) in PLANNED {
        assert!(
            !names.contains(*name) && !source.contains(name),
            "{name} ({what}) exists now: remove it from PLANNED and make this test produce it"
        );
        assert!(
            queried.contains(*name),
            "{name} is in PLANNED but deploy/ no longer queries it"
        );
    }

    gateway.stop().await.unwrap();
    tls_gateway.stop().await.unwrap();
}

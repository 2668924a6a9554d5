//! The docs tell the truth about what the code produces: every metric the real gateway
//! exports is in docs/metrics.md's table with its type and labels, every row there is
//! exported, and every rejection reason the code can give is in the HTTP-answers table.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::*;

fn doc(page: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(page);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The rows of the first table under the `## {heading}` section of `page`, as cells.
fn table_rows(page: &str, heading: &str) -> Vec<Vec<String>> {
    let text = doc(page);
    let start = text
        .lines()
        .position(|l| l.trim() == format!("## {heading}"))
        .unwrap_or_else(|| panic!("{page} has no \"## {heading}\" section"));
    let rows: Vec<Vec<String>> = text
        .lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with("## "))
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .skip(2) // the header row and its `|---|` line
        .map(|l| {
            // `\|` inside a cell is a literal bar, not a column.
            let l = l.replace("\\|", "\u{0}");
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.replace('\u{0}', "|").trim().to_owned())
                .collect()
        })
        .collect();
    assert!(!rows.is_empty(), "{page}: \"## {heading}\" has no table");
    rows
}

/// The `code spans` of one table cell.
fn code_spans(cell: &str) -> BTreeSet<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// What docs/metrics.md's "Every metric" table says: name → (type, label names).
fn documented_metrics() -> BTreeMap<String, (String, BTreeSet<String>)> {
    table_rows("docs/metrics.md", "Every metric")
        .into_iter()
        .map(|row| {
            let name = code_spans(&row[0])
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("docs/metrics.md: a row without a `name`: {row:?}"));
            (name, (row[1].clone(), code_spans(&row[2])))
        })
        .collect()
}

/// What a `/metrics` page holds: name → (type, label names seen on its samples).
fn exported_metrics(page: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut metrics: BTreeMap<String, (String, BTreeSet<String>)> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), (kind.trim().to_owned(), BTreeSet::new())))
        .collect();
    for line in page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| metrics.get(*base).is_some_and(|(k, _)| k != "counter"))
            .unwrap_or(name);
        let entry = metrics
            .entry(base.to_owned())
            .or_insert_with(|| ("untyped".to_owned(), BTreeSet::new()));
        for pair in labels.trim_end_matches('}').split("\",") {
            if let Some((label, _)) = pair.split_once('=') {
                if label != "le" && label != "quantile" {
                    entry.1.insert(label.trim_start_matches(',').to_owned());
                }
            }
        }
    }
    metrics
}

/// Every metric `/metrics` exports is in docs/metrics.md's table with the type and labels
/// it has, and every row of the table is exported: a gateway with every kind of listener
/// (plain with PROXY headers, TLS with HTTP/2, h2c), a pool, the per-core mode, one session
/// and one rejection, a route whose JWT keys come from a (here unreachable) key set, and the
/// browser sign-in. A metric added without its row (or a row without its metric) fails
/// here with the names.
#[tokio::test]
async fn every_exported_metric_is_in_the_metrics_table_and_every_row_is_exported() {
    let pki = pki();
    let one = tcp_echo_backend().await;
    let two = tcp_echo_backend().await;
    let provider = refused_addr().await;
    let files = tempfile::tempdir().expect("temp dir");
    let secret = files.path().join("client-secret");
    let keys = files.path().join("cookie-keys");
    std::fs::write(&secret, "docs-truth-secret\n").expect("secret written");
    std::fs::write(&keys, format!("{}\n", "ab".repeat(32))).expect("cookie keys written");
    let recordings = tempfile::tempdir().expect("recordings folder");
    let toml = tls_config(
        &pki.cert_file,
        &pki.key_file,
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\nh2c = true\n\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n\
             trusted_proxies = [\"192.0.2.1\"]\n\n\
             [runtime]\nmode = \"per-core\"\nworker_threads = 2\n\n\
             [[route]]\nname = \"pool\"\npath = \"/\"\nbackends = [\"tcp://{one}\", \"tcp://{two}\"]\n\n\
             [[route]]\nname = \"udp\"\npath = \"/udp\"\nbackend = \"udp://127.0.0.1:9\"\n\n\
             [[route]]\nname = \"recorded\"\npath = \"/recorded\"\nbackend = \"tcp://{one}\"\n\
             [route.record]\ndir = \"{recordings}\"\n\n\
             [[route]]\nname = \"resumable\"\npath = \"/resumable\"\nbackend = \"tcp://{one}\"\n\
             [route.resume]\n\n\
             [[route]]\nname = \"keys\"\npath = \"/keys\"\nbackend = \"builtin:echo\"\n\
             [route.auth.jwt]\njwks_url = \"http://{provider}/jwks\"\naudience = \"a\"\n\n\
             [signin]\nissuer = \"http://{provider}\"\nclient_id = \"c\"\n\
             client_secret_file = {secret:?}\nredirect_url = \"http://127.0.0.1:9/cb\"\n\
             cookie_keys_file = {keys:?}\n",
            recordings = recordings.path().display()
        ),
    );
    let gw = spawn_gateway(&toml).await;
    let admin = gw.admin.expect("admin listener");
    let plain = gw.listeners.urls()[1].0;

    let mut ws = ws_client(&format!("ws://{plain}/")).await;
    assert_echoes(&mut ws, b"hello").await;
    ws.close(None).await.expect("close sent");
    finish_close(&mut ws).await;
    let (status, _) = raw_http(
        plain,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "the rejection this test wants");

    // The close is recorded when the session task ends, the reload metrics when its task
    // starts, the key set's counters when its refresher starts: wait for them before comparing.
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page = answer_body(&scrape(admin).await).to_owned();
        let ready = [
            "wsgate_closes_total",
            "wsgate_config_info",
            "wsgate_jwks_refreshes_total",
        ]
        .iter()
        .all(|m| page.contains(&format!("\n{m}{{")));
        if ready || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exported = exported_metrics(&page);
    let documented = documented_metrics();

    let names = |m: &BTreeMap<String, _>| m.keys().cloned().collect::<BTreeSet<String>>();
    let missing: Vec<_> = names(&exported)
        .difference(&names(&documented))
        .cloned()
        .collect();
    let extra: Vec<_> = names(&documented)
        .difference(&names(&exported))
        .cloned()
        .collect();
    let mut wrong = Vec::new();
    for (name, (kind, labels)) in &exported {
        if let Some((doc_kind, doc_labels)) = documented.get(name) {
            if doc_kind != kind {
                wrong.push(format!(
                    "{name}: exported as {kind}, documented as {doc_kind}"
                ));
            }
            if doc_labels != labels {
                wrong.push(format!(
                    "{name}: exported with labels {labels:?}, documented with {doc_labels:?}"
                ));
            }
        }
    }
    assert!(
        missing.is_empty() && extra.is_empty() && wrong.is_empty(),
        "docs/metrics.md \"Every metric\" table disagrees with /metrics:\n\
         exported but not in the table: {missing:?}\n\
         in the table but not exported: {extra:?}\n\
         rows that say otherwise: {wrong:#?}\n\n/metrics was:\n{page}"
    );
    gw.stop().await.expect("gateway stops cleanly");
}

/// Every `reason` label a rejection can carry (`RejectError::LABELS`, which a unit test
/// holds to the code) is in docs/behaviour.md's HTTP-answers table, and the table names no
/// other.
#[test]
fn every_rejection_reason_is_in_the_http_answers_table() {
    let documented: BTreeSet<String> =
        table_rows("docs/behaviour.md", "HTTP answers before the upgrade")
            .iter()
            .flat_map(|row| code_spans(&row[2]))
            .collect();
    let code: BTreeSet<String> = wsgate::error::RejectError::LABELS
        .iter()
        .map(|l| (*l).to_owned())
        .collect();
    let missing: Vec<_> = code.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/behaviour.md \"HTTP answers before the upgrade\" disagrees with RejectError::LABELS:\n\
         reasons the code gives but the table lacks: {missing:?}\n\
         reasons in the table the code never gives: {extra:?}"
    );
}

/// The doc check itself: a metric missing from the table, or a row with no metric, is seen.
#[test]
fn a_missing_or_extra_metric_row_is_caught() {
    let page = "# TYPE wsgate_a counter\nwsgate_a{route=\"r\"} 0\n\
                # TYPE wsgate_h histogram\nwsgate_h_bucket{route=\"r\",le=\"1\"} 0\n\
                wsgate_h_sum{route=\"r\"} 0\nwsgate_h_count{route=\"r\"} 0\n";
    let exported = exported_metrics(page);
    assert_eq!(
        exported.keys().collect::<Vec<_>>(),
        ["wsgate_a", "wsgate_h"],
        "histogram parts fold into their metric"
    );
    assert_eq!(exported["wsgate_h"].1, BTreeSet::from(["route".to_owned()]));
    let documented = documented_metrics();
    assert!(!documented.contains_key("wsgate_a"));
    assert!(documented.contains_key("wsgate_sessions_active"));
    assert_eq!(
        documented["wsgate_closes_total"].1,
        BTreeSet::from(["route", "code", "initiator"].map(str::to_owned))
    );
}

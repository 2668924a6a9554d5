//! The admin `/metrics` page: scrape it, read a series, wait for a value.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

/// GET the admin `/metrics` page.
pub async fn scrape(admin: SocketAddr) -> String {
    let (status, text) = raw_http(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    text
}

/// The value of `name{labels}`: the sum over every line of that name whose labels include
/// the given ones (in any order), as PromQL's `sum(name{labels})`; `None` if no line matches.
/// So `wsgate_sessions_total{route="x"}` counts sessions over HTTP/1.1 and HTTP/2 alike.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    let (name, want) = split_series(series);
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (line_series, value) = l.rsplit_once(' ')?;
            let (line_name, labels) = split_series(line_series);
            (line_name == name && want.iter().all(|w| labels.contains(w)))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .reduce(|a, b| a + b)
}

/// `name{a="1",b="2"}` → (`name`, [`a="1"`, `b="2"`]). Label values here hold no commas.
fn split_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        Some((name, rest)) => (
            name,
            rest.trim_end_matches('}')
                .split(',')
                .filter(|l| !l.is_empty())
                .collect(),
        ),
        None => (series, Vec::new()),
    }
}

/// Retry an async condition for up to 10 s.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if $cond {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                panic!($($msg)+);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// Scrape until `series` (as `metric` spells it) has `value`, for up to 10 s.
pub async fn expect_metric(admin: SocketAddr, series: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let last = metric(&scrape(admin).await, series);
        if last == Some(value) || tokio::time::Instant::now() > deadline {
            assert_eq!(last, Some(value), "{series}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `wsgate_worker_sessions_active{worker="i"}` for workers `0..workers` (0 when absent).
pub fn worker_sessions(page: &str, workers: usize) -> Vec<f64> {
    (0..workers)
        .map(|i| {
            metric(
                page,
                &format!("wsgate_worker_sessions_active{{worker=\"{i}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .collect()
}

/// Open sessions to `url`, each checked by an echo, until every one of `workers` per-core
/// workers serves at least one (the kernel picks a worker per connection; 64 sessions at
/// most, where missing a worker by chance is below 2^-60 for two). Every open session is
/// counted on exactly one worker.
pub async fn sessions_on_every_worker(
    url: &str,
    admin: SocketAddr,
    workers: usize,
) -> Vec<WsClient> {
    let mut sessions = Vec::new();
    loop {
        let mut ws = ws_client(url).await;
        assert_echoes(&mut ws, format!("session {}", sessions.len()).as_bytes()).await;
        sessions.push(ws);
        let counts = worker_sessions(&scrape(admin).await, workers);
        assert_eq!(
            counts.iter().sum::<f64>(),
            sessions.len() as f64,
            "every session on one worker: {counts:?}"
        );
        if counts.iter().all(|&n| n > 0.0) {
            return sessions;
        }
        assert!(
            sessions.len() < 64,
            "64 sessions and a worker got none: {counts:?}"
        );
    }
}

/// `wsgate_closes_total` for one route, code and initiator, as the exporter renders it: `code`
/// is a registered code by number (`1000`) or a folded range (`"4xxx"`).
pub fn closes(route: &str, code: impl std::fmt::Display, initiator: &str) -> String {
    format!("wsgate_closes_total{{route=\"{route}\",code=\"{code}\",initiator=\"{initiator}\"}}")
}

/// `wsgate_sessions_active` for one route (both protocols summed, as `metric` reads it).
pub fn active(route: &str) -> String {
    format!("wsgate_sessions_active{{route=\"{route}\"}}")
}

/// `wsgate_upgrade_rejections_total` for one route and reason.
pub fn rejections(route: &str, reason: &str) -> String {
    format!("wsgate_upgrade_rejections_total{{route=\"{route}\",reason=\"{reason}\"}}")
}

/// `wsgate_keepalive_timeouts_total` for one route.
pub fn keepalive_timeouts(route: &str) -> String {
    format!("wsgate_keepalive_timeouts_total{{route=\"{route}\"}}")
}

//! Series exist at zero from the start, and only those the config can produce: rejection
//! reasons before the first rejection, no `protocol="h2"` series where no listener speaks
//! HTTP/2. Its own test binary: the metrics recorder is per process, and a gateway with an
//! HTTP/2 listener elsewhere in the process would register h2 series here too.

mod support;

use support::*;

/// Defect: `wsgate_upgrade_rejections_total{route,reason}` appeared only with the first
/// rejection, so `increase()` in an alert missed the first one after a start.
#[tokio::test]
async fn rejection_reasons_are_exported_at_zero_before_the_first_rejection() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("zero", &format!("tcp://{echo}")).await;
    let page = scrape(gw.admin.expect("admin listener")).await;
    for route in ["zero", "none"] {
        for reason in wsgate::error::RejectError::LABELS {
            let series =
                format!("wsgate_upgrade_rejections_total{{route=\"{route}\",reason=\"{reason}\"}}");
            assert_eq!(
                metric(&page, &series),
                Some(0.0),
                "{series} missing:\n{page}"
            );
        }
    }
    gw.stop().await.expect("gateway stops cleanly");
}

/// Defect: a gateway with only a plain HTTP/1.1 listener exported `protocol="h2"` session
/// series it could never use.
#[tokio::test]
async fn a_plain_listener_exports_no_h2_session_series() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("plain", &format!("tcp://{echo}")).await;
    let page = scrape(gw.admin.expect("admin listener")).await;
    let http1 = "wsgate_sessions_total{route=\"plain\",protocol=\"http1\"}";
    assert_eq!(metric(&page, http1), Some(0.0), "{page}");
    assert!(
        !page.contains("protocol=\"h2\""),
        "h2 series on a plain listener:\n{page}"
    );
    gw.stop().await.expect("gateway stops cleanly");
}

//! The admin API (session list, status) through raw HTTP requests.

use std::net::SocketAddr;

use super::http::{answer_body, raw_http};

/// `METHOD path` on the admin listener with extra header lines; returns the status and answer.
pub async fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    raw_http(
        admin,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n"
        ),
    )
    .await
}

/// GET an admin API path that must answer 200; its JSON body.
pub async fn admin_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let (status, answer) = admin_request(admin, "GET", path, &[]).await;
    assert_eq!(status, 200, "GET {path}: {answer}");
    serde_json::from_str(answer_body(&answer)).expect("JSON body")
}

/// The live sessions the admin API lists.
pub async fn live_sessions(admin: SocketAddr) -> Vec<serde_json::Value> {
    admin_json(admin, "/api/sessions").await["sessions"]
        .as_array()
        .expect("sessions array")
        .clone()
}

//! A route as the running gateway uses it: its compiled access rules and target, backend TLS,
//! size limits, and how a client's path maps onto a WebSocket backend's.

use std::sync::Arc;

use crate::backend::pool::Pool;
use crate::policy::{Access, Target};
use crate::session::settings::SessionSettings;

/// A route's resolved admission caps: its own keys, else the `[limits]` defaults.
#[derive(Debug, Clone, Default)]
pub struct RouteLimits {
    /// Sessions on this route; `None`: no cap.
    pub max_sessions: Option<usize>,
}

/// A validated route, shared by every session that uses it.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    pub path: String,
    /// Host names in compared form (`config::host_pattern`): `vnc.example.com`, or
    /// `*.example.com`; empty: any host.
    pub hosts: Vec<String>,
    /// The fixed backend, or where each session's target comes from.
    pub backend: Target,
    pub subprotocols: Vec<String>,
    /// Lower-case header names copied to a WebSocket backend's handshake.
    pub forward_headers: Vec<hyper::header::HeaderName>,
    /// Forward the credential the gateway checked (bearer `Authorization`, the auth cookie)
    /// with `forward_headers`; otherwise it is withheld.
    pub forward_credentials: bool,
    pub strip_path_prefix: bool,
    /// TLS client settings for a `wss://` backend.
    pub backend_tls: Option<Arc<rustls::ClientConfig>>,
    /// `backends`: the pool that picks each session's backend (`backend` is then `Pool`).
    pub pool: Option<Arc<Pool>>,
    /// Byte backends get a PROXY v2 header with the client's address first.
    pub send_proxy_protocol: bool,
    /// Origin allowlist and credentials.
    pub access: Access,
    /// Session cap.
    pub limits: RouteLimits,
    /// What the route's sessions run with: sizes, keepalive, pacing, compression.
    pub session: SessionSettings,
}

impl Route {
    /// The path and query to request from a WebSocket backend for this client request, whose
    /// path the router matched to this route (so it passed `check_path`). A path that does not
    /// start with the route's contributes nothing: a backend only gets what the router matched.
    pub fn backend_path(
        &self,
        backend_path: &str,
        request_path: &str,
        query: Option<&str>,
    ) -> String {
        let rest = match request_path.strip_prefix(self.path.as_str()) {
            Some(rest) if self.strip_path_prefix && self.path.ends_with('/') => rest,
            Some(_) if self.path.ends_with('/') => request_path.trim_start_matches('/'),
            _ => "",
        };
        let (base, base_query) = match backend_path.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (backend_path, None),
        };
        let mut out = String::with_capacity(base.len() + rest.len() + 16);
        out.push_str(base);
        if !rest.is_empty() {
            if !out.ends_with('/') {
                out.push('/');
            }
            out.push_str(rest);
        }
        let queries: Vec<&str> = [base_query, query]
            .into_iter()
            .flatten()
            .filter(|q| !q.is_empty())
            .collect();
        if !queries.is_empty() {
            out.push('?');
            out.push_str(&queries.join("&"));
        }
        out
    }
}

/// One route fixture for every unit test of this folder: new fields get a default here once.
#[cfg(test)]
impl Route {
    /// A route at `path` to the built-in echo, accepting `binary` and `mqtt`, every other
    /// setting at its plain default.
    pub(crate) fn for_test(name: &str, path: &str) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            hosts: Vec::new(),
            backend: Target::Fixed(crate::config::BackendAddr::BuiltinEcho),
            subprotocols: vec!["binary".into(), "mqtt".into()],
            forward_headers: vec![],
            forward_credentials: false,
            strip_path_prefix: true,
            backend_tls: None,
            pool: None,
            send_proxy_protocol: false,
            access: Access::default(),
            limits: Default::default(),
            session: SessionSettings {
                buffer_bytes: 64 * 1024,
                max_frame_bytes: 1 << 20,
                max_message_bytes: 1 << 20,
                message_type: crate::config::MessageType::Binary,
                watch_backlog_bytes: 0,
                ping_interval: None,
                pong_timeout: std::time::Duration::from_secs(10),
                close_grace: std::time::Duration::from_secs(5),
                backend_stall: std::time::Duration::from_secs(30),
                bandwidth_bytes_per_sec: None,
                compression: None,
                udp: Default::default(),
                record: None,
                resume: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_path_mapping() {
        let mut r = Route::for_test("a", "/apps/");
        assert_eq!(
            r.backend_path("/", "/apps/chat/1", Some("t=1")),
            "/chat/1?t=1"
        );
        assert_eq!(
            r.backend_path("/base?k=v", "/apps/x", Some("t=1")),
            "/base/x?k=v&t=1"
        );
        r.strip_path_prefix = false;
        assert_eq!(r.backend_path("/", "/apps/chat", None), "/apps/chat");
        assert_eq!(
            r.backend_path("/", "/other/x", None),
            "/",
            "not the route's path"
        );
        r.path = "/exact".into();
        assert_eq!(r.backend_path("/ws", "/exact", None), "/ws");
    }
}

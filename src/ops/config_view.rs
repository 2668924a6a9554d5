//! The running config as the admin API shows it (`GET /api/config`): one serialisable view
//! of the config's own types, so a key added to them shows up here without a change. What
//! must not be shown is marked where it is declared: secrets are `config::Secret`s (they
//! serialise as `"<redacted>"`) and backend URLs serialise with their query values redacted.
//! Nothing is rebuilt or redacted by name here.

use std::net::SocketAddr;

use serde::Serialize;

use crate::config::{
    Config, EgressConfig, Http2Config, Limits, ListenerConfig, LogConfig, ReloadConfig,
    RouteConfig, RuntimeMode, Secret,
};

/// The config as `GET /api/config` answers it.
#[derive(Debug, Serialize)]
pub struct ConfigView<'a> {
    listener: &'a [ListenerConfig],
    admin: Option<AdminView<'a>>,
    timeouts: TimeoutsView,
    limits: &'a Limits,
    route: &'a [RouteConfig],
    egress: &'a Option<EgressConfig>,
    runtime: RuntimeView,
    http2: &'a Http2Config,
    reload: &'a ReloadConfig,
    log: &'a LogConfig,
}

/// `[admin]` as resolved.
#[derive(Debug, Serialize)]
struct AdminView<'a> {
    address: SocketAddr,
    bearer_sha256: Option<Secret<&'a String>>,
    allowed_hosts: &'a [String],
}

/// `[timeouts]` as resolved, in seconds (0 for a keepalive that is off).
#[derive(Debug, Serialize)]
struct TimeoutsView {
    tls_handshake_secs: f64,
    header_read_secs: f64,
    backend_connect_secs: f64,
    ping_interval_secs: f64,
    pong_timeout_secs: f64,
    close_grace_secs: f64,
    shutdown_grace_secs: f64,
    drain_grace_secs: f64,
}

/// `[runtime]` as resolved.
#[derive(Debug, Serialize)]
struct RuntimeView {
    mode: RuntimeMode,
    worker_threads: usize,
}

impl<'a> ConfigView<'a> {
    pub fn of(config: &'a Config) -> Self {
        Self {
            listener: &config.listeners,
            admin: config.admin.map(|address| AdminView {
                address,
                bearer_sha256: config.admin_bearer_sha256.as_ref().map(Secret),
                allowed_hosts: &config.admin_allowed_hosts,
            }),
            timeouts: TimeoutsView {
                tls_handshake_secs: config.tls_handshake_timeout.as_secs_f64(),
                header_read_secs: config.header_read_timeout.as_secs_f64(),
                backend_connect_secs: config.backend_connect_timeout.as_secs_f64(),
                ping_interval_secs: config.ping_interval.map_or(0.0, |d| d.as_secs_f64()),
                pong_timeout_secs: config.pong_timeout.as_secs_f64(),
                close_grace_secs: config.close_grace.as_secs_f64(),
                shutdown_grace_secs: config.shutdown_grace.as_secs_f64(),
                drain_grace_secs: config.drain_grace.as_secs_f64(),
            },
            limits: &config.limits,
            route: &config.routes,
            egress: &config.egress,
            runtime: RuntimeView {
                mode: config.runtime_mode,
                worker_threads: config.worker_threads,
            },
            http2: &config.http2,
            reload: &config.reload,
            log: &config.log,
        }
    }

    /// The view as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        // Every part is plain data with string keys: serialising it cannot fail.
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN_DIGEST: &str = "aa8fc4df6cc4e4f5a2b3b1d2c5bd0e0f6e3a9e2b7c4d1f0a9b8c7d6e5f4a3b2c";
    const ROUTE_DIGEST: &str = "bb0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d";

    #[test]
    fn the_view_shows_the_config_and_no_secret() {
        let config = Config::from_toml(&format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\n\
             [admin]\naddress = \"127.0.0.1:0\"\nbearer_sha256 = \"{ADMIN_DIGEST}\"\n\n\
             [[route]]\nname = \"feed\"\npath = \"/feed\"\n\
             backend = \"ws://127.0.0.1:9/feed?api_key=s3cret-key&v=2\"\n\
             [route.auth]\nbearer_sha256 = [\"{ROUTE_DIGEST}\"]\n\n\
             [[route]]\nname = \"pool\"\npath = \"/pool\"\n\
             backends = [\"ws://127.0.0.1:9/?token=pool-s3cret\", \"ws://127.0.0.1:10/\"]\n\
             [[route]]\nname = \"jwks\"\npath = \"/jwks\"\nbackend = \"tcp://127.0.0.1:9\"\n\
             [route.auth.jwt]\njwks_url = \"https://idp.example/jwks?key=jwks-s3cret\"\n\
             audience = \"wsgate\"\n"
        ))
        .expect("valid config");
        let json = ConfigView::of(&config).to_json();
        let text = json.to_string();
        for secret in [
            ADMIN_DIGEST,
            ROUTE_DIGEST,
            "s3cret-key",
            "pool-s3cret",
            "jwks-s3cret",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(json["admin"]["bearer_sha256"], "<redacted>");
        assert_eq!(json["route"][0]["auth"]["bearer_sha256"], "<redacted>");
        assert_eq!(
            json["route"][0]["backend"],
            "ws://127.0.0.1:9/feed?api_key=<redacted>&v=<redacted>"
        );
        assert_eq!(json["route"][1]["backends"][1], "ws://127.0.0.1:10/");
        // What is not secret is shown as configured.
        assert_eq!(json["route"][0]["name"], "feed");
        assert_eq!(json["route"][0]["auth"]["query_param"], "access_token");
        assert!(json["timeouts"]["close_grace_secs"].is_number());
        assert!(json["listener"][0]["address"].is_string());
    }
}

//! One immutable value built from a validated config: the router, each route with its compiled
//! policy and backend settings, the listeners' TLS configs, admission. It is the only thing the
//! running gateway reads configuration from, and the unit a reload swaps: live sessions keep
//! the snapshot they started with.

mod route;
mod router;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::backend::Dialer;
use crate::config::{is_hop_header, BackendAddr, Config};
use crate::policy::{Access, Admission, Egress, Target};

pub use route::{Route, RouteLimits};
pub use router::{select_subprotocol, Router};

/// Everything a connection or a session needs from the configuration it started with.
#[derive(Debug)]
pub struct Snapshot {
    /// The validated file this snapshot was built from.
    pub config: Config,
    pub routes: Vec<Arc<Route>>,
    pub router: Router,
    /// Each public listener's rustls config, in `config.listeners` order (`None`: plain `ws`).
    pub listener_tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    pub dialer: Dialer,
    pub buffer_bytes: usize,
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    pub close_grace: Duration,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_header_bytes: usize,
    /// Session caps and handshake rate, shared by every request.
    pub admission: Arc<Admission>,
}

impl Snapshot {
    /// Compile `config`: read certificates, keys, token files and JWT keys, parse origins
    /// and egress rules. Errors name the key. `echo_addr` is where the built-in echo
    /// service listens (`None` when no route uses it, or when only checking).
    pub fn build(config: Config, echo_addr: Option<SocketAddr>) -> anyhow::Result<Self> {
        crate::tls::install_crypto_provider();
        let mut listener_tls = Vec::with_capacity(config.listeners.len());
        for (i, l) in config.listeners.iter().enumerate() {
            listener_tls.push(match &l.tls {
                Some(t) => Some(
                    crate::tls::server_config(t, l.http2)
                        .with_context(|| format!("listener[{i}].tls ({})", l.address))?,
                ),
                None => None,
            });
        }
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| compile_route(&config, i, r).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let egress = config
            .egress
            .as_ref()
            .map(Egress::from_config)
            .transpose()?
            .map(Arc::new);
        Ok(Self {
            router: Router::new(&routes),
            routes,
            listener_tls,
            dialer: Dialer {
                connect_timeout: config.backend_connect_timeout,
                echo_addr,
                egress,
            },
            buffer_bytes: config.buffer_bytes,
            ping_interval: config.ping_interval,
            pong_timeout: config.pong_timeout,
            close_grace: config.close_grace,
            header_read_timeout: config.header_read_timeout,
            tls_handshake_timeout: config.tls_handshake_timeout,
            max_header_bytes: config.max_header_bytes,
            admission: Arc::new(Admission::new(&config)),
            config,
        })
    }

    /// Whether a route uses the built-in echo service (so the gateway must start it).
    pub fn needs_echo(config: &Config) -> bool {
        config
            .routes
            .iter()
            .any(|r| r.backend.as_deref() == Some("builtin:echo"))
    }
}

/// Route `i` of `config` with its policy compiled.
fn compile_route(
    config: &Config,
    i: usize,
    r: &crate::config::RouteConfig,
) -> anyhow::Result<Route> {
    let at = format!("route[{i}]");
    let access = Access::from_config(&at, r.origin.as_ref(), r.auth.as_ref())?;
    let backend = Target::from_config(&at, r.backend.as_deref(), r.target.as_ref(), &access)?;
    if r.insecure_skip_verify {
        tracing::warn!(
            route = %r.name,
            "insecure_skip_verify is set: this route's backend certificates are NOT verified (development only)"
        );
    }
    let backend_tls = match &backend {
        Target::Fixed(BackendAddr::WebSocket { tls: true, .. }) => Some(
            crate::tls::client_config(r.tls_ca_file.as_deref(), r.insecure_skip_verify)
                .with_context(|| format!("{at}.tls_ca_file"))?,
        ),
        _ => None,
    };
    // Validated by config: every name parses and none is a hop-by-hop header.
    let forward_headers = r
        .forward_headers
        .iter()
        .filter_map(|h| {
            hyper::header::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok()
        })
        .filter(|n| !is_hop_header(n))
        .collect();
    Ok(Route {
        name: r.name.as_str().into(),
        path: r.path.clone(),
        backend,
        subprotocols: r.subprotocols.clone(),
        message_type: r.message_type,
        forward_headers,
        strip_path_prefix: r.strip_path_prefix,
        backend_tls,
        max_frame_bytes: config.max_frame_bytes(r),
        max_message_bytes: config.max_message_bytes(r),
        access,
        limits: RouteLimits {
            max_sessions: config.max_sessions(r),
            bandwidth_bytes_per_sec: config.bandwidth_bytes_per_sec(r),
        },
    })
}

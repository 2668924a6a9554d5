//! One immutable value built from a validated config: the router, each route with its compiled
//! policy and backend settings, the listeners' TLS configs, admission. It is the only thing the
//! running gateway reads configuration from, and the unit a reload swaps: live sessions keep
//! the snapshot they started with.

mod route;
mod router;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::backend::pool::Pool;
use crate::backend::{Dialer, SocketOptions};
use crate::config::{is_hop_header, BackendAddr, CompressionMode, Config};
use crate::policy::jwks::KeySet;
use crate::policy::signin::Signin;
use crate::policy::{Access, Admission, Egress, ListenerTrust, Target};
use crate::record::RecordSettings;
use crate::session::resume::{ResumeLimits, ResumeSettings};
use crate::session::settings::SessionSettings;
use crate::tls::{AcmeCertificates, HostCheck};
use crate::ws::extensions::DeflatePolicy;
use crate::ws::reader::FrameBudget;

pub use route::{Route, RouteLimits};
pub use router::{check_path, request_host, select_subprotocol, Router};
pub use web::WebFiles;

/// Everything a connection or a session needs from the configuration it started with.
#[derive(Debug)]
pub struct Snapshot {
    /// The validated file this snapshot was built from.
    pub config: Config,
    pub routes: Vec<Arc<Route>>,
    pub router: Router,
    /// Each public listener's key and rustls config (`None`: plain `ws`), in
    /// `config.listeners` order.
    pub listeners: Vec<(ListenerKey, Option<Arc<rustls::ServerConfig>>)>,
    /// Each TLS listener's certificates by name and its `strict_sni_host` (`None`: plain),
    /// in the same order: what a request's host is checked against (`421`).
    pub host_checks: Vec<Option<Arc<HostCheck>>>,
    /// `[acme]`'s certificates and challenge answers, which every TLS listener serves; the
    /// same store across reloads.
    pub acme: Option<Arc<AcmeCertificates>>,
    /// Each public listener's PROXY protocol and forwarded-header rules, in the same order.
    pub listener_trust: Vec<ListenerTrust>,
    pub dialer: Dialer,
    /// The HTTP/2 connection's keepalive (sessions take theirs from their route's
    /// `session` settings).
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_header_bytes: usize,
    /// Session caps and handshake rate, shared by every request.
    pub admission: Arc<Admission>,
    /// Frame payload bytes all sessions' readers may hold at once (`ws::reader`).
    pub frame_budget: Arc<FrameBudget>,
    /// `[web]`: static files, when configured.
    pub web: Option<WebFiles>,
    /// `[signin]`: browser sign-in at an OpenID provider.
    pub signin: Option<Arc<Signin>>,
}

/// A public listener's identity across reloads: its configured address and, for addresses
/// written more than once (port 0), which occurrence. A reload keeps the socket of every key
/// the new config still has, binds the new ones and closes the ones it no longer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub address: SocketAddr,
    pub nth: usize,
}

impl std::fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.nth {
            0 => write!(f, "{}", self.address),
            n => write!(f, "{} (#{})", self.address, n + 1),
        }
    }
}

impl Snapshot {
    /// Compile `config`: read certificates, keys, token files and JWT keys, parse origins
    /// and egress rules. Errors name the key. `echo_addr` is where the built-in echo
    /// service listens (`None` when no route uses it, or when only checking).
    pub fn build(config: Config, echo_addr: Option<SocketAddr>) -> anyhow::Result<Self> {
        Self::build_reusing(config, echo_addr, None)
    }

    /// [`Snapshot::build`] for a reload: the admission counts of `previous` carry over, so
    /// sessions it admitted keep counting against the new caps until they end; `previous`'s
    /// pool of every route whose name and pool settings are unchanged is kept (ejections,
    /// session counts and check tasks carry over). New pools with active checks need
    /// [`Pool::run_checks`] spawned by the caller.
    pub fn succeed(
        config: Config,
        echo_addr: Option<SocketAddr>,
        previous: &Snapshot,
    ) -> anyhow::Result<Self> {
        Self::build_reusing(config, echo_addr, Some(previous))
    }

    /// [`Self::build`] over `previous` when there is one (see [`Self::succeed`]).
    pub fn build_reusing(
        config: Config,
        echo_addr: Option<SocketAddr>,
        previous: Option<&Snapshot>,
    ) -> anyhow::Result<Self> {
        crate::tls::install_crypto_provider();
        let mut listeners: Vec<(ListenerKey, _)> = Vec::with_capacity(config.listeners.len());
        let mut host_checks = Vec::with_capacity(config.listeners.len());
        // One store for the life of the process: certificates obtained survive reloads.
        let acme = config
            .acme
            .as_ref()
            .map(|_| previous.and_then(|p| p.acme.clone()).unwrap_or_default());
        for (i, l) in config.listeners.iter().enumerate() {
            let key = ListenerKey {
                address: l.address,
                nth: listeners
                    .iter()
                    .filter(|(k, _)| k.address == l.address)
                    .count(),
            };
            let tls = match &l.tls {
                Some(t) => {
                    let (server, certificates) = crate::tls::listener_tls(t, l.http2, acme.clone())
                        .with_context(|| format!("listener[{i}].tls ({})", l.address))?;
                    for (name, not_after) in certificates.expiries() {
                        crate::metrics::certificate_not_after(name, *not_after);
                    }
                    host_checks.push(Some(Arc::new(HostCheck {
                        certificates,
                        strict: t
                            .strict_sni_host
                            .unwrap_or_else(|| any_route_requires_client_certificates(&config)),
                    })));
                    Some(server)
                }
                None => {
                    host_checks.push(None);
                    None
                }
            };
            listeners.push((key, tls));
        }
        let listener_trust = config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| ListenerTrust::from_config(i, l))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let signin = config
            .signin
            .as_ref()
            .map(|s| Signin::load(s, previous.and_then(|p| p.signin.as_deref())).map(Arc::new))
            .transpose()?;
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| compile_route(&config, i, r, previous, signin.as_ref()).map(Arc::new))
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
            listeners,
            host_checks,
            acme,
            listener_trust,
            dialer: Dialer {
                connect_timeout: config.backend_connect_timeout,
                socket: SocketOptions {
                    keepalive: config.backend_keepalive,
                    user_timeout: config.backend_user_timeout,
                },
                echo_addr,
                egress,
                udp: crate::backend::udp::UdpLimits {
                    max_sessions: config.udp.max_sessions,
                    retry_after_secs: config.limits.retry_after_secs.into(),
                },
            },
            ping_interval: config.ping_interval,
            pong_timeout: config.pong_timeout,
            header_read_timeout: config.header_read_timeout,
            tls_handshake_timeout: config.tls_handshake_timeout,
            max_header_bytes: config.max_header_bytes,
            admission: Arc::new(match previous {
                Some(p) => Admission::succeed(&config, &p.admission),
                None => Admission::new(&config),
            }),
            // Sessions of the previous snapshot hold bytes of its budget: keep sharing it
            // unless the limit changed, so a reload does not double what readers may hold.
            frame_budget: match previous {
                Some(p) if p.frame_budget.limit() == config.limits.frame_budget_bytes => {
                    p.frame_budget.clone()
                }
                _ => FrameBudget::new(config.limits.frame_budget_bytes),
            },
            web: config.web_root.clone().map(|root| {
                WebFiles::new(
                    root,
                    config.web_follow_external_symlinks,
                    config.web_max_responses,
                    previous.and_then(|p| p.web.as_ref()),
                )
            }),
            signin,
            config,
        })
    }

    /// The TLS config of the listener `key` (`Some(None)`: plain `ws`), or `None` when this
    /// snapshot has no such listener.
    pub fn listener_tls(&self, key: ListenerKey) -> Option<Option<Arc<rustls::ServerConfig>>> {
        self.listeners
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, tls)| tls.clone())
    }

    /// The config of listener `key`, when this snapshot has it.
    pub fn listener_config(&self, key: ListenerKey) -> Option<&crate::config::ListenerConfig> {
        let i = self.listeners.iter().position(|(k, _)| *k == key)?;
        self.config.listeners.get(i)
    }

    /// The PROXY protocol and forwarded-header rules of listener `key`, when this snapshot
    /// has it.
    pub fn listener_trust(&self, key: ListenerKey) -> Option<&ListenerTrust> {
        let i = self.listeners.iter().position(|(k, _)| *k == key)?;
        self.listener_trust.get(i)
    }

    /// The host rule of listener `key`'s connections (`None`: plain, or no such listener).
    pub fn host_check(&self, key: ListenerKey) -> Option<Arc<HostCheck>> {
        let i = self.listeners.iter().position(|(k, _)| *k == key)?;
        self.host_checks.get(i)?.clone()
    }

    /// Every route's backend pool.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.routes.iter().filter_map(|r| r.pool.as_ref())
    }

    /// The JWT key sets of routes whose keys come from an OpenID provider.
    pub fn key_sets(&self) -> impl Iterator<Item = &Arc<KeySet>> {
        self.routes
            .iter()
            .filter_map(|r| r.access.key_set())
            .chain(self.signin.as_ref().and_then(|s| s.key_set()))
    }

    /// Fetch, all at once, every key set that has no keys yet (at start and after a
    /// reload, so the first client does not wait). A failure is logged by the set and
    /// returned; the gateway starts anyway, and the set's refresher tries again.
    pub async fn fetch_keys(&self) -> Vec<(String, anyhow::Result<usize>)> {
        let mut fetches = tokio::task::JoinSet::new();
        for set in self.key_sets().filter(|s| !s.has_keys()) {
            let set = set.clone();
            fetches.spawn(async move {
                let result = set.fetch("start").await;
                (set.route().to_owned(), result)
            });
        }
        let mut results = Vec::new();
        while let Some(done) = fetches.join_next().await {
            if let Ok(pair) = done {
                results.push(pair);
            }
        }
        results.sort_by(|a, b| a.0.cmp(&b.0));
        results
    }

    /// Whether a route uses the built-in echo service (so the gateway must start it).
    pub fn needs_echo(config: &Config) -> bool {
        config
            .routes
            .iter()
            .any(|r| r.backend.as_deref() == Some("builtin:echo"))
    }
}

/// Caddy's rule for `strict_sni_host`'s default: where a route asks for client certificates,
/// a request must not reach it over a connection opened for another name.
fn any_route_requires_client_certificates(config: &Config) -> bool {
    config.routes.iter().any(|r| {
        r.auth
            .as_ref()
            .is_some_and(|a| a.client_cert_required || !a.client_cert_names.is_empty())
    })
}

/// Route `i` of `config` with its policy compiled.
fn compile_route(
    config: &Config,
    i: usize,
    r: &crate::config::RouteConfig,
    previous: Option<&Snapshot>,
    signin: Option<&Arc<Signin>>,
) -> anyhow::Result<Route> {
    let at = format!("route[{i}]");
    // A route path the path rules refuse could never match a request.
    check_path(&r.path).map_err(|e| {
        anyhow::anyhow!("{at}.path: {:?}: {e}, so no request could match it", r.path)
    })?;
    let previous_access = previous
        .and_then(|p| p.routes.iter().find(|x| *x.name == *r.name))
        .map(|x| &x.access);
    let access = Access::from_config(
        &at,
        &r.name,
        r.origin.as_ref(),
        r.auth.as_ref(),
        previous_access,
        signin,
    )?;
    let pool = route_pool(&at, r, previous)?;
    let backend = Target::from_config(
        &at,
        r.backend.as_deref(),
        r.target.as_ref(),
        pool.is_some(),
        &access,
    )?;
    if r.insecure_skip_verify {
        tracing::warn!(
            route = %r.name,
            "insecure_skip_verify is set: this route's backend certificates are NOT verified (development only)"
        );
    }
    let backend_tls = backend_tls(&at, r, &backend, pool.as_ref())?;
    Ok(Route {
        name: r.name.as_str().into(),
        path: r.path.clone(),
        // Validated by config.
        hosts: r
            .hosts
            .iter()
            .filter_map(|h| crate::config::host_pattern(h).ok())
            .collect(),
        backend,
        subprotocols: r.subprotocols.clone(),
        forward_headers: forward_headers(r),
        forward_credentials: r.forward_credentials,
        strip_path_prefix: r.strip_path_prefix,
        backend_tls,
        pool,
        send_proxy_protocol: r.send_proxy_protocol.is_some(),
        access,
        limits: RouteLimits {
            max_sessions: config.max_sessions(r),
        },
        session: session_settings(config, r),
    })
}

/// A route's pool: the previous snapshot's when its config is the same (it keeps its
/// health and counters), else a new one; `None` without `backends`.
fn route_pool(
    at: &str,
    r: &crate::config::RouteConfig,
    previous: Option<&Snapshot>,
) -> anyhow::Result<Option<Arc<Pool>>> {
    if r.backends.is_empty() {
        return Ok(None);
    }
    let backends = r
        .backends
        .iter()
        .enumerate()
        .map(|(n, url)| BackendAddr::parse(url).with_context(|| format!("{at}.backends[{n}]")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let kept = previous
        .into_iter()
        .flat_map(|p| p.pools())
        .find(|p| p.same_config(&r.name, &backends, r.balance, &r.health));
    Ok(Some(match kept {
        Some(p) => p.clone(),
        None => Arc::new(Pool::new(
            r.name.as_str().into(),
            backends,
            r.balance,
            r.health.clone(),
        )),
    }))
}

/// The TLS client config for a route with wss:// backends (warning when it skips
/// verification).
fn backend_tls(
    at: &str,
    r: &crate::config::RouteConfig,
    backend: &Target,
    pool: Option<&Arc<Pool>>,
) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    if r.insecure_skip_verify {
        tracing::warn!(
            route = %r.name,
            "insecure_skip_verify is set: this route's backend certificates are NOT verified (development only)"
        );
    }
    let wss = matches!(
        backend,
        Target::Fixed(BackendAddr::WebSocket { tls: true, .. })
    ) || pool.is_some_and(|p| p.has_wss());
    if !wss {
        return Ok(None);
    }
    let tls = crate::tls::client_config(r.tls_ca_file.as_deref(), r.insecure_skip_verify)
        .with_context(|| format!("{at}.tls_ca_file"))?;
    Ok(Some(tls))
}

/// The request headers a route passes on. Validated by config: every name parses and none
/// is a hop-by-hop header.
fn forward_headers(r: &crate::config::RouteConfig) -> Vec<hyper::header::HeaderName> {
    r.forward_headers
        .iter()
        .filter_map(|h| {
            hyper::header::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok()
        })
        .filter(|n| !is_hop_header(n))
        .collect()
}

/// A route's session settings, compiled once: what bridge, relay and the udp pump read.
fn session_settings(config: &Config, r: &crate::config::RouteConfig) -> SessionSettings {
    SessionSettings {
        buffer_bytes: config.buffer_bytes,
        max_frame_bytes: config.max_frame_bytes(r),
        max_message_bytes: config.max_message_bytes(r),
        message_type: r.message_type,
        watch_backlog_bytes: config.watch_backlog_bytes(r),
        ping_interval: config.ping_interval,
        pong_timeout: config.pong_timeout,
        close_grace: config.close_grace,
        backend_stall: config.backend_stall,
        bandwidth_bytes_per_sec: config.bandwidth_bytes_per_sec(r),
        udp: config.udp_settings(r),
        // Ranges were checked by config.
        compression: (r.compression == CompressionMode::On).then_some(DeflatePolicy {
            server_context_takeover: r.compression_server_context_takeover,
            client_context_takeover: r.compression_client_context_takeover,
            server_max_window_bits: r.compression_server_max_window_bits,
            client_max_window_bits: r.compression_client_max_window_bits,
            level: r.compression_level,
        }),
        record: r
            .record
            .as_ref()
            .map(|c| Arc::new(RecordSettings::new(r.name.as_str().into(), c))),
        resume: r.resume.as_ref().map(|c| ResumeSettings {
            grace: Duration::from_secs_f64(c.grace_secs),
            window_bytes: c.window_bytes,
            heartbeat: Duration::from_secs_f64(c.heartbeat_secs),
            read_bytes: config.buffer_bytes,
            backend_stall: config.backend_stall,
            close_grace: config.close_grace,
            limits: ResumeLimits {
                max_sessions: config.resume.max_sessions,
                max_sessions_per_address: config.resume.max_sessions_per_address,
                max_buffered_bytes: config.resume.max_buffered_bytes,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(backends: &str, balance: &str) -> Config {
        Config::from_toml(&format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[route]]\nname = \"p\"\npath = \"/p\"\nbackends = [{backends}]\nbalance = \"{balance}\"\n\
             [[route]]\nname = \"q\"\npath = \"/q\"\nbackends = [\"tcp://127.0.0.1:9\"]\n"
        ))
        .unwrap()
    }

    /// A reload keeps the pool (ejections, session counts) of a route whose pool settings
    /// did not change, and builds a new one for a route whose did.
    #[test]
    fn a_rebuild_keeps_unchanged_pools() {
        let two = "\"tcp://127.0.0.1:1\", \"tcp://127.0.0.1:2\"";
        let old = Snapshot::build(config(two, "round_robin"), None).unwrap();
        let same = Snapshot::build_reusing(config(two, "round_robin"), None, Some(&old)).unwrap();
        let pools = |s: &Snapshot| s.pools().cloned().collect::<Vec<_>>();
        let (o, n) = (pools(&old), pools(&same));
        assert!(Arc::ptr_eq(&o[0], &n[0]) && Arc::ptr_eq(&o[1], &n[1]));
        let changed =
            Snapshot::build_reusing(config(two, "least_sessions"), None, Some(&old)).unwrap();
        let c = pools(&changed);
        assert!(!Arc::ptr_eq(&o[0], &c[0]));
        assert!(Arc::ptr_eq(&o[1], &c[1]));
    }
}

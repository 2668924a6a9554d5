//! Quick mode: command-line flags (`--listen`, `--route`, `--tls-cert` …) turned into the same
//! [`FileConfig`] a file would give, so both paths share one validation.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};

use super::file::{AdminConfig, FileConfig, ListenerConfig, RouteConfig, RuntimeConfig, TlsConfig};

/// The quick-mode flags as given; all empty means "no quick mode".
#[derive(Debug, Clone, Default)]
pub struct QuickMode {
    /// The public listener address. Default 127.0.0.1:8080.
    pub listen: Option<SocketAddr>,
    /// `PATH=URL` routes, in order.
    pub routes: Vec<String>,
    /// Serve wss:// with this PEM certificate chain and key.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The admin listener; none if omitted.
    pub admin: Option<SocketAddr>,
    /// `[runtime] worker_threads`.
    pub worker_threads: usize,
    /// Serve the browser console on the listener.
    pub console: bool,
}

impl QuickMode {
    /// No quick-mode flag was given (the embedded default applies).
    pub fn is_empty(&self) -> bool {
        self.listen.is_none()
            && self.routes.is_empty()
            && self.tls_cert.is_none()
            && self.admin.is_none()
            && !self.console
    }

    /// The file these flags stand for.
    pub fn to_file_config(&self) -> anyhow::Result<FileConfig> {
        if self.routes.is_empty() {
            bail!("quick mode needs at least one --route PATH=tcp://HOST:PORT");
        }
        let mut routes = Vec::with_capacity(self.routes.len());
        let mut names = HashSet::new();
        for spec in &self.routes {
            let (path, backend) = spec
                .split_once('=')
                .with_context(|| format!("--route {spec:?}: expected PATH=URL"))?;
            // Two paths can give one name (`/ws` and `/ws/`, `/a.b` and `/a_b`): the later
            // route gets its position appended, so no flag the user wrote collides.
            let mut name = route_name(path, routes.len());
            if names.contains(&name) {
                name = (routes.len() + 1..)
                    .map(|n| format!("{name}-{n}"))
                    .find(|candidate| !names.contains(candidate))
                    .unwrap_or(name);
            }
            names.insert(name.clone());
            routes.push(RouteConfig::new(name, path, backend));
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert_file), Some(key_file)) => Some(TlsConfig {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                client_ca_file: None,
                client_auth: None,
            }),
            _ => None,
        };
        Ok(FileConfig {
            listeners: vec![ListenerConfig {
                tls,
                console: self.console,
                ..ListenerConfig::new(
                    self.listen
                        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
                )
            }],
            admin: self.admin.map(|address| AdminConfig {
                address,
                bearer_sha256: None,
            }),
            timeouts: Default::default(),
            limits: Default::default(),
            routes,
            egress: None,
            http2: Default::default(),
            runtime: RuntimeConfig {
                worker_threads: self.worker_threads,
            },
        })
    }
}

/// A metrics-safe name for a quick-mode route: `/vnc/` → `vnc`, `/` → `root`.
pub fn route_name(path: &str, index: usize) -> String {
    let name: String = path
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    match name.as_str() {
        "" if index == 0 => "root".to_owned(),
        "" => format!("root{index}"),
        _ => name,
    }
}

//! Quick mode: a command line (websockify's positional form or wsgate's flags) turned into the
//! same [`FileConfig`] a file would give, so both share one validation, and that config
//! printed back as a commented TOML file (`wsgate config --from-flags …`).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::access::ClientAuth;
use super::file::{
    AdminConfig, FileConfig, ListenerConfig, RouteConfig, RuntimeConfig, RuntimeMode, TlsConfig,
    WebConfig,
};
use super::target::TargetConfig;

/// The listener when no address is given: loopback only.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// websockify's names for its token-file plugin (`--token-plugin`), the one wsgate implements.
pub const TOKEN_FILE_PLUGINS: &[&str] = &["TokenFile", "websockify.token_plugins.TokenFile"];

/// The quick-mode arguments as given; all empty means "no quick mode".
#[derive(Debug, Clone, Default)]
pub struct QuickMode {
    /// `--listen`: `PORT`, `HOST:PORT`, `[IPv6]:PORT` or `NAME:PORT`.
    pub listen: Option<String>,
    /// websockify's positional form: `[LISTEN_HOST:]LISTEN_PORT [TARGET_HOST:TARGET_PORT]`.
    pub positional: Vec<String>,
    /// `--route PATH=URL`, in order.
    pub routes: Vec<String>,
    /// Serve wss:// with this PEM certificate chain (`--tls-cert`, websockify's `--cert`).
    pub tls_cert: Option<PathBuf>,
    /// Its key; default: the certificate file (websockify's combined PEM).
    pub tls_key: Option<PathBuf>,
    /// websockify's `--ssl-only`: wsgate never mixes TLS and plain on one port, so this only
    /// insists that a certificate is given.
    pub ssl_only: bool,
    /// websockify's `--verify-client`: require a client certificate chaining to `cafile`.
    pub verify_client: bool,
    /// websockify's `--cafile`: the CA bundle client certificates must chain to.
    pub cafile: Option<PathBuf>,
    /// `--token-plugin`: only the token-file plugin exists here.
    pub token_plugin: Option<String>,
    /// `--token-source`: the token file.
    pub token_source: Option<PathBuf>,
    /// `--web DIR`: static files for plain GETs.
    pub web: Option<PathBuf>,
    /// `--admin`: `PORT` (on loopback) or an address as for `--listen`.
    pub admin: Option<String>,
    /// websockify's `--heartbeat SECS`: `[timeouts] ping_interval_secs`.
    pub heartbeat_secs: Option<f64>,
    /// `[runtime] worker_threads`.
    pub worker_threads: usize,
    /// `[runtime] mode`.
    pub runtime_mode: RuntimeMode,
    /// Serve the browser console on the listener.
    pub console: bool,
    /// `--subprotocol NAME` (repeatable): every route's `subprotocols`, instead of the
    /// default `["binary"]` (MQTT.js offers `mqtt`).
    pub subprotocols: Vec<String>,
    /// websockify's `--prefer-ipv6` (`-6`): a bare `PORT` listens on `[::]`, a `NAME:PORT`
    /// on the name's first IPv6 address.
    pub prefer_ipv6: bool,
    /// websockify's `--unix-target FILE`: the target is this Unix socket (`unix:` backend).
    pub unix_target: Option<PathBuf>,
}

impl QuickMode {
    /// No quick-mode argument was given (the embedded default applies).
    pub fn is_empty(&self) -> bool {
        self.listen.is_none()
            && self.positional.is_empty()
            && self.routes.is_empty()
            && self.tls_cert.is_none()
            && self.tls_key.is_none()
            && !self.ssl_only
            && !self.verify_client
            && self.cafile.is_none()
            && self.token_plugin.is_none()
            && self.token_source.is_none()
            && self.web.is_none()
            && self.admin.is_none()
            && self.heartbeat_secs.is_none()
            && !self.console
            && self.subprotocols.is_empty()
            && !self.prefer_ipv6
            && self.unix_target.is_none()
    }

    /// The file these arguments stand for. Relative paths in the flags are the user's, typed
    /// in the working directory: they are made absolute against it, so the printed file
    /// (`config --from-flags`) names the same files wherever it is saved.
    pub fn to_file_config(&self) -> anyhow::Result<FileConfig> {
        let cwd = std::env::current_dir().context("locating the working directory")?;
        let mut file = self.to_file_config_unresolved(&cwd)?;
        file.resolve_paths(&cwd);
        Ok(file)
    }

    fn to_file_config_unresolved(&self, cwd: &Path) -> anyhow::Result<FileConfig> {
        let (address, target) = self.listen_address()?;
        let routes = self.routes(target, cwd)?;
        let tls = self.tls()?;
        let admin = match &self.admin {
            Some(spec) => Some(AdminConfig {
                address: listen_addr(spec, Ipv4Addr::LOCALHOST.into())
                    .with_context(|| format!("admin address {spec:?}"))?,
                bearer_sha256: None,
                allowed_hosts: Vec::new(),
            }),
            None => None,
        };
        let mut timeouts = super::file::Timeouts::default();
        if let Some(secs) = self.heartbeat_secs {
            timeouts.ping_interval_secs = secs;
        }
        Ok(FileConfig {
            listeners: vec![ListenerConfig {
                tls,
                console: self.console,
                ..ListenerConfig::new(address)
            }],
            admin,
            timeouts,
            limits: Default::default(),
            routes,
            egress: None,
            resume: Default::default(),
            acme: None,
            http2: Default::default(),
            reload: Default::default(),
            log: Default::default(),
            runtime: RuntimeConfig {
                mode: self.runtime_mode,
                worker_threads: self.worker_threads,
            },
            web: self.web.clone().map(WebConfig::at),
            signin: None,
            udp: Default::default(),
        })
    }

    /// The listen address (`[LISTEN_HOST:]LISTEN_PORT` or `--listen`), and the target
    /// argument if one was given.
    fn listen_address(&self) -> anyhow::Result<(SocketAddr, Option<&str>)> {
        let (listen, target) = match self.positional.as_slice() {
            [] => (self.listen.as_deref(), None),
            [listen] => (Some(listen.as_str()), None),
            [listen, target] => (Some(listen.as_str()), Some(target.as_str())),
            _ => bail!(
                "too many arguments: expected [LISTEN_HOST:]LISTEN_PORT [TARGET_HOST:TARGET_PORT]"
            ),
        };
        if !self.positional.is_empty() && self.listen.is_some() {
            bail!("the listen address is given twice: as --listen and as the first argument");
        }
        let everywhere = if self.prefer_ipv6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let address = match listen {
            Some(spec) => listen_addr_preferring(spec, everywhere, self.prefer_ipv6)
                .with_context(|| format!("listen address {spec:?}"))?,
            None if self.prefer_ipv6 => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 8080),
            None => DEFAULT_LISTEN,
        };
        Ok((address, target))
    }

    /// The routes: the positional target or `--unix-target`, the token file route, and
    /// every `--route PATH=URL`, each with `--subprotocol`s.
    fn routes(&self, target: Option<&str>, cwd: &Path) -> anyhow::Result<Vec<RouteConfig>> {
        let mut routes = Vec::new();
        let target = match (target, &self.unix_target) {
            (Some(_), Some(_)) => {
                bail!("--unix-target names the target: drop TARGET_HOST:TARGET_PORT")
            }
            (Some(target), None) => Some(backend_url(target)),
            // The socket path is the user's, typed here: made absolute (a `unix:` URL must be).
            (None, Some(socket)) => Some(format!("unix:{}", cwd.join(socket).display())),
            (None, None) => None,
        };
        if let Some(target) = &target {
            routes.push(RouteConfig::new("websockify", "/", target));
        }
        match (&self.token_plugin, &self.token_source) {
            (Some(plugin), Some(file)) => {
                if !TOKEN_FILE_PLUGINS.contains(&plugin.as_str()) {
                    bail!("--token-plugin {plugin:?}: only TokenFile (a websockify token file) is supported");
                }
                if target.is_some() {
                    bail!("--token-plugin chooses the target per session: drop TARGET_HOST:TARGET_PORT (or --unix-target)");
                }
                let mut route = RouteConfig::new("tokens", "/", String::new());
                route.backend = None;
                route.target = Some(TargetConfig {
                    token_file: Some(file.clone()),
                    token_param: "token".to_owned(),
                    jwt_claim: None,
                });
                routes.push(route);
            }
            (Some(_), None) => bail!("--token-plugin needs --token-source FILE"),
            (None, Some(_)) => bail!("--token-source needs --token-plugin TokenFile"),
            (None, None) => {}
        }
        let mut names: HashSet<String> = routes
            .iter()
            .map(|r: &RouteConfig| r.name.clone())
            .collect();
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
        if routes.is_empty() {
            bail!(
                "no target: give one as `wsgate [LISTEN_HOST:]LISTEN_PORT TARGET_HOST:TARGET_PORT`, \
                 or --route PATH=URL, or --unix-target FILE, or --token-plugin TokenFile --token-source FILE"
            );
        }
        if !self.subprotocols.is_empty() {
            for route in &mut routes {
                route.subprotocols = self.subprotocols.clone();
            }
        }
        Ok(routes)
    }

    /// `[listener.tls]` from `--cert`, `--key`, `--verify-client` and `--cafile`.
    fn tls(&self) -> anyhow::Result<Option<TlsConfig>> {
        let client_ca_file = match (self.verify_client, &self.cafile) {
            (true, Some(ca)) => Some(ca.clone()),
            (true, None) => bail!(
                "--verify-client needs --cafile FILE: wsgate trusts no CA for clients by default"
            ),
            (false, Some(_)) => bail!("--cafile is for --verify-client"),
            (false, None) => None,
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), key) => Some(TlsConfig {
                client_auth: client_ca_file.as_ref().map(|_| ClientAuth::Required),
                client_ca_file,
                ..TlsConfig::new(cert.clone(), key.clone().unwrap_or_else(|| cert.clone()))
            }),
            (None, _) if client_ca_file.is_some() => {
                bail!("--verify-client needs --cert FILE: client certificates need TLS")
            }
            (None, Some(_)) => bail!("--tls-key (--key) needs --tls-cert (--cert)"),
            (None, None) if self.ssl_only => {
                bail!("--ssl-only needs --cert FILE: wsgate has no default certificate")
            }
            (None, None) => None,
        };
        Ok(tls)
    }

    /// The config file these arguments stand for, commented; `command` is the quick-mode
    /// command line, quoted in the header.
    pub fn to_toml(&self, command: &str) -> anyhow::Result<String> {
        let file = self.to_file_config()?;
        let mut out = String::new();
        let w = &mut out;
        // Writing to a String cannot fail.
        let _ = writeln!(w, "# wsgate configuration, from the command line:");
        let _ = writeln!(w, "#   {command}");
        let _ = writeln!(
            w,
            "# Check it with `wsgate check FILE`, run it with `wsgate --config FILE`.\n\
             # Every key, with its default: docs/configuration.md. Keys left out keep their\n\
             # defaults (timeouts, limits)."
        );
        write_listeners(w, &file.listeners);
        if let Some(admin) = &file.admin {
            let _ = writeln!(
                w,
                "\n# /metrics, /healthz, /readyz (always open), the status page and /api/. Add\n\
                 # bearer_sha256 = \"<printf %s \"$TOKEN\" | sha256sum>\" to require a token for\n\
                 # the status page and /api/. Loopback or a private network only.\n\
                 [admin]\naddress = {}",
                quote(&admin.address.to_string())
            );
        }
        if self.heartbeat_secs.is_some() {
            let _ = writeln!(
                w,
                "\n# Keepalive: a ping every ping_interval_secs (0 = off).\n\
                 [timeouts]\nping_interval_secs = {}",
                file.timeouts.ping_interval_secs
            );
        }
        if let Some(web) = &file.web {
            let _ = writeln!(
                w,
                "\n# Static files for plain (non-WebSocket) GET requests, e.g. noVNC's.\n\
                 [web]\nroot = {}",
                quote_path(&web.root)
            );
        }
        let runtime = &file.runtime;
        if runtime.worker_threads != 0 || runtime.mode != RuntimeMode::default() {
            let _ = writeln!(w, "\n[runtime]");
            if runtime.mode != RuntimeMode::default() {
                let _ = writeln!(w, "mode = {}", quote(&runtime.mode.to_string()));
            }
            if runtime.worker_threads != 0 {
                let _ = writeln!(w, "worker_threads = {}", runtime.worker_threads);
            }
        }
        for r in &file.routes {
            self.write_route(w, r);
        }
        Ok(out)
    }

    /// One `[[route]]` table, commented.
    fn write_route(&self, w: &mut String, r: &RouteConfig) {
        let _ = writeln!(w, "\n[[route]]\nname = {}", quote(&r.name));
        let _ = writeln!(
            w,
            "# A path ending in / is a prefix: {} matches every path under it.",
            r.path
        );
        let _ = writeln!(w, "path = {}", quote(&r.path));
        if let Some(backend) = &r.backend {
            let _ = writeln!(w, "backend = {}", quote(backend));
        }
        if !self.subprotocols.is_empty() {
            let names: Vec<String> = r.subprotocols.iter().map(|p| quote(p)).collect();
            let _ = writeln!(
                w,
                "# The subprotocols a client may offer; it gets the first it offers back.\n\
                 subprotocols = [{}]",
                names.join(", ")
            );
        }
        if let Some(TargetConfig {
            token_file: Some(file),
            token_param,
            ..
        }) = &r.target
        {
            let _ = writeln!(
                w,
                "\n# The target comes from a websockify token file (`token: host:port` lines),\n\
                 # chosen by the ?{token_param}= query parameter.\n\
                 [route.target]\ntoken_file = {}\ntoken_param = {}",
                quote_path(file),
                quote(token_param)
            );
        }
        let _ = writeln!(
            w,
            "# Before exposing this route to the internet: allow only your pages' origins\n\
             # and require credentials (docs/security.md), e.g.\n\
             #[route.origin]\n\
             #allow = [\"https://vnc.example.com\"]"
        );
    }
}

/// The `[[listener]]` tables, commented.
fn write_listeners(w: &mut String, listeners: &[ListenerConfig]) {
    for l in listeners {
        let _ = writeln!(
            w,
            "\n# Where clients connect. 0.0.0.0 = every IPv4 interface."
        );
        let _ = writeln!(
            w,
            "[[listener]]\naddress = {}",
            quote(&l.address.to_string())
        );
        if let Some(tls) = &l.tls {
            let _ = writeln!(
                w,
                "\n# wss://: the PEM certificate chain (leaf first) and its private key.\n\
                 [listener.tls]\ncert_file = {}\nkey_file = {}",
                quote_path(&tls.cert_file),
                quote_path(&tls.key_file)
            );
            if let Some(ca) = &tls.client_ca_file {
                let _ = writeln!(
                    w,
                    "# Clients must present a certificate chaining to this CA bundle.\n\
                     client_ca_file = {}\nclient_auth = \"required\"",
                    quote_path(ca)
                );
            }
        }
    }
}

/// A TOML string literal.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// A websockify target (`host:port`) as a backend URL; URLs (`ws://…`, `builtin:echo`) as is.
pub fn backend_url(target: &str) -> String {
    if target.contains("://") || target.starts_with("builtin:") {
        target.to_owned()
    } else {
        format!("tcp://{target}")
    }
}

/// A listen address as users write it: `PORT` (on `default_host`), `:PORT` or `*:PORT`
/// (every IPv4 interface), `IP:PORT`, `[IPv6]:PORT`, or `NAME:PORT` (resolved now; the
/// first IPv4 address, else the first address).
pub fn listen_addr(spec: &str, default_host: IpAddr) -> anyhow::Result<SocketAddr> {
    listen_addr_preferring(spec, default_host, false)
}

/// [`listen_addr`]; with `ipv6`, `:PORT`/`*:PORT` mean `[::]` and a name its first IPv6
/// address (websockify's `--prefer-ipv6`).
fn listen_addr_preferring(
    spec: &str,
    default_host: IpAddr,
    ipv6: bool,
) -> anyhow::Result<SocketAddr> {
    let spec = spec.trim();
    if let Ok(port) = spec.parse::<u16>() {
        return Ok(SocketAddr::new(default_host, port));
    }
    if let Ok(addr) = spec.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = spec.rsplit_once(':') else {
        bail!("expected PORT, HOST:PORT or [IPv6]:PORT");
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("{port:?} is not a port (0-65535)"))?;
    if host.is_empty() || host == "*" {
        let any: IpAddr = if ipv6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        return Ok(SocketAddr::new(any, port));
    }
    if host.starts_with('[') || host.contains(':') {
        bail!("{host:?} is not an IPv6 address (write [IPv6]:PORT)");
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host:?}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv6() == ipv6)
        .or(addrs.first())
        .copied()
        .with_context(|| format!("{host:?} resolves to no address"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn quick(positional: &[&str]) -> QuickMode {
        QuickMode {
            positional: positional.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn listen_addresses_in_every_form() {
        let any = IpAddr::from(Ipv4Addr::UNSPECIFIED);
        let parse = |s| listen_addr(s, any).map(|a| a.to_string());
        assert_eq!(parse("6080").unwrap(), "0.0.0.0:6080");
        assert_eq!(parse(":6080").unwrap(), "0.0.0.0:6080");
        assert_eq!(parse("127.0.0.1:6080").unwrap(), "127.0.0.1:6080");
        assert_eq!(parse("[::1]:6080").unwrap(), "[::1]:6080");
        assert_eq!(parse("localhost:6080").unwrap(), "127.0.0.1:6080");
        assert_eq!(
            listen_addr("9090", Ipv4Addr::LOCALHOST.into()).unwrap(),
            "127.0.0.1:9090".parse().unwrap()
        );
        for bad in ["", "x", "6080x", "localhost:", "host:99999", "::1:80"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn websockify_positional_form_is_one_prefix_route_to_tcp() {
        let file = quick(&["6080", "localhost:5900"]).to_file_config().unwrap();
        assert_eq!(file.listeners[0].address.to_string(), "0.0.0.0:6080");
        assert_eq!(file.routes.len(), 1);
        assert_eq!(file.routes[0].path, "/");
        assert_eq!(
            file.routes[0].backend.as_deref(),
            Some("tcp://localhost:5900")
        );
    }

    #[test]
    fn a_certificate_alone_is_its_own_key_and_ssl_only_needs_one() {
        let mut q = quick(&["6080", "h:1"]);
        q.tls_cert = Some("combined.pem".into());
        let tls = q.to_file_config().unwrap().listeners[0]
            .tls
            .clone()
            .unwrap();
        // A relative flag is the working directory's file, made absolute.
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(tls.cert_file, cwd.join("combined.pem"));
        assert_eq!(tls.key_file, cwd.join("combined.pem"));
        let mut q = quick(&["6080", "h:1"]);
        q.ssl_only = true;
        assert!(q.to_file_config().is_err());
    }

    #[test]
    fn verify_client_maps_to_a_required_client_ca() {
        let mut q = quick(&["6080", "h:1"]);
        q.tls_cert = Some("cert.pem".into());
        q.verify_client = true;
        assert!(q.to_file_config().is_err(), "no --cafile");
        q.cafile = Some("clients.pem".into());
        let tls = q.to_file_config().unwrap().listeners[0]
            .tls
            .clone()
            .unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(tls.client_ca_file, Some(cwd.join("clients.pem")));
        assert!(matches!(tls.client_auth, Some(ClientAuth::Required)));
        q.tls_cert = None;
        assert!(q.to_file_config().is_err(), "no --cert");
    }

    #[test]
    fn token_plugin_rules() {
        let mut q = quick(&["6080"]);
        q.token_plugin = Some("TokenFile".into());
        q.token_source = Some("/etc/tokens".into());
        let file = q.to_file_config().unwrap();
        let target = file.routes[0].target.as_ref().unwrap();
        assert_eq!(target.token_file.as_deref(), Some(Path::new("/etc/tokens")));
        q.token_plugin = Some("ReadOnlyTokenRedis".into());
        assert!(q.to_file_config().is_err());
        let mut q = quick(&["6080", "h:1"]);
        q.token_plugin = Some("TokenFile".into());
        q.token_source = Some("/etc/tokens".into());
        assert!(q.to_file_config().is_err(), "a target and a token plugin");
        assert!(
            quick(&["6080"]).to_file_config().is_err(),
            "no target at all"
        );
        assert!(quick(&["1", "h:1", "x"]).to_file_config().is_err());
    }

    #[test]
    fn subprotocols_prefer_ipv6_and_unix_target() {
        let mut q = quick(&["6080", "h:1"]);
        q.subprotocols = vec!["mqtt".into()];
        q.routes = vec!["/x=builtin:echo".into()];
        let file = q.to_file_config().unwrap();
        assert!(file.routes.iter().all(|r| r.subprotocols == ["mqtt"]));
        let mut q = quick(&["6080", "h:1"]);
        q.prefer_ipv6 = true;
        let file = q.to_file_config().unwrap();
        assert_eq!(file.listeners[0].address.to_string(), "[::]:6080");
        let mut q = quick(&["6080"]);
        q.unix_target = Some("/run/vnc.sock".into());
        let file = q.to_file_config().unwrap();
        assert_eq!(
            file.routes[0].backend.as_deref(),
            Some("unix:/run/vnc.sock")
        );
        q.positional.push("h:1".into());
        assert!(q.to_file_config().is_err(), "a target and a unix target");
    }

    /// The printed file is the same gateway as the flags.
    #[test]
    fn from_flags_toml_round_trips() {
        let dir = std::env::temp_dir();
        let mut q = quick(&["127.0.0.1:6080", "localhost:5900"]);
        q.tls_cert = Some("/etc/wsgate/tls/fullchain.pem".into());
        q.tls_key = Some("/etc/wsgate/tls/privkey.pem".into());
        q.verify_client = true;
        q.cafile = Some("/etc/wsgate/tls/clients.pem".into());
        q.admin = Some("9090".into());
        q.web = Some(dir.clone());
        q.heartbeat_secs = Some(15.0);
        q.routes = vec!["/echo=builtin:echo".into()];
        q.worker_threads = 1;
        q.runtime_mode = RuntimeMode::PerCore;
        q.subprotocols = vec!["mqtt".into(), "binary".into()];
        let text = q.to_toml("wsgate …").unwrap();
        let direct = format!("{:?}", q.to_file_config().unwrap().validate().unwrap());
        let parsed = format!("{:?}", Config::from_toml(&text).unwrap());
        assert_eq!(direct, parsed, "{text}");
        assert!(text.contains("#[route.origin]"), "{text}");
    }
}

//! Backend URLs (`tcp://`, `udp://`, `unix:`, `ws://`, `wss://`, `builtin:echo`) parsed into a plain address.

use std::path::PathBuf;

use anyhow::{bail, Context};

/// Every backend URL form the parser accepts, as users write its start. `--help`, the
/// backend URL table of docs/configuration.md and the parser's errors list them all (tests
/// check the first two).
pub const BACKEND_URL_FORMS: &[&str] = &[
    "tcp://",
    "udp://",
    "unix:",
    "ws://",
    "wss://",
    "builtin:echo",
];

/// The forms as one phrase for error messages: `tcp://, unix:, ws://, wss:// or builtin:echo`.
fn forms_phrase() -> String {
    match BACKEND_URL_FORMS.split_last() {
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Where a route's bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAddr {
    /// A raw TCP service, dialed by name on every session (DNS is re-resolved).
    Tcp { host: String, port: u16 },
    /// A UDP service: one binary message is one datagram, over one connected socket per
    /// session (`session::udp`). Dialed by name on every session, like `Tcp`.
    Udp { host: String, port: u16 },
    /// A WebSocket service; `path` holds the URL's path and query (at least `/`).
    WebSocket {
        tls: bool,
        host: String,
        port: u16,
        path: String,
    },
    /// A raw byte service on a Unix domain socket (`unix:/run/app.sock`). Only from the
    /// config file, never from a token file or a claim.
    Unix { path: PathBuf },
    /// The built-in echo service, started by the gateway on a loopback port.
    BuiltinEcho,
}

impl BackendAddr {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        // Errors show the URL with its query values redacted: they may be secrets.
        let shown = redact_query(url);
        if url == "builtin:echo" {
            return Ok(Self::BuiltinEcho);
        }
        if let Some(path) = url.strip_prefix("unix:") {
            // `unix:/p` and `unix:///p` both name /p; a relative path would depend on the cwd.
            let path = path.strip_prefix("//").unwrap_or(path);
            if !path.starts_with('/') || path.len() < 2 || path.contains('\0') {
                bail!("backend {shown:?}: expected unix:/absolute/path");
            }
            // sun_path holds 108 bytes with the terminating NUL.
            if path.len() > 107 {
                bail!("backend {shown:?}: a socket path is at most 107 bytes");
            }
            return Ok(Self::Unix { path: path.into() });
        }
        let (scheme, rest) = url
            .split_once("://")
            .with_context(|| format!("backend {shown:?}: expected {}", forms_phrase()))?;
        let (authority, path) = match (scheme, rest.find(['/', '?'])) {
            ("tcp" | "udp", _) => (rest.trim_end_matches('/'), ""),
            ("ws" | "wss", Some(i)) => (&rest[..i], &rest[i..]),
            ("ws" | "wss", None) => (rest, ""),
            _ => bail!(
                "backend {shown:?}: unknown scheme {scheme:?} (expected {})",
                forms_phrase()
            ),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !authority.starts_with('[') || h.ends_with(']') => (h, p),
            _ if scheme == "ws" => (authority, "80"),
            _ if scheme == "wss" => (authority, "443"),
            _ => bail!("backend {shown:?}: missing :PORT"),
        };
        if host.contains(['/', '@', ' ']) {
            bail!("backend {shown:?}: bad host {host:?}");
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("backend {shown:?}: missing host");
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("backend {shown:?}: port must be 1-65535"))?;
        let host = host.to_owned();
        Ok(match scheme {
            "tcp" => Self::Tcp { host, port },
            "udp" => Self::Udp { host, port },
            _ => Self::WebSocket {
                tls: scheme == "wss",
                host,
                port,
                path: if path.starts_with('/') {
                    path.to_owned()
                } else {
                    format!("/{path}")
                },
            },
        })
    }

    /// Raw bytes (`tcp://`, `unix:`, the echo service), as opposed to a WebSocket backend
    /// or datagrams.
    pub fn is_bytes(&self) -> bool {
        !matches!(self, Self::WebSocket { .. } | Self::Udp { .. })
    }

    /// Datagrams (`udp://`): messages map one to one onto datagrams.
    pub fn is_datagrams(&self) -> bool {
        matches!(self, Self::Udp { .. })
    }
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Self::Udp { host, port } if host.contains(':') => write!(f, "udp://[{host}]:{port}"),
            Self::Udp { host, port } => write!(f, "udp://{host}:{port}"),
            Self::WebSocket {
                tls,
                host,
                port,
                path,
            } => {
                let scheme = if *tls { "wss" } else { "ws" };
                // Query values may be secrets (`?api_key=…`): never shown.
                let path = redact_query(path);
                if host.contains(':') {
                    write!(f, "{scheme}://[{host}]:{port}{path}")
                } else {
                    write!(f, "{scheme}://{host}:{port}{path}")
                }
            }
            Self::Unix { path } => write!(f, "unix:{}", path.display()),
            Self::BuiltinEcho => f.write_str("builtin:echo"),
        }
    }
}

/// `url` with every query value replaced by `<redacted>` (`ws://h/p?api_key=<redacted>&flag`):
/// how a backend URL is shown in logs, the start-up lines and the admin API.
pub fn redact_query(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((base, query)) = url.split_once('?') else {
        return url.into();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let mut out = format!("{base}?");
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) => {
                out.push_str(k);
                out.push_str("=<redacted>");
            }
            None => out.push_str(pair),
        }
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list is the parser's: each form parses (with an address after it), and a scheme
    /// outside it is refused with an error that names every form.
    #[test]
    fn every_listed_form_parses_and_others_are_refused_naming_them_all() {
        for form in BACKEND_URL_FORMS {
            let url = match *form {
                "builtin:echo" => form.to_string(),
                "unix:" => format!("{form}/run/app.sock"),
                _ => format!("{form}127.0.0.1:5900"),
            };
            BackendAddr::parse(&url).unwrap_or_else(|e| panic!("{url}: {e:#}"));
        }
        for bad in ["sctp://h:1", "h:1", "http://h:80"] {
            let err = format!("{:#}", BackendAddr::parse(bad).unwrap_err());
            for form in BACKEND_URL_FORMS {
                assert!(err.contains(form), "{bad}: {err}");
            }
        }
    }

    #[test]
    fn query_values_are_never_shown() {
        let b = BackendAddr::parse("wss://api.example:8443/feed?api_key=s3cret&v=2&flag").unwrap();
        assert_eq!(
            b.to_string(),
            "wss://api.example:8443/feed?api_key=<redacted>&v=<redacted>&flag"
        );
        assert_eq!(redact_query("ws://h:1/p"), "ws://h:1/p");
        let e = BackendAddr::parse("wss://h:0/?api_key=s3cret").unwrap_err();
        assert!(!format!("{e:#}").contains("s3cret"), "{e:#}");
    }

    #[test]
    fn udp_urls_parse_and_print_back() {
        for (url, host) in [
            ("udp://127.0.0.1:53", "127.0.0.1"),
            ("udp://[::1]:51820/", "::1"),
        ] {
            let addr = BackendAddr::parse(url).unwrap();
            assert_eq!(
                addr,
                BackendAddr::Udp {
                    host: host.into(),
                    port: addr_port(&addr)
                }
            );
            assert!(addr.is_datagrams() && !addr.is_bytes());
            assert_eq!(BackendAddr::parse(&addr.to_string()).unwrap(), addr);
        }
        assert!(BackendAddr::parse("udp://h").is_err());
        assert!(BackendAddr::parse("udp://h:0").is_err());
    }

    fn addr_port(addr: &BackendAddr) -> u16 {
        match addr {
            BackendAddr::Udp { port, .. } => *port,
            _ => 0,
        }
    }
}

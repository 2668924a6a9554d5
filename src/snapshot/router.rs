//! Request host and path → route: path rules first (400), then the host (exact names, then
//! one-label wildcards, then routes without hosts), and within it exact paths, then the
//! longest `/`-terminated prefix.

use std::collections::HashMap;
use std::sync::Arc;

use super::route::Route;
use crate::error::RejectError;
use crate::policy::ConnInfo;

/// The path rules, checked before routing: a path the router matches is the path a backend
/// gets, with nothing for a backend to resolve, decode or strip into another route's path.
/// Refused with 400 (not rewritten):
/// - dot-segments (`.`, `..`) and empty segments (`//`, a trailing `/` excepted);
/// - a backslash, plain or `%5C` (WHATWG URL parsers read `\` as `/`);
/// - a semicolon, plain or `%3B` (Tomcat and Spring strip `;` path parameters: `/..;/` is `/../`);
/// - a percent-encoded slash (`%2F`);
/// - a percent-encoded unreserved character (`%61` for `a`, `%2E` for `.`: RFC 3986 §6.2.2.2
///   makes `/%61dmin` the path `/admin`, so routing on the raw bytes would miss its route);
/// - an encoded percent sign before two hex digits (`%252e`, decoded twice by some stacks);
/// - an encoded control character (`%00`–`%1F`, `%7F`);
/// - escapes that do not decode to UTF-8, such as overlong forms (`%C0%AE` for `.`).
///
/// Browsers and URL libraries resolve dot-segments and never encode unreserved characters,
/// so only crafted requests hold these. Escapes that remain (`%20`, `%C3%A9`, `%25`) name
/// characters that cannot be confused with the path's structure; they are passed on undecoded.
pub fn check_path(path: &str) -> Result<(), RejectError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(RejectError::BadPath("the path must start with /"));
    };
    if path.contains('\\') {
        return Err(RejectError::BadPath("the path holds a backslash"));
    }
    if path.contains(';') {
        return Err(RejectError::BadPath(
            "the path holds a semicolon (path parameters are not accepted)",
        ));
    }
    check_escapes(path)?;
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() && segments.peek().is_some() {
            return Err(RejectError::BadPath("the path holds an empty segment (//)"));
        }
        if segment == "." || segment == ".." {
            return Err(RejectError::BadPath(
                "the path holds a dot-segment (. or ..)",
            ));
        }
    }
    Ok(())
}

/// The percent-escape rules of [`check_path`]: each `%XX` is decoded once, and the decoded
/// bytes must be UTF-8 (so no overlong form) with no escape that a backend could decode into
/// the path's structure or into another route's name.
fn check_escapes(path: &str) -> Result<(), RejectError> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let Some(byte) = escape_at(bytes, i) else {
            decoded.push(bytes[i]);
            i += 1;
            continue;
        };
        let reason = match byte {
            b'/' => Some("the path holds an encoded slash (%2F)"),
            b'\\' => Some("the path holds an encoded backslash (%5C)"),
            b';' => Some("the path holds an encoded semicolon (%3B)"),
            b'%' if is_hex_pair(bytes, i + 3) => {
                Some("the path holds a double-encoded escape (%25 before two hex digits)")
            }
            b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                Some("the path holds a percent-encoded unreserved character (such as %61 or %2E)")
            }
            b if b.is_ascii_control() => Some("the path holds an encoded control character"),
            _ => None,
        };
        if let Some(reason) = reason {
            return Err(RejectError::BadPath(reason));
        }
        decoded.push(byte);
        i += 3;
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(RejectError::BadPath(
            "the path's percent-escapes do not decode to UTF-8 (overlong or invalid bytes)",
        ));
    }
    Ok(())
}

/// The byte that the escape `%XX` at `i` encodes, if one starts there.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    (bytes.get(i) == Some(&b'%') && is_hex_pair(bytes, i + 1)).then(|| {
        let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
        u8::from_str_radix(hex, 16).unwrap_or(0)
    })
}

/// Two hex digits at `i`.
fn is_hex_pair(bytes: &[u8], i: usize) -> bool {
    bytes
        .get(i..i + 2)
        .is_some_and(|p| p.iter().all(u8::is_ascii_hexdigit))
}

/// The routing table of one config snapshot, sorted once at load: a path table per exactly
/// named host, one per wildcard, and one for the routes without hosts.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Lower-case host name → the routes that list it.
    exact: HashMap<String, PathTable>,
    /// The part after `*.` (`example.com` for `*.example.com`) → the routes that list it.
    wildcard: HashMap<String, PathTable>,
    /// Routes without `hosts`.
    any: PathTable,
}

/// The routes of one host rule, by path: exact paths, then the longest `/`-terminated prefix.
#[derive(Debug, Clone, Default)]
struct PathTable {
    exact: Vec<Arc<Route>>,
    /// Prefix routes, longest first.
    prefixes: Vec<Arc<Route>>,
}

impl PathTable {
    fn add(&mut self, route: &Arc<Route>) {
        if route.path.ends_with('/') {
            self.prefixes.push(route.clone());
            self.prefixes
                .sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        } else {
            self.exact.push(route.clone());
        }
    }

    fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.exact.iter().find(|r| r.path == path).or_else(|| {
            self.prefixes
                .iter()
                .find(|r| path.starts_with(r.path.as_str()))
        })
    }
}

impl Router {
    /// Routes' `hosts` are in their compared form (`config::host_pattern`).
    pub fn new(routes: &[Arc<Route>]) -> Self {
        let mut router = Self::default();
        for route in routes {
            if route.hosts.is_empty() {
                router.any.add(route);
            }
            for host in &route.hosts {
                match host.strip_prefix("*.") {
                    Some(parent) => router.wildcard.entry(parent.to_owned()),
                    None => router.exact.entry(host.clone()),
                }
                .or_default()
                .add(route);
            }
        }
        router
    }

    /// The route for `req` on the connection `conn`: its host ([`request_host`]) checked
    /// against the connection's TLS name (`421`, [`crate::tls::HostCheck`]), then
    /// [`Self::find`] (`404`). The path passed [`check_path`].
    pub fn route<B>(
        &self,
        req: &hyper::Request<B>,
        conn: &ConnInfo,
    ) -> Result<&Arc<Route>, RejectError> {
        let host = request_host(req);
        if let Some(check) = &conn.host_check {
            check
                .check(conn.sni.as_deref(), host.as_deref())
                .map_err(RejectError::Misdirected)?;
        }
        self.find(host.as_deref(), req.uri().path())
            .ok_or(RejectError::NoRoute)
    }

    /// The route for a request to `host` (from [`request_host`]; `None`: the request named
    /// none) and `path` (query already stripped, passed [`check_path`]). Routes that list
    /// the host exactly are tried first, then those whose wildcard covers it (one label:
    /// `*.example.com` covers `a.example.com`, not `example.com` or `a.b.example.com`), then
    /// the routes without hosts; within each, exact paths before the longest prefix.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        let by_name = host.and_then(|h| self.exact.get(h)?.find(path));
        let by_wildcard = || {
            let (_, parent) = host?.split_once('.')?;
            self.wildcard.get(parent)?.find(path)
        };
        by_name.or_else(by_wildcard).or_else(|| self.any.find(path))
    }
}

/// The host a request names, in compared form (lower case, no port, no trailing dot): its
/// URI's authority (HTTP/2 `:authority`, or an HTTP/1.1 absolute-form target, which RFC 9112
/// §3.2.2 puts before `Host`), else its `Host` header. `None` when it names none, or names
/// one that does not parse.
pub fn request_host<B>(req: &hyper::Request<B>) -> Option<String> {
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => {
            let host = req.headers().get(hyper::header::HOST)?.to_str().ok()?;
            host.parse::<hyper::http::uri::Authority>().ok()?
        }
    };
    let host = authority.host().trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Pick the subprotocol: the client's first offer that the route accepts.
/// Never returns anything the client did not offer.
pub fn select_subprotocol<'a, 'o>(
    route: &'a Route,
    offered: impl IntoIterator<Item = &'o str>,
) -> Option<&'a str> {
    offered.into_iter().map(str::trim).find_map(|offer| {
        route
            .subprotocols
            .iter()
            .find(|accepted| accepted.as_str() == offer)
            .map(String::as_str)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, path: &str) -> Arc<Route> {
        Arc::new(Route::for_test(name, path))
    }

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins() {
        let r = Router::new(&[
            route("root", "/"),
            route("apps", "/apps/"),
            route("vnc", "/vnc"),
        ]);
        assert_eq!(&*r.find(None, "/vnc").unwrap().name, "vnc");
        assert_eq!(&*r.find(None, "/vnc/x").unwrap().name, "root");
        assert_eq!(&*r.find(None, "/apps/a").unwrap().name, "apps");
        assert_eq!(
            &*r.find(Some("any.example"), "/other").unwrap().name,
            "root"
        );
    }

    #[test]
    fn no_match_without_catch_all() {
        let r = Router::new(&[route("vnc", "/vnc")]);
        assert!(r.find(None, "/vnc2").is_none());
        assert!(r.find(None, "/").is_none());
    }

    fn hosted(name: &str, path: &str, hosts: &[&str]) -> Arc<Route> {
        let mut r = Route::for_test(name, path);
        r.hosts = hosts.iter().map(|h| h.to_string()).collect();
        Arc::new(r)
    }

    #[test]
    fn exact_hosts_beat_wildcards_which_beat_routes_without_hosts() {
        let r = Router::new(&[
            route("any", "/"),
            hosted("desk", "/", &["*.desk.example"]),
            hosted("vnc", "/", &["vnc.desk.example", "vnc.example"]),
            hosted("vnc-api", "/api", &["vnc.example"]),
        ]);
        let name = |host, path| r.find(host, path).map(|r| r.name.to_string());
        assert_eq!(name(Some("vnc.desk.example"), "/x").as_deref(), Some("vnc"));
        assert_eq!(name(Some("a.desk.example"), "/x").as_deref(), Some("desk"));
        // One label only, and not the parent itself.
        assert_eq!(name(Some("a.b.desk.example"), "/x").as_deref(), Some("any"));
        assert_eq!(name(Some("desk.example"), "/x").as_deref(), Some("any"));
        assert_eq!(
            name(Some("vnc.example"), "/api").as_deref(),
            Some("vnc-api")
        );
        assert_eq!(name(Some("vnc.example"), "/apix").as_deref(), Some("vnc"));
        assert_eq!(name(None, "/x").as_deref(), Some("any"));
    }

    #[test]
    fn request_host_is_lower_case_without_port_and_prefers_the_authority() {
        let req = |uri: &str, host: Option<&str>| {
            let mut b = hyper::Request::builder().uri(uri);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            request_host(&b.body(()).unwrap())
        };
        assert_eq!(
            req("/", Some("VNC.Example:8443")).as_deref(),
            Some("vnc.example")
        );
        assert_eq!(
            req("/", Some("vnc.example.")).as_deref(),
            Some("vnc.example")
        );
        assert_eq!(req("/", Some("[::1]:80")).as_deref(), Some("[::1]"));
        assert_eq!(
            req("https://A.example:443/x", Some("b.example")).as_deref(),
            Some("a.example")
        );
        assert_eq!(req("/", None), None);
        assert_eq!(req("/", Some("bad host")), None);
    }

    #[test]
    fn subprotocol_follows_client_preference_and_never_invents() {
        let r = route("a", "/a");
        assert_eq!(select_subprotocol(&r, ["mqtt", "binary"]), Some("mqtt"));
        assert_eq!(select_subprotocol(&r, [" binary"]), Some("binary"));
        assert_eq!(select_subprotocol(&r, ["base64"]), None);
        assert_eq!(select_subprotocol(&r, []), None);
    }

    #[test]
    fn path_rules_refuse_what_a_backend_could_resolve_elsewhere() {
        for bad in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/..",
            "/a/%2e%2e/b",
            "/a/%2E%2e/b",
            "/a/.%2E/b",
            "/a/%2e/b",
            "//a",
            "/a//b",
            "/a/b%2fc",
            "/a/b%2Fc",
            "/a/b%5Cc",
            "*",
            "",
            // A backslash is a slash to WHATWG URL parsers.
            "/pub/..\\admin/secret",
            "/a\\b",
            // Path parameters: `/..;/` is `/../` to Tomcat and Spring.
            "/pub/..;/admin/secret",
            "/admin;x/secret",
            "/a/%3b/b",
            // Unreserved characters, percent-encoded: the same path as their plain form.
            "/%61dmin/secret",
            "/a/file%2ejs",
            "/a/%2e%2e%2e",
            "/a/%7E",
            "/a/%5f",
            "/a/%30",
            // Double encoding, control characters, overlong UTF-8.
            "/pub/%252e%252e/admin",
            "/a/%2541",
            "/a/%00",
            "/a/%0a",
            "/a/%7f",
            "/pub/%c0%ae%c0%ae/admin",
            "/a/%e0%80%ae",
            "/a/%ff",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for good in [
            "/",
            "/a/",
            "/a/b",
            "/a/.../b",
            "/a/..b/c.",
            "/a/%25",
            "/a/%2",
            "/a/%25zz",
            "/a/%20b",
            "/caf%C3%A9",
            "/a/%3F",
            "/a/%23",
        ] {
            assert!(check_path(good).is_ok(), "{good}");
        }
    }
}

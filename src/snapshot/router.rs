//! Request path → route: path rules first (400), then exact paths, then the longest
//! `/`-terminated prefix.

use std::sync::Arc;

use super::route::Route;
use crate::error::RejectError;

/// The path rules, checked before routing: a path the router matches is the path a backend
/// gets, with nothing for a backend to resolve differently. Refused with 400 (not rewritten):
/// dot-segments (`.` and `..`, with any of their dots written `%2e` or `%2E`), empty segments
/// (`//`, a trailing `/` excepted) and encoded slashes or backslashes (`%2f`, `%5c`, any case)
/// anywhere in a segment. Browsers and URL libraries resolve dot-segments before they send,
/// so only crafted requests hold them.
pub fn check_path(path: &str) -> Result<(), RejectError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(RejectError::BadPath("the path must start with /"));
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() && segments.peek().is_some() {
            return Err(RejectError::BadPath("the path holds an empty segment (//)"));
        }
        if has_escape(segment, "2f") || has_escape(segment, "5c") {
            return Err(RejectError::BadPath(
                "the path holds an encoded slash or backslash (%2F, %5C)",
            ));
        }
        if is_dot_segment(segment) {
            return Err(RejectError::BadPath(
                "the path holds a dot-segment (. or .., plain or percent-encoded)",
            ));
        }
    }
    Ok(())
}

/// `%` followed by `hex` (two lower-case hex digits), in any case.
fn has_escape(segment: &str, hex: &str) -> bool {
    segment
        .as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1..].eq_ignore_ascii_case(hex.as_bytes()))
}

/// `.` or `..`, each dot plain or as `%2e` in any case.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1..3].eq_ignore_ascii_case(b"2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

/// The routing table of one config snapshot, sorted once at load.
#[derive(Debug, Clone)]
pub struct Router {
    exact: Vec<Arc<Route>>,
    /// Prefix routes, longest first.
    prefixes: Vec<Arc<Route>>,
}

impl Router {
    pub fn new(routes: &[Arc<Route>]) -> Self {
        let (mut prefixes, exact): (Vec<_>, Vec<_>) =
            routes.iter().cloned().partition(|r| r.path.ends_with('/'));
        prefixes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        Self { exact, prefixes }
    }

    /// The route for a request path (query already stripped) that passed [`check_path`].
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.exact.iter().find(|r| r.path == path).or_else(|| {
            self.prefixes
                .iter()
                .find(|r| path.starts_with(r.path.as_str()))
        })
    }
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
        assert_eq!(&*r.find("/vnc").unwrap().name, "vnc");
        assert_eq!(&*r.find("/vnc/x").unwrap().name, "root");
        assert_eq!(&*r.find("/apps/a").unwrap().name, "apps");
        assert_eq!(&*r.find("/other").unwrap().name, "root");
    }

    #[test]
    fn no_match_without_catch_all() {
        let r = Router::new(&[route("vnc", "/vnc")]);
        assert!(r.find("/vnc2").is_none());
        assert!(r.find("/").is_none());
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
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for good in [
            "/",
            "/a/",
            "/a/b",
            "/a/.../b",
            "/a/..b/c.",
            "/a/file%2ejs",
            "/a/%2e%2e%2e",
            "/a/%25",
            "/a/%2",
        ] {
            assert!(check_path(good).is_ok(), "{good}");
        }
    }
}

//! Request path → route: exact paths first, then the longest `/`-terminated prefix.

use std::sync::Arc;

use super::route::Route;

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

    /// The route for a request path (query already stripped).
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
    use crate::config::{BackendAddr, MessageType};
    use crate::policy::Target;

    fn route(name: &str, path: &str) -> Arc<Route> {
        Arc::new(Route {
            name: name.into(),
            path: path.into(),
            backend: Target::Fixed(BackendAddr::BuiltinEcho),
            subprotocols: vec!["binary".into(), "mqtt".into()],
            message_type: MessageType::Binary,
            forward_headers: vec![],
            strip_path_prefix: true,
            backend_tls: None,
            max_frame_bytes: 1 << 20,
            max_message_bytes: 1 << 20,
            access: Default::default(),
            limits: Default::default(),
        })
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
}

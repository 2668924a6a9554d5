//! The browser console on a public listener (opt-in per listener): a static page to try the
//! gateway's routes, embedded in the binary. Upgrade requests never reach it: a route on `/`
//! keeps them.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// Where the console's own files live: a prefix no sensible route path uses, and upgrade
/// requests to it still go to the routes.
pub const ASSET_PREFIX: &str = "/_wsgate/";

/// Scripts and styles from this origin only, no inline code; WebSockets to any host (the
/// console may be pointed elsewhere); never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The console's files and the route list of one listener, built once at start.
#[derive(Debug, Clone)]
pub struct Console {
    routes_json: Bytes,
}

impl Console {
    /// `paths`: the listener's route paths (a path ending in `/` is a prefix). Only paths are
    /// published: no names, backends or credentials.
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
        let routes: Vec<_> = paths
            .into_iter()
            .map(|p| serde_json::json!({ "path": p, "prefix": p.ends_with('/') }))
            .collect();
        Self {
            routes_json: Bytes::from(serde_json::Value::Array(routes).to_string()),
        }
    }

    /// The console's answer to a plain (non-upgrade) request, or `None` when the request is
    /// not for the console.
    pub fn answer<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        if is_upgrade(req) {
            return None;
        }
        let path = req.uri().path();
        let (content_type, body, cache) = match path {
            "/" | "/index.html" => (
                "text/html; charset=utf-8",
                Bytes::from_static(INDEX_HTML.as_bytes()),
                "no-cache",
            ),
            "/_wsgate/console.js" => (
                "text/javascript; charset=utf-8",
                Bytes::from_static(CONSOLE_JS.as_bytes()),
                "no-cache",
            ),
            "/_wsgate/console.css" => (
                "text/css; charset=utf-8",
                Bytes::from_static(CONSOLE_CSS.as_bytes()),
                "no-cache",
            ),
            "/_wsgate/routes.json" => ("application/json", self.routes_json.clone(), "no-store"),
            _ => return None,
        };
        let mut response = if req.method() == Method::GET || req.method() == Method::HEAD {
            let body = if req.method() == Method::HEAD {
                Bytes::new()
            } else {
                body
            };
            let mut r = Response::new(Full::new(body));
            set(&mut r, header::CONTENT_TYPE, content_type);
            set(&mut r, header::CACHE_CONTROL, cache);
            r
        } else {
            let mut r = Response::new(Full::new(Bytes::from_static(b"GET only\n")));
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            set(&mut r, header::ALLOW, "GET, HEAD");
            set(&mut r, header::CONTENT_TYPE, "text/plain; charset=utf-8");
            r
        };
        set(&mut response, header::CONTENT_SECURITY_POLICY, CSP);
        set(&mut response, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        set(&mut response, header::REFERRER_POLICY, "no-referrer");
        set(&mut response, header::X_FRAME_OPTIONS, "DENY");
        Some(response)
    }
}

fn set<B>(r: &mut Response<B>, name: header::HeaderName, value: &'static str) {
    r.headers_mut()
        .insert(name, HeaderValue::from_static(value));
}

/// Any request that asks for a protocol upgrade belongs to the routes, valid or not: the
/// route answers a broken one with its 400/426.
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        || req.headers().contains_key(header::SEC_WEBSOCKET_KEY)
        // HTTP/2 (RFC 8441): a WebSocket is an extended CONNECT, without either header.
        || req.method() == Method::CONNECT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn serves_the_page_its_files_and_paths_only() {
        let c = Console::new(["/echo", "/vnc/"]);
        let page = c.answer(&get("/")).expect("page");
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let csp = page.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
        assert_eq!(page.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(INDEX_HTML.contains("src=\"/_wsgate/console.js\""));
        assert!(
            !INDEX_HTML.contains("<script>"),
            "no inline script under the CSP"
        );

        let routes = c.answer(&get("/_wsgate/routes.json")).expect("routes");
        assert_eq!(routes.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(
            c.routes_json,
            r#"[{"path":"/echo","prefix":false},{"path":"/vnc/","prefix":true}]"#
        );
        assert!(c.answer(&get("/_wsgate/console.js")).is_some());
        assert!(c.answer(&get("/elsewhere")).is_none());
    }

    #[test]
    fn upgrades_and_other_methods_are_not_the_pages() {
        let c = Console::new(["/"]);
        let upgrade = Request::get("/")
            .header("Upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(c.answer(&upgrade).is_none());
        let post = Request::post("/").body(()).unwrap();
        assert_eq!(
            c.answer(&post).expect("answered").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}

//! Who may open a session on a route: the `Origin` allowlist, then credentials (a verified
//! client certificate, a bearer token: static or JWT) taken from where browsers can put them.
//! Also what the rest of the request must not leak: `bearer.` subprotocol entries, query
//! tokens and the checked `Authorization` header or auth cookie stay out of the backend
//! handshake (unless the route sets `forward_credentials`), query values out of the logs.
//!
//! Compiled from `[route.origin]` and `[route.auth]` (`config::access`).

use std::borrow::Cow;
use std::sync::Arc;

use anyhow::{bail, Context};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::Request;
use subtle::ConstantTimeEq;

use super::identity::ConnInfo;
use super::jwks::KeySet;
use super::jwt::{Claims, JwtPolicy};
use super::signin::{RouteSignin, Signin};
use crate::config::{AuthConfig, OriginConfig, TokenSource};
use crate::error::RejectError;
use crate::http_util::{decode_sha256_hex, percent_decode, query_value, remove_cookies};

/// The subprotocol prefix that carries a bearer token (`bearer.<token>`): browsers cannot
/// set headers on `new WebSocket(url, protocols)`, but they can offer protocols.
pub const SUBPROTOCOL_PREFIX: &str = "bearer.";

/// What query values are replaced with in logs.
pub use crate::http_util::REDACTED;

/// A route's resolved access rules. The default lets everyone in (no `[route.origin]`,
/// no `[route.auth]`).
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub origin: Option<OriginPolicy>,
    pub auth: Option<AuthPolicy>,
}

/// What passed the checks: who it is (for the log) and, for a JWT, its claims.
#[derive(Debug, Default)]
pub struct Granted {
    pub principal: Option<String>,
    pub claims: Option<Claims>,
}

impl Access {
    /// Resolve `[route.origin]` and `[route.auth]` of route `route`; errors name `at`
    /// (`route[0]`). The JWT key set of `previous` (the same route before a reload) is kept
    /// when its settings are unchanged.
    pub fn from_config(
        at: &str,
        route: &str,
        origin: Option<&OriginConfig>,
        auth: Option<&AuthConfig>,
        previous: Option<&Access>,
        signin: Option<&Arc<Signin>>,
    ) -> anyhow::Result<Self> {
        let origin = origin
            .map(|o| OriginPolicy::from_config(&format!("{at}.origin"), o))
            .transpose()?;
        let kept = previous.and_then(Access::key_set);
        let auth = auth
            .map(|a| {
                let mut policy = AuthPolicy::from_config(
                    &format!("{at}.auth"),
                    route,
                    a,
                    origin.is_some(),
                    kept,
                )?;
                if let Some(rules) = &a.signin {
                    let Some(signin) = signin else {
                        bail!("{at}.auth.signin: needs a [signin] section");
                    };
                    if origin.is_none() {
                        bail!(
                            "{at}.auth.signin: needs [route.origin]: browsers send the session \
                             cookie with cross-site WebSocket requests"
                        );
                    }
                    policy.signin = Some((signin.clone(), RouteSignin::from_config(rules)));
                }
                Ok(policy)
            })
            .transpose()?;
        Ok(Self { origin, auth })
    }

    /// The route's JWT key set, when its keys come from an OpenID provider.
    pub fn key_set(&self) -> Option<&Arc<KeySet>> {
        self.auth
            .as_ref()
            .and_then(|a| a.jwt.as_ref())
            .and_then(JwtPolicy::key_set)
    }

    /// The route checks a credential (certificate or token), so failures spend the
    /// client address's budget of failed credentials.
    pub fn checks_credentials(&self) -> bool {
        self.auth.is_some()
    }

    /// The route wants a client certificate (so some listener must ask for one).
    pub fn needs_client_cert(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| a.client_cert.is_some())
    }

    /// The route can take a target from a JWT claim (it verifies JWTs).
    pub fn verifies_jwt(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| a.jwt.is_some())
    }

    /// Origin (403), then credentials (401 missing or invalid, 403 not allowed). Waits only
    /// when a JWT names a key its route's key set lacks (one rate-limited fetch).
    pub async fn check<B>(
        &self,
        req: &Request<B>,
        conn: &ConnInfo,
    ) -> Result<Granted, RejectError> {
        if let Some(origin) = &self.origin {
            origin.check(req)?;
        }
        match &self.auth {
            Some(auth) => auth.authenticate(req, conn).await,
            None => Ok(Granted::default()),
        }
    }

    /// The client's subprotocol offer, trimmed, minus `bearer.` entries when this route
    /// takes tokens from there: those are credentials, never chosen, echoed or forwarded.
    pub fn offered_protocols<'r, B>(&self, req: &'r Request<B>) -> Vec<&'r str> {
        let strip = self
            .auth
            .as_ref()
            .is_some_and(|a| a.takes_tokens() && a.sources.contains(&TokenSource::Subprotocol));
        protocol_entries(req)
            .filter(|p| !(strip && p.starts_with(SUBPROTOCOL_PREFIX)))
            .collect()
    }

    /// Remove from headers bound for a WebSocket backend the credential carriers this route
    /// checks: bearer `Authorization` values (header source) and the auth cookie (cookie
    /// source; other cookies stay). Like `bearer.` entries and query tokens, a credential the
    /// gateway consumed is not passed on unless the route sets `forward_credentials`.
    pub fn withhold_credentials(&self, headers: &mut HeaderMap) {
        let Some(auth) = self.auth.as_ref().filter(|a| a.takes_tokens()) else {
            return;
        };
        if auth.sources.contains(&TokenSource::Header) {
            let kept: Vec<HeaderValue> = headers
                .get_all(header::AUTHORIZATION)
                .iter()
                .filter(|v| v.to_str().map_or(true, |v| bearer_token(v).is_none()))
                .cloned()
                .collect();
            replace_all(headers, header::AUTHORIZATION, kept);
        }
        if auth.sources.contains(&TokenSource::Cookie) {
            remove_cookies(headers, |name| name == auth.cookie_name);
        }
    }

    /// The route accepts the `[signin]` session cookie (`[route.auth.signin]`).
    pub fn takes_signin(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| a.signin.is_some())
    }

    /// The client's query as forwarded to a WebSocket backend: without the token
    /// parameter when this route takes tokens from the query.
    pub fn forwarded_query<'q>(&self, query: Option<&'q str>) -> Option<Cow<'q, str>> {
        let query = query?;
        let param = match &self.auth {
            Some(a) if a.takes_tokens() && a.sources.contains(&TokenSource::Query) => {
                a.query_param.as_str()
            }
            _ => return Some(Cow::Borrowed(query)),
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
                percent_decode(key).as_deref() != Some(param)
            })
            .collect();
        (!kept.is_empty()).then(|| Cow::Owned(kept.join("&")))
    }
}

/// Non-empty, trimmed `Sec-WebSocket-Protocol` entries across every such header.
fn protocol_entries<B>(req: &Request<B>) -> impl Iterator<Item = &str> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

// ---------------------------------------------------------------------------------------------
// Origin.

/// A resolved origin allowlist: exact origins, and `*.suffix` patterns per scheme and port.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    exact: Vec<String>,
    patterns: Vec<OriginPattern>,
    allow_missing: bool,
}

#[derive(Debug, Clone)]
struct OriginPattern {
    scheme: String,
    /// `.example.com` for `*.example.com`.
    suffix: String,
    port: Option<u16>,
}

/// An origin split into its parts, lower-cased, default port dropped.
#[derive(Debug, PartialEq, Eq)]
struct ParsedOrigin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl ParsedOrigin {
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase();
        let (scheme, rest) = text.split_once("://")?;
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return None;
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !rest.starts_with('[') || h.ends_with(']') => {
                (h, Some(p.parse::<u16>().ok()?))
            }
            _ => (rest, None),
        };
        let host_ok = !host.is_empty()
            && (host.starts_with('[') && host.ends_with(']')
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.*".contains(&b)));
        if !host_ok {
            return None;
        }
        let port = match (scheme, port) {
            ("http" | "ws", Some(80)) | ("https" | "wss", Some(443)) => None,
            (_, p) => p,
        };
        Some(Self {
            scheme: scheme.to_owned(),
            host: host.to_owned(),
            port,
        })
    }

    fn to_text(&self) -> String {
        match self.port {
            Some(p) => format!("{}://{}:{p}", self.scheme, self.host),
            None => format!("{}://{}", self.scheme, self.host),
        }
    }
}

impl OriginPolicy {
    fn from_config(at: &str, config: &OriginConfig) -> anyhow::Result<Self> {
        if config.allow.is_empty() {
            bail!("{at}.allow: list at least one origin (or remove [route.origin])");
        }
        let mut exact = Vec::new();
        let mut patterns = Vec::new();
        for (i, entry) in config.allow.iter().enumerate() {
            let parsed = ParsedOrigin::parse(entry).with_context(|| {
                format!(
                    "{at}.allow[{i}]: {entry:?} is not an origin like \"https://app.example.com\" \
                     or \"https://*.example.com\" (scheme required, no path)"
                )
            })?;
            match parsed.host.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains('*') => {
                    patterns.push(OriginPattern {
                        scheme: parsed.scheme,
                        suffix: suffix.to_owned(),
                        port: parsed.port,
                    })
                }
                None if !parsed.host.contains('*') => exact.push(parsed.to_text()),
                _ => bail!("{at}.allow[{i}]: {entry:?}: `*` only as a whole first label (\"*.example.com\")"),
            }
        }
        Ok(Self {
            exact,
            patterns,
            allow_missing: config.allow_missing,
        })
    }

    /// One `Origin` header that matches, or none when `allow_missing`; anything else is 403.
    fn check<B>(&self, req: &Request<B>) -> Result<(), RejectError> {
        let mut values = req.headers().get_all(header::ORIGIN).iter();
        match (values.next(), values.next()) {
            (None, _) if self.allow_missing => Ok(()),
            (Some(v), None) if v.to_str().is_ok_and(|o| self.allows(o)) => Ok(()),
            _ => Err(RejectError::Origin),
        }
    }

    fn allows(&self, origin: &str) -> bool {
        let Some(o) = ParsedOrigin::parse(origin) else {
            return false;
        };
        if o.host.contains('*') {
            return false;
        }
        let text = o.to_text();
        self.exact.contains(&text)
            || self.patterns.iter().any(|p| {
                p.scheme == o.scheme
                    && p.port == o.port
                    && o.host.len() > p.suffix.len()
                    && o.host.ends_with(&p.suffix)
            })
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials.

/// A route's resolved authentication.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    sources: Vec<TokenSource>,
    cookie_name: String,
    query_param: String,
    /// SHA-256 digests of the static tokens.
    static_tokens: Vec<[u8; 32]>,
    jwt: Option<JwtPolicy>,
    /// `Some` when a verified client certificate is required; names it must carry (empty: any).
    client_cert: Option<Vec<String>>,
    /// `[route.auth.signin]`: the sign-in's session cookie, and who may use the route.
    signin: Option<(Arc<Signin>, RouteSignin)>,
}

impl AuthPolicy {
    fn from_config(
        at: &str,
        route: &str,
        c: &AuthConfig,
        has_origin_check: bool,
        kept: Option<&Arc<KeySet>>,
    ) -> anyhow::Result<Self> {
        let mut static_tokens = Vec::with_capacity(c.bearer_sha256.len());
        for (i, hex) in c.bearer_sha256.iter().enumerate() {
            let digest = decode_sha256_hex(hex).with_context(|| {
                format!("{at}.bearer_sha256[{i}]: expected 64 hex digits (sha256sum output)")
            })?;
            static_tokens.push(digest);
        }
        let jwt = c
            .jwt
            .as_ref()
            .map(|j| JwtPolicy::load(&format!("{at}.jwt"), route, j, kept))
            .transpose()?;
        let client_cert = (c.client_cert_required || !c.client_cert_names.is_empty())
            .then(|| c.client_cert_names.clone());
        if static_tokens.is_empty() && jwt.is_none() && client_cert.is_none() && c.signin.is_none()
        {
            bail!(
                "{at}: set at least one of bearer_sha256, [jwt], [signin], client_cert_required, \
                 client_cert_names (or remove [route.auth])"
            );
        }
        if c.client_cert_names.iter().any(|n| n.trim().is_empty()) {
            bail!("{at}.client_cert_names: names must be non-empty");
        }
        if c.token_sources.is_empty() && (jwt.is_some() || !static_tokens.is_empty()) {
            bail!("{at}.token_sources: list at least one of header, subprotocol, cookie, query");
        }
        if c.token_sources.contains(&TokenSource::Cookie) {
            if !has_origin_check {
                bail!(
                    "{at}.token_sources: \"cookie\" needs [route.origin]: browsers send cookies \
                     with cross-site WebSocket requests"
                );
            }
            if c.cookie_name.is_empty() || !c.cookie_name.bytes().all(is_token_byte) {
                bail!("{at}.cookie_name: {:?} is not a cookie name", c.cookie_name);
            }
        }
        if c.query_param.is_empty() || c.query_param.contains(['&', '=', '#', ' ']) {
            bail!(
                "{at}.query_param: {:?} is not a parameter name",
                c.query_param
            );
        }
        Ok(Self {
            sources: c.token_sources.clone(),
            cookie_name: c.cookie_name.clone(),
            query_param: c.query_param.clone(),
            static_tokens,
            jwt,
            client_cert,
            signin: None,
        })
    }

    fn takes_tokens(&self) -> bool {
        !self.static_tokens.is_empty() || self.jwt.is_some()
    }

    async fn authenticate<B>(
        &self,
        req: &Request<B>,
        conn: &ConnInfo,
    ) -> Result<Granted, RejectError> {
        let mut granted = Granted::default();
        if let Some(names) = &self.client_cert {
            let cert = conn
                .client_cert
                .as_deref()
                .ok_or(RejectError::Unauthorized("client certificate required"))?;
            if !names.is_empty() && !cert.matches_any(names) {
                return Err(RejectError::Forbidden("client certificate not allowed"));
            }
            granted.principal = Some(cert.label().to_owned());
        }
        // A signed-in browser: its session cookie, then the route's rules.
        if let Some((signin, rules)) = &self.signin {
            match signin.identity(req) {
                Some(who) if rules.allows(&who) => {
                    granted.principal = Some(who.label());
                    granted.claims = Some(who.as_claims());
                    return Ok(granted);
                }
                Some(_) => return Err(RejectError::Forbidden("signed-in user not allowed")),
                None if !self.takes_tokens() => {
                    return Err(RejectError::Unauthorized("sign-in required"))
                }
                None => {}
            }
        }
        if !self.takes_tokens() {
            return Ok(granted);
        }
        let token = self
            .find_token(req)
            .ok_or(RejectError::Unauthorized("missing bearer token"))?
            .into_owned();
        if let Some(digest) = self.static_match(&token) {
            granted.principal = Some(format!("sha256:{}", hex_prefix(&digest)));
            return Ok(granted);
        }
        let Some(jwt) = &self.jwt else {
            return Err(RejectError::Unauthorized("invalid token"));
        };
        let claims = jwt.verify(&token).await?;
        if let Some(sub) = claims.get("sub").and_then(|s| s.as_str()) {
            granted.principal = Some(sub.to_owned());
        }
        granted.claims = Some(claims);
        Ok(granted)
    }

    /// The presented token's digest if it is a configured one. Every digest is compared,
    /// each in constant time.
    fn static_match(&self, token: &str) -> Option<[u8; 32]> {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut hit = false;
        for known in &self.static_tokens {
            hit |= bool::from(known.as_slice().ct_eq(digest.as_ref()));
        }
        hit.then(|| {
            let mut out = [0u8; 32];
            out.copy_from_slice(digest.as_ref());
            out
        })
    }

    /// The first token found, trying the sources in order.
    fn find_token<'r, B>(&self, req: &'r Request<B>) -> Option<Cow<'r, str>> {
        self.sources.iter().find_map(|source| match source {
            TokenSource::Header => bearer_header(req).map(Cow::Borrowed),
            TokenSource::Subprotocol => protocol_entries(req)
                .find_map(|p| p.strip_prefix(SUBPROTOCOL_PREFIX))
                .filter(|t| !t.is_empty())
                .map(Cow::Borrowed),
            TokenSource::Cookie => cookie(req, &self.cookie_name).map(Cow::Borrowed),
            TokenSource::Query => query_value(req.uri().query(), &self.query_param).map(Cow::Owned),
        })
    }
}

fn bearer_header<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(bearer_token)
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Put `values` in place of every `name` header.
fn replace_all(headers: &mut HeaderMap, name: header::HeaderName, values: Vec<HeaderValue>) {
    headers.remove(&name);
    for v in values {
        headers.append(name.clone(), v);
    }
}

fn cookie<'r, B>(req: &'r Request<B>, name: &str) -> Option<&'r str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim() == name && !v.is_empty()).then_some(v)
        })
}

fn hex_prefix(digest: &[u8; 32]) -> String {
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 7230 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::policy::identity::ClientCert;

    fn origin_policy(allow: &[&str], allow_missing: bool) -> OriginPolicy {
        OriginPolicy::from_config(
            "o",
            &OriginConfig {
                allow: allow.iter().map(|s| s.to_string()).collect(),
                allow_missing,
            },
        )
        .unwrap()
    }

    fn req(headers: &[(&str, &str)], uri: &str) -> Request<()> {
        let mut b = Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn origins_exact_and_patterns() {
        let p = origin_policy(
            &[
                "https://app.example.com",
                "https://*.corp.example",
                "http://localhost:3000",
            ],
            false,
        );
        for ok in [
            "https://app.example.com",
            "HTTPS://App.Example.com",
            "https://app.example.com:443",
            "https://a.corp.example",
            "https://a.b.corp.example",
            "http://localhost:3000",
        ] {
            assert!(p.allows(ok), "{ok}");
        }
        for bad in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://evil.example.com",
            "https://app.example.com.evil.net",
            "https://corp.example",
            "https://evilcorp.example",
            "http://a.corp.example",
            "https://a.corp.example:8443",
            "http://localhost:3001",
            "null",
            "https://*.corp.example",
            "https://app.example.com/path",
            "",
        ] {
            assert!(!p.allows(bad), "{bad}");
        }
    }

    #[test]
    fn origin_header_presence() {
        let strict = origin_policy(&["https://a.example"], false);
        let lenient = origin_policy(&["https://a.example"], true);
        let none = req(&[], "/");
        assert!(strict.check(&none).is_err());
        assert!(lenient.check(&none).is_ok());
        let two = req(
            &[
                ("origin", "https://a.example"),
                ("origin", "https://a.example"),
            ],
            "/",
        );
        assert!(
            lenient.check(&two).is_err(),
            "several Origin headers are refused"
        );
    }

    #[test]
    fn bad_origin_entries_are_config_errors() {
        for (entry, needle) in [
            ("*.example.com", "scheme required"),
            ("https://app.example.com/", "scheme required"),
            ("https://a.*.example.com", "whole first label"),
            ("https://*", "whole first label"),
        ] {
            let e = OriginPolicy::from_config(
                "route[0].origin",
                &OriginConfig {
                    allow: vec![entry.into()],
                    allow_missing: false,
                },
            )
            .unwrap_err();
            let text = format!("{e:#}");
            assert!(
                text.contains("route[0].origin.allow[0]") && text.contains(needle),
                "{entry}: {text}"
            );
        }
    }

    impl AuthPolicy {
        /// Static tokens and certificates never wait; a current-thread runtime runs the check.
        fn authenticate_now<B>(
            &self,
            req: &Request<B>,
            conn: &ConnInfo,
        ) -> Result<Granted, RejectError> {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(self.authenticate(req, conn))
        }
    }

    fn auth(toml_text: &str) -> AuthPolicy {
        let c: AuthConfig = toml::from_str(toml_text).unwrap();
        AuthPolicy::from_config("a", "r", &c, true, None).unwrap()
    }

    fn digest_hex(token: &str) -> String {
        ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn conn() -> ConnInfo {
        let a = "127.0.0.1:1".parse().unwrap();
        ConnInfo::direct(a, a, false)
    }

    #[test]
    fn static_tokens_from_each_source() {
        let a = auth(&format!(
            "bearer_sha256 = [\"{}\"]\ntoken_sources = [\"header\", \"subprotocol\", \"cookie\", \"query\"]\n",
            digest_hex("s3cret")
        ));
        for (headers, uri) in [
            (vec![("authorization", "Bearer s3cret")], "/"),
            (vec![("authorization", "bearer   s3cret ")], "/"),
            (
                vec![("sec-websocket-protocol", "binary, bearer.s3cret")],
                "/",
            ),
            (vec![("cookie", "a=b; wsgate_token=s3cret")], "/"),
            (vec![("cookie", "wsgate_token=\"s3cret\"")], "/"),
            (vec![], "/?x=1&access_token=s3cre%74"),
        ] {
            let r = req(&headers, uri);
            let g = a
                .authenticate_now(&r, &conn())
                .unwrap_or_else(|e| panic!("{headers:?} {uri}: {e}"));
            assert!(g.principal.unwrap().starts_with("sha256:"));
        }
        let missing = a.authenticate_now(&req(&[], "/"), &conn()).unwrap_err();
        assert_eq!(missing.status(), 401);
        assert_eq!(missing.to_string(), "missing bearer token");
        let wrong = a
            .authenticate_now(&req(&[("authorization", "Bearer s3cre")], "/"), &conn())
            .unwrap_err();
        assert_eq!(wrong.to_string(), "invalid token");
    }

    #[test]
    fn sources_not_listed_are_ignored() {
        let a = auth(&format!("bearer_sha256 = [\"{}\"]\n", digest_hex("t")));
        assert!(a
            .authenticate_now(
                &req(&[("cookie", "wsgate_token=t")], "/?access_token=t"),
                &conn()
            )
            .is_err());
    }

    #[test]
    fn cookie_tokens_need_an_origin_check() {
        let c: AuthConfig = toml::from_str(&format!(
            "bearer_sha256 = [\"{}\"]\ntoken_sources = [\"cookie\"]\n",
            digest_hex("t")
        ))
        .unwrap();
        let e = AuthPolicy::from_config("route[2].auth", "r", &c, false, None).unwrap_err();
        assert!(
            format!("{e:#}").contains("route[2].auth.token_sources"),
            "{e:#}"
        );
        let c: AuthConfig = toml::from_str("bearer_sha256 = [\"abc\"]\n").unwrap();
        let e = AuthPolicy::from_config("route[2].auth", "r", &c, false, None).unwrap_err();
        assert!(
            format!("{e:#}").contains("route[2].auth.bearer_sha256[0]"),
            "{e:#}"
        );
        let c: AuthConfig = toml::from_str("token_sources = [\"header\"]\n").unwrap();
        assert!(
            AuthPolicy::from_config("a", "r", &c, false, None).is_err(),
            "no method at all"
        );
    }

    #[test]
    fn client_cert_names() {
        let a = auth("client_cert_names = [\"alice\", \"svc.example.com\"]\n");
        let mut c = conn();
        let e = a.authenticate_now(&req(&[], "/"), &c).unwrap_err();
        assert_eq!(e.status(), 401);
        c.client_cert = Some(Arc::new(ClientCert {
            common_names: vec!["mallory".into()],
            dns_names: vec!["svc.example.com".into()],
            emails: vec![],
        }));
        assert_eq!(
            a.authenticate_now(&req(&[], "/"), &c)
                .unwrap()
                .principal
                .as_deref(),
            Some("mallory")
        );
        c.client_cert = Some(Arc::new(ClientCert {
            common_names: vec!["mallory".into()],
            ..Default::default()
        }));
        assert_eq!(
            a.authenticate_now(&req(&[], "/"), &c).unwrap_err().status(),
            403
        );
    }

    #[test]
    fn bearer_entries_are_not_offers_when_consumed() {
        let mut access = Access {
            origin: None,
            auth: Some(auth(&format!(
                "bearer_sha256 = [\"{}\"]\n",
                digest_hex("t")
            ))),
        };
        let r = req(
            &[
                ("sec-websocket-protocol", "bearer.t, binary"),
                ("sec-websocket-protocol", " mqtt "),
            ],
            "/",
        );
        assert_eq!(access.offered_protocols(&r), ["binary", "mqtt"]);
        access.auth = None;
        assert_eq!(access.offered_protocols(&r), ["bearer.t", "binary", "mqtt"]);
    }

    #[test]
    fn query_tokens_are_not_forwarded_when_consumed() {
        let access = Access {
            origin: None,
            auth: Some(auth(&format!(
                "bearer_sha256 = [\"{}\"]\ntoken_sources = [\"query\"]\n",
                digest_hex("t")
            ))),
        };
        assert_eq!(
            access
                .forwarded_query(Some("a=1&access_token=t&b=2"))
                .as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(access.forwarded_query(Some("access_%74oken=t")), None);
        assert_eq!(
            Access::default()
                .forwarded_query(Some("access_token=t"))
                .as_deref(),
            Some("access_token=t")
        );
    }
}

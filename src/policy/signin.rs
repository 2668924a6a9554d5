//! Browser sign-in (`[signin]`): the OpenID Connect authorization code flow with PKCE
//! (RFC 7636, S256), the gateway as a confidential client. `/.wsgate/signin` sends the
//! browser to the provider with a fresh `state`, `nonce` and code challenge, kept in a sealed
//! flow cookie; the callback checks `state`, redeems the code with the verifier, verifies the
//! ID token (signature from the provider's key set, `iss`, `aud`, `azp`, `exp`, `nonce`) and
//! sets a sealed session cookie; `/.wsgate/signout` clears it. Routes with
//! `[route.auth.signin]` accept the cookie on the upgrade, for the users their rules allow.
//! The flow's two legs (to the provider, the callback) are in `signin/flow.rs`.

mod flow;

use std::sync::Arc;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::jwks::KeySet;
use super::jwt::{Claims, JwtPolicy};
use super::provider_client::is_loopback;
use super::sealed::CookieKeys;
use crate::config::{JwtAlgorithm, JwtConfig, RouteSigninConfig, SigninConfig};
use crate::http_util::{query_value, remove_cookies, text, Body};
use crate::logsafe::Escaped;
use crate::metrics;

/// Where a browser starts signing in; `?return=/path` says where to come back to.
pub const SIGNIN_PATH: &str = "/.wsgate/signin";
/// Where a browser signs out (GET or POST); `?return=/path` as above.
pub const SIGNOUT_PATH: &str = "/.wsgate/signout";
/// How long a browser has between leaving for the provider and coming back, in seconds.
pub const FLOW_SECS: u64 = 600;
/// Groups kept in the session cookie at most (a cookie holds about 4 KB).
pub const MAX_GROUPS: usize = 50;
/// The longest session cookie value set; a longer one fails the sign-in.
pub const MAX_COOKIE_BYTES: usize = 3800;

/// Who signed in, as the session cookie carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub sub: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Unix time the sign-in ends.
    pub exp: u64,
}

impl Identity {
    /// The name in logs and the session API: the verified email, else `sub`.
    pub fn label(&self) -> String {
        match (&self.email, self.email_verified) {
            (Some(email), true) => email.clone(),
            _ => self.sub.clone(),
        }
    }

    fn claims(&self) -> Claims {
        let mut claims = Claims::new();
        claims.insert("sub".into(), self.sub.clone().into());
        if let Some(email) = &self.email {
            claims.insert("email".into(), email.clone().into());
        }
        claims.insert("groups".into(), self.groups.clone().into());
        claims
    }
}

/// The resolved `[signin]`.
#[derive(Debug)]
pub struct Signin {
    config: SigninConfig,
    /// ID tokens: the provider's key set, `iss` = issuer, `aud` = client ID.
    id_tokens: JwtPolicy,
    /// `client_id:client_secret`, form-encoded then base64 (RFC 6749 §2.3.1).
    credentials: String,
    callback_path: String,
    cookies: CookieKeys,
    flow_cookie: String,
    /// `Secure` on the cookies: always, except for a loopback `http://` callback.
    secure: bool,
}

impl Signin {
    /// Read the secret and cookie keys and set up the provider's key set (kept from
    /// `previous` when its settings are the same).
    pub fn load(c: &SigninConfig, previous: Option<&Signin>) -> anyhow::Result<Self> {
        let at = "signin";
        let redirect: Uri = c
            .redirect_url
            .parse()
            .with_context(|| format!("{at}.redirect_url: not a URL"))?;
        let secure = match (redirect.scheme_str(), redirect.host()) {
            (Some("https"), Some(_)) => true,
            (Some("http"), Some(host)) if is_loopback(host) => false,
            _ => bail!("{at}.redirect_url: https://, or http:// on a loopback host"),
        };
        let callback_path = redirect.path().to_owned();
        if !callback_path.starts_with('/') || callback_path == "/" {
            bail!("{at}.redirect_url: needs a path of its own (such as /.wsgate/callback)");
        }
        if c.client_id.is_empty() {
            bail!("{at}.client_id: must not be empty");
        }
        if !(60..=30 * 86400).contains(&c.session_lifetime_secs) {
            bail!("{at}.session_lifetime_secs: must be between 60 and 2592000");
        }
        if c.cookie_name.is_empty()
            || !c
                .cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            bail!("{at}.cookie_name: [A-Za-z0-9_-], non-empty");
        }
        let secret = std::fs::read_to_string(&c.client_secret_file)
            .with_context(|| format!("{at}.client_secret_file: reading"))?;
        let secret = secret.trim_end_matches(['\r', '\n']);
        if secret.is_empty() {
            bail!("{at}.client_secret_file: empty");
        }
        let credentials = STANDARD.encode(format!(
            "{}:{}",
            form_encode(&c.client_id),
            form_encode(secret)
        ));
        let cookies = CookieKeys::load(&c.cookie_keys_file)
            .with_context(|| format!("{at}.cookie_keys_file"))?;
        let jwt = JwtConfig {
            algorithm: None,
            algorithms: vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256],
            secret_file: None,
            public_key_file: None,
            jwks_url: None,
            issuer: Some(c.issuer.clone()),
            audience: Some(c.client_id.clone()),
            leeway_secs: c.leeway_secs,
            ca_file: c.ca_file.clone(),
            refresh_cooldown_secs: 30,
            refresh_min_secs: 60,
            refresh_max_secs: 3600,
            fetch_timeout_secs: c.fetch_timeout_secs,
        };
        let kept = previous.and_then(|p| p.key_set());
        let id_tokens = JwtPolicy::load(at, "(signin)", &jwt, kept)?;
        metrics::signins_registered();
        Ok(Self {
            flow_cookie: format!("{}_flow", c.cookie_name),
            config: c.clone(),
            id_tokens,
            credentials,
            callback_path,
            cookies,
            secure,
        })
    }

    /// The provider's key set (for the ID tokens).
    pub fn key_set(&self) -> Option<&Arc<KeySet>> {
        self.id_tokens.key_set()
    }

    pub fn protects_web(&self) -> bool {
        self.config.protect_web
    }

    pub fn cookie_name(&self) -> &str {
        &self.config.cookie_name
    }

    /// Drop the sign-in's cookies from headers bound for a backend: they are the gateway's
    /// (a backend holding the session cookie could sign in as its user on every route). The
    /// session cookie alone stays when `keep_session` (a route that checked it and sets
    /// `forward_credentials`).
    pub fn withhold_cookies(&self, headers: &mut HeaderMap, keep_session: bool) {
        remove_cookies(headers, |name| {
            name == self.flow_cookie || (!keep_session && name == self.config.cookie_name)
        });
    }

    /// A path the sign-in answers itself (start, callback, sign-out).
    pub fn is_endpoint(&self, path: &str) -> bool {
        path == SIGNIN_PATH || path == SIGNOUT_PATH || path == self.callback_path
    }

    /// Answer a request to one of [`Signin::is_endpoint`]'s paths.
    pub async fn serve<B>(&self, req: &Request<B>) -> Response<Body> {
        let path = req.uri().path();
        let query = req.uri().query();
        if path == SIGNIN_PATH {
            let back = safe_return(query_value(query, "return").as_deref());
            match self.start(&back).await {
                Ok(response) => response,
                Err(e) => {
                    warn!(event = "signin", error = %Escaped(&format!("{e:#}")), "sign-in could not start");
                    metrics::signed_in("error");
                    page(
                        StatusCode::BAD_GATEWAY,
                        "The sign-in service cannot be reached.",
                    )
                }
            }
        } else if path == SIGNOUT_PATH {
            let back = safe_return(query_value(query, "return").as_deref());
            let mut response = redirect(&back);
            self.set_cookie(&mut response, &self.config.cookie_name, "", 0, "/");
            info!(event = "signin", "signed out");
            response
        } else {
            match self.callback(req).await {
                Ok(response) => response,
                Err((status, why, detail)) => {
                    warn!(event = "signin", error = %Escaped(&detail), "sign-in failed: {why}");
                    metrics::signed_in(if status == StatusCode::BAD_GATEWAY {
                        "error"
                    } else {
                        "refused"
                    });
                    let mut response = page(status, &format!("Sign-in failed: {why}."));
                    self.set_cookie(&mut response, &self.flow_cookie, "", 0, "/");
                    response
                }
            }
        }
    }

    /// The signed-in identity of a request's session cookie, if valid and not expired.
    pub fn identity<B>(&self, req: &Request<B>) -> Option<Identity> {
        let value = self.cookie(req, &self.config.cookie_name)?;
        let plain = self.cookies.open(&self.config.cookie_name, value)?;
        let identity: Identity = serde_json::from_slice(&plain).ok()?;
        (identity.exp > now()).then_some(identity)
    }

    /// A `302` to the sign-in, to come back to this request's path and query.
    pub fn to_signin<B>(&self, req: &Request<B>) -> Response<Body> {
        let back = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        redirect(&format!(
            "{SIGNIN_PATH}?return={}",
            form_encode(&safe_return(Some(&back)))
        ))
    }

    fn cookie<'r, B>(&self, req: &'r Request<B>, name: &str) -> Option<&'r str> {
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k.trim() == name && !v.trim().is_empty()).then(|| v.trim())
            })
    }

    fn set_cookie(
        &self,
        response: &mut Response<Body>,
        name: &str,
        value: &str,
        max_age: u64,
        path: &str,
    ) {
        let secure = if self.secure { "; Secure" } else { "" };
        let cookie = format!(
            "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
}

/// A route's `[route.auth.signin]` rules.
#[derive(Debug, Clone)]
pub struct RouteSignin {
    emails: Vec<String>,
    domains: Vec<String>,
    groups: Vec<String>,
}

impl RouteSignin {
    pub fn from_config(c: &RouteSigninConfig) -> Self {
        Self {
            emails: c
                .allow_emails
                .iter()
                .map(|e| e.to_ascii_lowercase())
                .collect(),
            domains: c
                .allow_email_domains
                .iter()
                .map(|d| d.trim_start_matches('@').to_ascii_lowercase())
                .collect(),
            groups: c.allow_groups.clone(),
        }
    }

    /// Whether the rules let `who` in: no rule lets every signed-in user in; otherwise one
    /// rule must match (emails count only when the provider verified them).
    pub fn allows(&self, who: &Identity) -> bool {
        if self.emails.is_empty() && self.domains.is_empty() && self.groups.is_empty() {
            return true;
        }
        let email = who
            .email
            .as_deref()
            .filter(|_| who.email_verified)
            .map(str::to_ascii_lowercase);
        let by_email = email.as_deref().is_some_and(|e| {
            self.emails.iter().any(|a| a == e)
                || e.rsplit_once('@')
                    .is_some_and(|(_, domain)| self.domains.iter().any(|d| d == domain))
        });
        by_email || who.groups.iter().any(|g| self.groups.contains(g))
    }
}

impl Identity {
    /// The claims a route's target rules and logs see.
    pub fn as_claims(&self) -> Claims {
        self.claims()
    }
}

/// Only paths on this gateway: `/…`, never `//host` or `/\host` (which browsers read as
/// another site), nothing with control characters; anything else is `/`.
pub fn safe_return(back: Option<&str>) -> String {
    match back {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.starts_with("/\\")
                && p.len() <= 2048
                && !p.chars().any(|c| c.is_control() || c == '\\') =>
        {
            p.to_owned()
        }
        _ => "/".to_owned(),
    }
}

fn redirect(location: &str) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn page(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = text(status, format!("{message}\n"));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_same_origin_return_paths() {
        assert_eq!(safe_return(Some("/vnc.html?x=1")), "/vnc.html?x=1");
        for bad in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "evil",
            "/a\nb",
            "/a\\b",
        ] {
            assert_eq!(safe_return(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_return(None), "/");
    }

    #[test]
    fn rules_allow_by_verified_email_domain_or_group() {
        let who = |email: &str, verified: bool, groups: &[&str]| Identity {
            sub: "s".into(),
            email: Some(email.into()),
            email_verified: verified,
            name: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            exp: 0,
        };
        let any = RouteSignin::from_config(&RouteSigninConfig::default());
        assert!(any.allows(&who("a@b.c", false, &[])));
        let rules = RouteSignin::from_config(&RouteSigninConfig {
            allow_emails: vec!["Boss@Other.example".into()],
            allow_email_domains: vec!["example.com".into()],
            allow_groups: vec!["vnc".into()],
        });
        assert!(rules.allows(&who("ann@EXAMPLE.com", true, &[])));
        assert!(
            !rules.allows(&who("ann@example.com", false, &[])),
            "unverified"
        );
        assert!(rules.allows(&who("boss@other.example", true, &[])));
        assert!(!rules.allows(&who("ann@example.com.evil", true, &[])));
        assert!(rules.allows(&who("x@y.z", false, &["vnc"])));
        assert!(!rules.allows(&who("x@y.z", true, &["ops"])));
    }
}

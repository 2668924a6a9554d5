//! `[signin]` (browser sign-in at an OpenID provider) and `[route.auth.signin]` (who, once
//! signed in, may use a route) as written; `policy::signin` compiles them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[signin]`: the OpenID Connect authorization code flow with PKCE for browsers. The
/// gateway is the client; a signed-in browser holds an encrypted session cookie that routes
/// with `[route.auth.signin]` accept on the WebSocket upgrade.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SigninConfig {
    /// The provider's issuer; its discovery document names the endpoints and the key set
    /// (`https://`, or `http://` on a loopback host). Required.
    pub issuer: String,
    /// The client ID registered at the provider. Required.
    pub client_id: String,
    /// A file holding the client secret (trailing newline ignored). Required.
    pub client_secret_file: PathBuf,
    /// The gateway's callback URL, exactly as registered at the provider; the gateway
    /// answers its path. Required.
    pub redirect_url: String,
    /// Scopes asked for. Default `["openid", "email", "profile"]`; `openid` is always sent.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Keys that encrypt and authenticate the cookies: one per line, 64 hex digits
    /// (`openssl rand -hex 32`); the first seals new cookies, every line opens them, so a
    /// new first line rotates the key without signing anyone out. Required.
    pub cookie_keys_file: PathBuf,
    /// The session cookie's name. Default `wsgate_session`.
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    /// How long a sign-in lasts, in seconds. Default 28800 (8 hours).
    #[serde(default = "default_session_lifetime_secs")]
    pub session_lifetime_secs: u64,
    /// Send the browser to sign in before serving any `[web]` file. Default false.
    #[serde(default)]
    pub protect_web: bool,
    /// A PEM bundle of the CAs the provider's HTTPS certificate must chain to. Default: the
    /// built-in Mozilla roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Time for one request to the provider, in seconds. Default 10.
    #[serde(default = "default_fetch_timeout_secs")]
    pub fetch_timeout_secs: u64,
    /// Clock skew allowed on the ID token's `exp`, `nbf`, in seconds. Default 30.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// The ID token claim listing the user's groups (for `allow_groups`). Default `groups`.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

/// `[route.auth.signin]`: the route accepts the `[signin]` session cookie, for users its
/// rules allow. With no rule, any signed-in user.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSigninConfig {
    /// Verified email addresses allowed (ASCII case-insensitive). Default: none.
    #[serde(default)]
    pub allow_emails: Vec<String>,
    /// Email domains allowed (`example.com`: addresses `@example.com`, verified). Default: none.
    #[serde(default)]
    pub allow_email_domains: Vec<String>,
    /// Groups allowed: any of them in the `[signin] groups_claim` of the ID token.
    /// Default: none.
    #[serde(default)]
    pub allow_groups: Vec<String>,
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}

fn default_cookie_name() -> String {
    "wsgate_session".to_owned()
}

fn default_session_lifetime_secs() -> u64 {
    8 * 3600
}

fn default_fetch_timeout_secs() -> u64 {
    10
}

fn default_leeway_secs() -> u64 {
    30
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}

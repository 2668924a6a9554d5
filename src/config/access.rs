//! `[route.origin]`, `[route.auth]` (with `[route.auth.jwt]`) and `[listener.tls] client_auth`
//! as written in the file; `policy::access` compiles them into checks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

/// `[route.origin]`: which web pages may open sessions (cross-site WebSocket hijacking guard).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// Allowed `Origin` values, scheme included: exact (`https://app.example.com`,
    /// `http://localhost:3000`) or with `*.` before the host (`https://*.example.com`:
    /// any subdomain, not `example.com` itself). Required, non-empty.
    pub allow: Vec<String>,
    /// Let requests without an `Origin` header through (non-browser clients; browsers always
    /// send one). Default false.
    #[serde(default)]
    pub allow_missing: bool,
}

/// Where a bearer token may come from, tried in the order listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    /// `Authorization: Bearer <token>` (non-browser clients).
    Header,
    /// A `Sec-WebSocket-Protocol` entry `bearer.<token>` (browsers).
    Subprotocol,
    /// A cookie (`cookie_name`); needs `[route.origin]`, since browsers send cookies cross-site.
    Cookie,
    /// A query parameter (`query_param`): the least safe, as URLs end up in browser
    /// history and other proxies' logs. wsgate's own logs redact query values.
    Query,
}

fn default_token_sources() -> Vec<TokenSource> {
    vec![TokenSource::Header, TokenSource::Subprotocol]
}

fn default_cookie_name() -> String {
    "wsgate_token".to_owned()
}

fn default_query_param() -> String {
    // RFC 6750 §2.3's name.
    "access_token".to_owned()
}

/// `[route.auth]`: what a client must present. Every configured kind is required: a
/// client certificate (when `client_cert_required` or `client_cert_names`) and a token
/// (when `bearer_sha256` or `[route.auth.jwt]`), where a token passes if a static digest
/// or the JWT check accepts it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Static bearer tokens, as SHA-256 digests in hex (`printf %s "$TOKEN" | sha256sum`).
    /// Default: none.
    #[serde(default)]
    pub bearer_sha256: Secret<Vec<String>>,
    /// JWT bearer tokens. Default: none.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Where to look for the token, in order. Default `["header", "subprotocol"]`.
    #[serde(default = "default_token_sources")]
    pub token_sources: Vec<TokenSource>,
    /// The cookie for the `cookie` source. Default `wsgate_token`.
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    /// The query parameter for the `query` source. Default `access_token`.
    #[serde(default = "default_query_param")]
    pub query_param: String,
    /// Require a client certificate verified against the listener's `client_ca_file`.
    /// Default false.
    #[serde(default)]
    pub client_cert_required: bool,
    /// Require a client certificate with one of these names as its subject CN, a DNS SAN
    /// or an email SAN (ASCII case-insensitive). Implies `client_cert_required`. Default: none.
    #[serde(default)]
    pub client_cert_names: Vec<String>,
    /// Accept the `[signin]` session cookie of a signed-in browser, for the users these
    /// rules allow. Default: none.
    #[serde(default)]
    pub signin: Option<super::RouteSigninConfig>,
}

/// The signature algorithms a route can accept. The token's `alg` header must be one the
/// route lists and fit the key it names, so a token cannot pick its own algorithm: no `none`,
/// and no RSA or EC public key ever used as an HMAC secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

/// `[route.auth.jwt]` as written. The keys come from exactly one place: `secret_file`
/// (HS256), `public_key_file` (RS256 / ES256), `jwks_url`, or, with none of those, the
/// `issuer`'s OpenID Connect discovery document (its `jwks_uri`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The only algorithm accepted: `HS256`, `RS256` or `ES256`. Required with a key file;
    /// with a key set, a shorthand for a one-entry `algorithms`.
    #[serde(default)]
    pub algorithm: Option<JwtAlgorithm>,
    /// Key sets (`jwks_url`, discovery): the algorithms accepted, `RS256` and/or `ES256`.
    /// Default `["RS256"]` (what OpenID Connect providers sign with unless told otherwise).
    #[serde(default)]
    pub algorithms: Vec<JwtAlgorithm>,
    /// HS256: a file holding the shared secret (at least 32 bytes; a trailing newline is
    /// ignored). Required for HS256, refused for the others.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// RS256 / ES256: the issuer's public key, a `PUBLIC KEY` PEM block (as
    /// `openssl pkey -pubout` writes it; RSA at least 2048 bits, EC on P-256).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// A JSON Web Key Set URL (`https://`, or `http://` on a loopback host): the keys, by
    /// `kid`, fetched at start and refreshed. Default: none.
    #[serde(default, serialize_with = "super::secret::url_with_query_redacted")]
    pub jwks_url: Option<String>,
    /// When set, the token must carry this `iss`. With no key file and no `jwks_url`, also
    /// where the keys are found: `{issuer}/.well-known/openid-configuration` names the
    /// `jwks_uri`. Default: not checked.
    #[serde(default, serialize_with = "super::secret::url_with_query_redacted")]
    pub issuer: Option<String>,
    /// When set, the token must carry this `aud`. Default: tokens that carry an `aud`
    /// at all are refused (RFC 7519 §4.1.3), tokens without one pass. Required with a key set.
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default 30.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Key sets: a PEM bundle of the CAs the provider's HTTPS certificate must chain to.
    /// Default: the built-in Mozilla roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Key sets: after a fetch, the shortest wait before a token with an unknown `kid` may
    /// cause another one, in seconds (OpenID Connect Core §10.1.1). Default 30.
    #[serde(default = "default_refresh_cooldown_secs")]
    pub refresh_cooldown_secs: u64,
    /// Key sets: the provider's `Cache-Control: max-age` is raised to at least this many
    /// seconds before the next scheduled fetch. Default 60.
    #[serde(default = "default_refresh_min_secs")]
    pub refresh_min_secs: u64,
    /// Key sets: and lowered to at most this many; also the interval when the provider sends
    /// no `max-age`. Default 3600.
    #[serde(default = "default_refresh_max_secs")]
    pub refresh_max_secs: u64,
    /// Key sets: time for one fetch (connect, TLS, answer), in seconds. Default 10.
    #[serde(default = "default_fetch_timeout_secs")]
    pub fetch_timeout_secs: u64,
}

fn default_leeway_secs() -> u64 {
    30
}

fn default_refresh_cooldown_secs() -> u64 {
    30
}

fn default_refresh_min_secs() -> u64 {
    60
}

fn default_refresh_max_secs() -> u64 {
    3600
}

fn default_fetch_timeout_secs() -> u64 {
    10
}

impl JwtConfig {
    /// Where the keys come from is a key set (fetched over HTTP), not a file.
    pub fn uses_key_set(&self) -> bool {
        self.secret_file.is_none()
            && self.public_key_file.is_none()
            && (self.jwks_url.is_some() || self.issuer.is_some())
    }
}

/// `[listener.tls] client_auth`: whether a listener with `client_ca_file` insists on a
/// client certificate in the handshake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No valid certificate, no connection (the default with `client_ca_file`).
    #[default]
    Required,
    /// A certificate is verified when sent; routes decide whether they need one.
    Optional,
}

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
}

/// The signature algorithms a route can require. One per route: the token's `alg` header
/// must name it, so a token cannot pick its own algorithm (no `none`, no HS/RS confusion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

/// `[route.auth.jwt]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256`, `RS256` or `ES256`. Required.
    pub algorithm: JwtAlgorithm,
    /// HS256: a file holding the shared secret (at least 32 bytes; a trailing newline is
    /// ignored). Required for HS256, refused for the others.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// RS256 / ES256: the issuer's public key, a `PUBLIC KEY` PEM block (as
    /// `openssl pkey -pubout` writes it; RSA at least 2048 bits, EC on P-256).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// When set, the token must carry this `iss`. Default: not checked.
    #[serde(default)]
    pub issuer: Option<String>,
    /// When set, the token must carry this `aud`. Default: tokens that carry an `aud`
    /// at all are refused (RFC 7519 §4.1.3), tokens without one pass.
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default 30.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
}

fn default_leeway_secs() -> u64 {
    30
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

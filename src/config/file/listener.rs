//! Where the gateway listens: the public listeners with their TLS and certificates, the
//! admin listener, and ACME certificates for the TLS listeners.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::default_true;
use crate::config::access::ClientAuth;

/// `[acme]`: certificates for `names` obtained from an ACME CA (Let's Encrypt, a private
/// CA) with the TLS-ALPN-01 challenge on the TLS listeners (or HTTP-01 on a plain one),
/// kept in `state_dir`, renewed at about two-thirds of their lifetime. Served on every TLS
/// listener, for these exact names.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL (`https://acme-v02.api.letsencrypt.org/directory`).
    pub directory_url: String,
    /// Host names to obtain certificates for, one certificate each; no wildcards
    /// (TLS-ALPN-01 cannot prove them).
    pub names: Vec<String>,
    /// Folder for the account key and the certificates (created 0700, files 0600); used by
    /// this gateway alone. Keep it across restarts and back it up.
    pub state_dir: PathBuf,
    /// Contact URIs for the account (`"mailto:ops@example.com"`). Default none.
    #[serde(default)]
    pub contact: Vec<String>,
    /// PEM CA certificate that the ACME server's HTTPS certificate chains to (a private or
    /// test CA). Default: the built-in Mozilla roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The first wait after a failed order, in seconds; it doubles after each failure up to
    /// a day, and the current certificate keeps serving meanwhile. Default 60.
    #[serde(default = "default_acme_retry_secs")]
    pub retry_secs: f64,
    /// How the CA checks that this gateway answers for a name: `"tls-alpn-01"` (the
    /// default: on the TLS listeners, which the CA reaches on port 443) or `"http-01"` (a
    /// plain listener answers `/.well-known/acme-challenge/`; the CA reaches it on port 80).
    #[serde(default)]
    pub challenge: AcmeChallenge,
}

/// The ACME challenge type `[acme]` answers (RFC 8737 TLS-ALPN-01 or RFC 8555 HTTP-01).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    #[serde(rename = "http-01")]
    Http01,
}

fn default_acme_retry_secs() -> f64 {
    60.0
}

/// A public listener: where clients connect, with optional TLS (`wss://`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// TLS listeners: offer HTTP/2 (ALPN `h2` before `http/1.1`), so browsers may carry
    /// WebSockets over it (RFC 8441). Default true.
    #[serde(default = "default_true")]
    pub http2: bool,
    /// Plain listeners: also accept HTTP/2 with prior knowledge (h2c), for a load balancer
    /// that speaks it; HTTP/1.1 keeps working. Default false.
    #[serde(default)]
    pub h2c: bool,
    /// Serve the browser console at `/` (plain GETs only; upgrades still go to the routes).
    /// Default false; the embedded default turns it on.
    #[serde(default)]
    pub console: bool,
    /// Behind an L4 load balancer: connections from `trusted_proxies` must open with a
    /// PROXY protocol v1 or v2 header (read before TLS, under `timeouts.header_read_secs`),
    /// whose source address becomes the client's. A header from any other source is
    /// refused; other sources without one are served as direct clients. Default false.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Behind an HTTP load balancer: the one header it writes the client's address in
    /// (`"x-forwarded-for"`, `"forwarded"` or `"x-real-ip"`). On requests from
    /// `trusted_proxies` the client is the right-most address of that header that is not
    /// itself a trusted proxy; every other header is ignored, since balancers pass on what
    /// clients send in the headers they do not write. Default: none (the TCP peer).
    #[serde(default)]
    pub forwarded_header: Option<ForwardedHeader>,
    /// The load balancers' addresses, as CIDRs or plain IPs (`"10.0.0.0/8"`, `"::1"`).
    /// Required (non-empty) with `proxy_protocol` or `forwarded_header`. Default none.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

impl ListenerConfig {
    /// A plain listener on `address` with every optional key at its default.
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            tls: None,
            http2: true,
            h2c: false,
            console: false,
            proxy_protocol: false,
            forwarded_header: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// PEM files: a certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
/// This one is the listener's default certificate: served to clients that ask for no name
/// or a name no entry of `certificates` covers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// PEM CA bundle that client certificates must chain to (mTLS). Default: none, and no
    /// client certificate is asked for.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (default) or `optional`.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
    /// `[[listener.tls.certificates]]`: more certificates on this listener, each served to
    /// clients whose SNI names one of its names. Default none.
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    /// Clients that send no SNI: `"default"` (the default certificate) or `"refuse"` (the
    /// handshake fails). Default `"default"`.
    #[serde(default)]
    pub without_sni: WithoutSni,
    /// `421` for every request whose host is not the connection's SNI name. Default: on when
    /// a route requires client certificates, else off (a request is then misdirected only
    /// when its host would select another certificate than the SNI did).
    #[serde(default)]
    pub strict_sni_host: Option<bool>,
}

impl TlsConfig {
    /// A listener's default certificate and key, every other key at its default.
    pub fn new(cert_file: PathBuf, key_file: PathBuf) -> Self {
        Self {
            cert_file,
            key_file,
            client_ca_file: None,
            client_auth: None,
            certificates: Vec::new(),
            without_sni: WithoutSni::default(),
            strict_sni_host: None,
        }
    }
}

/// One more certificate of a TLS listener, chosen by the client's SNI.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The names (`"a.example.com"`, `"*.example.com"`) this certificate is served for.
    /// Default: the DNS names of the certificate's subjectAltName extension.
    #[serde(default)]
    pub names: Vec<String>,
}

/// `[listener.tls] without_sni`: what a client that names no host in its handshake gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WithoutSni {
    /// The listener's default certificate (`cert_file`).
    #[default]
    Default,
    /// No certificate: the handshake fails.
    Refuse,
}

/// The admin listener: `/metrics`, `/healthz`, `/readyz`, the status page and the session
/// API. Keep it off public interfaces.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// SHA-256 (hex, `printf %s "$TOKEN" | sha256sum`) of the bearer token the status page
    /// and `/api/` require. Default: none (the listener is open; keep it on loopback).
    #[serde(default)]
    pub bearer_sha256: Option<String>,
    /// Names (`admin.example.com`, `wsgate-admin:9090`) requests may carry in `Host`
    /// besides the listener's own address (its IP literal, and `localhost` on loopback);
    /// other `Host`s get `421` (DNS rebinding guard). Default: none.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

/// The header a trusted HTTP load balancer names the client in (`forwarded_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For`, a list each proxy appends to (AWS ALB, nginx
    /// `$proxy_add_x_forwarded_for`, HAProxy `option forwardfor`).
    XForwardedFor,
    /// RFC 7239 `Forwarded`, its `for=` parameters (Envoy, HAProxy `option forwarded`).
    Forwarded,
    /// `X-Real-IP`, one address the balancer sets (nginx `proxy_set_header X-Real-IP`).
    XRealIp,
}

impl ForwardedHeader {
    /// The header's name, lower-case.
    pub fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
            Self::XRealIp => "x-real-ip",
        }
    }
}

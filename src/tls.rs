//! Certificates and keys: PEM files → rustls configs for `wss://` listeners (certificates
//! chosen by SNI, client certificate verification) and for `wss://` backends.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{ClientAuth, TlsConfig, WithoutSni};

/// Make `ring` the process's crypto provider. Call once at start: with more than one
/// provider compiled in, rustls cannot pick a default and `builder()` would panic.
pub fn install_crypto_provider() {
    // An Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Load a certificate chain and key, the single place PEM is read
/// (through rustls-pki-types' `PemObject`, the maintained successor of rustls-pemfile).
pub fn load_pem(
    cert_file: &Path,
    key_file: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .with_context(|| format!("reading certificate file {}", cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate PEM {}", cert_file.display()))?;
    if certs.is_empty() {
        bail!("{}: no CERTIFICATE block found", cert_file.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("reading private key {}", key_file.display()))?;
    Ok((certs, key))
}

/// A server config for one listener: TLS 1.2 and 1.3, ALPN `h2` (when `http2`) then
/// `http/1.1`; the certificate chosen by SNI among `cert_file` (the default) and
/// `certificates`; with `client_ca_file`, client certificates verified against it (mTLS).
pub fn server_config(tls: &TlsConfig, http2: bool) -> anyhow::Result<Arc<ServerConfig>> {
    Ok(listener_tls(tls, http2, None)?.0)
}

/// [`server_config`], and the listener's certificates by name, which requests' hosts are
/// checked against (`421`).
/// With `acme`, its certificates are served too, and its TLS-ALPN-01 challenges answered.
pub fn listener_tls(
    tls: &TlsConfig,
    http2: bool,
    acme: Option<Arc<AcmeCertificates>>,
) -> anyhow::Result<(Arc<ServerConfig>, Arc<Certificates>)> {
    let mut certificates = Certificates::load(tls)?;
    let answers_challenges = acme.is_some();
    certificates.acme = acme;
    let certificates = Arc::new(certificates);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(client_roots(ca)?, provider());
            let verifier = match tls.client_auth.unwrap_or_default() {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .with_context(|| format!("client CA file {}", ca.display()))?,
            )
        }
    };
    let mut config = builder.with_cert_resolver(certificates.clone());
    // The server's order wins: a client offering both gets h2 (RFC 7301 §3.2).
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    if answers_challenges {
        // Last: only a validator offers it, and offers nothing else (RFC 8737 §3).
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    Ok((Arc::new(config), certificates))
}

/// A TLS listener's certificates, chosen by the name a client asks for (SNI): an exact name,
/// then a wildcard one label up (`*.example.com` for `a.example.com`), then the default.
#[derive(Debug)]
pub struct Certificates {
    /// Lower-case name → its certificate.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// The part after `*.` → its certificate.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// `cert_file`: for clients without SNI (unless refused) and names nothing else covers.
    default: Arc<CertifiedKey>,
    refuse_without_sni: bool,
    /// Every certificate's names with its expiry, for the metrics.
    expiries: Vec<(String, i64)>,
    /// `[acme]`'s certificates (after exact names from files, before wildcards) and its
    /// challenge answers.
    acme: Option<Arc<AcmeCertificates>>,
}

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Certificates an ACME client obtained, by name, and the TLS-ALPN-01 challenge
/// certificates it is being validated with; shared by every TLS listener and every
/// snapshot, and changed without a reload.
#[derive(Debug, Default)]
pub struct AcmeCertificates {
    issued: std::sync::RwLock<HashMap<String, Arc<CertifiedKey>>>,
    challenges: std::sync::RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01: token → key authorization, answered at `/.well-known/acme-challenge/TOKEN`.
    http_tokens: std::sync::RwLock<HashMap<String, String>>,
}

impl AcmeCertificates {
    /// Serve `key` for `name` from now on.
    pub fn install(&self, name: &str, key: Arc<CertifiedKey>) {
        if let Ok(mut issued) = self.issued.write() {
            issued.insert(name.to_owned(), key);
        }
    }

    /// Answer TLS-ALPN-01 validation of `name` with `key` (`None`: stop answering).
    pub fn set_challenge(&self, name: &str, key: Option<Arc<CertifiedKey>>) {
        if let Ok(mut challenges) = self.challenges.write() {
            match key {
                Some(key) => challenges.insert(name.to_owned(), key),
                None => challenges.remove(name),
            };
        }
    }

    /// Stop serving the issued certificates of names not in `names` (`[acme] names` after a
    /// reload).
    pub fn retain_names(&self, names: &[String]) {
        let keep: Vec<String> = names
            .iter()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        if let Ok(mut issued) = self.issued.write() {
            issued.retain(|name, _| keep.contains(name));
        }
    }

    /// Answer HTTP-01 validation for `token` with `key_authorization` (`None`: stop).
    pub fn set_http_token(&self, token: &str, key_authorization: Option<String>) {
        if let Ok(mut tokens) = self.http_tokens.write() {
            match key_authorization {
                Some(answer) => tokens.insert(token.to_owned(), answer),
                None => tokens.remove(token),
            };
        }
    }

    /// The key authorization for an HTTP-01 `token` being validated now.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        self.http_tokens.read().ok()?.get(token).cloned()
    }

    fn issued(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.issued.read().ok()?.get(name).cloned()
    }

    fn challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.challenges.read().ok()?.get(name).cloned()
    }
}

impl Certificates {
    /// Read `cert_file` and every `certificates` entry, checking each key against its
    /// certificate. An entry's names come from its `names`, else from its subjectAltName.
    /// The first entry to claim a name keeps it.
    pub fn load(tls: &TlsConfig) -> anyhow::Result<Self> {
        let default = certified_key(&tls.cert_file, &tls.key_file)?;
        let mut expiries = Vec::new();
        for name in certificate_names(&default.cert[0]).unwrap_or_default() {
            expiries.push((name, not_after(&default.cert[0]).unwrap_or(0)));
        }
        let mut out = Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: Arc::new(default),
            refuse_without_sni: tls.without_sni == WithoutSni::Refuse,
            expiries,
            acme: None,
        };
        for (n, c) in tls.certificates.iter().enumerate() {
            let key = Arc::new(
                certified_key(&c.cert_file, &c.key_file)
                    .with_context(|| format!("certificates[{n}]"))?,
            );
            let names = if c.names.is_empty() {
                certificate_names(&key.cert[0]).with_context(|| {
                    format!(
                        "certificates[{n}]: reading the names of {}",
                        c.cert_file.display()
                    )
                })?
            } else {
                c.names.iter().map(|n| n.to_ascii_lowercase()).collect()
            };
            if names.is_empty() {
                bail!(
                    "certificates[{n}]: {} names no DNS name (subjectAltName); list them in names",
                    c.cert_file.display()
                );
            }
            let expiry = not_after(&key.cert[0]).unwrap_or(0);
            for name in names {
                let name = name.trim_end_matches('.').to_owned();
                out.expiries.push((name.clone(), expiry));
                match name.strip_prefix("*.") {
                    Some(parent) => out.wildcard.entry(parent.to_owned()),
                    None => out.exact.entry(name),
                }
                .or_insert_with(|| key.clone());
            }
        }
        Ok(out)
    }

    /// The certificate a client asking for `name` gets (`None`: refused, no SNI): a file's
    /// exact name, an ACME certificate, a file's wildcard, the default.
    pub fn for_name(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = name else {
            return (!self.refuse_without_sni).then(|| self.default.clone());
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.exact
            .get(&name)
            .cloned()
            .or_else(|| self.acme.as_ref()?.issued(&name))
            .or_else(|| self.wildcard.get(name.split_once('.')?.1).cloned())
            .or_else(|| Some(self.default.clone()))
    }

    /// Each name a certificate is served for, with that certificate's notAfter (Unix seconds).
    pub fn expiries(&self) -> &[(String, i64)] {
        &self.expiries
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validating = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        if let (true, Some(acme)) = (validating, &self.acme) {
            // Only the challenge certificate, or no handshake (RFC 8737 §3).
            return acme.challenge(&hello.server_name()?.to_ascii_lowercase());
        }
        self.for_name(hello.server_name())
    }
}

/// Whether a request's host may be served on a connection: a TLS listener's rule, carried
/// by each of its connections with the name the client's handshake asked for.
#[derive(Debug)]
pub struct HostCheck {
    pub certificates: Arc<Certificates>,
    /// `strict_sni_host`: the host must be the SNI name itself.
    pub strict: bool,
}

impl HostCheck {
    /// `Err` with the reason when a request for `host` (compared form) must not be served on
    /// a connection whose handshake asked for `sni`: that name would have got another
    /// certificate (or, when strict, the names differ). Requests without a host pass.
    pub fn check(&self, sni: Option<&str>, host: Option<&str>) -> Result<(), &'static str> {
        let Some(host) = host else { return Ok(()) };
        // The same name: the same certificate, or its renewal.
        if sni.is_some_and(|s| s.trim_end_matches('.').eq_ignore_ascii_case(host)) {
            return Ok(());
        }
        if self.strict && sni.is_some_and(|s| !s.trim_end_matches('.').eq_ignore_ascii_case(host)) {
            return Err(
                "the request's host is not the name this TLS connection was opened for (SNI); \
                 open a connection for that host",
            );
        }
        let by_sni = self.certificates.for_name(sni);
        let by_host = self.certificates.for_name(Some(host));
        match (by_sni, by_host) {
            (Some(a), Some(b)) if Arc::ptr_eq(&a, &b) => Ok(()),
            _ => Err(
                "the request's host is served with another certificate than this TLS \
                 connection's; open a connection for that host",
            ),
        }
    }
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key(cert_file: &Path, key_file: &Path) -> anyhow::Result<CertifiedKey> {
    let (certs, key) = load_pem(cert_file, key_file)?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .with_context(|| format!("loading private key {}", key_file.display()))?;
    let key = CertifiedKey::new(certs, signing_key);
    key.keys_match().with_context(|| {
        format!(
            "certificate {} does not match key {}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    Ok(key)
}

/// The DNS names of a certificate's subjectAltName, lower case.
pub fn certificate_names(cert: &CertificateDer<'_>) -> anyhow::Result<Vec<String>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| anyhow::anyhow!("parsing the certificate: {e}"))?;
    let names = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => bail!("reading the subjectAltName: {e}"),
    };
    Ok(names)
}

/// A certificate's notAfter, in Unix seconds.
pub fn not_after(cert: &CertificateDer<'_>) -> anyhow::Result<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| anyhow::anyhow!("parsing the certificate: {e}"))?;
    Ok(parsed.validity().not_after.timestamp())
}

/// The CAs that client certificates must chain to (`[listener.tls] client_ca_file`).
pub fn client_roots(ca_file: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file)
        .with_context(|| format!("reading CA file {}", ca_file.display()))?
    {
        let cert = cert.with_context(|| format!("parsing CA PEM {}", ca_file.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("adding a CA from {}", ca_file.display()))?;
    }
    if roots.is_empty() {
        bail!("{}: no CERTIFICATE block found", ca_file.display());
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config for `wss://` backends: the built-in Mozilla roots, or the roots in
/// `ca_file`; `insecure` accepts any certificate (development only).
pub fn client_config(ca_file: Option<&Path>, insecure: bool) -> anyhow::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("reading CA file {}", path.display()))?
                {
                    let cert =
                        cert.with_context(|| format!("parsing CA PEM {}", path.display()))?;
                    roots
                        .add(cert)
                        .with_context(|| format!("adding a CA from {}", path.display()))?;
                }
                if roots.is_empty() {
                    bail!("{}: no CERTIFICATE block found", path.display());
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `insecure_skip_verify`: any certificate passes, but handshake signatures are still checked.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

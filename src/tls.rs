//! TLS for `wss://` listeners: PEM files → rustls config, and the handshake under a timeout.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::TlsConfig;

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

/// A server config for one listener: TLS 1.2 and 1.3, ALPN `http/1.1`.
pub fn server_config(tls: &TlsConfig) -> anyhow::Result<Arc<ServerConfig>> {
    let (certs, key) = load_pem(&tls.cert_file, &tls.key_file)?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("choosing TLS versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .with_context(|| {
                format!(
                    "certificate {} does not match key {}",
                    tls.cert_file.display(),
                    tls.key_file.display()
                )
            })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

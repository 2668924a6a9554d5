//! A test CA and certificates generated per test (never stored), TLS listener configs and
//! clients that trust only the test CA.

/// A self-signed test CA for signing test certificates (generated, never stored).
pub fn test_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A `localhost` / `127.0.0.1` server certificate signed by `ca`: (certificate PEM, key PEM).
pub fn leaf_signed_by(ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) -> (String, String) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&key, ca).unwrap();
    (leaf.pem(), key.serialize_pem())
}

/// A test CA and a `localhost` / `127.0.0.1` leaf it signed, as PEM files in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    /// The CA as PEM, for configs that name a trust file (`tls_ca_file`).
    pub ca_file: std::path::PathBuf,
    pub ca: rustls::pki_types::CertificateDer<'static>,
}

pub fn pki() -> Pki {
    let ca = test_ca("wsgate test CA");

    let (leaf_pem, key_pem) = leaf_signed_by(&ca);

    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("leaf.pem");
    let key_file = dir.path().join("leaf-key.pem");
    std::fs::write(&cert_file, leaf_pem).unwrap();
    std::fs::write(&key_file, key_pem).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    Pki {
        dir,
        cert_file,
        key_file,
        ca_file,
        ca: ca.der().clone(),
    }
}

/// A config with one `wss` listener and the admin listener on free ports.
pub fn tls_config(cert_file: &std::path::Path, key_file: &std::path::Path, extra: &str) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[listener.tls]\ncert_file = {:?}\nkey_file = {:?}\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n{extra}\n",
        cert_file.display().to_string(),
        key_file.display().to_string(),
    )
}

/// A rustls client that trusts only the test CA and offers `alpn`.
pub fn client_config(
    ca: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::sync::Arc<rustls::ClientConfig> {
    wsgate::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    std::sync::Arc::new(config)
}

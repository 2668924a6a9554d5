//! JWT bearer tokens: keys read once at load (a secret or a public key file) or from the
//! provider's key set (`policy::jwks`), claims checked by `jsonwebtoken` (`exp` required;
//! `nbf`, `iss`, `aud`), signatures verified by `ring`.
//!
//! `jsonwebtoken` is built without a crypto feature; [`RING_PROVIDER`] plugs `ring` into it,
//! so the process has one crypto library (the one rustls uses) and no RSA stack of its own.

use std::path::Path;
use std::sync::{Arc, Once};

use anyhow::{bail, Context};
use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{
    RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use tracing::debug;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::jwks::KeySet;
use crate::config::{JwtAlgorithm, JwtConfig};
use crate::error::RejectError;
use crate::logsafe::Escaped;

/// A verified token's claims, as JSON.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// The shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key as long as the hash.
pub const MIN_SECRET_BYTES: usize = 32;

/// Where a route's verification keys come from.
#[derive(Debug, Clone)]
enum Keys {
    /// `secret_file` or `public_key_file`: one key, for the route's one algorithm.
    Fixed(DecodingKey),
    /// `jwks_url` or the issuer's discovery: keys by `kid`, refreshed.
    Set(Arc<KeySet>),
}

/// A route's resolved JWT check.
#[derive(Debug, Clone)]
pub struct JwtPolicy {
    keys: Keys,
    /// One validation per accepted algorithm: `jsonwebtoken` wants every algorithm of a
    /// validation to fit the key, and the token's `alg` picks among these (never `none`).
    validations: Vec<(Algorithm, jsonwebtoken::Validation)>,
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

impl JwtPolicy {
    /// Read the key file or set up the key set (not fetched yet: see
    /// [`JwtPolicy::key_set`]) and build the validation; errors name `at`
    /// (`route[0].auth.jwt`). A `previous` key set with the same settings is kept, keys and all.
    pub fn load(
        at: &str,
        route: &str,
        config: &JwtConfig,
        previous: Option<&Arc<KeySet>>,
    ) -> anyhow::Result<Self> {
        let mut accepted: Vec<JwtAlgorithm> = config.algorithm.into_iter().collect();
        for a in &config.algorithms {
            if !accepted.contains(a) {
                accepted.push(*a);
            }
        }
        let keys = if config.uses_key_set() {
            if accepted.is_empty() {
                accepted.push(JwtAlgorithm::RS256);
            }
            if accepted.contains(&JwtAlgorithm::HS256) {
                bail!(
                    "{at}: HS256 takes a secret_file; keys from a key set are public keys \
                     (RS256, ES256), never HMAC secrets"
                );
            }
            Keys::Set(match previous.filter(|p| p.same_config(route, config)) {
                Some(kept) => kept.clone(),
                None => Arc::new(KeySet::new(at, route, config)?),
            })
        } else {
            if config.jwks_url.is_some() {
                bail!("{at}: jwks_url and a key file are exclusive");
            }
            let &[one] = accepted.as_slice() else {
                bail!("{at}: a key file takes exactly one algorithm (set `algorithm`)");
            };
            Keys::Fixed(match (one, &config.secret_file, &config.public_key_file) {
                (JwtAlgorithm::HS256, Some(file), None) => {
                    load_secret(file).with_context(|| format!("{at}.secret_file"))?
                }
                (JwtAlgorithm::HS256, _, _) => {
                    bail!("{at}: HS256 takes secret_file (and no public_key_file)")
                }
                (alg, None, Some(file)) => {
                    load_public_key(alg, file).with_context(|| format!("{at}.public_key_file"))?
                }
                (alg, _, _) => bail!("{at}: {alg:?} takes public_key_file (and no secret_file)"),
            })
        };
        if config.leeway_secs > 3600 {
            bail!(
                "{at}.leeway_secs: must be at most 3600, got {}",
                config.leeway_secs
            );
        }
        let validations = accepted
            .iter()
            .map(|a| {
                let alg = algorithm(*a);
                let mut validation = jsonwebtoken::Validation::new(alg);
                validation.leeway = config.leeway_secs;
                validation.validate_exp = true;
                validation.validate_nbf = true;
                let mut required = vec!["exp"];
                // jsonwebtoken checks `iss` and `aud` only when the token has them: make them
                // required.
                if let Some(issuer) = &config.issuer {
                    validation.set_issuer(&[issuer]);
                    required.push("iss");
                }
                if let Some(audience) = &config.audience {
                    validation.set_audience(&[audience]);
                    required.push("aud");
                }
                validation.set_required_spec_claims(&required);
                (alg, validation)
            })
            .collect();
        Ok(Self { keys, validations })
    }

    /// The route's key set, when its keys come from one.
    pub fn key_set(&self) -> Option<&Arc<KeySet>> {
        match &self.keys {
            Keys::Set(set) => Some(set),
            Keys::Fixed(_) => None,
        }
    }

    /// Verify a token's signature and claims. Expired and not-yet-valid tokens say so;
    /// every other failure is "invalid token" (the log has the detail, at debug). With a key
    /// set, a `kid` it does not have causes at most one fetch (rate-limited by the set).
    pub async fn verify(&self, token: &str) -> Result<Claims, RejectError> {
        install_provider();
        let header = jsonwebtoken::decode_header(token).map_err(|e| refused(&e))?;
        let Some((alg, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg)
        else {
            debug!(alg = ?header.alg, "JWT refused: algorithm not accepted on this route");
            return Err(RejectError::Unauthorized("invalid token"));
        };
        let result = match &self.keys {
            Keys::Fixed(key) => jsonwebtoken::decode::<Claims>(token, key, validation),
            Keys::Set(set) => {
                let Some(key) = set.key_for(*alg, header.kid.as_deref()).await else {
                    debug!(
                        kid = ?header.kid.as_deref().map(Escaped),
                        "JWT refused: no key in the key set for its kid and alg"
                    );
                    return Err(RejectError::Unauthorized("invalid token"));
                };
                jsonwebtoken::decode::<Claims>(token, &key.key, validation)
            }
        };
        result.map(|data| data.claims).map_err(|e| refused(&e))
    }
}

/// The answer to a refused token; the error can quote the token's claims: client text.
fn refused(e: &jsonwebtoken::errors::Error) -> RejectError {
    debug!(error = %Escaped(&e.to_string()), "JWT refused");
    match e.kind() {
        ErrorKind::ExpiredSignature => RejectError::Unauthorized("token expired"),
        ErrorKind::ImmatureSignature => RejectError::Unauthorized("token not yet valid"),
        _ => RejectError::Unauthorized("invalid token"),
    }
}

fn load_secret(file: &Path) -> anyhow::Result<DecodingKey> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b'\n' | b'\r'))
        .map_or(0, |i| i + 1);
    let secret = &bytes[..end];
    if secret.len() < MIN_SECRET_BYTES {
        bail!(
            "{}: an HS256 secret needs at least {MIN_SECRET_BYTES} bytes, got {}",
            file.display(),
            secret.len()
        );
    }
    Ok(DecodingKey::from_secret(secret))
}

/// A `PUBLIC KEY` PEM of the algorithm's key type, checked here so a wrong file is a
/// config error rather than every token failing at run time.
fn load_public_key(alg: JwtAlgorithm, file: &Path) -> anyhow::Result<DecodingKey> {
    let pem = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(&pem).with_context(|| {
        format!(
            "{}: expected a PUBLIC KEY PEM block (openssl pkey -pubout)",
            file.display()
        )
    })?;
    let (_, info) = SubjectPublicKeyInfo::from_der(spki.as_ref())
        .map_err(|e| anyhow::anyhow!("{}: bad public key: {e}", file.display()))?;
    let parsed = info
        .parsed()
        .map_err(|e| anyhow::anyhow!("{}: bad public key: {e}", file.display()))?;
    match (alg, &parsed) {
        (JwtAlgorithm::RS256, PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => {
            DecodingKey::from_rsa_pem(&pem).with_context(|| format!("{}", file.display()))
        }
        (JwtAlgorithm::RS256, PublicKey::RSA(rsa)) => bail!(
            "{}: RSA key of {} bits; RS256 needs at least 2048",
            file.display(),
            rsa.key_size()
        ),
        (JwtAlgorithm::ES256, PublicKey::EC(_)) => {
            let curve = info
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            if curve.as_ref() != Some(&x509_parser::oid_registry::OID_EC_P256) {
                bail!("{}: ES256 needs a P-256 key", file.display());
            }
            DecodingKey::from_ec_pem(&pem).with_context(|| format!("{}", file.display()))
        }
        _ => bail!("{}: not a {alg:?} public key", file.display()),
    }
}

/// Make [`RING_PROVIDER`] jsonwebtoken's provider, once. If the embedding program
/// installed one first, that one stays.
pub fn install_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = RING_PROVIDER.install_default();
    });
}

/// jsonwebtoken's crypto on `ring`: verification of HS256, RS256 and ES256 only.
pub static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: ring_verifier,
    jwk_utils: JwkUtils::new_unimplemented(),
};

fn no_signer(_: &Algorithm, _: &EncodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    Err(ErrorKind::Provider("wsgate verifies tokens; it does not sign them".into()).into())
}

enum RingKey {
    Hmac(ring::hmac::Key),
    Public(UnparsedPublicKey<Vec<u8>>),
    /// An RSA key from a JWK's modulus and exponent.
    RsaComponents(RsaPublicKeyComponents<Vec<u8>>),
}

struct RingVerifier {
    algorithm: Algorithm,
    key: RingKey,
}

fn ring_verifier(
    algorithm: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    let der = match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => bytes.clone(),
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            if (*algorithm, key.family()) != (Algorithm::RS256, AlgorithmFamily::Rsa) {
                return Err(ErrorKind::InvalidAlgorithm.into());
            }
            return Ok(Box::new(RingVerifier {
                algorithm: *algorithm,
                key: RingKey::RsaComponents(RsaPublicKeyComponents {
                    n: n.clone(),
                    e: e.clone(),
                }),
            }));
        }
    };
    let key = match (algorithm, key.family()) {
        (Algorithm::HS256, AlgorithmFamily::Hmac) => {
            RingKey::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &der))
        }
        // PKCS#1 RSAPublicKey, as jsonwebtoken extracts it from the PEM.
        (Algorithm::RS256, AlgorithmFamily::Rsa) => {
            RingKey::Public(UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der))
        }
        // The uncompressed point; JWS ES256 signatures are fixed-width r || s.
        (Algorithm::ES256, AlgorithmFamily::Ec) => {
            RingKey::Public(UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, der))
        }
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        key,
    }))
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        match &self.key {
            // ring compares HMAC tags in constant time.
            RingKey::Hmac(key) => ring::hmac::verify(key, message, signature),
            RingKey::Public(key) => key.verify(message, signature),
            RingKey::RsaComponents(key) => {
                key.verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
            }
        }
        .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn hs256(claims: &str, secret: &[u8]) -> String {
        let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims);
        let input = format!("{head}.{body}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let tag = ring::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    fn policy(extra: &str) -> (tempfile::TempDir, JwtPolicy) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, [SECRET, b"\n"].concat()).unwrap();
        let config: JwtConfig = toml::from_str(&format!(
            "algorithm = \"HS256\"\nsecret_file = {:?}\n{extra}",
            file.display().to_string()
        ))
        .unwrap();
        let p = JwtPolicy::load("jwt", "r", &config, None).unwrap();
        (dir, p)
    }

    /// The fixed-key check never waits; a current-thread runtime runs it.
    fn verify(p: &JwtPolicy, token: &str) -> Result<Claims, RejectError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(p.verify(token))
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn hs256_claims_are_checked() {
        let (_dir, p) = policy("issuer = \"me\"\naudience = \"gw\"\n");
        let exp = now() + 600;
        let ok = hs256(
            &format!(r#"{{"exp":{exp},"iss":"me","aud":"gw","sub":"u"}}"#),
            SECRET,
        );
        assert_eq!(verify(&p, &ok).unwrap()["sub"], "u");
        for (claims, why) in [
            (r#"{"iss":"me","aud":"gw"}"#.to_owned(), "no exp"),
            (format!(r#"{{"exp":{exp},"aud":"gw"}}"#), "no iss"),
            (format!(r#"{{"exp":{exp},"iss":"me"}}"#), "no aud"),
            (
                format!(r#"{{"exp":{exp},"iss":"you","aud":"gw"}}"#),
                "wrong iss",
            ),
            (
                format!(r#"{{"exp":{exp},"iss":"me","aud":"other"}}"#),
                "wrong aud",
            ),
        ] {
            let e = verify(&p, &hs256(&claims, SECRET)).unwrap_err();
            assert_eq!(e.to_string(), "invalid token", "{why}");
        }
        let expired = hs256(
            &format!(r#"{{"exp":{},"iss":"me","aud":"gw"}}"#, now() - 600),
            SECRET,
        );
        assert_eq!(
            verify(&p, &expired).unwrap_err().to_string(),
            "token expired"
        );
        let early = hs256(
            &format!(
                r#"{{"exp":{exp},"nbf":{},"iss":"me","aud":"gw"}}"#,
                now() + 300
            ),
            SECRET,
        );
        assert_eq!(
            verify(&p, &early).unwrap_err().to_string(),
            "token not yet valid"
        );
        let forged = hs256(
            &format!(r#"{{"exp":{exp},"iss":"me","aud":"gw"}}"#),
            b"another secret of thirty-two bytes",
        );
        assert_eq!(
            verify(&p, &forged).unwrap_err().to_string(),
            "invalid token"
        );
    }

    #[test]
    fn a_token_cannot_choose_its_algorithm() {
        let (_dir, p) = policy("");
        let body = URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{}}}"#, now() + 600));
        let none = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#));
        assert!(verify(&p, &none).is_err());
        assert!(verify(&p, "not.a.jwt").is_err());
        assert!(verify(&p, "").is_err());
    }

    #[test]
    fn unlisted_audience_is_refused_when_none_is_configured() {
        let (_dir, p) = policy("");
        let exp = now() + 600;
        assert!(verify(&p, &hs256(&format!(r#"{{"exp":{exp}}}"#), SECRET)).is_ok());
        assert!(verify(&p, &hs256(&format!(r#"{{"exp":{exp},"aud":"x"}}"#), SECRET)).is_err());
    }

    #[test]
    fn bad_key_files_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "too short\n").unwrap();
        let config: JwtConfig = toml::from_str(&format!(
            "algorithm = \"HS256\"\nsecret_file = {:?}",
            short.display().to_string()
        ))
        .unwrap();
        let e = JwtPolicy::load("route[0].auth.jwt", "r", &config, None).unwrap_err();
        assert!(
            format!("{e:#}").contains("route[0].auth.jwt.secret_file"),
            "{e:#}"
        );
        assert!(format!("{e:#}").contains("at least 32 bytes"), "{e:#}");

        let pem = dir.path().join("ec.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&pem, key.public_key_pem()).unwrap();
        let rs = JwtConfig {
            algorithm: Some(JwtAlgorithm::RS256),
            secret_file: None,
            public_key_file: Some(pem.clone()),
            ..config.clone()
        };
        let e = JwtPolicy::load("j", "r", &rs, None).unwrap_err();
        assert!(format!("{e:#}").contains("not a RS256 public key"), "{e:#}");
        let private = dir.path().join("private.pem");
        std::fs::write(&private, key.serialize_pem()).unwrap();
        let es = JwtConfig {
            algorithm: Some(JwtAlgorithm::ES256),
            public_key_file: Some(private),
            ..rs.clone()
        };
        let e = JwtPolicy::load("j", "r", &es, None).unwrap_err();
        assert!(format!("{e:#}").contains("PUBLIC KEY"), "{e:#}");
        let es = JwtConfig {
            public_key_file: Some(pem),
            ..es
        };
        assert!(JwtPolicy::load("j", "r", &es, None).is_ok());
    }
}

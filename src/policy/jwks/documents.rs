//! What a provider's documents say: the discovery document's endpoints, the usable keys of
//! a key set, and which URLs keys may be fetched from.

use std::sync::Arc;

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hyper::Uri;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tracing::{debug, warn};

use super::{Discovered, Keys, PublicKey};
use crate::logsafe::Escaped;
use crate::policy::provider_client::is_loopback;

/// The most keys taken from one key set.
const MAX_KEYS: usize = 64;

/// A URL the gateway may fetch keys from: `https://`, or `http://` on a loopback host
/// (a provider on the same machine or in tests; anything else could be tampered with).
pub(super) fn fetchable_url(text: &str) -> anyhow::Result<Uri> {
    let uri: Uri = text
        .parse()
        .with_context(|| format!("{text:?} is not a URL"))?;
    let host = uri
        .host()
        .with_context(|| format!("{text:?} has no host"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback(host) => {}
        Some("http") => bail!("{text:?}: http:// only on a loopback host; use https://"),
        _ => bail!("{text:?}: expected an https:// URL"),
    }
    Ok(uri)
}

/// The discovery document's `jwks_uri` and, when it has both, its authorization and token
/// endpoints, after checking its `issuer` is the configured one (OpenID Connect Discovery
/// §4.3).
pub(super) fn read_discovery(
    body: &[u8],
    issuer: &str,
) -> anyhow::Result<(Uri, Option<Discovered>)> {
    #[derive(Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: String,
        #[serde(default)]
        authorization_endpoint: Option<String>,
        #[serde(default)]
        token_endpoint: Option<String>,
        #[serde(default)]
        end_session_endpoint: Option<String>,
    }
    let doc: Discovery = serde_json::from_slice(body).context("not a discovery document")?;
    if doc.issuer != issuer {
        bail!(
            "names issuer {:?}, not the configured {issuer:?}",
            Escaped(&doc.issuer).to_string()
        );
    }
    let jwks = fetchable_url(&doc.jwks_uri).context("jwks_uri")?;
    let endpoints = match (doc.authorization_endpoint, doc.token_endpoint) {
        (Some(authorization), Some(token)) => Some(Discovered {
            // The browser goes there, not the gateway: any absolute URL will do.
            authorization_endpoint: authorization.parse().context("authorization_endpoint")?,
            token_endpoint: fetchable_url(&token).context("token_endpoint")?,
            end_session_endpoint: doc.end_session_endpoint.and_then(|e| e.parse().ok()),
        }),
        _ => None,
    };
    Ok((jwks, endpoints))
}

/// One JSON Web Key as a key set carries it (RFC 7517 §4, RFC 7518 §6).
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// The usable signing keys of a key set: RSA of at least 2048 bits (RS256) and EC P-256
/// (ES256). Symmetric (`oct`) keys are never taken from a key set, encryption keys and other
/// types are skipped; a set with no usable key is an error (the old keys stay).
pub(super) fn parse_key_set(body: &[u8]) -> anyhow::Result<Keys> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).context("not a JSON Web Key Set")?;
    let mut keys = Keys::default();
    for value in set.keys {
        if keys.all.len() == MAX_KEYS {
            warn!(
                max = MAX_KEYS,
                "key set has more keys than wsgate takes; the rest are ignored"
            );
            break;
        }
        match serde_json::from_value::<Jwk>(value)
            .map_err(anyhow::Error::from)
            .and_then(usable_key)
        {
            Ok(Some(key)) => {
                let key = Arc::new(key);
                if let Some(kid) = &key.kid {
                    keys.by_kid
                        .entry(kid.clone())
                        .or_default()
                        .push(key.clone());
                }
                keys.all.push(key);
            }
            Ok(None) => {}
            Err(e) => debug!(error = %Escaped(&format!("{e:#}")), "key skipped"),
        }
    }
    if keys.all.is_empty() {
        bail!("no usable signing key (RSA of 2048 bits or more, or EC P-256)");
    }
    Ok(keys)
}

/// A JWK as a verification key, `None` when it is not one wsgate uses for signatures.
fn usable_key(jwk: Jwk) -> anyhow::Result<Option<PublicKey>> {
    if jwk.usage.as_deref().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let (algorithm, key) = match jwk.kty.as_str() {
        "RSA" => {
            let (Some(n), Some(e)) = (&jwk.n, &jwk.e) else {
                bail!("RSA key without n or e");
            };
            let modulus = URL_SAFE_NO_PAD.decode(n).context("RSA n")?;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            if significant < 256 {
                bail!("RSA key of fewer than 2048 bits");
            }
            let exponent = URL_SAFE_NO_PAD.decode(e).context("RSA e")?;
            (
                Algorithm::RS256,
                DecodingKey::from_rsa_raw_components(&modulus, &exponent),
            )
        }
        "EC" if jwk.crv.as_deref() == Some("P-256") => {
            let (Some(x), Some(y)) = (&jwk.x, &jwk.y) else {
                bail!("EC key without x or y");
            };
            let (xb, yb) = (URL_SAFE_NO_PAD.decode(x)?, URL_SAFE_NO_PAD.decode(y)?);
            if xb.len() != 32 || yb.len() != 32 {
                bail!("P-256 coordinates must be 32 bytes");
            }
            (
                Algorithm::ES256,
                DecodingKey::from_ec_components(x, y).context("EC key")?,
            )
        }
        // Symmetric keys would let anyone who can read the set sign tokens.
        _ => return Ok(None),
    };
    let named = match jwk.alg.as_deref() {
        None => true,
        Some("RS256") => algorithm == Algorithm::RS256,
        Some("ES256") => algorithm == Algorithm::ES256,
        Some(_) => false,
    };
    Ok(named.then_some(PublicKey {
        kid: jwk.kid,
        algorithm,
        key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_fetched() {
        assert!(fetchable_url("https://id.example.com/jwks").is_ok());
        assert!(fetchable_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(fetchable_url("http://[::1]:8080/jwks").is_ok());
        assert!(fetchable_url("http://localhost/jwks").is_ok());
        for bad in [
            "http://id.example.com/jwks",
            "ftp://x/y",
            "/jwks",
            "id.example.com",
        ] {
            assert!(fetchable_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn symmetric_short_and_encryption_keys_are_not_taken() {
        let n_ok = URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
        let n_short = URL_SAFE_NO_PAD.encode([0xc5u8; 128]);
        let body = format!(
            r#"{{"keys":[
              {{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}},
              {{"kty":"RSA","n":"{n_short}","e":"AQAB","kid":"short"}},
              {{"kty":"RSA","n":"{n_ok}","e":"AQAB","kid":"enc","use":"enc"}},
              {{"kty":"RSA","n":"{n_ok}","e":"AQAB","kid":"ps","alg":"PS256"}},
              {{"kty":"RSA","n":"{n_ok}","e":"AQAB","kid":"good","alg":"RS256"}}
            ]}}"#
        );
        let keys = parse_key_set(body.as_bytes()).unwrap();
        assert_eq!(keys.all.len(), 1);
        assert_eq!(keys.all[0].kid.as_deref(), Some("good"));
        assert!(parse_key_set(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
    }

    #[test]
    fn discovery_must_name_the_configured_issuer() {
        let doc = br#"{"issuer":"https://a.example","jwks_uri":"https://a.example/jwks"}"#;
        assert!(read_discovery(doc, "https://a.example").is_ok());
        assert!(read_discovery(doc, "https://b.example").is_err());
    }
}

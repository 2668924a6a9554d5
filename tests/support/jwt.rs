//! Credentials built by hand (token hashes, JWTs): the gateway's verifier is what is under test.

/// SHA-256 of a token in hex, as `bearer_sha256` lists it.
pub fn sha256_hex(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt_signing_input(alg: &str, claims: &serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let head = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{head}.{body}")
}

fn jwt_finish(input: String, signature: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A JWT signed with HS256 (built by hand: the gateway's verifier is what is under test).
pub fn jwt_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    let input = jwt_signing_input("HS256", claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    jwt_finish(input, tag.as_ref())
}

/// A JWT signed with ES256 by a P-256 key in PKCS#8 DER (rcgen's `KeyPair::serialize_der`).
pub fn jwt_es256(pkcs8: &[u8], claims: &serde_json::Value) -> String {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng).unwrap();
    let input = jwt_signing_input("ES256", claims);
    let sig = key.sign(&rng, input.as_bytes()).unwrap();
    jwt_finish(input, sig.as_ref())
}

/// A JWT signed with RS256 by an RSA key in PKCS#8 DER.
pub fn jwt_rs256(pkcs8: &[u8], claims: &serde_json::Value) -> String {
    let key = ring::rsa::KeyPair::from_pkcs8(pkcs8).unwrap();
    let input = jwt_signing_input("RS256", claims);
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    jwt_finish(input, &sig)
}

//! Cookies a browser keeps but can neither read nor change: AES-256-GCM from `ring` (the
//! process's one crypto library) under keys read from a file. The first key seals, every key
//! opens, so adding a key in front rotates without signing anyone out. Each value is bound to
//! its purpose (the cookie's name), so one cookie cannot be replayed as another.

use std::path::Path;

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// The keys of `cookie_keys_file`.
pub struct CookieKeys {
    keys: Vec<LessSafeKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for CookieKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CookieKeys({} keys)", self.keys.len())
    }
}

impl CookieKeys {
    /// Read the keys: one per line, 64 hex digits (32 bytes); blank lines and `#` comments
    /// skipped; at least one.
    pub fn load(file: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        Self::parse(&text).with_context(|| format!("{}", file.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = decode_hex(line)
                .filter(|b| b.len() == 32)
                .with_context(|| {
                    format!(
                        "line {}: expected 64 hex digits (openssl rand -hex 32)",
                        n + 1
                    )
                })?;
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| anyhow::anyhow!("line {}: not an AES-256 key", n + 1))?;
            keys.push(LessSafeKey::new(key));
        }
        if keys.is_empty() {
            bail!("no key: write one line of 64 hex digits (openssl rand -hex 32)");
        }
        Ok(Self {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// Random bytes as base64url, for state, nonce and PKCE verifiers.
    pub fn random_token(&self, bytes: usize) -> anyhow::Result<String> {
        let mut buf = vec![0u8; bytes];
        self.rng
            .fill(&mut buf)
            .map_err(|_| anyhow::anyhow!("no randomness from the system"))?;
        Ok(URL_SAFE_NO_PAD.encode(buf))
    }

    /// `plain` encrypted and authenticated under the first key for `purpose`, as base64url
    /// (a cookie value).
    pub fn seal(&self, purpose: &str, plain: &[u8]) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("no randomness from the system"))?;
        let mut data = plain.to_vec();
        self.keys[0]
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut data,
            )
            .map_err(|_| anyhow::anyhow!("sealing a cookie"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// The plain text of a value [`CookieKeys::seal`] made for `purpose` under any of the
    /// keys; `None` for anything else (tampered, another purpose, a retired key, not base64).
    pub fn open(&self, purpose: &str, value: &str) -> Option<Vec<u8>> {
        let bytes = URL_SAFE_NO_PAD.decode(value).ok()?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        self.keys.iter().find_map(|key| {
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut data = sealed.to_vec();
            let plain = key
                .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut data)
                .ok()?;
            Some(plain.to_vec())
        })
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const NEW: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn sealed_values_open_only_unchanged_for_their_purpose() {
        let keys = CookieKeys::parse(OLD).unwrap();
        let value = keys.seal("session", b"alice").unwrap();
        assert_eq!(keys.open("session", &value).as_deref(), Some(&b"alice"[..]));
        assert_eq!(keys.open("flow", &value), None, "another purpose");
        let mut bytes = URL_SAFE_NO_PAD.decode(&value).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(keys.open("session", &URL_SAFE_NO_PAD.encode(bytes)), None);
        assert_eq!(keys.open("session", "not base64!"), None);
        assert_eq!(keys.open("session", ""), None);
    }

    #[test]
    fn a_new_first_key_rotates_without_signing_anyone_out() {
        let old = CookieKeys::parse(OLD).unwrap();
        let value = old.seal("session", b"bob").unwrap();
        let rotated = CookieKeys::parse(&format!("# new key first\n{NEW}\n{OLD}\n")).unwrap();
        assert_eq!(
            rotated.open("session", &value).as_deref(),
            Some(&b"bob"[..])
        );
        let fresh = rotated.seal("session", b"carol").unwrap();
        assert_eq!(
            old.open("session", &fresh),
            None,
            "sealed under the new key"
        );
        let retired = CookieKeys::parse(NEW).unwrap();
        assert_eq!(retired.open("session", &value), None, "the old key removed");
    }

    #[test]
    fn bad_key_files_are_refused() {
        assert!(CookieKeys::parse("").is_err());
        assert!(CookieKeys::parse("abcd").is_err());
        assert!(CookieKeys::parse(&OLD.replace('0', "x")).is_err());
    }
}

//! Secrets in the config, marked by their type: read from the file as written, shown
//! nowhere. Serialising one (the admin API's view of the running config) writes
//! `"<redacted>"`, and so does `Debug`; the code that checks a secret reads it through
//! `Deref`.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret is shown as.
pub const REDACTED: &str = "<redacted>";

/// A value that must not be shown: deserialised as `T`, serialised as [`REDACTED`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(pub T);

impl<T> Deref for Secret<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

/// A URL whose query values may be secrets (a backend's or a key set's `?api_key=…`):
/// serialised with them redacted, as the logs show it. For `#[serde(serialize_with)]` on URL
/// fields.
pub fn url_with_query_redacted<S: Serializer>(
    url: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => serializer.serialize_str(&super::redact_query(url)),
        None => serializer.serialize_none(),
    }
}

/// [`url_with_query_redacted`] for a list of URLs.
pub fn urls_with_query_redacted<S: Serializer>(
    urls: &[String],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(urls.iter().map(|u| super::redact_query(u)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Holder {
        digest: Secret<String>,
        #[serde(default)]
        digests: Secret<Vec<String>>,
        maybe: Option<Secret<String>>,
    }

    #[test]
    fn a_secret_reads_as_written_and_shows_as_redacted() {
        let h: Holder = toml::from_str("digest = \"abc\"\ndigests = [\"d1\", \"d2\"]\n").unwrap();
        assert_eq!(&*h.digest, "abc");
        assert_eq!(h.digests.len(), 2);
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"digest": REDACTED, "digests": REDACTED, "maybe": null})
        );
        let debug = format!("{h:?}");
        assert!(!debug.contains("abc") && !debug.contains("d1"), "{debug}");
    }
}

//! HTTP helpers every stage answers or parses with: the complete-body type, text and JSON
//! answers, query values, header tokens, cookies dropped by name, URIs made safe for logs,
//! hex digests. Knows nothing of routes or sessions.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode, Uri};

/// Every answer the gateway writes itself: a short, complete body.
pub type Body = Full<Bytes>;

/// What a secret's value is replaced with in logs and in the admin API.
pub const REDACTED: &str = "<redacted>";

/// A plain-text answer (`text/plain; charset=utf-8`).
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    typed(status, "text/plain; charset=utf-8", body)
}

/// A JSON answer (`application/json`).
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    typed(status, "application/json", value.to_string())
}

/// An answer with its own content type.
pub fn typed(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Body::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Whether header `name`'s comma-separated values hold `token` (case-insensitive).
pub fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The first value of query parameter `name`, percent-decoded; `None` when absent or empty.
pub fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if percent_decode(k).as_deref() != Some(name) {
            return None;
        }
        percent_decode(v).filter(|v| !v.is_empty())
    })
}

/// `%XX` decoding; `None` for a bad escape or a result that is not UTF-8.
/// `+` stays `+` (tokens are often base64, where it is a digit).
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Drop from `Cookie` headers every cookie whose name `unwanted` picks; the others stay, and a
/// header left empty goes.
pub fn remove_cookies(headers: &mut HeaderMap, unwanted: impl Fn(&str) -> bool) {
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| {
            let Ok(text) = v.to_str() else {
                return Some(v.clone());
            };
            let pairs: Vec<&str> = text
                .split(';')
                .map(str::trim)
                .filter(|pair| {
                    !pair.is_empty()
                        && pair
                            .split_once('=')
                            .is_none_or(|(k, _)| !unwanted(k.trim()))
                })
                .collect();
            (!pairs.is_empty())
                .then(|| HeaderValue::from_str(&pairs.join("; ")).ok())
                .flatten()
        })
        .collect();
    headers.remove(header::COOKIE);
    for v in kept {
        headers.append(header::COOKIE, v);
    }
}

/// The request's path and query for logs, every query value replaced by [`REDACTED`]:
/// a token in the URL never reaches a log line.
pub fn log_uri(uri: &Uri) -> String {
    let mut out = uri.path().to_owned();
    if let Some(query) = uri.query() {
        out.push('?');
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) => format!("{k}={REDACTED}"),
                None => pair.to_owned(),
            })
            .collect();
        out.push_str(&redacted.join("&"));
    }
    out
}

/// A SHA-256 digest written as 64 hex digits (surrounding whitespace ignored).
pub fn decode_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_uris_carry_no_query_values() {
        let uri: Uri = "/websockify?token=SECRET123&access_token=abc.def&flag"
            .parse()
            .unwrap();
        let logged = log_uri(&uri);
        assert_eq!(
            logged,
            "/websockify?token=<redacted>&access_token=<redacted>&flag"
        );
        assert!(!logged.contains("SECRET123"));
        assert_eq!(log_uri(&"/plain".parse().unwrap()), "/plain");
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            query_value(Some("token=a%2Bb+c"), "token").as_deref(),
            Some("a+b+c")
        );
        assert_eq!(query_value(Some("token="), "token"), None);
        assert_eq!(query_value(Some("token=%zz"), "token"), None);
        assert_eq!(query_value(Some("x=1"), "token"), None);
        assert_eq!(query_value(None, "token"), None);
    }

    #[test]
    fn header_tokens_are_found_in_lists_in_any_case() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(header_has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!header_has_token(&h, header::UPGRADE, "websocket"));
    }
}

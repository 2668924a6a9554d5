//! The WebSocket upgrade itself: what makes a request one (RFC 6455 §4.2.1, RFC 8441 on
//! HTTP/2), the answer that completes it, and the client stream it promises.

use hyper::header;
use hyper::{Method, Request, Response, Version};

use super::extended_connect::PendingStream;
use crate::error::RejectError;
use crate::http_util::{header_has_token, Body};
use crate::metrics::Protocol;
use crate::session::start::ClientStream;

/// RFC 6455 §4.2.1: what makes a request a WebSocket upgrade.
pub fn check_upgrade<B>(req: &Request<B>) -> Result<(), RejectError> {
    if req.version() == Version::HTTP_2 {
        return super::extended_connect::check_extended_connect(req);
    }
    if req.method() != Method::GET {
        return Err(RejectError::BadRequest("a WebSocket upgrade must be a GET"));
    }
    if req.version() < Version::HTTP_11 {
        return Err(RejectError::BadRequest(
            "a WebSocket upgrade needs HTTP/1.1",
        ));
    }
    if !header_has_token(req.headers(), header::UPGRADE, "websocket") {
        return Err(RejectError::BadRequest("missing Upgrade: websocket"));
    }
    if !header_has_token(req.headers(), header::CONNECTION, "upgrade") {
        return Err(RejectError::BadRequest("missing Connection: Upgrade"));
    }
    match req.headers().get(header::SEC_WEBSOCKET_KEY) {
        None => return Err(RejectError::BadRequest("missing Sec-WebSocket-Key")),
        Some(key) if !is_valid_key(key.as_bytes()) => {
            return Err(RejectError::BadRequest(
                "Sec-WebSocket-Key must be 16 bytes in base64",
            ))
        }
        Some(_) => {}
    }
    match req.headers().get(header::SEC_WEBSOCKET_VERSION) {
        Some(v) if v == "13" => Ok(()),
        _ => Err(RejectError::UnsupportedVersion),
    }
}

/// 16 bytes in canonical base64: 24 characters ending in `==`, no stray bits in the last one.
fn is_valid_key(key: &[u8]) -> bool {
    use base64::Engine;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|raw| raw.len() == 16)
}

/// The upgrade a `101` or an extended CONNECT's `200` promises: the client's stream once
/// the answer is sent (by hyper on HTTP/1.1, by `super::h2` on HTTP/2).
pub(super) enum PendingUpgrade {
    Http1(fastwebsockets::upgrade::UpgradeFut),
    H2(PendingStream),
}

impl PendingUpgrade {
    /// The answer that completes the handshake (`101` with `Sec-WebSocket-Accept`, or `200`
    /// on an h2 stream), and the stream to come.
    pub(super) fn accept<B>(req: &mut Request<B>) -> Result<(Response<Body>, Self), RejectError> {
        if req.version() == Version::HTTP_2 {
            let (response, stream) = super::extended_connect::accept(req)?;
            return Ok((response, Self::H2(stream)));
        }
        let (response, upgrade) = fastwebsockets::upgrade::upgrade(req)
            .map_err(|_| RejectError::BadRequest("invalid upgrade request"))?;
        Ok((response.map(|_| Body::default()), Self::Http1(upgrade)))
    }

    pub(super) fn protocol(&self) -> Protocol {
        match self {
            Self::Http1(_) => Protocol::Http1,
            Self::H2(_) => Protocol::H2,
        }
    }

    pub(super) async fn wait(
        self,
    ) -> Result<ClientStream, Box<dyn std::error::Error + Send + Sync>> {
        match self {
            Self::Http1(fut) => Ok(ClientStream::upgraded(fut.await?.into_inner().into_inner())),
            Self::H2(stream) => stream.wait().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use hyper::StatusCode;

    fn request(edit: impl FnOnce(&mut hyper::http::request::Builder)) -> Request<()> {
        let mut b = Request::get("/x")
            .header("Upgrade", "websocket")
            .header("Connection", "keep-alive, Upgrade")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("Sec-WebSocket-Version", "13");
        edit(&mut b);
        b.body(()).unwrap()
    }

    #[test]
    fn accepts_a_proper_upgrade() {
        assert!(check_upgrade(&request(|_| {})).is_ok());
    }

    #[test]
    fn rejects_each_missing_piece_with_its_status() {
        let post = Request::post("/x").body(()).unwrap();
        assert_eq!(
            check_upgrade(&post).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        let no_upgrade = Request::get("/x")
            .header("Connection", "Upgrade")
            .body(())
            .unwrap();
        assert!(check_upgrade(&no_upgrade)
            .unwrap_err()
            .to_string()
            .contains("Upgrade: websocket"));
        let bad_key = request(|b| {
            b.headers_mut()
                .unwrap()
                .insert("Sec-WebSocket-Key", HeaderValue::from_static("short"));
        });
        assert!(check_upgrade(&bad_key)
            .unwrap_err()
            .to_string()
            .contains("Sec-WebSocket-Key"));
        // Regression (found by tests/fuzz.rs): 22 alphabet characters and `==` passed even when
        // the last character carried bits past the 16 bytes, which is not base64 of 16 bytes.
        let stray_bits = request(|b| {
            b.headers_mut().unwrap().insert(
                "Sec-WebSocket-Key",
                HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAB=="),
            );
        });
        assert_eq!(
            check_upgrade(&stray_bits).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        let v8 = request(|b| {
            b.headers_mut()
                .unwrap()
                .insert("Sec-WebSocket-Version", HeaderValue::from_static("8"));
        });
        assert_eq!(
            check_upgrade(&v8).unwrap_err().status(),
            StatusCode::UPGRADE_REQUIRED
        );
    }
}

//! The RFC 8441 parts of an HTTP/2 WebSocket handshake: what an extended CONNECT must carry,
//! the `200` that opens the stream and the stream it promises, and the headers HTTP/2 forbids
//! in answers.

use std::error::Error;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use h2::ext::Protocol;
use h2::{RecvStream, SendStream};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::oneshot;

use crate::error::RejectError;
use crate::session::start::ClientStream;

/// RFC 8441 §4–5: what makes an HTTP/2 request a WebSocket handshake. Neither
/// `Sec-WebSocket-Key` nor `Sec-WebSocket-Accept` is used; the version must still be 13.
pub fn check_extended_connect<B>(req: &Request<B>) -> Result<(), RejectError> {
    if req.method() != Method::CONNECT {
        return Err(RejectError::BadRequest(
            "a WebSocket over HTTP/2 is an extended CONNECT",
        ));
    }
    match req.extensions().get::<Protocol>() {
        None => {
            return Err(RejectError::BadRequest(
                "a CONNECT without :protocol is not a WebSocket",
            ))
        }
        Some(p) if !p.as_str().eq_ignore_ascii_case("websocket") => {
            return Err(RejectError::UnsupportedProtocol)
        }
        Some(_) => {}
    }
    match req.headers().get(header::SEC_WEBSOCKET_VERSION) {
        Some(v) if v == "13" => Ok(()),
        _ => Err(RejectError::UnsupportedVersion),
    }
}

/// The `200` that opens the stream as a WebSocket, and the stream to come once it is sent.
pub(super) fn accept<B, D: Default>(
    req: &mut Request<B>,
) -> Result<(Response<D>, PendingStream), RejectError> {
    // Every HTTP/2 request comes from `super::h2::serve`, which gives a CONNECT its stream.
    let stream = req
        .extensions_mut()
        .remove::<PendingStream>()
        .ok_or(RejectError::BadRequest("an upgrade needs a CONNECT stream"))?;
    let mut response = Response::new(D::default());
    *response.status_mut() = StatusCode::OK;
    Ok((response, stream))
}

/// An extended CONNECT's stream, promised to the request's answer: put in the request's
/// extensions by `super::h2`, taken by [`accept`], and handed over once a `2xx` has been
/// sent on it. (Shared only because extensions must be `Clone`; one copy exists.)
#[derive(Clone)]
pub struct PendingStream(Arc<Mutex<Option<oneshot::Receiver<H2Stream>>>>);

/// An HTTP/2 stream's two halves.
type H2Stream = (SendStream<Bytes>, RecvStream);

impl PendingStream {
    /// The promise, and where its stream is handed over.
    pub(super) fn new() -> (oneshot::Sender<H2Stream>, Self) {
        let (handover, receiver) = oneshot::channel();
        (handover, Self(Arc::new(Mutex::new(Some(receiver)))))
    }

    /// The stream, once its `200` went out; an error if it was reset first.
    pub(super) async fn wait(self) -> Result<ClientStream, Box<dyn Error + Send + Sync>> {
        let receiver = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (send, recv) = receiver
            .ok_or("the stream was handed over already")?
            .await?;
        Ok(ClientStream::h2(send, recv))
    }
}

/// Headers that name the connection, which HTTP/2 forbids (RFC 9113 §8.2.2): a response
/// carrying one would be reset instead of sent.
pub fn strip_connection_headers(headers: &mut hyper::HeaderMap<HeaderValue>) {
    headers.remove(header::UPGRADE);
    headers.remove(header::CONNECTION);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(protocol: Option<&'static str>, version: Option<&str>) -> Request<()> {
        let mut b = Request::connect("https://example.com/x");
        if let Some(v) = version {
            b = b.header("sec-websocket-version", v);
        }
        let mut req = b.body(()).unwrap();
        if let Some(p) = protocol {
            req.extensions_mut().insert(Protocol::from_static(p));
        }
        req
    }

    #[test]
    fn accepts_an_extended_connect_for_websocket_without_a_key() {
        assert!(check_extended_connect(&connect(Some("websocket"), Some("13"))).is_ok());
    }

    #[test]
    fn rejects_each_missing_piece_with_the_rfc_status() {
        let get = Request::get("https://example.com/x").body(()).unwrap();
        let status = |r: &Request<()>| check_extended_connect(r).unwrap_err().status();
        assert_eq!(status(&get), StatusCode::BAD_REQUEST);
        assert_eq!(status(&connect(None, Some("13"))), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(&connect(Some("webtransport"), Some("13"))),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            status(&connect(Some("websocket"), None)),
            StatusCode::UPGRADE_REQUIRED
        );
        assert_eq!(
            status(&connect(Some("websocket"), Some("8"))),
            StatusCode::UPGRADE_REQUIRED
        );
    }
}

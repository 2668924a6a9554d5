//! websockify's `--web` (`[web] root`): static files for plain GET and HEAD requests on the
//! public listeners, so noVNC's page and its WebSocket share one origin and one port.

use std::path::Path;

use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use tower_http::services::ServeDir;
use tracing::{debug, warn};

use crate::http_util::Body;

/// Largest file served. Answers are buffered whole (the gateway's answers are complete
/// bodies); noVNC's largest file is well under 1 MiB.
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;

/// Serve `req` from `root`. tower-http's `ServeDir` resolves the path (percent-decoding,
/// refusing `..` and absolute components), picks the content type from the extension,
/// answers a folder with its `index.html`, and handles conditional and range requests.
pub async fn serve<B>(root: &Path, req: Request<B>) -> Response<Body>
where
    B: Send + 'static,
{
    let path = req.uri().path().to_owned();
    let served = ServeDir::new(root)
        .append_index_html_on_directories(true)
        .try_call(req)
        .await;
    let response = match served {
        Ok(response) => response,
        Err(e) => {
            let status = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    StatusCode::NOT_FOUND
                }
                // ENOTDIR: a file name used as a folder (`/vnc.html/x`).
                _ if e.raw_os_error() == Some(20) => StatusCode::NOT_FOUND,
                _ => {
                    warn!(path, error = %e, "web: reading a file failed");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            return text(status, status.canonical_reason().unwrap_or("error"));
        }
    };
    let (parts, body) = response.into_parts();
    match Limited::new(body, MAX_FILE_BYTES).collect().await {
        Ok(bytes) => Response::from_parts(parts, Full::new(bytes.to_bytes())),
        Err(e) => {
            warn!(path, error = %e, "web: file not served (over 16 MiB or unreadable)");
            text(StatusCode::INTERNAL_SERVER_ERROR, "file too large to serve")
        }
    }
}

fn text(status: StatusCode, reason: &str) -> Response<Body> {
    debug!(%status, "web: {reason}");
    crate::http_util::text(status, format!("{reason}\n"))
}

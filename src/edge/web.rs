//! websockify's `--web` (`[web] root`): static files for plain GET and HEAD requests on the
//! public listeners, so noVNC's page and its WebSocket share one origin and one port.
//!
//! Files are streamed in [`CHUNK_BYTES`] pieces, never read whole, and at most
//! `[web] max_responses` answers are in flight at once (more get `503`): a client that does
//! not read pins one chunk per response, and the cap bounds how many.

use std::io;
use std::path::{Component, Path};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::{header, Request, Response, StatusCode};
use tokio::sync::OwnedSemaphorePermit;
use tower_http::services::fs::ServeFileSystemResponseBody;
use tower_http::services::ServeDir;
use tracing::{debug, warn};

use crate::snapshot::WebFiles;

/// What the static-file server answers with: a short complete body of ours, or a file.
pub type WebBody = Either<Full<Bytes>, FileBody>;

/// Bytes read from a file per piece of an answer: what one stalled answer holds.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// A file's body, streamed, with the permit that counts it.
pub struct FileBody {
    inner: ServeFileSystemResponseBody,
    _permit: OwnedSemaphorePermit,
}

impl HttpBody for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serve `req` from `web`. tower-http's `ServeDir` resolves the path (percent-decoding,
/// refusing `..` and absolute components), picks the content type from the extension,
/// answers a folder with its `index.html`, handles conditional and range requests, and
/// streams the file. Here: paths a browser would read as another host (`//app`, `/\app`)
/// are refused, symlinks out of the root are not followed (unless configured), redirects
/// stay on this origin, and every answer carries `X-Content-Type-Options: nosniff`.
pub async fn serve<B>(web: &WebFiles, req: Request<B>) -> Response<WebBody>
where
    B: Send + 'static,
{
    let path = req.uri().path().to_owned();
    let mut response = answer(web, req, &path).await;
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}

async fn answer<B>(web: &WebFiles, req: Request<B>, path: &str) -> Response<WebBody>
where
    B: Send + 'static,
{
    if !stays_on_origin(path) {
        return text(
            StatusCode::BAD_REQUEST,
            "the path holds an empty segment (//) or a backslash",
        );
    }
    if !web.follow_external_symlinks && leaves_root(&web.root, path).await {
        debug!(path, "web: a symlink out of the web root; not followed");
        return text(StatusCode::NOT_FOUND, "Not Found");
    }
    let Ok(permit) = web.responses.clone().try_acquire_owned() else {
        debug!(
            path,
            max = web.max_responses,
            "web: too many answers in flight"
        );
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many file answers in flight",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return r;
    };
    let served = ServeDir::new(&web.root)
        .append_index_html_on_directories(true)
        .with_buf_chunk_size(CHUNK_BYTES)
        .try_call(req)
        .await;
    let response = match served {
        Ok(response) => response,
        Err(e) => {
            let status = match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => StatusCode::NOT_FOUND,
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
    // ServeDir's trailing-slash redirect repeats the request path; checked above, but a
    // redirect that could leave this origin is never sent.
    if let Some(location) = response.headers().get(header::LOCATION) {
        if !location.to_str().is_ok_and(stays_on_origin) {
            warn!(path, "web: a redirect off this origin refused");
            return text(StatusCode::BAD_REQUEST, "Bad Request");
        }
    }
    let (parts, inner) = response.into_parts();
    Response::from_parts(
        parts,
        Either::Right(FileBody {
            inner,
            _permit: permit,
        }),
    )
}

/// A path that names this origin's resource: one leading `/`, no empty segment (`//`, which
/// a browser reads in a `Location` as another host) and no backslash, raw or encoded
/// (browsers read `\` as `/`).
fn stays_on_origin(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let lower = rest.to_ascii_lowercase();
    !rest.contains('\\')
        && !lower.contains("%5c")
        && !rest.split('/').rev().skip(1).any(str::is_empty)
}

/// Whether the file (or folder index) `url_path` names resolves, through a symlink, to a
/// place outside `root`. Paths `ServeDir` will refuse or not find answer `false` (it
/// answers them).
async fn leaves_root(root: &Path, url_path: &str) -> bool {
    let Some(decoded) = crate::http_util::percent_decode(url_path) else {
        return false;
    };
    let mut candidate = root.to_path_buf();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        let segment = Path::new(segment);
        if !matches!(
            segment.components().collect::<Vec<_>>().as_slice(),
            [Component::Normal(_)]
        ) {
            return false;
        }
        candidate.push(segment);
    }
    let Ok(real_root) = tokio::fs::canonicalize(root).await else {
        return false;
    };
    let Ok(real) = tokio::fs::canonicalize(&candidate).await else {
        return false;
    };
    if !real.starts_with(&real_root) {
        return true;
    }
    if real.is_dir() {
        if let Ok(index) = tokio::fs::canonicalize(real.join("index.html")).await {
            return !index.starts_with(&real_root);
        }
    }
    false
}

fn text(status: StatusCode, reason: &str) -> Response<WebBody> {
    debug!(%status, "web: {reason}");
    crate::http_util::text(status, format!("{reason}\n")).map(Either::Left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_a_browser_reads_as_another_host_are_refused() {
        assert!(stays_on_origin("/"));
        assert!(stays_on_origin("/app/"));
        assert!(stays_on_origin("/app/ui.js"));
        assert!(!stays_on_origin("//app"));
        assert!(!stays_on_origin("//app/"));
        assert!(!stays_on_origin("/app//x"));
        assert!(!stays_on_origin("/\\app"));
        assert!(!stays_on_origin("/%5Capp"));
        assert!(!stays_on_origin("app/"));
    }
}

//! The graceful end of one HTTP connection, the same for HTTP/1.1 and HTTP/2: served until it
//! ends; at shutdown asked to finish (HTTP/1.1: the request in flight, its upgrade included;
//! HTTP/2: GOAWAY, then the streams open on it), and dropped at the drain's hard stop.

use std::future::Future;
use std::pin::Pin;

use super::shared::Shared;

/// Drive `conn` to its end; `graceful` asks it to finish (hyper's `graceful_shutdown`).
/// `None` when the hard stop cut it short.
pub(super) async fn serve_until_shutdown<C, E>(
    mut conn: Pin<&mut C>,
    graceful: impl FnOnce(Pin<&mut C>),
    shared: &Shared,
) -> Option<Result<(), E>>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::select! {
        r = conn.as_mut() => Some(r),
        () = shared.shutdown.cancelled() => {
            graceful(conn.as_mut());
            tokio::select! {
                r = conn.as_mut() => Some(r),
                () = shared.hard_stop.cancelled() => None,
            }
        }
    }
}

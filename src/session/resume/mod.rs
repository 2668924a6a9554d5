//! Resumable sessions (docs/resume.md): a session whose backend connection outlives its
//! client connection, so a browser that lost its WebSocket can attach a new one and carry on
//! with no byte lost or repeated.
//!
//! `core` is the session's backend side (backend socket, replay buffer, offsets, token,
//! grace); `attachment` is one client connection's reader and writer; `protocol` is the
//! wire format; `store` finds a session by id and bounds how many there are.

pub mod attachment;
pub mod core;
pub mod protocol;
pub mod store;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, Counter, Gauge};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use self::attachment::HelloError;
pub use self::core::ResumeSettings;
use self::core::{Attach, Core, Outcome};
use self::protocol::close;
pub use self::store::{ResumeLimits, ResumeStore};
use crate::metrics::{RESUMES_TOTAL, RESUME_DETACHED_SESSIONS, RESUME_REPLAYED_BYTES_TOTAL};
use crate::ws::reader::{FrameReader, ReadReady};
use crate::ws::writer::FrameWriter;

/// A route's resumable-session metrics.
#[derive(Clone)]
pub struct ResumeMetrics {
    route: Arc<str>,
    detached: Gauge,
    replayed: Counter,
}

impl ResumeMetrics {
    pub fn new(route: Arc<str>) -> Self {
        Self {
            detached: gauge!(RESUME_DETACHED_SESSIONS),
            replayed: counter!(RESUME_REPLAYED_BYTES_TOTAL, "route" => route.to_string()),
            route,
        }
    }

    fn result(&self, result: &'static str) {
        counter!(RESUMES_TOTAL, "route" => self.route.to_string(), "result" => result).increment(1);
    }

    pub fn refused(&self, result: &'static str) {
        self.result(result);
    }
    pub fn resumed(&self) {
        self.result("resumed");
    }
    pub fn replaced(&self) {
        self.result("replaced");
    }
    pub fn expired(&self) {
        self.result("expired");
    }
    pub fn replayed(&self, bytes: u64) {
        self.replayed.increment(bytes);
    }
    /// The session lost its client connection.
    pub fn detached(&self) {
        self.detached.increment(1.0);
    }
    /// A detached session got a connection back, or ended.
    pub fn reattached(&self) {
        self.detached.decrement(1.0);
    }
}

/// Where a resumable connection comes from and what it asks for.
pub struct Request<'a> {
    pub store: &'a Arc<ResumeStore>,
    pub route: Arc<str>,
    /// The client-chosen session id from the URL.
    pub id: String,
    pub address: IpAddr,
    pub settings: ResumeSettings,
    pub limits: ResumeLimits,
    pub max_message_bytes: usize,
}

/// Run a client connection that starts a new resumable session with this backend; the
/// session lives on in this task until it ends (`None` if it was refused at its HELLO).
/// `stop` resolves with the close code and reason when the session must end (shutdown,
/// an operator's close).
#[allow(clippy::too_many_arguments)]
pub async fn start<R, W, BR, BW>(
    mut reader: FrameReader<R>,
    writer: FrameWriter<W>,
    backend_read: BR,
    backend_write: BW,
    request: Request<'_>,
    stop: impl std::future::Future<Output = (u16, &'static str)>,
) -> Option<Outcome>
where
    R: ReadReady + Send,
    W: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let metrics = ResumeMetrics::new(request.route.clone());
    let (link, ends) = attachment::link();
    let settings = &request.settings;
    let wait = settings.heartbeat * 3;
    match attachment::read_hello(&mut reader, &ends.out, request.max_message_bytes, wait).await {
        Ok((0, None)) => {}
        Ok(_) => {
            metrics.refused("bad_hello");
            let reason = "a new session's HELLO has offset 0 and no token";
            attachment::refuse(writer, close::PROTOCOL, reason, settings.close_grace).await;
            return None;
        }
        Err(e) => {
            refuse_hello(writer, e, &metrics, settings.close_grace).await;
            return None;
        }
    }
    let (attach_tx, attach_rx) = mpsc::channel::<Attach>(2);
    let listed = match request.store.list(
        &request.route,
        &request.id,
        request.address,
        settings.window_bytes,
        &request.limits,
        attach_tx,
    ) {
        Ok(listed) => listed,
        Err(refusal) => {
            metrics.refused(refusal.label());
            let code = match refusal {
                store::Refusal::IdInUse => close::ID_IN_USE,
                _ => close::CAPACITY,
            };
            attachment::refuse(writer, code, refusal.label(), settings.close_grace).await;
            return None;
        }
    };
    let core = Core {
        backend_read,
        backend_write,
        settings: settings.clone(),
        metrics,
    };
    let (feed_tx, feed_rx) = oneshot::channel();
    let (outcome, ()) = tokio::join!(core.run(link, feed_tx, attach_rx, stop), async {
        let feed = feed_rx.await.ok();
        attachment::run(
            reader,
            writer,
            ends,
            feed,
            request.max_message_bytes,
            settings.close_grace,
        )
        .await
    });
    drop(listed);
    Some(outcome)
}

/// Run a client connection that resumes session `request.id`: check it with the session,
/// then carry its messages until it ends or is replaced.
pub async fn resume<R, W>(mut reader: FrameReader<R>, writer: FrameWriter<W>, request: Request<'_>)
where
    R: ReadReady + Send,
    W: AsyncWrite + Unpin,
{
    let metrics = ResumeMetrics::new(request.route.clone());
    let settings = &request.settings;
    let (link, ends) = attachment::link();
    let wait = settings.heartbeat * 3;
    let (received, token) =
        match attachment::read_hello(&mut reader, &ends.out, request.max_message_bytes, wait).await
        {
            Ok((received, Some(token))) => (received, token),
            Ok((_, None)) => {
                metrics.refused("bad_hello");
                let reason = "a resume's HELLO carries the token";
                attachment::refuse(writer, close::PROTOCOL, reason, settings.close_grace).await;
                return;
            }
            Err(e) => return refuse_hello(writer, e, &metrics, settings.close_grace).await,
        };
    let unknown = async |writer| {
        metrics.refused("unknown_session");
        let reason = "unknown or expired session";
        attachment::refuse(writer, close::UNKNOWN_SESSION, reason, settings.close_grace).await;
    };
    let Some(session) = request.store.find(&request.route, &request.id) else {
        return unknown(writer).await;
    };
    let (reply, answer) = oneshot::channel();
    let attach = Attach {
        received,
        token,
        link,
        reply,
    };
    if session.send(attach).await.is_err() {
        return unknown(writer).await;
    }
    match answer.await {
        Ok(Ok(feed)) => {
            attachment::run(
                reader,
                writer,
                ends,
                Some(feed),
                request.max_message_bytes,
                settings.close_grace,
            )
            .await
        }
        Ok(Err(code)) => {
            let reason = match code {
                close::OFFSET_OUT_OF_RANGE => "offset outside the replay buffer",
                _ => "unknown or expired session",
            };
            attachment::refuse(writer, code, reason, settings.close_grace).await
        }
        Err(_) => unknown(writer).await,
    }
}

async fn refuse_hello<W: AsyncWrite + Unpin>(
    writer: FrameWriter<W>,
    e: HelloError,
    metrics: &ResumeMetrics,
    close_grace: Duration,
) {
    if let HelloError::Malformed(reason) = e {
        metrics.refused("bad_hello");
        attachment::refuse(writer, close::PROTOCOL, reason, close_grace).await;
    }
}

#[cfg(test)]
mod tests;

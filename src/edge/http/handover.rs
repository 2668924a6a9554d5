//! The hand-over after a request's checks: the `101` (h2: `200`) and the task that waits
//! for hyper to give up the client's stream and then starts the session — or joins a
//! resumable one. Its own file because it is where a request becomes a session, and what
//! that task holds on to is what an idle session costs.

use std::sync::Arc;

use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};
use tracing::{debug, Instrument, Span};

use super::dial::Dialed;
use super::matched::Matched;
use crate::edge::shared::{InUse, Shared};
use crate::edge::upgrade::PendingUpgrade;
use crate::error::RejectError;
use crate::http_util::Body;
use crate::policy::SessionSlot;
use crate::record::Pending;
use crate::session::start::{
    self as session, resume_protocol, BackendSide, ClientSide, ResumeAsk, SessionInfo,
};
use crate::snapshot::Snapshot;
use crate::ws::extensions::Agreement;

/// What a session holds from the request until it ends: its connection's permit and its
/// slot under the session caps.
pub(super) type Held = (InUse, SessionSlot);

/// Accept: the `101` (h2: `200`) with the chosen subprotocol and extension, and the session
/// task, which waits for hyper to hand over the client's stream and then starts the session.
pub(super) fn accept<B>(
    req: &mut Request<B>,
    matched: Matched,
    shared: &Arc<Shared>,
    held: Held,
    (dialed, recording, user): (Dialed, Option<Box<Pending>>, Option<String>),
    deflate: Option<Agreement>,
    resume: Option<ResumeAsk>,
) -> Result<Response<Body>, RejectError> {
    let (mut response, upgrade) = PendingUpgrade::accept(req)?;
    let Dialed {
        backend,
        lease,
        name,
        mut subprotocol,
    } = dialed;
    if resume.is_some() {
        subprotocol = Some(HeaderValue::from_static(resume_protocol::SUBPROTOCOL));
    }
    let info = SessionInfo {
        route: matched.route.name.clone(),
        client: matched.conn.peer,
        backend: name,
        subprotocol: subprotocol
            .as_ref()
            .and_then(|p| p.to_str().ok())
            .map(str::to_owned),
        user,
    };
    if let Some(p) = subprotocol {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    if let Some(answer) = deflate.and_then(|a| HeaderValue::from_str(&a.response()).ok()) {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_EXTENSIONS, answer);
    }
    let Matched {
        route, snapshot, ..
    } = matched;
    // What the session is handed once the upgrade completes, boxed while it waits: a task's
    // future keeps everything it captures for its whole life, and these move on to the
    // session (docs/benchmarks.md, memory per idle session).
    let handover = Box::new((backend, info, recording, deflate, resume));
    let session = {
        let shared = shared.clone();
        async move {
            // Captured, so held until the session ends: the connection's and the route's
            // slots, and the pooled backend's lease.
            let _held = (&held, &lease);
            let protocol = upgrade.protocol();
            let stream = match upgrade.wait().await {
                Ok(stream) => stream,
                Err(e) => {
                    debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            let (backend, info, recording, deflate, resume) = *handover;
            session::start(
                ClientSide {
                    stream,
                    protocol,
                    deflate,
                    resume,
                },
                BackendSide {
                    backend,
                    settings: &route.session,
                    info,
                    recording,
                },
                session_gateway(&shared, &snapshot),
            )
            .await;
        }
    };
    shared.tracker.spawn(session.instrument(Span::current()));
    Ok(response)
}

/// Accept a connection that resumes a session: the `101` with `wsgate.resume.v1`, then the
/// session (found by id) takes it or refuses it with a close code.
pub(super) fn accept_join<B>(
    req: &mut Request<B>,
    matched: Matched,
    shared: &Arc<Shared>,
    held: Held,
    ask: ResumeAsk,
) -> Result<Response<Body>, RejectError> {
    let (mut response, upgrade) = PendingUpgrade::accept(req)?;
    response.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(resume_protocol::SUBPROTOCOL),
    );
    let Matched {
        route,
        snapshot,
        conn,
    } = matched;
    let session = {
        let shared = shared.clone();
        async move {
            let (_permit, _slot) = held;
            let protocol = upgrade.protocol();
            let stream = match upgrade.wait().await {
                Ok(stream) => stream,
                Err(e) => {
                    debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            session::join(
                ClientSide {
                    stream,
                    protocol,
                    deflate: None,
                    resume: Some(ask),
                },
                conn.peer.ip(),
                route.name.clone(),
                &route.session,
                session_gateway(&shared, &snapshot),
            )
            .await;
        }
    };
    shared.tracker.spawn(session.instrument(Span::current()));
    Ok(response)
}

/// What a session answers to: the gateway's registry and stop signals, and the frame budget
/// of the snapshot it was accepted under.
fn session_gateway<'a>(shared: &'a Shared, snapshot: &'a Snapshot) -> session::Gateway<'a> {
    session::Gateway {
        registry: &shared.registry,
        shutdown: &shared.shutdown,
        hard_stop: &shared.hard_stop,
        frame_budget: &snapshot.frame_budget,
    }
}

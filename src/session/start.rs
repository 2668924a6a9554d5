//! The session's one front door: `edge` hands over once, after the `101`/`200`, and the
//! session does the rest — registers itself, frames both sides, picks the pump for the
//! backend's kind, runs it, and writes the access log and close metrics.
//!
//! # The seam between a session and its client connection
//! A session is two parts with different lives:
//! - [`BackendSide`]: what must outlive one client connection — the backend connection, the
//!   registry entry (id, byte counters, close request), the session's metrics, and (for a
//!   WebSocket backend) the backend hop's deflate agreement and keepalive settings.
//! - [`ClientSide`]: one client connection — its upgraded stream, its HTTP version, its
//!   permessage-deflate agreement. Its reader, writer and keepalive are built from it by
//!   the pump and end with it.
//!
//! Today a session ends when its client connection ends: [`start`] joins one client side to
//! the backend side and runs them to the end. Resuming a session means keeping the backend
//! side and joining a new client side to it; recording or watching a session means tapping
//! the pump's two crossings, where every client→backend message is counted
//! (`SessionMetrics::messages_to_backend`) and every backend→client one
//! (`messages_to_client`): in `bridge` the client reader's backend write and the writer's
//! framed send, in `relay` each hop's `read_hop` → `deliver`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use fastwebsockets::Role;
use futures_util::future::Either;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, Span};

use super::bridge::{self, Outcome};
use super::io::websocket_halves;
pub use super::io::ClientStream;
use super::registry::SessionEntry;
use super::relay;
use super::resume::{self, ResumeSettings};
use super::settings::SessionSettings;
use super::udp;
use crate::backend::udp::UdpBackend;
use crate::backend::Backend;
use crate::logsafe::Escaped;
use crate::metrics::{self, Protocol, SessionMetrics, UdpMetrics};
use crate::record::watch::WatchPoint;
use crate::record::{Ending as RecordEnding, Pending, Recorder, SessionMeta, Taps};
use crate::ws::close_code;
use crate::ws::deflate::{HopDeflate, RelayDeflate};
use crate::ws::extensions::Agreement;
use crate::ws::reader::{FrameBudget, FrameReader, ReadReady};
use crate::ws::writer::FrameWriter;

pub use super::registry::{Registry, SessionInfo};
/// The resume protocol's names the edge checks a request for.
pub use super::resume::protocol as resume_protocol;

/// One client connection, as the edge accepted it.
pub struct ClientSide {
    /// The client's stream (after the `101`, or an HTTP/2 stream after its `200`).
    pub stream: ClientStream,
    pub protocol: Protocol,
    /// permessage-deflate as agreed with this client.
    pub deflate: Option<Agreement>,
    /// The client asked for a resumable session (`wsgate.resume.v1`) with this id.
    pub resume: Option<ResumeAsk>,
}

/// A client connection's resume request, from its URL (docs/resume.md).
#[derive(Debug, Clone)]
pub struct ResumeAsk {
    /// The client-chosen session id (`wsgate_session`).
    pub id: String,
}

/// What the session holds across its client connection: the dialled backend, and what it
/// runs with.
pub struct BackendSide<'a> {
    pub backend: Backend,
    /// The route's compiled settings (`snapshot::Route::session`).
    pub settings: &'a SessionSettings,
    /// What the registry lists for this session (route, client, backend, subprotocol).
    pub info: SessionInfo,
    /// The session's recording file, created before the `101` (`[route.record]`). Boxed:
    /// the session's task carries this slot for its whole life, recorded or not (184 bytes
    /// inline, a pointer boxed; 0.7 KiB less per idle session in wsbench's idle test).
    pub recording: Option<Box<Pending>>,
}

/// The gateway-wide things a session answers to.
pub struct Gateway<'a> {
    pub registry: &'a Arc<Registry>,
    /// The shutdown: every session closes with 1001.
    pub shutdown: &'a CancellationToken,
    /// The drain deadline passed: stop without waiting for close handshakes.
    pub hard_stop: &'a CancellationToken,
    /// Frame payload bytes all sessions' readers may hold at once.
    pub frame_budget: &'a Arc<FrameBudget>,
}

/// Run a session from its hand-over to its end; the close code is recorded in the registry's
/// recent closes, the access log and the close metrics.
///
/// Not an `async fn`, and neither are the steps below it: each takes its arguments apart
/// here and returns a future that holds only what the session needs while it runs. An
/// `async fn` keeps its arguments for its whole life beside everything it moves them into,
/// and an idle session is mostly these futures (docs/benchmarks.md).
pub fn start<'a>(
    client: ClientSide,
    backend: BackendSide<'a>,
    gateway: Gateway<'a>,
) -> impl Future<Output = ()> + 'a {
    let mut registered = gateway.registry.register(backend.info, gateway.shutdown);
    let entry = registered.entry().clone();
    Span::current().record("session", entry.id);
    let joined = Joined {
        recording: backend.recording,
        backend: backend.backend,
        settings: backend.settings,
        hard_stop: gateway.hard_stop,
        frame_budget: gateway.frame_budget,
        protocol: client.protocol,
        deflate: client.deflate,
        resume: client.resume,
        registry: gateway.registry,
    };
    // Every client stream kind in the session's one task: a future is as large as its
    // largest arm, not their sum.
    let run = match client.stream {
        ClientStream::Tcp(read, write) => Either::Left(joined.run(entry, read, write)),
        ClientStream::H2(read, write) => {
            Either::Right(Either::Left(joined.run(entry, read, write)))
        }
        ClientStream::Other(read, write) => {
            Either::Right(Either::Right(joined.run(entry, read, write)))
        }
    };
    // Called in the session's task: the thread it counts on is the one it runs on.
    let worker = metrics::WorkerSessionGuard::open();
    // `map`, not an `async` block: awaiting a captured future would hold it twice.
    run.map(move |code| {
        registered.set_close_code(code);
        drop(worker);
    })
}

/// One client connection joined to the backend side, ready to pump.
struct Joined<'a> {
    recording: Option<Box<Pending>>,
    backend: Backend,
    settings: &'a SessionSettings,
    hard_stop: &'a CancellationToken,
    frame_budget: &'a Arc<FrameBudget>,
    protocol: Protocol,
    deflate: Option<Agreement>,
    resume: Option<ResumeAsk>,
    registry: &'a Arc<Registry>,
}

impl<'a> Joined<'a> {
    /// Bridge or relay the session; the future gives the close code it ended with.
    fn run<CR, CW>(
        self,
        entry: Arc<SessionEntry>,
        client_read: CR,
        client_write: CW,
    ) -> impl Future<Output = u16> + 'a
    where
        CR: ReadReady + Send + 'static,
        CW: AsyncWrite + Unpin + Send + 'a,
    {
        let Self {
            recording,
            backend,
            settings,
            hard_stop,
            frame_budget,
            protocol,
            deflate,
            resume: resume_ask,
            registry,
        } = self;
        let started = Instant::now();
        // The tap: when the route records, both directions are copied from the pump's two
        // crossings; when it does not, the pump holds two `None`s and nothing else.
        let recorder = recording.map(|pending| start_recording(*pending, &entry));
        let taps = recorder.as_ref().map(Recorder::taps).unwrap_or_default();
        let metrics =
            SessionMetrics::start_counted(entry.info.route.clone(), protocol, &entry.bytes);
        let (client_read, client_write) = websocket_halves(
            client_read,
            client_write,
            Role::Server,
            client_frame_limit(&backend, settings),
            frame_budget,
        );
        // A resumable session on a byte backend: the resume pump instead of the bridge.
        let resumable = resume_ask.zip(settings.resume.clone());
        // What the pump is made of, boxed until it is: the future keeps everything it
        // captures for its whole life, and these move on into the pump.
        let parts = Box::new((backend, resumable, client_read, client_write, deflate, taps));
        async move {
            let entry = &entry;
            let (backend, resumable, client_read, client_write, deflate, taps) = *parts;
            let backend = match (backend, resumable) {
                (Backend::Tcp(stream), Some((ask, resume_settings))) => {
                    let (backend_read, backend_write) = stream.into_split();
                    let request = resume_request(registry, entry, ask, resume_settings, settings);
                    let halves = (client_read, client_write, backend_read, backend_write);
                    let ran = run_resumable(halves, request, entry, &metrics, started);
                    return Box::pin(ran).await;
                }
                (Backend::Unix(stream), Some((ask, resume_settings))) => {
                    let (backend_read, backend_write) = stream.into_split();
                    let request = resume_request(registry, entry, ask, resume_settings, settings);
                    let halves = (client_read, client_write, backend_read, backend_write);
                    let ran = run_resumable(halves, request, entry, &metrics, started);
                    return Box::pin(ran).await;
                }
                (backend, _) => backend,
            };
            let pumping = Pumping {
                settings,
                deflate,
                metrics: &metrics,
                entry,
                hard_stop,
                frame_budget,
                taps,
            };
            let outcome = pumping.run(backend, client_read, client_write).await;
            ended(outcome, recorder, &metrics, entry, started).await
        }
    }
}

/// Start recording a session, with what the registry knows of it.
fn start_recording(pending: Pending, entry: &SessionEntry) -> Recorder {
    let meta = SessionMeta {
        session_id: entry.id,
        backend: entry.info.backend.clone(),
        client: entry.info.client,
        identity: pending.identity.clone(),
        user_agent: pending.user_agent.clone(),
        subprotocol: entry.info.subprotocol.clone(),
    };
    pending.start(meta)
}

/// The largest frame the client may send: the route's, and for udp:// no more than a
/// datagram (bigger frames are refused with 1009 as they arrive).
fn client_frame_limit(backend: &Backend, settings: &SessionSettings) -> usize {
    match backend {
        Backend::Udp(b) => settings
            .max_frame_bytes
            .min(udp::datagram_limit(&b.socket, &settings.udp)),
        _ => settings.max_frame_bytes,
    }
}

/// A resumable session on a byte backend, from its first connection to its end.
async fn run_resumable<R, W, BR, BW>(
    (client_read, client_write, backend_read, backend_write): (
        FrameReader<R>,
        FrameWriter<W>,
        BR,
        BW,
    ),
    request: resume::Request<'_>,
    entry: &SessionEntry,
    metrics: &SessionMetrics,
    started: Instant,
) -> u16
where
    R: ReadReady + Send,
    W: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let ran = resume::start(
        client_read,
        client_write,
        backend_read,
        backend_write,
        request,
        async {
            entry.control.cancelled().await;
            entry.control.reason()
        },
    );
    resumable_ended(Box::pin(ran).await, entry, metrics, started)
}

/// What a pump runs with, beside the two connections.
struct Pumping<'a> {
    settings: &'a SessionSettings,
    /// permessage-deflate as agreed with the client.
    deflate: Option<Agreement>,
    metrics: &'a SessionMetrics,
    entry: &'a Arc<SessionEntry>,
    hard_stop: &'a CancellationToken,
    frame_budget: &'a Arc<FrameBudget>,
    taps: Taps,
}

/// A pump's future: the TCP bridge inline (the common case, sized into every session's
/// task), the rarer kinds boxed so that TCP sessions do not carry their larger state.
type PumpFuture<'a, F> = Either<F, Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>>;

impl<'a> Pumping<'a> {
    /// The pump for the backend's kind, to be run to the end.
    fn run<CR, CW>(
        self,
        backend: Backend,
        mut client_read: FrameReader<CR>,
        client_write: FrameWriter<CW>,
    ) -> PumpFuture<'a, impl Future<Output = Outcome> + 'a>
    where
        CR: ReadReady + Send + 'static,
        CW: AsyncWrite + Unpin + Send + 'a,
    {
        let Self {
            settings,
            deflate,
            metrics,
            entry,
            hard_stop,
            frame_budget,
            taps,
        } = self;
        match backend {
            Backend::Tcp(stream) => {
                let client_deflate = client_deflate(deflate, settings);
                if client_deflate.is_some() {
                    client_read.allow_rsv1();
                }
                let (backend_read, backend_write) = stream.into_split();
                Either::Left(bridge::run(
                    client_read,
                    client_write,
                    backend_read,
                    backend_write,
                    settings,
                    client_deflate,
                    metrics,
                    &entry.control,
                    hard_stop,
                    taps,
                    open_watch(entry, settings),
                ))
            }
            // Datagrams: one message per datagram (never deflated; the edge declined it).
            Backend::Udp(UdpBackend { socket, slot }) => Either::Right(Box::pin(async move {
                // The place under `[udp] max_sessions` is held until the pump ends.
                let _slot = slot;
                udp::run(
                    client_read,
                    client_write,
                    socket,
                    settings,
                    metrics,
                    UdpMetrics::for_route(&entry.info.route),
                    &entry.control,
                    hard_stop,
                )
                .await
            })),
            Backend::Unix(stream) => {
                let client_deflate = client_deflate(deflate, settings);
                if client_deflate.is_some() {
                    client_read.allow_rsv1();
                }
                let (backend_read, backend_write) = stream.into_split();
                Either::Right(Box::pin(bridge::run(
                    client_read,
                    client_write,
                    backend_read,
                    backend_write,
                    settings,
                    client_deflate,
                    metrics,
                    &entry.control,
                    hard_stop,
                    taps,
                    open_watch(entry, settings),
                )))
            }
            Backend::WebSocket {
                io,
                deflate: backend_deflate,
                ..
            } => {
                let deflate = RelayDeflate::new(deflate, backend_deflate, settings.compression);
                if deflate.client.is_some() {
                    client_read.allow_rsv1();
                }
                let (read, write) = tokio::io::split(io);
                let mut backend = websocket_halves(
                    read,
                    write,
                    Role::Client,
                    settings.max_frame_bytes,
                    frame_budget,
                );
                if deflate.backend.is_some() {
                    backend.0.allow_rsv1();
                }
                // Watchers see each message's data as the backend sent it (inflated).
                open_watch(entry, settings);
                Either::Right(Box::pin(async move {
                    relay::run(
                        (client_read, client_write),
                        backend,
                        settings,
                        &deflate,
                        metrics,
                        &entry.control,
                        hard_stop,
                        Some(entry.clone()),
                        taps,
                    )
                    .await
                }))
            }
        }
    }
}

/// A session ended: the recording finished, close metrics, and the access log.
async fn ended(
    outcome: Outcome,
    recorder: Option<Recorder>,
    metrics: &SessionMetrics,
    entry: &SessionEntry,
    started: Instant,
) -> u16 {
    let duration = started.elapsed();
    if let Some(recorder) = recorder {
        recorder
            .finish(RecordEnding {
                bytes_to_backend: outcome.bytes_to_backend,
                bytes_to_client: outcome.bytes_to_client,
                close_code: outcome.code,
                closed_by: outcome.initiator.label(),
            })
            .await;
    }
    metrics.closed(outcome.code, outcome.initiator.label(), duration);
    let (messages_to_backend, messages_to_client) = metrics.messages();
    // The access log: one line per session, every field named (one JSON object with
    // `--log-format json`).
    info!(
        session_id = entry.id,
        client = %entry.info.client,
        route = &*entry.info.route,
        backend = entry.info.backend.as_str(),
        subprotocol = entry.info.subprotocol.as_deref(),
        user = entry.info.user.as_deref().map(|u| tracing::field::display(Escaped(u))),
        bytes_to_backend = outcome.bytes_to_backend,
        bytes_to_client = outcome.bytes_to_client,
        messages_to_backend,
        messages_to_client,
        duration_ms = duration.as_millis() as u64,
        code = outcome.code,
        closed_by = outcome.initiator.label(),
        reason = %Escaped(&outcome.reason),
        "session closed"
    );
    outcome.code
}

/// What a resumable session's first connection brings to the resume pump.
fn resume_request<'a>(
    registry: &'a Arc<Registry>,
    entry: &SessionEntry,
    ask: ResumeAsk,
    resume_settings: ResumeSettings,
    settings: &SessionSettings,
) -> resume::Request<'a> {
    resume::Request {
        store: &registry.resume,
        route: entry.info.route.clone(),
        id: ask.id,
        address: entry.info.client.ip(),
        limits: resume_settings.limits,
        settings: resume_settings,
        max_message_bytes: settings.max_message_bytes,
    }
}

/// A resumable session ended (or was refused at its HELLO): metrics and the access log.
fn resumable_ended(
    outcome: Option<resume::core::Outcome>,
    entry: &SessionEntry,
    metrics: &SessionMetrics,
    started: Instant,
) -> u16 {
    let Some(outcome) = outcome else {
        // Refused before it began: the close code says why (see docs/resume.md).
        return close_code::NORMAL;
    };
    metrics.bytes_to_backend.increment(outcome.bytes_to_backend);
    metrics.bytes_to_client.increment(outcome.bytes_to_client);
    let duration = started.elapsed();
    let initiator = match outcome.code {
        1000 if outcome.reason.starts_with("client") => "client",
        1000 | 1011 => "backend",
        _ => "gateway",
    };
    metrics.closed(outcome.code, initiator, duration);
    info!(
        session_id = entry.id,
        client = %entry.info.client,
        route = &*entry.info.route,
        backend = entry.info.backend.as_str(),
        subprotocol = entry.info.subprotocol.as_deref(),
        bytes_to_backend = outcome.bytes_to_backend,
        bytes_to_client = outcome.bytes_to_client,
        resumes = outcome.resumes,
        duration_ms = duration.as_millis() as u64,
        code = outcome.code,
        closed_by = initiator,
        reason = %Escaped(outcome.reason),
        "session closed"
    );
    outcome.code
}

/// Join a client connection to the resumable session it names (`wsgate_resume=1`): no
/// backend is dialled; the session checks the token and the offset, and the connection
/// carries its messages until it ends or is replaced.
pub async fn join(
    client: ClientSide,
    client_address: std::net::IpAddr,
    route: Arc<str>,
    settings: &SessionSettings,
    gateway: Gateway<'_>,
) {
    let (Some(ask), Some(resume_settings)) = (client.resume, settings.resume.clone()) else {
        return;
    };
    let request = resume::Request {
        store: &gateway.registry.resume,
        route,
        id: ask.id,
        address: client_address,
        limits: resume_settings.limits,
        settings: resume_settings,
        max_message_bytes: settings.max_message_bytes,
    };
    let max_frame = settings.max_frame_bytes;
    match client.stream {
        ClientStream::Tcp(read, write) => {
            let (r, w) =
                websocket_halves(read, write, Role::Server, max_frame, gateway.frame_budget);
            Box::pin(resume::resume(r, w, request)).await
        }
        ClientStream::H2(read, write) => {
            let (r, w) =
                websocket_halves(read, write, Role::Server, max_frame, gateway.frame_budget);
            Box::pin(resume::resume(r, w, request)).await
        }
        ClientStream::Other(read, write) => {
            let (r, w) =
                websocket_halves(read, write, Role::Server, max_frame, gateway.frame_budget);
            Box::pin(resume::resume(r, w, request)).await
        }
    }
}

/// Open the session to watchers (the bridge taps every chunk it sends the client, the relay
/// every message's data from the backend), keeping the route's `watch_backlog_bytes` of
/// recent output for watchers who join late.
fn open_watch<'a>(entry: &'a SessionEntry, settings: &SessionSettings) -> &'a WatchPoint {
    entry
        .watch
        .open(&entry.info.route, settings.watch_backlog_bytes);
    &entry.watch
}

/// The client hop's permessage-deflate for the bridge, when agreed and the route allows it.
fn client_deflate(agreed: Option<Agreement>, settings: &SessionSettings) -> Option<HopDeflate> {
    agreed
        .zip(settings.compression)
        .map(|(a, p)| HopDeflate::server(&a, &p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MessageType;
    use crate::record::Taps;
    use crate::session::io::Rewind;
    use crate::session::registry::SessionControl;
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};

    fn settings() -> SessionSettings {
        SessionSettings {
            buffer_bytes: 64 * 1024,
            max_frame_bytes: 1 << 20,
            max_message_bytes: 1 << 20,
            message_type: MessageType::Binary,
            watch_backlog_bytes: 0,
            ping_interval: Some(Duration::from_secs(30)),
            pong_timeout: Duration::from_secs(10),
            close_grace: Duration::from_secs(5),
            backend_stall: Duration::from_secs(30),
            bandwidth_bytes_per_sec: None,
            compression: None,
            udp: Default::default(),
            record: None,
            resume: None,
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (a, l.accept().await.unwrap().0)
    }

    /// What an idle plain session's task holds: the bridge's and the relay's futures over
    /// TCP, the types a real session has. Printed with `--nocapture`; the bounds keep the
    /// idle-memory work from being undone by accident.
    #[tokio::test]
    async fn session_futures_stay_small() {
        let settings = settings();
        let budget = FrameBudget::unlimited();
        let metrics = SessionMetrics::start("t".into(), Protocol::Http1);
        let stop = CancellationToken::new();
        let control = SessionControl::new(&stop);
        let watch = WatchPoint::default();
        let ((_c, client), (_b, backend)) = (pair().await, pair().await);
        let (cr, cw) = client.into_split();
        let (cr, cw) = websocket_halves(
            Rewind::new(bytes::Bytes::new(), cr),
            cw,
            Role::Server,
            1 << 20,
            &budget,
        );
        let (br, bw) = backend.into_split();
        let bridge = bridge::run(
            cr,
            cw,
            br,
            bw,
            &settings,
            None,
            &metrics,
            &control,
            &stop,
            Taps::default(),
            &watch,
        );
        let bridge_size = std::mem::size_of_val(&bridge);
        drop(bridge);
        let ((_c, client), (_b, backend)) = (pair().await, pair().await);
        let (cr, cw) = client.into_split();
        let client = websocket_halves(cr, cw, Role::Server, 1 << 20, &budget);
        let (br, bw) = backend.into_split();
        let backend = websocket_halves(br, bw, Role::Client, 1 << 20, &budget);
        let deflate = RelayDeflate::default();
        let relay = relay::run(
            client,
            backend,
            &settings,
            &deflate,
            &metrics,
            &control,
            &stop,
            None,
            Taps::default(),
        );
        let relay_size = std::mem::size_of_val(&relay);
        println!("bridge future: {bridge_size} bytes; relay future: {relay_size} bytes");
        // Today (debug build): 1720 and 4608 bytes.
        assert!(
            bridge_size <= 1800,
            "bridge future grew to {bridge_size} bytes"
        );
        assert!(
            relay_size <= 4700,
            "relay future grew to {relay_size} bytes"
        );
    }
}

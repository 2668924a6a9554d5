//! A route's session settings, compiled once into the snapshot's route and read by the bridge
//! and the relay as they are: adding a per-session setting means one field here, its config
//! key, and the line in `snapshot::compile_route` that fills it.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{MessageType, UdpSettings};
use crate::record::RecordSettings;
use crate::ws::extensions::DeflatePolicy;

/// Everything a session's pumps need to know about its route, from one config snapshot.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Most backend bytes read (and framed) at once (bridge). The client side is bounded by
    /// `max_frame_bytes`, enforced by the frame reader.
    pub buffer_bytes: usize,
    /// Largest frame payload from either hop (1009 above it).
    pub max_frame_bytes: usize,
    /// Largest message from either hop, all fragments together (1009 above it).
    pub max_message_bytes: usize,
    /// How backend bytes are framed for the client (bridge).
    pub message_type: MessageType,
    /// Recent output kept for watchers who join late (`watch_backlog_bytes`); 0: none.
    pub watch_backlog_bytes: usize,
    /// Ping interval for each hop; `None` disables keepalive.
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    /// How long a hop waits for the Close that answers its own.
    pub close_grace: Duration,
    /// A backend write without progress for this long closes the session (1011).
    pub backend_stall: Duration,
    /// Pacing of each direction in bytes per second; `None`: unpaced.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// permessage-deflate on the client hop; `None`: offers are declined.
    pub compression: Option<DeflatePolicy>,
    /// `udp://` sessions (`session::udp`): `[route.udp]` resolved, the defaults elsewhere.
    pub udp: UdpSettings,
    /// `[route.record]`: this route's sessions are recorded; `None`: not recorded.
    pub record: Option<Arc<RecordSettings>>,
    /// `[route.resume]`: sessions may survive their client connection; `None`: off.
    pub resume: Option<crate::session::resume::ResumeSettings>,
}

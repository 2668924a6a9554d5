//! The WebSocket protocol, knowing nothing of routes, backends or sessions: the frame reader
//! (RFC 6455 §5, one frame at a time, no buffer held while idle) and writer, message rules
//! (UTF-8, sizes, close payloads), incremental UTF-8, permessage-deflate negotiation (RFC 7692)
//! and its codec. `backend` (client handshakes to WebSocket backends) and `session` (the pumps)
//! both use it; it imports no stage of the gateway (`tests/layout.rs`).

pub mod deflate;
pub mod extensions;
pub mod frames;
pub mod reader;
pub mod utf8;
pub mod writer;

/// Close codes the gateway sends (RFC 6455 §7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A message type the route does not take (text on a `udp://` route).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Not sent on the wire: recorded when a peer vanished without a Close.
    pub const ABNORMAL: u16 = 1006;
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A peer sent what it may not (a watcher writing to the session it watches).
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// The gateway is short of a shared resource (the frame memory budget), or a watcher fell
    /// behind its session: a retry may work.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const INTERNAL_ERROR: u16 = 1011;
    /// A WebSocket backend broke the protocol (the gateway got a bad answer upstream).
    pub const BAD_GATEWAY: u16 = 1014;
}

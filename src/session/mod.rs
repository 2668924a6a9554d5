//! Everything after the `101`: the frame reader and its per-frame rules, message rules (UTF-8,
//! sizes), keepalive, pacing, stream plumbing, and the two pumps — the WebSocket ↔ bytes bridge
//! for TCP backends and the WebSocket ↔ WebSocket relay.
//!
//! A session knows nothing of HTTP routing or access control: it gets two streams and its
//! limits, and reports how it ended. The registry lists live sessions and carries each one's
//! close request (admin API) to its pump.

pub mod bridge;
pub mod h2_stream;
pub mod io;
pub mod keepalive;
pub mod pacer;
pub mod registry;
pub mod relay;
pub mod resume;
pub mod settings;
pub mod start;
pub mod udp;

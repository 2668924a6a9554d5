//! The public side: listeners, accept with permits, TLS, and the HTTP request → checks →
//! dial → `101` path that hands a session its two streams.

pub mod extended_connect;
pub mod h2;
pub mod http;
pub mod listener;
pub mod shared;

pub use listener::{accept_loop, PublicListener};
pub use shared::{ConnectionSlot, Shared};

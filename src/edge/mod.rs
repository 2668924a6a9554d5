//! The public side: listeners, accept with permits, TLS, and the HTTP request → checks →
//! dial → `101` path that hands a session its two streams; the browser console on listeners
//! that serve it; the per-core mode's worker threads.

pub mod console;
pub mod extended_connect;
mod graceful;
pub mod h2;
mod h2_writes;
pub mod http;
pub mod listener;
pub mod proxy_protocol;
pub mod shared;
pub mod upgrade;
pub mod urls;
pub mod web;
pub mod workers;

pub use listener::{accept_loop, PublicListener};
pub use shared::{ConnectionSlot, Shared};
pub use workers::Workers;

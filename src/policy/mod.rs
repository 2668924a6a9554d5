//! Per-route rules compiled from the config: who may connect (origin, credentials, JWT,
//! client certificates), where a session may go (token files, claim targets, egress), and
//! admission (session caps, handshake rate).
//!
//! Policy never sees a listener or a socket: `edge` hands it a request and a [`ConnInfo`].

pub mod access;
pub mod admission;
pub mod identity;
pub mod jwt;
pub mod targets;

pub use access::Access;
pub use admission::{client_key, Admission, SessionSlot};
pub use identity::{ClientCert, ConnInfo};
pub use targets::{Egress, Target};

//! Per-route rules compiled from the config: who may connect (origin, credentials, JWT,
//! client certificates), where a session may go (token files, claim targets, egress), and
//! admission (session and per-address connection caps, handshake rate, the budget of failed
//! credentials, the file-descriptor budget).
//!
//! Policy never sees a listener or a socket: `edge` hands it a request and a [`ConnInfo`].

pub mod access;
pub mod admission;
pub mod auth_failures;
pub mod descriptors;
pub mod identity;
pub mod jwks;
pub mod jwt;
mod provider_client;
pub mod sealed;
pub mod signin;
pub mod targets;

pub use access::Access;
pub use admission::{Admission, ConnectionAddressSlot, SessionSlot, UPKEEP_INTERVAL};
pub use auth_failures::AuthFailures;
pub use identity::{
    client_key, ClientCert, ClientSource, ConnInfo, ForwardedTrust, ListenerTrust, TrustedProxies,
};
pub use targets::{Egress, Target};

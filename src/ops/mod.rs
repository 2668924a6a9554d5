//! Operating the gateway: the admin listener (`/metrics`, health), the status page and session
//! API, process signals; room for reload.

pub mod admin;
pub mod api;
pub mod shutdown;

//! Operating the gateway: the admin listener (`/metrics`, health, `POST /reload`), the status
//! page and session API, process signals, reload triggers.

pub mod admin;
pub mod api;
pub mod reload;
pub mod shutdown;
